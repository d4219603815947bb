// The nvme tier's index record (docs/formats.md §3.4): what RocksDB stores per page, under
// the page's 32-byte block key. It names where the page's record is (segment, offset), the
// page's length and XXH3-64, and the metadata the store rebuilds its index from (namespace,
// layout, parent, resume role and bytes, last access). Only sealed pages have one.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kvstore/tier.h"

namespace kv {

// Where a page's record lives.
struct SegmentRef {
  uint64_t segment = 0;       // segment id (its file is segment::SegmentFileName(id))
  uint64_t offset = 0;        // of the record header in the segment, a multiple of 4096
  uint64_t payload_xxh3 = 0;  // XXH3-64 of the page bytes, as in the record header
};

struct IndexRecord {
  PageMeta meta;  // sealed == true; size is the page length
  SegmentRef ref;
};

// Version 2: version, role, segment, offset, size, xxh3, last access, resume bytes, parent,
// the page's own key and parent (PageMeta::page_key, page_parent; zero when the page names
// the record's key), namespace, layout, and optionally the engine's block hash
// (length-prefixed, non-empty). A version 1 record (no page key; written before storage keys
// were namespaced) is DataLoss saying so: the tier logs and drops it at open, a miss.
std::string EncodeIndexRecord(const IndexRecord& r);
// DataLoss naming the problem for a truncated, malformed or unknown-version value.
absl::StatusOr<IndexRecord> DecodeIndexRecord(const BlockKey& key, std::string_view bytes);

}  // namespace kv
