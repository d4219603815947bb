#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/portable_math.h"

namespace kv::model {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: temperature must be a finite value >= 0, got ", p.temperature));
  }
  if (!(p.top_p > 0.0 && p.top_p <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: top_p must be in (0, 1], got ", p.top_p));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> Argmax(std::span<const float> logits) {
  if (logits.empty()) return absl::InvalidArgumentError("sampling: empty logits");
  int32_t best = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) {
      return absl::InvalidArgumentError(absl::StrCat("sampling: logit ", i, " is NaN"));
    }
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), state_(params.seed) {}

double Sampler::NextUniform() {
  // SplitMix64 (Steele, Lea, Flood 2014): a full-period 64-bit generator.
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

void Sampler::Skip(int64_t samples) {
  if (params_.temperature == 0.0) return;  // greedy draws nothing
  for (int64_t i = 0; i < samples; ++i) (void)NextUniform();
}

absl::StatusOr<int32_t> Sampler::Sample(std::span<const float> logits) {
  RETURN_IF_ERROR(ValidateSamplingParams(params_));
  ASSIGN_OR_RETURN(int32_t best, Argmax(logits));
  if (params_.temperature == 0.0) return best;
  // Softmax in double at temperature T, relative to the max logit.
  const double inv_t = 1.0 / params_.temperature;
  const double max_logit = logits[best];
  std::vector<double> prob(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    prob[i] = kernels::ExpD((static_cast<double>(logits[i]) - max_logit) * inv_t);
  }
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  // Descending probability, ties by lower id: a total order, so the nucleus is deterministic.
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return prob[a] != prob[b] ? prob[a] > prob[b] : a < b; });
  const double total = std::accumulate(prob.begin(), prob.end(), 0.0);
  // Keep the smallest prefix whose mass reaches top_p (at least one token).
  double kept = 0;
  size_t n = 0;
  while (n < order.size()) {
    kept += prob[order[n++]];
    if (kept >= params_.top_p * total) break;
  }
  const double r = NextUniform() * kept;
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += prob[order[i]];
    if (r < acc) return order[i];
  }
  return order[n - 1];
}

}  // namespace kv::model
