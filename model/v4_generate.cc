#include "model/v4_generate.h"

#include <algorithm>

#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::model {

absl::StatusOr<GenerateResult> GenerateLocalV4(const V4Model& model, const GenerateRequest& req,
                                               V4CacheFormat format, Clock* clock) {
  if (req.prompt.empty()) return absl::InvalidArgumentError("generate: empty prompt");
  if (req.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        kv::StrCat("generate: max_tokens must be > 0, got ", req.max_tokens));
  }
  RETURN_IF_ERROR(ValidateSamplingParams(req.sampling));
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (total > model.max_context()) {
    return absl::OutOfRangeError(kv::StrCat("generate: prompt (", req.prompt.size(),
                                            ") + max_tokens (", req.max_tokens,
                                            ") exceeds the context limit ", model.max_context()));
  }
  const absl::Time start = clock->Now();
  std::unique_ptr<V4Cache> kv = model.NewCache(format);
  Sampler sampler(req.sampling);
  GenerateResult r;
  r.prompt_tokens = static_cast<int64_t>(req.prompt.size());
  // Generation never exports pages: no resume snapshots at page ends.
  ASSIGN_OR_RETURN(std::vector<float> logits,
                   model.Prefill(req.prompt, 0, kv.get(),
                                 {.chunk_tokens = req.prefill_chunk, .keep_page_resume = false}));
  absl::Time first = start;
  for (int64_t i = 0; i < req.max_tokens; ++i) {
    ASSIGN_OR_RETURN(int32_t tok, sampler.Sample(logits));
    if (i == 0) {
      first = clock->Now();
      r.ttft = first - start;
    }
    r.tokens.push_back(tok);
    if (req.on_token) req.on_token(tok);
    if (std::find(req.stop_tokens.begin(), req.stop_tokens.end(), tok) != req.stop_tokens.end()) {
      r.stopped = true;
      break;
    }
    if (i + 1 == req.max_tokens) break;  // the last token needs no forward pass
    ASSIGN_OR_RETURN(logits, model.DecodeStep(tok, kv->num_tokens(), kv.get()));
  }
  r.decode_time = clock->Now() - first;
  const double secs = absl::ToDoubleSeconds(r.decode_time);
  if (r.tokens.size() > 1 && secs > 0) r.decode_tokens_per_s = (r.tokens.size() - 1) / secs;
  r.kv_bytes = kv->CompressedBytes();
  r.kv_bytes_per_token = kv->num_tokens() > 0 ? r.kv_bytes / kv->num_tokens() : 0;
  return r;
}

}  // namespace kv::model
