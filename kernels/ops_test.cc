// RMSNorm, OpenBLAS sgemm (kernels/blas.h) and YaRN RoPE against naive float64 references on fresh
// random inputs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/blas.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/test_util.h"

namespace kv::kernels {
namespace {

using testing::Rng;
constexpr double kU = 0x1p-24;  // f32 unit roundoff

TEST(RmsNorm, MatchesFloat64) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int rows = 7, dim = 512, stride = 520;
  std::vector<float> x(rows * stride), w = rng.NormalVector(dim);
  for (float& v : x) v = rng.Varied(-4, 4);
  std::vector<float> y(rows * stride, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(RmsNorm(x.data(), rows, dim, stride, w.data(), 1e-6f, y.data(), stride).ok());
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int j = 0; j < dim; ++j) ss += double(x[r * stride + j]) * x[r * stride + j];
    const double inv = 1.0 / std::sqrt(ss / dim + double(1e-6f));
    for (int j = 0; j < dim; ++j) {
      const double ref = double(w[j]) * x[r * stride + j] * inv;
      // Three f32 roundings (inv, x*inv, w*...) after an f64 sum: <= 4u relative.
      ASSERT_NEAR(y[r * stride + j], ref, 4 * kU * std::fabs(ref) + 1e-30) << r << "," << j;
    }
    for (int j = dim; j < stride; ++j) ASSERT_TRUE(std::isnan(y[r * stride + j]));
  }
  // In place gives the same bits.
  std::vector<float> z = x;
  ASSERT_TRUE(RmsNorm(z.data(), rows, dim, stride, w.data(), 1e-6f, z.data(), stride).ok());
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < dim; ++j) ASSERT_EQ(z[r * stride + j], y[r * stride + j]);
  }
  EXPECT_FALSE(RmsNorm(x.data(), rows, dim, dim - 1, w.data(), 1e-6f, y.data(), dim).ok());
  EXPECT_FALSE(RmsNorm(x.data(), rows, 0, 1, w.data(), 1e-6f, y.data(), 1).ok());
  EXPECT_FALSE(RmsNorm(nullptr, 1, dim, dim, w.data(), 1e-6f, y.data(), dim).ok());
  EXPECT_FALSE(RmsNorm(x.data(), 1, dim, dim, w.data(), -1.0f, y.data(), dim).ok());
  x[3 * stride + 5] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y2 = y;
  absl::Status st = RmsNorm(x.data(), rows, dim, stride, w.data(), 1e-6f, y.data(), stride);
  EXPECT_NE(st.message().find("row 3"), std::string::npos) << st;
  EXPECT_EQ(0, std::memcmp(y.data(), y2.data(), y.size() * 4)) << "nothing written on error";
}

TEST(Gemm, MatchesFloat64AllTransposes) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int m = 13, n = 37, k = 300;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 2;
      std::vector<float> a = rng.NormalVector((ta ? k : m) * lda);
      std::vector<float> b = rng.NormalVector((tb ? n : k) * ldb);
      std::vector<float> c = rng.NormalVector(m * ldc), c0 = c;
      const float alpha = 0.75f, beta = -0.5f;
      ASSERT_TRUE(
          Sgemm(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc).ok());
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double ref = 0, mag = 0;
          for (int p = 0; p < k; ++p) {
            const double av = ta ? a[p * lda + i] : a[i * lda + p];
            const double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
            ref += av * bv;
            mag += std::fabs(av * bv);
          }
          ref = alpha * ref + beta * double(c0[i * ldc + j]);
          // f32 accumulation of k products: |err| <= gamma_k * sum|ab| ~ k*u*sum|ab|.
          const double tol = (k + 2) * kU * (alpha * mag + std::fabs(beta * c0[i * ldc + j]));
          ASSERT_NEAR(c[i * ldc + j], ref, tol) << ta << tb << " " << i << "," << j;
        }
        for (int j = n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], c0[i * ldc + j]);
      }
    }
  }
}

