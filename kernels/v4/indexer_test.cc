#include "kernels/v4/indexer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

#include "gtest/gtest.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/sparse_attention.h"
#include "kernels/v4/v4_record.h"
#include "kernels/v4/v4_test_util.h"

namespace kv::kernels::v4 {
namespace {

using testing::MakeCompressor;
using testing::MakeRows;
using testing::Rng;

// The rule i >= m·j + m - 1 against its meaning: every token entry j pools (CSA: 4j-4..4j+3,
// HCA: 128j..128j+127) is at a position <= i. Exhaustive over small i, j.
TEST(Causality, IndexRuleMatchesWindowDefinition) {
  for (int m : {4, 128}) {
    for (int64_t i = 0; i < 700; ++i) {
      int64_t count = 0;
      for (int64_t j = 0; j < 200; ++j) {
        const int64_t last_token = m == 4 ? 4 * j + 3 : 128 * j + 127;
        EXPECT_EQ(EntryVisible(i, j, m), last_token <= i) << "m " << m << " i " << i << " j " << j;
        count += EntryVisible(i, j, m) ? 1 : 0;
      }
      EXPECT_EQ(NumVisibleEntries(i, m), count);
    }
  }
  EXPECT_FALSE(EntryVisible(-1, 0, 4));
  EXPECT_FALSE(EntryVisible(10, -1, 4));
}

TEST(Indexer, ScoresMatchFloat64Reference) {
  Rng rng;
  const int H = 64, d = 128;
  const int64_t n = 40, pos = 101;  // 25 visible entries, 15 invisible
  std::vector<float> q = rng.NormalVector(H * d), w = rng.NormalVector(H),
                     k = rng.NormalVector(n * d);
  std::vector<float> got(n, 12345.0f);
  ASSERT_TRUE(IndexerScores({pos, H, d, q.data(), w.data()}, k.data(), n, got.data()).ok());
  for (int64_t s = 0; s < n; ++s) {
    if (s >= (pos + 1) / 4) {
      EXPECT_EQ(got[s], -std::numeric_limits<float>::infinity()) << s;
      continue;
    }
    double ref = 0, mag = 0;
    for (int h = 0; h < H; ++h) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[h * d + i]) * k[s * d + i];
      ref += double(w[h]) / std::sqrt(64.0) * std::max(dot, 0.0) / std::sqrt(128.0);
      mag += std::abs(double(w[h])) / 8.0 * std::abs(dot) / std::sqrt(128.0);
    }
    // fp32 dot products of 128 terms and a 64-term sum: error <= ~200·2^-24 relative to the
    // sum of magnitudes; 1e-5·(1 + mag) is a safe bound.
    EXPECT_NEAR(got[s], ref, 1e-5 * (1 + mag)) << "entry " << s << " " << rng.SeedText();
  }
}

