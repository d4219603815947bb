// Dense fp32 matrix multiply on the CPU through OpenBLAS (cblas_sgemm); there is no
// hand-written CPU GEMM in kvstrata. All matrices are row-major.
//
// Thread-safety: OpenBLAS is thread-safe for concurrent calls on distinct outputs; it may
// use its own thread pool (OPENBLAS_NUM_THREADS).
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace kv::kernels {

// C[m×n] = alpha * op(A) · op(B) + beta * C, row-major. op(A) is m×k (A stored k×m when
// trans_a), op(B) is k×n (B stored n×k when trans_b). lda/ldb/ldc are row strides in
// elements. InvalidArgument for negative sizes, null pointers with non-empty operands, or a
// leading dimension smaller than its stored row; C is untouched then. With beta == 0, C's
// old contents are ignored (NaN poison does not leak through).
absl::Status Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc);

// The linear layer y[m×n] = x[m×k] · W^T for a weight stored [n×k] (PyTorch nn.Linear and
// safetensors order). Same errors as Sgemm.
absl::Status Linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y);

}  // namespace kv::kernels
