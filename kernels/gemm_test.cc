// The batch-invariant GEMM (kernels/gemm.h) against its definition: every output element is
// acc = fma(a[p], b[p], acc) for p ascending from 0, on every kernel family this CPU runs, at
// one and at two threads, for every row count 1..100 and every position of the rows in the
// call. Also the B views (packed weight, packed matrix, plain row-major with a ragged last
// panel), continuing a chain with `accumulate`, special values, and argument errors.
#include "kernels/gemm.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/test_util.h"
#include "kernels/transpose.h"

namespace kv::kernels {
namespace {

using testing::Rng;

// The definition: one fused multiply-add per k step, k ascending, from `init`.
float DotFma(const float* a, const float* b_col, int64_t k, int64_t b_stride, float init = 0.0f) {
  float acc = init;
  for (int64_t p = 0; p < k; ++p) acc = std::fma(a[p], b_col[p * b_stride], acc);
  return acc;
}

bool SameBits(float x, float y) { return std::memcmp(&x, &y, sizeof(x)) == 0; }

std::string Where(GemmIsa isa, int threads, int64_t m, int64_t off) {
  return std::string(GemmIsaName(isa)) + " threads=" + std::to_string(threads) +
         " m=" + std::to_string(m) + " off=" + std::to_string(off);
}

// Rows [off, off + m) of a 100-row A, computed in one call, equal the definition bit for bit
// whatever m and off: the property chunked prefill, prefix resume and decode rest on.
TEST(InvariantGemm, RowResultIndependentOfBatchPositionThreadsAndIsa) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  constexpr int64_t kRows = 100, k = 300, n = 40;  // 2 k-blocks, a ragged 3rd panel
  std::vector<float> a(kRows * k), w(n * k);
  for (float& x : a) x = rng.Varied(-6, 6);
  for (float& x : w) x = rng.Varied(-6, 6);
  std::vector<float> ref(kRows * n);
  for (int64_t i = 0; i < kRows; ++i) {
    for (int64_t j = 0; j < n; ++j) ref[i * n + j] = DotFma(&a[i * k], &w[j * k], k, 1);
  }
  auto packed = PackedB::FromWeight(w.data(), n, k);
  ASSERT_TRUE(packed.ok()) << packed.status();
  ThreadPool pool(1);  // + the caller: two threads
  std::vector<float> out(kRows * n);
  for (GemmIsa isa : SupportedGemmIsas()) {
    for (int threads : {1, 2}) {
      const GemmOptions opt{.pool = threads == 2 ? &pool : nullptr, .isa = isa};
      for (int64_t m = 1; m <= kRows; ++m) {
        for (int64_t off = 0; off + m <= kRows; ++off) {
          // The portable kernel is slow (std::fma per element): its every-offset sweep is
          // limited to the first and last position; the vector kernels take them all.
          if (isa == GemmIsa::kPortable && off != 0 && off + m != kRows) continue;
          std::fill(out.begin(), out.end(), std::numeric_limits<float>::quiet_NaN());
          ASSERT_TRUE(Gemm(m, &a[off * k], k, packed->view(), out.data(), n, opt).ok());
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              ASSERT_TRUE(SameBits(out[i * n + j], ref[(off + i) * n + j]))
                  << Where(isa, threads, m, off) << " row " << i << " col " << j << ": "
                  << out[i * n + j] << " vs " << ref[(off + i) * n + j];
            }
          }
        }
      }
    }
  }
}

