// MLA attention in absorbed ("MQA") mode (formats.md §1.4): every query head attends to the
// one shared cached key per token, a 576-d vector [c_s (512) | k^R_s (64)]; the values are
// the 512-d latent c_s. For head h and query token t:
//   score(h, s) = ([q̃_h | q^R_h] · [c_s | k^R_s]) * softmax_scale
//   out(h)      = Σ_s softmax_s(score) c_s      (512-d; the caller applies W_UV_h and wo)
// q̃_h = W_UK_hᵀ q^C_h is computed by the caller. softmax_scale must be passed explicitly
// (kernels/rope.h MlaSoftmaxScale: 0.13523378 for V3), never defaulted to 576^-0.5.
//
// Layouts (all contiguous, row-major, f32):
//   q   [num_q][num_heads][576]
//   out [num_q][num_heads][512]
//   lse [num_q][num_heads], natural-log logsumexp of the scaled scores (nullable)
//
// Causality: query i sits at absolute position start_pos + i and attends to cached tokens
// 0 .. start_pos + i inclusive.
//
// Invariance contract: a query's output bits depend only on its own position and the cache
// contents — not on how queries were grouped into calls, the thread count or the CPU — so
// chunked and one-shot prefill and decode give bit-identical outputs.
//
// Implementation: flash-style, one 256-token chunk of keys at a time at fixed absolute
// positions (dequantised once per chunk and shared by all heads and queries), scores and
// the value update through the batch-invariant GEMM (kernels/gemm.h), online softmax with
// f32 state in a fixed order and the portable exp (kernels/portable_math.h). `pool` (may be
// null) lends threads to the GEMMs; it does not change the result. Thread-safe for distinct
// outputs; reads the cache only.
//
// Errors (InvalidArgument, nothing meaningful written): null pointers, num_heads <= 0,
// num_q < 0, start_pos < 0, a non-finite query value (named by token and head), a
// non-finite or non-positive softmax_scale, a paged view that
// fails ValidateReadableTokens for start_pos + num_q tokens, or a contiguous kv_stride < 576.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/kv_layout.h"

namespace kv {
class ThreadPool;
}

namespace kv::kernels {

// Attention over a paged cache (mla-fp8-656 records are dequantised on the fly,
// mla-bf16-1152 widened). The cache must already hold tokens [0, start_pos + num_q).
absl::Status MlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                               const PagedKvView& kv, float softmax_scale, float* out, float* lse,
                               ThreadPool* pool = nullptr);

// One decode step: q [num_heads][576] attends to all seq_len cached tokens (the new token's
// record included). Equivalent to MlaPagedAttention(q, 1, num_heads, seq_len - 1, ...).
absl::Status MlaDecodeAttention(const float* q, int num_heads, const PagedKvView& kv,
                                int64_t seq_len, float softmax_scale, float* out, float* lse,
                                ThreadPool* pool = nullptr);

// The same attention over a contiguous f32 cache: kv row s is [c_s | k^R_s] at
// kv + s*kv_stride, for s in [0, start_pos + num_q). Used for bf16/f32 prefill without pages
// and as the shape the paged form is tested against.
absl::Status MlaContiguousAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                                    const float* kv, int64_t kv_stride, float softmax_scale,
                                    float* out, float* lse, ThreadPool* pool = nullptr);

}  // namespace kv::kernels
