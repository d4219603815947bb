// TieredStore and v4 resume sections (issue #7): DropResume, pressure stripping in policy
// order before any eviction, nvme persistence of the resume role, quarantine while
// stripping. Real v4-fp8-584 pages from page_format's encoder (test_pages.h).
#include <algorithm>

#include "gtest/gtest.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/page_format.h"
#include "kvstore/resume_policy.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

using testing::KeysOf;
using testing::MakeChain;
using testing::MakeV4Chain;
using testing::TestPage;

struct Fixture {
  FakeClock clock;
  MetricsRegistry metrics;
  std::array<MemTier*, kNumTiers> mem{};
  std::unique_ptr<TieredStore> store;
};

// A store over MemTiers of `bytes[t]` bytes (0: tier absent).
std::unique_ptr<Fixture> MakeStore(std::array<uint64_t, kNumTiers> bytes,
                                   TieredStoreOptions opts = {}) {
  auto f = std::make_unique<Fixture>();
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  for (int t = 0; t < kNumTiers; ++t) {
    if (bytes[t] == 0) continue;
    auto m = std::make_unique<MemTier>(static_cast<TierKind>(t), bytes[t]);
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

std::vector<uint8_t> Stripped(const TestPage& p) {
  auto s = StripResumeSection(p.bytes);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::vector<uint8_t>{};
}

uint64_t ResumeBytes(const TestPage& p) { return p.bytes.size() - Stripped(p).size(); }

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

// The copy a tier holds, read straight from the tier (no index access, no LRU touch).
std::vector<uint8_t> TierCopy(Tier* t, const BlockKey& key) {
  std::vector<uint8_t> buf(1 << 20);
  auto n = t->Read(key, buf);
  if (!n.ok()) return {};
  buf.resize(*n);
  return buf;
}

TEST(TieredStoreResumeTest, DropResumeFreesExactlyTheResumeBytes) {
  auto chain = MakeV4Chain(1, "a", {0, 5000, 0, 7001});
  auto mla = MakeChain(2, "a", 2);
  auto f = MakeStore({0, 1 << 20, 0});
  for (const auto* c : {&chain, &mla}) {
    for (const auto& p : *c) ASSERT_TRUE(f->store->Publish(p.meta, p.bytes).ok());
  }
  const uint64_t used = f->mem[1]->used_bytes();
  const uint64_t want = ResumeBytes(chain[1]) + ResumeBytes(chain[3]);
  ASSERT_GE(ResumeBytes(chain[1]), 5000u);
  EXPECT_EQ(ResumeBytes(chain[0]), 0u);
  std::vector<BlockKey> keys = KeysOf(chain);
  for (const auto& k : KeysOf(mla)) keys.push_back(k);
  auto freed = f->store->DropResume(keys);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, want);
  EXPECT_EQ(f->mem[1]->used_bytes(), used - want);
  ASSERT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
  for (size_t i = 0; i < chain.size(); ++i) {
    auto got = ReadOne(*f, chain[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, Stripped(chain[i])) << "page " << i;
    auto v = DecodePage(*got);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_FALSE(v->has_resume());
    EXPECT_TRUE(VerifyPage(*got, {.key = chain[i].meta.key,
                                  .parent = chain[i].meta.parent,
                                  .ns = chain[i].meta.ns,
                                  .layout = chain[i].meta.layout,
                                  .size = got->size()})
                    .ok());
  }
  for (const auto& p : mla) {  // MLA pages are untouched
    auto got = ReadOne(*f, p);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, p.bytes);
  }
  StoreStats st = f->store->Stats();
  EXPECT_EQ(st.resume_strips, 2u);
  EXPECT_EQ(st.resume_bytes_freed, want);
  EXPECT_EQ(st.tiers[1].evictions, 0u);
  EXPECT_EQ(f->metrics.GetCounter("kvstrata_store_resume_strips_total", "")->Value(), 2.0);
  auto again = f->store->DropResume(keys);  // nothing left to strip
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u);
  EXPECT_TRUE(f->store->CheckInvariants().ok());
}

