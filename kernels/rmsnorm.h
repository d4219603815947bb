// RMSNorm in fp32 (formats.md §1.2): y = w ⊙ x / sqrt(mean(x²) + eps), the sum of squares
// accumulated in double so the reference is accurate for any row length.
//
// Invariance contract: each row's result depends only on that row (its sum of squares is one
// double accumulation, j ascending; then one sqrt and fixed products), never on the other rows.
//
// Pure function, thread-safe. y may equal x (in place); otherwise they must not overlap.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace kv::kernels {

// rows × dim values at x + r*x_stride, written to y + r*y_stride (strides in elements,
// >= dim). weight has dim entries. InvalidArgument for null pointers, dim <= 0, rows < 0,
// a stride < dim, eps < 0 / non-finite, or a row holding NaN/Inf (named); nothing is
// written then.
absl::Status RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t x_stride,
                     const float* weight, float eps, float* y, int64_t y_stride);

}  // namespace kv::kernels
