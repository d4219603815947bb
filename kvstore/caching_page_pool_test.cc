// CachingPagePool (kvstore/caching_page_pool.h): a local host tier in front of a remote pool.
// The remote pool is a LocalPagePool over its own store, wrapped to count what it is asked and
// to fail on demand, so each test can tell a local hit from a remote read.
#include "kvstore/caching_page_pool.h"

#include <gtest/gtest.h>

#include "core/clock.h"
#include "core/status_macros.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

using testing::TestPage;

constexpr uint32_t kTokens = 64;
constexpr uint32_t kLayers = 2;
const absl::Time kFar = absl::InfiniteFuture();

KeyNamespace Tenant(const std::string& t) { return *KeyNamespace::Tenant(t); }

// Reads and publishes go to a LocalPagePool; reads are counted (in keys) and can fail. A read
// is made as the tenant the call names, as a store node acting for it makes it (the pool's own Read
// reads what a lease pinned, and these reads have none).
class FakeRemote final : public PagePool {
 public:
  explicit FakeRemote(TieredStore* store) : pool_(store, {.node_id = "home-0"}) {}
  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& tenant) override {
    return pool_.Lookup(chain, tenant);
  }
  absl::StatusOr<std::string> Pin(const std::string& addr, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& tenant, int64_t* pinned,
                                  std::string* lent) override {
    return pool_.Pin(addr, keys, lease, tenant, pinned, lent);
  }
  void Unpin(const std::string& addr, const std::string& id, const std::string& a) override {
    pool_.Unpin(addr, id, a);
  }
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(const std::string& addr,
                                                         std::span<const BlockKey> keys,
                                                         const std::string& lease,
                                                         const std::string& a, absl::Time deadline,
                                                         std::string* path,
                                                         const std::string& lent) override {
    read_keys += static_cast<int64_t>(keys.size());
    read_lent = lent;
    if (fail_reads) return absl::UnavailableError("home down");
    ASSIGN_OR_RETURN(PageStoreCaller caller, PageStoreCaller::Tenant(a));
    std::vector<std::vector<uint8_t>> out;
    for (const BlockKey& key : keys) {
      absl::StatusOr<std::vector<uint8_t>> page = pool_.page_store().Read(caller, key, lease);
      if (!page.ok()) break;
      out.push_back(*std::move(page));
    }
    if (path != nullptr) *path = "ucx";
    return out;
  }
  absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                  const PoolWriteOptions& o, const std::string& a) override {
    return pool_.Publish(root, pages, o, a);
  }

  int64_t read_keys = 0;
  std::string read_lent;  // the `lent` of the last Read
  bool fail_reads = false;

 private:
  LocalPagePool pool_;
};

std::unique_ptr<TieredStore> HostStore(Clock* clock, MetricsRegistry* m, uint64_t bytes,
                                       MemTier** host = nullptr) {
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto t = std::make_unique<MemTier>(TierKind::kHost, bytes);
  if (host != nullptr) *host = t.get();
  tiers[1] = std::move(t);
  TieredStoreOptions so{.clock = clock, .metrics = m};
  so.background_threads = 0;
  return *TieredStore::Open(so, std::move(tiers));
}

class CachingPagePoolTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(/*local=*/true); }
  void Open(bool local) {
    page_ = testing::MakeChain(0, Tenant("x"), 1, kTokens, kLayers)[0].bytes.size();
    remote_store_ = HostStore(&clock_, &metrics_, page_ * 64);
    remote_ = std::make_unique<FakeRemote>(remote_store_.get());
    if (local) local_store_ = HostStore(&clock_, &metrics_, page_ * 64, &host_);
    pool_ = std::make_unique<CachingPagePool>(
        remote_.get(), local ? local_store_.get() : nullptr,
        CachingPagePoolOptions{
            .layout = "mla-fp8-656", .page_tokens = kTokens, .metrics = &metrics_});
  }
  PoolWriteOptions Write(const std::string& tenant, bool shared = false) {
    PoolWriteOptions o;
    o.key_space.layout_id = "mla-fp8-656";
    o.key_space.page_tokens = kTokens;
    o.shared_namespace = shared;
    o.tenant = tenant;
    return o;
  }
  std::vector<PoolPage> Pages(const std::vector<TestPage>& chain) {
    std::vector<PoolPage> out;
    for (const TestPage& p : chain) out.push_back({.key = p.meta.key, .bytes = p.bytes});
    return out;
  }
  // `chain` stored on the remote home only, as `tenant`'s (or shared).
  void OnHome(const std::vector<TestPage>& chain, const std::string& tenant, bool shared = false) {
    ASSERT_EQ(*remote_->Publish(chain[0].meta.key, Pages(chain), Write(tenant, shared), ""),
              static_cast<int64_t>(chain.size()));
  }
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(const std::vector<BlockKey>& keys,
                                                         const std::string& auth,
                                                         const std::string& lent = {}) {
    path_.clear();
    return pool_->Read("home-0", keys, "", auth, kFar, &path_, lent);
  }
  double Counter(const std::string& name) {
    return metrics_.GetCounter(StrCatName(name), "")->Value();
  }
  static std::string StrCatName(const std::string& n) {
    return "kvstrata_worker_local_cache_" + n + "_total";
  }
  static void ExpectPages(const absl::StatusOr<std::vector<std::vector<uint8_t>>>& got,
                          const std::vector<TestPage>& want) {
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ((*got)[i], want[i].bytes) << i;
  }

  FakeClock clock_;
  MetricsRegistry metrics_;
  uint64_t page_ = 0;
  MemTier* host_ = nullptr;
  std::unique_ptr<TieredStore> remote_store_, local_store_;
  std::unique_ptr<FakeRemote> remote_;
  std::unique_ptr<CachingPagePool> pool_;
  std::string path_;
};

TEST_F(CachingPagePoolTest, RemoteReadIsKeptThenServedLocally) {
  auto chain = testing::MakeChain(1, Tenant("acme"), 3, kTokens, kLayers);
  OnHome(chain, "acme");
  const auto keys = testing::KeysOf(chain);
  ExpectPages(Read(keys, "acme"), chain);
  EXPECT_EQ(path_, "ucx");
  EXPECT_EQ(remote_->read_keys, 3);
  EXPECT_EQ(Counter("misses"), 3.0);
  EXPECT_EQ(Counter("hits"), 0.0);
  // The second read costs no remote read, even with the home down.
  remote_->fail_reads = true;
  ExpectPages(Read(keys, "acme"), chain);
  EXPECT_EQ(path_, "local");
  EXPECT_EQ(remote_->read_keys, 3);
  EXPECT_EQ(Counter("hits"), 3.0);
}

// ReadView serves what Read serves, as views: the local prefix and the remote rest, which is
// kept; the views stay valid after later reads.
TEST_F(CachingPagePoolTest, ReadViewServesTheLocalPrefixAndTheRemoteRest) {
  auto chain = testing::MakeChain(5, Tenant("acme"), 4, kTokens, kLayers);
  OnHome(chain, "acme");
  auto keys = testing::KeysOf(chain);
  ExpectPages(Read({keys[0]}, "acme"), {chain[0]});
  std::string path;
  auto view = pool_->ReadView("home-0", keys, "", "acme", kFar, &path, "lent");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(path, "local+ucx");
  EXPECT_EQ(remote_->read_keys, 4);  // key 0, then keys 1..3
  EXPECT_EQ(remote_->read_lent, "lent");
  ExpectPages(Read(keys, "acme"), chain);  // all kept: local now
  EXPECT_EQ(path_, "local");
  ASSERT_EQ(view->size(), chain.size());
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_TRUE(std::equal(view->pages[i].begin(), view->pages[i].end(), chain[i].bytes.begin(),
                           chain[i].bytes.end()))
        << i;
  }
}

TEST_F(CachingPagePoolTest, PartialPrefixReadsOnlyTheRestRemotely) {
  auto chain = testing::MakeChain(2, Tenant("acme"), 5, kTokens, kLayers);
  OnHome(chain, "acme");
  auto keys = testing::KeysOf(chain);
  ExpectPages(Read({keys[0], keys[1]}, "acme"), {chain[0], chain[1]});
  EXPECT_EQ(remote_->read_keys, 2);
  ExpectPages(Read(keys, "acme", "lent-by-the-home"), chain);
  EXPECT_EQ(path_, "local+ucx");
  EXPECT_EQ(remote_->read_keys, 5);                   // only keys 2..4 went to the home
  EXPECT_EQ(remote_->read_lent, "lent-by-the-home");  // with what the router's pin lent
  EXPECT_EQ(Counter("hits"), 2.0);
  EXPECT_EQ(Counter("misses"), 5.0);
  // The rest was kept too: all five are local now.
  ExpectPages(Read(keys, "acme"), chain);
  EXPECT_EQ(path_, "local");
  EXPECT_EQ(remote_->read_keys, 5);
}

