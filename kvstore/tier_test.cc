#include <filesystem>
#include <random>

#include "core/status_macros.h"
#include "gtest/gtest.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/page_format.h"
#include "kvstore/slab_tier.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

using testing::MakeChain;
using testing::TestPage;

std::string_view Str(const std::vector<uint8_t>& b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

// The contract every tier shares, run against each implementation.
void ExerciseTier(Tier* tier) {
  auto chain = MakeChain(11, "a", 6, 4, 3);
  for (const TestPage& p : chain) ASSERT_TRUE(tier->Write(p.meta, Str(p.bytes)).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(tier->Write(chain[0].meta, Str(chain[0].bytes))));
  PageMeta bad = chain[0].meta;
  bad.size += 1;
  EXPECT_TRUE(absl::IsInvalidArgument(tier->Write(bad, Str(chain[0].bytes))));
  // Unsealed pages are readable by the store but not listed.
  auto listed = tier->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
  for (size_t i = 0; i < 4; ++i) ASSERT_TRUE(tier->Seal(chain[i].meta.key).ok());
  listed = tier->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 4u);
  for (const PageMeta& m : *listed) EXPECT_TRUE(m.sealed);

  for (const TestPage& p : chain) {
    std::vector<uint8_t> dst(p.bytes.size() + 7, 0xEE);  // poisoned
    auto n = tier->Read(p.meta.key, dst);
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, p.bytes.size());
    EXPECT_TRUE(std::equal(p.bytes.begin(), p.bytes.end(), dst.begin()));
    EXPECT_EQ(dst.back(), 0xEE);
  }
  std::vector<uint8_t> small(10);
  EXPECT_TRUE(absl::IsOutOfRange(tier->Read(chain[0].meta.key, small).status()));

  // ReadMany matches Read.
  std::vector<BlockKey> keys = {chain[1].meta.key, MakeChain(99, "z", 1)[0].meta.key,
                                chain[2].meta.key};
  std::vector<std::vector<uint8_t>> bufs(3, std::vector<uint8_t>(chain[1].bytes.size(), 0xEE));
  std::vector<std::span<uint8_t>> spans(bufs.begin(), bufs.end());
  auto many = tier->ReadMany(keys, spans);
  ASSERT_TRUE(many.ok());
  ASSERT_TRUE((*many)[0].ok());
  EXPECT_TRUE(absl::IsNotFound((*many)[1].status()));
  ASSERT_TRUE((*many)[2].ok());
  EXPECT_EQ(bufs[0], chain[1].bytes);
  EXPECT_EQ(bufs[2], chain[2].bytes);

  uint64_t used = tier->used_bytes();
  EXPECT_GE(used, 6 * chain[0].bytes.size());
  ASSERT_TRUE(tier->Erase(chain[5].meta.key).ok());
  EXPECT_LT(tier->used_bytes(), used);
  EXPECT_TRUE(absl::IsNotFound(tier->Erase(chain[5].meta.key)));
  EXPECT_TRUE(absl::IsNotFound(tier->Read(chain[5].meta.key, small).status()));
  EXPECT_TRUE(absl::IsNotFound(tier->Seal(chain[5].meta.key)));
}

TEST(MemTierTest, Contract) {
  MemTier t(TierKind::kHost, 1 << 20);
  ExerciseTier(&t);
}

TEST(MemTierTest, FullIsRetryableResourceExhausted) {
  auto chain = MakeChain(12, "a", 3);
  MemTier t(TierKind::kHost, chain[0].bytes.size() * 2);
  ASSERT_TRUE(t.Write(chain[0].meta, Str(chain[0].bytes)).ok());
  ASSERT_TRUE(t.Write(chain[1].meta, Str(chain[1].bytes)).ok());
  EXPECT_FALSE(t.HasRoom(chain[2].bytes.size()));
  absl::Status st = t.Write(chain[2].meta, Str(chain[2].bytes));
  EXPECT_TRUE(absl::IsResourceExhausted(st));
  EXPECT_TRUE(IsRetryable(st));
}

TEST(SlabTierTest, HostContract) {
  auto region = AllocateHostRegion(4 << 20);
  ASSERT_TRUE(region.ok());
  auto t = SlabTier::Create(*std::move(region), {TierKind::kHost, 256 << 10});
  ASSERT_TRUE(t.ok()) << t.status();
  ExerciseTier(t->get());
}

TEST(SlabTierTest, DeviceContract) {
  auto region = AllocateDeviceRegion(4 << 20);
  ASSERT_TRUE(region.ok());
  auto t = SlabTier::Create(*std::move(region), {TierKind::kDevice, 256 << 10});
  ASSERT_TRUE(t.ok());
  ExerciseTier(t->get());
}

