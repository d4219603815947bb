// PageStore (kvstore/page_store.h): tenancy, leases and publish admission over a real
// TieredStore (in-memory tiers, or an nvme tier for recovered pages), with a FakeClock. The
// gRPC service's tests (cluster/page_store_service*_test.cc) check the same rules over the
// wire.
#include "kvstore/page_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

using testing::TestPage;

constexpr uint32_t kTokens = 64;
constexpr uint32_t kLayers = 2;

// A chain of `n` mla-fp8-656 pages (64 tokens x 2 layers) keyed under `ns`.
std::vector<TestPage> Chain(uint64_t seed, const KeyNamespace& ns, size_t n,
                            std::optional<BlockKey> parent = std::nullopt) {
  return testing::MakeChain(seed, ns, n, kTokens, kLayers, parent);
}

KeyNamespace Tenant(const std::string& t) { return *KeyNamespace::Tenant(t); }
PageStoreCaller As(const std::string& t) { return *PageStoreCaller::Tenant(t); }
std::vector<BlockKey> Keys(const std::vector<TestPage>& c) { return testing::KeysOf(c); }

AdmitOptions Mla(bool shared = false) {
  return {.layout = "mla-fp8-656", .page_tokens = kTokens, .shared_namespace = shared};
}

class PageStoreTest : public ::testing::Test {
 protected:
  // A host tier of `host_pages` pages (and no other tier) under a PageStore.
  void Open(int host_pages = 64, PageStoreOptions o = {}) {
    const uint64_t page = Chain(0, Tenant("x"), 1)[0].bytes.size();
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[1] = std::make_unique<MemTier>(TierKind::kHost, page * host_pages);
    TieredStoreOptions so{.clock = &clock_, .metrics = &metrics_};
    so.background_threads = 0;
    store_ = *TieredStore::Open(so, std::move(tiers));
    o.node_id = "store-t";
    o.metrics = &metrics_;
    pages_ = std::make_unique<PageStore>(store_.get(), o);
  }
  void SetUp() override { Open(); }

  // Admits `chain` as `c`; the outcomes.
  std::vector<AdmitOutcome> Admit(const PageStoreCaller& c, const std::vector<TestPage>& chain,
                                  const AdmitOptions& o = Mla()) {
    std::vector<AdmitOutcome> out;
    for (const TestPage& p : chain) out.push_back(pages_->Admit(c, p.meta.key, p.bytes, o).outcome);
    return out;
  }
  // The reason `p` is refused with (kNone when it is not).
  PageStoreReason Refusal(const PageStoreCaller& c, const BlockKey& key,
                          const std::vector<uint8_t>& bytes, const AdmitOptions& o = Mla()) {
    AdmitResult r = pages_->Admit(c, key, bytes, o);
    if (r.outcome != AdmitOutcome::kRejected) return PageStoreReason::kNone;
    EXPECT_FALSE(r.error.ok());
    return ReasonOf(r.error);
  }
  size_t Visible(const PageStoreCaller& c, std::span<const BlockKey> keys) {
    return pages_->Lookup(c, keys).size();
  }

  FakeClock clock_;
  MetricsRegistry metrics_;
  std::unique_ptr<LeaseBeacons> beacons_;  // outlives pages_
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<PageStore> pages_;
};

const std::vector<AdmitOutcome> Stored(size_t n) {
  return std::vector<AdmitOutcome>(n, AdmitOutcome::kStored);
}

