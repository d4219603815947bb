// KV_HD marks small inline functions that are shared, unchanged, by the CPU reference and the
// CUDA kernels (kernels/*.cu). Under nvcc they become __host__ __device__; under a plain C++
// compiler they are ordinary inline functions. Header-only; no state.
#pragma once

#if defined(__CUDACC__)
#define KV_HD __host__ __device__ __forceinline__
#else
#define KV_HD inline
#endif

#include <cstdint>
#include <cstring>

namespace kv::kernels {

// Bit cast that works in host and device code (std::bit_cast is not usable in device code
// with every toolkit; memcpy of a register-sized value compiles to a move).
KV_HD uint32_t FloatBits(float x) {
  uint32_t b;
  memcpy(&b, &x, sizeof(b));
  return b;
}
KV_HD float BitsToFloat(uint32_t b) {
  float x;
  memcpy(&x, &b, sizeof(x));
  return x;
}
KV_HD uint64_t DoubleBits(double x) {
  uint64_t b;
  memcpy(&b, &x, sizeof(b));
  return b;
}
KV_HD double BitsToDouble(uint64_t b) {
  double x;
  memcpy(&x, &b, sizeof(x));
  return x;
}

}  // namespace kv::kernels
