// DeepSeek-V4 core attention for one query position (formats.md §4.2): one softmax over the
// selected compressed entries plus the sliding window of uncompressed kv, with a per-head
// attention sink in the denominator (dropped from the output), scale head_dim^-0.5, K = V =
// the 512-d vector, and inverse RoPE (position -i) on the trailing rope dims of the output.
//
//   o_h = Σ_{s∈S} exp(l_{h,s} - M) v_s / (Σ_{s∈S} exp(l_{h,s} - M) + exp(sink_h - M)),
//   l_{h,s} = (q_h · k_s)·scale, M = max(max_s l_{h,s}, sink_h); then o_h ← RoPE(o_h, -i).
//
// Invariance contract: a query's output depends only on its own inputs: logits by Dot8 (fixed
// order), the softmax and the weighted sum over the selected rows in their given order, exp
// from kernels/portable_math.h, so the same query gives the same bits in any batch or chunk.
//
// Pure function; thread-safe; out is written only on success. Accumulation in fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace kv::kernels::v4 {

struct SparseAttentionArgs {
  int64_t position = 0;  // i, the query position
  int n_heads = 1;
  int head_dim = 512;  // K = V width (448 nope + 64 rope)
  int rope_dim = 64;
  int sliding_window = 128;
  const float* q = nullptr;     // [n_heads × head_dim], RoPE'd at i
  const float* sink = nullptr;  // [n_heads] logits of the attention sink
  // Compressed entries of this layer ([n_entries × head_dim]) and the chosen ones: indices in
  // [0, n_entries) or -1 (skipped). ratio is the layer's m (4 or 128); 0 for window-only
  // layers, which must pass no indices.
  const float* entries = nullptr;
  // Or, when entries is null, the entries as split v4-fp8-584 records (kernels/v4/v4_record.h:
  // token bytes entry_tok + j·576, scale bytes entry_sc + j·8; head_dim must be 512): only
  // the selected ones are dequantized, to the same bits DecodeV4Block gives, so the output is
  // identical to passing the dequantized entries.
  const uint8_t* entry_tok = nullptr;
  const uint8_t* entry_sc = nullptr;
  int64_t n_entries = 0;
  int ratio = 0;
  const int32_t* indices = nullptr;
  int64_t n_indices = 0;
  // The window: kv of positions i - n_window + 1 .. i, oldest first, n_window =
  // min(sliding_window, i + 1) (the current token included).
  const float* window = nullptr;
  int64_t n_window = 0;
};

// Writes n_heads × head_dim floats. rope_freqs: the layer's RoPE frequencies (rope_dim/2).
// InvalidArgument naming the problem: null pointers, bad sizes, n_window != min(window, i+1),
// an index out of range, duplicated, or causally invisible (i < m·j + m - 1), non-finite
// inputs.
absl::Status SparseAttention(const SparseAttentionArgs& a, const std::vector<double>& rope_freqs,
                             float* out);

// All entries of a ratio-m layer visible at position i: 0 .. floor((i+1)/m) - 1 (HCA uses
// every visible entry, §4.2).
std::vector<int32_t> AllVisibleIndices(int64_t position, int ratio);

}  // namespace kv::kernels::v4
