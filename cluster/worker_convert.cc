#include "cluster/worker_convert.h"

#include <algorithm>

#include <cstring>

#include "cluster/proto_convert.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

namespace {

pb::TransportKind TransportKindOf(const std::string& name) {
  if (name == "ucx") return pb::TRANSPORT_KIND_UCX;
  if (name == "inproc") return pb::TRANSPORT_KIND_INPROC;
  if (name == "nccl") return pb::TRANSPORT_KIND_NCCL;
  if (name == "grpc") return pb::TRANSPORT_KIND_GRPC;
  // A worker's local tier (kv::CachingPagePool): an all-local read moved no byte over the
  // network; a mixed one ("local+ucx") is reported by its remote path.
  if (name == "local") return pb::TRANSPORT_KIND_INPROC;
  if (name.starts_with("local+")) return TransportKindOf(name.substr(6));
  return pb::TRANSPORT_KIND_UNSPECIFIED;
}

std::string TransportName(pb::TransportKind k) {
  switch (k) {
    case pb::TRANSPORT_KIND_UCX:
      return "ucx";
    case pb::TRANSPORT_KIND_INPROC:
      return "inproc";
    case pb::TRANSPORT_KIND_NCCL:
      return "nccl";
    case pb::TRANSPORT_KIND_GRPC:
      return "grpc";
    default:
      return "";
  }
}

void AddSlots(const transport::HandoffDestination& d,
              google::protobuf::RepeatedPtrField<pb::RemoteRegion>* pages) {
  for (int64_t s = 0; s < d.slots; ++s) {
    pb::RemoteRegion* p = pages->Add();
    p->set_transport(TransportKindOf(d.transport));
    p->set_address(d.region_address + static_cast<uint64_t>(s) * d.slot_bytes);
    p->set_length(d.slot_bytes);
    p->set_remote_key(d.region_key);
  }
}

}  // namespace

pb::KeySpace ToKeySpace(const KeyParams& kp) {
  pb::KeySpace ks;
  ks.set_model_fingerprint(std::string(kp.model_fingerprint.begin(), kp.model_fingerprint.end()));
  ks.set_layout(kp.layout_id);
  ks.set_page_tokens(kp.page_tokens);
  if (kp.chain != KeyChain::kTokens) {
    ks.set_key_chain(std::string(KeyChainName(kp.chain)));
    ks.set_engine_hash_seed(kp.engine_hash_seed);
  }
  return ks;
}

void ToProto(const model::SamplingParams& s, int64_t max_tokens,
             const std::vector<int32_t>& stop_tokens, bool ignore_eos, pb::SamplingParams* out) {
  out->set_max_new_tokens(static_cast<uint32_t>(max_tokens));
  out->set_temperature(static_cast<float>(s.temperature));
  out->set_top_p(static_cast<float>(s.top_p));
  out->set_seed(s.seed);
  for (int32_t t : stop_tokens) out->add_stop_token_ids(static_cast<uint32_t>(t));
  out->set_ignore_eos(ignore_eos);
}

absl::StatusOr<model::SamplingParams> FromProto(const pb::SamplingParams& s) {
  if (s.top_k() != 0) return absl::InvalidArgumentError("sampling.top_k is not supported");
  model::SamplingParams p;
  p.temperature = s.temperature();
  p.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  p.seed = s.seed();
  RETURN_IF_ERROR(model::ValidateSamplingParams(p));
  return p;
}

void ToProto(const CachedRun& run, pb::CachedRun* out) {
  out->set_node_id(run.node_id);
  out->set_grpc_address(run.address);
  out->set_first_block(0);
  for (const BlockKey& k : run.keys) out->add_keys(std::string(k.bytes.begin(), k.bytes.end()));
  out->set_lease_id(run.lease_id);
  // Opaque above cluster/: the pool's serialized PinBlocksResponse (cluster/page_pool.cc).
  if (!run.lent.empty() && !out->mutable_lent()->ParseFromString(run.lent)) out->clear_lent();
}

absl::StatusOr<CachedRun> FromProto(const pb::CachedRun& run) {
  if (run.first_block() != 0) {
    return absl::InvalidArgumentError("cached run must start at block 0");
  }
  CachedRun r{.node_id = run.node_id(), .address = run.grpc_address(), .lease_id = run.lease_id()};
  if (run.has_lent()) r.lent = run.lent().SerializeAsString();
  for (const std::string& k : run.keys()) {
    if (k.size() != 32) {
      return absl::InvalidArgumentError(StrCat("cached run key of ", k.size(), " bytes"));
    }
    BlockKey key;
    std::memcpy(key.bytes.data(), k.data(), 32);
    r.keys.push_back(key);
  }
  return r;
}

