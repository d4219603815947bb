// Every CUDA kernel against its CPU reference on fresh random inputs (ctest label gpu).
// Skips when no CUDA device is present. Outputs are poisoned before each launch.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/bf16.h"
#include "kernels/cuda_kernels.h"
#include "kernels/cuda_status.h"
#include "kernels/gemm.h"
#include "kernels/mla_attention.h"
#include "kernels/mla_record.h"
#include "kernels/paged_kv.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/test_util.h"

namespace kv::kernels {
namespace {

using testing::Rng;
constexpr double kU = 0x1p-24;

// A device copy of a host vector; freed on destruction.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : n_(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p_), Bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p_, host.data(), Bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  std::vector<T> Download() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, Bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  size_t Bytes() const { return n_ * sizeof(T); }
  size_t n_;
  T* p_ = nullptr;
};

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      GTEST_SKIP() << "no CUDA device; GPU comparison tests skipped";
    }
  }
};

TEST_F(CudaKernels, EncodeDecodeBitIdenticalToCpu) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int n = 300;
  std::vector<float> src(n * 576);
  for (float& v : src) v = rng.Varied(-18, 10);
  std::vector<uint16_t> srch(src.size());
  for (size_t i = 0; i < src.size(); ++i) srch[i] = FloatToBf16(src[i]);
  DeviceBuffer<float> dsrc(src);
  DeviceBuffer<uint16_t> dsrch(srch);
  for (KvLayout layout : {KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152}) {
    const int rb = RecordBytes(layout);
    std::vector<uint8_t> cpu(n * rb, 0xA5), cpuh(n * rb, 0xA5);
    ASSERT_TRUE(EncodeMlaRecords(layout, MlaSourceF32{src.data(), 576, src.data() + 512, 576}, n,
                                 cpu.data(), rb)
                    .ok());
    ASSERT_TRUE(EncodeMlaRecords(layout, MlaSourceBf16{srch.data(), 576, srch.data() + 512, 576}, n,
                                 cpuh.data(), rb)
                    .ok());
    DeviceBuffer<uint8_t> out(std::vector<uint8_t>(n * rb, 0xA5));
    DeviceBuffer<int32_t> bad(std::vector<int32_t>{INT_MAX});
    ASSERT_EQ(cuda::EncodeMlaRecords(layout, dsrc.get(), 576, dsrc.get() + 512, 576, n, out.get(),
                                     rb, bad.get(), nullptr),
              cudaSuccess);
    EXPECT_EQ(out.Download(), cpu) << LayoutName(layout);
    EXPECT_EQ(bad.Download()[0], INT_MAX);
    ASSERT_EQ(cuda::EncodeMlaRecordsBf16(layout, dsrch.get(), 576, dsrch.get() + 512, 576, n,
                                         out.get(), rb, bad.get(), nullptr),
              cudaSuccess);
    EXPECT_EQ(out.Download(), cpuh) << LayoutName(layout) << " bf16 source";
    std::vector<float> dec_cpu(n * 576);
    ASSERT_TRUE(DecodeMlaRecords(layout, cpu.data(), rb, n, dec_cpu.data(), 576).ok());
    DeviceBuffer<uint8_t> rec(cpu);
    DeviceBuffer<float> dec(std::vector<float>(n * 576, std::nanf("")));
    ASSERT_EQ(cuda::DecodeMlaRecords(layout, rec.get(), rb, n, dec.get(), 576, nullptr),
              cudaSuccess);
    EXPECT_EQ(0, std::memcmp(dec.Download().data(), dec_cpu.data(), dec_cpu.size() * 4));
  }
  // A NaN in token 7 and an Inf in token 3's rope: lowest bad index reported, not written.
  src[7 * 576 + 100] = std::nanf("");
  src[3 * 576 + 530] = std::numeric_limits<float>::infinity();
  DeviceBuffer<float> dbad(src);
  DeviceBuffer<uint8_t> out(std::vector<uint8_t>(n * 656, 0xA5));
  DeviceBuffer<int32_t> bad(std::vector<int32_t>{INT_MAX});
  ASSERT_EQ(cuda::EncodeMlaRecords(KvLayout::kMlaFp8_656, dbad.get(), 576, dbad.get() + 512, 576, n,
                                   out.get(), 656, bad.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(bad.Download()[0], 3);
  const std::vector<uint8_t> o = out.Download();
  for (int b = 0; b < 656; ++b) ASSERT_EQ(o[3 * 656 + b], 0xA5);
  EXPECT_EQ(cuda::EncodeMlaRecords(KvLayout::kMlaFp8_656, dbad.get(), 500, dbad.get(), 576, n,
                                   out.get(), 656, nullptr, nullptr),
            cudaErrorInvalidValue);
}

TEST_F(CudaKernels, AppendMatchesCpuAndSkipsMinusOne) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (KvLayout layout : {KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152}) {
    const int rb = RecordBytes(layout), pt = 64, blocks = 5, n = 100;
    const int64_t stride = 2 * int64_t{pt} * rb + 64;
    std::vector<uint8_t> pool(blocks * stride, 0x5A);
    std::vector<float> src = rng.NormalVector(n * 576, 2.0f);
    std::vector<int64_t> slots(n);
    std::vector<int64_t> perm(blocks * pt);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen());
    for (int i = 0; i < n; ++i) slots[i] = (i % 9 == 4) ? -1 : perm[i];
    DeviceBuffer<uint8_t> dpool(pool);
    DeviceBuffer<float> dsrc(src);
    DeviceBuffer<int64_t> dslots(slots);
    PagedKvView view{pool.data(), stride, int64_t{pt} * rb, pt, layout, nullptr, 0, blocks};
    ASSERT_TRUE(
        AppendMlaTokens(view, slots.data(), n, MlaSourceF32{src.data(), 576, src.data() + 512, 576})
            .ok());
    PagedKvView dview = view;
    dview.pool = dpool.get();
    ASSERT_EQ(cuda::AppendMlaTokens(dview, dslots.get(), n, dsrc.get(), 576, dsrc.get() + 512, 576,
                                    nullptr, nullptr),
              cudaSuccess);
    EXPECT_EQ(dpool.Download(), pool) << LayoutName(layout);
  }
}

