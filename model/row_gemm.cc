#include "model/row_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/gemm.h"

namespace kv::model {

absl::Status TiledGemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (m < 0 || n <= 0 || k <= 0 || lda < k || ldc < n || a == nullptr || b == nullptr ||
      c == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("TiledGemm: bad arguments m=", m, " n=", n,
                                                   " k=", k, " lda=", lda, " ldc=", ldc));
  }
  thread_local std::vector<float> tile_a, tile_c;
  tile_a.resize(kRowTile * k);
  tile_c.resize(kRowTile * n);
  for (int64_t r = 0; r < m; r += kRowTile) {
    const int64_t rows = std::min(kRowTile, m - r);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(&tile_a[i * k], a + (r + i) * lda, k * sizeof(float));
    }
    std::fill(tile_a.begin() + rows * k, tile_a.end(), 0.0f);
    RETURN_IF_ERROR(kernels::Sgemm(false, trans_b, kRowTile, n, k, 1.0f, tile_a.data(), k, b, ldb,
                                   0.0f, tile_c.data(), n));
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(c + (r + i) * ldc, &tile_c[i * n], n * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace kv::model
