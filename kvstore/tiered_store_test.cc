#include "kvstore/tiered_store.h"

#include <atomic>
#include <thread>

#include "core/mutex.h"
#include "gtest/gtest.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

using testing::KeysOf;
using testing::MakeChain;
using testing::TestPage;

struct Fixture {
  FakeClock clock;
  MetricsRegistry metrics;
  std::array<MemTier*, kNumTiers> mem{};
  std::unique_ptr<TieredStore> store;
};

// A store over MemTiers with capacities in pages of `page` bytes (0: tier absent).
std::unique_ptr<Fixture> MakeStore(uint64_t page, std::array<int, kNumTiers> pages,
                                   TieredStoreOptions opts = {}) {
  auto f = std::make_unique<Fixture>();
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  for (int t = 0; t < kNumTiers; ++t) {
    if (pages[t] == 0) continue;
    auto m = std::make_unique<MemTier>(static_cast<TierKind>(t), page * pages[t]);
    f->mem[t] = m.get();
    tiers[t] = std::move(m);
  }
  opts.clock = &f->clock;
  opts.metrics = &f->metrics;
  opts.background_threads = 0;
  auto s = TieredStore::Open(std::move(opts), std::move(tiers));
  EXPECT_TRUE(s.ok()) << s.status();
  f->store = *std::move(s);
  return f;
}

absl::Status PublishAll(TieredStore* s, const std::vector<TestPage>& chain) {
  for (const auto& p : chain) {
    absl::Status st = s->Publish(p.meta, p.bytes);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> ReadOne(Fixture& f, const TestPage& p) {
  auto h = f.store->Pin({&p.meta.key, 1}, f.clock.Now() + absl::Seconds(10));
  if (!h.ok()) return h.status();
  std::vector<uint8_t> dst(p.bytes.size() + 3, 0xEE);
  auto n = f.store->Read(*h, p.meta.key, dst);
  EXPECT_TRUE(f.store->Unpin(*h).ok());
  if (!n.ok()) return n.status();
  dst.resize(*n);
  return dst;
}

TEST(TieredStoreTest, PublishLookupReadRoundTrip) {
  auto chain = MakeChain(21, "a", 5);
  auto f = MakeStore(chain[0].bytes.size(), {0, 16, 0});
  ASSERT_TRUE(PublishAll(f->store.get(), chain).ok());
  auto keys = KeysOf(chain);
  auto more = MakeChain(22, "a", 3, 4, 1, keys.back());
  auto longer = keys;
  for (auto& k : KeysOf(more)) longer.push_back(k);
  auto r = f->store->Lookup(longer);
  EXPECT_EQ(r.matched, 5u);
  ASSERT_EQ(r.tiers.size(), 5u);
  for (TierKind t : r.tiers) EXPECT_EQ(t, TierKind::kHost);
  for (const auto& p : chain) {
    auto got = ReadOne(*f, p);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, p.bytes);
  }
  EXPECT_TRUE(f->store->CheckInvariants().ok());
  EXPECT_EQ(f->store->Stats().tiers[1].reads, 5u);
}

TEST(TieredStoreTest, TenantsNeverShare) {
  auto a = MakeChain(23, "alice", 3);
  auto b = MakeChain(23, "bob", 3);  // same tokens and bytes, other tenant
  auto f = MakeStore(a[0].bytes.size(), {0, 16, 0});
  ASSERT_TRUE(PublishAll(f->store.get(), a).ok());
  EXPECT_EQ(f->store->Lookup(KeysOf(a)).matched, 3u);
  EXPECT_EQ(f->store->Lookup(KeysOf(b)).matched, 0u);
}

TEST(TieredStoreTest, TwoPhasePublish) {
  auto chain = MakeChain(24, "a", 3);
  auto f = MakeStore(chain[0].bytes.size(), {0, 16, 0});
  TieredStore& s = *f->store;
  ASSERT_TRUE(s.Write(chain[0].meta, chain[0].bytes).ok());
  EXPECT_EQ(s.Lookup(KeysOf(chain)).matched, 0u);  // unsealed: invisible
  EXPECT_TRUE(
      absl::IsNotFound(s.Pin({&chain[0].meta.key, 1}, f->clock.Now() + absl::Seconds(1)).status()));
  EXPECT_TRUE(absl::IsAlreadyExists(s.Write(chain[0].meta, chain[0].bytes)));
  // A child cannot be sealed before its parent.
  ASSERT_TRUE(s.Write(chain[1].meta, chain[1].bytes).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(s.Seal(chain[1].meta.key)));
  ASSERT_TRUE(s.Seal(chain[0].meta.key).ok());
  EXPECT_EQ(s.Lookup(KeysOf(chain)).matched, 1u);
  EXPECT_TRUE(absl::IsNotFound(s.Seal(chain[0].meta.key)));
  // A pending write that is never sealed times out and frees its space.
  ASSERT_TRUE(s.Write(chain[1].meta, chain[1].bytes).ok());
  f->clock.Advance(absl::Minutes(2));
  EXPECT_TRUE(absl::IsNotFound(s.Seal(chain[1].meta.key)));
  EXPECT_EQ(s.Stats().pending_pages, 0u);
  ASSERT_TRUE(s.Write(chain[1].meta, chain[1].bytes).ok());
  ASSERT_TRUE(s.Abort(chain[1].meta.key).ok());
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
}

TEST(TieredStoreTest, RejectsPagesThatDoNotVerify) {
  auto chain = MakeChain(25, "a", 2);
  auto f = MakeStore(chain[0].bytes.size(), {0, 16, 0});
  auto bytes = chain[0].bytes;
  bytes[bytes.size() - 1] ^= 1;
  EXPECT_TRUE(absl::IsDataLoss(f->store->Write(chain[0].meta, bytes)));
  PageMeta wrong = chain[0].meta;
  wrong.key = chain[1].meta.key;  // bytes name another key
  EXPECT_TRUE(absl::IsDataLoss(f->store->Write(wrong, chain[0].bytes)));
  PageMeta no_ns = chain[0].meta;
  no_ns.ns.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(f->store->Write(no_ns, chain[0].bytes)));
}