TEST_F(CudaKernels, RmsNormRopeGemmMatchCpu) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int rows = 33, dim = 1536;
  std::vector<float> x = rng.NormalVector(rows * dim, 3.0f), w = rng.NormalVector(dim);
  std::vector<float> y(rows * dim);
  ASSERT_TRUE(RmsNorm(x.data(), rows, dim, dim, w.data(), 1e-6f, y.data(), dim).ok());
  DeviceBuffer<float> dx(x), dw(w), dy(std::vector<float>(rows * dim, std::nanf("")));
  ASSERT_EQ(cuda::RmsNorm(dx.get(), rows, dim, dim, dw.get(), 1e-6f, dy.get(), dim, nullptr),
            cudaSuccess);
  std::vector<float> gy = dy.Download();
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(gy[i], y[i], 8 * kU * std::fabs(y[i])) << i;

  auto table = BuildRopeTable(YarnRopeParams{}, 4096);
  ASSERT_TRUE(table.ok());
  const int n = 20, heads = 4;
  std::vector<int64_t> pos(n);
  for (auto& p : pos) p = rng.Int(0, 4095);
  std::vector<float> q = rng.NormalVector(n * heads * 192);
  DeviceBuffer<float> dq(q), dcos(table->cos), dsin(table->sin);
  DeviceBuffer<int64_t> dpos(pos);
  ASSERT_TRUE(ApplyRope(*table, pos.data(), n, heads, q.data() + 128, heads * 192, 192).ok());
  ASSERT_EQ(cuda::ApplyRope(dcos.get(), dsin.get(), 64, 4096, dpos.get(), n, heads, dq.get() + 128,
                            heads * 192, 192, nullptr),
            cudaSuccess);
  std::vector<float> gq = dq.Download();
  for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(gq[i], q[i], 8 * kU * 4 + 1e-7) << i;

  const int m = 17, nn = 70, k = 513;
  std::vector<float> a = rng.NormalVector(m * k), b = rng.NormalVector(nn * k), c(m * nn);
  auto packed = PackedB::FromWeight(b.data(), nn, k);  // the CPU forward's GEMM (gemm.h)
  ASSERT_TRUE(packed.ok());
  ASSERT_TRUE(Gemm(m, a.data(), k, packed->view(), c.data(), nn).ok());
  DeviceBuffer<float> da(a), db(b), dc(std::vector<float>(m * nn, std::nanf("")));
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  ASSERT_TRUE(CublasStatus(cuda::Sgemm(h, false, true, m, nn, k, 1.0f, da.get(), k, db.get(), k,
                                       0.0f, dc.get(), nn),
                           "sgemm")
                  .ok());
  std::vector<float> gc = dc.Download();
  cublasDestroy(h);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < nn; ++j) {
      double mag = 0;
      for (int p = 0; p < k; ++p) mag += std::fabs(double(a[i * k + p]) * b[j * k + p]);
      // Both are f32 sums of k products in different orders: each within k*u*Σ|ab| of exact.
      ASSERT_NEAR(gc[i * nn + j], c[i * nn + j], 2 * k * kU * mag) << i << "," << j;
    }
  }
}

