#include "cluster/router.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/sampling.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

namespace {

bool HasRole(const pb::NodeInfo& n, pb::Role role) {
  return std::find(n.roles().begin(), n.roles().end(), role) != n.roles().end();
}

std::string HostOf(std::string_view address) {
  const size_t colon = address.rfind(':');
  return std::string(colon == std::string_view::npos ? address : address.substr(0, colon));
}

// Sets the call's deadline and forwards the end user's credentials.
void PrepareCall(grpc::ClientContext* ctx, const std::string& authorization, absl::Time deadline) {
  ctx->set_deadline(absl::ToChronoTime(deadline));
  if (!authorization.empty()) ctx->AddMetadata("authorization", authorization);
}

pb::KeySpace ToKeySpace(const KeyParams& kp) {
  pb::KeySpace ks;
  ks.set_model_fingerprint(std::string(kp.model_fingerprint.begin(), kp.model_fingerprint.end()));
  ks.set_layout(kp.layout_id);
  ks.set_page_tokens(kp.page_tokens);
  return ks;
}

void ToProtoSampling(const prefill::GenerateRequest& req, pb::SamplingParams* s) {
  s->set_max_new_tokens(static_cast<uint32_t>(req.max_tokens));
  s->set_temperature(static_cast<float>(req.sampling.temperature));
  s->set_top_p(static_cast<float>(req.sampling.top_p));
  s->set_seed(req.sampling.seed);
  for (int32_t t : req.stop_tokens) s->add_stop_token_ids(static_cast<uint32_t>(t));
  s->set_ignore_eos(req.ignore_eos);
}

}  // namespace

struct RouterBackend::Plan {
  std::vector<BlockKey> keys;
  PoolPrefix prefix;  // the usable cached prefix (at most (n - 1) / page_tokens blocks)
  prefill::CostPlan cost;
};

RouterBackend::RouterBackend(Membership* membership, PagePool* pool, RouterOptions options)
    : membership_(membership), pool_(pool), options_(std::move(options)), cost_(options_.cost) {}

absl::StatusOr<RouterBackend::Plan> RouterBackend::MakePlan(const prefill::GenerateRequest& req) {
  if (req.prompt.empty()) return absl::InvalidArgumentError("generate: the prompt is empty");
  if (req.tenant.empty()) return absl::InvalidArgumentError("generate: no tenant");
  for (size_t i = 0; i < req.prompt.size(); ++i) {
    if (req.prompt[i] < 0 || req.prompt[i] >= options_.vocab_size) {
      return absl::InvalidArgumentError(StrCat("generate: token ", req.prompt[i], " at index ", i,
                                               " is outside the vocabulary [0, ",
                                               options_.vocab_size, ")"));
    }
  }
  if (req.max_tokens <= 0) return absl::InvalidArgumentError("generate: max_tokens must be > 0");
  RETURN_IF_ERROR(model::ValidateSamplingParams(req.sampling));
  if (static_cast<int64_t>(req.prompt.size()) + req.max_tokens > options_.max_context) {
    return absl::OutOfRangeError(StrCat("generate: prompt (", req.prompt.size(),
                                        " tokens) + max_new_tokens (", req.max_tokens,
                                        ") exceeds the context limit ", options_.max_context));
  }
  Plan plan;
  ASSIGN_OR_RETURN(plan.keys, DeriveRequestKeys(options_.key_params, req.prompt, req.tenant,
                                                req.shared_prefix_tokens, nullptr));
  const int64_t pt = options_.key_params.page_tokens;
  const int64_t usable = std::min<int64_t>(static_cast<int64_t>(plan.keys.size()),
                                           (static_cast<int64_t>(req.prompt.size()) - 1) / pt);
  const bool read_cache =
      req.policy == prefill::CachePolicy::kAuto || req.policy == prefill::CachePolicy::kForceLoad;
  if (read_cache && usable > 0) {
    absl::StatusOr<PoolPrefix> p =
        pool_->Lookup(std::span<const BlockKey>(plan.keys).subspan(0, usable), req.authorization);
    if (p.ok()) plan.prefix = *std::move(p);
  }
  const int64_t continuable = model::ContinuableBlocks(
      options_.pages_have_resume, plan.prefix.has_resume, plan.prefix.blocks());
  plan.cost = cost_.Plan(std::span<const TierKind>(plan.prefix.tiers).first(continuable),
                         options_.page_bytes, pt);
  if (req.policy == prefill::CachePolicy::kForceLoad && continuable > 0) {
    plan.cost.decision = prefill::CacheDecision::kLoad;
    plan.cost.load_blocks = continuable;
    plan.cost.load_tokens = plan.cost.load_blocks * pt;
    plan.cost.recompute_tokens = 0;
    plan.cost.reason =
        StrCat("load forced by the request's cache policy; model: ", plan.cost.reason);
  } else if (!read_cache) {
    plan.cost.reason = "cache not read (the request's cache policy)";
  }
  return plan;
}