TEST_F(PageStoreTest, AdmitLookupReadRoundTrip) {
  auto chain = Chain(1, Tenant("acme"), 3);
  EXPECT_EQ(Admit(As("acme"), chain), Stored(3));
  auto keys = Keys(chain);
  auto longer = keys;
  longer.push_back(Chain(2, Tenant("acme"), 1, keys.back())[0].meta.key);
  std::vector<VisibleBlock> look = pages_->Lookup(As("acme"), longer);
  ASSERT_EQ(look.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(look[i].tier, TierKind::kHost);
    EXPECT_EQ(look[i].ns, Tenant("acme").ToString());
    EXPECT_EQ(look[i].layout, "mla-fp8-656");
    EXPECT_EQ(look[i].size, chain[i].bytes.size());
    EXPECT_EQ(look[i].geometry.token_count, kTokens);
    EXPECT_EQ(look[i].geometry.first_layer, 0u);
    EXPECT_EQ(look[i].geometry.layer_count, kLayers);
    EXPECT_FALSE(look[i].has_resume);
    auto got = pages_->Read(As("acme"), keys[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, chain[i].bytes);
  }
  // A read without a lease leaves no pin behind. Pages are write-once.
  EXPECT_EQ(store_->Stats().active_leases, 0u);
  EXPECT_EQ(Admit(As("acme"), {chain[0]}), std::vector{AdmitOutcome::kAlreadyPresent});
  // The tier filter ends the prefix at the first block in another tier.
  EXPECT_TRUE(pages_->Lookup(As("acme"), keys, {.tiers = {TierKind::kNvme}}).empty());
  EXPECT_EQ(pages_->Lookup(As("acme"), keys, {.tiers = {TierKind::kHost}}).size(), 3u);
}

// An engine block hash up to kMaxEngineBlockHashBytes is admitted with its page (KV events
// report it: kv_events_test, py_kv_events); a longer one is refused by name.
TEST_F(PageStoreTest, EngineBlockHashIsBounded) {
  std::vector<TestPage> chain = Chain(7, Tenant("acme"), 1);
  AdmitOptions o = Mla();
  o.engine_block_hash = std::string(kMaxEngineBlockHashBytes + 1, 'h');
  AdmitResult r = pages_->Admit(As("acme"), chain[0].meta.key, chain[0].bytes, o);
  EXPECT_EQ(r.outcome, AdmitOutcome::kRejected);
  EXPECT_NE(r.error.message().find("engine block hash"), std::string_view::npos) << r.error;
  o.engine_block_hash = std::string(kMaxEngineBlockHashBytes, 'e');
  EXPECT_EQ(Admit(As("acme"), chain, o), Stored(1));
}

TEST_F(PageStoreTest, TenantsAreIsolatedAndSharedPagesVisibleToAll) {
  auto a_chain = Chain(8, Tenant("acme"), 2);
  auto shared = Chain(9, KeyNamespace::Shared(), 2);
  ASSERT_EQ(Admit(As("acme"), a_chain), Stored(2));
  ASSERT_EQ(Admit(As("acme"), shared, Mla(/*shared=*/true)), Stored(2));
  // acme continues the shared prefix with its own page.
  auto a_tail = Chain(10, Tenant("acme"), 1, shared.back().meta.key);
  ASSERT_EQ(Admit(As("acme"), a_tail), Stored(1));

  const PageStoreCaller b = As("globex");
  // globex sees nothing of acme's, exactly like a miss.
  EXPECT_EQ(Visible(b, Keys(a_chain)), 0u);
  auto pin = pages_->Pin(b, Keys(a_chain), std::nullopt);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_TRUE(pin->tiers.empty());
  EXPECT_TRUE(pin->lease_id.empty());
  const BlockKey absent = Chain(11, Tenant("globex"), 1)[0].meta.key;
  auto foreign = pages_->Read(b, a_chain[0].meta.key);
  auto missing = pages_->Read(b, absent);
  ASSERT_TRUE(absl::IsNotFound(foreign.status())) << foreign.status();
  ASSERT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_EQ(ReasonOf(foreign.status()), PageStoreReason::kNotCached);
  EXPECT_EQ(ReasonOf(missing.status()), PageStoreReason::kNotCached);
  // Same message shape for a foreign page and an absent one ("block <64 hex> is not ...").
  EXPECT_EQ(foreign.status().message().substr(70), missing.status().message().substr(70));
  // Shared pages are visible to both; acme's tail after the shared prefix only to acme; a
  // trusted caller sees what the tenant it acts for sees (the shared namespace for none).
  std::vector<BlockKey> conv = Keys(shared);
  conv.push_back(a_tail[0].meta.key);
  EXPECT_EQ(Visible(b, conv), 2u);
  EXPECT_EQ(Visible(As("acme"), conv), 3u);
  EXPECT_EQ(Visible(*PageStoreCaller::TrustedFor("acme"), conv), 3u);
  EXPECT_EQ(Visible(*PageStoreCaller::TrustedFor("acme"), Keys(a_chain)), 2u);
  EXPECT_EQ(Visible(*PageStoreCaller::TrustedFor("globex"), conv), 2u);
  EXPECT_EQ(Visible(PageStoreCaller::Trusted(), conv), 2u);
  EXPECT_EQ(Visible(PageStoreCaller::Trusted(), Keys(a_chain)), 0u);
  auto got = pages_->Read(b, shared[1].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, shared[1].bytes);

  // globex cannot write into acme's namespace: its copy of acme's exact page is its own (a
  // write of a key another tenant holds is stored for the writer, like any new key) ...
  EXPECT_EQ(Admit(b, {a_chain[0]}), Stored(1));
  EXPECT_EQ(Visible(b, Keys(a_chain)), 1u);
  // ... nor a page continuing acme's chain, in its own or the shared namespace.
  auto b_after_a = Chain(12, Tenant("globex"), 1, a_chain.back().meta.key);
  EXPECT_EQ(Refusal(b, b_after_a[0].meta.key, b_after_a[0].bytes), PageStoreReason::kParentMissing);
  auto s_after_a = Chain(13, KeyNamespace::Shared(), 1, a_chain.back().meta.key);
  EXPECT_EQ(Refusal(As("acme"), s_after_a[0].meta.key, s_after_a[0].bytes, Mla(true)),
            PageStoreReason::kParentMissing);
  // A key written into acme's namespace is acme's own copy even when the shared namespace
  // holds it (acme then sees its own first); as a shared write it is already present.
  EXPECT_EQ(Admit(As("acme"), {shared[0]}), Stored(1));
  EXPECT_EQ(Admit(As("acme"), {shared[0]}, Mla(true)), std::vector{AdmitOutcome::kAlreadyPresent});
  // acme's page is untouched.
  got = pages_->Read(As("acme"), a_chain[0].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, a_chain[0].bytes);
}

// Another tenant's page under the very key `key` (its header names `key` and `parent`), with
// valid checksums and KV bytes of its own (from `seed`).
std::vector<uint8_t> ForeignPage(const BlockKey& key, const BlockKey& parent, uint64_t seed) {
  PageSpec spec{.key = key, .parent = parent, .token_count = kTokens, .layer_count = kLayers};
  std::vector<uint8_t> kv(*KvSectionBytes(spec));
  std::mt19937_64 rng(seed);
  for (uint8_t& b : kv) b = static_cast<uint8_t>(rng());
  return *EncodePage(spec, kv);
}

// A status with every hex key in its message replaced by "<key>": two answers that differ only
// in the key they name compare equal.
std::string Shape(const absl::Status& s, std::span<const BlockKey> keys) {
  std::string msg(s.message());
  for (const BlockKey& k : keys) {
    for (size_t at = msg.find(k.Hex()); at != std::string::npos; at = msg.find(k.Hex())) {
      msg.replace(at, 64, "<key>");
    }
  }
  return StrCat(static_cast<int>(s.code()), "|", msg, "|", ReasonName(ReasonOf(s)));
}

// Issue #18 item 3: a key another tenant holds is exactly a miss for every call, a write of
// it is stored in the writer's own namespace, and each tenant then reads its own bytes.
TEST_F(PageStoreTest, AKeyAnotherTenantHoldsBehavesExactlyLikeAMiss) {
  const std::vector<TestPage> a = Chain(30, Tenant("acme"), 2);
  ASSERT_EQ(Admit(As("acme"), a), Stored(2));
  const PageStoreCaller b = As("globex");
  // The same situation for a key nobody holds: globex's answers must not differ.
  const std::vector<TestPage> n = Chain(31, Tenant("acme"), 2);
  const std::vector<BlockKey> held = Keys(a), never = Keys(n);
  const std::vector<BlockKey> all = {held[0], held[1], never[0], never[1]};

  EXPECT_TRUE(pages_->Lookup(b, held).empty());
  EXPECT_TRUE(pages_->Lookup(b, never).empty());
  auto pin_held = pages_->Pin(b, held, std::nullopt);
  auto pin_never = pages_->Pin(b, never, std::nullopt);
  ASSERT_EQ(Shape(pin_held.status(), all), Shape(pin_never.status(), all));
  ASSERT_TRUE(pin_held.ok());
  EXPECT_EQ(pin_held->lease_id, pin_never->lease_id);
  EXPECT_EQ(pin_held->tiers, pin_never->tiers);
  auto read_held = pages_->Read(b, held[0]);
  auto read_never = pages_->Read(b, never[0]);
  EXPECT_FALSE(read_held.ok());
  EXPECT_EQ(Shape(read_held.status(), all), Shape(read_never.status(), all));

  // globex writes under acme's keys, with KV bytes of its own: stored, for globex only.
  const std::vector<uint8_t> b0 = ForeignPage(held[0], BlockKey::Zero(), 32);
  const std::vector<uint8_t> b1 = ForeignPage(held[1], held[0], 33);
  const std::vector<uint8_t> n0 = ForeignPage(never[0], BlockKey::Zero(), 34);
  for (const auto& [key, page] : {std::pair{held[0], b0}, {never[0], n0}, {held[1], b1}}) {
    AdmitResult r = pages_->Admit(b, key, page, Mla());
    EXPECT_EQ(r.outcome, AdmitOutcome::kStored) << key.Hex() << " " << r.error;
    EXPECT_TRUE(r.error.ok()) << r.error;
  }
  EXPECT_EQ(Visible(b, held), 2u);
  auto got = pages_->Read(b, held[0]);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, b0);
  got = pages_->Read(b, held[1]);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, b1);
  // acme's pages are untouched and still acme's.
  EXPECT_EQ(Visible(As("acme"), held), 2u);
  for (size_t i = 0; i < 2; ++i) {
    got = pages_->Read(As("acme"), held[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, a[i].bytes);
  }
  // A third tenant still sees a miss; acme writing again finds its own copy.
  EXPECT_EQ(Visible(As("initech"), held), 0u);
  EXPECT_EQ(Admit(As("acme"), a), std::vector(2, AdmitOutcome::kAlreadyPresent));
  // Leases are per copy: globex's pin reads globex's bytes, acme's acme's.
  auto bp = pages_->Pin(b, held, std::nullopt);
  auto ap = pages_->Pin(As("acme"), held, std::nullopt);
  ASSERT_TRUE(bp.ok() && ap.ok());
  EXPECT_EQ(*pages_->Read(b, held[1], bp->lease_id), b1);
  EXPECT_EQ(*pages_->Read(As("acme"), held[1], ap->lease_id), a[1].bytes);
  EXPECT_EQ(pages_->Unpin(b, bp->lease_id, {&held[1], 1}), 1u);
  EXPECT_EQ(*pages_->Read(As("acme"), held[1], ap->lease_id), a[1].bytes);
  EXPECT_TRUE(store_->CheckInvariants().ok());
}

