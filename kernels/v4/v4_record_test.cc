#include "kernels/v4/v4_record.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/bf16.h"
#include "kernels/fp8.h"
#include "kernels/test_util.h"

namespace kv::kernels::v4 {
namespace {

using kv::kernels::testing::Rng;

std::vector<float> VariedRows(Rng& rng, int64_t n, int d) {
  std::vector<float> v(n * d);
  for (int64_t t = 0; t < n; ++t)
    for (int k = 0; k < d / 64; ++k) {
      const int e = static_cast<int>(rng.Int(-12, 8));  // tiles of very different magnitude
      for (int i = 0; i < 64; ++i) v[t * d + 64 * k + i] = std::ldexp(rng.Normal(), e);
    }
  return v;
}

TEST(V4Record, BlockSizesMatchFormats) {
  EXPECT_EQ(V4BlockBytes(64), 37440);      // 64·584 = 37,376 -> 37,440 (§2.2)
  EXPECT_EQ(V4BlockBytes(2), 1728);        // c128a: 2 entries -> 1,728
  EXPECT_EQ(IndexerBlockBytes(64), 8640);  // 64·132 = 8,448 -> 8,640
  EXPECT_EQ(kV4RecordBytes, 584);
  for (int64_t b = 1; b < 300; ++b) {
    EXPECT_EQ(V4BlockBytes(b) % 576, 0);
    EXPECT_GE(V4BlockBytes(b), b * 584);
    EXPECT_LT(V4BlockBytes(b) - b * 584, 576);
  }
}

TEST(V4Record, ExactByteLayout) {
  Rng rng;
  const int64_t B = 64, n = 61;  // a partly filled block: slots 61..63 stay zero
  const std::vector<float> kv = VariedRows(rng, n, 512);
  std::vector<uint8_t> blk(V4BlockBytes(B), 0xA5);
  ASSERT_TRUE(EncodeV4Block(kv.data(), n, B, blk.data(), blk.size()).ok());
  for (int64_t t = 0; t < n; ++t) {
    const float* x = &kv[t * 512];
    const uint8_t* sc = &blk[B * 576 + t * 8];
    for (int k = 0; k < 7; ++k) {
      float amax = 0;
      for (int i = 0; i < 64; ++i) amax = std::max(amax, std::fabs(x[64 * k + i]));
      const double want_scale = std::exp2(std::ceil(std::log2(std::max(amax, 1e-4f) / 448.0)));
      ASSERT_EQ(Ue8m0ToFloat(sc[k]), want_scale) << "token " << t << " tile " << k;
      for (int i = 64 * k; i < 64 * k + 64; ++i)
        ASSERT_EQ(blk[t * 576 + i], FloatToE4m3(static_cast<float>(x[i] / want_scale)));
    }
    ASSERT_EQ(sc[7], 0) << "pad byte of token " << t;
    for (int i = 0; i < 64; ++i) {
      const uint16_t h = FloatToBf16(x[448 + i]);
      ASSERT_EQ(blk[t * 576 + 448 + 2 * i], h & 0xFF);
      ASSERT_EQ(blk[t * 576 + 448 + 2 * i + 1], h >> 8);
    }
  }
  for (int64_t i = n * 576; i < B * 576; ++i) ASSERT_EQ(blk[i], 0) << i;
  for (int64_t i = B * 576 + n * 8; i < static_cast<int64_t>(blk.size()); ++i)
    ASSERT_EQ(blk[i], 0) << i;
}

TEST(V4Record, RoundTripWithinFp8Bound) {
  Rng rng;
  const int64_t B = 64;
  const std::vector<float> kv = VariedRows(rng, B, 512);
  std::vector<uint8_t> blk(V4BlockBytes(B));
  ASSERT_TRUE(EncodeV4Block(kv.data(), B, B, blk.data(), blk.size()).ok());
  std::vector<float> back(B * 512, NAN);
  ASSERT_TRUE(DecodeV4Block(blk.data(), blk.size(), B, B, back.data()).ok());
  for (int64_t t = 0; t < B; ++t)
    for (int i = 0; i < 512; ++i) {
      const float x = kv[t * 512 + i], y = back[t * 512 + i];
      if (i >= 448) {
        ASSERT_LE(std::fabs(x - y), std::fabs(x) * 0x1p-8f) << i;  // bf16 RNE: half of a 2^-7 ulp
        continue;
      }
      float amax = 0;
      for (int j = i / 64 * 64; j < i / 64 * 64 + 64; ++j)
        amax = std::max(amax, std::fabs(kv[t * 512 + j]));
      const float scale = Pow2Scale(amax);
      // e4m3 RNE: half an ulp, 2^-4 relative for normals, 2^-10·scale in the subnormal range.
      ASSERT_LE(std::fabs(x - y), std::max(std::fabs(x) * 0x1p-4f, scale * 0x1p-10f))
          << "token " << t << " dim " << i << " " << rng.SeedText();
    }
}

TEST(V4Record, CorruptBlocksAreRefused) {
  Rng rng;
  const int64_t B = 4;
  const std::vector<float> kv = VariedRows(rng, B, 512);
  std::vector<uint8_t> good(V4BlockBytes(B));
  ASSERT_TRUE(EncodeV4Block(kv.data(), B, B, good.data(), good.size()).ok());
  std::vector<float> out(B * 512);
  auto dec = [&](std::vector<uint8_t> b) {
    return DecodeV4Block(b.data(), b.size(), B, B, out.data());
  };
  std::vector<uint8_t> bad = good;
  bad[3 * 576 + 10] = 0x7F;
  EXPECT_EQ(dec(bad).code(), absl::StatusCode::kDataLoss);
  bad = good;
  bad[B * 576 + 2 * 8 + 3] = 0xFF;
  EXPECT_EQ(dec(bad).code(), absl::StatusCode::kDataLoss);
  bad = good;
  bad[B * 576 + 1 * 8 + 7] = 1;
  EXPECT_EQ(dec(bad).code(), absl::StatusCode::kDataLoss);
  bad = good;
  bad.back() = 9;
  EXPECT_EQ(dec(bad).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeV4Block(good.data(), good.size() - 1, B, B, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> nan_kv = kv;
  nan_kv[700] = INFINITY;
  absl::Status s = EncodeV4Block(nan_kv.data(), B, B, good.data(), good.size());
  EXPECT_NE(s.message().find("row 1"), std::string::npos) << s;
}

TEST(IndexerRecord, LayoutAndRoundTrip) {
  Rng rng;
  const int64_t B = 64, n = 50;
  std::vector<float> k = VariedRows(rng, n, 128);
  std::vector<uint8_t> blk(IndexerBlockBytes(B), 0x5A);
  ASSERT_EQ(blk.size(), 8640u);
  ASSERT_TRUE(EncodeIndexerBlock(k.data(), n, B, blk.data(), blk.size()).ok());
  std::vector<float> back(n * 128, NAN);
  ASSERT_TRUE(DecodeIndexerBlock(blk.data(), blk.size(), B, n, back.data()).ok());
  for (int64_t t = 0; t < n; ++t) {
    float amax = 0;
    for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(k[t * 128 + i]));
    const float scale = Pow2Scale(amax);
    float stored;
    std::memcpy(&stored, &blk[B * 128 + t * 4], 4);
    ASSERT_EQ(stored, scale) << t;
    for (int i = 0; i < 128; ++i) {
      ASSERT_EQ(blk[t * 128 + i], FloatToE4m3(k[t * 128 + i] / scale));
      ASSERT_LE(std::fabs(back[t * 128 + i] - k[t * 128 + i]),
                std::max(std::fabs(k[t * 128 + i]) * 0x1p-4f, scale * 0x1p-10f));
    }
  }
  for (size_t i = B * 132; i < blk.size(); ++i) ASSERT_EQ(blk[i], 0);
  std::vector<uint8_t> bad = blk;
  const float three = 3.0f;
  std::memcpy(&bad[B * 128 + 4], &three, 4);
  EXPECT_EQ(DecodeIndexerBlock(bad.data(), bad.size(), B, n, back.data()).code(),
            absl::StatusCode::kDataLoss);
}

// Split records (the model cache's layout): EncodeV4Records writes the bytes of a block's two
// parts, CopyV4Block copies them back out, and DequantizeV4Records gives the same bits as
// DecodeV4Block. Poisoned outputs show unwritten bytes.
TEST(V4Record, SplitRecordsEqualTheBlock) {
  Rng rng;
  for (const int64_t n : {1, 7, 64, 130}) {
    SCOPED_TRACE(n);
    const std::vector<float> kv = VariedRows(rng, n, 512);
    std::vector<uint8_t> blk(V4BlockBytes(n));
    ASSERT_TRUE(EncodeV4Block(kv.data(), n, n, blk.data(), blk.size()).ok());
    std::vector<uint8_t> tok(n * 576, 0xA5), sc(n * 8, 0xA5);
    ASSERT_TRUE(EncodeV4Records(kv.data(), n, tok.data(), sc.data()).ok());
    EXPECT_TRUE(std::equal(tok.begin(), tok.end(), blk.begin()));
    EXPECT_TRUE(std::equal(sc.begin(), sc.end(), blk.begin() + n * 576));
    std::vector<uint8_t> tok2(n * 576, 0x5A), sc2(n * 8, 0x5A);
    ASSERT_TRUE(CopyV4Block(blk.data(), blk.size(), n, tok2.data(), sc2.data()).ok());
    EXPECT_EQ(tok2, tok);
    EXPECT_EQ(sc2, sc);
    std::vector<float> want(n * 512, NAN), got(n * 512, NAN);
    ASSERT_TRUE(DecodeV4Block(blk.data(), blk.size(), n, n, want.data()).ok());
    DequantizeV4Records(tok.data(), sc.data(), n, got.data());
    for (int64_t i = 0; i < n * 512; ++i) ASSERT_EQ(FloatBits(got[i]), FloatBits(want[i])) << i;
  }
}

TEST(V4Record, CopyRefusesWhatTheDecoderRefuses) {
  Rng rng;
  const int64_t n = 5;
  const std::vector<float> kv = VariedRows(rng, n, 512);
  std::vector<uint8_t> good(V4BlockBytes(n));
  ASSERT_TRUE(EncodeV4Block(kv.data(), n, n, good.data(), good.size()).ok());
  std::vector<uint8_t> tok(n * 576), sc(n * 8);
  std::vector<float> out(n * 512);
  auto check = [&](size_t at, uint8_t v, const char* what) {
    std::vector<uint8_t> bad = good;
    bad[at] = v;
    absl::Status c = CopyV4Block(bad.data(), bad.size(), n, tok.data(), sc.data());
    EXPECT_EQ(c.code(), absl::StatusCode::kDataLoss) << what;
    EXPECT_NE(c.message().find(what), std::string::npos) << c;
    EXPECT_EQ(DecodeV4Block(bad.data(), bad.size(), n, n, out.data()).code(),
              absl::StatusCode::kDataLoss)
        << what;
  };
  check(3 * 576 + 10, 0xFF, "token 3: e4m3 code at byte 10");
  check(n * 576 + 2 * 8 + 3, 0xFF, "token 2: scale 3");
  check(n * 576 + 1 * 8 + 7, 1, "token 1: pad byte");
  check(good.size() - 1, 9, "padding byte");
  // A RoPE bf16 of all-ones exponent (Inf / NaN): byte 448 + 2i is the low byte.
  std::vector<uint8_t> bad = good;
  bad[4 * 576 + 448 + 2 * 5] = 0x80;
  bad[4 * 576 + 448 + 2 * 5 + 1] = 0x7F;
  absl::Status c = CopyV4Block(bad.data(), bad.size(), n, tok.data(), sc.data());
  EXPECT_EQ(c.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(c.message().find("token 4: rope bf16 5"), std::string::npos) << c;
  EXPECT_EQ(CopyV4Block(good.data(), good.size() - 576, n, tok.data(), sc.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CopyV4Block(good.data(), 0, 0, tok.data(), sc.data()).ok());
}

TEST(IndexerRecord, SplitRecordsEqualTheBlock) {
  Rng rng;
  const int64_t n = 37;
  std::vector<float> k = VariedRows(rng, n, 128);
  std::vector<uint8_t> blk(IndexerBlockBytes(n));
  ASSERT_TRUE(EncodeIndexerBlock(k.data(), n, n, blk.data(), blk.size()).ok());
  std::vector<uint8_t> codes(n * 128, 0xA5), scales(n * 4, 0xA5);
  ASSERT_TRUE(EncodeIndexerRecords(k.data(), n, codes.data(), scales.data()).ok());
  EXPECT_TRUE(std::equal(codes.begin(), codes.end(), blk.begin()));
  EXPECT_TRUE(std::equal(scales.begin(), scales.end(), blk.begin() + n * 128));
  std::vector<uint8_t> c2(n * 128, 0x5A), s2(n * 4, 0x5A);
  ASSERT_TRUE(CopyIndexerBlock(blk.data(), blk.size(), n, c2.data(), s2.data()).ok());
  EXPECT_EQ(c2, codes);
  EXPECT_EQ(s2, scales);
  std::vector<float> want(n * 128, NAN), got(n * 128, NAN);
  ASSERT_TRUE(DecodeIndexerBlock(blk.data(), blk.size(), n, n, want.data()).ok());
  DequantizeIndexerRecords(codes.data(), scales.data(), n, got.data());
  for (int64_t i = 0; i < n * 128; ++i) ASSERT_EQ(FloatBits(got[i]), FloatBits(want[i])) << i;
  std::vector<uint8_t> bad = blk;
  bad[9 * 128 + 4] = 0x7F;
  absl::Status s = CopyIndexerBlock(bad.data(), bad.size(), n, c2.data(), s2.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("entry 9: code 4"), std::string::npos) << s;
  bad = blk;
  const float three = 3.0f;
  std::memcpy(&bad[n * 128 + 4 * 6], &three, 4);
  s = CopyIndexerBlock(bad.data(), bad.size(), n, c2.data(), s2.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("entry 6: scale 3"), std::string::npos) << s;
}

}  // namespace
}  // namespace kv::kernels::v4