absl::StatusOr<pb::NodeInfo> RouterBackend::Pick(pb::Role role, const BlockKey& root,
                                                 const std::string& near_address) {
  MembershipView view = membership_->Members();
  const std::string near = HostOf(near_address);
  kv::MutexLock l(&mu_);
  const pb::NodeInfo* best = nullptr;
  std::tuple<int, int, uint64_t> best_score;
  for (const pb::NodeInfo& n : view.members) {
    if (!HasRole(n, role)) continue;
    const int far = near.empty() || HostOf(n.grpc_address()) != near ? 1 : 0;
    const int load = in_flight_[n.node_id()];
    // Rendezvous tie-break: the same chain prefers the same worker among equals.
    const uint64_t rank = ~Xxh3_64(root.bytes.data(), root.bytes.size(),
                                   Xxh3_64(n.node_id().data(), n.node_id().size()));
    const auto score = std::make_tuple(far, load, rank);
    if (best == nullptr || score < best_score) {
      best = &n;
      best_score = score;
    }
  }
  if (best == nullptr) {
    return MarkRetryable(
        absl::UnavailableError(StrCat("no live ", pb::Role_Name(role), " node (membership ",
                                      membership_->source(), view.stale ? ", stale" : "", ")")));
  }
  return *best;
}

std::unique_ptr<pb::Worker::Stub> RouterBackend::WorkerStub(const std::string& address) {
  kv::MutexLock l(&mu_);
  std::shared_ptr<grpc::Channel>& c = channels_[address];
  if (c == nullptr) c = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  return pb::Worker::NewStub(c);
}

absl::StatusOr<prefill::GenerateResult> RouterBackend::Generate(const prefill::GenerateRequest& req,
                                                                Route* route) {
  absl::StatusOr<prefill::GenerateResult> r = Run(req, route);
  kv::MutexLock l(&mu_);
  if (!r.ok()) {
    ++counters_.requests_failed;
    return r;
  }
  ++counters_.requests_ok;
  counters_.cached_tokens += r->stats.cached_tokens;
  counters_.recomputed_tokens += r->stats.recomputed_tokens;
  counters_.output_tokens += r->stats.output_tokens;
  counters_.bytes_transferred += r->stats.bytes_transferred;
  return r;
}

namespace {
// A cached run of the chain's first blocks `keys`, pinned under `lease` on `prefix`'s home.
void AddCachedRun(const PoolPrefix& prefix, std::span<const BlockKey> keys,
                  const std::string& lease, pb::CachedRun* run) {
  run->set_node_id(prefix.node_id);
  run->set_grpc_address(prefix.address);
  run->set_first_block(0);
  for (const BlockKey& k : keys) run->add_keys(std::string(k.bytes.begin(), k.bytes.end()));
  run->set_lease_id(lease);
}
}  // namespace