TEST(Indexer, TopKEqualsBruteForceSortWithDeterministicTies) {
  Rng rng;
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t n = rng.Int(0, 60);
    const int k = static_cast<int>(rng.Int(1, 70));
    std::vector<float> s(n);
    // Few distinct values so ties are common; some -inf (invisible).
    for (float& v : s) {
      const int64_t r = rng.Int(0, 6);
      v = r == 0 ? -std::numeric_limits<float>::infinity() : static_cast<float>(r) * 0.5f;
    }
    std::vector<int32_t> got(k, 777);
    ASSERT_TRUE(TopKIndices(s.data(), n, k, got.data()).ok());
    // Brute force: stable sort of indices by descending score keeps lower index first.
    std::vector<int32_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::stable_sort(all.begin(), all.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
    std::vector<int32_t> want;
    for (int32_t j : all)
      if (s[j] != -std::numeric_limits<float>::infinity() && static_cast<int>(want.size()) < k)
        want.push_back(j);
    while (static_cast<int>(want.size()) < k) want.push_back(-1);
    EXPECT_EQ(got, want) << "trial " << trial << " " << rng.SeedText();
  }
  float nan_scores[2] = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  int32_t out[2];
  EXPECT_EQ(TopKIndices(nan_scores, 2, 2, out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TopKIndices(nan_scores, 1, 0, out).code(), absl::StatusCode::kInvalidArgument);
}

// End to end through one CSA layer (main compressor, indexer compressor, indexer top-k,
// sparse attention): the output at query i is bit-identical whatever tokens after i hold, and
// changes when token i itself changes. Exhaustive over all (i, t > i) for a short sequence.
TEST(Causality, CsaLayerOutputIgnoresFutureTokens) {
  Rng rng;
  const int64_t n = 22;
  const int H = 2, IH = 4, topk = 3;
  const auto main_c = MakeCompressor(rng, 4, 512);
  const auto idx_c = MakeCompressor(rng, 4, 128);
  std::vector<float> mc, mz, ic, iz;
  MakeRows(rng, n, 1024, &mc, &mz);
  MakeRows(rng, n, 256, &ic, &iz);
  std::vector<float> kv = rng.NormalVector(n * 512), q = rng.NormalVector(n * H * 512);
  std::vector<float> iq = rng.NormalVector(n * IH * 128), iw = rng.NormalVector(n * IH);
  const std::vector<float> sink = rng.NormalVector(H);
  auto run = [&](const std::vector<float>& mc_, const std::vector<float>& mz_,
                 const std::vector<float>& ic_, const std::vector<float>& iz_,
                 const std::vector<float>& kv_, int64_t i, std::vector<float>* out) {
    std::vector<float> entries, keys;
    ASSERT_TRUE(main_c.comp.CompressAll(mc_.data(), mz_.data(), n, &entries).ok());
    ASSERT_TRUE(idx_c.comp.CompressAll(ic_.data(), iz_.data(), n, &keys).ok());
    const int64_t ne = n / 4;
    std::vector<float> scores(ne);
    ASSERT_TRUE(
        IndexerScores({i, IH, 128, &iq[i * IH * 128], &iw[i * IH]}, keys.data(), ne, scores.data())
            .ok());
    std::vector<int32_t> pick(topk);
    ASSERT_TRUE(TopKIndices(scores.data(), ne, topk, pick.data()).ok());
    const int64_t nw = std::min<int64_t>(128, i + 1);
    SparseAttentionArgs a{.position = i,
                          .n_heads = H,
                          .q = &q[i * H * 512],
                          .sink = sink.data(),
                          .entries = entries.data(),
                          .n_entries = ne,
                          .ratio = 4,
                          .indices = pick.data(),
                          .n_indices = topk,
                          .window = &kv_[(i - nw + 1) * 512],
                          .n_window = nw};
    out->assign(H * 512, 0.0f);
    absl::Status s = SparseAttention(a, main_c.comp.rope_freqs(), out->data());
    ASSERT_TRUE(s.ok()) << s;
  };
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> base, other;
    run(mc, mz, ic, iz, kv, i, &base);
    for (int64_t t = i; t < n; ++t) {
      auto bump = [&](std::vector<float> v, int width) {
        for (int e = 0; e < width; ++e) v[t * width + e] += 0.75f;
        return v;
      };
      run(bump(mc, 1024), bump(mz, 1024), bump(ic, 256), bump(iz, 256), bump(kv, 512), i, &other);
      const bool same = std::memcmp(base.data(), other.data(), base.size() * 4) == 0;
      EXPECT_EQ(same, t > i) << "query " << i << " perturbed token " << t;
    }
  }
}