// Cache denial: a tenant that writes first under another tenant's root key (computable from
// the prompt and the tenant's name) does not keep that tenant's prompt out of the cache.
TEST_F(PageStoreTest, WritingFirstUnderAnotherTenantsKeyDeniesNothing) {
  const std::vector<TestPage> a = Chain(40, Tenant("acme"), 3);
  const std::vector<BlockKey> keys = Keys(a);
  const std::vector<uint8_t> squat = ForeignPage(keys[0], BlockKey::Zero(), 41);
  ASSERT_EQ(pages_->Admit(As("globex"), keys[0], squat, Mla()).outcome, AdmitOutcome::kStored);
  EXPECT_EQ(Admit(As("acme"), a), Stored(3));
  EXPECT_EQ(Visible(As("acme"), keys), 3u);
  auto pin = pages_->Pin(As("acme"), keys, std::nullopt);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->tiers.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    auto got = pages_->Read(As("acme"), keys[i], pin->lease_id);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, a[i].bytes);
  }
  EXPECT_EQ(*pages_->Read(As("globex"), keys[0]), squat);
  EXPECT_EQ(Visible(As("globex"), keys), 1u);
  // The same through a shared write of the key: acme's own chain still wins for acme.
  const std::vector<TestPage> c = Chain(42, Tenant("acme"), 1);
  const BlockKey c0 = c[0].meta.key;
  ASSERT_EQ(
      pages_->Admit(As("globex"), c0, ForeignPage(c0, BlockKey::Zero(), 43), Mla(true)).outcome,
      AdmitOutcome::kStored);
  EXPECT_EQ(Admit(As("acme"), c), Stored(1));
  EXPECT_EQ(*pages_->Read(As("acme"), c0), c[0].bytes);
}