void RouterBackend::AccountLoad(const Plan& plan, prefill::RequestStats* st, uint64_t bytes) {
  cost_.RecordPrefill(st->recomputed_tokens, st->prefill_time);
  const int64_t loaded_blocks =
      std::min(st->cached_tokens / options_.key_params.page_tokens, plan.prefix.blocks());
  if (loaded_blocks <= 0) return;
  // Bytes per page: measured when the worker reported them, else the configured page size.
  const uint64_t page =
      bytes > 0 ? bytes / static_cast<uint64_t>(loaded_blocks) : options_.page_bytes;
  for (int64_t b = 0; b < loaded_blocks; ++b) {
    const TierKind tier = plan.prefix.tiers[b];
    auto it = std::find_if(st->tier_hits.begin(), st->tier_hits.end(),
                           [&](const prefill::TierHit& h) { return h.tier == tier; });
    if (it == st->tier_hits.end()) {
      st->tier_hits.push_back({.tier = tier, .node_id = plan.prefix.node_id, .remote = true});
      it = st->tier_hits.end() - 1;
    }
    ++it->pages;
    it->tokens += options_.key_params.page_tokens;
    it->bytes += page;
    st->bytes_loaded += page;
  }
  // RecordRead ignores an unmeasured (zero) load time.
  cost_.RecordRead(plan.prefix.tiers[0], st->bytes_loaded, st->load_time);
}

