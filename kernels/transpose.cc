#include "kernels/transpose.h"

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KV_HAVE_X86_TRANSPOSE 1
#endif

namespace kv::kernels {
namespace {

// Tiles of 16×16 keep both the reads and the writes of a tile within a few cache lines.
// Rows [r0, rows) only.
void TransposeBlocked(const float* src, int64_t rows, int64_t cols, int64_t src_ld, float* dst,
                      int64_t dst_ld, int64_t r0) {
  constexpr int64_t kTile = 16;
  for (int64_t rb = r0; rb < rows; rb += kTile) {
    const int64_t re = std::min(rows, rb + kTile);
    for (int64_t cb = 0; cb < cols; cb += kTile) {
      const int64_t ce = std::min(cols, cb + kTile);
      for (int64_t c = cb; c < ce; ++c) {
        for (int64_t r = rb; r < re; ++r) dst[c * dst_ld + r] = src[r * src_ld + c];
      }
    }
  }
}

#ifdef KV_HAVE_X86_TRANSPOSE
// The classic 8×8 in-register transpose: unpack pairs, shuffle quads, swap 128-bit halves.
__attribute__((target("avx2"))) void Transpose8x8(const float* src, int64_t src_ld, float* dst,
                                                  int64_t dst_ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_ld);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * dst_ld, t[i]);
}

__attribute__((target("avx2"))) void TransposeAvx2(const float* src, int64_t rows, int64_t cols,
                                                   int64_t src_ld, float* dst, int64_t dst_ld) {
  const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  // Column blocks outside: each dst row is then written front to back.
  for (int64_t c = 0; c < c8; c += 8) {
    for (int64_t r = 0; r < r8; r += 8) {
      Transpose8x8(src + r * src_ld + c, src_ld, dst + c * dst_ld + r, dst_ld);
    }
  }
  // The ragged edges: columns past c8 of the full row blocks, then the rows past r8.
  for (int64_t c = c8; c < cols; ++c) {
    for (int64_t r = 0; r < r8; ++r) dst[c * dst_ld + r] = src[r * src_ld + c];
  }
  TransposeBlocked(src, rows, cols, src_ld, dst, dst_ld, r8);
}
#endif

}  // namespace

void TransposeF32(const float* src, int64_t rows, int64_t cols, int64_t src_ld, float* dst,
                  int64_t dst_ld) {
#ifdef KV_HAVE_X86_TRANSPOSE
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) {
    TransposeAvx2(src, rows, cols, src_ld, dst, dst_ld);
    return;
  }
#endif
  TransposeBlocked(src, rows, cols, src_ld, dst, dst_ld, 0);
}

}  // namespace kv::kernels