TEST_F(PageStoreTest, LeasesAreTheirTenants) {
  auto chain = Chain(14, Tenant("acme"), 2);
  auto shared = Chain(15, KeyNamespace::Shared(), 1);
  ASSERT_EQ(Admit(As("acme"), chain), Stored(2));
  ASSERT_EQ(Admit(As("acme"), shared, Mla(true)), Stored(1));
  auto a_pin = pages_->Pin(As("acme"), Keys(chain), std::nullopt);
  ASSERT_TRUE(a_pin.ok()) << a_pin.status();
  EXPECT_EQ(a_pin->lease_id.size(), 32u);
  // globex cannot use, extend or release acme's lease; neither can a trusted caller.
  for (const PageStoreCaller& other : {As("globex"), PageStoreCaller::Trusted()}) {
    EXPECT_EQ(pages_->Unpin(other, a_pin->lease_id), 0u);
    EXPECT_EQ(ReasonOf(pages_->CheckLease(other, a_pin->lease_id)),
              PageStoreReason::kLeaseNotFound);
    auto stolen = pages_->Read(other, shared[0].meta.key, a_pin->lease_id);
    EXPECT_TRUE(absl::IsNotFound(stolen.status())) << stolen.status();
    EXPECT_EQ(ReasonOf(stolen.status()), PageStoreReason::kLeaseNotFound);
    auto ext = pages_->Pin(other, Keys(shared), std::nullopt, a_pin->lease_id);
    EXPECT_EQ(ReasonOf(ext.status()), PageStoreReason::kLeaseNotFound);
  }
  EXPECT_EQ(pages_->live_leases(), 1u);
  EXPECT_TRUE(pages_->CheckLease(As("acme"), a_pin->lease_id).ok());
  EXPECT_EQ(pages_->Unpin(As("acme"), a_pin->lease_id), 2u);
}

