// Randomized model checking of the TieredStore (in the style of RocksDB's db_stress).
//
// Random publish / write / seal / pin / unpin / read / lookup / evict / corrupt / clock /
// restart operations run against a real store (MemTier device and host, a real RocksDB
// nvme tier) and a simple oracle. After every operation:
//   - a read returns exactly the bytes that were published, or a miss;
//   - a lookup only matches sealed pages, and covers every pinned page of the chain;
//   - the index is prefix-closed and per-namespace usage matches the pages and quotas
//     (TieredStore::CheckInvariants).
// The seed is printed on failure; KVSTRATA_TEST_SEED=N replays one.
#include <cstdio>
#include <cstdlib>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "core/test_seed.h"
#include "gtest/gtest.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

using testing::TestPage;

struct Universe {
  std::vector<TestPage> pages;
  std::vector<std::vector<size_t>> chains;  // chain -> page indices from the root
  absl::flat_hash_map<BlockKey, size_t> by_key;
};

// A few tenants, each with chains and forks off them (shared prefixes).
Universe MakeUniverse(std::mt19937_64& rng) {
  Universe u;
  for (int c = 0; c < 8; ++c) {
    std::string tenant = c % 3 == 0 ? "b" : "a";
    std::vector<size_t> path;
    std::optional<BlockKey> parent;
    if (c >= 2 && rng() % 2 == 0) {  // fork an earlier chain of the same tenant
      const auto& base = u.chains[rng() % u.chains.size()];
      if (u.pages[base[0]].meta.ns == "tenant:" + tenant) {
        size_t cut = 1 + rng() % base.size();
        path.assign(base.begin(), base.begin() + cut);
        parent = u.pages[path.back()].meta.key;
      }
    }
    auto chain = testing::MakeChain(rng(), tenant, 3 + rng() % 6, 4, 1 + rng() % 3, parent);
    for (auto& p : chain) {
      u.by_key[p.meta.key] = u.pages.size();
      path.push_back(u.pages.size());
      u.pages.push_back(std::move(p));
    }
    u.chains.push_back(path);
  }
  return u;
}

class StressRun {
 public:
  StressRun(uint64_t seed) : rng_(seed), u_(MakeUniverse(rng_)) {
    dir_ = testing::FreshTestDir("store-stress");
    for (const auto& p : u_.pages) max_page_ = std::max<uint64_t>(max_page_, p.bytes.size());
  }

  void Open() {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    auto dev = std::make_unique<MemTier>(TierKind::kDevice, 4 * max_page_);
    auto host = std::make_unique<MemTier>(TierKind::kHost, 8 * max_page_);
    device_ = dev.get();
    host_ = host.get();
    tiers[0] = std::move(dev);
    tiers[1] = std::move(host);
    auto nv = NvmeTier::Open({.path = dir_, .capacity_bytes = 20 * max_page_});
    ASSERT_TRUE(nv.ok()) << nv.status();
    tiers[2] = *std::move(nv);
    TieredStoreOptions o;
    o.clock = &clock_;
    o.metrics = &metrics_;
    o.background_threads = 0;
    o.quotas["tenant:b"] = {2 * max_page_, 3 * max_page_, 6 * max_page_};
    auto s = TieredStore::Open(o, std::move(tiers));
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
    leases_.clear();
    pending_.clear();
  }

  void Step(int step) {
    switch (rng_() % 12) {
      case 0:
      case 1:
        Publish();
        break;
      case 2:
        WriteOrSeal();
        break;
      case 3:
        PinPrefix();
        break;
      case 4:
        UnpinOne();
        break;
      case 5:
      case 6:
        ReadPinned();
        break;
      case 7:
        LookupChain();
        break;
      case 8: {
        TierKind t = static_cast<TierKind>(rng_() % kNumTiers);
        auto freed = store_->Evict(t, (1 + rng_() % 3) * max_page_);
        ASSERT_TRUE(freed.ok()) << freed.status();
        break;
      }
      case 9:
        Corrupt();
        break;
      case 10:
        clock_.Advance(absl::Milliseconds(rng_() % 4000));
        break;
      case 11:
        if (rng_() % 16 == 0) {
          store_.reset();
          Open();
          ++restarts_;
        }
        break;
    }
    absl::Status inv = store_->CheckInvariants();
    ASSERT_TRUE(inv.ok()) << inv << " after step " << step;
    CheckPinsHeld();
  }