absl::StatusOr<prefill::GenerateResult> RouterBackend::Run(const prefill::GenerateRequest& req,
                                                           Route* route) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + options_.max_request_time;
  ASSIGN_OR_RETURN(Plan plan, MakePlan(req));
  const BlockKey root = plan.keys.empty() ? BlockKey::Zero() : plan.keys[0];
  ASSIGN_OR_RETURN(pb::NodeInfo decode, Pick(pb::ROLE_DECODE, root, ""));
  // Without a live prefill worker the decode worker computes the prompt itself; without a
  // raw-block handoff (V4) it always does, loading the planned cached run itself.
  absl::StatusOr<pb::NodeInfo> picked =
      options_.raw_handoff ? Pick(pb::ROLE_PREFILL, root, plan.prefix.address)
                           : absl::StatusOr<pb::NodeInfo>(absl::FailedPreconditionError(
                                 StrCat(options_.key_params.layout_id,
                                        " pages are not handed over: the decode worker loads "
                                        "and computes the prompt")));
  pb::NodeInfo prefill;
  if (picked.ok()) {
    prefill = *std::move(picked);
  } else if (options_.raw_handoff) {
    plan.cost.load_blocks = 0;
    plan.cost.load_tokens = 0;
    plan.cost.recompute_tokens = static_cast<int64_t>(req.prompt.size());
    plan.cost.decision = prefill::CacheDecision::kRecompute;
    plan.cost.reason = StrCat("no live prefill worker: the decode worker computes the prompt (",
                              picked.status().message(), ")");
  }
  route->prefill_node_id = prefill.node_id();
  route->decode_node_id = decode.node_id();
  if (req.on_plan) req.on_plan(plan.cost);
  {
    kv::MutexLock l(&mu_);
    ++in_flight_[prefill.node_id()];
    ++in_flight_[decode.node_id()];
  }
  struct Release {  // the load counts go down however the request ends
    RouterBackend* r;
    std::string a, b;
    ~Release() {
      kv::MutexLock l(&r->mu_);
      --r->in_flight_[a];
      --r->in_flight_[b];
    }
  } release{this, prefill.node_id(), decode.node_id()};

  prefill::GenerateResult out;
  prefill::RequestStats& st = out.stats;
  st.prompt_tokens = static_cast<int64_t>(req.prompt.size());
  st.cost = plan.cost;
  st.transport = "ucx";
  const pb::KeySpace ks = ToKeySpace(options_.key_params);

  // 1. Pin the prefix the plan loads.
  std::string lease;
  int64_t pinned = 0;
  if (plan.cost.load_blocks > 0) {
    absl::StatusOr<std::string> l = pool_->Pin(
        plan.prefix.address, std::span<const BlockKey>(plan.keys).subspan(0, plan.cost.load_blocks),
        options_.lease, req.authorization, &pinned);
    if (l.ok()) {
      lease = *l;
    } else {
      log::Warn("router_pin_failed", "node", plan.prefix.node_id, "error", l.status().ToString());
    }
  }
  struct Unpin {
    RouterBackend* r;
    const std::string& address;
    const std::string& lease;
    const std::string& auth;
    ~Unpin() { r->pool_->Unpin(address, lease, auth); }
  } unpin{this, plan.prefix.address, lease, req.authorization};

  // 2. Decode first: its destination is where the prefill writes.
  auto decode_stub = WorkerStub(decode.grpc_address());
  grpc::ClientContext decode_ctx;
  PrepareCall(&decode_ctx, req.authorization, deadline);
  auto dstream = decode_stub->Decode(&decode_ctx);
  {
    pb::DecodeClientMessage m;
    pb::DecodeStart* s = m.mutable_start();
    s->set_request_id(req.session_id);
    for (int32_t t : req.prompt) s->add_token_ids(static_cast<uint32_t>(t));
    *s->mutable_key_space() = ks;
    s->set_shared_prefix_tokens(
        static_cast<uint32_t>(std::max<int64_t>(0, req.shared_prefix_tokens)));
    ToProtoSampling(req, s->mutable_sampling());
    s->set_session_id(req.session_id);
    if (req.retention_ttl) SetDuration(*req.retention_ttl, s->mutable_retention_ttl());
    s->add_transports(pb::TRANSPORT_KIND_UCX);
    s->set_skip_publish(req.policy == prefill::CachePolicy::kBypass);
    if (!options_.raw_handoff && !lease.empty() && pinned > 0) {
      AddCachedRun(plan.prefix, std::span<const BlockKey>(plan.keys).first(pinned), lease,
                   s->add_cached());
    }
    if (!dstream->Write(m)) return FromGrpcStatus(dstream->Finish());
  }
  pb::DecodeResponse dr;
  if (!dstream->Read(&dr) || !dr.has_ready()) {
    absl::Status s = FromGrpcStatus(dstream->Finish());
    return MarkRetryable(absl::UnavailableError(
        StrCat("decode worker ", decode.node_id(),
               " did not accept the request: ", s.ok() ? "no HandoffReady" : s.ToString())));
  }
  const pb::HandoffReady ready = dr.ready();

  // 3. Prefill into the destination. A failure here only costs the decode worker a local
  //    prefill.
  pb::PrefillDone done;
  absl::Status prefill_status;
  if (!picked.ok()) {
    prefill_status = picked.status();
  } else if (ready.pages_size() > 0) {
    pb::PrefillRequest p;
    p.set_request_id(req.session_id);
    for (int32_t t : req.prompt) p.add_token_ids(static_cast<uint32_t>(t));
    *p.mutable_key_space() = ks;
    p.set_shared_prefix_tokens(
        static_cast<uint32_t>(std::max<int64_t>(0, req.shared_prefix_tokens)));
    if (!lease.empty() && pinned > 0) {
      AddCachedRun(plan.prefix, std::span<const BlockKey>(plan.keys).first(pinned), lease,
                   p.add_cached());
    }
    pb::HandoffTarget* t = p.mutable_target();
    t->set_handoff_id(ready.handoff_id());
    t->set_node_id(decode.node_id());
    t->set_transport(ready.transport());
    t->set_endpoint(ready.endpoint());
    *t->mutable_pages() = ready.pages();
    ToProtoSampling(req, p.mutable_sampling());
    p.set_session_id(req.session_id);
    if (req.retention_ttl) SetDuration(*req.retention_ttl, p.mutable_retention_ttl());
    p.set_skip_publish(req.policy == prefill::CachePolicy::kBypass);
    auto prefill_stub = WorkerStub(prefill.grpc_address());
    grpc::ClientContext prefill_ctx;
    PrepareCall(&prefill_ctx, req.authorization, deadline);
    auto pstream = prefill_stub->Prefill(&prefill_ctx, p);
    pb::PrefillResponse pr;
    bool got_done = false;
    while (pstream->Read(&pr)) {
      if (pr.has_done()) {
        done = pr.done();
        got_done = true;
      }
    }
    prefill_status = FromGrpcStatus(pstream->Finish());
    if (prefill_status.ok() && !got_done) {
      prefill_status = absl::InternalError("prefill stream ended without PrefillDone");
    }
  } else {  // a one-token prompt, or a decode worker without a transport: it computes
    prefill_status = absl::UnavailableError("the decode worker offered no handoff destination");
  }
  std::vector<int32_t>& tokens = out.tokens;
  bool keep_going = true;
  if (prefill_status.ok()) {
    st.cached_tokens = done.cached_tokens();
    st.recomputed_tokens = st.prompt_tokens - st.cached_tokens;  // the decode worker adds one
    st.bytes_transferred = done.bytes_transferred();
    st.load_time = FromProto(done.load_time());
    st.prefill_time = FromProto(done.compute_time());
    st.published_pages += done.published_pages();
    AccountLoad(plan, &st, /*bytes=*/0);
  } else if (options_.raw_handoff && ready.pages_size() > 0) {
    log::Warn("router_prefill_failed", "node", prefill.node_id(), "error",
              prefill_status.ToString());
    kv::MutexLock l(&mu_);
    ++counters_.prefill_fallbacks;
  }
  {
    pb::DecodeClientMessage m;
    pb::PrefillResult* res = m.mutable_prefill_result();
    if (prefill_status.ok()) {
      res->set_kv_tokens(done.kv_tokens());
      *res->mutable_block_xxh3() = done.block_xxh3();
      res->set_prefill_node_id(prefill.node_id());
    }
    if (!dstream->Write(m)) return FromGrpcStatus(dstream->Finish());
    if (!keep_going) {
      pb::DecodeClientMessage c;
      c.mutable_cancel()->set_reason("the client stopped reading");
      dstream->Write(c);
    }
  }
  // 4. The decode worker's tokens.
  pb::DecodeDone done_stats;
  bool finished = false;
  bool cancel_sent = !keep_going;
  while (dstream->Read(&dr)) {
    if (dr.has_tokens()) {
      for (uint32_t id : dr.tokens().token_ids()) {
        const int32_t tok = static_cast<int32_t>(id);
        if (tokens.empty()) st.ttft = absl::Now() - start;  // decode computed the prompt
        tokens.push_back(tok);
        if (keep_going && req.on_token) keep_going = req.on_token(tok);
      }
      if (!keep_going && !cancel_sent) {
        pb::DecodeClientMessage c;
        c.mutable_cancel()->set_reason("cancelled by the client");
        dstream->Write(c);
        cancel_sent = true;
      }
    } else if (dr.has_done()) {
      const pb::DecodeDone& d = dr.done();
      done_stats = d;
      st.decode_time = FromProto(d.decode_time());
      st.published_pages += d.published_pages();
      switch (d.finish_reason()) {
        case pb::FINISH_REASON_EOS:
          out.finish = prefill::FinishReason::kEos;
          break;
        case pb::FINISH_REASON_STOP_TOKEN:
          out.finish = prefill::FinishReason::kStopToken;
          break;
        case pb::FINISH_REASON_CANCELLED:
          out.finish = prefill::FinishReason::kCancelled;
          break;
        default:
          out.finish = prefill::FinishReason::kLength;
      }
      finished = true;
    }
  }
  dstream->WritesDone();
  absl::Status ds = FromGrpcStatus(dstream->Finish());
  if (!ds.ok() || !finished) {
    return MarkRetryable(absl::UnavailableError(
        StrCat("decode worker ", decode.node_id(),
               " failed: ", ds.ok() ? "stream ended without DecodeDone" : ds.ToString())));
  }
  if (!keep_going) out.finish = prefill::FinishReason::kCancelled;
  if (!prefill_status.ok()) {  // the decode worker computed the prompt, from its cached run
    st.cached_tokens = done_stats.cached_tokens();
    st.recomputed_tokens = st.prompt_tokens - st.cached_tokens;
    st.load_time = FromProto(done_stats.load_time());
    st.prefill_time = FromProto(done_stats.compute_time());
    AccountLoad(plan, &st, done_stats.bytes_loaded());
    if (st.cached_tokens > 0) {  // the decode worker read the pages from the store over gRPC
      st.transport = "grpc";
      st.bytes_transferred = st.bytes_loaded;
    }
  }
  st.output_tokens = static_cast<int64_t>(tokens.size());
  st.total_time = absl::Now() - start;
  return out;
}