TEST_F(PageStoreTest, LeasesExtendExpireAndRelease) {
  auto chain = Chain(15, Tenant("acme"), 2);
  ASSERT_EQ(Admit(As("acme"), chain), Stored(2));
  const PageStoreCaller a = As("acme");
  auto pin = pages_->Pin(a, Keys(chain), absl::Seconds(5));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->deadline, clock_.Now() + absl::Seconds(5));
  EXPECT_EQ(pin->tiers.size(), 2u);
  EXPECT_EQ(store_->Stats().active_leases, 1u);
  // Extending works while the lease is live.
  clock_.Advance(absl::Seconds(4));
  auto ext = pages_->Pin(a, {}, absl::Seconds(5), pin->lease_id);
  ASSERT_TRUE(ext.ok()) << ext.status();
  EXPECT_EQ(ext->lease_id, pin->lease_id);
  EXPECT_EQ(ext->deadline, clock_.Now() + absl::Seconds(5));
  clock_.Advance(absl::Seconds(4));  // past the first deadline, before the extended one
  auto read = pages_->Read(a, chain[1].meta.key, pin->lease_id);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, chain[1].bytes);
  clock_.Advance(absl::Seconds(2));  // expired
  EXPECT_EQ(ReasonOf(pages_->CheckLease(a, pin->lease_id)), PageStoreReason::kLeaseNotFound);
  read = pages_->Read(a, chain[1].meta.key, pin->lease_id);
  EXPECT_TRUE(absl::IsNotFound(read.status())) << read.status();
  EXPECT_EQ(ReasonOf(read.status()), PageStoreReason::kLeaseNotFound);
  EXPECT_TRUE(
      absl::IsNotFound(pages_->Pin(a, Keys(chain), absl::Seconds(5), pin->lease_id).status()));
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id), 0u);
  EXPECT_EQ(pages_->live_leases(), 0u);
  EXPECT_EQ(store_->Stats().active_leases, 0u);
  EXPECT_EQ(metrics_.GetGauge("kvstrata_pagestore_leases", "")->Value(), 0);
  // The pages are still there without a lease.
  auto again = pages_->Read(a, chain[0].meta.key);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, chain[0].bytes);
}

// Issue #15: a lent lease's beacon holds its nonce while the lease lives and reads 0 before
// any of its pins can drop: at a partial unpin, a release, expiry and destruction.
TEST_F(PageStoreTest, LeaseBeaconsAreLoweredBeforePinsDrop) {
  beacons_ = *LeaseBeacons::Create(2);
  LeaseBeacons* beacons = beacons_.get();
  Open(64, {.beacons = beacons});
  const PageStoreCaller a = As("acme");
  auto chain = Chain(16, Tenant("acme"), 3);
  ASSERT_EQ(Admit(a, chain), Stored(3));
  auto pin = pages_->Pin(a, Keys(chain), absl::Seconds(5));
  ASSERT_TRUE(pin.ok()) << pin.status();
  auto b = pages_->LeaseBeacon(a, pin->lease_id);
  ASSERT_TRUE(b.ok() && b->has_value()) << b.status();
  EXPECT_EQ(beacons->Read((*b)->slot), (*b)->nonce);
  EXPECT_EQ(**pages_->LeaseBeacon(a, pin->lease_id), **b) << "one beacon per lease";
  EXPECT_EQ(ReasonOf(pages_->LeaseBeacon(As("evil"), pin->lease_id).status()),
            PageStoreReason::kLeaseNotFound);
  // Unpinning one page lowers it: the lease no longer vouches for every page it lent.
  const std::vector<BlockKey> first = {chain[0].meta.key};
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id, first), 1u);
  EXPECT_EQ(beacons->Read((*b)->slot), 0u);
  auto b2 = pages_->LeaseBeacon(a, pin->lease_id);  // a fresh one for what is still pinned
  ASSERT_TRUE(b2.ok() && b2->has_value());
  EXPECT_NE((*b2)->nonce, (*b)->nonce);
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id), 2u);
  EXPECT_EQ(beacons->Read((*b2)->slot), 0u);
  EXPECT_EQ(beacons->raised(), 0u);
  // Expiry lowers it (reaped at the next call), and so does the store's destruction.
  auto p2 = pages_->Pin(a, Keys(chain), absl::Seconds(5));
  auto b3 = pages_->LeaseBeacon(a, p2->lease_id);
  ASSERT_TRUE(b3.ok() && b3->has_value());
  clock_.Advance(absl::Seconds(6));
  EXPECT_EQ(pages_->live_leases(), 0u);
  EXPECT_EQ(beacons->Read((*b3)->slot), 0u);
  auto p3 = pages_->Pin(a, Keys(chain), absl::Seconds(5));
  auto p4 = pages_->Pin(a, Keys(chain), absl::Seconds(5));
  auto p5 = pages_->Pin(a, Keys(chain), absl::Seconds(5));
  ASSERT_TRUE(p3.ok() && p4.ok() && p5.ok());
  EXPECT_TRUE(pages_->LeaseBeacon(a, p3->lease_id)->has_value());
  EXPECT_TRUE(pages_->LeaseBeacon(a, p4->lease_id)->has_value());
  EXPECT_FALSE(pages_->LeaseBeacon(a, p5->lease_id)->has_value()) << "2 slots, both taken";
  EXPECT_EQ(beacons->raised(), 2u);
  pages_.reset();
  EXPECT_EQ(beacons->raised(), 0u);
}

