// Transcendental functions that give the same bits on every CPU, compiler and libm: exp (f32
// and f64), log (f64) and sin/cos (f64), written once here and used by every computation
// whose result ends up in a page, a RoPE table, a seeded weight or a sampled token.
//
// Why not <cmath>: glibc's expf/exp/log/sin/cos are accurate but not specified to the bit.
// Their results have changed between glibc releases and differ between its FMA and non-FMA
// ifunc variants, and CUDA's and other libms differ again. A prefix cache shared by a fleet
// of mixed machines needs the same KV bits for the same tokens everywhere, so the forward
// may not depend on which libm a host has (issue #13).
//
// Invariance contract: each function is a fixed sequence of IEEE-754 binary32/binary64
// additions, subtractions, multiplications and divisions (each exactly rounded, to nearest
// even) plus bit manipulation: no fused multiply-add, no libm call, no table. Built with
// -ffp-contract=off (the top-level CMakeLists.txt sets it for all of kvstrata), every
// compiler and vector width evaluates it to the same bits; a loop of these may vectorise.
//
// Accuracy (checked against the C library over dense grids by kernels/portable_math_test.cc):
// ExpF within 2 ulp, ExpD, LogD and SinCosD within 4 ulp (SinCosD: within 4 ulp of the
// result's magnitude, or 1e-16 absolute near a zero of sin or cos).
//
// Special values: ExpF/ExpD return +0 below the underflow threshold (including -inf), +inf
// above the overflow threshold (including +inf), NaN for NaN. LogD returns -inf for ±0, NaN
// for negative numbers and NaN, +inf for +inf, and handles subnormals. SinCosD takes
// |x| < 2^29 (RoPE angles are at most 2^26 · 1 rad); outside that range, and for NaN or ±inf,
// both results are NaN.
//
// Pure functions, thread-safe, usable from CUDA device code (KV_HD). Device code compiled
// with nvcc's default --fmad=true may contract them, so GPU parity needs --fmad=false (or
// __fadd_rn / __fmul_rn) where it matters; kernels/GPU_NOTES.md tracks that.
#pragma once

#include <cstdint>

#include "kernels/portable.h"