absl::Status RouterBackend::Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                                   int64_t shared_prefix_tokens, bool include_keys,
                                   const std::string& authorization, pb::LookupResponse* out) {
  if (prompt.empty()) return absl::InvalidArgumentError("lookup: the prompt is empty");
  prefill::GenerateRequest req;
  req.prompt = prompt;
  req.tenant = tenant;
  req.shared_prefix_tokens = shared_prefix_tokens;
  req.authorization = authorization;
  req.max_tokens = 1;
  ASSIGN_OR_RETURN(Plan plan, MakePlan(req));
  const int64_t pt = options_.key_params.page_tokens;
  out->set_prompt_tokens(static_cast<uint32_t>(prompt.size()));
  *out->mutable_key_space() = ToKeySpace(options_.key_params);
  out->set_full_blocks(static_cast<uint32_t>(plan.keys.size()));
  out->set_cached_blocks(static_cast<uint32_t>(plan.prefix.blocks()));
  out->set_cached_tokens(static_cast<uint32_t>(plan.prefix.blocks() * pt));
  const double page = static_cast<double>(options_.page_bytes);
  const std::vector<TierKind>& tiers = plan.prefix.tiers;
  for (size_t i = 0; i < tiers.size();) {
    size_t j = i;
    while (j < tiers.size() && tiers[j] == tiers[i]) ++j;
    pb::PrefixSegment* s = out->add_segments();
    s->set_node_id(plan.prefix.node_id);
    s->set_tier(ToProto(tiers[i]));
    s->set_first_block(static_cast<uint32_t>(i));
    s->set_block_count(static_cast<uint32_t>(j - i));
    SetDuration(absl::Seconds((j - i) * page / cost_.BytesPerSecond(tiers[i])),
                s->mutable_estimated_load_time());
    i = j;
  }
  ToProto(plan.cost, out->mutable_cost());
  if (include_keys) {
    for (const BlockKey& k : plan.keys) out->add_keys(std::string(k.bytes.begin(), k.bytes.end()));
  }
  return absl::OkStatus();
}