// Every resident copy (device and host) is rewritten; the entry keeps one size.
TEST(TieredStoreResumeTest, LookupReportsWhichPagesCarryAResumeSection) {
  auto chain = MakeV4Chain(3, "a", {0, 4000, 0, 4000});
  auto f = MakeStore({0, 1 << 20, 0});
  for (const auto& p : chain) ASSERT_TRUE(f->store->Publish(p.meta, p.bytes).ok());
  const std::vector<BlockKey> keys = KeysOf(chain);
  TieredStore::LookupResult r = f->store->Lookup(keys);
  ASSERT_EQ(r.matched, 4u);
  EXPECT_EQ(r.has_resume, (std::vector<bool>{false, true, false, true}));
  ASSERT_TRUE(f->store->DropResume({&keys[3], 1}).ok());
  r = f->store->Lookup(keys);
  EXPECT_EQ(r.has_resume, (std::vector<bool>{false, true, false, false}));
}

TEST(TieredStoreResumeTest, DropResumeRewritesEveryTier) {
  auto chain = MakeV4Chain(3, "a", {3000, 9000});
  auto f = MakeStore({1 << 20, 1 << 20, 0});
  for (const auto& p : chain) ASSERT_TRUE(f->store->Publish(p.meta, p.bytes).ok());
  f->store->WaitIdle();
  ASSERT_EQ(f->store->Stats().tiers[1].pages, 2u);  // written back to host
  auto freed = f->store->DropResume(std::vector<BlockKey>{chain[1].meta.key});
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 2 * ResumeBytes(chain[1]));
  EXPECT_EQ(TierCopy(f->mem[0], chain[1].meta.key), Stripped(chain[1]));
  EXPECT_EQ(TierCopy(f->mem[1], chain[1].meta.key), Stripped(chain[1]));
  EXPECT_EQ(TierCopy(f->mem[0], chain[0].meta.key), chain[0].bytes);
  EXPECT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
  // Demotion after the strip carries the stripped page at its new size.
  auto ev = f->store->Evict(TierKind::kDevice, 1 << 20);
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
  auto got = ReadOne(*f, chain[1]);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Stripped(chain[1]));
}

TEST(TieredStoreResumeTest, PinnedPagesAreSkipped) {
  auto chain = MakeV4Chain(4, "a", {4000});
  auto f = MakeStore({0, 1 << 20, 0});
  ASSERT_TRUE(f->store->Publish(chain[0].meta, chain[0].bytes).ok());
  auto h = f->store->Pin({&chain[0].meta.key, 1}, f->clock.Now() + absl::Seconds(10));
  ASSERT_TRUE(h.ok());
  auto freed = f->store->DropResume(std::vector<BlockKey>{chain[0].meta.key});
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, 0u);
  std::vector<uint8_t> dst(chain[0].bytes.size());
  auto n = f->store->Read(*h, chain[0].meta.key, dst);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(dst, chain[0].bytes);
  ASSERT_TRUE(f->store->Unpin(*h).ok());
  freed = f->store->DropResume(std::vector<BlockKey>{chain[0].meta.key});
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, ResumeBytes(chain[0]));
  EXPECT_TRUE(f->store->CheckInvariants().ok());
}

