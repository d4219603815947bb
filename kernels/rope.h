// YaRN rotary position embedding with DeepSeek's interleaved pairs, and the MLA softmax
// scale (formats.md §1.2, §1.3).
//
// Pair i of a rope vector is (x[2i], x[2i+1]) and rotates by angle pos * freq_i', where
//   freq_i  = theta^(-2i/rope_dim), i = 0 .. rope_dim/2 - 1
//   low     = floor(corr(beta_fast)), high = ceil(corr(beta_slow)), clamped to [0, rope_dim-1],
//   corr(r) = rope_dim * ln(original_max_position / (2π r)) / (2 ln theta)
//   ramp_i  = clamp((i - low) / (high - low), 0, 1)  (high += 0.001 when equal)
//   freq_i' = freq_i / factor * ramp_i + freq_i * (1 - ramp_i)
// For V3 (theta 1e4, factor 40, original 4096, beta 32/1): low 10, high 23.
// YaRN applies only when factor > 1; otherwise freq_i' = freq_i.
// cos/sin are multiplied by yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
// (HF DeepSeek-V3 semantics; exactly 1 for V3, whose config sets both to 1.0, so identical
// to the reference inference/model.py which applies no factor).
// Softmax scale = qk_head_dim^-0.5 * yarn_mscale(factor, mscale_all_dim)^2, with
// yarn_mscale(s, m) = 0.1 * m * ln(s) + 1 for s > 1, else 1. V3: 0.13523378 (never 576^-0.5).
// Tables are computed in double and rounded once to float.
//
// Invariance contract: frequencies, YaRN corrections and tables come from the portable
// log/exp/sin/cos (kernels/portable_math.h), never libm, so a table has the same bits on every
// host; ApplyRope is two products and a sum per element, in a fixed order.
//
// RopeTable is an immutable value; sharing it across threads is safe. ApplyRope writes only
// the rope elements it is pointed at.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kv::kernels {

struct YarnRopeParams {
  double theta = 10000.0;                // rope_theta
  double factor = 40.0;                  // rope_scaling.factor (<= 1: no YaRN)
  int64_t original_max_position = 4096;  // rope_scaling.original_max_position_embeddings
  double beta_fast = 32.0;               // rope_scaling.beta_fast
  double beta_slow = 1.0;                // rope_scaling.beta_slow
  double mscale = 1.0;                   // rope_scaling.mscale
  double mscale_all_dim = 1.0;           // rope_scaling.mscale_all_dim
  int rope_dim = 64;                     // qk_rope_head_dim (even)
};

// InvalidArgument naming the field: theta <= 1, rope_dim not positive and even, factor <= 0,
// original_max_position <= 0, beta_fast/beta_slow <= 0, non-finite values.
absl::Status ValidateRopeParams(const YarnRopeParams& p);

// The rotation frequencies freq_i' (rope_dim/2 of them), in double.
absl::StatusOr<std::vector<double>> RopeFrequencies(const YarnRopeParams& p);

// qk_head_dim^-0.5 * mscale^2 (see above). qk_head_dim is qk_nope_head_dim +
// qk_rope_head_dim (192 for V3). InvalidArgument for qk_head_dim <= 0 or bad params.
absl::StatusOr<float> MlaSoftmaxScale(const YarnRopeParams& p, int qk_head_dim);

// cos/sin of every (position, pair) for positions [0, max_positions).
struct RopeTable {
  int rope_dim = 0;
  int64_t max_positions = 0;
  std::vector<float> cos;  // [max_positions][rope_dim/2]
  std::vector<float> sin;  // [max_positions][rope_dim/2]
};
// InvalidArgument for bad params or max_positions <= 0 (or > 2^26, to bound memory).
absl::StatusOr<RopeTable> BuildRopeTable(const YarnRopeParams& p, int64_t max_positions);

// Rotates in place the rope vectors of n tokens × heads: the vector of (token t, head h)
// starts at x + t*token_stride + h*head_stride (elements) and has table.rope_dim values;
// token t is at position positions[t]. (x[2i], x[2i+1]) -> (x0 c - x1 s, x0 s + x1 c).
// InvalidArgument for null pointers, n < 0, heads <= 0, or a position outside the table
// (nothing is written then: all positions are checked first). Values are not inspected:
// a NaN in gives NaN out for that pair.
absl::Status ApplyRope(const RopeTable& table, const int64_t* positions, int64_t n, int heads,
                       float* x, int64_t token_stride, int64_t head_stride);

}  // namespace kv::kernels