// Issue #18 item 7: the live-lease gauge drops when leases expire, at the next scrape, with
// no PageStore call in between (it stayed at 1024 until the next PinBlocks).
TEST_F(PageStoreTest, ExpiredLeasesLeaveTheGaugeAtTheNextScrape) {
  auto chain = Chain(16, Tenant("acme"), 1);
  ASSERT_EQ(Admit(As("acme"), chain), Stored(1));
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(pages_->Pin(As("acme"), Keys(chain), absl::Seconds(5)).ok());
  Gauge* g = metrics_.GetGauge("kvstrata_pagestore_leases", "");
  EXPECT_EQ(g->Value(), 3);
  clock_.Advance(absl::Seconds(6));
  const std::string text = metrics_.RenderPrometheus();
  EXPECT_NE(text.find("kvstrata_pagestore_leases 0\n"), std::string::npos) << text;
  EXPECT_EQ(g->Value(), 0);
  EXPECT_EQ(store_->Stats().active_leases, 0u);
}

TEST_F(PageStoreTest, LeaseLengthIsCheckedAndClamped) {
  auto chain = Chain(16, Tenant("acme"), 1);
  ASSERT_EQ(Admit(As("acme"), chain), Stored(1));
  const PageStoreCaller a = As("acme");
  auto pin = pages_->Pin(a, Keys(chain), absl::Hours(1));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->deadline, clock_.Now() + absl::Minutes(5));  // options.max_lease
  pin = pages_->Pin(a, Keys(chain), std::nullopt);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->deadline, clock_.Now() + absl::Seconds(30));  // options.default_lease
  EXPECT_TRUE(absl::IsInvalidArgument(pages_->Pin(a, Keys(chain), absl::ZeroDuration()).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(pages_->Pin(a, {}, std::nullopt).status()));
}

TEST_F(PageStoreTest, PinnedPagesAreNotEvictedUntilTheLeaseEnds) {
  auto chain = Chain(17, Tenant("acme"), 3);
  ASSERT_EQ(Admit(As("acme"), chain), Stored(3));
  const PageStoreCaller a = As("acme");
  auto pin = pages_->Pin(a, Keys(chain), absl::Seconds(10));
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_TRUE(store_->Evict(TierKind::kHost, 1ull << 30).ok());
  EXPECT_EQ(Visible(a, Keys(chain)), 3u);
  // Releasing part of the lease keeps the rest pinned: only the released leaf can go.
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id, {&chain[2].meta.key, 1}), 1u);
  ASSERT_TRUE(store_->Evict(TierKind::kHost, 1ull << 30).ok());
  EXPECT_EQ(Visible(a, Keys(chain)), 2u);
  // An expired lease protects nothing.
  clock_.Advance(absl::Seconds(11));
  ASSERT_TRUE(store_->Evict(TierKind::kHost, 1ull << 30).ok());
  EXPECT_EQ(Visible(a, Keys(chain)), 0u);
  EXPECT_EQ(pages_->live_leases(), 0u);
}

