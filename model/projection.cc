#include "model/projection.h"

#include "core/status_macros.h"
#include "kernels/blas.h"

namespace kv::model {

absl::StatusOr<Projection> Projection::FromWeight(const float* w, int64_t n, int64_t k,
                                                  int64_t ld) {
  Projection p;
  ASSIGN_OR_RETURN(p.packed_, kernels::PackedB::FromWeight(w, n, k, ld));
  p.raw_ = w;
  p.raw_ld_ = ld;
  p.raw_transposed_ = true;
  return p;
}

absl::StatusOr<Projection> Projection::FromMatrix(const float* b, int64_t k, int64_t n,
                                                  int64_t ldb) {
  Projection p;
  ASSIGN_OR_RETURN(p.packed_, kernels::PackedB::FromMatrix(b, k, n, ldb));
  p.raw_ = b;
  p.raw_ld_ = ldb;
  p.raw_transposed_ = false;
  return p;
}

absl::Status Projection::Apply(const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
                               const MatmulContext& ctx) const {
  if (ctx.blas_baseline) {
    if (!keep_unpacked_) {
      return absl::FailedPreconditionError("projection: the BLAS baseline needs unpacked weights");
    }
    if (m == 0) return absl::OkStatus();
    return kernels::BlasRowTileGemm(raw_transposed_, m, n(), k(), x, ldx, raw_, raw_ld_, y, ldy);
  }
  return kernels::Gemm(m, x, ldx, packed_.view(), y, ldy, {.pool = ctx.pool});
}

}  // namespace kv::model
