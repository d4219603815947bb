// GPU compressor and sparse attention vs their CPU references on fresh random inputs.
// Skips when no CUDA device is present.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/indexer.h"
#include "kernels/v4/sparse_attention.h"
#include "kernels/v4/v4_cuda.h"
#include "kernels/v4/v4_test_util.h"

namespace kv::kernels::v4 {
namespace {

using testing::MakeCompressor;
using testing::MakeRows;
using testing::Rng;

template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, v.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}

TEST(CompressorCuda, MatchesCpuReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  Rng rng;
  for (int ratio : {4, 128}) {
    for (int dim : {512, 128}) {
      const auto tc = MakeCompressor(rng, ratio, dim);
      const int64_t ne = ratio == 4 ? 300 : 9, n = ne * ratio;
      std::vector<float> c, z, want;
      MakeRows(rng, n, tc.comp.in_width(), &c, &z);
      ASSERT_TRUE(tc.comp.CompressAll(c.data(), z.data(), n, &want).ok());
      float *dc = ToDevice(c), *dz = ToDevice(z), *db = ToDevice(tc.bias), *dn = ToDevice(tc.norm);
      float* dcs = ToDevice(tc.comp.EntryRopeTable(ne));
      float* dout = ToDevice(std::vector<float>(ne * dim, NAN));  // poisoned
      ASSERT_EQ(cuda::CompressEntries(ratio, dim, 64, tc.comp.spec().eps, dc, dz, db, dn, dcs, ne,
                                      dout, nullptr),
                cudaSuccess);
      std::vector<float> got(ne * dim);
      ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      for (float* p : {dc, dz, db, dn, dcs, dout}) cudaFree(p);
      // expf vs std::exp (<= 2 ulp) and FMA contraction: a few 1e-7 relative; 1e-5 bound.
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << i;
        ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i])))
            << "ratio " << ratio << " dim " << dim << " elem " << i << " " << rng.SeedText();
      }
    }
  }
  EXPECT_EQ(cuda::CompressEntries(8, 512, 64, 1e-6f, nullptr, nullptr, nullptr, nullptr, nullptr, 1,
                                  nullptr, nullptr),
            cudaErrorInvalidValue);
}

// One batched GPU call against the CPU reference query by query, on fresh random inputs
// with a poisoned output. Queries sit at consecutive positions first_pos + t; their windows
// are either slices of one contiguous kv array (stride head_dim, as in prefill) or separate
// copies. Each query picks n_picks random visible ratio-4 entries, every 7th skipped (-1).
struct SparseCase {
  int n_queries, n_heads, head_dim;
  int64_t first_pos, n_picks;
  bool contiguous_window;
};

void CheckSparseCase(Rng& rng, const SparseCase& c) {
  const int Q = c.n_queries, H = c.n_heads, d = c.head_dim, R = 64;
  const int64_t last = c.first_pos + Q - 1, nw = std::min<int64_t>(128, c.first_pos + 1);
  ASSERT_EQ(nw, std::min<int64_t>(128, last + 1)) << "one window length for the batch";
  const int64_t ne = NumVisibleEntries(last, 4), k = c.n_picks;
  const auto freqs = *RopeFrequencies(CompressRopeParams(V4Config{}));
  std::vector<float> entries = rng.NormalVector(ne * d);
  std::vector<float> q = rng.NormalVector(int64_t{Q} * H * d, 2.0f),
                     sink = rng.NormalVector(H, 3.0f);
  const int64_t stride = c.contiguous_window ? d : nw * d;
  std::vector<float> window = rng.NormalVector((Q - 1) * stride + nw * d);
  std::vector<int32_t> idx(Q * k);
  std::vector<float> cs(Q * R), want(int64_t{Q} * H * d);
  for (int t = 0; t < Q; ++t) {
    const int64_t pos = c.first_pos + t;
    std::vector<int32_t> vis = AllVisibleIndices(pos, 4);
    ASSERT_GE(int64_t(vis.size()), k);
    std::shuffle(vis.begin(), vis.end(), rng.gen());
    for (int64_t s = 0; s < k; ++s) idx[t * k + s] = s % 7 == 3 ? -1 : vis[s];
    for (int j = 0; j < R / 2; ++j) {
      cs[t * R + 2 * j] = static_cast<float>(std::cos(-double(pos) * freqs[j]));
      cs[t * R + 2 * j + 1] = static_cast<float>(std::sin(-double(pos) * freqs[j]));
    }
    SparseAttentionArgs a{.position = pos,
                          .n_heads = H,
                          .head_dim = d,
                          .rope_dim = R,
                          .q = q.data() + int64_t{t} * H * d,
                          .sink = sink.data(),
                          .entries = entries.data(),
                          .n_entries = ne,
                          .ratio = k > 0 ? 4 : 0,
                          .indices = idx.data() + t * k,
                          .n_indices = k,
                          .window = window.data() + t * stride,
                          .n_window = nw};
    ASSERT_TRUE(SparseAttention(a, freqs, want.data() + int64_t{t} * H * d).ok());
  }
  float *dq = ToDevice(q), *ds = ToDevice(sink), *de = ToDevice(entries), *dw = ToDevice(window);
  float *dcs = ToDevice(cs), *dout = ToDevice(std::vector<float>(want.size(), NAN));
  int32_t* di = ToDevice(idx);
  ASSERT_EQ(cuda::SparseAttentionBatch(dq, ds, Q, H, d, R, de, ne, di, k, dw, nw, stride, dcs, dout,
                                       nullptr),
            cudaSuccess);
  std::vector<float> got(want.size());
  ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (float* p : {dq, ds, de, dw, dcs, dout}) cudaFree(p);
  cudaFree(di);
  // Different summation orders over head_dim-term dots and up to ~600 weighted rows: ~1e-6
  // absolute on outputs of magnitude ~1.
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << i;
    ASSERT_NEAR(got[i], want[i], 2e-5) << "queries " << Q << " heads " << H << " d " << d
                                       << " element " << i << " " << rng.SeedText();
  }
}

