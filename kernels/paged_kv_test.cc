// Paged append/scatter/gather (kernels/paged_kv.h): records land exactly at
// pool + block*block_stride + layer_offset + t*record_bytes, slot -1 writes nothing, and a
// bad slot writes nothing at all.
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/paged_kv.h"
#include "kernels/test_util.h"

namespace kv::kernels {
namespace {

using testing::Rng;

struct Pool {
  int page_tokens = 4, layers = 2, blocks = 6, pad = 48;
  KvLayout layout;
  int rb;
  int64_t block_stride;
  std::vector<uint8_t> bytes;
  explicit Pool(KvLayout l) : layout(l), rb(RecordBytes(l)) {
    block_stride = int64_t{layers} * page_tokens * rb + pad;
    bytes.assign(blocks * block_stride, 0xA5);
  }
  PagedKvView View(int layer, const std::vector<int32_t>* table = nullptr) {
    PagedKvView v;
    v.pool = bytes.data();
    v.block_stride = block_stride;
    v.layer_offset = int64_t{layer} * page_tokens * rb;
    v.page_tokens = page_tokens;
    v.layout = layout;
    v.num_physical_blocks = blocks;
    if (table) {
      v.block_table = table->data();
      v.num_table_blocks = static_cast<int64_t>(table->size());
    }
    return v;
  }
};

class PagedKvTest : public ::testing::TestWithParam<KvLayout> {};

TEST_P(PagedKvTest, AppendWritesExactlyItsSlotsAndSkipsMinusOne) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  Pool pool(GetParam());
  const int n = 9;
  std::vector<float> src = rng.NormalVector(n * 576, 2.0f);
  // Distinct slots in blocks 5, 2, 0 (any order), with padding rows -1.
  const std::vector<int64_t> slots = {21, 22, -1, 8, 9, 10, -1, 3, 0};
  const int layer = 1;
  std::vector<uint8_t> expected = pool.bytes;
  std::vector<uint8_t> rec(n * pool.rb);
  ASSERT_TRUE(EncodeMlaRecords(pool.layout, MlaSourceF32{src.data(), 576, src.data() + 512, 576}, n,
                               rec.data(), pool.rb)
                  .ok());
  for (int i = 0; i < n; ++i) {
    if (slots[i] < 0) continue;
    const int64_t off = (slots[i] / pool.page_tokens) * pool.block_stride +
                        int64_t{layer} * pool.page_tokens * pool.rb +
                        (slots[i] % pool.page_tokens) * pool.rb;
    std::memcpy(&expected[off], &rec[i * pool.rb], pool.rb);
  }
  ASSERT_TRUE(AppendMlaTokens(pool.View(layer), slots.data(), n,
                              MlaSourceF32{src.data(), 576, src.data() + 512, 576})
                  .ok());
  EXPECT_EQ(pool.bytes, expected) << "append wrote outside its slots (or a -1 slot wrote)";

  // ScatterRecords of the same records gives the same pool.
  Pool pool2(GetParam());
  ASSERT_TRUE(ScatterRecords(pool2.View(layer), slots.data(), n, rec.data(), pool.rb).ok());
  EXPECT_EQ(pool2.bytes, expected);

  // Gather through a block table: logical blocks 0,1,2 -> physical 2, 5, 0.
  const std::vector<int32_t> table = {2, 5, 0};
  std::vector<float> out(12 * 576, -7.0f), ref(576);
  ASSERT_TRUE(GatherMlaTokens(pool.View(layer, &table), 0, 12, out.data(), 576).ok());
  // Logical 0..3 = slots 8..11; slot 8,9,10 came from tokens 3,4,5.
  for (int i : {3, 4, 5}) {
    ASSERT_TRUE(DecodeMlaRecords(pool.layout, &rec[i * pool.rb], pool.rb, 1, ref.data(), 576).ok());
    const int64_t logical = slots[i] - 8;
    for (int j = 0; j < 576; ++j) ASSERT_EQ(out[logical * 576 + j], ref[j]) << i << "," << j;
  }
  auto slot = SlotForPosition(pool.View(layer, &table), 5);
  ASSERT_TRUE(slot.ok());
  EXPECT_EQ(*slot, 21);
}

TEST_P(PagedKvTest, BadSlotOrTableWritesNothing) {
  Pool pool(GetParam());
  std::vector<float> src(3 * 576, 0.25f);
  const std::vector<uint8_t> before = pool.bytes;
  const MlaSourceF32 s{src.data(), 576, src.data() + 512, 576};
  for (int64_t bad : {int64_t{-2}, int64_t{24}, int64_t{1} << 40}) {
    const std::vector<int64_t> slots = {1, bad, 2};
    absl::Status st = AppendMlaTokens(pool.View(0), slots.data(), 3, s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("token 1"), std::string::npos) << st;
    EXPECT_EQ(pool.bytes, before) << "slot " << bad;
  }
  const std::vector<int32_t> table = {1, 6};
  EXPECT_FALSE(GatherMlaTokens(pool.View(0, &table), 0, 8, src.data(), 576).ok());
  EXPECT_FALSE(GatherMlaTokens(pool.View(0, &table), 0, 9, src.data(), 576).ok());
  PagedKvView v = pool.View(0);
  v.block_stride = 100;  // records cannot fit
  EXPECT_FALSE(ValidatePagedKvView(v).ok());
  v = pool.View(0);
  v.pool = nullptr;
  EXPECT_FALSE(ValidatePagedKvView(v).ok());
}

INSTANTIATE_TEST_SUITE_P(Layouts, PagedKvTest,
                         ::testing::Values(KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152));

}  // namespace
}  // namespace kv::kernels