TEST_F(PageStoreTest, LeasesUnpinPartlyAndAreBoundedPerTenant) {
  Open(64, {.max_leases_per_tenant = 4});
  auto chain = Chain(18, Tenant("acme"), 3);
  ASSERT_EQ(Admit(As("acme"), chain), Stored(3));
  const PageStoreCaller a = As("acme");
  EXPECT_EQ(pages_->Unpin(a, "0123456789abcdef0123456789abcdef"), 0u);
  auto pin = pages_->Pin(a, Keys(chain), std::nullopt);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id, {&chain[2].meta.key, 1}), 1u);
  EXPECT_EQ(store_->Stats().active_leases, 1u);
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id), 2u);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto p = pages_->Pin(a, {&chain[0].meta.key, 1}, std::nullopt);
    ASSERT_TRUE(p.ok()) << p.status();
    ids.push_back(p->lease_id);
  }
  auto fifth = pages_->Pin(a, {&chain[0].meta.key, 1}, std::nullopt);
  EXPECT_TRUE(absl::IsResourceExhausted(fifth.status())) << fifth.status();
  EXPECT_TRUE(IsRetryable(fifth.status()));
  EXPECT_EQ(ReasonOf(fifth.status()), PageStoreReason::kTooManyLeases);
  // Another tenant and trusted callers have their own (or no) bound.
  EXPECT_TRUE(pages_->Pin(As("globex"), {}, std::nullopt, ids[0]).status().code() ==
              absl::StatusCode::kNotFound);
  for (int i = 0; i < 6; ++i) {
    auto t = pages_->Pin(*PageStoreCaller::TrustedFor("acme"), Keys(chain), std::nullopt);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_FALSE(t->lease_id.empty());
  }
  EXPECT_EQ(pages_->Unpin(a, ids[0]), 1u);
  EXPECT_TRUE(pages_->Pin(a, {&chain[0].meta.key, 1}, std::nullopt).ok());
}

TEST_F(PageStoreTest, AdmissionVerifiesThePage) {
  Open(64, {.max_page_bytes = 200000});
  const PageStoreCaller a = As("acme");
  auto chain = Chain(19, Tenant("acme"), 2);
  const BlockKey k0 = chain[0].meta.key;
  std::vector<uint8_t> flipped = chain[0].bytes;
  flipped[flipped.size() - 100] ^= 0x10;
  EXPECT_EQ(Refusal(a, k0, flipped), PageStoreReason::kPageChecksumMismatch);
  for (uint8_t code : {uint8_t{99}, uint8_t{0}}) {  // unknown; no layout has code 0
    std::vector<uint8_t> p = chain[0].bytes;
    p[10] = code;
    ASSERT_TRUE(ResealPage(p).ok());
    EXPECT_EQ(Refusal(a, k0, p), PageStoreReason::kUnknownLayout) << int{code};
  }
  EXPECT_EQ(
      Refusal(a, k0, std::vector<uint8_t>(chain[0].bytes.begin(), chain[0].bytes.begin() + 40)),
      PageStoreReason::kMalformedPage);
  EXPECT_EQ(Refusal(a, chain[1].meta.key, chain[0].bytes), PageStoreReason::kKeyMismatch);
  AdmitOptions o = Mla();
  o.page_tokens = 32;
  EXPECT_EQ(Refusal(a, k0, chain[0].bytes, o), PageStoreReason::kKeySpaceMismatch);
  o = Mla();
  o.layout = "v4-fp8-584";
  EXPECT_EQ(Refusal(a, k0, chain[0].bytes, o), PageStoreReason::kKeySpaceMismatch);
  std::vector<uint8_t> big(200001, 0);
  EXPECT_EQ(Refusal(a, k0, big), PageStoreReason::kPageTooLarge);
  // A child before its parent.
  EXPECT_EQ(Refusal(a, chain[1].meta.key, chain[1].bytes), PageStoreReason::kParentMissing);
  // A trusted caller admits only shared pages.
  AdmitResult t = pages_->Admit(PageStoreCaller::Trusted(), k0, chain[0].bytes, Mla());
  EXPECT_EQ(t.outcome, AdmitOutcome::kRejected);
  EXPECT_TRUE(absl::IsInvalidArgument(t.error)) << t.error;
  // Nothing of the above is visible; the good pages still go in.
  EXPECT_EQ(Visible(a, Keys(chain)), 0u);
  EXPECT_EQ(Admit(a, chain), Stored(2));
  auto shared = Chain(20, KeyNamespace::Shared(), 1);
  EXPECT_EQ(Admit(PageStoreCaller::Trusted(), shared, Mla(true)), Stored(1));
}

