#include "kernels/rmsnorm.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kv::kernels {

absl::Status RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t x_stride,
                     const float* weight, float eps, float* y, int64_t y_stride) {
  if (rows < 0 || dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: rows ", rows, " must be >= 0 and dim ", dim, " > 0"));
  }
  if (x_stride < dim || y_stride < dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: strides ", x_stride, "/", y_stride, " smaller than dim ", dim));
  }
  if (!(eps >= 0.0f) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: bad eps ", eps));
  }
  if (rows == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("RmsNorm: null input, weight or output");
  }
  // Sums first, so a non-finite row is reported before anything is written.
  std::vector<double> ss(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    for (int64_t j = 0; j < dim; ++j) ss[r] += static_cast<double>(xr[j]) * xr[j];
    if (!std::isfinite(ss[r])) {
      return absl::InvalidArgumentError(
          absl::StrCat("RmsNorm: row ", r, " has a NaN or infinite value"));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    float* yr = y + r * y_stride;
    const float inv = static_cast<float>(1.0 / std::sqrt(ss[r] / dim + eps));
    for (int64_t j = 0; j < dim; ++j) yr[j] = weight[j] * (xr[j] * inv);
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels
