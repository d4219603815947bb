#include "kvstore/prefix_index.h"

#include <random>

#include "gtest/gtest.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

using testing::KeysOf;
using testing::MakeChain;

absl::Time T(int s) { return absl::UnixEpoch() + absl::Seconds(s); }

TEST(PrefixIndexTest, InsertRequiresParent) {
  auto chain = MakeChain(1, "a", 3);
  PrefixIndex idx;
  EXPECT_TRUE(absl::IsFailedPrecondition(
      idx.Insert(chain[1].meta, TierKind::kHost, T(0), absl::ZeroDuration())));
  ASSERT_TRUE(idx.Insert(chain[0].meta, TierKind::kHost, T(0), absl::ZeroDuration()).ok());
  ASSERT_TRUE(idx.Insert(chain[1].meta, TierKind::kHost, T(1), absl::ZeroDuration()).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(
      idx.Insert(chain[1].meta, TierKind::kHost, T(1), absl::ZeroDuration())));
  EXPECT_TRUE(idx.CheckInvariants().ok());
}

TEST(PrefixIndexTest, LongestPrefixBinarySearch) {
  auto chain = MakeChain(2, "a", 40);
  auto keys = KeysOf(chain);
  PrefixIndex idx;
  for (size_t cached = 0; cached <= keys.size(); cached += 7) {
    PrefixIndex fresh;
    for (size_t i = 0; i < cached; ++i) {
      ASSERT_TRUE(fresh.Insert(chain[i].meta, TierKind::kHost, T(0), {}).ok());
    }
    EXPECT_EQ(fresh.LongestPrefix(keys), cached);
    EXPECT_EQ(fresh.LongestPrefix(std::span(keys).first(3)), std::min<size_t>(cached, 3));
  }
  EXPECT_EQ(idx.LongestPrefix({}), 0u);
}

TEST(PrefixIndexTest, EvictionIsLeafFirstAndRespectsPins) {
  auto chain = MakeChain(3, "a", 4);
  PrefixIndex idx;
  for (size_t i = 0; i < chain.size(); ++i) {
    ASSERT_TRUE(idx.Insert(chain[i].meta, TierKind::kHost, T(static_cast<int>(i)), {}).ok());
  }
  // The root is oldest, but it has children: the leaf goes first.
  auto v = idx.PickVictim(TierKind::kHost, nullptr, false);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(*v, chain[3].meta.key);
  EXPECT_TRUE(absl::IsFailedPrecondition(idx.RemoveResidency(chain[0].meta.key, TierKind::kHost)));
  ASSERT_TRUE(idx.Pin(chain[3].meta.key).ok());
  EXPECT_FALSE(idx.PickVictim(TierKind::kHost, nullptr, false).has_value());
  EXPECT_TRUE(absl::IsFailedPrecondition(idx.RemoveResidency(chain[3].meta.key, TierKind::kHost)));
  ASSERT_TRUE(idx.Unpin(chain[3].meta.key).ok());
  for (int i = 3; i >= 0; --i) {
    auto victim = idx.PickVictim(TierKind::kHost, nullptr, false);
    ASSERT_TRUE(victim.has_value());
    EXPECT_EQ(*victim, chain[i].meta.key);
    ASSERT_TRUE(idx.RemoveResidency(*victim, TierKind::kHost).ok());
    ASSERT_TRUE(idx.CheckInvariants().ok());
  }
  EXPECT_EQ(idx.size(), 0u);
}

TEST(PrefixIndexTest, LeafFirstWithinATierPrefersLeavesOfThatTier) {
  auto chain = MakeChain(4, "a", 3);
  PrefixIndex idx;
  for (size_t i = 0; i < chain.size(); ++i) {
    ASSERT_TRUE(idx.Insert(chain[i].meta, TierKind::kDevice, T(static_cast<int>(i)), {}).ok());
    ASSERT_TRUE(idx.AddResidency(chain[i].meta.key, TierKind::kHost).ok());
  }
  // Everything has a host copy, so anything may leave device; the device leaf goes first.
  EXPECT_EQ(*idx.PickVictim(TierKind::kDevice, nullptr, false), chain[2].meta.key);
  ASSERT_TRUE(idx.RemoveResidency(chain[2].meta.key, TierKind::kDevice).ok());
  EXPECT_EQ(*idx.PickVictim(TierKind::kDevice, nullptr, false), chain[1].meta.key);
  ASSERT_TRUE(idx.CheckInvariants().ok());
}

TEST(PrefixIndexTest, RetentionIsSoftPriority) {
  auto a = MakeChain(5, "a", 1);
  auto b = MakeChain(6, "a", 1);
  PrefixIndex idx;
  ASSERT_TRUE(idx.Insert(a[0].meta, TierKind::kHost, T(0), absl::Seconds(100)).ok());
  ASSERT_TRUE(idx.Insert(b[0].meta, TierKind::kHost, T(10), absl::ZeroDuration()).ok());
  // a is older but retained for 100 s: b goes first.
  EXPECT_EQ(*idx.PickVictim(TierKind::kHost, nullptr, false), b[0].meta.key);
  // Once b is touched after a's retention has decayed, a is the victim again.
  idx.Touch(b[0].meta.key, T(200));
  EXPECT_EQ(*idx.PickVictim(TierKind::kHost, nullptr, false), a[0].meta.key);
}

TEST(PrefixIndexTest, NamespaceScopedVictims) {
  auto a = MakeChain(7, "a", 1);
  auto b = MakeChain(8, "b", 1);
  PrefixIndex idx;
  ASSERT_TRUE(idx.Insert(a[0].meta, TierKind::kHost, T(0), {}).ok());
  ASSERT_TRUE(idx.Insert(b[0].meta, TierKind::kHost, T(5), {}).ok());
  std::string nsb = b[0].meta.ns;
  EXPECT_EQ(*idx.PickVictim(TierKind::kHost, nullptr, false), a[0].meta.key);
  EXPECT_EQ(*idx.PickVictim(TierKind::kHost, &nsb, false), b[0].meta.key);
}

TEST(PrefixIndexTest, RandomOpsKeepInvariants) {
  uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<testing::TestPage> pages;
  for (int c = 0; c < 6; ++c) {
    auto chain = MakeChain(rng(), "a", 8);
    pages.insert(pages.end(), chain.begin(), chain.end());
  }
  PrefixIndex idx;
  for (int step = 0; step < 3000; ++step) {
    const auto& p = pages[rng() % pages.size()];
    TierKind t = static_cast<TierKind>(rng() % kNumTiers);
    switch (rng() % 5) {
      case 0:
        (void)idx.Insert(p.meta, t, T(step), absl::Seconds(rng() % 5));
        break;
      case 1:
        (void)idx.AddResidency(p.meta.key, t);
        break;
      case 2: {
        auto v = idx.PickVictim(t, nullptr, false);
        if (v) {
          ASSERT_TRUE(idx.RemoveResidency(*v, t).ok());
        }
        break;
      }
      case 3:
        if (idx.Find(p.meta.key) && idx.Find(p.meta.key)->pins > 0) {
          ASSERT_TRUE(idx.Unpin(p.meta.key).ok());
        } else {
          (void)idx.Pin(p.meta.key);
        }
        break;
      case 4:
        idx.Touch(p.meta.key, T(step));
        break;
    }
    ASSERT_TRUE(idx.CheckInvariants().ok()) << idx.CheckInvariants() << " step " << step;
  }
}

}  // namespace
}  // namespace kv
