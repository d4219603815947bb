// DeepSeek-V4 KV compressors (formats.md §4.3): learned softmax-gated pooling of projected
// token rows into compressed entries, then RMSNorm, then compress-RoPE on the trailing dims.
//
//   HCA (ratio 128, non-overlapping): entry w = RMSNorm(Σ_{j=128w..128w+127}
//       softmax_j(Z_j + B_{j-128w}) ⊙ C_j), RoPE at position 128w. C, Z, B rows are dim wide.
//   CSA (ratio 4, overlapping width 8 / stride 4): C, Z, B rows are 2·dim wide, Ca = [:dim],
//       Cb = [dim:]. Entry w pools 8 slots: Ca of tokens 4w-4..4w-1 and Cb of tokens
//       4w..4w+3, gates (Z + B) sliced the same way (B indexed by the slot inside its own
//       window), softmax over the 8 slots per channel, RMSNorm, RoPE at 4w. For w = 0 the
//       previous-window slots are zero kv with -inf gate (they drop out of the softmax).
//   The lightning indexer's compressor (§4.4) is a CSA compressor with dim = 128.
//
// Arithmetic is fp32 (softmax per channel with max subtraction; RMSNorm from kernels/rmsnorm.h;
// RoPE angles pos·freq and cos/sin in double, rounded once to float, interleaved pairs, no
// mscale: attention factor 1.0). Entry w exists once token ratio·w + ratio - 1 has arrived.
//
// Invariance contract: entry w depends only on its window's rows (slot order fixed, per-channel
// max, portable exp and sin/cos from kernels/portable_math.h, RMSNorm per row), so streaming,
// one-shot and resumed compression give the same bits.
//
// Compressor is immutable after Create (it owns copies of its weights); concurrent const use is
// safe. CompressorStream is a mutable value (one per layer per request), not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/rope.h"

namespace kv::kernels::v4 {

struct CompressorSpec {
  int ratio = 4;      // 4 (CSA) or 128 (HCA)
  int dim = 512;      // entry width (512 main, 128 indexer)
  int rope_dim = 64;  // trailing dims rotated, <= dim, even
  float eps = 1e-6f;  // RMSNorm epsilon
};

// Rotates the trailing rope_dim values of x[0..dim) in place at position pos (may be negative:
// RoPE(x, -i) is the inverse rotation used on attention outputs, §4.2). Interleaved pairs
// (x[2k], x[2k+1]) rotate by pos·freqs[k]; freqs has rope_dim/2 entries. Never fails.
void ApplyTrailingRope(const std::vector<double>& freqs, int64_t pos, int dim, int rope_dim,
                       float* x);

class Compressor {
 public:
  // position_bias has ratio × in_width() floats (row = slot inside the window); norm_weight
  // has dim floats; both are copied. InvalidArgument naming the problem: ratio not 4/128,
  // dim/rope_dim bad, wrong weight sizes, non-finite weights, bad RoPE params.
  static absl::StatusOr<Compressor> Create(const CompressorSpec& spec,
                                           std::vector<float> position_bias,
                                           std::vector<float> norm_weight,
                                           const YarnRopeParams& rope);

  const CompressorSpec& spec() const { return spec_; }
  bool overlapping() const { return spec_.ratio == 4; }
  // Width of one C (and Z) input row: dim for HCA, 2·dim for CSA.
  int in_width() const { return overlapping() ? 2 * spec_.dim : spec_.dim; }
  const std::vector<double>& rope_freqs() const { return freqs_; }

  // One-shot: tokens at positions [0, n) with rows c[t·in_width()...], z[...]; appends the
  // floor(n / ratio) entries (dim floats each) to *entries. InvalidArgument for null
  // pointers with n > 0, n < 0, or a non-finite input (names the token); nothing is
  // appended then.
  absl::Status CompressAll(const float* c, const float* z, int64_t n,
                           std::vector<float>* entries) const;