// A host tier too small for every page with a resume section: publishing more pages strips
// checkpoint / turn-end resume sections in ResumeStripPriority order (then oldest first)
// before it evicts anything, and never strips the shared-prefix end's.
TEST(TieredStoreResumeTest, PressureStripsInPolicyOrderBeforeEvicting) {
  constexpr size_t kR = 20000;
  auto ended = MakeV4Chain(10, "a", {0, kR});    // [1]: turn end of an ended session
  auto shared = MakeV4Chain(11, "a", {kR});      // shared-prefix end
  auto branch = MakeV4Chain(12, "a", {kR, kR});  // [0] checkpoint, [1] live turn end
  auto mla = MakeChain(13, "a", 2);
  shared[0].meta.resume_role = PageRole::kSharedPrefixEnd;
  branch[0].meta.resume_role = PageRole::kCheckpoint;
  uint64_t total = 0;
  for (const auto* c : {&ended, &shared, &branch, &mla}) {
    for (const auto& p : *c) total += p.bytes.size();
  }
  auto f = MakeStore({0, total, 0});
  auto publish = [&](const TestPage& p, absl::Duration retention) {
    absl::Status st = f->store->Publish(p.meta, p.bytes, retention);
    ASSERT_TRUE(st.ok()) << st;
    f->clock.Advance(absl::Seconds(1));
  };
  publish(ended[0], absl::ZeroDuration());
  publish(ended[1], absl::Seconds(5));  // expires long before the pressure starts
  publish(shared[0], absl::Hours(10));
  publish(branch[0], absl::Hours(2));  // score newer than the live turn end's, priority 0
  publish(branch[1], absl::Hours(1));  // live session: priority 1
  for (const auto& p : mla) publish(p, absl::Hours(10));
  f->clock.Advance(absl::Minutes(1));
  ASSERT_FALSE(f->mem[1]->HasRoom(1));

  const std::vector<const TestPage*> order = {&ended[1], &branch[0], &branch[1]};
  auto stripped_count = [&] {
    size_t n = 0;
    for (const TestPage* p : order) n += TierCopy(f->mem[1], p->meta.key) == Stripped(*p);
    return n;
  };
  std::vector<TestPage> more;  // one-page chains: no new page depends on an evictable parent
  for (int i = 0; i < 12; ++i) more.push_back(MakeV4Chain(100 + i, "b", {0}, 14)[0]);
  size_t published = 0;
  for (; published < more.size() && stripped_count() < order.size(); ++published) {
    publish(more[published], absl::ZeroDuration());
    ASSERT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
    const size_t n = stripped_count();
    for (size_t i = 0; i < order.size(); ++i) {  // a prefix of the policy order
      EXPECT_EQ(TierCopy(f->mem[1], order[i]->meta.key),
                i < n ? Stripped(*order[i]) : order[i]->bytes)
          << "after " << published + 1 << " pages, candidate " << i;
    }
    EXPECT_EQ(f->store->Stats().tiers[1].evictions, 0u) << "evicted before stripping";
  }
  ASSERT_EQ(stripped_count(), order.size()) << "pressure never stripped all candidates";
  EXPECT_EQ(f->store->Stats().resume_strips, order.size());
  // Nothing left to strip but the shared-prefix end: now pages are evicted, and the shared
  // prefix end keeps its resume section.
  for (; published < more.size(); ++published) publish(more[published], absl::ZeroDuration());
  EXPECT_GT(f->store->Stats().tiers[1].evictions, 0u);
  EXPECT_EQ(f->store->Stats().resume_strips, order.size());
  EXPECT_EQ(TierCopy(f->mem[1], shared[0].meta.key), shared[0].bytes);
  for (const auto& p : mla) {
    auto copy = TierCopy(f->mem[1], p.meta.key);
    if (!copy.empty()) {
      EXPECT_EQ(copy, p.bytes);
    }
  }
  EXPECT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
}

TEST(TieredStoreResumeTest, PressureStrippingCanBeTurnedOff) {
  auto chain = MakeV4Chain(20, "a", {20000});
  auto f = MakeStore({0, chain[0].bytes.size(), 0}, {.strip_resume_on_pressure = false});
  ASSERT_TRUE(f->store->Publish(chain[0].meta, chain[0].bytes).ok());
  auto other = MakeV4Chain(21, "a", {0});
  ASSERT_TRUE(f->store->Publish(other[0].meta, other[0].bytes).ok());
  EXPECT_EQ(f->store->Stats().resume_strips, 0u);
  EXPECT_EQ(f->store->Stats().tiers[1].evictions, 1u);
  EXPECT_TRUE(f->store->CheckInvariants().ok());
}

// A copy that fails verification while being stripped is quarantined, never served; the
// good copy in the other tier is then stripped on the next call.
TEST(TieredStoreResumeTest, CorruptCopyMetWhileStrippingIsQuarantined) {
  auto chain = MakeV4Chain(30, "a", {6000});
  const TestPage& p = chain[0];
  auto f = MakeStore({1 << 20, 1 << 20, 0});
  ASSERT_TRUE(f->store->Publish(p.meta, p.bytes).ok());
  f->store->WaitIdle();
  ASSERT_TRUE(f->mem[1]->CorruptForTest(p.meta.key, p.bytes.size() - 10).ok());
  auto freed = f->store->DropResume(std::vector<BlockKey>{p.meta.key});
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 0u);
  StoreStats st = f->store->Stats();
  EXPECT_EQ(st.tiers[1].quarantined, 1u);
  EXPECT_EQ(st.tiers[1].pages, 0u);
  EXPECT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
  auto got = ReadOne(*f, p);  // the device copy, intact
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, p.bytes);
  freed = f->store->DropResume(std::vector<BlockKey>{p.meta.key});
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, ResumeBytes(p));
  // The last copy corrupt: the page (and its child) become a miss, not wrong bytes.
  auto child = MakeV4Chain(31, "a", {6000}, 2, p.meta.key);
  ASSERT_TRUE(f->store->Publish(child[0].meta, child[0].bytes).ok());
  f->store->WaitIdle();
  ASSERT_TRUE(f->store->Evict(TierKind::kHost, 1 << 20).ok());
  ASSERT_TRUE(f->mem[0]->CorruptForTest(child[0].meta.key, 200).ok());
  freed = f->store->DropResume(std::vector<BlockKey>{child[0].meta.key});
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, 0u);
  EXPECT_EQ(f->store->Lookup(std::vector<BlockKey>{p.meta.key, child[0].meta.key}).matched, 1u);
  EXPECT_TRUE(f->store->CheckInvariants().ok()) << f->store->CheckInvariants();
}

