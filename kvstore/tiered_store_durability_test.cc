// Durability and tier health of the TieredStore (tiered_store.h "Durability", "Tier
// health"; issue #18 items 4 and 5):
//   - pages published into the host tier are written back to a real nvme tier; after the
//     store is closed and reopened on the same directory, every page is recovered and reads
//     back byte for byte, and the recovered count is reported;
//   - Flush() writes what the background write-back has not, parents first, and stops at its
//     deadline;
//   - an nvme tier whose writes keep failing is marked failing (stats, metric, listener),
//     bypassed, probed after the retry interval and healthy again once a write succeeds; a
//     store whose only tier fails refuses writes, so nothing claims a page it did not keep.
#include <filesystem>

#include "gtest/gtest.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/slab_tier.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

using testing::MakeChain;
using testing::TestPage;

constexpr int kHost = static_cast<int>(TierKind::kHost);
constexpr int kNvme = static_cast<int>(TierKind::kNvme);

absl::StatusOr<std::vector<uint8_t>> ReadOne(TieredStore& s, const TestPage& p) {
  auto h = s.Pin({&p.meta.key, 1}, s.clock()->Now() + absl::Seconds(10));
  if (!h.ok()) return h.status();
  std::vector<uint8_t> dst(p.bytes.size());
  auto n = s.Read(*h, p.meta.key, dst);
  (void)s.Unpin(*h);
  if (!n.ok()) return n.status();
  dst.resize(*n);
  return dst;
}

// Host (in memory) over a real nvme tier in `dir`.
absl::StatusOr<std::unique_ptr<TieredStore>> OpenHostNvme(const std::string& dir,
                                                          MetricsRegistry* reg, bool persist,
                                                          int threads) {
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  tiers[kHost] = std::make_unique<MemTier>(TierKind::kHost, 64ull << 20);
  auto nv = NvmeTier::Open({.path = dir, .capacity_bytes = 1ull << 30, .metrics = reg});
  if (!nv.ok()) return nv.status();
  tiers[kNvme] = *std::move(nv);
  TieredStoreOptions o;
  o.metrics = reg;
  o.background_threads = threads;
  o.persist_to_nvme = persist;
  return TieredStore::Open(std::move(o), std::move(tiers));
}

TEST(TieredStoreDurabilityTest, HostPagesAreWrittenBackAndRecoveredAfterReopen) {
  const std::string dir = testing::FreshTestDir("durability-writeback");
  auto chain = MakeChain(31, "a", 12, 4, 2);
  auto other = MakeChain(32, "b", 5, 4, 2);
  {
    MetricsRegistry reg;
    auto s = OpenHostNvme(dir, &reg, /*persist=*/true, /*threads=*/1);
    ASSERT_TRUE(s.ok()) << s.status();
    for (const auto& p : chain) ASSERT_TRUE((*s)->Publish(p.meta, p.bytes).ok());
    for (const auto& p : other) ASSERT_TRUE((*s)->Publish(p.meta, p.bytes).ok());
    // Served from host: the nvme copy is a second copy, not a move.
    auto r = (*s)->Lookup(testing::KeysOf(chain));
    ASSERT_EQ(r.matched, chain.size());
    for (TierKind t : r.tiers) EXPECT_EQ(t, TierKind::kHost);
    (*s)->WaitIdle();
    EXPECT_EQ((*s)->Stats().persisted_pages, chain.size() + other.size());
    EXPECT_EQ((*s)->Stats().tiers[kNvme].pages, chain.size() + other.size());
    ASSERT_TRUE((*s)->CheckInvariants().ok()) << (*s)->CheckInvariants();
  }
  MetricsRegistry reg;
  auto s = OpenHostNvme(dir, &reg, true, 1);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->Stats().recovered_pages, chain.size() + other.size());
  EXPECT_EQ(reg.GetGauge("kvstrata_store_recovered_pages", "")->Value(),
            static_cast<double>(chain.size() + other.size()));
  for (const auto* c : {&chain, &other}) {
    for (const auto& p : *c) {
      auto got = ReadOne(**s, p);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, p.bytes);
    }
  }
}

// Without background write-back, Flush() is what makes pages durable: parents first, so
// every page is recovered (none dropped as an orphan), and a deadline in the past writes none.
TEST(TieredStoreDurabilityTest, FlushWritesTheRestParentsFirstWithinItsDeadline) {
  const std::string dir = testing::FreshTestDir("durability-flush");
  auto chain = MakeChain(41, "a", 9, 4, 2);
  {
    MetricsRegistry reg;
    auto s = OpenHostNvme(dir, &reg, /*persist=*/false, 0);
    ASSERT_TRUE(s.ok()) << s.status();
    for (const auto& p : chain) ASSERT_TRUE((*s)->Publish(p.meta, p.bytes).ok());
    auto none = (*s)->Flush((*s)->clock()->Now() - absl::Seconds(1));
    ASSERT_TRUE(none.ok()) << none.status();
    EXPECT_EQ(none->persisted, 0u);
    EXPECT_EQ(none->remaining, chain.size());
    auto all = (*s)->Flush((*s)->clock()->Now() + absl::Seconds(30));
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(all->persisted, chain.size());
    EXPECT_EQ(all->remaining, 0u);
  }
  MetricsRegistry reg;
  auto s = OpenHostNvme(dir, &reg, false, 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->Stats().recovered_pages, chain.size());
  auto r = (*s)->Lookup(testing::KeysOf(chain));
  EXPECT_EQ(r.matched, chain.size());
  for (const auto& p : chain) {
    auto got = ReadOne(**s, p);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, p.bytes);
  }
}

