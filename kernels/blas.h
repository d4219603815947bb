// OpenBLAS (cblas_sgemm), kept only where the bits of the result do not matter: the
// benchmarks' limit (how fast a tuned BLAS runs the same shapes) and their baseline (the
// forward as it ran before issue #13, every product in a fixed 16-row tile). Nothing that
// reaches a page, a logit or a sampled token calls this; that is kernels/gemm.h.
//
// Its results are NOT batch-invariant: a row's bits may depend on m, on its position in the
// call, on OpenBLAS's thread count and on which CPU kernel OpenBLAS picked (issue #13: the
// Haswell and Zen sgemm kernels round a row differently at different positions in a 16-row
// tile). All matrices are row-major.
//
// Thread-safety: OpenBLAS is thread-safe for concurrent calls on distinct outputs; it may
// use its own thread pool (OPENBLAS_NUM_THREADS).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/kv_layout.h"

namespace kv::kernels {

// C[m×n] = alpha * op(A) · op(B) + beta * C, row-major. op(A) is m×k (A stored k×m when
// trans_a), op(B) is k×n (B stored n×k when trans_b). lda/ldb/ldc are row strides in
// elements. InvalidArgument for negative sizes, null pointers with non-empty operands, or a
// leading dimension smaller than its stored row; C is untouched then. With beta == 0, C's
// old contents are ignored (NaN poison does not leak through).
absl::Status Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc);

// y[m×n] = x[m×k] · W^T for a weight stored [n×k] (PyTorch nn.Linear and safetensors order).
// Same errors as Sgemm.
absl::Status SgemmLinear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y);

// The pre-#13 forward's product: C = A·op(B) computed 16 rows at a time, each tile packed
// and zero-padded to exactly 16 rows so that sgemm always sees the same shape (which keeps
// rows invariant only on CPUs whose sgemm kernel rounds every row of a tile alike). Used as
// the decode benchmark's baseline (kvstrata bench prefill). InvalidArgument for bad sizes.
inline constexpr int64_t kBlasRowTile = 16;
absl::Status BlasRowTileGemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                             int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);

// The pre-#13 paged MLA attention, for the same baseline: 256-key chunks, scores and value
// sums through OpenBLAS sgemm per query, libm exp. Same arguments and errors as
// kernels/mla_attention.h MlaPagedAttention; results are not batch-invariant.
absl::Status BlasMlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                                   const PagedKvView& kv, float softmax_scale, float* out);

// Sets OpenBLAS's own thread count (openblas_set_num_threads).
void SetBlasThreads(int threads);

}  // namespace kv::kernels