void ToProto(const transport::HandoffDestination& d, pb::HandoffReady* out) {
  out->set_handoff_id(d.handoff_id);
  if (!d.valid()) return;
  out->set_transport(TransportKindOf(d.transport));
  out->set_endpoint(d.endpoint);
  AddSlots(d, out->mutable_pages());
}

transport::HandoffDestination FromProto(const pb::HandoffReady& r, const std::string& node_id) {
  transport::HandoffDestination d{.handoff_id = r.handoff_id(),
                                  .node_id = node_id,
                                  .transport = TransportName(r.transport()),
                                  .endpoint = r.endpoint(),
                                  .slots = r.pages_size()};
  if (r.pages_size() > 0) {
    d.region_key = r.pages(0).remote_key();
    d.region_address = r.pages(0).address();
    d.slot_bytes = r.pages(0).length();
  }
  return d;
}

void ToProto(const transport::HandoffDestination& d, pb::HandoffTarget* out) {
  out->set_handoff_id(d.handoff_id);
  out->set_node_id(d.node_id);
  out->set_transport(TransportKindOf(d.transport));
  out->set_endpoint(d.endpoint);
  AddSlots(d, out->mutable_pages());
}

absl::StatusOr<transport::HandoffDestination> FromProto(const pb::HandoffTarget& t) {
  transport::HandoffDestination d{.handoff_id = t.handoff_id(),
                                  .node_id = t.node_id(),
                                  .transport = TransportName(t.transport()),
                                  .endpoint = t.endpoint(),
                                  .slots = t.pages_size()};
  if (t.pages_size() > 0) {
    d.region_key = t.pages(0).remote_key();
    d.region_address = t.pages(0).address();
    d.slot_bytes = t.pages(0).length();
  }
  for (int i = 0; i < t.pages_size(); ++i) {
    const pb::RemoteRegion& p = t.pages(i);
    if (p.remote_key() != d.region_key || p.length() != d.slot_bytes ||
        p.address() != d.region_address + static_cast<uint64_t>(i) * d.slot_bytes) {
      return absl::InvalidArgumentError(
          "handoff target pages must be consecutive equal slices of one region");
    }
  }
  return d;
}

pb::FinishReason ToProto(decode::FinishReason r) {
  switch (r) {
    case decode::FinishReason::kEos:
      return pb::FINISH_REASON_EOS;
    case decode::FinishReason::kStopToken:
      return pb::FINISH_REASON_STOP_TOKEN;
    case decode::FinishReason::kCancelled:
      return pb::FINISH_REASON_CANCELLED;
    case decode::FinishReason::kLength:
      break;
  }
  return pb::FINISH_REASON_LENGTH;
}

decode::FinishReason FromProto(pb::FinishReason r) {
  switch (r) {
    case pb::FINISH_REASON_EOS:
      return decode::FinishReason::kEos;
    case pb::FINISH_REASON_STOP_TOKEN:
      return decode::FinishReason::kStopToken;
    case pb::FINISH_REASON_CANCELLED:
      return decode::FinishReason::kCancelled;
    default:
      return decode::FinishReason::kLength;
  }
}

void ToProto(const decode::DecodeRequest& r, const KeyParams& kp, pb::DecodeStart* s) {
  s->set_request_id(r.request_id);
  for (int32_t t : r.prompt) s->add_token_ids(static_cast<uint32_t>(t));
  *s->mutable_key_space() = ToKeySpace(kp);
  s->set_shared_prefix_tokens(static_cast<uint32_t>(std::max<int64_t>(0, r.shared_prefix_tokens)));
  ToProto(r.sampling, r.max_tokens, r.stop_tokens, r.ignore_eos, s->mutable_sampling());
  s->set_session_id(r.session_id);
  if (r.retention > absl::ZeroDuration()) SetDuration(r.retention, s->mutable_retention_ttl());
  s->add_transports(pb::TRANSPORT_KIND_UCX);
  s->set_skip_publish(r.skip_publish);
  if (r.cached) ToProto(*r.cached, s->add_cached());
}

void ToProto(const prefill::PrefillRequest& r, const KeyParams& kp, pb::PrefillRequest* p) {
  p->set_request_id(r.request_id);
  for (int32_t t : r.prompt) p->add_token_ids(static_cast<uint32_t>(t));
  *p->mutable_key_space() = ToKeySpace(kp);
  p->set_shared_prefix_tokens(static_cast<uint32_t>(std::max<int64_t>(0, r.shared_prefix_tokens)));
  if (r.cached) ToProto(*r.cached, p->add_cached());
  ToProto(r.target, p->mutable_target());
  p->set_session_id(r.session_id);
  if (r.retention > absl::ZeroDuration()) SetDuration(r.retention, p->mutable_retention_ttl());
  p->set_skip_publish(r.skip_publish);
}

