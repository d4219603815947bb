// CUDA versions of the kernels (built only when KVSTRATA_HAVE_CUDA). Each has the CPU
// reference named beside it, and kernels/cuda_kernels_test.cc (ctest label gpu) compares
// the two on fresh random inputs.
//
// Conventions (STYLE.md "Kernels", FlashInfer-style): raw device pointers, a stream, and a
// cudaError_t result. Launches are asynchronous: a cudaSuccess return means "launched", and
// execution errors surface at the next synchronising call. Arguments that can be checked on
// the host (sizes, strides, layout, null pointers) give cudaErrorInvalidValue without
// launching. Data-dependent problems cannot return an error from the device, so:
//   * non-finite inputs to an encoder: that token's record is not written and the lowest
//     such token index is atomically min-ed into *bad_token (device int32, nullable; the
//     caller initialises it to INT32_MAX and reads it after synchronising);
//   * a block-table entry outside the pool: that query's output and lse are NaN;
//   * NaN/Inf in RMSNorm, RoPE or attention inputs propagate to NaN outputs (the CPU forms
//     reject them with InvalidArgument).
// Conversion to absl::Status happens at the module edge (kernels/cuda_status.h).
//
// Thread-safety: the functions keep no state; concurrent launches on different streams are
// safe for disjoint outputs. All pointers are device pointers and stay owned by the caller;
// PagedKvView.pool and .block_table must be device memory here.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/kv_layout_defs.h"

namespace kv::kernels::cuda {

// Encodes n tokens (CPU: EncodeMlaRecords / AppendMlaTokens). Latent/rope rows are f32
// (element strides). With slots == nullptr record i goes to out + i*out_stride; otherwise
// to kv's slot slots[i] (slot -1: nothing written; out/out_stride and kv.block_table are
// unused then). Bit-identical to the CPU encoder.
cudaError_t EncodeMlaRecords(KvLayout layout, const float* latent, int64_t latent_stride,
                             const float* rope, int64_t rope_stride, int64_t n, uint8_t* out,
                             int64_t out_stride, int32_t* bad_token, cudaStream_t stream);
cudaError_t AppendMlaTokens(const PagedKvView& kv, const int64_t* slots, int64_t n,
                            const float* latent, int64_t latent_stride, const float* rope,
                            int64_t rope_stride, int32_t* bad_token, cudaStream_t stream);
// The same with bf16 latent and rope (raw uint16 bits).
cudaError_t EncodeMlaRecordsBf16(KvLayout layout, const uint16_t* latent, int64_t latent_stride,
                                 const uint16_t* rope, int64_t rope_stride, int64_t n, uint8_t* out,
                                 int64_t out_stride, int32_t* bad_token, cudaStream_t stream);

// Decodes n records into rows of 576 floats (CPU: DecodeMlaRecords). Exact.
cudaError_t DecodeMlaRecords(KvLayout layout, const uint8_t* in, int64_t in_stride, int64_t n,
                             float* out, int64_t out_stride, cudaStream_t stream);

// RMSNorm, one block per row, sum of squares in double (CPU: RmsNorm).
cudaError_t RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t x_stride,
                    const float* weight, float eps, float* y, int64_t y_stride,
                    cudaStream_t stream);

// Interleaved-pair rotation with a device copy of a RopeTable's cos/sin arrays
// ([max_positions][rope_dim/2]) (CPU: ApplyRope). Positions outside the table leave that
// token's vectors unchanged (the CPU form rejects them up front).
cudaError_t ApplyRope(const float* cos, const float* sin, int rope_dim, int64_t max_positions,
                      const int64_t* positions, int64_t n, int heads, float* x,
                      int64_t token_stride, int64_t head_stride, cudaStream_t stream);

// Absorbed MLA attention over paged KV, causal by position (CPU: MlaPagedAttention; the
// same layouts of q/out/lse). Split-K over keys with a combine pass; the partial results
// live in a stream-ordered allocation (cudaMallocAsync) freed before return, in stream
// order. lse may be null. Decode is num_q = 1, start_pos = seq_len - 1. Each KV record of
// a split is read once per group of 16 heads. Records are read with 16-byte loads when
// pool, block_stride and layer_offset are multiples of 16, bytewise otherwise (same
// results). Stream-capturable (kernels_gpu_bench times it inside a CUDA graph).
cudaError_t MlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                              const PagedKvView& kv, float softmax_scale, float* out, float* lse,
                              cudaStream_t stream);

// Row-major C = alpha op(A) op(B) + beta C with cuBLAS on `handle`'s stream (CPU: Sgemm).
// CUBLAS_STATUS_INVALID_VALUE for bad sizes or leading dimensions.
cublasStatus_t Sgemm(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                     int64_t k, float alpha, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace kv::kernels::cuda