TEST(TieredStoreTest, PinnedPagesAreNeverEvicted) {
  auto chain = MakeChain(26, "a", 4);
  auto other = MakeChain(27, "a", 4);
  auto f = MakeStore(chain[0].bytes.size(), {0, 4, 0});
  ASSERT_TRUE(PublishAll(f->store.get(), chain).ok());
  auto keys = KeysOf(chain);
  auto h = f->store->Pin(keys, f->clock.Now() + absl::Seconds(30));
  ASSERT_TRUE(h.ok());
  absl::Status st = f->store->Publish(other[0].meta, other[0].bytes);
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_EQ(f->store->Lookup(keys).matched, 4u);
  ASSERT_TRUE(f->store->Unpin(*h).ok());
  ASSERT_TRUE(PublishAll(f->store.get(), other).ok());
  EXPECT_EQ(f->store->Lookup(keys).matched, 0u);  // leaf-first: the whole chain went
  EXPECT_TRUE(f->store->CheckInvariants().ok());
}

TEST(TieredStoreTest, LeaseExpiryReleasesPins) {
  auto chain = MakeChain(28, "a", 2);
  auto f = MakeStore(chain[0].bytes.size(), {0, 2, 0});
  ASSERT_TRUE(PublishAll(f->store.get(), chain).ok());
  auto h = f->store->Pin(KeysOf(chain), f->clock.Now() + absl::Seconds(5));
  ASSERT_TRUE(h.ok());
  f->clock.Advance(absl::Seconds(6));
  std::vector<uint8_t> dst(chain[0].bytes.size());
  EXPECT_TRUE(absl::IsNotFound(f->store->Read(*h, chain[0].meta.key, dst).status()));
  EXPECT_TRUE(absl::IsNotFound(f->store->Unpin(*h)));
  EXPECT_EQ(f->store->Stats().expired_leases, 1u);
  auto more = MakeChain(29, "a", 2);
  ASSERT_TRUE(PublishAll(f->store.get(), more).ok());  // evicts the now-unpinned chain
  EXPECT_TRUE(absl::IsInvalidArgument(f->store->Pin(KeysOf(more), f->clock.Now()).status()));
}