// Wide outputs split by columns across threads, a plain row-major B whose last panel is
// ragged (masked loads), a packed row-major B, and strided A / C.
TEST(InvariantGemm, RowMajorAndPackedViewsMatchDefinitionWithStrides) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int64_t m = 23, k = 530, n = 203, lda = k + 3, ldb = n + 5, ldc = n + 7;
  std::vector<float> a = rng.NormalVector(m * lda), b = rng.NormalVector(k * ldb);
  auto packed = PackedB::FromMatrix(b.data(), k, n, ldb);
  ASSERT_TRUE(packed.ok()) << packed.status();
  ThreadPool pool(1);
  for (GemmIsa isa : SupportedGemmIsas()) {
    for (int threads : {1, 2}) {
      for (bool use_packed : {false, true}) {
        std::vector<float> c(m * ldc, -7.0f);
        const GemmB view = use_packed ? packed->view() : GemmB::RowMajor(b.data(), k, n, ldb);
        ASSERT_TRUE(Gemm(m, a.data(), lda, view, c.data(), ldc,
                         {.pool = threads == 2 ? &pool : nullptr, .isa = isa})
                        .ok());
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            const float want = DotFma(&a[i * lda], &b[j], k, ldb);
            ASSERT_TRUE(SameBits(c[i * ldc + j], want))
                << GemmIsaName(isa) << " packed=" << use_packed << " " << i << "," << j;
          }
          for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], -7.0f) << "padding written";
        }
      }
    }
  }
}

// Gemm over k1 rows of B, then accumulating over the next k2, is one chain over k1 + k2.
TEST(InvariantGemm, AccumulateContinuesTheChain) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int64_t m = 9, k1 = 77, k2 = 300, n = 50;
  std::vector<float> a = rng.NormalVector(m * (k1 + k2)), b = rng.NormalVector((k1 + k2) * n);
  for (GemmIsa isa : SupportedGemmIsas()) {
    std::vector<float> whole(m * n), split(m * n);
    ASSERT_TRUE(Gemm(m, a.data(), k1 + k2, GemmB::RowMajor(b.data(), k1 + k2, n, n), whole.data(),
                     n, {.isa = isa})
                    .ok());
    ASSERT_TRUE(Gemm(m, a.data(), k1 + k2, GemmB::RowMajor(b.data(), k1, n, n), split.data(), n,
                     {.isa = isa})
                    .ok());
    ASSERT_TRUE(Gemm(m, a.data() + k1, k1 + k2, GemmB::RowMajor(b.data() + k1 * n, k2, n, n),
                     split.data(), n, {.accumulate = true, .isa = isa})
                    .ok());
    for (int64_t i = 0; i < m * n; ++i) {
      ASSERT_TRUE(SameBits(whole[i], split[i])) << GemmIsaName(isa) << " " << i;
      ASSERT_TRUE(SameBits(whole[i], DotFma(&a[(i / n) * (k1 + k2)], &b[i % n], k1 + k2, n)));
    }
  }
}

// Infinities, NaNs, signed zeros and products that round to zero come out exactly as the
// definition's FMA chain has them, on every kernel.
TEST(InvariantGemm, SpecialValuesFollowTheDefinition) {
  const int64_t m = 3, k = 5, n = 18;
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> a = {1e-30f, -1e-30f, 0.0f,  -0.0f, 2.0f,  //
                          inf,    1.0f,    -1.0f, 3.0f,  0.5f,  //
                          -0.0f,  -0.0f,   -0.0f, -0.0f, -0.0f};
  std::vector<float> b(k * n);
  for (int64_t p = 0; p < k; ++p) {
    for (int64_t j = 0; j < n; ++j)
      b[p * n + j] = (j % 3 == 0) ? 1e-20f : (j % 3 == 1 ? -1.0f : 0.0f);
  }
  b[2 * n + 5] = nan;
  b[4 * n + 7] = -inf;
  for (GemmIsa isa : SupportedGemmIsas()) {
    std::vector<float> c(m * n);
    ASSERT_TRUE(
        Gemm(m, a.data(), k, GemmB::RowMajor(b.data(), k, n, n), c.data(), n, {.isa = isa}).ok());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const float want = DotFma(&a[i * k], &b[j], k, n);
        ASSERT_TRUE(SameBits(c[i * n + j], want) || (std::isnan(want) && std::isnan(c[i * n + j])))
            << GemmIsaName(isa) << " " << i << "," << j << ": " << c[i * n + j] << " vs " << want;
      }
    }
  }
}

