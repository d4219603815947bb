// The FP8 E4M3 codec and the power-of-two tile scale used by every FP8 KV layout.
//
// E4M3 ("E4M3FN", CUDA __NV_E4M3; formats.md §5.1): s eeee mmm, bias 7, no infinities,
// NaN = 0x7F / 0xFF, largest finite 448 (0x7E), smallest subnormal 2^-9 (0x01).
//
// FloatToE4m3 has exactly the semantics of cuda_fp8.h's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) (formats.md §5.2/§5.3):
// round to nearest, ties to even; |x| >= 448 and ±Inf saturate to ±448 (464, the tie between
// 448 and the nonexistent 480, rounds to the even 448); any NaN encodes as 0x7F. This is
// checked bit for bit over all 2^32 inputs by kernels/fp8_exhaustive_test.cc.
//
// Tile scales (DESIGN.md "Quantizer", formats.md §2.1): scale = 2^ceil(log2(max(amax,1e-4)/448)),
// computed exactly from the bits of amax (no floating-point log2 that could round the wrong
// way). Because the scale is a power of two, x/scale and code*scale are exact, and
// |x/scale| <= 448 always holds, so no clamp is ever active for finite input.
//
// UE8M0 (formats.md §5.1): an 8-bit biased exponent, value 2^(b-127); 0xFF is NaN; no zero.
//
// Invariance contract: every result is exact or a single IEEE rounding of one value, so it is
// the same bits on any CPU, GPU, compiler or vector width.
//
// All functions are pure and thread-safe; they are usable from CUDA device code (KV_HD).
#pragma once

#include <cstdint>

#include "kernels/portable.h"