// A host tier whose Read blocks until released, to expire a lease mid-read.
class BlockingTier : public TierWrapper {
 public:
  using TierWrapper::TierWrapper;
  Notification entered, release;
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override {
    if (!entered.HasBeenNotified()) {
      entered.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(20));
    }
    return TierWrapper::Read(key, dst);
  }
};

TEST(TieredStoreTest, LeaseExpiringDuringReadNeverCorruptsIt) {
  auto chain = MakeChain(30, "a", 1);
  auto other = MakeChain(31, "a", 1);
  MemTier base(TierKind::kHost, chain[0].bytes.size());
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto blocking = std::make_unique<BlockingTier>(&base);
  BlockingTier* bt = blocking.get();
  tiers[1] = std::move(blocking);
  FakeClock clock;
  MetricsRegistry reg;
  auto store = TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                                 std::move(tiers));
  ASSERT_TRUE(store.ok());
  TieredStore& s = **store;
  ASSERT_TRUE(s.Publish(chain[0].meta, chain[0].bytes).ok());
  auto h = s.Pin(KeysOf(chain), clock.Now() + absl::Seconds(1));
  ASSERT_TRUE(h.ok());
  std::vector<uint8_t> dst(chain[0].bytes.size(), 0xEE);
  absl::StatusOr<size_t> n;
  std::thread reader([&] { n = s.Read(*h, chain[0].meta.key, dst); });
  ASSERT_TRUE(bt->entered.WaitForNotificationWithTimeout(absl::Seconds(20)));
  clock.Advance(absl::Seconds(5));  // the lease is now past its deadline
  // The tier holds exactly one page: publishing another needs that page's space.
  absl::Status st = s.Publish(other[0].meta, other[0].bytes);
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  bt->release.Notify();
  reader.join();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(dst, chain[0].bytes);
  ASSERT_TRUE(s.Publish(other[0].meta, other[0].bytes).ok());  // now it may go
}

TEST(TieredStoreTest, DemotionPromotionAndWriteBack) {
  auto chain = MakeChain(32, "a", 6);
  uint64_t page = chain[0].bytes.size();
  auto f = MakeStore(page, {2, 3, 16});
  TieredStore& s = *f->store;
  ASSERT_TRUE(PublishAll(&s, chain).ok());
  auto keys = KeysOf(chain);
  auto r = s.Lookup(keys);
  ASSERT_EQ(r.matched, 6u);
  // Newest pages are in device; older ones were demoted down (leaf-first keeps parents up
  // only while they have children in the tier; the oldest went furthest).
  EXPECT_EQ(r.tiers[5], TierKind::kDevice);
  EXPECT_EQ(r.tiers[0], TierKind::kNvme);
  StoreStats st = s.Stats();
  EXPECT_GT(st.tiers[1].demotions_in + st.tiers[2].demotions_in, 0u);
  EXPECT_LE(st.tiers[0].used_bytes, 2 * page);
  // Every page reads back exactly, wherever it is.
  for (const auto& p : chain) {
    auto got = ReadOne(*f, p);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, p.bytes);
  }
  // The nvme hit on chain[0] was promoted into host.
  EXPECT_GT(s.Stats().tiers[1].promotions_in, 0u);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
}

TEST(TieredStoreTest, AsyncWriteBackCopiesDeviceToHost) {
  auto chain = MakeChain(33, "a", 3);
  FakeClock clock;
  MetricsRegistry reg;
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  tiers[0] = std::make_unique<MemTier>(TierKind::kDevice, 1 << 20);
  tiers[1] = std::make_unique<MemTier>(TierKind::kHost, 1 << 20);
  auto store = TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 1},
                                 std::move(tiers));
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE(PublishAll(store->get(), chain).ok());
  (*store)->WaitIdle();
  StoreStats st = (*store)->Stats();
  EXPECT_EQ(st.tiers[0].pages, 3u);
  EXPECT_EQ(st.tiers[1].pages, 3u);
  EXPECT_TRUE((*store)->CheckInvariants().ok());
}