TEST(SlabTierTest, SizeClassesLocateAndLend) {
  auto region = AllocateHostRegion(1 << 20);
  ASSERT_TRUE(region.ok());
  auto tier = SlabTier::Create(*std::move(region), {TierKind::kHost, 256 << 10});
  ASSERT_TRUE(tier.ok());
  SlabTier& t = **tier;
  EXPECT_EQ(t.capacity_bytes(), 1u << 20);
  EXPECT_EQ(t.Footprint(1), 4096u);
  EXPECT_EQ(t.Footprint(256 << 10), 256u << 10);
  EXPECT_EQ(t.Footprint((256 << 10) + 1), 0u);
  for (uint64_t s = 1; s <= (256u << 10); s = s * 3 + 1) {
    EXPECT_GE(t.Footprint(s), s);
    EXPECT_LE(t.Footprint(s), std::max<uint64_t>(4096, s * 5 / 4 + 64));
  }
  auto chain = MakeChain(13, "a", 2, 4, 2);
  ASSERT_TRUE(t.Write(chain[0].meta, Str(chain[0].bytes)).ok());
  ASSERT_TRUE(t.Write(chain[1].meta, Str(chain[1].bytes)).ok());
  auto l0 = t.Locate(chain[0].meta.key);
  auto l1 = t.Locate(chain[1].meta.key);
  ASSERT_TRUE(l0.ok() && l1.ok());
  EXPECT_NE(l0->offset, l1->offset);
  EXPECT_EQ(l0->length, chain[0].bytes.size());
  auto view = t.Lend(chain[1].meta.key);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(view->data(), t.region()->host_base() + l1->offset);
  EXPECT_TRUE(std::equal(view->begin(), view->end(), chain[1].bytes.begin()));
  std::string big((256 << 10) + 1, 'x');
  PageMeta m = chain[0].meta;
  m.key = MakeChain(14, "a", 1)[0].meta.key;
  m.size = big.size();
  EXPECT_TRUE(absl::IsInvalidArgument(t.Write(m, big)));
}

TEST(SlabTierTest, SlabsAreReusedAcrossClasses) {
  auto region = AllocateHostRegion(512 << 10);
  ASSERT_TRUE(region.ok());
  auto tier = SlabTier::Create(*std::move(region), {TierKind::kHost, 256 << 10});
  ASSERT_TRUE(tier.ok());
  SlabTier& t = **tier;
  // Fill both slabs with small pages, free them, then a slab-sized page must fit.
  auto chain = MakeChain(15, "a", 200, 1, 1);
  size_t written = 0;
  for (const auto& p : chain) {
    if (!t.Write(p.meta, Str(p.bytes)).ok()) break;
    ++written;
  }
  EXPECT_EQ(written, 2u * (256 << 10) / t.Footprint(chain[0].bytes.size()));
  EXPECT_FALSE(t.HasRoom(256 << 10));
  for (size_t i = 0; i < written; ++i) ASSERT_TRUE(t.Erase(chain[i].meta.key).ok());
  EXPECT_EQ(t.used_bytes(), 0u);
  EXPECT_TRUE(t.HasRoom(256 << 10));
}

TEST(SlabTierTest, RejectsBadGeometry) {
  auto region = AllocateHostRegion(64 << 10);
  ASSERT_TRUE(region.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(
      SlabTier::Create(*std::move(region), {TierKind::kHost, 1 << 20}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(AllocateHostRegion(0).status()));
}

TEST(NvmeTierTest, ContractAndRestart) {
  std::string dir = testing::FreshTestDir("nvme-contract");
  {
    auto t = NvmeTier::Open({.path = dir, .capacity_bytes = 1 << 20});
    ASSERT_TRUE(t.ok()) << t.status();
    ExerciseTier(t->get());
    ASSERT_TRUE((*t)->Flush().ok());
  }
  // chain[0..3] sealed, chain[4] written but unsealed, chain[5] erased.
  auto chain = MakeChain(11, "a", 6, 4, 3);
  auto t = NvmeTier::Open({.path = dir, .capacity_bytes = 1 << 20});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Stats().dropped_at_open, 0u);  // the unsealed page never had an index record
  auto listed = (*t)->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 4u);
  for (const PageMeta& m : *listed) {
    size_t i = 0;
    while (i < 4 && chain[i].meta.key != m.key) ++i;
    ASSERT_LT(i, 4u);
    EXPECT_EQ(m.parent, chain[i].meta.parent);
    EXPECT_EQ(m.ns, chain[i].meta.ns);
    EXPECT_EQ(m.layout, "mla-fp8-656");
    EXPECT_EQ(m.size, chain[i].bytes.size());
    std::vector<uint8_t> dst(m.size);
    ASSERT_TRUE((*t)->Read(m.key, dst).ok());
    EXPECT_EQ(dst, chain[i].bytes);
  }
  std::vector<uint8_t> dst(chain[4].bytes.size());
  EXPECT_TRUE(absl::IsNotFound((*t)->Read(chain[4].meta.key, dst).status()));
  EXPECT_EQ((*t)->used_bytes(), 4 * (*t)->Footprint(chain[0].bytes.size()));
}

