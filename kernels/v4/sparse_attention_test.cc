#include "kernels/v4/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "kernels/v4/indexer.h"
#include "kernels/v4/v4_config.h"
#include "kernels/v4/v4_record.h"
#include "kernels/v4/v4_test_util.h"

namespace kv::kernels::v4 {
namespace {

using testing::Rng;

// float64 reference of §4.2 for one head set: one softmax over the chosen entries and the
// window, sink in the denominator only, then RoPE(o, -i) on the trailing 64 dims.
std::vector<double> Reference(const SparseAttentionArgs& a, const std::vector<double>& freqs) {
  const int d = a.head_dim;
  std::vector<const float*> kv;
  for (int64_t t = 0; t < a.n_indices; ++t)
    if (a.indices[t] >= 0) kv.push_back(a.entries + int64_t{a.indices[t]} * d);
  for (int64_t t = 0; t < a.n_window; ++t) kv.push_back(a.window + t * d);
  std::vector<double> out(int64_t{a.n_heads} * d, 0.0);
  for (int h = 0; h < a.n_heads; ++h) {
    std::vector<double> l(kv.size());
    double mx = a.sink[h];
    for (size_t s = 0; s < kv.size(); ++s) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(a.q[h * d + i]) * kv[s][i];
      l[s] = dot / std::sqrt(double(d));
      mx = std::max(mx, l[s]);
    }
    double den = std::exp(a.sink[h] - mx);
    for (size_t s = 0; s < kv.size(); ++s) den += std::exp(l[s] - mx);
    double* o = &out[h * d];
    for (size_t s = 0; s < kv.size(); ++s)
      for (int i = 0; i < d; ++i) o[i] += std::exp(l[s] - mx) / den * kv[s][i];
    for (int k = 0; k < a.rope_dim / 2; ++k) {
      const double ang = -double(a.position) * freqs[k];
      const int r = d - a.rope_dim + 2 * k;
      const double x0 = o[r], x1 = o[r + 1];
      o[r] = x0 * std::cos(ang) - x1 * std::sin(ang);
      o[r + 1] = x0 * std::sin(ang) + x1 * std::cos(ang);
    }
  }
  return out;
}

struct Case {
  int ratio;
  int64_t position;
};

TEST(SparseAttention, MatchesFloat64ReferenceWithSinkAndInverseRope) {
  Rng rng;
  const V4Config cfg = V4FlashConfig();
  const auto freqs = *RopeFrequencies(CompressRopeParams(cfg));
  for (const Case c : {Case{4, 300}, Case{128, 700}, Case{0, 50}, Case{4, 2}}) {
    const int H = 4, d = 512;
    const int64_t n_entries = c.ratio == 0 ? 0 : NumVisibleEntries(c.position, c.ratio) + 3;
    std::vector<float> entries = rng.NormalVector(std::max<int64_t>(1, n_entries) * d);
    std::vector<int32_t> idx;
    if (c.ratio == 128) idx = AllVisibleIndices(c.position, 128);
    if (c.ratio == 4) {
      idx = AllVisibleIndices(c.position, 4);
      std::shuffle(idx.begin(), idx.end(), rng.gen());
      idx.resize(std::min<size_t>(idx.size(), 10));
      idx.push_back(-1);  // an unusable pick is skipped
    }
    const int64_t nw = std::min<int64_t>(128, c.position + 1);
    std::vector<float> window = rng.NormalVector(nw * d), q = rng.NormalVector(H * d, 2.0f);
    // Sinks from "negligible" to "dominant" so the denominator term matters.
    std::vector<float> sink = {-5.0f, 0.0f, 3.0f, 8.0f};
    SparseAttentionArgs a{.position = c.position,
                          .n_heads = H,
                          .q = q.data(),
                          .sink = sink.data(),
                          .entries = entries.data(),
                          .n_entries = n_entries,
                          .ratio = c.ratio,
                          .indices = idx.data(),
                          .n_indices = static_cast<int64_t>(idx.size()),
                          .window = window.data(),
                          .n_window = nw};
    std::vector<float> out(H * d, NAN);  // poisoned: unwritten elements show
    ASSERT_TRUE(SparseAttention(a, freqs, out.data()).ok());
    const std::vector<double> ref = Reference(a, freqs);
    // fp32 dots of 512 terms (|logit| error ~1e-6) and fp32 weighted sums of <= 140 rows of
    // O(1) values: |err| <= ~1e-5; 1e-4 leaves margin, while dropping the sink or the inverse
    // RoPE changes outputs by >= 1e-2.
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_FALSE(std::isnan(out[i])) << i;
      ASSERT_NEAR(out[i], ref[i], 1e-4)
          << "ratio " << c.ratio << " element " << i << " " << rng.SeedText();
    }
  }
}