TEST(InvariantGemm, PackedWeightEqualsPackedTranspose) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  const int64_t n = 35, k = 19;
  std::vector<float> w = rng.NormalVector(n * k), wt(k * n);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t p = 0; p < k; ++p) wt[p * n + j] = w[j * k + p];
  }
  auto pw = PackedB::FromWeight(w.data(), n, k);
  auto pm = PackedB::FromMatrix(wt.data(), k, n, n);
  ASSERT_TRUE(pw.ok() && pm.ok());
  ASSERT_EQ(pw->bytes(), pm->bytes());
  EXPECT_EQ(pw->bytes(), uint64_t{3} * k * kGemmPanel * 4);
  EXPECT_EQ(0, std::memcmp(pw->view().data, pm->view().data, pw->bytes()));
}

TEST(Transpose, EveryShapeAndStride) {
  Rng rng;
  SCOPED_TRACE(rng.SeedText());
  for (int64_t rows : {1, 7, 8, 9, 16, 255, 256}) {
    for (int64_t cols : {1, 8, 13, 576}) {
      const int64_t src_ld = cols + 3, dst_ld = rows + 5;
      std::vector<float> src = rng.NormalVector(rows * src_ld), dst(cols * dst_ld, -1.0f);
      TransposeF32(src.data(), rows, cols, src_ld, dst.data(), dst_ld);
      for (int64_t c = 0; c < cols; ++c) {
        for (int64_t r = 0; r < dst_ld; ++r) {
          const float want = r < rows ? src[r * src_ld + c] : -1.0f;
          ASSERT_EQ(dst[c * dst_ld + r], want) << rows << "x" << cols << " at " << r << "," << c;
        }
      }
    }
  }
}

TEST(InvariantGemm, RejectsBadArguments) {
  std::vector<float> x(64, 1.0f), y(64);
  auto p = PackedB::FromWeight(x.data(), 4, 4);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(PackedB::FromWeight(nullptr, 4, 4).ok());
  EXPECT_FALSE(PackedB::FromWeight(x.data(), 0, 4).ok());
  EXPECT_FALSE(PackedB::FromWeight(x.data(), 4, 4, 3).ok());
  EXPECT_FALSE(PackedB::FromMatrix(x.data(), 4, 8, 7).ok());
  EXPECT_FALSE(Gemm(-1, x.data(), 4, p->view(), y.data(), 4).ok());
  EXPECT_FALSE(Gemm(2, x.data(), 3, p->view(), y.data(), 4).ok()) << "lda < k";
  EXPECT_FALSE(Gemm(2, x.data(), 4, p->view(), y.data(), 3).ok()) << "ldc < n";
  EXPECT_FALSE(Gemm(2, nullptr, 4, p->view(), y.data(), 4).ok());
  EXPECT_FALSE(Gemm(2, x.data(), 4, p->view(), nullptr, 4).ok());
  EXPECT_FALSE(Gemm(2, x.data(), 4, GemmB::RowMajor(x.data(), 4, 8, 4), y.data(), 8).ok())
      << "row-major ldb < n";
  EXPECT_TRUE(Gemm(0, nullptr, 4, p->view(), nullptr, 4).ok()) << "m = 0 is a no-op";
  // k = 0: an empty sum is 0 (or C unchanged when accumulating).
  std::fill(y.begin(), y.end(), 5.0f);
  ASSERT_TRUE(Gemm(2, x.data(), 4, GemmB::RowMajor(x.data(), 0, 4, 4), y.data(), 4).ok());
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[8], 5.0f);
  EXPECT_EQ(GemmIsaName(SupportedGemmIsas().front()), "portable");
  if (std::getenv("KVSTRATA_GEMM_ISA") == nullptr) {
    ASSERT_TRUE(DefaultGemmIsa().ok());
    EXPECT_EQ(*DefaultGemmIsa(), SupportedGemmIsas().back());
  }
}

}  // namespace
}  // namespace kv::kernels
