#include "kernels/fp8.h"

#include <array>

namespace kv::kernels {

void FloatToE4m3(const float* in, uint8_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToE4m3(in[i]);
}

const float* E4m3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = E4m3ToFloat(static_cast<uint8_t>(c));
    return t;
  }();
  return table.data();
}

void E4m3ToFloat(const uint8_t* in, float* out, int64_t n) {
  const float* table = E4m3Table();
  for (int64_t i = 0; i < n; ++i) out[i] = table[in[i]];
}

}  // namespace kv::kernels