TEST(SparseAttention, RefusesBadSelections) {
  Rng rng;
  const auto freqs = *RopeFrequencies(CompressRopeParams(V4Config{}));
  std::vector<float> entries = rng.NormalVector(10 * 512), window = rng.NormalVector(128 * 512);
  std::vector<float> q = rng.NormalVector(512), sink = {0.0f}, out(512);
  auto args = [&](const std::vector<int32_t>& idx, int64_t pos, int64_t nw) {
    return SparseAttentionArgs{.position = pos,
                               .q = q.data(),
                               .sink = sink.data(),
                               .entries = entries.data(),
                               .n_entries = 10,
                               .ratio = 4,
                               .indices = idx.data(),
                               .n_indices = int64_t(idx.size()),
                               .window = window.data(),
                               .n_window = nw};
  };
  std::vector<int32_t> ok = {0, 3}, future = {4}, dup = {1, 1}, range = {12}, neg = {-2};
  EXPECT_TRUE(SparseAttention(args(ok, 18, 19), freqs, out.data()).ok());
  // Entry 4 closes at token 19: invisible to query 18.
  absl::Status s = SparseAttention(args(future, 18, 19), freqs, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not visible"), std::string::npos) << s;
  EXPECT_TRUE(SparseAttention(args(future, 19, 20), freqs, out.data()).ok());
  EXPECT_FALSE(SparseAttention(args(dup, 18, 19), freqs, out.data()).ok());
  EXPECT_FALSE(SparseAttention(args(range, 200, 128), freqs, out.data()).ok());
  EXPECT_FALSE(SparseAttention(args(neg, 18, 19), freqs, out.data()).ok());
  s = SparseAttention(args(ok, 18, 18), freqs, out.data());
  EXPECT_NE(s.message().find("n_window"), std::string::npos) << s;
}

// Entries given as FP8 records give the same output bits as the same entries dequantized and
// given as floats (the model's FP8 cache reads records directly); a corrupt scale that
// dequantizes to Inf is refused by name.
TEST(SparseAttention, Fp8RecordEntriesEqualTheirDequantizedFloats) {
  Rng rng;
  const V4Config cfg = V4FlashConfig();
  const auto freqs = *RopeFrequencies(CompressRopeParams(cfg));
  for (const Case c : {Case{4, 300}, Case{128, 700}}) {
    const int H = 4, d = 512;
    const int64_t n_entries = NumVisibleEntries(c.position, c.ratio) + 3;
    std::vector<float> raw = rng.NormalVector(n_entries * d);
    std::vector<uint8_t> tok(n_entries * kV4TokenBytes), sc(n_entries * kV4ScaleBytes);
    ASSERT_TRUE(EncodeV4Records(raw.data(), n_entries, tok.data(), sc.data()).ok());
    std::vector<float> entries(n_entries * d);
    DequantizeV4Records(tok.data(), sc.data(), n_entries, entries.data());
    std::vector<int32_t> idx = AllVisibleIndices(c.position, c.ratio);
    std::shuffle(idx.begin(), idx.end(), rng.gen());
    if (c.ratio == 4) idx.resize(std::min<size_t>(idx.size(), 10));
    idx.push_back(-1);
    const int64_t nw = std::min<int64_t>(128, c.position + 1);
    std::vector<float> window = rng.NormalVector(nw * d), q = rng.NormalVector(H * d, 2.0f);
    std::vector<float> sink = {-5.0f, 0.0f, 3.0f, 8.0f};
    SparseAttentionArgs a{.position = c.position,
                          .n_heads = H,
                          .q = q.data(),
                          .sink = sink.data(),
                          .entries = entries.data(),
                          .n_entries = n_entries,
                          .ratio = c.ratio,
                          .indices = idx.data(),
                          .n_indices = static_cast<int64_t>(idx.size()),
                          .window = window.data(),
                          .n_window = nw};
    std::vector<float> want(H * d, NAN), got(H * d, NAN);
    ASSERT_TRUE(SparseAttention(a, freqs, want.data()).ok());
    a.entries = nullptr;
    a.entry_tok = tok.data();
    a.entry_sc = sc.data();
    ASSERT_TRUE(SparseAttention(a, freqs, got.data()).ok());
    for (int i = 0; i < H * d; ++i) ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0) << i;
    // Scale byte 0xFE (2^127) of a picked entry overflows its values to Inf: refused.
    sc[idx[0] * kV4ScaleBytes] = 0xFE;
    absl::Status s = SparseAttention(a, freqs, got.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("selected entry"), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace kv::kernels::v4