void RouterBackend::ListNodes(const ServiceContext&, const pb::ListNodesRequest& req,
                              pb::ListNodesResponse* out) {
  MembershipView view = membership_->Members();
  kv::MutexLock l(&mu_);
  for (const pb::NodeInfo& n : view.members) {
    if (req.role() != pb::ROLE_UNSPECIFIED && !HasRole(n, req.role())) continue;
    pb::NodeInfo* o = out->add_nodes();
    *o = n;
    if (auto it = in_flight_.find(n.node_id()); it != in_flight_.end()) {
      o->mutable_load()->set_active_requests(static_cast<uint32_t>(std::max(0, it->second)));
    }
  }
  out->set_membership_source(std::string(membership_->source()));
  SetTimestamp(view.updated_at == absl::InfinitePast() ? absl::Now() : view.updated_at,
               out->mutable_updated_at());
}

void RouterBackend::GetStats(const ServiceContext& self, pb::GetStatsResponse* response) {
  RouterCounters c = Counters();
  pb::NodeStats* out = response->mutable_self();
  out->set_node_id(self.node_id);
  out->set_requests_ok(c.requests_ok);
  out->set_requests_failed(c.requests_failed);
  out->set_cached_tokens(c.cached_tokens);
  out->set_recomputed_tokens(c.recomputed_tokens);
  out->set_output_tokens(c.output_tokens);
  (*out->mutable_transport_bytes())["TRANSPORT_KIND_UCX"] = c.bytes_transferred;
  const uint64_t served = c.cached_tokens + c.recomputed_tokens;
  response->set_hit_rate(served == 0 ? 0.0 : static_cast<double>(c.cached_tokens) / served);
}

RouterCounters RouterBackend::Counters() {
  kv::MutexLock l(&mu_);
  return counters_;
}

}  // namespace kv::cluster
