#include "kernels/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "kernels/portable_math.h"

namespace kv::kernels {
namespace {

// yarn_get_mscale (HF DeepSeek-V3 / inference/model.py): 0.1 * m * ln(s) + 1 for s > 1.
double YarnMscale(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * LogD(scale) + 1.0;
}

// corr(r) = dim * ln(original / (2π r)) / (2 ln θ)  (formats.md §1.3).
double CorrectionDim(double rotations, const YarnRopeParams& p) {
  return p.rope_dim *
         LogD(static_cast<double>(p.original_max_position) / (2.0 * std::numbers::pi * rotations)) /
         (2.0 * LogD(p.theta));
}

}  // namespace

absl::Status ValidateRopeParams(const YarnRopeParams& p) {
  auto bad = [](const char* field, double v) {
    return absl::InvalidArgumentError(absl::StrCat("rope params: bad ", field, " ", v));
  };
  if (!std::isfinite(p.theta) || p.theta <= 1.0) return bad("rope_theta", p.theta);
  if (p.rope_dim <= 0 || p.rope_dim % 2 != 0) return bad("qk_rope_head_dim", p.rope_dim);
  if (!std::isfinite(p.factor) || p.factor <= 0) return bad("rope_scaling.factor", p.factor);
  if (p.original_max_position <= 0) {
    return bad("rope_scaling.original_max_position_embeddings",
               static_cast<double>(p.original_max_position));
  }
  if (!std::isfinite(p.beta_fast) || p.beta_fast <= 0) return bad("beta_fast", p.beta_fast);
  if (!std::isfinite(p.beta_slow) || p.beta_slow <= 0) return bad("beta_slow", p.beta_slow);
  if (!std::isfinite(p.mscale)) return bad("rope_scaling.mscale", p.mscale);
  if (!std::isfinite(p.mscale_all_dim)) return bad("mscale_all_dim", p.mscale_all_dim);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> RopeFrequencies(const YarnRopeParams& p) {
  if (absl::Status s = ValidateRopeParams(p); !s.ok()) return s;
  const int half = p.rope_dim / 2;
  std::vector<double> freq(half);
  for (int i = 0; i < half; ++i) freq[i] = PowD(p.theta, -2.0 * i / p.rope_dim);
  if (p.factor <= 1.0) return freq;
  double low = std::floor(CorrectionDim(p.beta_fast, p));
  double high = std::ceil(CorrectionDim(p.beta_slow, p));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(p.rope_dim - 1));
  if (low == high) high += 0.001;  // as the reference's linear_ramp_factor
  for (int i = 0; i < half; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    freq[i] = freq[i] / p.factor * ramp + freq[i] * (1.0 - ramp);
  }
  return freq;
}

absl::StatusOr<float> MlaSoftmaxScale(const YarnRopeParams& p, int qk_head_dim) {
  if (absl::Status s = ValidateRopeParams(p); !s.ok()) return s;
  if (qk_head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad qk_head_dim ", qk_head_dim));
  }
  const double m = YarnMscale(p.factor, p.mscale_all_dim);
  return static_cast<float>(m * m / std::sqrt(static_cast<double>(qk_head_dim)));
}

absl::StatusOr<RopeTable> BuildRopeTable(const YarnRopeParams& p, int64_t max_positions) {
  auto freq = RopeFrequencies(p);
  if (!freq.ok()) return freq.status();
  if (max_positions <= 0 || max_positions > (int64_t{1} << 26)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope table: max_positions ", max_positions, " outside (0, 2^26]"));
  }
  const double amp = YarnMscale(p.factor, p.mscale) / YarnMscale(p.factor, p.mscale_all_dim);
  RopeTable t;
  t.rope_dim = p.rope_dim;
  t.max_positions = max_positions;
  const int half = p.rope_dim / 2;
  t.cos.resize(max_positions * half);
  t.sin.resize(max_positions * half);
  for (int64_t pos = 0; pos < max_positions; ++pos) {
    for (int i = 0; i < half; ++i) {
      double sn, cs;
      SinCosD(static_cast<double>(pos) * (*freq)[i], &sn, &cs);
      t.cos[pos * half + i] = static_cast<float>(cs * amp);
      t.sin[pos * half + i] = static_cast<float>(sn * amp);
    }
  }
  return t;
}

absl::Status ApplyRope(const RopeTable& table, const int64_t* positions, int64_t n, int heads,
                       float* x, int64_t token_stride, int64_t head_stride) {
  if (n < 0 || heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRope: bad n ", n, " or heads ", heads));
  }
  if (n == 0) return absl::OkStatus();
  if (positions == nullptr || x == nullptr) {
    return absl::InvalidArgumentError("ApplyRope: null positions or data");
  }
  for (int64_t t = 0; t < n; ++t) {
    if (positions[t] < 0 || positions[t] >= table.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat("ApplyRope: token ", t, " position ",
                                                     positions[t], " outside the table [0, ",
                                                     table.max_positions, ")"));
    }
  }
  const int half = table.rope_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    const float* c = table.cos.data() + positions[t] * half;
    const float* s = table.sin.data() + positions[t] * half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + t * token_stride + h * head_stride;
      for (int i = 0; i < half; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c[i] - x1 * s[i];
        v[2 * i + 1] = x0 * s[i] + x1 * c[i];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels
