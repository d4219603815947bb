// MLA absorbed attention (kernels/mla_attention.h) against a naive float64 reference.
//
// Bounds, per cache dtype:
//  * f32 keys (contiguous): only f32 arithmetic differs from the reference. A score
//    carries <= 2*576*u*scale*Σ|q||k| error (u = 2^-24), which moves each softmax weight by
//    a factor within e^{±2δ}; the value sum (256-key chunks) adds <= (256 + 8*chunks)*u
//    relative. So |out - ref| <= (e^{2δ} - 1 + (256 + 8*chunks + 16) u) * Σ_s p_s |c_s,d|.
//  * fp8 / bf16 pages vs the reference on the ORIGINAL f32 keys: δ also includes the
//    quantisation error of the scores, scale*Σ_j q_j Δk_j with |Δk_j| <= e_j = max(2^-4|k_j|,
//    tile_scale*2^-10) for e4m3 latents and 2^-8|k_j| for bf16 (rope is bf16 in both); the
//    value term adds max_s |Δc_s,d|. The worst case Σ|q_j| e_j is vacuous for fp8 (δ ~ 3), but
//    RNE errors are zero-mean and independent across j, so Hoeffding gives
//    |Σ q_j Δk_j| <= sqrt(2 ln(2/p) Σ q_j² e_j²) with p = 1e-12 per score: 7.5 sqrt(Σ q²e²).
//    The bound is computed per element, not guessed.
//  * Against the reference on the DEQUANTISED keys (what the kernel reads, exactly), fp8
//    and bf16 pages obey the f32 bound.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/mla_attention.h"
#include "kernels/mla_record.h"
#include "kernels/paged_kv.h"
#include "kernels/test_util.h"

