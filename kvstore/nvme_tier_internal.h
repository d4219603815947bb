// Internals shared by nvme_tier.cc (open, recovery, erase, reclaim) and nvme_tier_io.cc
// (write, seal, read). Not part of the tier's interface.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "kvstore/nvme_tier.h"
#include "rocksdb/slice.h"
#include "rocksdb/status.h"

namespace kv {

// All fields are guarded by the tier's mu_, except id, path and fd, fixed at creation.
struct NvmeTier::Segment {
  uint64_t id = 0;
  std::string path;
  int fd = -1;                 // O_RDWR | O_DIRECT; closed when the last reference goes
  uint64_t frontier = 0;       // end of the last record placed; the next one goes here
  uint64_t file_bytes = 0;     // size of the file
  uint64_t records = 0;        // pages (sealed or not) whose record is here
  bool active = false;         // new records are placed here
  bool retired = false;        // out of segments_; its file is (being) deleted
  uint64_t syncs_started = 0;  // fdatasyncs begun; they run one at a time
  uint64_t syncs_done = 0;     // number of the last one that returned OK
  bool syncing = false;
  ~Segment() {
    if (fd >= 0) ::close(fd);
  }
};

// One stored page. Guarded by the tier's mu_; the write callback holds a reference, so an
// Entry outlives its erasure until its write has completed.
struct NvmeTier::Entry {
  PageMeta meta;  // meta.sealed follows `sealed`
  std::shared_ptr<Segment> seg;
  uint64_t offset = 0;        // of the record in seg
  uint64_t record_bytes = 0;  // segment::RecordBytes(meta.size)
  uint64_t xxh3 = 0;          // of the page bytes
  bool written = false;       // the record's write has completed, with write_result
  int64_t write_result = 0;   // bytes written or -errno
  uint64_t sync_mark = 0;     // seg->syncs_started when the write completed
  bool sealing = false;
  bool sealed = false;
};

namespace nvme_internal {

inline constexpr char kMarkerFile[] = "KVSTRATA_NVME";
inline constexpr char kMarker[] = "kvstrata nvme tier: segments v1\n";
inline constexpr char kSegmentDir[] = "segments";
inline constexpr char kIndexDir[] = "index";

// RocksDB status -> absl status with `what` and RocksDB's message.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what);

inline rocksdb::Slice KeySlice(const BlockKey& key) {
  return rocksdb::Slice(reinterpret_cast<const char*>(key.bytes.data()), key.bytes.size());
}

// 4096-aligned heap memory (for O_DIRECT); FreeAligned releases it.
uint8_t* AllocAligned(uint64_t bytes);
void FreeAligned(uint8_t* p);

// Checks that `dir` is a tier directory this build reads (the marker) or, with `create`, an
// empty or missing one it may initialise. FailedPrecondition with how to clear it otherwise.
absl::Status CheckLayout(const std::string& dir, bool create);

}  // namespace nvme_internal
}  // namespace kv
