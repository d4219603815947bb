// Conversions between the worker libraries' values (prefill/prefill_worker.h,
// decode/decode_session.h, transport/handoff.h, kvstore/page_pool.h) and kvstrata.v1 Worker
// messages, used by both ends of the Worker service: WorkerService (server) and
// GrpcWorkerClient (the router's client).
//
// Requests are converted without their tenant (a worker derives it from the caller's
// credential); From* functions take it from the caller. Errors are InvalidArgument naming the
// malformed field.
//
// Thread-safety: pure functions.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "decode/decode_session.h"
#include "kvstore/block_key.h"
#include "kvstore/page_pool.h"
#include "prefill/prefill_worker.h"
#include "proto/kvstrata/v1/worker.pb.h"
#include "transport/handoff.h"

namespace kv::cluster {

kvstrata::v1::KeySpace ToKeySpace(const KeyParams& kp);

void ToProto(const model::SamplingParams& s, int64_t max_tokens,
             const std::vector<int32_t>& stop_tokens, bool ignore_eos,
             kvstrata::v1::SamplingParams* out);
// InvalidArgument for top_k (unsupported) or invalid values.
absl::StatusOr<model::SamplingParams> FromProto(const kvstrata::v1::SamplingParams& s);

void ToProto(const CachedRun& run, kvstrata::v1::CachedRun* out);
absl::StatusOr<CachedRun> FromProto(const kvstrata::v1::CachedRun& run);

void ToProto(const transport::HandoffDestination& d, kvstrata::v1::HandoffReady* out);
transport::HandoffDestination FromProto(const kvstrata::v1::HandoffReady& r,
                                        const std::string& node_id);
void ToProto(const transport::HandoffDestination& d, kvstrata::v1::HandoffTarget* out);
// InvalidArgument unless the pages are consecutive equal slices of one region.
absl::StatusOr<transport::HandoffDestination> FromProto(const kvstrata::v1::HandoffTarget& t);

kvstrata::v1::FinishReason ToProto(decode::FinishReason r);
decode::FinishReason FromProto(kvstrata::v1::FinishReason r);

// The request's messages, keyed in `kp`'s key space (token ids, sampling, cached run, ...).
void ToProto(const decode::DecodeRequest& r, const KeyParams& kp, kvstrata::v1::DecodeStart* out);
void ToProto(const prefill::PrefillRequest& r, const KeyParams& kp,
             kvstrata::v1::PrefillRequest* out);

void ToProto(const prefill::PrefillDone& d, kvstrata::v1::PrefillDone* out);
prefill::PrefillDone FromProto(const kvstrata::v1::PrefillDone& d);
void ToProto(const decode::PrefillResult& r, kvstrata::v1::PrefillResult* out);
decode::PrefillResult FromProto(const kvstrata::v1::PrefillResult& r);
void ToProto(const decode::DecodeOutcome& o, kvstrata::v1::DecodeDone* out);
decode::DecodeOutcome FromProto(const kvstrata::v1::DecodeDone& d);

}  // namespace kv::cluster