TEST(Gemm, LinearBetaZeroIgnoresPoisonAndRejectsBadDims) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int m = 5, k = 64, n = 9;
  std::vector<float> x = rng.NormalVector(m * k), w = rng.NormalVector(n * k);
  std::vector<float> y(m * n, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(SgemmLinear(x.data(), m, k, w.data(), n, y.data()).ok());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double ref = 0, mag = 0;
      for (int p = 0; p < k; ++p) {
        ref += double(x[i * k + p]) * w[j * k + p];
        mag += std::fabs(double(x[i * k + p]) * w[j * k + p]);
      }
      ASSERT_NEAR(y[i * n + j], ref, (k + 1) * kU * mag);
    }
  }
  EXPECT_FALSE(Sgemm(false, false, -1, 2, 2, 1, x.data(), 2, w.data(), 2, 0, y.data(), 2).ok());
  EXPECT_FALSE(Sgemm(false, false, 2, 2, 4, 1, x.data(), 3, w.data(), 2, 0, y.data(), 2).ok());
  EXPECT_FALSE(SgemmLinear(nullptr, 2, 2, w.data(), 2, y.data()).ok());
}

YarnRopeParams V3Params() { return YarnRopeParams{}; }  // defaults are V3's config values

TEST(Rope, V3SoftmaxScaleAndCorrectionRange) {
  auto scale = MlaSoftmaxScale(V3Params(), 192);
  ASSERT_TRUE(scale.ok());
  EXPECT_NEAR(*scale, 0.13523378, 2e-8);  // formats.md §1.3
  EXPECT_GT(std::fabs(*scale - 1.0 / std::sqrt(576.0)), 0.05);
  // No YaRN (factor 1): plain 192^-0.5.
  YarnRopeParams plain;
  plain.factor = 1.0;
  EXPECT_NEAR(*MlaSoftmaxScale(plain, 192), 1.0 / std::sqrt(192.0), 1e-8);
  // Frequencies: i <= 10 unchanged, i >= 23 divided by 40, ramp between (low 10, high 23).
  auto f = RopeFrequencies(V3Params());
  ASSERT_TRUE(f.ok());
  for (int i = 0; i < 32; ++i) {
    const double base = std::pow(10000.0, -2.0 * i / 64);
    const double ramp = std::clamp((i - 10.0) / 13.0, 0.0, 1.0);
    EXPECT_NEAR((*f)[i], base / 40 * ramp + base * (1 - ramp), 1e-15 * base) << i;
  }
  EXPECT_DOUBLE_EQ((*f)[10], 1.0 / std::pow(10000.0, 20.0 / 64));
  EXPECT_DOUBLE_EQ((*f)[23], std::pow(10000.0, -46.0 / 64) / 40);
}

TEST(Rope, ApplyMatchesFloat64AndTouchesOnlyRopeDims) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  auto table = BuildRopeTable(V3Params(), 131072);
  ASSERT_TRUE(table.ok());
  auto freq = RopeFrequencies(V3Params());
  const int n = 9, heads = 3, head_dim = 192, off = 128;
  std::vector<int64_t> pos(n);
  for (auto& p : pos) p = rng.Int(0, 131071);
  std::vector<float> q = rng.NormalVector(n * heads * head_dim), q0 = q;
  ASSERT_TRUE(
      ApplyRope(*table, pos.data(), n, heads, q.data() + off, heads * head_dim, head_dim).ok());
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const float* x = &q0[(t * heads + h) * head_dim];
      const float* y = &q[(t * heads + h) * head_dim];
      for (int j = 0; j < off; ++j) ASSERT_EQ(y[j], x[j]);  // nope part untouched
      for (int i = 0; i < 32; ++i) {
        const double a = pos[t] * (*freq)[i];
        const double x0 = x[off + 2 * i], x1 = x[off + 2 * i + 1];
        const double r0 = x0 * std::cos(a) - x1 * std::sin(a);
        const double r1 = x0 * std::sin(a) + x1 * std::cos(a);
        // cos/sin rounded to f32, two products and a sum in f32: <= 4u (|x0| + |x1|).
        const double tol = 4 * kU * (std::fabs(x0) + std::fabs(x1));
        ASSERT_NEAR(y[off + 2 * i], r0, tol) << t << "," << h << "," << i;
        ASSERT_NEAR(y[off + 2 * i + 1], r1, tol) << t << "," << h << "," << i;
      }
    }
  }
  pos[3] = 131072;
  std::vector<float> q1 = q;
  EXPECT_FALSE(
      ApplyRope(*table, pos.data(), n, heads, q.data() + off, heads * head_dim, head_dim).ok());
  EXPECT_EQ(q, q1) << "a bad position must write nothing";
  YarnRopeParams bad = V3Params();
  bad.rope_dim = 63;
  EXPECT_FALSE(BuildRopeTable(bad, 10).ok());
  bad = V3Params();
  bad.theta = std::numeric_limits<double>::quiet_NaN();
  EXPECT_FALSE(MlaSoftmaxScale(bad, 192).ok());
}

}  // namespace
}  // namespace kv::kernels
