// Replay of Mooncake FAST'25 traces against a TieredStore (anchors-mooncake.md §2.4).
//
// A trace is JSONL, one request per line:
//   {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 2353]}
// `timestamp` is milliseconds since the first request; `hash_ids` are prefix-chained ids of
// 512-token blocks (equal id => equal block and equal prefix), ceil(input_length / 512) of
// them, the last usually partial.
//
// ReplayTrace drives a real TieredStore (MemTier device/host/nvme with the given capacities
// in tokens; a tier of capacity 0 is absent) in timestamp order: look the request's chain
// up, pin and read the hits (which promotes nvme hits), publish the missing full blocks,
// unpin. Pages are real encoded pages (one token, one layer; the page bytes do not affect
// hit rates) keyed by SHA-256 of the id, chained to the previous id's key. Hit rates are
// per block of the request's full blocks, attributed to the fastest tier holding each.
//
// Thread-safety: functions are pure (ReplayTrace builds its own store). Errors name the line.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kvstore/tier.h"

namespace kv {

struct TraceRequest {
  int64_t timestamp_ms = 0;
  int64_t input_length = 0;
  int64_t output_length = 0;
  std::vector<int64_t> hash_ids;
};

// Parses JSONL. InvalidArgument "line N: ..." for malformed JSON, missing or mistyped
// fields, negative values, or hash_ids inconsistent with input_length. Blank lines skipped.
absl::StatusOr<std::vector<TraceRequest>> ParseMooncakeTrace(std::string_view jsonl);
// Reads and parses a file; NotFound if it cannot be read.
absl::StatusOr<std::vector<TraceRequest>> LoadMooncakeTrace(const std::string& path);

struct ReplayOptions {
  std::array<uint64_t, kNumTiers> capacity_tokens{};  // 0: tier absent
  uint32_t block_tokens = 512;
  bool leaf_first = true;
};

struct ReplayResult {
  uint64_t requests = 0;
  uint64_t blocks = 0;                           // full blocks requested
  std::array<uint64_t, kNumTiers> hit_blocks{};  // served from each tier
  uint64_t published = 0;
  uint64_t publish_failures = 0;  // no room (all pinned), never wrong data
  uint64_t hits() const { return hit_blocks[0] + hit_blocks[1] + hit_blocks[2]; }
};

// InvalidArgument if every capacity is 0 or block_tokens is 0.
absl::StatusOr<ReplayResult> ReplayTrace(const std::vector<TraceRequest>& trace,
                                         const ReplayOptions& options);

// The hit blocks an unbounded prefix cache would get: for each request, the longest prefix
// of its full blocks whose ids all appeared in earlier requests. An independent oracle for
// tests.
uint64_t UnboundedPrefixHits(const std::vector<TraceRequest>& trace, uint32_t block_tokens);

}  // namespace kv
