// Readers, writers, a lease reaper and the evictor on one TieredStore at once, with async
// write-back. Every read that succeeds must return exactly the published bytes; the store's
// invariants must hold at the end. `make tsan` (scripts/tsan-check) runs it under TSAN for
// data races. Tiers: slab device + slab host + nvme (segment files + RocksDB index), under
// TSAN too: the store's locks are kv::Mutex, which TSAN sees, and scripts/tsan.supp covers
// only accesses made inside the uninstrumented RocksDB library.
#include <atomic>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/slab_tier.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

TEST(TieredStoreConcurrencyTest, ReadersWritersAndEvictor) {
  uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<std::vector<testing::TestPage>> chains;
  for (int c = 0; c < 24; ++c) {
    std::optional<BlockKey> parent;
    if (c >= 4 && c % 3 == 0) parent = chains[c - 4][2].meta.key;  // shared prefixes
    chains.push_back(testing::MakeChain(rng(), c % 2 ? "a" : "b", 6, 4, 2, parent));
  }
  auto expected = [&](const BlockKey& k) -> const std::vector<uint8_t>* {
    for (const auto& ch : chains) {
      for (const auto& p : ch) {
        if (p.meta.key == k) return &p.bytes;
      }
    }
    return nullptr;
  };
  uint64_t page = chains[0][0].bytes.size();
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto dev = AllocateDeviceRegion(256 << 10);
  auto host = AllocateHostRegion(512 << 10);
  ASSERT_TRUE(dev.ok() && host.ok());
  tiers[0] = *SlabTier::Create(*std::move(dev), {TierKind::kDevice, 64 << 10});
  tiers[1] = *SlabTier::Create(*std::move(host), {TierKind::kHost, 64 << 10});
  auto nv = NvmeTier::Open(
      {.path = testing::FreshTestDir("store-concurrency"), .capacity_bytes = 60 * page});
  ASSERT_TRUE(nv.ok());
  tiers[2] = *std::move(nv);
  MetricsRegistry reg;
  TieredStoreOptions o;
  o.metrics = &reg;
  o.background_threads = 2;
  o.quotas["tenant:b"] = {0, 256 << 10, 0};
  auto s = TieredStore::Open(o, std::move(tiers));
  ASSERT_TRUE(s.ok()) << s.status();
  TieredStore& store = **s;

  std::atomic<int> good_reads{0}, misses{0}, wrong{0}, published{0};
  std::atomic<bool> stop{false};
  std::atomic<int> writers_left{2};
  auto chain_keys = [&](int c) { return testing::KeysOf(chains[c]); };
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 r(seed + w);
      for (int i = 0; i < 600; ++i) {
        const auto& ch = chains[r() % chains.size()];
        for (const auto& p : ch) {
          if (store.Publish(p.meta, p.bytes).ok()) ++published;
        }
      }
      --writers_left;
    });
  }
  for (int rd = 0; rd < 3; ++rd) {
    threads.emplace_back([&, rd] {
      std::mt19937_64 r(seed + 100 + rd);
      // At least 1500 rounds, and on while the writers run (on a loaded machine the readers
      // could otherwise finish before the first page is published), at most 200,000.
      for (int i = 0; (i < 1500 || writers_left.load() > 0) && i < 200000; ++i) {
        auto keys = chain_keys(static_cast<int>(r() % chains.size()));
        auto l = store.Lookup(keys);
        if (l.matched == 0) continue;
        keys.resize(l.matched);
        auto h = store.Pin(keys, absl::Now() + absl::Milliseconds(1 + r() % 50));
        if (!h.ok()) continue;  // evicted between lookup and pin
        for (const BlockKey& k : keys) {
          std::vector<uint8_t> dst(page + 16, 0xEE);
          auto n = store.Read(*h, k, dst);
          if (!n.ok()) {
            ++misses;  // an expired lease
            continue;
          }
          dst.resize(*n);
          if (dst == *expected(k)) {
            ++good_reads;
          } else {
            ++wrong;
          }
        }
        if (r() % 4) (void)store.Unpin(*h);  // some leases are left to expire
      }
    });
  }
  threads.emplace_back([&] {
    std::mt19937_64 r(seed + 999);
    while (!stop.load()) {
      (void)store.Evict(static_cast<TierKind>(r() % kNumTiers), page * (1 + r() % 4));
      (void)store.Stats();
      std::this_thread::yield();
    }
  });
  for (size_t i = 0; i + 1 < threads.size(); ++i) threads[i].join();
  stop = true;
  threads.back().join();
  store.WaitIdle();
  std::printf("concurrency: published=%d good_reads=%d misses=%d wrong=%d\n", published.load(),
              good_reads.load(), misses.load(), wrong.load());
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(good_reads.load(), 0);
  EXPECT_TRUE(store.CheckInvariants().ok()) << store.CheckInvariants();
}

}  // namespace
}  // namespace kv