// ReadMany splits a batch over read_parallelism concurrent MultiGets; every split gives
// the same per-key results as one sequential MultiGet, misses and short buffers included.
TEST(NvmeTierTest, ParallelReadManyMatchesSequential) {
  auto chain = MakeChain(12, "a", 9, 4, 3);
  std::vector<BlockKey> keys;
  for (const TestPage& p : chain) keys.push_back(p.meta.key);
  keys.insert(keys.begin() + 4, MakeChain(98, "z", 1)[0].meta.key);  // a miss in the middle
  for (int parallelism : {1, 2, 3, 4, 16}) {
    SCOPED_TRACE("read_parallelism=" + std::to_string(parallelism));
    auto t = NvmeTier::Open(
        {.path = testing::FreshTestDir("nvme-readmany"), .read_parallelism = parallelism});
    ASSERT_TRUE(t.ok()) << t.status();
    for (const TestPage& p : chain) ASSERT_TRUE((*t)->Write(p.meta, Str(p.bytes)).ok());
    std::vector<std::vector<uint8_t>> bufs(keys.size(),
                                           std::vector<uint8_t>(chain[0].bytes.size(), 0xEE));
    bufs[7].resize(10);  // too small: OutOfRange, nothing copied
    std::vector<std::span<uint8_t>> spans(bufs.begin(), bufs.end());
    auto many = (*t)->ReadMany(keys, spans);
    ASSERT_TRUE(many.ok()) << many.status();
    ASSERT_EQ(many->size(), keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      if (i == 4) {
        EXPECT_TRUE(absl::IsNotFound((*many)[i].status())) << (*many)[i].status();
        continue;
      }
      if (i == 7) {
        EXPECT_TRUE(absl::IsOutOfRange((*many)[i].status())) << (*many)[i].status();
        EXPECT_EQ(bufs[i], std::vector<uint8_t>(10, 0xEE));
        continue;
      }
      const TestPage& want = chain[i < 4 ? i : i - 1];
      ASSERT_TRUE((*many)[i].ok()) << i << ": " << (*many)[i].status();
      EXPECT_EQ(*(*many)[i], want.bytes.size());
      EXPECT_EQ(bufs[i], want.bytes) << i;
    }
  }
}

TEST(NvmeTierTest, ReadPageFromNvmeVerifies) {
  std::string dir = testing::FreshTestDir("nvme-inspect");
  auto chain = MakeChain(16, "a", 2);
  {
    auto t = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE((*t)->Write(chain[0].meta, Str(chain[0].bytes)).ok());
    ASSERT_TRUE((*t)->Seal(chain[0].meta.key).ok());
    ASSERT_TRUE((*t)->Write(chain[1].meta, Str(chain[1].bytes)).ok());
    // Read-only open works beside the live writer.
    auto page = ReadPageFromNvme(dir, chain[0].meta.key);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_EQ(*page, chain[0].bytes);
    EXPECT_TRUE(absl::IsNotFound(ReadPageFromNvme(dir, chain[1].meta.key).status()));
  }
  EXPECT_TRUE(absl::IsNotFound(ReadPageFromNvme(dir, MakeChain(17, "a", 1)[0].meta.key).status()));
  EXPECT_FALSE(ReadPageFromNvme(dir + "/does-not-exist", chain[0].meta.key).ok());
}

TEST(NvmeTierTest, OpenRejectsEmptyPath) {
  EXPECT_TRUE(absl::IsInvalidArgument(NvmeTier::Open({}).status()));
}

TEST(FaultInjectingTierTest, BreaksOnlyWhatItIsTold) {
  MemTier base(TierKind::kHost, 1 << 20);
  FaultInjectingTier t(&base);
  auto chain = MakeChain(19, "a", 2);
  t.FailWrites(true);
  absl::Status st = t.Write(chain[0].meta, Str(chain[0].bytes));
  EXPECT_TRUE(absl::IsUnavailable(st));
  EXPECT_TRUE(IsRetryable(st));
  t.FailWrites(false);
  ASSERT_TRUE(t.Write(chain[0].meta, Str(chain[0].bytes)).ok());
  std::vector<uint8_t> dst(chain[0].bytes.size());
  t.CorruptReads(true);
  ASSERT_TRUE(t.Read(chain[0].meta.key, dst).ok());
  EXPECT_NE(dst, chain[0].bytes);
  EXPECT_FALSE(DecodePage(dst).ok());
  t.CorruptReads(false);
  ASSERT_TRUE(t.Read(chain[0].meta.key, dst).ok());
  EXPECT_EQ(dst, chain[0].bytes);
  EXPECT_EQ(t.injected_faults(), 2u);
}

}  // namespace
}  // namespace kv
