// Token sampling from a logits vector: greedy, or seeded temperature + top-p (nucleus).
//
// A Sampler owns a private PRNG (SplitMix64, fully specified here, so a seed gives the same
// tokens on every platform and standard library). Greedy sampling (temperature 0) draws no
// random numbers. A Sampler is not safe for concurrent use; use one per sequence.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kv::model {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy (argmax, lowest id on ties)
  double top_p = 1.0;        // in (0, 1]; 1 keeps the whole distribution
  uint64_t seed = 0;
};

// InvalidArgument naming the parameter when temperature < 0 or not finite, or top_p is
// outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& p);

// Index of the largest logit (lowest index on ties). InvalidArgument for an empty span or a
// NaN logit.
absl::StatusOr<int32_t> Argmax(std::span<const float> logits);

class Sampler {
 public:
  // `params` must pass ValidateSamplingParams (checked again by Sample()).
  explicit Sampler(const SamplingParams& params);

  // Picks a token id. Returns InvalidArgument for empty logits, a NaN logit or bad params.
  absl::StatusOr<int32_t> Sample(std::span<const float> logits);
  // Advances the generator as `samples` calls of Sample() would (one draw each unless
  // greedy), so a sequence sampled partly elsewhere (the first token on a prefill worker)
  // continues with the same random numbers.
  void Skip(int64_t samples);

 private:
  double NextUniform();  // [0, 1)

  SamplingParams params_;
  uint64_t state_;
};

}  // namespace kv::model