TEST_F(CudaKernels, PagedAttentionMatchesCpu) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const float scale = 0.13523378f;
  // The kernel's paths: both layouts; a partial head group (20 = 16 + 4); several queries
  // (causal lengths differ per query); 128 heads (8 head groups); a long split (3000 keys:
  // several tiles per split and a partial last tile); records that are not 16-byte aligned
  // (layer_offset 4, the byte-assembling load path) with 16-token pages.
  struct Case {
    int heads;
    int64_t start, nq;
    int pt, layer_offset;
  };
  const Case cases[] = {
      {16, 700, 3, 64, 0}, {20, 700, 3, 64, 0}, {128, 2999, 1, 64, 0}, {20, 300, 2, 16, 4}};
  for (KvLayout layout : {KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152}) {
    for (const Case& cs : cases) {
      const int heads = cs.heads, rb = RecordBytes(layout), pt = cs.pt;
      const int64_t start = cs.start, nq = cs.nq, n = start + nq, blocks = (n + pt - 1) / pt;
      const int64_t stride = cs.layer_offset + int64_t{pt} * rb;
      std::vector<int32_t> table(blocks);
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), rng.gen());
      std::vector<uint8_t> pool(blocks * stride);
      std::vector<float> keys = rng.NormalVector(n * 576), q = rng.NormalVector(nq * heads * 576);
      PagedKvView view{pool.data(), stride,       cs.layer_offset, pt,
                       layout,      table.data(), blocks,          blocks};
      std::vector<int64_t> slots(n);
      for (int64_t t = 0; t < n; ++t) slots[t] = int64_t{table[t / pt]} * pt + t % pt;
      ASSERT_TRUE(AppendMlaTokens(view, slots.data(), n,
                                  MlaSourceF32{keys.data(), 576, keys.data() + 512, 576})
                      .ok());
      std::vector<float> out(nq * heads * 512), lse(nq * heads);
      ASSERT_TRUE(
          MlaPagedAttention(q.data(), nq, heads, start, view, scale, out.data(), lse.data()).ok());
      DeviceBuffer<uint8_t> dpool(pool);
      DeviceBuffer<int32_t> dtable(table);
      DeviceBuffer<float> dq(q), dout(std::vector<float>(out.size(), std::nanf("")));
      DeviceBuffer<float> dlse(std::vector<float>(lse.size(), std::nanf("")));
      PagedKvView dview = view;
      dview.pool = dpool.get();
      dview.block_table = dtable.get();
      ASSERT_EQ(cuda::MlaPagedAttention(dq.get(), nq, heads, start, dview, scale, dout.get(),
                                        dlse.get(), nullptr),
                cudaSuccess);
      const std::vector<float> go = dout.Download(), gl = dlse.Download();
      // Both sides are f32 evaluations of the same function in different orders. A
      // 576-term f32 dot product is within λ√K·u·Σ|q||k| of exact with overwhelming
      // probability (Higham & Mary's probabilistic bound, λ = 8), which moves softmax
      // weights by a factor within e^{±2δ}; both sides err, hence the factor 2.
      double sum_qk = 0, max_c = 0;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t i = 0; i < nq * heads; ++i) {
          double m = 0;
          for (int j = 0; j < 576; ++j) m += std::fabs(double(q[i * 576 + j]) * keys[t * 576 + j]);
          sum_qk = std::max(sum_qk, m);
        }
        for (int j = 0; j < 512; ++j) max_c = std::max(max_c, std::fabs(double(keys[t * 576 + j])));
      }
      const double delta = 8 * std::sqrt(576.0) * kU * scale * sum_qk;
      const double tol = 2 * (std::expm1(2 * delta) + 200 * kU) * max_c;
      for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_FALSE(std::isnan(go[i])) << i;
        ASSERT_NEAR(go[i], out[i], tol) << LayoutName(layout) << " heads " << heads << " " << i;
      }
      for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(gl[i], lse[i], 2 * delta + 1e-5);
    }
  }
}

}  // namespace
}  // namespace kv::kernels
