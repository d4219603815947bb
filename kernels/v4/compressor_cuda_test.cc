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

TEST(SparseAttentionCuda, MatchesCpuReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  Rng rng;
  const int H = 8, d = 512;
  const int64_t pos = 2000, ne = NumVisibleEntries(pos, 4);
  const auto freqs = *RopeFrequencies(CompressRopeParams(V4Config{}));
  std::vector<float> entries = rng.NormalVector(ne * d), window = rng.NormalVector(128 * d);
  std::vector<float> q = rng.NormalVector(H * d, 2.0f), sink = rng.NormalVector(H, 3.0f);
  std::vector<int32_t> idx = AllVisibleIndices(pos, 4);
  std::shuffle(idx.begin(), idx.end(), rng.gen());
  idx.resize(300);
  idx[7] = -1;  // skipped pick
  SparseAttentionArgs a{.position = pos,
                        .n_heads = H,
                        .q = q.data(),
                        .sink = sink.data(),
                        .entries = entries.data(),
                        .n_entries = ne,
                        .ratio = 4,
                        .indices = idx.data(),
                        .n_indices = int64_t(idx.size()),
                        .window = window.data(),
                        .n_window = 128};
  std::vector<float> want(H * d);
  ASSERT_TRUE(SparseAttention(a, freqs, want.data()).ok());
  std::vector<float> cs(64);
  for (int k = 0; k < 32; ++k) {
    cs[2 * k] = static_cast<float>(std::cos(-double(pos) * freqs[k]));
    cs[2 * k + 1] = static_cast<float>(std::sin(-double(pos) * freqs[k]));
  }
  float *dq = ToDevice(q), *ds = ToDevice(sink), *de = ToDevice(entries), *dw = ToDevice(window);
  float *dcs = ToDevice(cs), *dout = ToDevice(std::vector<float>(H * d, NAN));
  int32_t* di = ToDevice(idx);
  ASSERT_EQ(cuda::SparseAttention(dq, ds, H, d, 64, de, ne, di, int64_t(idx.size()), dw, 128, dcs,
                                  dout, nullptr),
            cudaSuccess);
  std::vector<float> got(H * d);
  ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (float* p : {dq, ds, de, dw, dcs, dout}) cudaFree(p);
  cudaFree(di);
  // Different summation orders over 512-term dots and ~430 weighted rows: ~1e-6 absolute.
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << i;
    ASSERT_NEAR(got[i], want[i], 2e-5) << "element " << i << " " << rng.SeedText();
  }
}

}  // namespace
}  // namespace kv::kernels::v4
