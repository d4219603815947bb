// Tests of the FP8/bf16 codec and the MLA record encoders (kernels/fp8.h, bf16.h,
// mla_record.h). References are computed independently, in double.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/bf16.h"
#include "kernels/fp8.h"
#include "kernels/mla_record.h"
#include "kernels/test_util.h"

namespace kv::kernels {
namespace {

using testing::Rng;

// E4M3 value of a code from the format definition (formats.md §5.1), in double.
double E4m3Reference(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

// The SATFINITE RNE code of x found by search over all finite codes, in double.
uint8_t E4m3EncodeReference(float xf) {
  if (std::isnan(xf)) return 0x7F;
  const double x = xf;
  const double ax = std::min(std::fabs(x), 448.0);
  int best = 0;
  for (int c = 1; c <= 0x7E; ++c) {
    const double d = std::fabs(E4m3Reference(c) - ax), db = std::fabs(E4m3Reference(best) - ax);
    if (d < db || (d == db && (c & 1) == 0 && (best & 1) == 1)) best = c;
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

TEST(E4m3, AllCodesDecode) {
  for (int c = 0; c < 256; ++c) {
    const float v = E4m3ToFloat(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << "code " << c;
      continue;
    }
    EXPECT_EQ(static_cast<double>(v), E4m3Reference(c)) << "code " << c;
    EXPECT_EQ(std::signbit(v), c >= 0x80) << "code " << c;  // 0x80 is -0
  }
  EXPECT_EQ(E4m3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(E4m3ToFloat(0xFE), -448.0f);
  EXPECT_EQ(E4m3ToFloat(0x01), 0.001953125f);
  EXPECT_EQ(E4m3ToFloat(0x07), 0.013671875f);
  EXPECT_EQ(E4m3ToFloat(0x38), 1.0f);
}

TEST(E4m3, Section53Vectors) {
  struct V {
    float x;
    uint8_t code;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const V vectors[] = {
      {1.0f, 0x38},    {448.0f, 0x7E},   {449.0f, 0x7E},         {463.99f, 0x7E},  {464.0f, 0x7E},
      {464.01f, 0x7E}, {470.0f, 0x7E},   {479.0f, 0x7E},         {480.0f, 0x7E},   {500.0f, 0x7E},
      {1e6f, 0x7E},    {inf, 0x7E},      {-inf, 0xFE},           {-0.0f, 0x80},    {0.0f, 0x00},
      {0x1p-9f, 0x01}, {0x1p-10f, 0x00}, {1.5f * 0x1p-9f, 0x02}, {0x1p-6f, 0x08},  {1.0625f, 0x38},
      {1.1875f, 0x3A}, {17.0f, 0x58},    {241.0f, 0x77},         {57344.0f, 0x7E}, {61440.0f, 0x7E},
      {-448.0f, 0xFE}, {-1.0f, 0xB8},
  };
  for (const V& v : vectors) {
    EXPECT_EQ(FloatToE4m3(v.x), v.code) << "x=" << v.x;
    EXPECT_EQ(E4m3EncodeReference(v.x), v.code) << "reference disagrees at x=" << v.x;
  }
  EXPECT_EQ(FloatToE4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToE4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
}

TEST(E4m3, RandomEncodeMatchesSearchReference) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 20000; ++i) {
    const float x = rng.Varied(-14, 10);
    ASSERT_EQ(FloatToE4m3(x), E4m3EncodeReference(x)) << "x=" << x;
    if (std::fabs(x) <= 448.0f) {
      ASSERT_EQ(FloatToE4m3InRange(x), FloatToE4m3(x)) << "x=" << x;
    }
  }
  // Exact midpoints between neighbouring codes, both ways of tie.
  for (int c = 0; c < 0x7E; ++c) {
    const double mid = (E4m3Reference(c) + E4m3Reference(c + 1)) / 2;
    const float x = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(x), mid);
    EXPECT_EQ(FloatToE4m3(x), (c & 1) ? c + 1 : c) << "midpoint after code " << c;
    EXPECT_EQ(FloatToE4m3InRange(x), FloatToE4m3(x)) << "midpoint after code " << c;
  }
}

TEST(Ue8m0, EncodeDecode) {
  for (int b = 0; b < 255; ++b) {
    EXPECT_EQ(static_cast<double>(Ue8m0ToFloat(static_cast<uint8_t>(b))), std::ldexp(1.0, b - 127))
        << "byte " << b;
  }
  EXPECT_TRUE(std::isnan(Ue8m0ToFloat(0xFF)));
  EXPECT_EQ(FloatToUe8m0Ceil(1.0f), 0x7F);
  EXPECT_EQ(FloatToUe8m0Ceil(0.75f), 0x7F);
  EXPECT_EQ(FloatToUe8m0Ceil(3.0f), 0x81);
  EXPECT_EQ(FloatToUe8m0Ceil(std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(FloatToUe8m0Ceil(std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(FloatToUe8m0Ceil(0.0f), 0x00);
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 10000; ++i) {
    const float x = std::fabs(rng.Varied(-100, 100));
    const uint8_t b = FloatToUe8m0Ceil(x);
    ASSERT_GE(static_cast<double>(Ue8m0ToFloat(b)), x) << x;
    ASSERT_LT(std::ldexp(1.0, b - 128), x) << x;  // the next power down is too small
  }
}

// Smallest e with 448 * 2^e >= max(amax, 1e-4), searched in double.
int ScaleExponentReference(float amax) {
  const double a = std::max(static_cast<double>(amax), static_cast<double>(1e-4f));
  int e = -200;
  while (std::ldexp(448.0, e) < a) ++e;
  return e;
}

TEST(Pow2Scale, ExactCeilLog2) {
  std::vector<float> cases = {0.0f, 1e-30f, 1e-4f, 448.0f, 449.0f, 1.0f, 0.875f, 1.75f, 3.5f};
  for (int k = -30; k <= 100; ++k) {
    const float b = std::ldexp(448.0f, k);
    cases.push_back(b);
    cases.push_back(std::nextafter(b, 0.0f));
    cases.push_back(std::nextafter(b, 1e38f));
  }
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 20000; ++i) cases.push_back(std::fabs(rng.Varied(-30, 120)));
  for (float a : cases) {
    ASSERT_EQ(Pow2ScaleExponent(a), ScaleExponentReference(a)) << "amax=" << a;
    ASSERT_LE(std::fabs(a) / Pow2Scale(a), 448.0f) << "amax=" << a;
  }
}

TEST(Bf16, RoundNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(1.0f + 0x1p-8f), 0x3F80);      // tie -> even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(FloatToBf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int i = 0; i < 10000; ++i) {
    const float x = rng.Varied(-60, 60);
    const double back = Bf16ToFloat(FloatToBf16(x));
    ASSERT_LE(std::fabs(back - x), std::ldexp(std::fabs(x), -8)) << x;
  }
}

// A token's 576 values with per-tile magnitudes spread over many binades (including tiles
// entirely in e4m3's subnormal range after scaling and a tile below the 1e-4 amax floor).
std::vector<float> RandomToken(Rng& rng) {
  std::vector<float> v(kMlaKeyDim);
  for (int t = 0; t < kMlaTiles; ++t) {
    const int tile_exp = static_cast<int>(rng.Int(-20, 12));
    for (int j = 0; j < kMlaTile; ++j) {
      // Inside a tile, values spread over ~14 binades so some land in the subnormal range.
      v[t * kMlaTile + j] = std::ldexp(rng.Normal(), tile_exp - static_cast<int>(rng.Int(0, 14)));
    }
  }
  for (int j = 0; j < kMlaRopeDim; ++j) v[kMlaLatentDim + j] = rng.Varied(-6, 6);
  return v;
}

TEST(MlaFp8Record, LayoutAndRoundTripBound) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int n = 200;
  const int stride = kFp8RecordBytes + 16;  // a gap between records must stay untouched
  std::vector<float> src;
  for (int i = 0; i < n; ++i) {
    std::vector<float> t = RandomToken(rng);
    src.insert(src.end(), t.begin(), t.end());
  }
  std::vector<uint8_t> rec(n * stride, 0xA5);
  ASSERT_TRUE(EncodeMlaRecords(KvLayout::kMlaFp8_656, {src.data(), 576, src.data() + 512, 576}, n,
                               rec.data(), stride)
                  .ok());
  std::vector<float> dec(n * 600, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(DecodeMlaRecords(KvLayout::kMlaFp8_656, rec.data(), stride, n, dec.data(), 600).ok());
  for (int i = 0; i < n; ++i) {
    const float* x = &src[i * 576];
    const uint8_t* r = &rec[i * stride];
    for (int t = 0; t < kMlaTiles; ++t) {
      double amax = 0;
      for (int j = 0; j < kMlaTile; ++j) amax = std::max(amax, std::fabs(double(x[t * 128 + j])));
      float scale;
      std::memcpy(&scale, r + 512 + 4 * t, 4);  // scale t at byte 512 + 4t
      ASSERT_EQ(scale, static_cast<float>(std::ldexp(1.0, ScaleExponentReference(float(amax)))));
      for (int j = 0; j < kMlaTile; ++j) {
        const int k = t * kMlaTile + j;
        ASSERT_EQ(r[k], E4m3EncodeReference(x[k] / scale)) << "token " << i << " elem " << k;
        const double err = std::fabs(double(dec[i * 600 + k]) - x[k]);
        const double bound =
            std::max(std::ldexp(std::fabs(double(x[k])), -4), std::ldexp(double(scale), -10));
        ASSERT_LE(err, bound) << "token " << i << " elem " << k << " x=" << x[k];
      }
    }
    for (int j = 0; j < kMlaRopeDim; ++j) {
      uint16_t h;
      std::memcpy(&h, r + 528 + 2 * j, 2);  // rope j at byte 528 + 2j, bf16 RNE of the input
      ASSERT_EQ(h, FloatToBf16(x[512 + j]));
      ASSERT_EQ(dec[i * 600 + 512 + j], Bf16ToFloat(h));
    }
    for (int g = kFp8RecordBytes; g < stride; ++g) ASSERT_EQ(r[g], 0xA5) << "gap byte " << g;
    for (int j = 576; j < 600; ++j) ASSERT_TRUE(std::isnan(dec[i * 600 + j]));
  }
}

TEST(MlaFp8Record, DequantizeEveryCodeWithEveryScale) {
  // Record i holds all 256 codes twice (tiles 0-1 and 2-3) under scales 2^(e_t).
  for (int e : {-22, -9, 0, 7, 100}) {
    std::vector<uint8_t> rec(656);
    for (int j = 0; j < 512; ++j) rec[j] = static_cast<uint8_t>(j & 0xFF);
    const float scales[4] = {std::ldexp(1.0f, e), std::ldexp(1.0f, -e / 2), 1.0f, 0.5f};
    std::memcpy(&rec[512], scales, 16);
    for (int j = 0; j < 64; ++j) {
      const uint16_t h = static_cast<uint16_t>(0x3F80 + j);
      std::memcpy(&rec[528 + 2 * j], &h, 2);
    }
    std::vector<float> out(576);
    ASSERT_TRUE(DecodeMlaRecords(KvLayout::kMlaFp8_656, rec.data(), 656, 1, out.data(), 576).ok());
    for (int j = 0; j < 512; ++j) {
      const double want = E4m3Reference(j & 0xFF) * scales[j / 128];
      if ((j & 0x7F) == 0x7F) {
        ASSERT_TRUE(std::isnan(out[j])) << j;
      } else {
        ASSERT_EQ(double(out[j]), want) << "code " << (j & 0xFF) << " scale exp " << e;
        ASSERT_EQ(std::signbit(out[j]), (j & 0x80) != 0) << j;
      }
    }
    for (int j = 0; j < 64; ++j) ASSERT_EQ(out[512 + j], Bf16ToFloat(0x3F80 + j));
  }
}

TEST(MlaRecord, Bf16SourceMatchesF32Source) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int n = 50;
  std::vector<uint16_t> h(n * 576);
  std::vector<float> f(n * 576);
  for (int i = 0; i < n * 576; ++i) {
    h[i] = FloatToBf16(rng.Varied(-8, 8));
    f[i] = Bf16ToFloat(h[i]);
  }
  for (KvLayout layout : {KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152}) {
    const int rb = RecordBytes(layout);
    std::vector<uint8_t> a(n * rb, 0x11), b(n * rb, 0x22);
    ASSERT_TRUE(
        EncodeMlaRecords(layout, MlaSourceF32{f.data(), 576, f.data() + 512, 576}, n, a.data(), rb)
            .ok());
    ASSERT_TRUE(
        EncodeMlaRecords(layout, MlaSourceBf16{h.data(), 576, h.data() + 512, 576}, n, b.data(), rb)
            .ok());
    EXPECT_EQ(a, b) << LayoutName(layout);
  }
}

TEST(MlaBf16Record, LayoutAndRoundTrip) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int n = 40;
  std::vector<float> src = rng.NormalVector(n * 576, 3.0f);
  std::vector<uint8_t> rec(n * 1152, 0xA5);
  ASSERT_TRUE(EncodeMlaRecords(KvLayout::kMlaBf16_1152, {src.data(), 576, src.data() + 512, 576}, n,
                               rec.data(), 1152)
                  .ok());
  std::vector<float> dec(n * 576, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(DecodeMlaRecords(KvLayout::kMlaBf16_1152, rec.data(), 1152, n, dec.data(), 576).ok());
  for (int i = 0; i < n * 576; ++i) {
    const int tok = i / 576, j = i % 576;
    const int off = j < 512 ? 2 * j : 1024 + 2 * (j - 512);
    uint16_t h;
    std::memcpy(&h, &rec[tok * 1152 + off], 2);
    ASSERT_EQ(h, FloatToBf16(src[i]));
    // RNE to 8 significant bits: half an ulp is 2^(E-8) <= 2^-8 |x|.
    ASSERT_LE(std::fabs(double(dec[i]) - src[i]), std::ldexp(std::fabs(double(src[i])), -8));
  }
}

TEST(MlaRecord, RejectsBadInput) {
  std::vector<float> src(3 * 576, 0.5f);
  std::vector<uint8_t> rec(3 * 1152, 0xA5);
  const MlaSourceF32 s{src.data(), 576, src.data() + 512, 576};
  src[2 * 576 + 7] = std::numeric_limits<float>::quiet_NaN();
  absl::Status st = EncodeMlaRecords(KvLayout::kMlaFp8_656, s, 3, rec.data(), 656);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("token 2"), std::string::npos) << st;
  EXPECT_EQ(rec[2 * 656], 0xA5) << "the bad token must not be written";
  src[2 * 576 + 7] = 0.5f;
  src[1 * 576 + 520] = std::numeric_limits<float>::infinity();
  st = EncodeMlaRecords(KvLayout::kMlaBf16_1152, s, 3, rec.data(), 1152);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rope"), std::string::npos) << st;
  EXPECT_FALSE(EncodeMlaRecords(KvLayout::kMlaFp8_656, s, 3, rec.data(), 600).ok());
  EXPECT_FALSE(EncodeMlaRecords(KvLayout::kMlaFp8_656, s, -1, rec.data(), 656).ok());
  EXPECT_FALSE(EncodeMlaRecords(static_cast<KvLayout>(9), s, 1, rec.data(), 656).ok());
  EXPECT_FALSE(EncodeMlaRecords(KvLayout::kMlaFp8_656, MlaSourceF32{nullptr, 576, nullptr, 576}, 1,
                                rec.data(), 656)
                   .ok());
  EXPECT_TRUE(EncodeMlaRecords(KvLayout::kMlaFp8_656, s, 0, nullptr, 0).ok());
  EXPECT_FALSE(DecodeMlaRecords(KvLayout::kMlaFp8_656, rec.data(), 100, 1, src.data(), 576).ok());
  EXPECT_FALSE(ParseLayout("mla-fp8-657").ok());
  EXPECT_EQ(*ParseLayout("mla-bf16-1152"), KvLayout::kMlaBf16_1152);
}

TEST(Fp8Test, E4m3TableIsBitIdenticalToTheScalarDecode) {
  const float* table = E4m3Table();
  std::vector<uint8_t> codes(256);
  std::vector<float> bulk(256);
  for (int c = 0; c < 256; ++c) codes[c] = static_cast<uint8_t>(c);
  E4m3ToFloat(codes.data(), bulk.data(), 256);
  for (int c = 0; c < 256; ++c) {
    const float want = E4m3ToFloat(static_cast<uint8_t>(c));
    EXPECT_EQ(FloatBits(table[c]), FloatBits(want)) << "code " << c;
    EXPECT_EQ(FloatBits(bulk[c]), FloatBits(want)) << "code " << c;
    // NaN codes give a NaN of either form; every other code the same bits.
    const float arith = E4m3ToFloatArith(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(arith)) << "code " << c;
    } else {
      EXPECT_EQ(FloatBits(arith), FloatBits(want)) << "code " << c;
    }
  }
}

}  // namespace
}  // namespace kv::kernels