namespace kv::kernels {

inline constexpr float kE4m3Max = 448.0f;
inline constexpr uint8_t kE4m3NaN = 0x7F;
// The floor on amax before the scale is derived (DESIGN.md), so an all-zero tile gets a
// finite, positive scale.
inline constexpr float kScaleAmaxFloor = 1e-4f;

// float -> E4M3 code, __NV_SATFINITE semantics (see above). Never fails.
KV_HD uint8_t FloatToE4m3(float x) {
  const uint32_t b = FloatBits(x);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return kE4m3NaN;       // NaN, either sign
  if (a >= 0x43E00000u) return sign | 0x7Eu;  // >= 448, incl. Inf: saturate
  if (a >= 0x3C800000u) {                     // >= 2^-6: normal E4M3
    // Keep 3 of 23 mantissa bits with round-to-nearest-even; a carry out of the mantissa
    // bumps the exponent, which is the correct rounding. 120 = 127 - 7 rebiases.
    const uint32_t r = (a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
    return sign | static_cast<uint8_t>(r - (120u << 3));
  }
  // Subnormal E4M3: value = m * 2^-9, m = RNE(|x| * 2^9) in 0..8 (8 is the smallest normal,
  // code 0x08, which is also the right encoding). Right-shift the 24-bit significand.
  const uint32_t e = a >> 23;
  if (e < 117) return sign;  // |x| < 2^-10: rounds to zero (2^-10 itself ties to even 0)
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 141u - e;  // |x|*2^9 = m * 2^(e-127-23+9)
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<uint8_t>(q);
}

// Fast path of FloatToE4m3 for the quantizer's inner loop: branch-free (vectorisable), valid
// only for finite x with |x| <= 448, where it returns exactly FloatToE4m3(x) (checked over
// every such float by kernels/fp8_exhaustive_test.cc). Other inputs give unspecified codes.
KV_HD uint8_t FloatToE4m3InRange(float x) {
  const uint32_t b = FloatBits(x);
  const uint32_t a = b & 0x7FFFFFFFu;
  const uint32_t normal = ((a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
  // Below 2^-6: |x| * 2^9 < 8, and adding 2^23 rounds it to an integer, ties to even.
  const uint32_t sub = FloatBits(BitsToFloat(a) * 512.0f + 8388608.0f) - 0x4B000000u;
  // A mask select rather than ?: so that compilers vectorise a loop of these.
  const uint32_t is_normal = 0u - static_cast<uint32_t>(a >= 0x3C800000u);
  return static_cast<uint8_t>((normal & is_normal) | (sub & ~is_normal) | ((b >> 24) & 0x80u));
}

// E4M3 code -> float. Exact for every code; 0x7F and 0xFF decode to NaN.
KV_HD float E4m3ToFloat(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t e = (code >> 3) & 0xFu;
  const uint32_t m = code & 0x7u;
  if (e == 0xFu && m == 0x7u) return BitsToFloat(sign | 0x7FC00000u);
  if (e == 0) {
    // m * 2^-9 computed exactly: m in 0..7 is a small integer, 2^-9 is exact.
    const float v = static_cast<float>(m) * 0.001953125f;
    return BitsToFloat(FloatBits(v) | sign);
  }
  return BitsToFloat(sign | ((e + 120u) << 23) | (m << 20));
}

// E4M3 decode without a table lookup or branches, so a loop of it vectorises: a normal
// code's 7 magnitude bits shifted to float bits 20..26 and rebiased by 120 are exactly the
// float's exponent and mantissa; a subnormal code is m * 2^-9 through an int->float
// conversion (no f32 subnormal arithmetic, which is slow on x86). 0x7F/0xFF become NaN.
// Bit-identical to E4m3ToFloat for every code (kernels/fp8_test.cc).
KV_HD float E4m3ToFloatArith(uint8_t c) {
  const uint32_t mag = c & 0x7Fu;
  const uint32_t normal = (mag << 20) + (120u << 23);
  const uint32_t sub = FloatBits(static_cast<float>(static_cast<int32_t>(mag)) * 0x1p-9f);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(mag < 8u);
  const uint32_t is_nan = 0u - static_cast<uint32_t>(mag == 0x7Fu);
  const uint32_t bits = (((normal & ~is_sub) | (sub & is_sub)) & ~is_nan) | (0x7FC00000u & is_nan);
  return BitsToFloat(bits | (static_cast<uint32_t>(c & 0x80u) << 24));
}

// The exponent e of the tile scale 2^e = 2^ceil(log2(max(amax, 1e-4) / 448)), exact.
// amax must be finite and >= 0 (callers reject non-finite tiles first); the result lies in
// [-22, 120]. Derivation: amax = 1.f * 2^(E-127); amax/448 = (1.f/1.75) * 2^(E-135), and
// 1.f/1.75 <= 1 iff the 23-bit mantissa field is <= 0x600000.
KV_HD int Pow2ScaleExponent(float amax) {
  const float a = amax > kScaleAmaxFloor ? amax : kScaleAmaxFloor;
  const uint32_t b = FloatBits(a) & 0x7FFFFFFFu;
  const int e_field = static_cast<int>(b >> 23);
  return e_field - 135 + ((b & 0x7FFFFFu) > 0x600000u ? 1 : 0);
}

// 2^e as a float for e in [-126, 127] (normal range; what Pow2ScaleExponent returns).
KV_HD float Pow2(int e) { return BitsToFloat(static_cast<uint32_t>(e + 127) << 23); }

// The tile scale itself: Pow2(Pow2ScaleExponent(amax)).
KV_HD float Pow2Scale(float amax) { return Pow2(Pow2ScaleExponent(amax)); }

// UE8M0 byte -> value 2^(b-127); 0xFF is NaN. 2^-127 (b = 0) is a float32 subnormal.
KV_HD float Ue8m0ToFloat(uint8_t b) {
  if (b == 0xFFu) return BitsToFloat(0x7FC00000u);
  if (b == 0) return BitsToFloat(0x00400000u);  // 2^-127
  return BitsToFloat(static_cast<uint32_t>(b) << 23);
}

// float -> UE8M0, rounding up to the next power of two (cudaRoundPosInf; what a scale needs:
// the stored scale is never smaller than the requested one). NaN -> 0xFF; +Inf and values
// above 2^127 -> 0xFE (saturate); values <= 2^-127, zero and negatives -> 0x00.
// Examples (formats.md §5.3): 1.0 -> 0x7F, 0.75 -> 0x7F, 3.0 -> 0x81.
KV_HD uint8_t FloatToUe8m0Ceil(float x) {
  const uint32_t b = FloatBits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFu;
  if (b & 0x80000000u) return 0x00u;   // negative or -0
  if (b <= 0x00400000u) return 0x00u;  // <= 2^-127
  if (b > 0x7F000000u) return 0xFEu;   // > 2^127, incl. +Inf
  const uint32_t e = b >> 23;
  if (e == 0) return 0x01u;  // subnormal above 2^-127 rounds up to 2^-126
  return static_cast<uint8_t>(e + ((b & 0x7FFFFFu) != 0 ? 1u : 0u));
}

// Array forms (CPU). `in`/`out` must not overlap; n <= 0 writes nothing.
void FloatToE4m3(const float* in, uint8_t* out, int64_t n);
void E4m3ToFloat(const uint8_t* in, float* out, int64_t n);

// E4m3ToFloat of every code 0..255, bit-identical to the scalar form (CPU; built once,
// thread-safe): table lookups for bulk dequantization.
const float* E4m3Table();

}  // namespace kv::kernels
