// StagingArea (two-phase writes into registered memory) and PageStore::Lend (pinned pages in
// place, nvme hits promoted into host first) over a real TieredStore: a SlabTier host tier and
// an nvme tier, with a FakeClock for the leases.
#include "kvstore/staging_area.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/status_macros.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

using testing::TestPage;

constexpr uint32_t kTokens = 64;
constexpr uint32_t kLayers = 2;

KeyNamespace Tenant(const std::string& t) { return *KeyNamespace::Tenant(t); }
PageStoreCaller As(const std::string& t) { return *PageStoreCaller::Tenant(t); }
AdmitOptions Mla() { return {.layout = "mla-fp8-656", .page_tokens = kTokens}; }

class StagingAreaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[1] = *SlabTier::Create(*AllocateHostRegion(8 << 20),
                                 {.kind = TierKind::kHost, .slab_bytes = 1 << 20});
    NvmeTierOptions n;
    n.path = testing::FreshTestDir("staging_area_test");
    n.capacity_bytes = 64 << 20;
    tiers[2] = *NvmeTier::Open(n);
    TieredStoreOptions so{.clock = &clock_, .metrics = &metrics_};
    so.background_threads = 0;
    store_ = *TieredStore::Open(so, std::move(tiers));
    pages_ = std::make_unique<PageStore>(store_.get(), PageStoreOptions{.metrics = &metrics_});
    area_ = *StagingArea::Create({.bytes = 1 << 20, .clock = &clock_});
  }

  // Reserves slots for `chain` as `c` and copies each page into its slot (what a writer's
  // RMA puts do).
  StagingLease Stage(const PageStoreCaller& c, const std::vector<TestPage>& chain) {
    std::vector<StagedSlot> slots;
    for (const TestPage& p : chain) slots.push_back({p.meta.key, p.bytes.size()});
    absl::StatusOr<StagingLease> l = area_->Reserve(c, slots, absl::Seconds(10));
    EXPECT_TRUE(l.ok()) << l.status();
    for (size_t i = 0; i < chain.size(); ++i) {
      std::memcpy(area_->base() + l->slots[i].offset, chain[i].bytes.data(), chain[i].bytes.size());
    }
    return *l;
  }

  FakeClock clock_;
  MetricsRegistry metrics_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<PageStore> pages_;
  std::unique_ptr<StagingArea> area_;
};

TEST_F(StagingAreaTest, StagedPagesAreInvisibleUntilSealedThenVerified) {
  const auto chain = testing::MakeChain(1, Tenant("acme"), 4, kTokens, kLayers);
  const StagingLease l = Stage(As("acme"), chain);
  EXPECT_TRUE(pages_->Lookup(As("acme"), testing::KeysOf(chain)).empty());
  // Another tenant cannot seal (or see) the lease.
  EXPECT_TRUE(absl::IsNotFound(area_->Seal(*pages_, As("other"), l.lease_id, Mla()).status()));
  // Corrupt the third page's staged bytes: it is rejected, and the fourth (its child) too.
  area_->base()[l.slots[2].offset + chain[2].bytes.size() - 1] ^= 0x5a;
  auto r = area_->Seal(*pages_, As("acme"), l.lease_id, Mla());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[0].result.outcome, AdmitOutcome::kStored);
  EXPECT_EQ((*r)[1].result.outcome, AdmitOutcome::kStored);
  EXPECT_EQ((*r)[2].result.outcome, AdmitOutcome::kRejected);
  EXPECT_EQ(ReasonOf((*r)[2].result.error), PageStoreReason::kPageChecksumMismatch);
  EXPECT_EQ(ReasonOf((*r)[3].result.error), PageStoreReason::kParentMissing);
  EXPECT_EQ(pages_->Lookup(As("acme"), testing::KeysOf(chain)).size(), 2u);
  EXPECT_EQ(area_->used_bytes(), 0u);
  // Sealed once: the lease is gone.
  EXPECT_EQ(ReasonOf(area_->Seal(*pages_, As("acme"), l.lease_id, Mla()).status()),
            PageStoreReason::kLeaseNotFound);
}

TEST_F(StagingAreaTest, AbortAndExpiryLeaveNoPageAndReclaimTheSpace) {
  const auto chain = testing::MakeChain(2, Tenant("acme"), 3, kTokens, kLayers);
  StagingLease a = Stage(As("acme"), chain);
  EXPECT_GT(area_->used_bytes(), 0u);
  EXPECT_EQ(area_->Abort(As("other"), a.lease_id), 0u);
  EXPECT_EQ(area_->Abort(As("acme"), a.lease_id), 3u);
  EXPECT_EQ(area_->used_bytes(), 0u);
  StagingLease b = Stage(As("acme"), chain);
  clock_.Advance(absl::Seconds(11));
  EXPECT_EQ(area_->used_bytes(), 0u);
  EXPECT_EQ(area_->live_leases(), 0u);
  EXPECT_TRUE(absl::IsNotFound(area_->Seal(*pages_, As("acme"), b.lease_id, Mla()).status()));
  EXPECT_TRUE(pages_->Lookup(As("acme"), testing::KeysOf(chain)).empty());
}

TEST_F(StagingAreaTest, ReserveRefusesBadSizesAndAFullArea) {
  const BlockKey k = testing::MakeChain(3, Tenant("acme"), 1, kTokens, kLayers)[0].meta.key;
  EXPECT_TRUE(absl::IsInvalidArgument(area_->Reserve(As("acme"), {{k, 0}}, {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(area_->Reserve(As("acme"), {}, {}).status()));
  auto full = area_->Reserve(As("acme"), {{k, 900 << 10}, {k, 200 << 10}}, {});
  EXPECT_TRUE(absl::IsResourceExhausted(full.status())) << full.status();
  EXPECT_EQ(area_->used_bytes(), 0u);  // all or nothing
}

TEST_F(StagingAreaTest, LendPromotesAnNvmeHitIntoHostUnderThePin) {
  const auto chain = testing::MakeChain(4, Tenant("acme"), 3, kTokens, kLayers);
  for (const TestPage& p : chain) {
    ASSERT_EQ(pages_->Admit(As("acme"), p.meta.key, p.bytes, Mla()).outcome, AdmitOutcome::kStored);
  }
  ASSERT_TRUE(store_->Evict(TierKind::kHost, 64 << 20).ok());  // all demoted to nvme
  const std::vector<BlockKey> keys = testing::KeysOf(chain);
  auto pin = pages_->Pin(As("acme"), keys, absl::Seconds(5));
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_EQ(pin->tiers.size(), 3u);
  EXPECT_EQ(pin->tiers[0], TierKind::kNvme);
  auto lent = pages_->Lend(As("acme"), pin->lease_id, keys);
  ASSERT_TRUE(lent.ok()) << lent.status();
  ASSERT_EQ(lent->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*lent)[i].tier, TierKind::kHost);
    ASSERT_EQ((*lent)[i].bytes.size(), chain[i].bytes.size());
    EXPECT_EQ(std::memcmp((*lent)[i].bytes.data(), chain[i].bytes.data(), chain[i].bytes.size()),
              0);
  }
  // Another tenant's view of the lease: unknown.
  EXPECT_EQ(ReasonOf(pages_->Lend(As("other"), pin->lease_id, keys).status()),
            PageStoreReason::kLeaseNotFound);
  EXPECT_EQ(pages_->Unpin(As("acme"), pin->lease_id), 3u);
  EXPECT_EQ(ReasonOf(pages_->Lend(As("acme"), pin->lease_id, keys).status()),
            PageStoreReason::kLeaseNotFound);
}

}  // namespace
}  // namespace kv