namespace kv::kernels {

// e^x in binary32. x = n·ln2 + r, |r| <= ln2/2, n by the round-to-nearest of x·log2(e)
// through the 1.5·2^23 shifter; ln2 in two parts (the first with 9 significant bits, so n·hi
// is exact); e^r by a degree-7 polynomial (Cephes's coefficients for expf); 2^n applied in
// two exact halves so that results in the subnormal range round once.
KV_HD float ExpF(float x) {
  const float xc = x < -110.0f ? -110.0f : (x > 89.0f ? 89.0f : x);  // NaN stays NaN
  const float shifter = 12582912.0f;                                 // 1.5 · 2^23
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = (p * z + r) + 1.0f;
  // n as an integer from the shifter's bits (no float->int conversion, defined for NaN too),
  // clamped so the exponent fields below stay valid whatever the input.
  int32_t ni = static_cast<int32_t>(FloatBits(t) - FloatBits(shifter));
  ni = ni < -160 ? -160 : (ni > 130 ? 130 : ni);
  const int32_t n1 = ni / 2, n2 = ni - n1;
  const float s1 = BitsToFloat(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = BitsToFloat(static_cast<uint32_t>(n2 + 127) << 23);
  return (y * s1) * s2;
}

// e^x in binary64: the same reduction with the 1.5·2^52 shifter and ln2 split 32 + 53 bits;
// e^r by its Taylor series to degree 13 (|r| <= 0.347: the first omitted term is < 2^-60).
KV_HD double ExpD(double x) {
  const double xc = x < -746.0 ? -746.0 : (x > 710.0 ? 710.0 : x);
  const double shifter = 6755399441055744.0;  // 1.5 · 2^52
  const double t = xc * 0x1.71547652b82fep+0 + shifter;
  const double n = t - shifter;
  const double r = (xc - n * 0x1.62e42fee00000p-1) - n * 0x1.a39ef35793c76p-33;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  const double y = (p * (r * r) + r) + 1.0;
  int64_t ni = static_cast<int64_t>(DoubleBits(t) - DoubleBits(shifter));
  ni = ni < -1100 ? -1100 : (ni > 1030 ? 1030 : ni);
  const int64_t n1 = ni / 2, n2 = ni - n1;
  const double s1 = BitsToDouble(static_cast<uint64_t>(n1 + 1023) << 52);
  const double s2 = BitsToDouble(static_cast<uint64_t>(n2 + 1023) << 52);
  return (y * s1) * s2;
}

// ln x in binary64: x = 2^e · m with m in [√½, √2); ln m = 2 atanh(s), s = (m-1)/(m+1),
// |s| <= 0.1716, by its series to s^23 (the first omitted term is < 2^-62 relative).
KV_HD double LogD(double x) {
  uint64_t b = DoubleBits(x);
  if (x != x || x < 0.0) return BitsToDouble(0x7FF8000000000000ull);  // NaN
  if (x == 0.0) return -BitsToDouble(0x7FF0000000000000ull);          // -inf
  if (b == 0x7FF0000000000000ull) return x;                           // +inf
  int64_t e = 0;
  if (b < 0x0010000000000000ull) {  // subnormal: scale by 2^54 (exact)
    b = DoubleBits(x * 18014398509481984.0);
    e = -54;
  }
  e += static_cast<int64_t>(b >> 52) - 1023;
  double m = BitsToDouble((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // [1, 2)
  if (m > 1.4142135623730951) {
    m *= 0.5;
    e += 1;
  }
  const double f = m - 1.0;  // exact (Sterbenz)
  const double s = f / (2.0 + f);
  const double z = s * s;
  double p = 1.0 / 23.0;
  p = p * z + 1.0 / 21.0;
  p = p * z + 1.0 / 19.0;
  p = p * z + 1.0 / 17.0;
  p = p * z + 1.0 / 15.0;
  p = p * z + 1.0 / 13.0;
  p = p * z + 1.0 / 11.0;
  p = p * z + 1.0 / 9.0;
  p = p * z + 1.0 / 7.0;
  p = p * z + 1.0 / 5.0;
  p = p * z + 1.0 / 3.0;
  const double ln_m = 2.0 * s + 2.0 * s * (z * p);
  const double ed = static_cast<double>(e);
  return ed * 0x1.62e42fee00000p-1 + (ed * 0x1.a39ef35793c76p-33 + ln_m);
}

// base^y = e^(y ln base) for base > 0 (the RoPE frequencies θ^(-2i/d)).
KV_HD double PowD(double base, double y) { return ExpD(y * LogD(base)); }

// sin x and cos x in binary64. x = k·π/2 + r, |r| <= π/4, with k the nearest integer to
// x·2/π and π/2 in five parts, the first four of 24 significant bits (so k·part is exact for
// |k| < 2^29 and the first subtraction is exact by Sterbenz); then the Taylor series of sin
// (to r^19) and cos (to r^20) and the quadrant's signs.
KV_HD void SinCosD(double x, double* sin_out, double* cos_out) {
  if (!(x > -536870912.0 && x < 536870912.0)) {  // |x| >= 2^29, NaN or inf
    *sin_out = *cos_out = BitsToDouble(0x7FF8000000000000ull);
    return;
  }
  const double shifter = 6755399441055744.0;
  const double t = x * 0x1.45f306dc9c883p-1 + shifter;
  const double k = t - shifter;
  const double r =
      ((((x - k * 0x1.921fb40000000p+0) - k * 0x1.4442d00000000p-24) - k * 0x1.8469880000000p-48) -
       k * 0x1.8cc5160000000p-72) -
      k * 0x1.01b839a25204ap-96;
  const double z = r * r;
  double s = -1.0 / 121645100408832000.0;  // -1/19!
  s = s * z + 1.0 / 355687428096000.0;
  s = s * z - 1.0 / 1307674368000.0;
  s = s * z + 1.0 / 6227020800.0;
  s = s * z - 1.0 / 39916800.0;
  s = s * z + 1.0 / 362880.0;
  s = s * z - 1.0 / 5040.0;
  s = s * z + 1.0 / 120.0;
  s = s * z - 1.0 / 6.0;
  const double sin_r = r + r * (z * s);
  double c = 1.0 / 2432902008176640000.0;  // 1/20!
  c = c * z - 1.0 / 6402373705728000.0;
  c = c * z + 1.0 / 20922789888000.0;
  c = c * z - 1.0 / 87178291200.0;
  c = c * z + 1.0 / 479001600.0;
  c = c * z - 1.0 / 3628800.0;
  c = c * z + 1.0 / 40320.0;
  c = c * z - 1.0 / 720.0;
  c = c * z + 1.0 / 24.0;
  const double cos_r = (1.0 - 0.5 * z) + z * (z * c);
  switch (static_cast<int>(DoubleBits(t) & 3u)) {  // k mod 4 (two's complement of k + 2^52·1.5)
    case 0:
      *sin_out = sin_r;
      *cos_out = cos_r;
      break;
    case 1:
      *sin_out = cos_r;
      *cos_out = -sin_r;
      break;
    case 2:
      *sin_out = -sin_r;
      *cos_out = -cos_r;
      break;
    default:
      *sin_out = -cos_r;
      *cos_out = sin_r;
      break;
  }
}

}  // namespace kv::kernels