TEST(TieredStoreTest, CorruptCopyIsQuarantinedAndNeverServed) {
  auto chain = MakeChain(34, "a", 4);
  auto f = MakeStore(chain[0].bytes.size(), {0, 16, 0});
  TieredStore& s = *f->store;
  ASSERT_TRUE(PublishAll(&s, chain).ok());
  ASSERT_TRUE(f->mem[1]->CorruptForTest(chain[1].meta.key, 1000).ok());
  auto got = ReadOne(*f, chain[1]);
  EXPECT_TRUE(absl::IsNotFound(got.status())) << got.status();
  EXPECT_EQ(s.Stats().tiers[1].quarantined, 1u);
  EXPECT_EQ(
      f->metrics.GetCounter("kvstrata_store_quarantined_total", "", {{"tier", "host"}})->Value(),
      1.0);
  // The block and its descendants are gone; its parent is still served.
  EXPECT_EQ(s.Lookup(KeysOf(chain)).matched, 1u);
  auto first = ReadOne(*f, chain[0]);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, chain[0].bytes);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
  // It can be published again.
  ASSERT_TRUE(PublishAll(&s, std::vector<TestPage>(chain.begin() + 1, chain.end())).ok());
  EXPECT_EQ(s.Lookup(KeysOf(chain)).matched, 4u);
}

TEST(TieredStoreTest, CorruptCopyFallsBackToAGoodOne) {
  auto chain = MakeChain(35, "a", 2);
  auto f = MakeStore(chain[0].bytes.size(), {0, 16, 16});
  TieredStore& s = *f->store;
  ASSERT_TRUE(PublishAll(&s, chain).ok());
  ASSERT_TRUE(s.Evict(TierKind::kHost, 1 << 30).ok());  // demote both to nvme
  ASSERT_EQ(s.Lookup(KeysOf(chain)).tiers[1], TierKind::kNvme);
  auto got = ReadOne(*f, chain[1]);  // promotes to host
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(s.Lookup(KeysOf(chain)).tiers[1], TierKind::kHost);
  ASSERT_TRUE(f->mem[1]->CorruptForTest(chain[1].meta.key, 77).ok());
  got = ReadOne(*f, chain[1]);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, chain[1].bytes);
  EXPECT_EQ(s.Stats().tiers[1].quarantined, 1u);
  EXPECT_EQ(s.Lookup(KeysOf(chain)).matched, 2u);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
}

TEST(TieredStoreTest, QuotasIsolateTenants) {
  auto a = MakeChain(36, "a", 6);
  auto b = MakeChain(37, "b", 3);
  uint64_t page = a[0].bytes.size();
  TieredStoreOptions o;
  o.quotas[a[0].meta.ns] = {0, 2 * page, 0};
  auto f = MakeStore(page, {0, 8, 0}, o);
  TieredStore& s = *f->store;
  ASSERT_TRUE(PublishAll(&s, b).ok());
  // a publishes 6 pages into a quota of 2: the first pages fall out (a's own LRU); b's stay.
  for (const auto& p : a) {
    absl::Status st = s.Publish(p.meta, p.bytes);
    // A chain cannot outgrow its quota: once both slots hold a's prefix, more is refused.
    if (!st.ok()) {
      EXPECT_TRUE(absl::IsResourceExhausted(st) || absl::IsFailedPrecondition(st)) << st;
    }
  }
  EXPECT_EQ(s.Lookup(KeysOf(b)).matched, 3u);
  EXPECT_LE(s.Lookup(KeysOf(a)).matched, 2u);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
  // Independent single-page chains of a: each new one evicts an old one of a.
  for (int i = 0; i < 5; ++i) {
    auto one = MakeChain(100 + i, "a", 1);
    ASSERT_TRUE(s.Publish(one[0].meta, one[0].bytes).ok()) << i;
  }
  EXPECT_EQ(s.Lookup(KeysOf(b)).matched, 3u);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants();
}

