#include "kernels/fp8.h"

namespace kv::kernels {

void FloatToE4m3(const float* in, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToE4m3(in[i]);
}

void E4m3ToFloat(const uint8_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = E4m3ToFloat(in[i]);
}

}  // namespace kv::kernels