namespace kv::kernels {
namespace {

using testing::Rng;
constexpr double kU = 0x1p-24;
constexpr float kScale = 0.13523378f;

// keys[s] = 576 values; key_err[s] = per-element bound on |stored - keys| (0 when exact).
struct RefResult {
  std::vector<double> out, lse, bound, lse_bound;
};

RefResult Reference(const std::vector<float>& q, int64_t num_q, int heads, int64_t start_pos,
                    const std::vector<float>& keys, const std::vector<float>& key_err) {
  RefResult r;
  r.out.resize(num_q * heads * 512);
  r.bound.resize(num_q * heads * 512);
  r.lse.resize(num_q * heads);
  r.lse_bound.resize(num_q * heads);
  for (int64_t i = 0; i < num_q; ++i) {
    const int64_t n = start_pos + i + 1;
    const double chunks = std::ceil(n / 256.0);  // the kernel's key chunk
    for (int h = 0; h < heads; ++h) {
      const float* qv = &q[(i * heads + h) * 576];
      std::vector<double> s(n);
      double delta = 0;
      for (int64_t t = 0; t < n; ++t) {
        double dot = 0, mag = 0, qerr2 = 0, qerr1 = 0;
        for (int j = 0; j < 576; ++j) {
          const double e = key_err[t * 576 + j];
          dot += double(qv[j]) * keys[t * 576 + j];
          mag += std::fabs(double(qv[j]) * keys[t * 576 + j]);
          qerr2 += double(qv[j]) * qv[j] * e * e;
          qerr1 += std::fabs(double(qv[j])) * e;
        }
        s[t] = dot * kScale;
        const double quant = 7.5 * std::sqrt(qerr2);
        delta = std::max(delta, kScale * (quant + 2 * 576 * kU * (mag + qerr1)));
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double l = 0;
      for (double& v : s) l += (v = std::exp(v - mx));
      r.lse[i * heads + h] = mx + std::log(l);
      r.lse_bound[i * heads + h] = delta + 1e-5;
      for (int d = 0; d < 512; ++d) {
        double o = 0, maxc = 0, maxdc = 0;
        for (int64_t t = 0; t < n; ++t) {
          o += s[t] / l * keys[t * 576 + d];
          // Σ_s p_s |c_s,d| (<= max |c|): the weight perturbations act on this mean.
          maxc += s[t] / l * (std::fabs(double(keys[t * 576 + d])) + key_err[t * 576 + d]);
          maxdc = std::max(maxdc, double(key_err[t * 576 + d]));
        }
        const size_t k = (i * heads + h) * 512 + d;
        r.out[k] = o;
        r.bound[k] = (std::expm1(2 * delta) + (256 + 8 * chunks + 16) * kU) * maxc + maxdc;
      }
    }
  }
  return r;
}

void ExpectWithin(const std::vector<float>& out, const std::vector<float>& lse,
                  const RefResult& r) {
  for (size_t k = 0; k < out.size(); ++k) {
    ASSERT_FALSE(std::isnan(out[k])) << k;
    ASSERT_LE(std::fabs(out[k] - r.out[k]), r.bound[k]) << "element " << k;
  }
  for (size_t k = 0; k < lse.size(); ++k) {
    ASSERT_LE(std::fabs(lse[k] - r.lse[k]), r.lse_bound[k]) << "lse " << k;
  }
}

// Keys with a varied magnitude per token and tile (exercises the fp8 scales).
std::vector<float> RandomKeys(Rng& rng, int64_t n) {
  std::vector<float> k(n * 576);
  for (int64_t t = 0; t < n; ++t) {
    for (int tile = 0; tile < 5; ++tile) {
      const float mag = std::ldexp(1.0f, static_cast<int>(rng.Int(-3, 2)));
      const int len = tile < 4 ? 128 : 64;
      for (int j = 0; j < len; ++j) k[t * 576 + tile * 128 + j] = rng.Normal() * mag;
    }
  }
  return k;
}

TEST(MlaAttention, ContiguousF32MatchesFloat64) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int heads = 4;
  const int64_t start = 100, nq = 37;
  std::vector<float> keys = RandomKeys(rng, start + nq), q = rng.NormalVector(nq * heads * 576);
  std::vector<float> out(nq * heads * 512, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(nq * heads, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(MlaContiguousAttention(q.data(), nq, heads, start, keys.data(), 576, kScale,
                                     out.data(), lse.data())
                  .ok());
  ExpectWithin(out, lse, Reference(q, nq, heads, start, keys, std::vector<float>(keys.size())));
}

// Writes keys into a pool through a shuffled block table; returns the table.
std::vector<int32_t> FillPages(Rng& rng, KvLayout layout, const std::vector<float>& keys, int64_t n,
                               std::vector<uint8_t>* pool, PagedKvView* view) {
  const int pt = 64, rb = RecordBytes(layout);
  const int64_t blocks = (n + pt - 1) / pt + 2;
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng.gen());
  const int64_t stride = 3 * int64_t{pt} * rb + 16;  // 3 layers; we use layer 2
  pool->assign(blocks * stride, 0x5A);
  view->pool = pool->data();
  view->block_stride = stride;
  view->layer_offset = 2 * int64_t{pt} * rb;
  view->page_tokens = pt;
  view->layout = layout;
  view->num_physical_blocks = blocks;
  view->block_table = nullptr;
  std::vector<int64_t> slots(n);
  for (int64_t t = 0; t < n; ++t) slots[t] = int64_t{table[t / pt]} * pt + t % pt;
  EXPECT_TRUE(AppendMlaTokens(*view, slots.data(), n,
                              MlaSourceF32{keys.data(), 576, keys.data() + 512, 576})
                  .ok());
  return table;
}

std::vector<float> KeyErrorBound(KvLayout layout, const std::vector<float>& keys, int64_t n) {
  std::vector<float> err(keys.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int j = 0; j < 576; ++j) {
      const double x = std::fabs(double(keys[t * 576 + j]));
      double e = std::ldexp(x, -8);  // bf16 RNE (latent of bf16 pages, rope of both)
      if (layout == KvLayout::kMlaFp8_656 && j < 512) {
        double amax = 0;
        for (int k = j / 128 * 128; k < j / 128 * 128 + 128; ++k) {
          amax = std::max(amax, std::fabs(double(keys[t * 576 + k])));
        }
        const double scale =
            std::ldexp(1.0, static_cast<int>(std::ceil(std::log2(std::max(amax, 1e-4) / 448.0))));
        e = std::max(std::ldexp(x, -4), std::ldexp(scale, -10));
      }
      err[t * 576 + j] = static_cast<float>(e * (1 + 1e-6));
    }
  }
  return err;
}

class PagedAttention : public ::testing::TestWithParam<KvLayout> {};

TEST_P(PagedAttention, MatchesFloat64WithinQuantisationBound) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const KvLayout layout = GetParam();
  const int heads = 8;
  const int64_t start = 500, nq = 30, n = start + nq;
  std::vector<float> keys = RandomKeys(rng, n), q = rng.NormalVector(nq * heads * 576);
  std::vector<uint8_t> pool;
  PagedKvView view;
  std::vector<int32_t> table = FillPages(rng, layout, keys, n, &pool, &view);
  view.block_table = table.data();
  view.num_table_blocks = static_cast<int64_t>(table.size());
  std::vector<float> out(nq * heads * 512, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(nq * heads, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(
      MlaPagedAttention(q.data(), nq, heads, start, view, kScale, out.data(), lse.data()).ok());
  // Against the original keys: the quantisation-aware bound.
  ExpectWithin(out, lse, Reference(q, nq, heads, start, keys, KeyErrorBound(layout, keys, n)));
  // Against the stored keys decoded exactly: the f32-only bound.
  std::vector<float> stored(n * 576);
  ASSERT_TRUE(GatherMlaTokens(view, 0, n, stored.data(), 576).ok());
  ExpectWithin(out, lse, Reference(q, nq, heads, start, stored, std::vector<float>(stored.size())));

  // Chunking invariance: per-query and 7-query calls give bit-identical outputs, and
  // decode of the last token equals the last query.
  for (int64_t chunk : {1, 7}) {
    std::vector<float> out2(out.size(), -1.0f), lse2(lse.size(), -1.0f);
    for (int64_t i = 0; i < nq; i += chunk) {
      const int64_t c = std::min(chunk, nq - i);
      ASSERT_TRUE(MlaPagedAttention(&q[i * heads * 576], c, heads, start + i, view, kScale,
                                    &out2[i * heads * 512], &lse2[i * heads])
                      .ok());
    }
    EXPECT_EQ(0, std::memcmp(out.data(), out2.data(), out.size() * 4)) << "chunk " << chunk;
    EXPECT_EQ(0, std::memcmp(lse.data(), lse2.data(), lse.size() * 4)) << "chunk " << chunk;
  }
  std::vector<float> dec(heads * 512), dlse(heads);
  ASSERT_TRUE(MlaDecodeAttention(&q[(nq - 1) * heads * 576], heads, view, n, kScale, dec.data(),
                                 dlse.data())
                  .ok());
  EXPECT_EQ(0, std::memcmp(dec.data(), &out[(nq - 1) * heads * 512], dec.size() * 4));
}

TEST_P(PagedAttention, RejectsBadArguments) {
  Rng rng;
  const KvLayout layout = GetParam();
  std::vector<float> keys = RandomKeys(rng, 70), q = rng.NormalVector(2 * 576), out(2 * 512);
  std::vector<uint8_t> pool;
  PagedKvView view;
  std::vector<int32_t> table = FillPages(rng, layout, keys, 70, &pool, &view);
  view.block_table = table.data();
  view.num_table_blocks = 1;  // covers 64 tokens only
  EXPECT_FALSE(MlaDecodeAttention(q.data(), 2, view, 70, kScale, out.data(), nullptr).ok());
  view.num_table_blocks = static_cast<int64_t>(table.size());
  EXPECT_TRUE(MlaDecodeAttention(q.data(), 2, view, 70, kScale, out.data(), nullptr).ok());
  table[1] = 1000;
  EXPECT_FALSE(MlaDecodeAttention(q.data(), 2, view, 70, kScale, out.data(), nullptr).ok());
  EXPECT_TRUE(MlaDecodeAttention(q.data(), 2, view, 64, kScale, out.data(), nullptr).ok());
  EXPECT_FALSE(MlaDecodeAttention(q.data(), 2, view, 0, kScale, out.data(), nullptr).ok());
  EXPECT_FALSE(MlaDecodeAttention(q.data(), 0, view, 10, kScale, out.data(), nullptr).ok());
  EXPECT_FALSE(MlaDecodeAttention(q.data(), 2, view, 10, 0.0f, out.data(), nullptr).ok());
  EXPECT_FALSE(MlaDecodeAttention(q.data(), 2, view, 10, std::nanf(""), out.data(), nullptr).ok());
  EXPECT_FALSE(MlaDecodeAttention(nullptr, 2, view, 10, kScale, out.data(), nullptr).ok());
  q[576 + 3] = std::numeric_limits<float>::infinity();
  absl::Status st = MlaDecodeAttention(q.data(), 2, view, 10, kScale, out.data(), nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("head 1"), std::string::npos) << st;
}

INSTANTIATE_TEST_SUITE_P(Layouts, PagedAttention,
                         ::testing::Values(KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152));

}  // namespace
}  // namespace kv::kernels