TEST(TieredStoreTest, SessionRetentionIsSoft) {
  auto session = MakeChain(38, "a", 2);
  auto noise = MakeChain(39, "a", 6);
  uint64_t page = session[0].bytes.size();
  auto f = MakeStore(page, {0, 4, 0});
  TieredStore& s = *f->store;
  ASSERT_TRUE(PublishAll(&s, session).ok());
  EXPECT_EQ(s.Retain(KeysOf(session), absl::Minutes(5)), 2u);
  // Noise pages (one independent chain per page) are newer but unretained: they cycle.
  for (int i = 0; i < 6; ++i) {
    f->clock.Advance(absl::Seconds(1));
    auto one = MakeChain(200 + i, "a", 1);
    ASSERT_TRUE(s.Publish(one[0].meta, one[0].bytes).ok());
  }
  EXPECT_EQ(s.Lookup(KeysOf(session)).matched, 2u);
  // Once the retention has decayed, the session's pages are ordinary LRU victims.
  f->clock.Advance(absl::Minutes(10));
  for (int i = 0; i < 4; ++i) {
    f->clock.Advance(absl::Seconds(1));
    auto one = MakeChain(300 + i, "a", 1);
    ASSERT_TRUE(s.Publish(one[0].meta, one[0].bytes).ok());
  }
  EXPECT_EQ(s.Lookup(KeysOf(session)).matched, 0u);
}

TEST(TieredStoreTest, LendAndPoisonedLease) {
  auto chain = MakeChain(40, "a", 1);
  auto f = MakeStore(chain[0].bytes.size(), {0, 1, 0});
  TieredStore& s = *f->store;
  ASSERT_TRUE(PublishAll(&s, chain).ok());
  auto h = s.Pin(KeysOf(chain), f->clock.Now() + absl::Seconds(1));
  ASSERT_TRUE(h.ok());
  auto loan = s.Lend(*h, chain[0].meta.key);
  ASSERT_TRUE(loan.ok()) << loan.status();
  EXPECT_EQ(loan->tier, TierKind::kHost);
  EXPECT_TRUE(std::equal(loan->bytes.begin(), loan->bytes.end(), chain[0].bytes.begin()));
  f->clock.Advance(absl::Seconds(5));
  // Expired with a loan out: poisoned, still pinned, so nothing can take its memory.
  auto other = MakeChain(41, "a", 1);
  EXPECT_TRUE(absl::IsResourceExhausted(s.Publish(other[0].meta, other[0].bytes)));
  EXPECT_EQ(s.Stats().poisoned_leases, 1u);
  std::vector<uint8_t> dst(chain[0].bytes.size());
  EXPECT_TRUE(absl::IsNotFound(s.Read(*h, chain[0].meta.key, dst).status()));
  ASSERT_TRUE(s.Unpin(*h).ok());
  ASSERT_TRUE(s.Publish(other[0].meta, other[0].bytes).ok());
}

TEST(TieredStoreTest, RestartServesSealedNvmePages) {
  std::string dir = testing::FreshTestDir("store-restart");
  auto chain = MakeChain(42, "a", 5);
  auto fork = MakeChain(43, "a", 2, 4, 1, chain[1].meta.key);
  MetricsRegistry reg;
  FakeClock clock;
  auto open = [&]() {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[1] = std::make_unique<MemTier>(TierKind::kHost, 1 << 20);
    auto nv = NvmeTier::Open({.path = dir});
    EXPECT_TRUE(nv.ok()) << nv.status();
    tiers[2] = *std::move(nv);
    return TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                             std::move(tiers));
  };
  {
    auto s = open();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(PublishAll(s->get(), chain).ok());
    ASSERT_TRUE(PublishAll(s->get(), fork).ok());
    ASSERT_TRUE((*s)->Evict(TierKind::kHost, 1 << 30).ok());  // everything to nvme
    auto extra = MakeChain(44, "a", 1);
    ASSERT_TRUE((*s)->Write(extra[0].meta, extra[0].bytes).ok());  // unsealed, in host
  }
  auto s = open();
  ASSERT_TRUE(s.ok()) << s.status();
  auto r = (*s)->Lookup(KeysOf(chain));
  EXPECT_EQ(r.matched, 5u);
  for (TierKind t : r.tiers) EXPECT_EQ(t, TierKind::kNvme);
  auto fork_keys = KeysOf(chain);
  fork_keys.resize(2);
  for (auto& k : KeysOf(fork)) fork_keys.push_back(k);
  EXPECT_EQ((*s)->Lookup(fork_keys).matched, 4u);
  for (const auto& p : chain) {
    auto h = (*s)->Pin({&p.meta.key, 1}, clock.Now() + absl::Seconds(5));
    ASSERT_TRUE(h.ok());
    std::vector<uint8_t> dst(p.bytes.size());
    auto n = (*s)->Read(*h, p.meta.key, dst);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(dst, p.bytes);
    ASSERT_TRUE((*s)->Unpin(*h).ok());
  }
  EXPECT_TRUE((*s)->CheckInvariants().ok()) << (*s)->CheckInvariants();
}