TEST_F(CachingPagePoolTest, CorruptLocalPageBecomesARemoteRead) {
  auto chain = testing::MakeChain(3, Tenant("acme"), 3, kTokens, kLayers);
  OnHome(chain, "acme");
  const auto keys = testing::KeysOf(chain);
  ExpectPages(Read(keys, "acme"), chain);
  // The local tier holds acme's copy under its storage key (kvstore/page_store.h).
  ASSERT_TRUE(host_->CorruptForTest(StorageKey("tenant:acme", keys[1]), page_ / 2).ok());
  ExpectPages(Read(keys, "acme"), chain);  // the home's bytes, never the corrupt ones
  EXPECT_EQ(path_, "local+ucx");
  EXPECT_EQ(remote_->read_keys, 5);  // 3, then keys 1 and 2
}

TEST_F(CachingPagePoolTest, TenantsAreIsolatedInTheLocalTier) {
  auto chain = testing::MakeChain(4, Tenant("acme"), 2, kTokens, kLayers);
  OnHome(chain, "acme");
  const auto keys = testing::KeysOf(chain);
  ExpectPages(Read(keys, "acme"), chain);
  ExpectPages(Read(keys, "acme"), chain);
  ASSERT_EQ(path_, "local");
  // globex asks for acme's keys: the local tier serves it nothing; only the home could
  // answer (and here it is down), so globex gets no byte of acme's pages.
  remote_->fail_reads = true;
  auto b = Read(keys, "globex");
  EXPECT_FALSE(b.ok() && !b->empty()) << "acme's pages were served to globex";
  // A call acting for no valid tenant bypasses the local tier.
  auto anon = Read(keys, "");
  EXPECT_FALSE(anon.ok() && !anon->empty());
  EXPECT_EQ(Counter("hits"), 2.0);
}

TEST_F(CachingPagePoolTest, PublishKeepsPagesLocallyInTheirNamespace) {
  auto mine = testing::MakeChain(5, Tenant("acme"), 2, kTokens, kLayers);
  auto shared = testing::MakeChain(6, KeyNamespace::Shared(), 2, kTokens, kLayers);
  // options.tenant is not trusted for the local copy: the tenant the call acts for is.
  ASSERT_EQ(*pool_->Publish(mine[0].meta.key, Pages(mine), Write("globex"), "acme"), 2);
  ASSERT_EQ(*pool_->Publish(shared[0].meta.key, Pages(shared), Write("acme", true), "acme"), 2);
  remote_->fail_reads = true;
  ExpectPages(Read(testing::KeysOf(mine), "acme"), mine);
  EXPECT_EQ(path_, "local");
  auto b = Read(testing::KeysOf(mine), "globex");
  EXPECT_FALSE(b.ok() && !b->empty()) << "acme's published pages were served to globex";
  ExpectPages(Read(testing::KeysOf(shared), "globex"), shared);  // shared: everyone's
  EXPECT_EQ(path_, "local");
  EXPECT_EQ(remote_->read_keys, 2);  // only globex's refused read of acme's pages
}

TEST_F(CachingPagePoolTest, NoLocalTierForwardsEveryRead) {
  Open(/*local=*/false);
  auto chain = testing::MakeChain(7, Tenant("acme"), 2, kTokens, kLayers);
  OnHome(chain, "acme");
  const auto keys = testing::KeysOf(chain);
  for (int i = 0; i < 2; ++i) {
    ExpectPages(Read(keys, "acme"), chain);
    EXPECT_EQ(path_, "ucx");
  }
  EXPECT_EQ(remote_->read_keys, 4);
  EXPECT_EQ(Counter("hits"), 0.0);
}

TEST_F(CachingPagePoolTest, HomeFailureAfterALocalPrefixReturnsThePrefix) {
  auto chain = testing::MakeChain(8, Tenant("acme"), 3, kTokens, kLayers);
  OnHome(chain, "acme");
  auto keys = testing::KeysOf(chain);
  ExpectPages(Read({keys[0]}, "acme"), {chain[0]});
  remote_->fail_reads = true;
  ExpectPages(Read(keys, "acme"), {chain[0]});
  EXPECT_EQ(path_, "local");
}

}  // namespace
}  // namespace kv
