// bfloat16 helpers. A bf16 value is carried as its raw 16-bit pattern (uint16_t): the top half
// of an IEEE float32. kvstrata stores the MLA RoPE part (formats.md §2.1) and the whole
// mla-bf16-1152 record in this form, little-endian.
//
// FloatToBf16 rounds to nearest, ties to even (what PyTorch's .to(torch.bfloat16) and CUDA's
// __float2bfloat16_rn do). NaN stays NaN (quiet bit set, sign kept); ±Inf stays ±Inf; finite
// values that round past the largest bf16 become ±Inf, as in IEEE rounding.
// Bf16ToFloat is exact.
//
// Invariance contract: each conversion is one exact bit operation or one RNE rounding of its
// own input, independent of its neighbours, the vector width and the CPU.
//
// Pure functions: thread-safe, no allocation; the array forms write only out[0..n).
#pragma once

#include <cstdint>

#include "kernels/portable.h"

namespace kv::kernels {

KV_HD uint16_t FloatToBf16(float x) {
  uint32_t b = FloatBits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep sign, force a quiet NaN.
    return static_cast<uint16_t>((b >> 16) | 0x0040u);
  }
  b += 0x7FFFu + ((b >> 16) & 1u);  // round to nearest even on the dropped 16 bits
  return static_cast<uint16_t>(b >> 16);
}

KV_HD float Bf16ToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

// Array forms. `in` and `out` must not overlap. n <= 0 writes nothing.
void FloatToBf16(const float* in, uint16_t* out, int64_t n);
void Bf16ToFloat(const uint16_t* in, float* out, int64_t n);

}  // namespace kv::kernels