struct FaultyStore {
  FakeClock clock;
  MetricsRegistry reg;
  FaultInjectingTier* nvme = nullptr;
  std::unique_ptr<MemTier> nvme_base;
  std::unique_ptr<TieredStore> store;
  std::vector<std::pair<TierKind, bool>> told;  // health listener calls: (tier, healthy)
};

// Host (optional) and a fault-injecting nvme tier over memory; write-back inline.
std::unique_ptr<FaultyStore> MakeFaulty(bool with_host) {
  auto f = std::make_unique<FaultyStore>();
  f->nvme_base = std::make_unique<MemTier>(TierKind::kNvme, 64ull << 20);
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  if (with_host) tiers[kHost] = std::make_unique<MemTier>(TierKind::kHost, 64ull << 20);
  auto fi = std::make_unique<FaultInjectingTier>(f->nvme_base.get());
  f->nvme = fi.get();
  tiers[kNvme] = std::move(fi);
  TieredStoreOptions o;
  o.clock = &f->clock;
  o.metrics = &f->reg;
  o.background_threads = 0;
  o.persist_to_nvme = true;
  auto s = TieredStore::Open(std::move(o), std::move(tiers));
  EXPECT_TRUE(s.ok()) << s.status();
  f->store = *std::move(s);
  FaultyStore* raw = f.get();
  f->store->SetTierHealthListener([raw](TierKind k, const absl::Status& st) {
    raw->told.push_back({k, st.ok()});
  });
  return f;
}

TEST(TieredStoreDurabilityTest, FailingNvmeTierIsReportedBypassedAndRecovers) {
  auto f = MakeFaulty(/*with_host=*/true);
  TieredStore& s = *f->store;
  Gauge* healthy = f->reg.GetGauge("kvstrata_store_tier_healthy", "", {{"tier", "nvme"}});
  EXPECT_EQ(healthy->Value(), 1.0);
  ASSERT_EQ(f->told.size(), 2u);  // the current state of host and nvme, at installation
  f->told.clear();
  f->nvme->FailWrites(true);
  auto chain = MakeChain(51, "a", 6, 4, 1);
  for (int i = 0; i < 3; ++i) {  // three write-backs fail: the tier is failing
    EXPECT_TRUE(s.TierHealth(TierKind::kNvme).ok()) << i;
    ASSERT_TRUE(s.Publish(chain[i].meta, chain[i].bytes).ok());  // host keeps the page
  }
  absl::Status h = s.TierHealth(TierKind::kNvme);
  EXPECT_TRUE(absl::IsUnavailable(h)) << h;
  EXPECT_NE(h.message().find("nvme tier failing"), std::string_view::npos) << h;
  EXPECT_TRUE(s.Stats().tiers[kNvme].failing);
  EXPECT_EQ(s.Stats().tiers[kNvme].write_errors, 3u);
  EXPECT_EQ(healthy->Value(), 0.0);
  ASSERT_EQ(f->told.size(), 1u);
  EXPECT_EQ(f->told[0], std::make_pair(TierKind::kNvme, false));
  // Bypassed: the next publishes do not touch the tier (no new injected fault) and are
  // served from host.
  const uint64_t faults = f->nvme->injected_faults();
  for (int i = 3; i < 5; ++i) ASSERT_TRUE(s.Publish(chain[i].meta, chain[i].bytes).ok());
  EXPECT_EQ(f->nvme->injected_faults(), faults);
  for (int i = 0; i < 5; ++i) {
    auto got = ReadOne(s, chain[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, chain[i].bytes);
  }
  // After the retry interval one write probes the tier; it works again: healthy.
  f->nvme->FailWrites(false);
  f->clock.Advance(absl::Seconds(31));
  ASSERT_TRUE(s.Publish(chain[5].meta, chain[5].bytes).ok());
  EXPECT_TRUE(s.TierHealth(TierKind::kNvme).ok());
  EXPECT_FALSE(s.Stats().tiers[kNvme].failing);
  EXPECT_EQ(healthy->Value(), 1.0);
  ASSERT_EQ(f->told.size(), 2u);
  EXPECT_EQ(f->told[1], std::make_pair(TierKind::kNvme, true));
  EXPECT_EQ(s.Lookup(testing::KeysOf(chain)).matched, chain.size());
}

// The nvme tier is the only one: publishes fail while it fails, then are refused without
// touching it; none is counted as stored, and nothing is cached.
TEST(TieredStoreDurabilityTest, OnlyTierFailingRefusesWritesInsteadOfClaimingThem) {
  auto f = MakeFaulty(/*with_host=*/false);
  TieredStore& s = *f->store;
  f->nvme->FailWrites(true);
  auto chain = MakeChain(61, "a", 5, 4, 1);
  int stored = 0;
  for (const auto& p : chain) stored += s.Publish(p.meta, p.bytes).ok();
  EXPECT_EQ(stored, 0);
  EXPECT_TRUE(s.Stats().tiers[kNvme].failing);
  const uint64_t faults = f->nvme->injected_faults();
  absl::Status st = s.Publish(chain[0].meta, chain[0].bytes);
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;
  EXPECT_NE(st.message().find("no tier takes pages"), std::string_view::npos) << st;
  EXPECT_EQ(f->nvme->injected_faults(), faults);
  EXPECT_EQ(s.Lookup(testing::KeysOf(chain)).matched, 0u);
  EXPECT_EQ(s.Stats().indexed_pages, 0u);
}

}  // namespace
}  // namespace kv
