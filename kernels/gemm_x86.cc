// AVX2+FMA and AVX-512 microkernels of the batch-invariant GEMM (kernels/gemm.h).
//
// Each is compiled for its instruction set with a target attribute and only called after
// the CPU reports it (gemm.cc), so the binary needs no -march flag. They live in an anonymous
// namespace and call nothing but intrinsics: no inline function shared with other translation
// units is ever compiled here for a wider ISA (the one-definition-rule trap of per-file
// -mavx flags).
//
// Every accumulator lane is one output element; lane j of acc[i][q] only ever receives
// fma(a[i][p], B(p, 16q + j), ·) for p ascending, exactly as the portable kernel does with
// std::fma, so the results are the same bits whatever kernel runs.
#include "kernels/gemm_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#include <utility>

#define KV_AVX2 __attribute__((target("avx2,fma")))
#define KV_AVX512 __attribute__((target("avx512f,avx2,fma")))

namespace kv::kernels::gemm_internal {
namespace {

template <int MR, int NP, bool kMaskB>
KV_AVX512 void Micro512(const MicroArgs& x) {
  const __mmask16 last = static_cast<__mmask16>((1u << x.last_cols) - 1u);
  __m512 acc[MR][NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      float* c = x.c + i * x.ldc + q * 16;
      if (!x.load_c) {
        acc[i][q] = _mm512_setzero_ps();
      } else if (q == NP - 1) {
        acc[i][q] = _mm512_maskz_loadu_ps(last, c);
      } else {
        acc[i][q] = _mm512_loadu_ps(c);
      }
    }
  }
  const float* a = x.a;
  const float* b = x.b;
  for (int64_t p = 0; p < x.kc; ++p) {
    __m512 bv[NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      const float* bp = b + q * x.b_panel + p * x.b_k;
      bv[q] = (kMaskB && q == NP - 1) ? _mm512_maskz_loadu_ps(last, bp) : _mm512_loadu_ps(bp);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * x.lda + p]);
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) acc[i][q] = _mm512_fmadd_ps(av, bv[q], acc[i][q]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      float* c = x.c + i * x.ldc + q * 16;
      if (q == NP - 1) {
        _mm512_mask_storeu_ps(c, last, acc[i][q]);
      } else {
        _mm512_storeu_ps(c, acc[i][q]);
      }
    }
  }
}

// AVX2: a 16-column panel is two 8-lane halves.
KV_AVX2 inline __m256i HalfMask(int cols) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lane);
}

template <int MR, int NP, bool kMaskB>
KV_AVX2 void Micro256(const MicroArgs& x) {
  const __m256i m_lo = HalfMask(x.last_cols), m_hi = HalfMask(x.last_cols - 8);
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      float* c = x.c + i * x.ldc + q * 16;
      if (!x.load_c) {
        acc[i][2 * q] = _mm256_setzero_ps();
        acc[i][2 * q + 1] = _mm256_setzero_ps();
      } else if (q == NP - 1) {
        acc[i][2 * q] = _mm256_maskload_ps(c, m_lo);
        acc[i][2 * q + 1] = _mm256_maskload_ps(c + 8, m_hi);
      } else {
        acc[i][2 * q] = _mm256_loadu_ps(c);
        acc[i][2 * q + 1] = _mm256_loadu_ps(c + 8);
      }
    }
  }
  const float* a = x.a;
  const float* b = x.b;
  for (int64_t p = 0; p < x.kc; ++p) {
    __m256 bv[2 * NP];
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      const float* bp = b + q * x.b_panel + p * x.b_k;
      if (kMaskB && q == NP - 1) {
        bv[2 * q] = _mm256_maskload_ps(bp, m_lo);
        bv[2 * q + 1] = _mm256_maskload_ps(bp + 8, m_hi);
      } else {
        bv[2 * q] = _mm256_loadu_ps(bp);
        bv[2 * q + 1] = _mm256_loadu_ps(bp + 8);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * x.lda + p);
#pragma GCC unroll 16
      for (int v = 0; v < 2 * NP; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; ++q) {
      float* c = x.c + i * x.ldc + q * 16;
      if (q == NP - 1) {
        _mm256_maskstore_ps(c, m_lo, acc[i][2 * q]);
        _mm256_maskstore_ps(c + 8, m_hi, acc[i][2 * q + 1]);
      } else {
        _mm256_storeu_ps(c, acc[i][2 * q]);
        _mm256_storeu_ps(c + 8, acc[i][2 * q + 1]);
      }
    }
  }
}

// Instantiates table entries whose accumulators fit the register file (`regs` vector
// registers per panel and row, at most `budget` in all); the driver never asks for others.
template <int MR, int NP, bool kAvx512>
void FillOne(KernelSet& s) {
  constexpr int kRegs = kAvx512 ? MR * NP : 2 * MR * NP;
  constexpr int kBudget = kAvx512 ? 24 : 12;
  if constexpr (kRegs <= kBudget) {
    if constexpr (kAvx512) {
      s.table[MR - 1][NP - 1][0] = &Micro512<MR, NP, false>;
      s.table[MR - 1][NP - 1][1] = &Micro512<MR, NP, true>;
    } else {
      s.table[MR - 1][NP - 1][0] = &Micro256<MR, NP, false>;
      s.table[MR - 1][NP - 1][1] = &Micro256<MR, NP, true>;
    }
  }
}

template <bool kAvx512, size_t... I>
void FillAll(KernelSet& s, std::index_sequence<I...>) {
  (FillOne<static_cast<int>(I / kMaxPanels) + 1, static_cast<int>(I % kMaxPanels) + 1, kAvx512>(s),
   ...);
}

// Panels per micro-call by row count: 8..24 accumulators of AVX-512's 32 zmm, 8..12 of
// AVX2's 16 ymm (two per panel).
template <bool kAvx512>
KernelSet Make() {
  constexpr int kPanels[2][kMaxRows] = {{4, 3, 2, 1, 1, 1}, {8, 6, 4, 4, 4, 4}};
  KernelSet s;
  s.max_rows = 6;
  for (int r = 0; r < kMaxRows; ++r) s.panels_for_rows[r] = kPanels[kAvx512 ? 1 : 0][r];
  FillAll<kAvx512>(s, std::make_index_sequence<kMaxRows * kMaxPanels>{});
  return s;
}

}  // namespace

const KernelSet* Avx512Kernels() {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("fma")) return nullptr;
  static const KernelSet s = Make<true>();
  return &s;
}

const KernelSet* Avx2Kernels() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return nullptr;
  static const KernelSet s = Make<false>();
  return &s;
}

}  // namespace kv::kernels::gemm_internal

#else  // not x86-64 with GCC/Clang: the portable kernels only

namespace kv::kernels::gemm_internal {
const KernelSet* Avx512Kernels() { return nullptr; }
const KernelSet* Avx2Kernels() { return nullptr; }
}  // namespace kv::kernels::gemm_internal

#endif
