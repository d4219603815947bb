// Local generation on a DeepSeek-V4 model (model/v4_model.h): prefill the prompt into a
// fresh V4Cache, then decode token by token with a Sampler until max_tokens or an end token.
// The V4 counterpart of model/generate.h GenerateLocal (same request/result types; the
// request's MLA `layout` is ignored, `format` picks FP8 584-B records or the bf16 A/B form).
//
// kv_bytes in the result is the cache's compressed entries + indexer keys in their record
// formats (V4Cache::CompressedBytes; the 128-token windows are excluded), kv_bytes_per_token
// that divided by the tokens held. Safe to call concurrently on one V4Model.
#pragma once

#include "absl/status/statusor.h"
#include "core/clock.h"
#include "model/generate.h"
#include "model/v4_model.h"

namespace kv::model {

// InvalidArgument for an empty prompt, max_tokens <= 0, bad sampling params or token ids;
// OutOfRange past the model's max_context(); errors of Prefill / DecodeStep otherwise.
absl::StatusOr<GenerateResult> GenerateLocalV4(const V4Model& model, const GenerateRequest& req,
                                               V4CacheFormat format = V4CacheFormat::kFp8,
                                               Clock* clock = Clock::Real());

}  // namespace kv::model
