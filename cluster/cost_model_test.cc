#include "cluster/cost_model.h"

#include <gtest/gtest.h>

#include <vector>

namespace kv::cluster {
namespace {

TEST(CostModelTest, NothingCachedIsRecompute) {
  CostModel m;
  CostPlan p = m.Plan({}, 1000, 64);
  EXPECT_EQ(p.decision, CacheDecision::kRecompute);
  EXPECT_EQ(p.load_blocks, 0);
}

TEST(CostModelTest, FastTierLoadsEverything) {
  CostModel m;
  m.RecordRead(TierKind::kHost, 1 << 30, absl::Seconds(1));  // 1 GiB/s
  m.RecordPrefill(1000, absl::Seconds(1));                   // 1000 tok/s
  std::vector<TierKind> tiers(4, TierKind::kHost);
  CostPlan p = m.Plan(tiers, 200000, 64);  // 0.2 ms load vs 64 ms compute per block
  EXPECT_EQ(p.decision, CacheDecision::kLoad);
  EXPECT_EQ(p.load_blocks, 4);
  EXPECT_EQ(p.load_tokens, 256);
  EXPECT_EQ(p.recompute_tokens, 0);
  EXPECT_LT(p.estimated_load_time, p.estimated_recompute_time);
  EXPECT_NE(p.reason.find("host"), std::string::npos) << p.reason;
}

TEST(CostModelTest, SlowTierIsRecomputedAndMixedIsPartial) {
  CostModel m;
  m.RecordRead(TierKind::kHost, 1 << 30, absl::Seconds(1));
  m.RecordRead(TierKind::kNvme, 1000, absl::Seconds(1));  // 1 kB/s: hopeless
  m.RecordPrefill(10000, absl::Seconds(1));
  std::vector<TierKind> slow(3, TierKind::kNvme);
  EXPECT_EQ(m.Plan(slow, 200000, 64).decision, CacheDecision::kRecompute);
  std::vector<TierKind> mixed = {TierKind::kHost, TierKind::kHost, TierKind::kNvme};
  CostPlan p = m.Plan(mixed, 200000, 64);
  EXPECT_EQ(p.decision, CacheDecision::kPartialLoad);
  EXPECT_EQ(p.load_blocks, 2);
  EXPECT_EQ(p.recompute_tokens, 64);
}

TEST(CostModelTest, MeasurementsMoveTheEstimate) {
  CostModel m;
  const double before = m.BytesPerSecond(TierKind::kNvme);
  EXPECT_FALSE(m.measured(TierKind::kNvme));
  m.RecordRead(TierKind::kNvme, 100, absl::Seconds(1));
  EXPECT_TRUE(m.measured(TierKind::kNvme));
  EXPECT_DOUBLE_EQ(m.BytesPerSecond(TierKind::kNvme), 100.0);
  EXPECT_NE(before, 100.0);
  m.RecordRead(TierKind::kNvme, 0, absl::Seconds(1));  // ignored
  EXPECT_DOUBLE_EQ(m.BytesPerSecond(TierKind::kNvme), 100.0);
}

}  // namespace
}  // namespace kv::cluster
