#include "model/generate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace kv::model {

absl::Status ValidateGenerateRequest(const GenerateRequest& req, int64_t max_context) {
  if (req.prompt.empty()) return absl::InvalidArgumentError("generate: empty prompt");
  if (req.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("generate: max_tokens must be > 0, got ", req.max_tokens));
  }
  RETURN_IF_ERROR(ValidateSamplingParams(req.sampling));
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (total > max_context) {
    return absl::OutOfRangeError(absl::StrCat("generate: prompt (", req.prompt.size(),
                                              ") + max_tokens (", req.max_tokens,
                                              ") exceeds the context limit ", max_context));
  }
  return absl::OkStatus();
}

absl::Status RunSamplingLoop(const GenerateRequest& req, std::vector<float> logits, Clock* clock,
                             absl::Time start,
                             const std::function<absl::StatusOr<std::vector<float>>(int32_t)>& step,
                             GenerateResult* r) {
  Sampler sampler(req.sampling);
  absl::Time first = start;
  for (int64_t i = 0; i < req.max_tokens; ++i) {
    ASSIGN_OR_RETURN(int32_t tok, sampler.Sample(logits));
    if (i == 0) {
      first = clock->Now();
      r->ttft = first - start;
    }
    r->tokens.push_back(tok);
    if (req.on_token) req.on_token(tok);
    if (std::find(req.stop_tokens.begin(), req.stop_tokens.end(), tok) != req.stop_tokens.end()) {
      r->stopped = true;
      break;
    }
    if (i + 1 == req.max_tokens) break;  // the last token needs no forward pass
    ASSIGN_OR_RETURN(logits, step(tok));
  }
  r->decode_time = clock->Now() - first;
  const double secs = absl::ToDoubleSeconds(r->decode_time);
  if (r->tokens.size() > 1 && secs > 0) r->decode_tokens_per_s = (r->tokens.size() - 1) / secs;
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> GenerateLocal(const Transformer& model, const GenerateRequest& req,
                                             Clock* clock) {
  RETURN_IF_ERROR(ValidateGenerateRequest(req, model.max_context()));
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  const absl::Time start = clock->Now();
  ASSIGN_OR_RETURN(std::unique_ptr<KvCache> kv, model.NewCache(req.layout, total));
  GenerateResult r;
  r.prompt_tokens = static_cast<int64_t>(req.prompt.size());
  r.kv_bytes_per_token = kv->bytes_per_token();
  ASSIGN_OR_RETURN(std::vector<float> logits,
                   model.Prefill(req.prompt, 0, kv.get(), {.chunk_tokens = req.prefill_chunk}));
  RETURN_IF_ERROR(RunSamplingLoop(
      req, std::move(logits), clock, start,
      [&](int32_t tok) { return model.DecodeStep(tok, kv->num_tokens(), kv.get()); }, &r));
  r.kv_bytes = kv->num_tokens() * r.kv_bytes_per_token;
  return r;
}

}  // namespace kv::model