// A tier that cannot take the stripped copy (writes failing): the device copy is stripped,
// the host copy, left without a good replacement, is dropped, so the entry keeps one size.
TEST(TieredStoreResumeTest, FailedRewriteInOneTierDropsThatCopy) {
  auto chain = MakeV4Chain(35, "a", {6000});
  const TestPage& p = chain[0];
  FakeClock clock;
  MetricsRegistry reg;
  MemTier host_base(TierKind::kHost, 1 << 20);
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  tiers[0] = std::make_unique<MemTier>(TierKind::kDevice, 1 << 20);
  auto faulty = std::make_unique<FaultInjectingTier>(&host_base);
  FaultInjectingTier* host = faulty.get();
  tiers[1] = std::move(faulty);
  auto s = TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                             std::move(tiers));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Publish(p.meta, p.bytes).ok());
  ASSERT_EQ((*s)->Stats().tiers[1].pages, 1u);
  host->FailWrites(true);
  auto freed = (*s)->DropResume(std::vector<BlockKey>{p.meta.key});
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, ResumeBytes(p));
  StoreStats st = (*s)->Stats();
  EXPECT_EQ(st.tiers[0].pages, 1u);
  EXPECT_EQ(st.tiers[1].pages, 0u);
  EXPECT_EQ(st.tiers[1].evictions, 1u);
  EXPECT_EQ(host_base.used_bytes(), 0u);
  EXPECT_TRUE((*s)->CheckInvariants().ok()) << (*s)->CheckInvariants();
  auto h = (*s)->Pin({&p.meta.key, 1}, clock.Now() + absl::Seconds(5));
  ASSERT_TRUE(h.ok());
  std::vector<uint8_t> dst(p.bytes.size());
  auto n = (*s)->Read(*h, p.meta.key, dst);
  ASSERT_TRUE(n.ok()) << n.status();
  dst.resize(*n);
  EXPECT_EQ(dst, Stripped(p));
  EXPECT_TRUE((*s)->Unpin(*h).ok());
}