  // Entry w from explicit slot rows (used by CompressAll and CompressorStream so that both
  // give bit-identical results). prev_c/prev_z: ratio rows of dim floats (the previous
  // window's Ca / Za), or null for "no previous window" (CSA w = 0) and always null for HCA;
  // cur_c/cur_z: ratio rows of in_width() floats. Writes dim floats to out.
  // cos/sin (float, rounded once from double as ApplyTrailingRope does) of entries
  // [0, n_entries) at positions ratio·w: cs[w·rope_dim + 2k] = cos, [.. + 1] = sin. Input for
  // the CUDA compressor (kernels/v4/v4_cuda.h).
  std::vector<float> EntryRopeTable(int64_t n_entries) const;

  absl::Status ComputeEntry(int64_t w, const float* prev_c, const float* prev_z,
                            int64_t prev_stride, const float* cur_c, const float* cur_z,
                            int64_t cur_stride, float* out) const;

 private:
  Compressor() = default;
  CompressorSpec spec_;
  std::vector<float> bias_;
  std::vector<float> norm_;
  std::vector<double> freqs_;
};

// OK, or InvalidArgument naming the first non-finite value of rows × width floats.
absl::Status CheckFinite(const float* x, int64_t rows, int64_t width, const char* what);

// Streaming form with explicit rolling state (§4.3 "compressor state that must persist"):
// the rows of the not-yet-closed window (< ratio tokens) and, for CSA, the previous window's
// Ca / Za slices (ratio × dim each). Feeding tokens in any chunking yields entries
// bit-identical to Compressor::CompressAll over the concatenation.
class CompressorStream {
 public:
  explicit CompressorStream(const Compressor& comp);

  // Appends n tokens (rows as in CompressAll); entries closed by them are appended to
  // *entries. InvalidArgument (nothing changes) for bad pointers or non-finite input. If the
  // pooled sums overflow to Inf (inputs near FLT_MAX) the RMSNorm error is returned after
  // earlier entries of the chunk were emitted; the stream must then be discarded.
  absl::Status Append(const Compressor& comp, const float* c, const float* z, int64_t n,
                      std::vector<float>* entries);

  int64_t next_position() const { return next_pos_; }
  int64_t entries_emitted() const;
  int buffered_tokens() const { return n_buf_; }

  // Versioned byte form (the page's resume-section payload). Layout, little-endian:
  //   "KV4S" | u16 version=1 | u16 ratio | u32 dim | u64 next_position | u32 n_buffered |
  //   u8 has_prev | 3 zero bytes | f32 buffered C [n_buf × in_width] | f32 buffered Z [same] |
  //   (has_prev) f32 prev Ca [ratio × dim] | f32 prev Za [same] | u64 XXH3-64 of all before.
  std::string Serialize() const;
  // The size of Serialize() for a stream of a ratio-`ratio`, dim-wide compressor at
  // next_position (n_buffered = next_position mod ratio; the previous window kept by an
  // overlapping one once next_position >= ratio). Exact; 0 for ratio < 1.
  static uint64_t SerializedBytes(int ratio, int dim, int64_t next_position);
  // Rebuilds a stream for comp from bytes. DataLoss naming the defect for a truncated or
  // oversized buffer, bad magic, checksum mismatch, inconsistent counts, non-finite values;
  // FailedPrecondition when the state was written for another ratio/dim; Unimplemented for an
  // unknown version.
  static absl::StatusOr<CompressorStream> Deserialize(const Compressor& comp,
                                                      const std::string& bytes);

 private:
  int ratio_ = 0;
  int dim_ = 0;
  int in_width_ = 0;
  int64_t next_pos_ = 0;
  int n_buf_ = 0;
  bool has_prev_ = false;
  std::vector<float> buf_c_, buf_z_;    // ratio × in_width (first n_buf_ rows valid)
  std::vector<float> prev_c_, prev_z_;  // ratio × dim (CSA only)
};

}  // namespace kv::kernels::v4
