#include "model/v4_generate.h"

#include "core/status_macros.h"

namespace kv::model {

absl::StatusOr<GenerateResult> GenerateLocalV4(const V4Model& model, const GenerateRequest& req,
                                               V4CacheFormat format, Clock* clock) {
  RETURN_IF_ERROR(ValidateGenerateRequest(req, model.max_context()));
  const absl::Time start = clock->Now();
  std::unique_ptr<V4Cache> kv = model.NewCache(format);
  GenerateResult r;
  r.prompt_tokens = static_cast<int64_t>(req.prompt.size());
  // Generation never exports pages: no resume snapshots at page ends.
  ASSIGN_OR_RETURN(std::vector<float> logits,
                   model.Prefill(req.prompt, 0, kv.get(),
                                 {.chunk_tokens = req.prefill_chunk, .keep_page_resume = false}));
  RETURN_IF_ERROR(RunSamplingLoop(
      req, std::move(logits), clock, start,
      [&](int32_t tok) { return model.DecodeStep(tok, kv->num_tokens(), kv.get()); }, &r));
  r.kv_bytes = kv->CompressedBytes();
  r.kv_bytes_per_token = kv->num_tokens() > 0 ? r.kv_bytes / kv->num_tokens() : 0;
  return r;
}

}  // namespace kv::model
