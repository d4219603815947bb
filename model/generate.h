// Local generation: prefill a prompt into a fresh paged KV cache, then decode token by token
// with a Sampler until max_tokens or an end token. This is `kvstrata generate`'s local mode
// and the loop a decode worker runs; it involves no server.
//
// Timing is read through a kv::Clock (the real clock unless a test injects one): TTFT is
// from the call's start to the first sampled token (prefill included); decode tokens/s
// counts the tokens after the first over the time after the first.
//
// GenerateLocal is safe to call concurrently on one Transformer (each call owns its cache).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "kernels/kv_layout.h"
#include "model/sampling.h"
#include "model/transformer.h"

namespace kv::model {

struct GenerateRequest {
  std::vector<int32_t> prompt;  // token ids, non-empty
  int64_t max_tokens = 64;      // tokens to generate, > 0
  kernels::KvLayout layout = kernels::KvLayout::kMlaFp8_656;
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
  int64_t prefill_chunk = 256;
  // Called with each generated token as soon as it is sampled (may be empty).
  std::function<void(int32_t)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (a stop token, if hit, is included)
  bool stopped = false;         // true when a stop token ended generation
  int64_t prompt_tokens = 0;
  absl::Duration ttft;             // start -> first token
  absl::Duration decode_time;      // first token -> last token
  double decode_tokens_per_s = 0;  // (tokens - 1) / decode_time; 0 with one token
  int64_t kv_bytes_per_token = 0;  // all layers, in the request's layout
  int64_t kv_bytes = 0;            // committed tokens x kv_bytes_per_token at the end
};

// The request checks every local generator makes: InvalidArgument for an empty prompt,
// max_tokens <= 0 or bad sampling params; OutOfRange when prompt + max_tokens exceeds
// `max_context`.
absl::Status ValidateGenerateRequest(const GenerateRequest& req, int64_t max_context);

// The sampling loop every local generator runs after its prefill: samples from `logits`
// (the prompt's last position), reports each token, stops at max_tokens or a stop token, and
// gets the next logits from `step(token)`. Fills tokens, stopped, ttft (from `start`),
// decode_time and decode_tokens_per_s of `r`. Errors of the sampler or of `step`.
absl::Status RunSamplingLoop(const GenerateRequest& req, std::vector<float> logits, Clock* clock,
                             absl::Time start,
                             const std::function<absl::StatusOr<std::vector<float>>(int32_t)>& step,
                             GenerateResult* r);

// InvalidArgument for an empty prompt, max_tokens <= 0, bad sampling params or token ids;
// OutOfRange when prompt + max_tokens exceeds the model's context; errors of Prefill /
// DecodeStep otherwise.
absl::StatusOr<GenerateResult> GenerateLocal(const Transformer& model, const GenerateRequest& req,
                                             Clock* clock = Clock::Real());

}  // namespace kv::model
