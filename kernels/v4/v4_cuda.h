// CUDA versions of the kernels/v4 compressors (formats.md §4.3), built only with CUDA
// (KVSTRATA_HAVE_CUDA). They compute what Compressor::CompressAll computes (CPU reference in
// compressor.cc) on device buffers: one thread block per entry, per-channel fp32 softmax over
// the slots, RMSNorm with a double sum of squares, RoPE from a host-built cos/sin table
// (Compressor::EntryRopeTable), so results match the CPU to a few ulp (expf vs std::exp).
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

// Sparse attention for one query (formats.md §4.2; CPU reference SparseAttention in
// sparse_attention.h): one thread block per head. Device pointers: q [n_heads × head_dim],
// sink [n_heads], entries [n_entries × head_dim], indices [n_indices] (entries outside
// [0, n_entries), e.g. -1, are skipped; the caller checks causality on the host, as the CPU
// version does), window [n_window × head_dim], inv_rope_cs [rope_dim] = cos, sin of
// (-position)·freq_k interleaved; out [n_heads × head_dim]. cudaErrorInvalidValue for null
// pointers, n_heads < 1, head_dim not in [1, 4096], rope_dim odd or > head_dim, negative
// counts, or (n_indices + n_window + head_dim)·4 bytes above 48 KiB of shared memory.
cudaError_t SparseAttention(const float* q, const float* sink, int n_heads, int head_dim,
                            int rope_dim, const float* entries, int64_t n_entries,
                            const int32_t* indices, int64_t n_indices, const float* window,
                            int64_t n_window, const float* inv_rope_cs, float* out,
                            cudaStream_t stream);

}  // namespace kv::kernels::v4::cuda
