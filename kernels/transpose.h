// Out-of-place fp32 matrix transpose: dst[c][r] = src[r][c]. Pure data movement, so every
// implementation gives the same bytes; an AVX2 8×8 kernel is picked at run time where the CPU
// has it (the build has no -march flag), a cache-blocked loop otherwise. The attention uses it
// to lay a chunk of cached keys out k-major for the batch-invariant GEMM (kernels/gemm.h).
//
// Thread-safe; src and dst must not overlap. Strides are in elements (src_ld >= cols,
// dst_ld >= rows); nothing is checked (a kernel-internal helper).
#pragma once

#include <cstdint>

namespace kv::kernels {

void TransposeF32(const float* src, int64_t rows, int64_t cols, int64_t src_ld, float* dst,
                  int64_t dst_ld);

}  // namespace kv::kernels