 private:
  const TestPage& RandomPage() { return u_.pages[rng_() % u_.pages.size()]; }

  // Mostly extends a chain by its first uncached block (so chains grow and share
  // prefixes); sometimes publishes any page, whose parent may well be missing.
  const TestPage& PickToPublish() {
    if (rng_() % 4 == 0) return RandomPage();
    const auto& chain = u_.chains[rng_() % u_.chains.size()];
    std::vector<BlockKey> keys;
    for (size_t i : chain) keys.push_back(u_.pages[i].meta.key);
    size_t m = store_->Lookup(keys).matched;
    return u_.pages[chain[std::min(m, chain.size() - 1)]];
  }

  void Publish() {
    const TestPage& p = PickToPublish();
    absl::Status st = store_->Publish(p.meta, p.bytes);
    if (st.ok()) {
      sealed_.insert(p.meta.key);
      return;
    }
    // The only acceptable failures: already there, parent not cached, or no room.
    ASSERT_TRUE(absl::IsAlreadyExists(st) || absl::IsFailedPrecondition(st) ||
                absl::IsResourceExhausted(st))
        << st;
  }

  void WriteOrSeal() {
    if (!pending_.empty() && rng_() % 2 == 0) {
      BlockKey k = *pending_.begin();
      pending_.erase(pending_.begin());
      absl::Status st = store_->Seal(k);
      if (st.ok()) sealed_.insert(k);
      ASSERT_TRUE(st.ok() || absl::IsNotFound(st) || absl::IsFailedPrecondition(st)) << st;
      return;
    }
    const TestPage& p = RandomPage();
    absl::Status st = store_->Write(p.meta, p.bytes);
    if (st.ok()) pending_.insert(p.meta.key);
  }

  void PinPrefix() {
    const auto& chain = u_.chains[rng_() % u_.chains.size()];
    std::vector<BlockKey> keys;
    for (size_t i : chain) keys.push_back(u_.pages[i].meta.key);
    auto r = store_->Lookup(keys);
    if (r.matched == 0) return;
    size_t n = 1 + rng_() % r.matched;
    keys.resize(n);
    absl::Time deadline = clock_.Now() + absl::Milliseconds(500 + rng_() % 8000);
    auto h = store_->Pin(keys, deadline);
    ASSERT_TRUE(h.ok()) << h.status();  // just looked up, nothing ran in between
    leases_[*h] = {keys, deadline};
  }

  void UnpinOne() {
    if (leases_.empty()) return;
    auto it = leases_.begin();
    std::advance(it, rng_() % leases_.size());
    absl::Status st = store_->Unpin(it->first);
    bool live = it->second.deadline > clock_.Now();
    ASSERT_TRUE(st.ok() || (!live && absl::IsNotFound(st))) << st;
    leases_.erase(it);
  }

  void ReadPinned() {
    if (leases_.empty()) return;
    auto it = leases_.begin();
    std::advance(it, rng_() % leases_.size());
    const BlockKey& k = it->second.keys[rng_() % it->second.keys.size()];
    const TestPage& p = u_.pages[u_.by_key.at(k)];
    std::vector<uint8_t> dst(p.bytes.size() + 5, 0xEE);
    auto n = store_->Read(it->first, k, dst);
    if (n.ok()) {
      ASSERT_EQ(*n, p.bytes.size());
      ASSERT_TRUE(std::equal(p.bytes.begin(), p.bytes.end(), dst.begin()))
          << "read returned bytes that were never published for " << k.Hex();
      ASSERT_TRUE(sealed_.contains(k));
      ++reads_ok_;
    } else {
      ASSERT_TRUE(absl::IsNotFound(n.status())) << n.status();  // expired lease or quarantined
    }
  }

