// Projection: one weight matrix of the forward, packed once at model load for the
// batch-invariant GEMM (kernels/gemm.h), and MatmulContext, how a forward runs its products.
//
// Every matrix product of the reference forwards (model/transformer.h, model/v4_model.h) goes
// through Projection::Apply, so a token's result never depends on how many other tokens
// share the call, on the thread count or on the CPU (issue #13). The one exception is opt-in
// and only for benchmarks: MatmulContext::blas_baseline runs the pre-#13 path (OpenBLAS in
// fixed 16-row tiles, kernels/blas.h), whose bits are not portable, so that
// `kvstrata bench prefill` can measure the old decode path next to the new one.
//
// A Projection is immutable after creation and may be used from several threads at once. It
// owns its packed copy; the unpacked view the baseline reads is borrowed from the caller's
// weights (KeepUnpacked), which must then outlive it.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/gemm.h"

namespace kv {
class ThreadPool;
}

namespace kv::model {

struct MatmulContext {
  // Threads lent to the products (not owned, may be null). Results do not depend on it.
  ThreadPool* pool = nullptr;
  // Benchmarks only: OpenBLAS in 16-row tiles instead of the invariant GEMM (see above).
  bool blas_baseline = false;
};

class Projection {
 public:
  Projection() = default;
  // y = x·Wᵀ for W stored [n×k] with row stride ld (nn.Linear / safetensors order).
  // InvalidArgument for bad sizes or a null pointer.
  static absl::StatusOr<Projection> FromWeight(const float* w, int64_t n, int64_t k, int64_t ld);
  static absl::StatusOr<Projection> FromWeight(const float* w, int64_t n, int64_t k) {
    return FromWeight(w, n, k, k);
  }
  // y = x·B for B stored row-major [k×n] with row stride ldb. Same errors.
  static absl::StatusOr<Projection> FromMatrix(const float* b, int64_t k, int64_t n, int64_t ldb);

  int64_t n() const { return packed_.n(); }
  int64_t k() const { return packed_.k(); }
  uint64_t bytes() const { return packed_.bytes(); }
  // Keeps the pointer given at creation for MatmulContext::blas_baseline; the caller keeps the
  // weights alive and unchanged for this Projection's lifetime.
  void KeepUnpacked() { keep_unpacked_ = true; }

  // y[m×n] (row stride ldy >= n) = x[m×k] (row stride ldx >= k) · op. Errors of kernels::Gemm;
  // FailedPrecondition for a baseline run without KeepUnpacked.
  absl::Status Apply(const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
                     const MatmulContext& ctx) const;
  // Contiguous rows: ldx = k, ldy = n.
  absl::Status Apply(const float* x, int64_t m, float* y, const MatmulContext& ctx) const {
    return Apply(x, m, k(), y, n(), ctx);
  }

 private:
  kernels::PackedB packed_;
  const float* raw_ = nullptr;  // as given at creation; read only when keep_unpacked_
  int64_t raw_ld_ = 0;
  bool raw_transposed_ = false;  // raw_ is W [n×k] (true) or B [k×n] (false)
  bool keep_unpacked_ = false;
};

}  // namespace kv::model
