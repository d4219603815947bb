#include "cluster/engine_backend.h"

#include "cluster/proto_convert.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

absl::StatusOr<prefill::GenerateResult> EngineBackend::Generate(const prefill::GenerateRequest& req,
                                                                Route* route) {
  route->prefill_node_id = node_id_;
  route->decode_node_id = node_id_;
  return engine_->Generate(req);
}

absl::Status EngineBackend::Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                                   int64_t shared_prefix_tokens, bool include_keys,
                                   const std::string&, pb::LookupResponse* out) {
  absl::StatusOr<prefill::LookupInfo> info = engine_->Lookup(prompt, tenant, shared_prefix_tokens);
  if (!info.ok()) return info.status();
  FillLookup(*engine_, *info, node_id_, include_keys, out);
  return absl::OkStatus();
}

void EngineBackend::ListNodes(const ServiceContext& self, const pb::ListNodesRequest&,
                              pb::ListNodesResponse* out) {
  // --role=all serves every role, so any filter matches.
  pb::NodeInfo* n = out->add_nodes();
  n->set_node_id(self.node_id);
  for (pb::Role r : {pb::ROLE_ROUTER, pb::ROLE_PREFILL, pb::ROLE_DECODE, pb::ROLE_STORE}) {
    n->add_roles(r);
  }
  n->set_grpc_address(self.address);
  n->add_transports()->set_kind(pb::TRANSPORT_KIND_INPROC);
  StoreStats ss = engine_->store().Stats();
  for (int t = 0; t < kNumTiers; ++t) {
    if (!ss.tiers[t].present) continue;
    FillCapacity(*engine_, static_cast<TierKind>(t), ss.tiers[t], n->add_tiers());
  }
  n->mutable_load()->set_active_requests(static_cast<uint32_t>(std::max(0, self.active_requests)));
  pb::KeySpace* ks = n->add_key_spaces();
  const KeyParams& kp = engine_->key_params();
  ks->set_model_fingerprint(std::string(kp.model_fingerprint.begin(), kp.model_fingerprint.end()));
  ks->set_layout(kp.layout_id);
  ks->set_page_tokens(kp.page_tokens);
  n->set_version(self.version);
  out->set_membership_source("static");
  SetTimestamp(absl::Now(), out->mutable_updated_at());
}

void EngineBackend::GetStats(const ServiceContext& self, pb::GetStatsResponse* response) {
  pb::NodeStats* out = response->mutable_self();
  out->set_node_id(self.node_id);
  prefill::EngineCounters c = engine_->Counters();
  out->set_requests_ok(c.requests_ok);
  out->set_requests_failed(c.requests_failed);
  out->set_cached_tokens(c.cached_tokens);
  out->set_recomputed_tokens(c.recomputed_tokens);
  out->set_output_tokens(c.output_tokens);
  StoreStats ss = engine_->store().Stats();
  uint64_t read_bytes = 0;
  for (int t = 0; t < kNumTiers; ++t) {
    if (!ss.tiers[t].present) continue;
    const TierStats& ts = ss.tiers[t];
    pb::TierStats* tier = out->add_tiers();
    tier->set_tier(ToProto(static_cast<TierKind>(t)));
    FillCapacity(*engine_, static_cast<TierKind>(t), ts, tier->mutable_capacity());
    tier->set_hits(ts.hits);
    tier->set_misses(ts.misses);
    tier->set_evictions(ts.evictions);
    tier->set_quarantined(ts.quarantined);
    tier->set_bytes_read(ts.read_bytes);
    tier->set_bytes_written(ts.write_bytes);
    read_bytes += ts.read_bytes;
  }
  (*out->mutable_transport_bytes())["TRANSPORT_KIND_INPROC"] = read_bytes;
  out->set_active_pins(ss.active_leases);
  const uint64_t served = c.cached_tokens + c.recomputed_tokens;
  response->set_hit_rate(served == 0 ? 0.0 : static_cast<double>(c.cached_tokens) / served);
}

}  // namespace kv::cluster