TEST_F(PageStoreTest, AStoreThatCannotMakeRoomRefusesRetryably) {
  Open(/*host_pages=*/2);
  auto chain = Chain(21, Tenant("acme"), 3);
  const PageStoreCaller a = As("acme");
  ASSERT_EQ(Admit(a, {chain[0], chain[1]}), Stored(2));
  auto pin = pages_->Pin(a, Keys(chain), std::nullopt);  // nothing can be evicted
  ASSERT_TRUE(pin.ok());
  AdmitResult r = pages_->Admit(a, chain[2].meta.key, chain[2].bytes, Mla());
  EXPECT_EQ(ReasonOf(r.error), PageStoreReason::kStoreFull);
  EXPECT_TRUE(absl::IsResourceExhausted(r.error)) << r.error;
  EXPECT_TRUE(IsRetryable(r.error)) << r.error;
  // Once the lease ends the store makes room (for a page that does not need the evicted leaf).
  EXPECT_EQ(pages_->Unpin(a, pin->lease_id), 2u);
  EXPECT_EQ(Admit(a, Chain(23, Tenant("acme"), 1)), Stored(1));
}

// Writers of one chain at the same time (two requests of a conversation finishing together):
// each page is stored by one and already present for the others, and no writer's next page
// finds its parent missing because another writer was still admitting it.
TEST_F(PageStoreTest, ConcurrentAdmissionsOfOneChainAllSucceed) {
  for (int round = 0; round < 20; ++round) {
    auto chain = Chain(100 + round, Tenant("acme"), 6);
    std::atomic<int> stored{0}, refused{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < 4; ++t) {
      writers.emplace_back([&] {
        for (AdmitOutcome o : Admit(As("acme"), chain)) {
          if (o == AdmitOutcome::kStored) ++stored;
          if (o == AdmitOutcome::kRejected) ++refused;
        }
      });
    }
    for (auto& w : writers) w.join();
    EXPECT_EQ(refused.load(), 0) << "round " << round;
    EXPECT_EQ(stored.load(), 6) << "round " << round;
    EXPECT_EQ(Visible(As("acme"), Keys(chain)), 6u);
  }
  EXPECT_TRUE(store_->CheckInvariants().ok());
}

// A store reopened over its nvme tier: pages keep their namespace (the index has it from the
// tier's records), and their geometry, which nvme records do not keep, is learned by reading
// each page once.
TEST(PageStoreRecoveryTest, RecoveredPagesKeepTheirNamespaceAndLearnTheirGeometry) {
  const std::string dir = testing::FreshTestDir("pagestore_recovery");
  FakeClock clock;
  auto open = [&]() {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[2] = *NvmeTier::Open({.path = dir + "/nvme", .capacity_bytes = 64 << 20});
    TieredStoreOptions so{.clock = &clock};
    so.background_threads = 0;
    return *TieredStore::Open(so, std::move(tiers));
  };
  auto chain = Chain(22, Tenant("acme"), 2);
  {
    auto store = open();
    PageStore pages(store.get(), {});
    ASSERT_EQ(pages.Admit(As("acme"), chain[0].meta.key, chain[0].bytes, Mla()).outcome,
              AdmitOutcome::kStored);
    ASSERT_EQ(pages.Admit(As("acme"), chain[1].meta.key, chain[1].bytes, Mla()).outcome,
              AdmitOutcome::kStored);
  }
  auto store = open();
  PageStore pages(store.get(), {});
  EXPECT_TRUE(pages.Lookup(As("globex"), Keys(chain)).empty());
  auto quick = pages.Lookup(As("acme"), Keys(chain), {.geometry = false});
  ASSERT_EQ(quick.size(), 2u);
  EXPECT_FALSE(quick[1].geometry.known());
  auto look = pages.Lookup(As("acme"), Keys(chain));
  ASSERT_EQ(look.size(), 2u);
  for (const VisibleBlock& b : look) {
    EXPECT_EQ(b.tier, TierKind::kNvme);
    EXPECT_EQ(b.geometry.token_count, kTokens);
    EXPECT_EQ(b.geometry.layer_count, kLayers);
  }
  // Learned once: the index remembers it.
  EXPECT_TRUE(pages.Lookup(As("acme"), Keys(chain), {.geometry = false})[1].geometry.known());
  auto got = pages.Read(As("acme"), chain[1].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, chain[1].bytes);
  EXPECT_EQ(store->Stats().active_leases, 0u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kv
