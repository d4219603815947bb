#include "kernels/v4/compressor.h"

#include <cstring>

#include "gtest/gtest.h"
#include "kernels/v4/v4_config.h"
#include "kernels/v4/v4_test_util.h"

namespace kv::kernels::v4 {
namespace {

using testing::MakeCompressor;
using testing::MakeRows;
using testing::ReferenceEntry;
using testing::Rng;

// Tolerance vs the float64 reference. fp32 softmax over <= 128 slots (relative error of the
// sums <= 128·2^-24 ≈ 8e-6), an fp32 RMSNorm whose outputs are O(1)·weight (<= 1.5), and a
// float rotation with cos/sin rounded once: each entry is within ~2e-5·(1+|y|); 1e-4 leaves
// a 5× margin while a wrong slot, bias row or RoPE position gives errors of order 1.
constexpr double kTol = 1e-4;

void ExpectMatchesReference(const testing::TestCompressor& tc, const std::vector<float>& c,
                            const std::vector<float>& z, const std::vector<float>& entries,
                            int64_t n_entries, const std::string& seed) {
  const int d = tc.comp.spec().dim;
  ASSERT_EQ(entries.size(), static_cast<size_t>(n_entries * d));
  for (int64_t w = 0; w < n_entries; ++w) {
    const std::vector<double> ref = ReferenceEntry(tc, c, z, w);
    for (int i = 0; i < d; ++i) {
      const float got = entries[w * d + i];
      ASSERT_FALSE(std::isnan(got)) << seed;
      ASSERT_NEAR(got, ref[i], kTol * (1 + std::abs(ref[i])))
          << "entry " << w << " dim " << i << " " << seed;
    }
  }
}

TEST(V4Config, PublishedLayerMixes) {
  const V4Config pro = V4ProConfig(), flash = V4FlashConfig();
  EXPECT_TRUE(ValidateV4Config(pro).ok());
  EXPECT_TRUE(ValidateV4Config(flash).ok());
  EXPECT_EQ(pro.num_layers(), 61);
  EXPECT_EQ(pro.CountLayers(kHcaRatio), 31);
  EXPECT_EQ(pro.CountLayers(kCsaRatio), 30);
  EXPECT_EQ(flash.num_layers(), 43);
  EXPECT_EQ(flash.CountLayers(kWindowOnly), 2);
  EXPECT_EQ(flash.CountLayers(kCsaRatio), 21);
  EXPECT_EQ(flash.CountLayers(kHcaRatio), 20);
  EXPECT_EQ(flash.compress_ratios[2], 4);
  EXPECT_EQ(flash.compress_ratios[3], 128);
}

TEST(V4Config, RejectsBadFieldsByName) {
  V4Config c = V4FlashConfig();
  c.compress_ratios[5] = 8;
  absl::Status s = ValidateV4Config(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("compress_ratios[5] = 8"), std::string::npos) << s;
  c = V4FlashConfig();
  c.nope_dim = 440;
  s = ValidateV4Config(c);
  EXPECT_NE(s.message().find("head_dim"), std::string::npos) << s;
  c = V4FlashConfig();
  c.compress_ratios.clear();
  EXPECT_FALSE(ValidateV4Config(c).ok());
  c = V4FlashConfig();
  c.compress_rope_theta = 0.5;
  EXPECT_FALSE(ValidateV4Config(c).ok());
  EXPECT_FALSE(LayerRopeParams(V4FlashConfig(), 43).ok());
  EXPECT_EQ(LayerRopeParams(V4FlashConfig(), 0)->theta, 10000.0);
  EXPECT_EQ(LayerRopeParams(V4FlashConfig(), 2)->theta, 160000.0);
}

TEST(Compressor, HcaMatchesFloat64Reference) {
  Rng rng;
  const auto tc = MakeCompressor(rng, 128, 512);
  const int64_t n = 128 * 3 + 57;  // 3 closed windows plus a partial one (not emitted)
  std::vector<float> c, z, entries;
  MakeRows(rng, n, 512, &c, &z);
  ASSERT_TRUE(tc.comp.CompressAll(c.data(), z.data(), n, &entries).ok());
  ExpectMatchesReference(tc, c, z, entries, 3, rng.SeedText());
}

TEST(Compressor, CsaMatchesFloat64Reference) {
  Rng rng;
  for (int dim : {512, 128}) {  // main and indexer compressor (§4.4)
    const auto tc = MakeCompressor(rng, 4, dim);
    const int64_t n = 4 * 9 + 3;
    std::vector<float> c, z, entries;
    MakeRows(rng, n, 2 * dim, &c, &z);
    ASSERT_TRUE(tc.comp.CompressAll(c.data(), z.data(), n, &entries).ok());
    ExpectMatchesReference(tc, c, z, entries, 9, rng.SeedText());
  }
}

// Every entry depends on exactly the tokens of its window(s): perturbing token t changes
// entry j iff t is one of its slots (CSA: t/4 == j or j-1; HCA: t/128 == j). Exhaustive over
// every token of a small sequence.
TEST(Compressor, EntriesDependOnlyOnTheirWindows) {
  Rng rng;
  for (int ratio : {4, 128}) {
    const int dim = 128;
    const auto tc = MakeCompressor(rng, ratio, dim);
    const int iw = tc.comp.in_width();
    const int64_t n = ratio == 4 ? 26 : 3 * 128 + 5;
    std::vector<float> c, z, base, pert;
    MakeRows(rng, n, iw, &c, &z);
    ASSERT_TRUE(tc.comp.CompressAll(c.data(), z.data(), n, &base).ok());
    const int64_t n_entries = n / ratio;
    for (int64_t t = 0; t < n; t += (ratio == 4 ? 1 : 7)) {
      std::vector<float> c2 = c, z2 = z;
      for (int i = 0; i < iw; ++i) {
        c2[t * iw + i] += 1.0f + rng.Normal();
        z2[t * iw + i] += 0.5f;
      }
      pert.clear();
      ASSERT_TRUE(tc.comp.CompressAll(c2.data(), z2.data(), n, &pert).ok());
      for (int64_t j = 0; j < n_entries; ++j) {
        const bool uses = ratio == 4 ? (t / 4 == j || t / 4 == j - 1) : (t / ratio == j);
        const bool changed = std::memcmp(&base[j * dim], &pert[j * dim], dim * sizeof(float)) != 0;
        EXPECT_EQ(changed, uses) << "ratio " << ratio << " token " << t << " entry " << j;
      }
    }
  }
}

// Streaming over random chunkings (with a serialise/deserialise hop at every chunk boundary)
// is bit-identical to the one-shot pass.
TEST(CompressorStream, RandomChunkingsAreBitIdentical) {
  Rng rng;
  for (int ratio : {4, 128}) {
    const auto tc = MakeCompressor(rng, ratio, ratio == 4 ? 512 : 128);
    const int iw = tc.comp.in_width();
    const int64_t n = ratio == 4 ? 203 : 128 * 4 + 77;
    std::vector<float> c, z, oneshot;
    MakeRows(rng, n, iw, &c, &z);
    ASSERT_TRUE(tc.comp.CompressAll(c.data(), z.data(), n, &oneshot).ok());
    for (int trial = 0; trial < 6; ++trial) {
      CompressorStream s(tc.comp);
      std::vector<float> got;
      int64_t t = 0;
      while (t < n) {
        const int64_t k = std::min<int64_t>(n - t, rng.Int(0, trial < 3 ? 9 : 300));
        ASSERT_TRUE(s.Append(tc.comp, c.data() + t * iw, z.data() + t * iw, k, &got).ok());
        t += k;
        if (trial % 2 == 1) {
          auto back = CompressorStream::Deserialize(tc.comp, s.Serialize());
          ASSERT_TRUE(back.ok()) << back.status();
          s = *std::move(back);
        }
        ASSERT_EQ(s.next_position(), t);
        ASSERT_EQ(s.buffered_tokens(), t % ratio);
        ASSERT_EQ(s.Serialize().size(),
                  CompressorStream::SerializedBytes(ratio, tc.comp.spec().dim, t));
      }
      ASSERT_EQ(got.size(), oneshot.size());
      EXPECT_EQ(std::memcmp(got.data(), oneshot.data(), got.size() * sizeof(float)), 0)
          << "ratio " << ratio << " trial " << trial << " " << rng.SeedText();
    }
  }
}

TEST(CompressorStream, CorruptedStateIsRefused) {
  Rng rng;
  const auto tc = MakeCompressor(rng, 4, 128);
  std::vector<float> c, z, out;
  MakeRows(rng, 7, 256, &c, &z);
  CompressorStream s(tc.comp);
  ASSERT_TRUE(s.Append(tc.comp, c.data(), z.data(), 7, &out).ok());
  const std::string good = s.Serialize();
  ASSERT_TRUE(CompressorStream::Deserialize(tc.comp, good).ok());
  // Every single-byte flip is caught (checksum, magic or version).
  for (size_t i = 0; i < good.size(); i += 1 + good.size() / 300) {
    std::string bad = good;
    bad[i] ^= 0x10;
    EXPECT_FALSE(CompressorStream::Deserialize(tc.comp, bad).ok()) << "byte " << i;
  }
  EXPECT_EQ(CompressorStream::Deserialize(tc.comp, good.substr(0, 20)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(CompressorStream::Deserialize(tc.comp, good + "x").status().code(),
            absl::StatusCode::kDataLoss);
  std::string v2 = good;
  v2[4] = 2;
  EXPECT_EQ(CompressorStream::Deserialize(tc.comp, v2).status().code(),
            absl::StatusCode::kUnimplemented);
  const auto other = MakeCompressor(rng, 128, 128);
  EXPECT_EQ(CompressorStream::Deserialize(other.comp, good).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(Compressor, BadInputIsRejectedByName) {
  Rng rng;
  const auto tc = MakeCompressor(rng, 4, 128);
  std::vector<float> c, z, out;
  MakeRows(rng, 8, 256, &c, &z);
  c[5 * 256 + 3] = NAN;
  absl::Status s = tc.comp.CompressAll(c.data(), z.data(), 8, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("row 5"), std::string::npos) << s;
  EXPECT_TRUE(out.empty());
  CompressorSpec spec{.ratio = 8, .dim = 128};
  V4Config cfg;
  auto bad = Compressor::Create(spec, std::vector<float>(8 * 128), std::vector<float>(128),
                                CompressRopeParams(cfg));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  spec.ratio = 4;
  bad = Compressor::Create(spec, std::vector<float>(4 * 128), std::vector<float>(128),
                           CompressRopeParams(cfg));
  EXPECT_NE(bad.status().message().find("position_bias"), std::string::npos);
}

}  // namespace
}  // namespace kv::kernels::v4
