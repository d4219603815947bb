// kernels/portable_math.h against the C library's long-double functions (a reference more
// precise than what is tested): accuracy over dense grids and random arguments, special
// values, and the fixed points the forward relies on (e^0 = 1, e^-inf = 0).
#include "kernels/portable_math.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/test_util.h"

namespace kv::kernels {
namespace {

using testing::Rng;

// Distance in units of the last place of the reference's magnitude (binary32 or binary64).
double UlpsF(float got, long double want) {
  const float w = static_cast<float>(want);
  const float ulp =
      std::nextafter(std::fabs(w), std::numeric_limits<float>::infinity()) - std::fabs(w);
  return static_cast<double>(std::fabs(static_cast<long double>(got) - want) / ulp);
}
double UlpsD(double got, long double want) {
  const double w = static_cast<double>(want);
  const double ulp =
      std::nextafter(std::fabs(w), std::numeric_limits<double>::infinity()) - std::fabs(w);
  return static_cast<double>(std::fabs(static_cast<long double>(got) - want) / ulp);
}

TEST(PortableMath, ExpFWithinTwoUlp) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  std::vector<float> xs;
  for (float x = -103.0f; x < 88.7f; x += 0.0137f) xs.push_back(x);
  for (int i = 0; i < 200000; ++i) xs.push_back(static_cast<float>(rng.Uniform(-103.0, 88.7)));
  for (int i = 0; i < 20000; ++i) xs.push_back(static_cast<float>(rng.Uniform(-1e-3, 1e-3)));
  double worst = 0;
  for (float x : xs) {
    const double u = UlpsF(ExpF(x), std::exp(static_cast<long double>(x)));
    worst = std::max(worst, u);
    ASSERT_LE(u, 2.0) << "x=" << x << " got " << ExpF(x);
  }
  RecordProperty("worst_ulp", std::to_string(worst));
}

TEST(PortableMath, ExpFSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(ExpF(0.0f), 1.0f);
  EXPECT_EQ(ExpF(-0.0f), 1.0f);
  EXPECT_EQ(ExpF(-inf), 0.0f);
  EXPECT_EQ(ExpF(-200.0f), 0.0f);
  EXPECT_EQ(ExpF(inf), inf);
  EXPECT_EQ(ExpF(89.0f), inf);
  EXPECT_EQ(ExpF(100.0f), inf);
  EXPECT_TRUE(std::isnan(ExpF(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_LT(ExpF(88.72f), std::numeric_limits<float>::max());
  // The subnormal range rounds once: e^-100 = 3.72e-44, i.e. 26.6 subnormal steps.
  const float sub = ExpF(-100.0f);
  EXPECT_GT(sub, 0.0f);
  EXPECT_LE(std::fabs(sub - std::exp(-100.0)) / std::numeric_limits<float>::denorm_min(), 1.0);
}

TEST(PortableMath, ExpDWithinFourUlp) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 300000; ++i) {
    const double x = i < 100000 ? rng.Uniform(-708.0, 709.0) : rng.Uniform(-3.0, 3.0);
    ASSERT_LE(UlpsD(ExpD(x), std::exp(static_cast<long double>(x))), 4.0) << "x=" << x;
  }
  EXPECT_EQ(ExpD(0.0), 1.0);
  EXPECT_EQ(ExpD(-std::numeric_limits<double>::infinity()), 0.0);
  EXPECT_EQ(ExpD(1000.0), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(ExpD(std::numeric_limits<double>::quiet_NaN())));
}

TEST(PortableMath, LogDWithinFourUlp) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 300000; ++i) {
    double x;
    if (i < 100000) {
      x = std::ldexp(rng.Uniform(1.0, 2.0), static_cast<int>(rng.Int(-1070, 1020)));
    } else if (i < 200000) {
      x = 1.0 + rng.Uniform(-0.3, 0.3);
    } else {
      x = 1.0 + std::ldexp(rng.Uniform(-1.0, 1.0), static_cast<int>(rng.Int(-50, -10)));
    }
    ASSERT_LE(UlpsD(LogD(x), std::log(static_cast<long double>(x))), 4.0) << "x=" << x;
  }
  EXPECT_EQ(LogD(1.0), 0.0);
  EXPECT_EQ(LogD(0.0), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(LogD(std::numeric_limits<double>::infinity()), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(LogD(-1.0)));
  EXPECT_TRUE(std::isnan(LogD(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_LE(UlpsD(LogD(std::numeric_limits<double>::denorm_min()),
                  std::log(static_cast<long double>(std::numeric_limits<double>::denorm_min()))),
            4.0);
  EXPECT_LE(UlpsD(PowD(10000.0, -0.75), std::pow(10000.0L, -0.75L)), 8.0);
}

TEST(PortableMath, SinCosDAccurateOverRopeRange) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 300000; ++i) {
    double x;
    if (i < 100000) {
      x = rng.Uniform(-7.0, 7.0);
    } else if (i < 200000) {
      x = rng.Uniform(-70000.0, 70000.0);
    } else {
      x = rng.Uniform(-5.0e8, 5.0e8);
    }
    double s, c;
    SinCosD(x, &s, &c);
    const long double ws = std::sin(static_cast<long double>(x));
    const long double wc = std::cos(static_cast<long double>(x));
    ASSERT_TRUE(UlpsD(s, ws) <= 4.0 || std::fabs(s - ws) <= 1e-16L) << "sin x=" << x;
    ASSERT_TRUE(UlpsD(c, wc) <= 4.0 || std::fabs(c - wc) <= 1e-16L) << "cos x=" << x;
  }
  double s, c;
  SinCosD(0.0, &s, &c);
  EXPECT_EQ(s, 0.0);
  EXPECT_EQ(c, 1.0);
  SinCosD(1e9, &s, &c);  // outside |x| < 2^29
  EXPECT_TRUE(std::isnan(s) && std::isnan(c));
  SinCosD(std::numeric_limits<double>::infinity(), &s, &c);
  EXPECT_TRUE(std::isnan(s) && std::isnan(c));
}

}  // namespace
}  // namespace kv::kernels