TEST(SparseAttentionCuda, MatchesCpuReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  Rng rng;
  // One query, 8 heads (half a head group), rows split over blocks + combine.
  CheckSparseCase(rng, {.n_queries = 1,
                        .n_heads = 8,
                        .head_dim = 512,
                        .first_pos = 2000,
                        .n_picks = 300,
                        .contiguous_window = false});
  // Prefill-like batch: overlapping windows, 20 heads (a full and a partial group).
  CheckSparseCase(rng, {.n_queries = 6,
                        .n_heads = 20,
                        .head_dim = 512,
                        .first_pos = 1990,
                        .n_picks = 200,
                        .contiguous_window = true});
  // V4's decode shape: 64 heads, top-512 + 128 window.
  CheckSparseCase(rng, {.n_queries = 2,
                        .n_heads = 64,
                        .head_dim = 512,
                        .first_pos = 4000,
                        .n_picks = 512,
                        .contiguous_window = false});
  // A few splits per query (one combine group), head_dim 256.
  CheckSparseCase(rng, {.n_queries = 20,
                        .n_heads = 32,
                        .head_dim = 256,
                        .first_pos = 3000,
                        .n_picks = 40,
                        .contiguous_window = true});
  // Window-only layer early in a sequence (one split: no combine), head_dim 256.
  CheckSparseCase(rng, {.n_queries = 1,
                        .n_heads = 16,
                        .head_dim = 256,
                        .first_pos = 20,
                        .n_picks = 0,
                        .contiguous_window = false});
  // Enough queries that each takes one block (no combine), head_dim 512.
  CheckSparseCase(rng, {.n_queries = 160,
                        .n_heads = 2,
                        .head_dim = 512,
                        .first_pos = 700,
                        .n_picks = 40,
                        .contiguous_window = true});
}

TEST(SparseAttentionCuda, RejectsBadArguments) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  float* buf = nullptr;
  ASSERT_EQ(cudaMalloc(&buf, 1 << 20), cudaSuccess);
  auto call = [&](const float* q, int head_dim, int rope_dim, int64_t stride) {
    return cuda::SparseAttentionBatch(q, buf, 1, 4, head_dim, rope_dim, nullptr, 0, nullptr, 0, buf,
                                      8, stride, buf, buf + (1 << 16), nullptr);
  };
  EXPECT_EQ(call(buf, 512, 64, 512), cudaSuccess);
  EXPECT_EQ(call(buf, 128, 64, 128), cudaErrorInvalidValue);      // head_dim not 256/512
  EXPECT_EQ(call(buf, 512, 62, 512), cudaErrorInvalidValue);      // rope_dim % 4
  EXPECT_EQ(call(buf + 1, 512, 64, 512), cudaErrorInvalidValue);  // misaligned q
  EXPECT_EQ(call(buf, 512, 64, 510), cudaErrorInvalidValue);      // stride % 4
  EXPECT_EQ(call(nullptr, 512, 64, 512), cudaErrorInvalidValue);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(buf);
}

}  // namespace
}  // namespace kv::kernels::v4
