// Internal to kernels/gemm*.cc: the microkernel interface shared by the portable and the
// x86 (AVX2, AVX-512) implementations of kernels/gemm.h. Not part of the public API.
//
// A microkernel computes an mr × (np·16) block of C over kc steps of k:
//   for p in [0, kc): for each row i < mr, column j of the np panels:
//     acc[i][j] = fma(a[i·lda + p], B(p, j), acc[i][j])
// starting from 0, or from C when load_c (the previous k block's partial sums). B(p, j) of
// panel q is b[q·b_panel + p·b_k + j % 16]. The last panel has last_cols valid columns
// (1..16): C is read and written only there, and B too when the kernel is the masked-B
// variant (the B view is not zero-padded).
#pragma once

#include <cstdint>

namespace kv::kernels::gemm_internal {

struct MicroArgs {
  int64_t kc;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t b_k;
  int64_t b_panel;
  float* c;
  int64_t ldc;
  int last_cols;
  bool load_c;
};

using MicroKernel = void (*)(const MicroArgs&);

inline constexpr int kMaxRows = 6;
inline constexpr int kMaxPanels = 8;

// One ISA's microkernels: table[mr-1][np-1][masked_b], and how many panels to block per
// micro-call for a given row count (so the accumulators fit the register file).
struct KernelSet {
  int max_rows = 0;
  int panels_for_rows[kMaxRows] = {};
  MicroKernel table[kMaxRows][kMaxPanels][2] = {};
};

const KernelSet& PortableKernels();
// Null when the build or the CPU lacks the instruction set.
const KernelSet* Avx2Kernels();
const KernelSet* Avx512Kernels();

}  // namespace kv::kernels::gemm_internal
