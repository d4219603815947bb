#include "kernels/blas.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/mla_attention.h"
#include "kernels/mla_record.h"

namespace kv::kernels {

absl::Status Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m < 0 || n < 0 || k < 0 || m > kMax || n > kMax || k > kMax) {
    return absl::InvalidArgumentError(absl::StrCat("Sgemm: bad sizes m=", m, " n=", n, " k=", k));
  }
  const int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
  if (lda < std::max<int64_t>(1, a_cols) || ldb < std::max<int64_t>(1, b_cols) ||
      ldc < std::max<int64_t>(1, n) || lda > kMax || ldb > kMax || ldc > kMax) {
    return absl::InvalidArgumentError(absl::StrCat("Sgemm: leading dimensions lda=", lda,
                                                   " ldb=", ldb, " ldc=", ldc,
                                                   " too small for m=", m, " n=", n, " k=", k));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  if (c == nullptr || (k > 0 && (a == nullptr || b == nullptr))) {
    return absl::InvalidArgumentError("Sgemm: null operand");
  }
  if (k == 0 || alpha == 0.0f) {  // BLAS would skip A·B; keep beta semantics exact.
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    }
    return absl::OkStatus();
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
  return absl::OkStatus();
}

absl::Status SgemmLinear(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                         float* y) {
  return Sgemm(false, true, m, n, k, 1.0f, x, std::max<int64_t>(1, k), w, std::max<int64_t>(1, k),
               0.0f, y, std::max<int64_t>(1, n));
}

absl::Status BlasRowTileGemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                             int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (m < 0 || n <= 0 || k <= 0 || lda < k || ldc < n || a == nullptr || b == nullptr ||
      c == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("BlasRowTileGemm: bad arguments m=", m, " n=", n,
                                                   " k=", k, " lda=", lda, " ldc=", ldc));
  }
  thread_local std::vector<float> tile_a, tile_c;
  tile_a.resize(kBlasRowTile * k);
  tile_c.resize(kBlasRowTile * n);
  for (int64_t r = 0; r < m; r += kBlasRowTile) {
    const int64_t rows = std::min(kBlasRowTile, m - r);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(&tile_a[i * k], a + (r + i) * lda, k * sizeof(float));
    }
    std::fill(tile_a.begin() + rows * k, tile_a.end(), 0.0f);
    absl::Status st = Sgemm(false, trans_b, kBlasRowTile, n, k, 1.0f, tile_a.data(), k, b, ldb,
                            0.0f, tile_c.data(), n);
    if (!st.ok()) return st;
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(c + (r + i) * ldc, &tile_c[i * n], n * sizeof(float));
    }
  }
  return absl::OkStatus();
}

absl::Status BlasMlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                                   const PagedKvView& kv, float softmax_scale, float* out) {
  // Argument checks as the real kernel's: run it on no queries.
  if (absl::Status s =
          MlaPagedAttention(q, 0, num_heads, start_pos + num_q, kv, softmax_scale, out, nullptr);
      !s.ok()) {
    return s;
  }
  constexpr int64_t kChunk = 256;
  const int64_t h = num_heads, total = start_pos + num_q;
  std::fill(out, out + num_q * h * kMlaLatentDim, 0.0f);
  std::vector<float> m(num_q * h, -std::numeric_limits<float>::infinity()), l(num_q * h, 0.0f);
  std::vector<float> rows(kChunk * kMlaKeyDim), s(h * kChunk);
  for (int64_t s0 = 0; s0 < total; s0 += kChunk) {
    const int64_t c_all = std::min(kChunk, total - s0);
    for (int64_t j = 0; j < c_all; ++j) {
      const int64_t pos = s0 + j;
      const int64_t slot =
          static_cast<int64_t>(kv.block_table[pos / kv.page_tokens]) * kv.page_tokens +
          pos % kv.page_tokens;
      RETURN_IF_ERROR(DecodeMlaRecords(kv.layout, kv.SlotRecord(slot), RecordBytes(kv.layout), 1,
                                       rows.data() + j * kMlaKeyDim, kMlaKeyDim));
    }
    for (int64_t i = std::max<int64_t>(0, s0 - start_pos); i < num_q; ++i) {
      const int64_t c = std::min<int64_t>(c_all, start_pos + i + 1 - s0);
      float* acc = out + i * h * kMlaLatentDim;
      RETURN_IF_ERROR(Sgemm(false, true, h, c, kMlaKeyDim, softmax_scale, q + i * h * kMlaKeyDim,
                            kMlaKeyDim, rows.data(), kMlaKeyDim, 0.0f, s.data(), kChunk));
      for (int64_t hh = 0; hh < h; ++hh) {
        float* sr = s.data() + hh * kChunk;
        const float mx = *std::max_element(sr, sr + c);
        const float m_new = std::max(m[i * h + hh], mx);
        const float alpha = std::exp(m[i * h + hh] - m_new);
        float sum = 0.0f;
        for (int64_t j = 0; j < c; ++j) {
          sr[j] = std::exp(sr[j] - m_new);
          sum += sr[j];
        }
        l[i * h + hh] = l[i * h + hh] * alpha + sum;
        m[i * h + hh] = m_new;
        for (int d = 0; d < kMlaLatentDim; ++d) acc[hh * kMlaLatentDim + d] *= alpha;
      }
      RETURN_IF_ERROR(Sgemm(false, false, h, kMlaLatentDim, c, 1.0f, s.data(), kChunk, rows.data(),
                            kMlaKeyDim, 1.0f, acc, kMlaLatentDim));
    }
  }
  for (int64_t k = 0; k < num_q * h; ++k) {
    const float inv = 1.0f / l[k];
    for (int d = 0; d < kMlaLatentDim; ++d) out[k * kMlaLatentDim + d] *= inv;
  }
  return absl::OkStatus();
}

void SetBlasThreads(int threads) { openblas_set_num_threads(threads); }

}  // namespace kv::kernels
