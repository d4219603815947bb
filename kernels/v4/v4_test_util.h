// Shared pieces of the kernels/v4 tests: random compressor weights and float64 reference
// implementations written straight from formats.md §4.3 (independent of compressor.cc).
// Not thread-safe (uses the caller's Rng).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "kernels/test_util.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/v4_config.h"

namespace kv::kernels::v4::testing {

using kv::kernels::testing::Rng;

struct TestCompressor {
  Compressor comp;
  std::vector<float> bias, norm;
};

inline TestCompressor MakeCompressor(Rng& rng, int ratio, int dim) {
  CompressorSpec spec{.ratio = ratio, .dim = dim, .rope_dim = 64, .eps = 1e-6f};
  const int iw = ratio == 4 ? 2 * dim : dim;
  std::vector<float> bias(static_cast<size_t>(ratio) * iw), norm(dim);
  for (float& b : bias) b = static_cast<float>(rng.Uniform(-1.0, 1.0));
  for (float& w : norm) w = static_cast<float>(rng.Uniform(0.5, 1.5));
  V4Config cfg;
  auto c = Compressor::Create(spec, bias, norm, CompressRopeParams(cfg));
  if (!c.ok()) std::abort();
  return TestCompressor{*std::move(c), bias, norm};
}

// Random projected rows: C ~ N(0,1)·2^[-2,2] per token scale, Z ~ N(0, 2).
inline void MakeRows(Rng& rng, int64_t n, int width, std::vector<float>* c, std::vector<float>* z) {
  c->resize(n * width);
  z->resize(n * width);
  for (int64_t t = 0; t < n; ++t) {
    const float scale = std::ldexp(1.0f, static_cast<int>(rng.Int(-2, 2)));
    for (int i = 0; i < width; ++i) {
      (*c)[t * width + i] = rng.Normal() * scale;
      (*z)[t * width + i] = rng.Normal() * 2.0f;
    }
  }
}

// float64 reference of entry w (§4.3), indexing tokens by absolute position.
inline std::vector<double> ReferenceEntry(const TestCompressor& tc, const std::vector<float>& c,
                                          const std::vector<float>& z, int64_t w) {
  const Compressor& comp = tc.comp;
  const std::vector<float>& bias = tc.bias;
  const std::vector<float>& norm = tc.norm;
  const int m = comp.spec().ratio, d = comp.spec().dim, iw = comp.in_width();
  std::vector<double> gmax(d, -INFINITY), num(d, 0.0), den(d, 0.0);
  struct S {
    int64_t tok;
    int off;
    int64_t slot;
  };
  std::vector<S> slots;
  if (m == 4) {
    for (int64_t j = 4 * w - 4; j < 4 * w; ++j)
      if (j >= 0) slots.push_back({j, 0, j - (4 * w - 4)});  // Ca, bias row j-(4w-4), [:d]
    for (int64_t j = 4 * w; j < 4 * w + 4; ++j) slots.push_back({j, d, j - 4 * w});  // Cb
  } else {
    for (int64_t j = m * w; j < m * w + m; ++j) slots.push_back({j, 0, j - m * w});
  }
  auto gate = [&](const S& s, int i) {
    return double(z[s.tok * iw + s.off + i]) + double(bias[s.slot * iw + s.off + i]);
  };
  for (const S& s : slots)
    for (int i = 0; i < d; ++i) gmax[i] = std::max(gmax[i], gate(s, i));
  for (const S& s : slots)
    for (int i = 0; i < d; ++i) {
      const double e = std::exp(gate(s, i) - gmax[i]);
      den[i] += e;
      num[i] += e * double(c[s.tok * iw + s.off + i]);
    }
  std::vector<double> y(d);
  double ss = 0;
  for (int i = 0; i < d; ++i) {
    y[i] = num[i] / den[i];
    ss += y[i] * y[i];
  }
  const double inv = 1.0 / std::sqrt(ss / d + comp.spec().eps);
  for (int i = 0; i < d; ++i) y[i] *= inv * norm[i];
  const int r0 = d - comp.spec().rope_dim;
  for (int k = 0; k < comp.spec().rope_dim / 2; ++k) {
    const double a = double(m * w) * comp.rope_freqs()[k];
    const double x0 = y[r0 + 2 * k], x1 = y[r0 + 2 * k + 1];
    y[r0 + 2 * k] = x0 * std::cos(a) - x1 * std::sin(a);
    y[r0 + 2 * k + 1] = x0 * std::sin(a) + x1 * std::cos(a);
  }
  return y;
}

}  // namespace kv::kernels::v4::testing