  void LookupChain() {
    const auto& chain = u_.chains[rng_() % u_.chains.size()];
    std::vector<BlockKey> keys;
    for (size_t i : chain) keys.push_back(u_.pages[i].meta.key);
    auto r = store_->Lookup(keys);
    ASSERT_EQ(r.tiers.size(), r.matched);
    for (size_t i = 0; i < r.matched; ++i) {
      ASSERT_TRUE(sealed_.contains(keys[i])) << "lookup matched a page never sealed";
    }
  }

  void Corrupt() {
    MemTier* t = rng_() % 2 ? device_ : host_;
    auto listed = t->List();
    ASSERT_TRUE(listed.ok());
    if (listed->empty()) return;
    const PageMeta& m = (*listed)[rng_() % listed->size()];
    ASSERT_TRUE(t->CorruptForTest(m.key, rng_()).ok());
  }

  // Every key of a live lease is still cached: pinned pages are never evicted.
  void CheckPinsHeld() {
    absl::Time now = clock_.Now();
    for (const auto& [h, lease] : leases_) {
      if (lease.deadline <= now) continue;
      auto r = store_->Lookup(lease.keys);
      // Quarantine (our own corruption) is the only way a pinned page may disappear.
      if (r.matched < lease.keys.size()) {
        ASSERT_GT(store_->Stats().tiers[0].quarantined + store_->Stats().tiers[1].quarantined, 0u)
            << "pinned page evicted";
      }
    }
  }

  struct LeaseModel {
    std::vector<BlockKey> keys;
    absl::Time deadline;
  };
  std::mt19937_64 rng_;
  Universe u_;
  std::string dir_;
  uint64_t max_page_ = 0;
  FakeClock clock_;
  MetricsRegistry metrics_;
  MemTier* device_ = nullptr;
  MemTier* host_ = nullptr;
  std::unique_ptr<TieredStore> store_;
  std::map<TieredStore::PinHandle, LeaseModel> leases_;
  absl::flat_hash_set<BlockKey> pending_;
  absl::flat_hash_set<BlockKey> sealed_;
  int reads_ok_ = 0;
  int restarts_ = 0;

 public:
  void Run(int steps) {
    Open();
    for (int i = 0; i < steps && !::testing::Test::HasFatalFailure(); ++i) Step(i);
    if (::testing::Test::HasFatalFailure()) return;
    StoreStats st = store_->Stats();
    uint64_t evictions = 0, quarantined = 0;
    for (const auto& t : st.tiers) {
      evictions += t.evictions;
      quarantined += t.quarantined;
    }
    std::printf(
        "stress: sealed=%zu reads_ok=%d restarts=%d evictions(since restart)=%lu "
        "quarantined(since restart)=%lu indexed=%lu\n",
        sealed_.size(), reads_ok_, restarts_, evictions, quarantined, st.indexed_pages);
    // The run must have exercised the store, or it proves nothing.
    EXPECT_GT(sealed_.size(), 20u);
    EXPECT_GT(reads_ok_, 25);
  }
};

TEST(TieredStoreStressTest, RandomOpsAgainstOracle) {
  std::vector<uint64_t> seeds;
  if (std::getenv(kv::testing::kTestSeedVariable) != nullptr) {
    seeds.push_back(kv::testing::TestSeed());
  } else {
    for (int i = 0; i < 3; ++i) seeds.push_back(kv::testing::TestSeed());
  }
  for (uint64_t seed : seeds) {
    SCOPED_TRACE(kv::testing::SeedTrace(seed));
    StressRun run(seed);
    run.Run(1500);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace kv