void ToProto(const prefill::PrefillDone& d, pb::PrefillDone* out) {
  out->set_cached_tokens(static_cast<uint32_t>(d.cached_tokens));
  out->set_recomputed_tokens(static_cast<uint32_t>(d.recomputed_tokens));
  out->set_bytes_transferred(d.bytes_loaded + d.bytes_sent);
  out->set_transport(TransportKindOf(d.transport));
  SetDuration(d.load_time, out->mutable_load_time());
  SetDuration(d.compute_time, out->mutable_compute_time());
  out->set_queued_pages(static_cast<uint32_t>(d.queued_pages));
  for (uint64_t x : d.slot_xxh3) out->add_block_xxh3(x);
  out->set_kv_tokens(static_cast<uint32_t>(d.kv_tokens));
  out->set_bytes_handed_off(d.bytes_sent);
  SetDuration(d.handoff_time, out->mutable_handoff_time());
  out->set_pool_transport(TransportKindOf(d.pool_transport));
}

prefill::PrefillDone FromProto(const pb::PrefillDone& d) {
  prefill::PrefillDone out{.kv_tokens = d.kv_tokens(),
                           .cached_tokens = d.cached_tokens(),
                           .recomputed_tokens = d.recomputed_tokens(),
                           .bytes_sent = d.bytes_handed_off(),
                           .transport = TransportName(d.transport()),
                           .load_time = FromProto(d.load_time()),
                           .compute_time = FromProto(d.compute_time()),
                           .queued_pages = d.queued_pages()};
  out.bytes_loaded = d.bytes_transferred() - std::min(d.bytes_transferred(), d.bytes_handed_off());
  out.handoff_time = FromProto(d.handoff_time());
  out.pool_transport = TransportName(d.pool_transport());
  out.slot_xxh3.assign(d.block_xxh3().begin(), d.block_xxh3().end());
  return out;
}

void ToProto(const decode::PrefillResult& r, pb::PrefillResult* out) {
  out->set_kv_tokens(static_cast<uint32_t>(r.kv_tokens));
  for (uint64_t x : r.slot_xxh3) out->add_block_xxh3(x);
  out->set_prefill_node_id(r.prefill_node_id);
}

decode::PrefillResult FromProto(const pb::PrefillResult& r) {
  decode::PrefillResult out{.kv_tokens = r.kv_tokens(), .prefill_node_id = r.prefill_node_id()};
  out.slot_xxh3.assign(r.block_xxh3().begin(), r.block_xxh3().end());
  return out;
}

void ToProto(const decode::DecodeOutcome& o, pb::DecodeDone* d) {
  d->set_finish_reason(ToProto(o.finish));
  d->set_output_tokens(static_cast<uint32_t>(o.tokens.size()));
  SetDuration(o.decode_time, d->mutable_decode_time());
  d->set_published_pages(static_cast<uint32_t>(o.published_pages));
  d->set_handoff_imported(o.handoff == decode::HandoffVerdict::kVerified);
  if (o.handoff != decode::HandoffVerdict::kVerified) {
    d->set_cached_tokens(static_cast<uint32_t>(o.cached_tokens));
    d->set_recomputed_tokens(static_cast<uint32_t>(o.recomputed_tokens));
    SetDuration(o.load_time, d->mutable_load_time());
    SetDuration(o.compute_time, d->mutable_compute_time());
    d->set_bytes_loaded(o.bytes_loaded);
    d->set_pool_transport(TransportKindOf(o.pool_transport));
  }
}

decode::DecodeOutcome FromProto(const pb::DecodeDone& d) {
  decode::DecodeOutcome o;
  o.finish = FromProto(d.finish_reason());
  o.decode_time = FromProto(d.decode_time());
  o.published_pages = d.published_pages();
  o.cached_tokens = d.cached_tokens();
  o.recomputed_tokens = d.recomputed_tokens();
  o.load_time = FromProto(d.load_time());
  o.compute_time = FromProto(d.compute_time());
  o.bytes_loaded = d.bytes_loaded();
  o.pool_transport = TransportName(d.pool_transport());
  o.handoff =
      d.handoff_imported() ? decode::HandoffVerdict::kVerified : decode::HandoffVerdict::kNone;
  return o;
}

}  // namespace kv::cluster