// The same for an HCA layer (all visible entries, no indexer), at queries around the
// 128-token window boundaries; every later token is perturbed in turn.
TEST(Causality, HcaLayerOutputIgnoresFutureTokens) {
  Rng rng;
  const int64_t n = 280;
  const int H = 2;
  const auto hca = MakeCompressor(rng, 128, 512);
  std::vector<float> c, z;
  MakeRows(rng, n, 512, &c, &z);
  std::vector<float> kv = rng.NormalVector(n * 512), q = rng.NormalVector(n * H * 512);
  const std::vector<float> sink = rng.NormalVector(H);
  auto run = [&](const std::vector<float>& c_, const std::vector<float>& z_,
                 const std::vector<float>& kv_, int64_t i, std::vector<float>* out) {
    std::vector<float> entries;
    ASSERT_TRUE(hca.comp.CompressAll(c_.data(), z_.data(), n, &entries).ok());
    const std::vector<int32_t> pick = AllVisibleIndices(i, 128);
    const int64_t nw = std::min<int64_t>(128, i + 1);
    SparseAttentionArgs a{.position = i,
                          .n_heads = H,
                          .q = &q[i * H * 512],
                          .sink = sink.data(),
                          .entries = entries.data(),
                          .n_entries = n / 128,
                          .ratio = 128,
                          .indices = pick.data(),
                          .n_indices = int64_t(pick.size()),
                          .window = &kv_[(i - nw + 1) * 512],
                          .n_window = nw};
    out->assign(H * 512, 0.0f);
    ASSERT_TRUE(SparseAttention(a, hca.comp.rope_freqs(), out->data()).ok());
  };
  for (int64_t i : {0, 126, 127, 128, 200, 254, 255, 256, 279}) {
    std::vector<float> base, other;
    run(c, z, kv, i, &base);
    for (int64_t t = i; t < n; t += (t < i + 3 ? 1 : 5)) {
      auto bump = [&](std::vector<float> v) {
        for (int e = 0; e < 512; ++e) v[t * 512 + e] += 0.75f;
        return v;
      };
      run(bump(c), bump(z), bump(kv), i, &other);
      const bool same = std::memcmp(base.data(), other.data(), base.size() * 4) == 0;
      EXPECT_EQ(same, t > i) << "query " << i << " perturbed token " << t;
    }
  }
}

// Scores over FP8 key records for several queries at once equal IndexerScores over the
// dequantized keys, per query, bit for bit (positions from "sees nothing" to "sees all", key
// counts across the 64-key dequantization blocks).
TEST(Indexer, Fp8RecordScoresEqualFloatScores) {
  Rng rng;
  const int H = 4, d = 128;
  const int64_t n = 150;
  std::vector<float> raw = rng.NormalVector(n * d);
  std::vector<uint8_t> codes(n * d), scales(n * 4);
  ASSERT_TRUE(EncodeIndexerRecords(raw.data(), n, codes.data(), scales.data()).ok());
  std::vector<float> keys(n * d);
  DequantizeIndexerRecords(codes.data(), scales.data(), n, keys.data());
  const std::vector<int64_t> positions = {0, 3, 130, 257, 598, 599, 2000};
  std::vector<float> q = rng.NormalVector(positions.size() * H * d);
  std::vector<float> w = rng.NormalVector(positions.size() * H);
  std::vector<IndexerQuery> qs;
  for (size_t i = 0; i < positions.size(); ++i) {
    qs.push_back({.position = positions[i],
                  .n_heads = H,
                  .head_dim = d,
                  .q = &q[i * H * d],
                  .weights = &w[i * H]});
  }
  std::vector<float> got(qs.size() * n, NAN);
  ASSERT_TRUE(IndexerScoresFp8(qs.data(), static_cast<int64_t>(qs.size()), codes.data(),
                               scales.data(), n, got.data())
                  .ok());
  for (size_t i = 0; i < qs.size(); ++i) {
    std::vector<float> want(n, NAN);
    ASSERT_TRUE(IndexerScores(qs[i], keys.data(), n, want.data()).ok());
    for (int64_t s = 0; s < n; ++s) {
      ASSERT_EQ(std::memcmp(&got[i * n + s], &want[s], 4), 0) << "query " << i << " key " << s;
    }
  }
  // A visible key whose scale is 2^127 dequantizes to Inf: refused by name.
  const float huge = 0x1p127f;
  std::memcpy(&scales[4 * 5], &huge, 4);
  absl::Status s = IndexerScoresFp8(qs.data(), static_cast<int64_t>(qs.size()), codes.data(),
                                    scales.data(), n, got.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("indexer key"), std::string::npos) << s;
}

}  // namespace
}  // namespace kv::kernels::v4
