#include "kernels/gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "core/strings.h"
#include "core/thread_pool.h"
#include "kernels/gemm_internal.h"

namespace kv::kernels {

using gemm_internal::KernelSet;
using gemm_internal::kMaxPanels;
using gemm_internal::kMaxRows;
using gemm_internal::MicroArgs;

namespace gemm_internal {
namespace {

// The portable microkernel: the same FMA chain per element, through std::fma (a correctly
// rounded fused multiply-add on every conforming platform, in hardware where there is one).
template <int MR, int NP, bool kMaskB>
void MicroPortable(const MicroArgs& x) {
  constexpr int kCols = NP * kGemmPanel;
  const int cols = (NP - 1) * kGemmPanel + x.last_cols;
  float acc[MR][kCols];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < cols; ++j) acc[i][j] = x.load_c ? x.c[i * x.ldc + j] : 0.0f;
  }
  for (int64_t p = 0; p < x.kc; ++p) {
    for (int i = 0; i < MR; ++i) {
      const float av = x.a[i * x.lda + p];
      for (int j = 0; j < cols; ++j) {
        const float bv = x.b[(j / kGemmPanel) * x.b_panel + p * x.b_k + j % kGemmPanel];
        acc[i][j] = std::fma(av, bv, acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < cols; ++j) x.c[i * x.ldc + j] = acc[i][j];
  }
}

template <size_t... I>
void FillPortable(KernelSet& s, std::index_sequence<I...>) {
  ((s.table[I][0][0] = &MicroPortable<static_cast<int>(I) + 1, 1, false>,
    s.table[I][0][1] = &MicroPortable<static_cast<int>(I) + 1, 1, true>),
   ...);
}

}  // namespace

const KernelSet& PortableKernels() {
  static const KernelSet s = [] {
    KernelSet k;
    k.max_rows = 4;
    for (int r = 0; r < kMaxRows; ++r) k.panels_for_rows[r] = 1;
    FillPortable(k, std::make_index_sequence<4>{});
    return k;
  }();
  return s;
}

}  // namespace gemm_internal

// ---- packing ------------------------------------------------------------------------------------

void PackedB::AlignedFree::operator()(float* p) const {
  ::operator delete[](p, std::align_val_t(64));
}

PackedB PackedB::Zeroed(int64_t k, int64_t n) {
  PackedB p;
  p.k_ = k;
  p.n_ = n;
  const int64_t elems = p.panels() * k * kGemmPanel;
  p.data_.reset(new (std::align_val_t(64)) float[elems]);
  std::fill(p.data_.get(), p.data_.get() + elems, 0.0f);
  return p;
}

absl::StatusOr<PackedB> PackedB::FromWeight(const float* w, int64_t n, int64_t k, int64_t ld) {
  if (w == nullptr || n < 1 || k < 1 || ld < k) {
    return absl::InvalidArgumentError(
        kv::StrCat("PackedB::FromWeight: bad weight n=", n, " k=", k, " ld=", ld));
  }
  PackedB p = Zeroed(k, n);
  float* d = p.data_.get();
  // W row j (one output column) becomes column j % 16 of panel j / 16, k-major.
  for (int64_t j = 0; j < n; ++j) {
    float* panel = d + (j / kGemmPanel) * k * kGemmPanel + j % kGemmPanel;
    const float* row = w + j * ld;
    for (int64_t p2 = 0; p2 < k; ++p2) panel[p2 * kGemmPanel] = row[p2];
  }
  return p;
}

absl::StatusOr<PackedB> PackedB::FromMatrix(const float* b, int64_t k, int64_t n, int64_t ldb) {
  if (b == nullptr || n < 1 || k < 1 || ldb < n) {
    return absl::InvalidArgumentError(
        kv::StrCat("PackedB::FromMatrix: bad matrix k=", k, " n=", n, " ldb=", ldb));
  }
  PackedB p = Zeroed(k, n);
  float* d = p.data_.get();
  for (int64_t q = 0; q < p.panels(); ++q) {
    const int64_t cols = std::min<int64_t>(kGemmPanel, n - q * kGemmPanel);
    for (int64_t r = 0; r < k; ++r) {
      std::memcpy(d + (q * k + r) * kGemmPanel, b + r * ldb + q * kGemmPanel, cols * sizeof(float));
    }
  }
  return p;
}

// ---- dispatch -----------------------------------------------------------------------------------

std::string_view GemmIsaName(GemmIsa isa) {
  switch (isa) {
    case GemmIsa::kAuto:
      return "auto";
    case GemmIsa::kPortable:
      return "portable";
    case GemmIsa::kAvx2:
      return "avx2";
    case GemmIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

std::vector<GemmIsa> SupportedGemmIsas() {
  std::vector<GemmIsa> v = {GemmIsa::kPortable};
  if (gemm_internal::Avx2Kernels() != nullptr) v.push_back(GemmIsa::kAvx2);
  if (gemm_internal::Avx512Kernels() != nullptr) v.push_back(GemmIsa::kAvx512);
  return v;
}

absl::StatusOr<GemmIsa> DefaultGemmIsa() {
  static const absl::StatusOr<GemmIsa> isa = []() -> absl::StatusOr<GemmIsa> {
    const std::vector<GemmIsa> supported = SupportedGemmIsas();
    const char* env = std::getenv("KVSTRATA_GEMM_ISA");
    const std::string_view want = env == nullptr ? "" : env;
    if (want.empty() || want == "auto") return supported.back();
    for (GemmIsa i : {GemmIsa::kPortable, GemmIsa::kAvx2, GemmIsa::kAvx512}) {
      if (want != GemmIsaName(i)) continue;
      if (std::find(supported.begin(), supported.end(), i) == supported.end()) {
        return absl::FailedPreconditionError(
            kv::StrCat("KVSTRATA_GEMM_ISA=", want, ": this CPU cannot run those kernels"));
      }
      return i;
    }
    return absl::InvalidArgumentError(
        kv::StrCat("KVSTRATA_GEMM_ISA=", want, " is not one of auto, portable, avx2, avx512"));
  }();
  return isa;
}

namespace {

const KernelSet* Kernels(GemmIsa isa) {
  switch (isa) {
    case GemmIsa::kPortable:
      return &gemm_internal::PortableKernels();
    case GemmIsa::kAvx2:
      return gemm_internal::Avx2Kernels();
    case GemmIsa::kAvx512:
      return gemm_internal::Avx512Kernels();
    case GemmIsa::kAuto:
      break;
  }
  return nullptr;
}

// Cache blocking (GotoBLAS order): columns in blocks of kColBlock, k in blocks of kKBlock
// (partial sums go through C, an exact round trip), rows in blocks of kRowBlock. A B block
// (kKBlock × kColBlock, 256 KiB) stays in L2 while the A block (kRowBlock × kKBlock, 120 KiB)
// is swept once per column group; one group's B panels (kKBlock × 64 columns) stay in L1
// across the row block. The order of the loops never changes any element's FMA chain.
constexpr int64_t kKBlock = 256;
constexpr int64_t kRowBlock = 120;  // a multiple of every kernel family's max_rows (6, 4)
constexpr int64_t kColBlock = 256;  // columns; a multiple of every panel group (16 × 1..8)

struct Problem {
  const KernelSet* ks;
  const float* a;
  int64_t lda;
  GemmB b;
  float* c;
  int64_t ldc;
  bool accumulate;
  int group;  // panels per micro-call
};

// Rows [r0, r1) × panels [q0, q1) of C.
void RunBlock(const Problem& pr, int64_t r0, int64_t r1, int64_t q0, int64_t q1) {
  const GemmB& b = pr.b;
  const int64_t panels = (b.n + kGemmPanel - 1) / kGemmPanel;
  const int max_rows = pr.ks->max_rows;
  const int64_t col_panels =
      std::max<int64_t>(pr.group, kColBlock / kGemmPanel / pr.group * pr.group);
  for (int64_t qc = q0; qc < q1; qc += col_panels) {
    const int64_t qc_end = std::min(q1, qc + col_panels);
    for (int64_t p0 = 0; p0 < b.k; p0 += kKBlock) {
      const int64_t kc = std::min<int64_t>(kKBlock, b.k - p0);
      for (int64_t ic = r0; ic < r1; ic += kRowBlock) {
        const int64_t ic_end = std::min(r1, ic + kRowBlock);
        for (int64_t q = qc; q < qc_end; q += pr.group) {
          const int np = static_cast<int>(std::min<int64_t>(pr.group, qc_end - q));
          const bool has_last = q + np == panels;
          const int last_cols =
              has_last ? static_cast<int>(b.n - (panels - 1) * kGemmPanel) : kGemmPanel;
          const bool mask_b = !b.padded && last_cols < kGemmPanel;
          for (int64_t i = ic; i < ic_end; i += max_rows) {
            const int mr = static_cast<int>(std::min<int64_t>(max_rows, ic_end - i));
            const MicroArgs args{.kc = kc,
                                 .a = pr.a + i * pr.lda + p0,
                                 .lda = pr.lda,
                                 .b = b.data + q * b.panel_stride + p0 * b.k_stride,
                                 .b_k = b.k_stride,
                                 .b_panel = b.panel_stride,
                                 .c = pr.c + i * pr.ldc + q * kGemmPanel,
                                 .ldc = pr.ldc,
                                 .last_cols = last_cols,
                                 .load_c = pr.accumulate || p0 > 0};
            pr.ks->table[mr - 1][np - 1][mask_b ? 1 : 0](args);
          }
        }
      }
    }
  }
}

}  // namespace

absl::Status Gemm(int64_t m, const float* a, int64_t lda, const GemmB& b, float* c, int64_t ldc,
                  const GemmOptions& options) {
  if (m < 0 || b.k < 0 || b.n < 0 || lda < b.k || ldc < b.n) {
    return absl::InvalidArgumentError(
        kv::StrCat("Gemm: bad sizes m=", m, " k=", b.k, " n=", b.n, " lda=", lda, " ldc=", ldc));
  }
  if (b.n > 0 && b.k > 0 &&
      (b.k_stride < (b.padded ? kGemmPanel : 0) || b.panel_stride < kGemmPanel ||
       (!b.padded && b.k_stride < b.n))) {
    return absl::InvalidArgumentError(
        kv::StrCat("Gemm: bad B strides k_stride=", b.k_stride, " panel_stride=", b.panel_stride));
  }
  GemmIsa isa = options.isa;
  if (isa == GemmIsa::kAuto) {
    absl::StatusOr<GemmIsa> d = DefaultGemmIsa();
    if (!d.ok()) return d.status();
    isa = *d;
  }
  const KernelSet* ks = Kernels(isa);
  if (ks == nullptr) {
    return absl::FailedPreconditionError(
        kv::StrCat("Gemm: this CPU cannot run the ", GemmIsaName(options.isa), " kernels"));
  }
  if (m == 0 || b.n == 0) return absl::OkStatus();
  if (c == nullptr || (b.k > 0 && (a == nullptr || b.data == nullptr))) {
    return absl::InvalidArgumentError("Gemm: null operand");
  }
  if (b.k == 0) {  // an empty sum: 0, or C unchanged when accumulating
    if (!options.accumulate) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + b.n, 0.0f);
    }
    return absl::OkStatus();
  }
  Problem pr{ks, a, lda, b, c, ldc, options.accumulate, 0};
  const int rows_hint = static_cast<int>(std::min<int64_t>(m, ks->max_rows));
  pr.group = ks->panels_for_rows[rows_hint - 1];
  const int64_t panels = (b.n + kGemmPanel - 1) / kGemmPanel;
  const int64_t groups = (panels + pr.group - 1) / pr.group;
  const double work = static_cast<double>(m) * b.n * b.k;
  int tasks = 1;
  if (options.pool != nullptr && work >= static_cast<double>(1 << 22)) {
    tasks = options.pool->size() + 1;
  }
  const int64_t row_blocks = (m + ks->max_rows - 1) / ks->max_rows;
  if (tasks > 1 && groups >= tasks) {
    // Split by columns: task t takes a contiguous run of panel groups.
    ParallelFor(options.pool, tasks, [&](int64_t t) {
      const int64_t g0 = groups * t / tasks, g1 = groups * (t + 1) / tasks;
      RunBlock(pr, 0, m, g0 * pr.group, std::min(panels, g1 * pr.group));
    });
  } else if (tasks > 1 && row_blocks >= 2) {
    const int64_t n_tasks = std::min<int64_t>(tasks, row_blocks);
    ParallelFor(options.pool, n_tasks, [&](int64_t t) {
      const int64_t b0 = row_blocks * t / n_tasks, b1 = row_blocks * (t + 1) / n_tasks;
      RunBlock(pr, b0 * ks->max_rows, std::min(m, b1 * ks->max_rows), 0, panels);
    });
  } else {
    RunBlock(pr, 0, m, 0, panels);
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels
