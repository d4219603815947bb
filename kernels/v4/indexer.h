// DeepSeek-V4 CSA causality rule and lightning indexer scoring / top-k (formats.md §4.3
// "Causality", §4.4).
//
//   Causality: a query at position i may use compressed entry j of a ratio-m compressor iff
//     i >= m·j + m - 1, i.e. j < floor((i + 1) / m).
//   Indexer score: I_{i,s} = Σ_h w_h · ReLU(q_h · K_s) · d^-0.5, w_h = weights_h · H^-0.5
//     (d = index_head_dim = 128, H = index_n_heads = 64); causally invisible entries -inf.
//   Top-k: the k highest scores among visible entries, ties broken by the lower index; picks
//     beyond the visible count are -1.
// Invariance contract: a query's scores depend only on its own q, weights and position and the
// keys: each dot product is Dot8 (8 interleaved partial sums in a fixed order, then a fixed
// pairwise sum), the head sum runs h ascending, and top-k is a total order.
// The indexer keys K_s come from a CSA Compressor with dim = 128 (kernels/v4/compressor.h).
// q must already carry its RoPE at position i (ApplyTrailingRope, compress θ).
//
// Pure functions; thread-safe; outputs are written only on success.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace kv::kernels::v4 {

// Entry j of a ratio-m compressor is visible to the query at position i (§4.3). False for
// negative i or j, or m < 1.
inline bool EntryVisible(int64_t i, int64_t j, int m) {
  return m >= 1 && i >= 0 && j >= 0 && i >= static_cast<int64_t>(m) * j + m - 1;
}
// How many entries the query at position i may use: floor((i + 1) / m) (0 for i < 0).
inline int64_t NumVisibleEntries(int64_t i, int m) { return i < 0 || m < 1 ? 0 : (i + 1) / m; }

// Σ a[i]·b[i] in fp32 with 8 interleaved partial sums (lane l takes i ≡ l mod 8, summed
// pairwise at the end), a fixed order the compiler can vectorise. Used by the indexer and the
// sparse attention; n >= 0.
inline float Dot8(const float* a, const float* b, int n) {
  float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) p[l] += a[i + l] * b[i + l];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7])) + tail;
}

struct IndexerQuery {
  int64_t position = 0;            // i
  int n_heads = 64;                // H
  int head_dim = 128;              // d
  const float* q = nullptr;        // [n_heads × head_dim], RoPE'd at position
  const float* weights = nullptr;  // [n_heads], the raw weights_proj output (before H^-0.5)
};

// Scores of n_entries keys ([n_entries × head_dim]) for ratio-4 entries; writes n_entries
// floats (-inf for invisible entries). InvalidArgument for null pointers, bad sizes, or
// non-finite q / weights / visible keys (named).
absl::Status IndexerScores(const IndexerQuery& q, const float* keys, int64_t n_entries,
                           float* scores);

// IndexerScores for n_queries queries over FP8 keys held as split records
// (kernels/v4/v4_record.h: codes + s·128, scales + s·4; head_dim must be 128): writes
// scores[q·n_entries + s], bit-identical to IndexerScores(queries[q], the dequantized keys).
// Keys are dequantized in blocks of 64, once for all the queries, and never all at once.
// Errors as IndexerScores (a visible key that dequantizes to a non-finite value included).
absl::Status IndexerScoresFp8(const IndexerQuery* queries, int64_t n_queries, const uint8_t* codes,
                              const uint8_t* scales, int64_t n_entries, float* scores);

// Top-k over scores: writes k indices, best first, ties to the lower index; -1 fills picks
// past the finite (visible) scores. InvalidArgument for k < 1, n < 0, a NaN score or +inf.
absl::Status TopKIndices(const float* scores, int64_t n, int k, int32_t* out);

}  // namespace kv::kernels::v4
