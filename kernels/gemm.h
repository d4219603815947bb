// The batch-invariant fp32 GEMM that every matrix product of the reference forward runs
// through (projections, the MLA absorptions, attention scores and value sums).
//
// Invariance contract: C[i][j] is one dot product of row i of A and column j of B, computed
// as acc = 0 (or C[i][j] with `accumulate`), then acc = fma(A[i][p], B[p][j], acc) for
// p = 0, 1, ..., k-1 in that order, each a correctly rounded fused multiply-add; so its bits
// depend only on that row and that column, never on m, the row's position or neighbours,
// the thread count, the CPU's vector width or any installed BLAS.
//
// Why not OpenBLAS (issue #13, docs/design-notes.md item 3): a BLAS microkernel may split or
// reorder the k reduction, and does so differently for different m, row positions, thread
// splits and CPU kernels (Haswell and Zen sgemm give rows that depend on their position in a
// 16-row tile; SkylakeX does not). The same prompt must produce the same page bytes whether
// it was prefilled in one call or in chunks, resumed from a cached prefix, or decoded one token
// at a time, on any machine of a fleet; only a fixed reduction order guarantees that.
//
// How it is fast anyway: vectorised across output columns, register-blocked over rows and
// columns (k-major panels of 16 columns), with the k loop cut into cache blocks whose partial
// sums are stored in C and reloaded (an exact fp32 round trip, so the FMA chain is unbroken).
// AVX-512 and AVX2+FMA microkernels are chosen at run time from the CPU (no -march flag in
// the build); the portable path uses std::fma. All paths give the same bits (gemm_test.cc
// compares every path this CPU supports, element for element).
//
// Thread-safety: Gemm is reentrant; concurrent calls must write distinct C. A PackedB is
// immutable after creation and may be shared. Gemm reads A and B only.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kv {
class ThreadPool;
}

namespace kv::kernels {

// Columns per panel: B is read as k-major panels of this many columns.
inline constexpr int kGemmPanel = 16;

// A view of the B operand (k rows × n columns) as k-major panels: element (p, j) is at
// data[(j / 16) * panel_stride + p * k_stride + j % 16]. Borrowed; the owner keeps it alive.
struct GemmB {
  const float* data = nullptr;
  int64_t k = 0;
  int64_t n = 0;
  int64_t k_stride = 0;      // elements from row p to row p+1 within a panel
  int64_t panel_stride = 0;  // elements from panel q to panel q+1
  // True when every panel has 16 readable columns (zero-padded past n), so the last panel
  // needs no masked loads. False for a plain row-major matrix.
  bool padded = false;

  // A plain row-major B[k×n] with row stride ldb >= n (no packing needed: its rows are
  // already k-major).
  static GemmB RowMajor(const float* b, int64_t k, int64_t n, int64_t ldb) {
    return GemmB{b, k, n, ldb, kGemmPanel, false};
  }
};

// B packed once into 16-column k-major panels, zero-padded, 64-byte aligned: the form of a
// weight that is multiplied many times. Movable, not copyable.
class PackedB {
 public:
  PackedB() = default;
  // op(B) = Wᵀ for a weight W stored [n×k] (nn.Linear / safetensors order), so that
  // Gemm(x, view()) computes y = x·Wᵀ. ld is W's row stride (>= k). InvalidArgument for
  // n, k < 1, ld < k or a null pointer.
  static absl::StatusOr<PackedB> FromWeight(const float* w, int64_t n, int64_t k, int64_t ld);
  static absl::StatusOr<PackedB> FromWeight(const float* w, int64_t n, int64_t k) {
    return FromWeight(w, n, k, k);
  }
  // op(B) = B for a row-major B[k×n] with row stride ldb >= n. Same errors.
  static absl::StatusOr<PackedB> FromMatrix(const float* b, int64_t k, int64_t n, int64_t ldb);

  GemmB view() const { return GemmB{data_.get(), k_, n_, kGemmPanel, k_ * kGemmPanel, true}; }
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  bool empty() const { return data_ == nullptr; }
  // Bytes held (panels are padded to 16 columns).
  uint64_t bytes() const { return static_cast<uint64_t>(panels()) * k_ * kGemmPanel * 4; }

 private:
  struct AlignedFree {
    void operator()(float* p) const;
  };
  int64_t panels() const { return (n_ + kGemmPanel - 1) / kGemmPanel; }
  static PackedB Zeroed(int64_t k, int64_t n);  // allocated, all zero
  int64_t k_ = 0;
  int64_t n_ = 0;
  std::unique_ptr<float[], AlignedFree> data_;
};

// Which microkernel family runs. kAuto is the process default: the widest family this CPU
// supports, unless the environment variable KVSTRATA_GEMM_ISA names one (auto, portable,
// avx2, avx512; read once), e.g. to check that a host's results do not depend on its vector
// width, or to rule the vector kernels out on a suspect CPU.
enum class GemmIsa { kAuto, kPortable, kAvx2, kAvx512 };
std::string_view GemmIsaName(GemmIsa isa);
// The families this CPU can run, narrowest first (kPortable always).
std::vector<GemmIsa> SupportedGemmIsas();
// What kAuto resolves to: InvalidArgument when KVSTRATA_GEMM_ISA is not one of the names
// above, FailedPrecondition when it names a family this CPU cannot run (every Gemm with
// kAuto then fails with the same error rather than run something else).
absl::StatusOr<GemmIsa> DefaultGemmIsa();

struct GemmOptions {
  // C = A·B (false) or continue each element's FMA chain from C's current value (true):
  // Gemm over k1 rows of B then, accumulating, over the next k2 equals one Gemm over k1 + k2.
  bool accumulate = false;
  // Split the work over the pool's threads and the caller (by output columns, or rows when
  // the columns are few). Results do not depend on it. Null: the caller's thread only. Small
  // products (under ~2^22 multiply-adds, where waking a helper costs more than it saves) run
  // on the caller.
  ThreadPool* pool = nullptr;
  // Tests and benchmarks force a family; FailedPrecondition if this CPU lacks it.
  GemmIsa isa = GemmIsa::kAuto;
};

// C[m×n] (row stride ldc >= n) = A[m×k] (row stride lda >= k) · B, with B.k == k, under the
// invariance contract above. m == 0 is a no-op. InvalidArgument for negative or mismatched
// sizes, strides too small, or null pointers; nothing is written then.
absl::Status Gemm(int64_t m, const float* a, int64_t lda, const GemmB& b, float* c, int64_t ldc,
                  const GemmOptions& options = {});

// y[m×n] = x[m×k] · Wᵀ for a packed weight: Gemm with contiguous rows.
inline absl::Status Linear(const float* x, int64_t m, const PackedB& w, float* y,
                           ThreadPool* pool = nullptr) {
  return Gemm(m, x, w.k(), w.view(), y, w.n(), GemmOptions{.pool = pool});
}

}  // namespace kv::kernels
