// CUDA versions of the kernels/v4 compressor (formats.md §4.3) and sparse attention (§4.2),
// built only with CUDA (KVSTRATA_HAVE_CUDA). The compressors compute what Compressor::CompressAll
// computes (CPU reference in compressor.cc) on device buffers: one thread block per entry,
// per-channel fp32 softmax over the slots, RMSNorm with a double sum of squares, RoPE from a
// host-built cos/sin table (Compressor::EntryRopeTable), so results match the CPU to a few ulp
// (expf vs std::exp).
//
// Launches are asynchronous on `stream`; cudaSuccess means "launched". Inputs must stay valid
// until the stream reaches the kernel; out is owned by the caller. Thread-safe (no state).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kv::kernels::v4::cuda {

// Device pointers: c, z [(n_entries·ratio) × in_width] with in_width = 2·dim for ratio 4 and
// dim for ratio 128; bias [ratio × in_width]; norm [dim]; rope_cs [n_entries × rope_dim];
// out [n_entries × dim]. Entries start at position 0 (entry 0 of a CSA run has no previous
// window). cudaErrorInvalidValue for ratio not 4/128, dim not in [1, 4096], rope_dim odd or >
// dim, eps < 0, null pointers with n_entries > 0, or n_entries < 0. n_entries == 0 launches
// nothing.
cudaError_t CompressEntries(int ratio, int dim, int rope_dim, float eps, const float* c,
                            const float* z, const float* bias, const float* norm,
                            const float* rope_cs, int64_t n_entries, float* out,
                            cudaStream_t stream);

// Sparse attention (formats.md §4.2; CPU reference SparseAttention in sparse_attention.h) for
// n_queries queries of n_heads heads each. The picked rows are shared by the heads of a query,
// so each row is read once per group of 16 heads; a query's rows are split over blocks to
// fill the SMs, with partials in a stream-ordered allocation (cudaMallocAsync, freed in
// stream order before return) and a combine pass. Stream-capturable.
// Device pointers:
//   q, out       [n_queries × n_heads × head_dim]
//   sink         [n_heads] (shared by the queries)
//   entries      [n_entries × head_dim]
//   indices      [n_queries × n_indices]: query t's picks; entries outside [0, n_entries),
//                e.g. -1, are skipped (the caller checks causality on the host, as the CPU
//                version does)
//   window       query t's n_window rows start at window + t·window_stride floats (e.g.
//                window_stride = head_dim for consecutive tokens of one sequence, whose
//                windows overlap; n_window·head_dim for separate per-query windows)
//   inv_rope_cs  [n_queries × rope_dim]: cos, sin of (-position_t)·freq_k interleaved.
// cudaErrorInvalidValue for null pointers (where the counts use them), head_dim not 256 or 512,
// rope_dim not a multiple of 4 or > head_dim, n_heads < 1, negative counts or stride,
// n_queries > 65535, window_stride not a multiple of 4, or q, out, entries, window,
// inv_rope_cs not 16-byte aligned. n_queries == 0 launches nothing. Errors from the
// allocation or the launches are returned as they come.
cudaError_t SparseAttentionBatch(const float* q, const float* sink, int64_t n_queries, int n_heads,
                                 int head_dim, int rope_dim, const float* entries,
                                 int64_t n_entries, const int32_t* indices, int64_t n_indices,
                                 const float* window, int64_t n_window, int64_t window_stride,
                                 const float* inv_rope_cs, float* out, cudaStream_t stream);

// One query: SparseAttentionBatch with n_queries = 1 (same layouts and errors).
cudaError_t SparseAttention(const float* q, const float* sink, int n_heads, int head_dim,
                            int rope_dim, const float* entries, int64_t n_entries,
                            const int32_t* indices, int64_t n_indices, const float* window,
                            int64_t n_window, const float* inv_rope_cs, float* out,
                            cudaStream_t stream);

}  // namespace kv::kernels::v4::cuda