// resume_role and resume_bytes survive a reopen of the nvme tier; a strip on nvme persists.
TEST(TieredStoreResumeTest, NvmeRoundTripOfResumeRole) {
  const std::string dir = testing::FreshTestDir("resume_nvme");
  auto chain = MakeV4Chain(40, "a", {5000, 0, 8000});
  chain[0].meta.resume_role = PageRole::kCheckpoint;
  chain[2].meta.resume_role = PageRole::kSharedPrefixEnd;
  FakeClock clock;
  MetricsRegistry reg;
  auto open = [&]() -> std::unique_ptr<TieredStore> {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    auto nv = NvmeTier::Open({.path = dir});
    EXPECT_TRUE(nv.ok()) << nv.status();
    if (!nv.ok()) return nullptr;
    tiers[2] = *std::move(nv);
    auto s = TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                               std::move(tiers));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  };
  auto listed = [&](TieredStore* s) {
    std::map<BlockKey, PageMeta> m;
    auto l = s->tier(TierKind::kNvme)->List();
    EXPECT_TRUE(l.ok());
    for (auto& pm : *l) m[pm.key] = pm;
    return m;
  };
  {
    auto s = open();
    ASSERT_NE(s, nullptr);
    for (const auto& p : chain) ASSERT_TRUE(s->Publish(p.meta, p.bytes).ok());
  }
  {
    auto s = open();
    ASSERT_NE(s, nullptr);
    auto m = listed(s.get());
    ASSERT_EQ(m.size(), 3u);
    EXPECT_EQ(m[chain[0].meta.key].resume_role, PageRole::kCheckpoint);
    EXPECT_EQ(m[chain[1].meta.key].resume_role, PageRole::kTurnEnd);
    EXPECT_EQ(m[chain[2].meta.key].resume_role, PageRole::kSharedPrefixEnd);
    EXPECT_EQ(m[chain[0].meta.key].resume_bytes, ResumeBytes(chain[0]));
    EXPECT_EQ(m[chain[1].meta.key].resume_bytes, 0u);
    auto freed = s->DropResume(std::vector<BlockKey>{chain[0].meta.key});
    ASSERT_TRUE(freed.ok()) << freed.status();
    Tier* nv = s->tier(TierKind::kNvme);  // frees whole 4 KiB record blocks
    EXPECT_EQ(*freed,
              nv->Footprint(chain[0].bytes.size()) - nv->Footprint(Stripped(chain[0]).size()));
    EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
  }
  auto s = open();
  ASSERT_NE(s, nullptr);
  auto m = listed(s.get());
  EXPECT_EQ(m[chain[0].meta.key].size, Stripped(chain[0]).size());
  EXPECT_EQ(m[chain[0].meta.key].resume_bytes, 0u);
  EXPECT_EQ(m[chain[0].meta.key].resume_role, PageRole::kCheckpoint);
  EXPECT_EQ(m[chain[2].meta.key].resume_bytes, ResumeBytes(chain[2]));
  EXPECT_EQ(s->Lookup(KeysOf(chain)).matched, 3u);
  auto h = s->Pin(KeysOf(chain), clock.Now() + absl::Seconds(5));
  ASSERT_TRUE(h.ok());
  std::vector<uint8_t> dst(1 << 20);
  auto n = s->Read(*h, chain[0].meta.key, dst);
  ASSERT_TRUE(n.ok()) << n.status();
  dst.resize(*n);
  EXPECT_EQ(dst, Stripped(chain[0]));
  EXPECT_TRUE(s->Unpin(*h).ok());
  EXPECT_TRUE(s->CheckInvariants().ok()) << s->CheckInvariants();
}

// Pages whose resume size is unknown (nvme records older than the field) are resolved the
// first time they are considered for stripping: a v4 page is stripped, an MLA page is not.
TEST(TieredStoreResumeTest, UnknownResumeSizeIsResolvedLazily) {
  const std::string dir = testing::FreshTestDir("resume_unknown");
  auto v4 = MakeV4Chain(50, "a", {7000});
  auto mla = MakeChain(51, "a", 1);
  {
    auto nv = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(nv.ok()) << nv.status();
    for (const TestPage* p : {&v4[0], &mla[0]}) {
      PageMeta m = p->meta;
      m.resume_bytes = kResumeBytesUnknown;
      ASSERT_TRUE((*nv)
                      ->Write(m, std::string_view(reinterpret_cast<const char*>(p->bytes.data()),
                                                  p->bytes.size()))
                      .ok());
      ASSERT_TRUE((*nv)->Seal(p->meta.key).ok());
    }
  }
  FakeClock clock;
  MetricsRegistry reg;
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto nv = NvmeTier::Open({.path = dir});
  ASSERT_TRUE(nv.ok());
  tiers[2] = *std::move(nv);
  auto s = TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                             std::move(tiers));
  ASSERT_TRUE(s.ok()) << s.status();
  auto freed = (*s)->DropResume(std::vector<BlockKey>{mla[0].meta.key, v4[0].meta.key});
  ASSERT_TRUE(freed.ok()) << freed.status();
  Tier* nvt = (*s)->tier(TierKind::kNvme);  // frees whole 4 KiB record blocks
  EXPECT_EQ(*freed, nvt->Footprint(v4[0].bytes.size()) - nvt->Footprint(Stripped(v4[0]).size()));
  EXPECT_EQ((*s)->Stats().resume_strips, 1u);
  EXPECT_TRUE((*s)->CheckInvariants().ok()) << (*s)->CheckInvariants();
  auto l = (*s)->tier(TierKind::kNvme)->List();
  ASSERT_TRUE(l.ok());
  for (const PageMeta& m : *l)
    EXPECT_EQ(m.resume_bytes, m.key == mla[0].meta.key ? kResumeBytesUnknown : 0u);
}

}  // namespace
}  // namespace kv
