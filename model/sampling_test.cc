#include "model/sampling.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "model/test_util.h"

namespace kv::model {
namespace {

std::vector<float> RandomLogits(std::mt19937_64& rng, int n, float spread) {
  std::normal_distribution<float> nd(0.f, spread);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

TEST(SamplingTest, GreedyIsArgmaxWithLowestIdOnTies) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  std::mt19937_64 rng(seed);
  auto logits = RandomLogits(rng, 264, 3.f);
  int best = 0;
  for (int i = 1; i < 264; ++i)
    if (logits[i] > logits[best]) best = i;
  Sampler s({.temperature = 0});
  EXPECT_EQ(*s.Sample(logits), best);
  std::vector<float> tie = {1.f, 5.f, 5.f, 2.f};
  EXPECT_EQ(*s.Sample(tie), 1);
}

TEST(SamplingTest, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  std::mt19937_64 rng(seed);
  std::vector<float> logits = {0.f, std::log(2.f), std::log(3.f), std::log(4.f)};  // p = k/10
  Sampler a({.temperature = 1.0, .top_p = 1.0, .seed = seed});
  Sampler b({.temperature = 1.0, .top_p = 1.0, .seed = seed});
  std::vector<int> counts(4, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    int32_t x = *a.Sample(logits);
    ASSERT_EQ(x, *b.Sample(logits));
    counts[x]++;
  }
  for (int k = 0; k < 4; ++k) {
    const double p = (k + 1) / 10.0;
    const double sd = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(counts[k], n * p, 6 * sd) << "token " << k;  // 6 sigma: false alarm ~1e-9
  }
}

// A sequence whose first token was sampled elsewhere continues identically after Skip(1).
TEST(SamplingTest, SkipContinuesTheSameSequence) {
  const uint64_t seed = testing::TestSeed();
  std::vector<float> logits = {0.f, std::log(2.f), std::log(3.f), std::log(4.f)};
  for (double t : {0.0, 0.7}) {
    Sampler whole({.temperature = t, .top_p = 1.0, .seed = seed});
    Sampler resumed({.temperature = t, .top_p = 1.0, .seed = seed});
    (void)*whole.Sample(logits);
    resumed.Skip(1);
    for (int i = 0; i < 100; ++i) ASSERT_EQ(*whole.Sample(logits), *resumed.Sample(logits)) << i;
  }
}

TEST(SamplingTest, TopPKeepsOnlyTheNucleus) {
  // p = 0.1, 0.2, 0.3, 0.4: top_p 0.65 keeps {3, 2} (0.4 + 0.3 >= 0.65).
  std::vector<float> logits = {0.f, std::log(2.f), std::log(3.f), std::log(4.f)};
  Sampler s({.temperature = 1.0, .top_p = 0.65, .seed = testing::TestSeed()});
  for (int i = 0; i < 2000; ++i) {
    int32_t x = *s.Sample(logits);
    ASSERT_TRUE(x == 2 || x == 3) << x;
  }
  Sampler tiny({.temperature = 1.0, .top_p = 1e-9, .seed = 7});
  EXPECT_EQ(*tiny.Sample(logits), 3);
}

TEST(SamplingTest, BadInputsAreErrors) {
  std::vector<float> nan = {1.f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_FALSE(Sampler({}).Sample(nan).ok());
  EXPECT_FALSE(Sampler({}).Sample(std::vector<float>{}).ok());
  EXPECT_FALSE(Sampler({.temperature = -1}).Sample(std::vector<float>{1.f}).ok());
  EXPECT_FALSE(Sampler({.temperature = 1, .top_p = 0}).Sample(std::vector<float>{1.f}).ok());
  EXPECT_FALSE(Sampler({.temperature = 1, .top_p = 1.5}).Sample(std::vector<float>{1.f}).ok());
}

}  // namespace
}  // namespace kv::model
