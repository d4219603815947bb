#include "model/row_gemm.h"

#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "model/test_util.h"

namespace kv::model {
namespace {

// The property the exactness contract of model/transformer.h rests on: a row's output is
// bit-identical whatever the row count of the call, its position in it, and its neighbours.
TEST(RowGemmTest, RowResultIndependentOfBatchPositionAndNeighbours) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t k = 256, n = 768, rows = 100;
  std::vector<float> w(n * k), a(rows * k);
  for (float& x : w) x = nd(rng);
  for (float& x : a) x = nd(rng);
  // Reference: every row alone (m = 1).
  std::vector<float> ref(rows * n, std::nanf(""));
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_TRUE(TiledLinear(&a[r * k], 1, k, w.data(), n, &ref[r * n]).ok());
  }
  for (int64_t m : {1, 3, 7, 16, 17, 33, 64, 100}) {
    for (int64_t off = 0; off + m <= rows; off += m) {
      std::vector<float> out(m * n, std::nanf(""));
      ASSERT_TRUE(TiledLinear(&a[off * k], m, k, w.data(), n, out.data()).ok());
      ASSERT_EQ(0, std::memcmp(out.data(), &ref[off * n], m * n * sizeof(float)))
          << "m=" << m << " off=" << off;
    }
  }
  // Transposed-B and strided form (the per-head absorptions).
  std::vector<float> b(k * n);
  for (float& x : b) x = nd(rng);
  std::vector<float> one(n), many(rows * 2 * n, std::nanf(""));
  ASSERT_TRUE(TiledGemm(false, rows, n, k, a.data(), k, b.data(), n, many.data(), 2 * n).ok());
  for (int64_t r = 0; r < rows; r += 13) {
    ASSERT_TRUE(TiledGemm(false, 1, n, k, &a[r * k], k, b.data(), n, one.data(), n).ok());
    ASSERT_EQ(0, std::memcmp(one.data(), &many[r * 2 * n], n * sizeof(float))) << r;
    EXPECT_TRUE(std::isnan(many[r * 2 * n + n]));  // the stride gap stays untouched
  }
}

TEST(RowGemmTest, BadArgumentsAreErrors) {
  std::vector<float> x(4, 1.f);
  EXPECT_FALSE(TiledGemm(false, 1, 2, 2, x.data(), 1, x.data(), 2, x.data(), 2).ok());
  EXPECT_FALSE(TiledGemm(false, 1, 0, 2, x.data(), 2, x.data(), 2, x.data(), 2).ok());
  EXPECT_FALSE(TiledGemm(false, 1, 2, 2, nullptr, 2, x.data(), 2, x.data(), 2).ok());
}

}  // namespace
}  // namespace kv::model