// A tier whose Seal() waits, once armed, until the test releases it: an nvme seal waiting
// for fdatasync.
class SlowSealTier : public TierWrapper {
 public:
  explicit SlowSealTier(std::unique_ptr<Tier> base)
      : TierWrapper(base.get()), own_(std::move(base)) {}
  absl::Status Seal(const BlockKey& key) override {
    if (armed_.exchange(false)) {
      entered_.Notify();
      if (!release_.WaitForNotificationWithTimeout(absl::Seconds(30))) {
        return absl::DeadlineExceededError("the test never released the seal");
      }
    }
    return TierWrapper::Seal(key);
  }
  std::atomic<bool> armed_{false};
  Notification entered_, release_;

 private:
  std::unique_ptr<Tier> own_;
};

// The tier's seal runs outside the store's lock: lookups, stats and evictions go on while it
// waits; the page cannot be aborted meanwhile; a parent evicted in that window fails the
// seal and leaves the store consistent.
TEST(TieredStoreTest, SlowTierSealDoesNotBlockTheStore) {
  auto chain = MakeChain(45, "a", 2);
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto slow = std::make_unique<SlowSealTier>(std::make_unique<MemTier>(TierKind::kHost, 1 << 20));
  SlowSealTier* tier = slow.get();
  tiers[1] = std::move(slow);
  MetricsRegistry reg;
  FakeClock clock;
  auto s = TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                             std::move(tiers));
  ASSERT_TRUE(s.ok());
  TieredStore& store = **s;
  ASSERT_TRUE(store.Publish(chain[0].meta, chain[0].bytes).ok());
  tier->armed_ = true;
  absl::Status child = absl::UnknownError("not run");
  std::thread sealer([&] { child = store.Publish(chain[1].meta, chain[1].bytes); });
  ASSERT_TRUE(tier->entered_.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(store.Lookup(KeysOf(chain)).matched, 1u);  // would wait for the seal before
  EXPECT_EQ(store.Stats().pending_pages, 1u);
  EXPECT_TRUE(absl::IsFailedPrecondition(store.Abort(chain[1].meta.key)));
  auto freed = store.Evict(TierKind::kHost, 1 << 20);  // the parent goes
  ASSERT_TRUE(freed.ok());
  EXPECT_GT(*freed, 0u);
  tier->release_.Notify();
  sealer.join();
  EXPECT_TRUE(absl::IsFailedPrecondition(child)) << child;
  EXPECT_EQ(store.Stats().pending_pages, 0u);
  EXPECT_EQ(store.Lookup(KeysOf(chain)).matched, 0u);
  EXPECT_TRUE(store.CheckInvariants().ok()) << store.CheckInvariants();
}

TEST(TieredStoreTest, OpenRejectsMisplacedTiers) {
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  tiers[0] = std::make_unique<MemTier>(TierKind::kHost, 1024);
  EXPECT_TRUE(absl::IsInvalidArgument(TieredStore::Open({}, std::move(tiers)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(TieredStore::Open({}, {}).status()));
}

}  // namespace
}  // namespace kv
