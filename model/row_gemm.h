// Row-tiled GEMM: every matrix product of the reference forward goes through here, so that a
// token's result never depends on how many other tokens share the call.
//
// Why: OpenBLAS picks different code paths (and thread splits) for different row counts m;
// rows handled by the microkernel's tail come out with different rounding than rows in full
// blocks (measured on OpenBLAS 0.3.21, SkylakeX: sgemm with m = 1, 3, 7, 15, 17 rows gives
// rows that differ from the same rows computed with m = 16 or 200). Chunked prefill, prefix
// resume and decode must produce bit-identical KV, so we call sgemm with one fixed shape:
// kRowTile rows, packed into a contiguous tile (zero-padded when fewer remain). With the
// shape fixed, each row's arithmetic is the same whatever its neighbours and its position in
// the tile; row_gemm_test checks exactly that on the machine it runs on.
//
// Thread-safe (scratch tiles are thread_local). GEMM itself is kernels::Sgemm (OpenBLAS).
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace kv::model {

inline constexpr int64_t kRowTile = 16;

// C[m×n] = A[m×k] · op(B) with op(B) = B (k×n, ldb >= n) or Bᵀ (B stored n×k, ldb >= k) when
// trans_b. Row strides lda/ldc in elements. Errors as kernels::Sgemm (InvalidArgument).
absl::Status TiledGemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float* c, int64_t ldc);

// y[m×n] = x[m×k] · Wᵀ for a weight stored [n×k] (nn.Linear order), row-tiled.
inline absl::Status TiledLinear(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                                float* y) {
  return TiledGemm(true, m, n, k, x, k, w, k, y, n);
}

}  // namespace kv::model
