#include "model/kv_cache.h"

#include <cmath>
#include <random>

#include <gtest/gtest.h>

#include "kernels/mla_record.h"
#include "kernels/paged_kv.h"
#include "model/test_util.h"

namespace kv::model {
namespace {

using kernels::KvLayout;

std::unique_ptr<KvCache> Make(KvLayout layout, int layers, int64_t blocks) {
  auto c = KvCache::Create({.layout = layout, .num_layers = layers, .max_blocks = blocks});
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

TEST(KvCacheTest, GeometryMatchesTheLayouts) {
  auto fp8 = Make(KvLayout::kMlaFp8_656, 4, 8);
  EXPECT_EQ(fp8->block_bytes(), 4 * 64 * 656);
  EXPECT_EQ(fp8->bytes_per_token(), 4 * 656);
  auto bf16 = Make(KvLayout::kMlaBf16_1152, 4, 8);
  EXPECT_EQ(bf16->block_bytes(), 4 * 64 * 1152);
  EXPECT_FALSE(KvCache::Create({.num_layers = 0, .max_blocks = 1}).ok());
  EXPECT_FALSE(KvCache::Create({.num_layers = 1, .max_blocks = 0}).ok());
  EXPECT_FALSE(
      KvCache::Create({.layout = static_cast<KvLayout>(9), .num_layers = 1, .max_blocks = 1}).ok());
}

TEST(KvCacheTest, ReserveSlotsAndExhaustion) {
  auto c = Make(KvLayout::kMlaFp8_656, 2, 3);
  ASSERT_TRUE(c->Reserve(100).ok());
  EXPECT_EQ(c->num_blocks(), 2);
  auto slots = c->Slots(60, 8);
  ASSERT_TRUE(slots.ok());
  EXPECT_EQ((*slots)[0], 60);  // block table [0, 1]
  EXPECT_EQ((*slots)[4], 64);
  EXPECT_FALSE(c->Slots(120, 10).ok());
  absl::Status s = c->Reserve(64 * 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(c->num_blocks(), 2);  // nothing allocated on failure
  EXPECT_FALSE(c->Commit(129).ok());
  EXPECT_TRUE(c->Commit(100).ok());
  EXPECT_FALSE(c->Commit(99).ok());
}

// Writes random records through the paged append kernel, exports a block, imports it into a
// second cache and reads both back: the bytes and the decoded values match, and the layer-
// major section layout holds (layer L's record of token t at L*64*rb + t*rb).
TEST(KvCacheTest, ExportImportIsByteExactAndLayerMajor) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (KvLayout layout : {KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152}) {
    const int layers = 3;
    auto a = Make(layout, layers, 4);
    const int64_t n = 150;
    ASSERT_TRUE(a->Reserve(n).ok());
    auto slots = *a->Slots(0, n);
    std::vector<std::vector<float>> rows(layers, std::vector<float>(n * 576));
    for (int l = 0; l < layers; ++l) {
      for (float& x : rows[l]) x = nd(rng);
      kernels::MlaSourceF32 src{rows[l].data(), 576, rows[l].data() + 512, 576};
      ASSERT_TRUE(kernels::AppendMlaTokens(a->LayerView(l), slots.data(), n, src).ok());
    }
    ASSERT_TRUE(a->Commit(n).ok());
    EXPECT_EQ(a->ExportBlock(2).status().code(), absl::StatusCode::kOutOfRange);
    auto b = Make(layout, layers, 4);
    for (int64_t blk = 0; blk < 2; ++blk) {
      auto bytes = a->ExportBlock(blk);
      ASSERT_TRUE(bytes.ok());
      // Layer-major: the record of (layer 1, token 5) sits at 1*64*rb + 5*rb.
      const int rb = a->record_bytes();
      std::vector<uint8_t> enc(rb);
      kernels::MlaSourceF32 one{rows[1].data() + (blk * 64 + 5) * 576, 576,
                                rows[1].data() + (blk * 64 + 5) * 576 + 512, 576};
      ASSERT_TRUE(kernels::EncodeMlaRecords(layout, one, 1, enc.data(), rb).ok());
      EXPECT_EQ(0, std::memcmp(bytes->data() + 64 * rb + 5 * rb, enc.data(), rb));
      ASSERT_TRUE(
          b->AppendBlock({reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()}).ok());
    }
    EXPECT_EQ(b->num_tokens(), 128);
    for (int64_t blk = 0; blk < 2; ++blk) EXPECT_EQ(*a->ExportBlock(blk), *b->ExportBlock(blk));
    std::vector<float> ga(128 * 576), gb(128 * 576, -1.f);
    ASSERT_TRUE(kernels::GatherMlaTokens(a->LayerView(2), 0, 128, ga.data(), 576).ok());
    ASSERT_TRUE(kernels::GatherMlaTokens(b->LayerView(2), 0, 128, gb.data(), 576).ok());
    EXPECT_EQ(ga, gb);
    EXPECT_FALSE(b->AppendBlock({reinterpret_cast<const uint8_t*>("x"), 1}).ok());
  }
}

TEST(KvCacheTest, TruncatePoisonsWhatItDrops) {
  auto c = Make(KvLayout::kMlaFp8_656, 2, 4);
  ASSERT_TRUE(c->Reserve(130).ok());
  auto slots = *c->Slots(0, 130);
  std::vector<float> rows(130 * 576, 0.5f);
  kernels::MlaSourceF32 src{rows.data(), 576, rows.data() + 512, 576};
  for (int l = 0; l < 2; ++l) {
    ASSERT_TRUE(kernels::AppendMlaTokens(c->LayerView(l), slots.data(), 130, src).ok());
  }
  ASSERT_TRUE(c->Commit(130).ok());
  ASSERT_TRUE(c->Truncate(70).ok());
  EXPECT_EQ(c->num_blocks(), 2);
  EXPECT_EQ(c->free_blocks(), 2);
  // Reading token 70 (dropped, same block as kept token 69) gives NaN poison, token 69 not.
  ASSERT_TRUE(c->Reserve(71).ok());
  std::vector<float> out(2 * 576);
  ASSERT_TRUE(kernels::GatherMlaTokens(c->LayerView(1), 69, 2, out.data(), 576).ok());
  EXPECT_EQ(out[0], 0.5f);
  EXPECT_TRUE(std::isnan(out[576]));
  EXPECT_FALSE(c->Truncate(71).ok());
}

}  // namespace
}  // namespace kv::model
