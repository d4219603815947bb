#include "cluster/router.h"

#include <algorithm>
#include <thread>
#include <tuple>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "cluster/grpc_status.h"
#include "cluster/grpc_worker_client.h"
#include "cluster/proto_convert.h"
#include "cluster/transport_security.h"
#include "cluster/worker_convert.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/sampling.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

namespace {

std::string HostOf(std::string_view address) {
  const size_t colon = address.rfind(':');
  return std::string(colon == std::string_view::npos ? address : address.substr(0, colon));
}

}  // namespace

WorkerClientFactory GrpcWorkerClients(KeyParams key_params, std::string service_token,
                                      Clock* clock) {
  struct Cache {
    kv::Mutex mu;
    std::map<std::string, std::shared_ptr<WorkerClient>> clients ABSL_GUARDED_BY(mu);
  };
  auto cache = std::make_shared<Cache>();
  return [cache, key_params, service_token, clock](const pb::NodeInfo& node) {
    kv::MutexLock l(&cache->mu);
    std::shared_ptr<WorkerClient>& c = cache->clients[node.grpc_address()];
    if (c == nullptr) {
      c = NewGrpcWorkerClient(NewChannel(node.grpc_address()), key_params, node.node_id(),
                              service_token, clock);
    }
    return c;
  };
}

struct RouterBackend::Plan {
  std::vector<BlockKey> keys;
  PoolPrefix prefix;  // the usable cached prefix (at most (n - 1) / page_tokens blocks)
  CostPlan cost;
};

RouterBackend::RouterBackend(Membership* membership, PagePool* pool, WorkerClientFactory workers,
                             RouterOptions options)
    : membership_(membership),
      pool_(pool),
      workers_(std::move(workers)),
      options_(std::move(options)),
      cost_(options_.cost),
      reg_(options_.metrics != nullptr ? options_.metrics : &MetricsRegistry::Default()),
      handoff_seconds_(reg_->GetHistogram(
          "kvstrata_cluster_handoff_seconds",
          "Prefill-to-decode handoff time not overlapped with compute, per handed-over request",
          Histogram::LatencyBounds())),
      handoff_bytes_(reg_->GetCounter("kvstrata_cluster_handoff_bytes_total",
                                      "KV bytes handed from prefill to decode workers")) {}

void RouterBackend::Record(const absl::StatusOr<GenerateResult>& r) {
  reg_->GetCounter("kvstrata_cluster_requests_total", "Generate requests served, by final code",
                   {{"code", absl::StatusCodeToString(r.status().code())}})
      ->Inc();
  if (!r.ok()) return;
  const RequestStats& st = r->stats;
  for (const TierHit& h : st.tier_hits) {
    reg_->GetCounter("kvstrata_cluster_cached_tokens_total",
                     "Prompt tokens loaded from the cache instead of computed, by tier",
                     {{"tier", std::string(TierName(h.tier))}})
        ->Inc(static_cast<double>(h.tokens));
  }
  reg_->GetCounter("kvstrata_cluster_recomputed_tokens_total", "Prompt tokens computed")
      ->Inc(static_cast<double>(st.recomputed_tokens));
  if (st.handoff_bytes > 0) {
    handoff_bytes_->Inc(static_cast<double>(st.handoff_bytes));
    handoff_seconds_->Observe(absl::ToDoubleSeconds(st.handoff_time));
  }
}

absl::Status RouterBackend::Validate(const GenerateRequest& req, bool lookup) const {
  if (req.prompt.empty()) return absl::InvalidArgumentError("generate: the prompt is empty");
  if (req.tenant.empty()) return absl::InvalidArgumentError("generate: no tenant");
  if (lookup) {  // a Lookup generates nothing: only the prompt must fit
    if (static_cast<int64_t>(req.prompt.size()) > options_.max_context) {
      return absl::OutOfRangeError(StrCat("lookup: prompt (", req.prompt.size(),
                                          " tokens) exceeds the context limit ",
                                          options_.max_context));
    }
  } else if (req.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        StrCat("generate: max_new_tokens must be > 0, got ", req.max_tokens));
  }
  if (req.shared_prefix_tokens < 0) {
    return absl::InvalidArgumentError("generate: shared_prefix_tokens must be >= 0");
  }
  for (size_t i = 0; i < req.prompt.size(); ++i) {
    if (req.prompt[i] < 0 || req.prompt[i] >= options_.vocab_size) {
      return absl::InvalidArgumentError(StrCat("generate: prompt token ", i, " has id ",
                                               req.prompt[i], ", outside the vocabulary [0, ",
                                               options_.vocab_size, ")"));
    }
  }
  if (req.session_id.size() > 128) {
    return absl::InvalidArgumentError("generate: session id longer than 128 characters");
  }
  for (char c : req.session_id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "generate: session id must be printable ASCII without spaces");
    }
  }
  if (req.retention_ttl && *req.retention_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("generate: retention_ttl must be >= 0");
  }
  RETURN_IF_ERROR(model::ValidateSamplingParams(req.sampling));
  if (!lookup && static_cast<int64_t>(req.prompt.size()) + req.max_tokens > options_.max_context) {
    return absl::OutOfRangeError(StrCat("generate: prompt (", req.prompt.size(),
                                        " tokens) + max_new_tokens (", req.max_tokens,
                                        ") exceeds the context limit ", options_.max_context));
  }
  return absl::OkStatus();
}

absl::StatusOr<RouterBackend::Plan> RouterBackend::MakePlan(const GenerateRequest& req,
                                                            bool lookup) {
  RETURN_IF_ERROR(Validate(req, lookup));
  Plan plan;
  ASSIGN_OR_RETURN(plan.keys, DeriveRequestKeys(options_.key_params, req.prompt, req.tenant,
                                                req.shared_prefix_tokens, nullptr));
  const int64_t pt = options_.key_params.page_tokens;
  const int64_t usable = std::min<int64_t>(static_cast<int64_t>(plan.keys.size()),
                                           (static_cast<int64_t>(req.prompt.size()) - 1) / pt);
  const bool read_cache = req.policy == CachePolicy::kAuto || req.policy == CachePolicy::kForceLoad;
  if (read_cache && usable > 0) {
    absl::StatusOr<PoolPrefix> p =
        pool_->Lookup(std::span<const BlockKey>(plan.keys).subspan(0, usable), req.tenant);
    if (p.ok()) plan.prefix = *std::move(p);
  }
  const int64_t continuable = model::ContinuableBlocks(
      options_.pages_have_resume, plan.prefix.has_resume, plan.prefix.blocks());
  plan.cost = cost_.Plan(std::span<const TierKind>(plan.prefix.tiers).first(continuable),
                         options_.page_bytes, pt);
  if (req.policy == CachePolicy::kForceLoad && continuable > 0) {
    plan.cost.decision = CacheDecision::kLoad;
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
                                                 const std::string& near_address,
                                                 const std::set<std::string>& failed) {
  MembershipView view = membership_->Members();
  const std::string near = HostOf(near_address);
  const absl::Time now = clock()->Now();
  kv::MutexLock l(&mu_);
  const pb::NodeInfo* best = nullptr;
  std::tuple<int, int, int, uint64_t> best_score;
  for (const pb::NodeInfo& n : view.members) {
    if (!HasRole(n, role) || failed.contains(n.node_id())) continue;
    auto down = down_until_.find(n.node_id());
    const int is_down = down != down_until_.end() && down->second > now ? 1 : 0;
    const int far = near.empty() || HostOf(n.grpc_address()) != near ? 1 : 0;
    const int load = in_flight_[n.node_id()];
    // Rendezvous tie-break: the same chain prefers the same worker among equals.
    const uint64_t rank = ~Xxh3_64(root.bytes.data(), root.bytes.size(),
                                   Xxh3_64(n.node_id().data(), n.node_id().size()));
    const auto score = std::make_tuple(is_down, far, load, rank);
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

absl::StatusOr<GenerateResult> RouterBackend::Generate(const GenerateRequest& req, Route* route) {
  absl::StatusOr<GenerateResult> r = Run(req, route);
  Record(r);
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

void RouterBackend::AccountLoad(const Plan& plan, RequestStats* st, uint64_t bytes) {
  cost_.RecordPrefill(st->recomputed_tokens, st->prefill_time);
  const int64_t loaded_blocks =
      std::min(st->cached_tokens / options_.key_params.page_tokens, plan.prefix.blocks());
  if (loaded_blocks <= 0) return;
  // Bytes per page: measured when the worker reported them, else the configured page size.
  const uint64_t page =
      bytes > 0 ? bytes / static_cast<uint64_t>(loaded_blocks) : options_.page_bytes;
  const bool remote = options_.local_store == nullptr;
  for (int64_t b = 0; b < loaded_blocks; ++b) {
    const TierKind tier = plan.prefix.tiers[b];
    auto it = std::find_if(st->tier_hits.begin(), st->tier_hits.end(),
                           [&](const TierHit& h) { return h.tier == tier; });
    if (it == st->tier_hits.end()) {
      st->tier_hits.push_back({.tier = tier, .node_id = plan.prefix.node_id, .remote = remote});
      it = st->tier_hits.end() - 1;
    }
    ++it->pages;
    it->tokens += options_.key_params.page_tokens;
    it->bytes += page;
    st->bytes_loaded += page;
  }
  std::sort(st->tier_hits.begin(), st->tier_hits.end(),
            [](const TierHit& a, const TierHit& b) { return a.tier < b.tier; });
  // RecordRead ignores an unmeasured (zero) load time.
  cost_.RecordRead(plan.prefix.tiers[0], st->bytes_loaded, st->load_time);
}

absl::Status RouterBackend::Stream(const GenerateRequest& req, DecodeCall& call, absl::Time start,
                                   GenerateResult* out, decode::DecodeOutcome* done) {
  bool keep_going = true;
  while (true) {
    ASSIGN_OR_RETURN(DecodeEvent e, call.Next());
    if (e.token) {
      if (!keep_going) continue;  // sampled before the cancel reached the worker: dropped
      if (out->tokens.empty()) out->stats.ttft = clock()->Now() - start;
      out->tokens.push_back(*e.token);
      if (req.on_token) keep_going = req.on_token(*e.token);
      if (!keep_going) call.Cancel();
    } else if (e.done) {
      *done = *std::move(e.done);
      out->finish = keep_going ? done->finish : FinishReason::kCancelled;
      return absl::OkStatus();
    }
  }
}

struct RouterBackend::Placement {
  pb::NodeInfo decode;
  std::optional<pb::NodeInfo> prefill;  // none: the decode worker computes the prompt
  std::string prefill_id() const { return prefill ? prefill->node_id() : ""; }
};

struct RouterBackend::Started {
  Placement place;
  std::unique_ptr<DecodeCall> call;
  transport::HandoffDestination dest;
};

void RouterBackend::MarkDown(const std::string& node_id, pb::Role role, const absl::Status& error) {
  log::Warn("router_worker_down", "node", node_id, "role", pb::Role_Name(role), "for",
            absl::FormatDuration(options_.down_after_failure), "error", error.ToString());
  reg_->GetCounter("kvstrata_cluster_worker_failures_total",
                   "Calls a worker failed as unreachable (each marks it down), by role",
                   {{"role", role == pb::ROLE_DECODE ? "decode" : "prefill"}})
      ->Inc();
  kv::MutexLock l(&mu_);
  down_until_[node_id] = clock()->Now() + options_.down_after_failure;
  ++(role == pb::ROLE_DECODE ? counters_.decode_failures : counters_.prefill_failures);
}

absl::StatusOr<RouterBackend::Started> RouterBackend::StartDecode(Plan& plan, Placement first,
                                                                  const decode::DecodeRequest& dreq,
                                                                  absl::Time deadline,
                                                                  Route* route) {
  std::set<std::string> failed;
  Placement place = std::move(first);
  // Bounded by the members (each failure excludes one) and, for a churning membership, here.
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<std::unique_ptr<DecodeCall>> call =
        workers_(place.decode)->StartDecode(dreq, deadline);
    absl::StatusOr<transport::HandoffDestination> dest =
        call.ok() ? (*call)->Ready() : call.status();
    if (dest.ok()) return Started{std::move(place), *std::move(call), *std::move(dest)};
    if (!absl::IsUnavailable(dest.status())) return dest.status();
    const std::string& id = place.decode.node_id();
    MarkDown(id, pb::ROLE_DECODE, dest.status());
    failed.insert(id);
    const std::string why = StrCat("decode worker ", id, " failed: ", dest.status().message());
    absl::StatusOr<Placement> next =
        attempt < 16 ? Place(plan, route, failed) : absl::UnavailableError("16 tried");
    if (!next.ok()) {
      return MarkRetryable(absl::UnavailableError(
          StrCat(why, "; no other live decode worker (", next.status().message(), ")")));
    }
    log::Info("router_decode_retry", "failed", id, "next", next->decode.node_id());
    place = *std::move(next);
  }
}

absl::StatusOr<RouterBackend::Placement> RouterBackend::Place(Plan& plan, Route* route,
                                                              const std::set<std::string>& failed) {
  const BlockKey root = plan.keys.empty() ? BlockKey::Zero() : plan.keys[0];
  Placement place;
  ASSIGN_OR_RETURN(place.decode, Pick(pb::ROLE_DECODE, root, "", failed));
  // Without a live prefill worker, or a model without a handoff, the decode worker computes
  // the prompt itself, loading the planned cached run itself.
  if (options_.prefill_handoff) {
    absl::StatusOr<pb::NodeInfo> picked = Pick(pb::ROLE_PREFILL, root, plan.prefix.address, failed);
    if (picked.ok()) {
      place.prefill = *std::move(picked);
    } else if (plan.cost.reason.find("; no live prefill worker") == std::string::npos) {
      plan.cost.reason = StrCat(plan.cost.reason, "; no live prefill worker: the decode worker ",
                                "computes the prompt (", picked.status().message(), ")");
    }
  }
  route->prefill_node_id = place.prefill_id();
  route->decode_node_id = place.decode.node_id();
  return place;
}

std::optional<CachedRun> RouterBackend::PinPrefix(const GenerateRequest& req, const Plan& plan) {
  if (plan.cost.load_blocks <= 0) return std::nullopt;
  int64_t pinned = 0;
  std::string lent;  // the pinned pages' memory, for the worker to read without pinning again
  absl::StatusOr<std::string> l = pool_->Pin(
      plan.prefix.address, std::span<const BlockKey>(plan.keys).subspan(0, plan.cost.load_blocks),
      options_.lease, req.tenant, &pinned, &lent);
  if (!l.ok()) {
    log::Warn("router_pin_failed", "node", plan.prefix.node_id, "error", l.status().ToString());
    return std::nullopt;
  }
  if (pinned <= 0) return std::nullopt;
  return CachedRun{.node_id = plan.prefix.node_id,
                   .address = plan.prefix.address,
                   .keys = {plan.keys.begin(), plan.keys.begin() + pinned},
                   .lease_id = *l,
                   .lent = std::move(lent)};
}

absl::StatusOr<prefill::PrefillDone> RouterBackend::RunPrefill(
    const decode::DecodeRequest& dreq, const Placement& place,
    const transport::HandoffDestination& dest, absl::Time deadline) {
  if (!place.prefill || !dest.valid()) return absl::UnavailableError("no prefill");
  prefill::PrefillRequest preq{.request_id = dreq.request_id,
                               .prompt = dreq.prompt,
                               .tenant = dreq.tenant,
                               .shared_prefix_tokens = dreq.shared_prefix_tokens,
                               .cached = dreq.cached,
                               .target = dest,
                               .session_id = dreq.session_id,
                               .retention = dreq.retention,
                               .skip_publish = dreq.skip_publish,
                               .cancelled = dreq.cancelled};
  absl::StatusOr<prefill::PrefillDone> done = workers_(*place.prefill)->Prefill(preq, deadline);
  if (!done.ok()) {
    log::Warn("router_prefill_failed", "node", place.prefill_id(), "error",
              done.status().ToString());
    if (absl::IsUnavailable(done.status())) {
      MarkDown(place.prefill_id(), pb::ROLE_PREFILL, done.status());
    }
    kv::MutexLock l(&mu_);
    ++counters_.prefill_fallbacks;
  }
  return done;
}

void RouterBackend::FillStats(const Plan& plan, const absl::StatusOr<prefill::PrefillDone>& done,
                              const decode::DecodeOutcome& turn, RequestStats* st) {
  st->decode_time = turn.decode_time;
  st->published_pages += turn.published_pages;
  if (done.ok()) {  // moved, whether or not the decode worker accepted it
    st->queued_pages += done->queued_pages;
    st->bytes_transferred = done->bytes_loaded + done->bytes_sent;
    st->transport = done->transport;
  }
  if (done.ok() && turn.handoff == decode::HandoffVerdict::kVerified) {
    st->cached_tokens = done->cached_tokens;
    st->recomputed_tokens = st->prompt_tokens - st->cached_tokens;  // the decode worker adds one
    st->load_time = done->load_time;
    st->prefill_time = done->compute_time;
    st->handoff_bytes = done->bytes_sent;
    st->handoff_time = done->handoff_time;
    if (st->cached_tokens > 0) st->pool_transport = done->pool_transport;
    AccountLoad(plan, st, done->bytes_loaded);
    return;
  }
  // The decode worker computed the prompt, from its cached run.
  st->cached_tokens = turn.cached_tokens;
  st->recomputed_tokens = st->prompt_tokens - st->cached_tokens;
  st->load_time = turn.load_time;
  st->prefill_time = turn.compute_time;
  AccountLoad(plan, st, turn.bytes_loaded);
  if (st->cached_tokens > 0) {
    // The decode worker read the pages from the pool: the path it reports.
    st->pool_transport = turn.pool_transport;
    st->transport = !turn.pool_transport.empty()      ? turn.pool_transport
                    : options_.local_store == nullptr ? "grpc"
                                                      : "inproc";
    st->bytes_transferred = st->bytes_loaded;
  }
}

decode::DecodeRequest RouterBackend::DecodeRequestOf(const GenerateRequest& req,
                                                     const std::optional<CachedRun>& run,
                                                     absl::Time start) const {
  const absl::Duration retention =
      req.session_id.empty() ? absl::ZeroDuration()
                             : std::min(req.retention_ttl.value_or(options_.default_retention),
                                        options_.max_retention);
  return decode::DecodeRequest{.request_id = StrCat(req.session_id, "@", absl::ToUnixMicros(start)),
                               .prompt = req.prompt,
                               .tenant = req.tenant,
                               .shared_prefix_tokens = req.shared_prefix_tokens,
                               .sampling = req.sampling,
                               .max_tokens = req.max_tokens,
                               .stop_tokens = req.stop_tokens,
                               .ignore_eos = req.ignore_eos,
                               .session_id = req.session_id,
                               .retention = retention,
                               .skip_publish = req.policy == CachePolicy::kBypass,
                               .cached = run,
                               .cancelled = req.cancelled};
}

absl::StatusOr<GenerateResult> RouterBackend::Run(const GenerateRequest& req, Route* route) {
  const absl::Time start = clock()->Now();
  const absl::Time deadline = std::min(start + options_.max_request_time, req.deadline);
  ASSIGN_OR_RETURN(Plan plan, MakePlan(req));
  ASSIGN_OR_RETURN(Placement first, Place(plan, route));
  if (req.on_plan) req.on_plan(plan.cost);

  // 1. Pin the prefix the plan loads.
  const std::optional<CachedRun> run = PinPrefix(req, plan);
  struct Unpin {
    RouterBackend* r;
    const std::optional<CachedRun>& run;
    const std::string& auth;
    ~Unpin() {
      if (run) r->pool_->Unpin(run->address, run->lease_id, auth);
    }
  } unpin{this, run, req.tenant};

  // 2. The decode session first: its destination is where the prefill writes.
  const decode::DecodeRequest dreq = DecodeRequestOf(req, run, start);
  ASSIGN_OR_RETURN(Started started, StartDecode(plan, std::move(first), dreq, deadline, route));
  const Placement& place = started.place;
  DecodeCall* call = started.call.get();
  const transport::HandoffDestination& dest = started.dest;
  struct Load {  // the workers' load counts, down again however the request ends
    RouterBackend* r;
    std::string a, b;
    Load(RouterBackend* r, std::string a, std::string b) : r(r), a(std::move(a)), b(std::move(b)) {
      kv::MutexLock l(&r->mu_);
      ++r->in_flight_[this->a];
      ++r->in_flight_[this->b];
    }
    ~Load() {
      kv::MutexLock l(&r->mu_);
      --r->in_flight_[a];
      --r->in_flight_[b];
    }
  } load(this, place.prefill_id(), place.decode.node_id());

  // 3. Prefill into the destination. A failure only costs the decode worker a local prefill.
  absl::StatusOr<prefill::PrefillDone> done = RunPrefill(dreq, place, dest, deadline);
  decode::PrefillResult result;
  if (done.ok()) {
    result = {.kv_tokens = done->kv_tokens,
              .slot_xxh3 = done->slot_xxh3,
              .prefill_node_id = place.prefill_id()};
  }
  RETURN_IF_ERROR(call->SendPrefillResult(result));

  // 4. The decode session's tokens.
  GenerateResult out;
  out.stats.prompt_tokens = static_cast<int64_t>(req.prompt.size());
  out.stats.cost = plan.cost;
  decode::DecodeOutcome turn;
  if (absl::Status s = Stream(req, *call, start, &out, &turn); !s.ok()) {
    if (absl::IsUnavailable(s)) MarkDown(place.decode.node_id(), pb::ROLE_DECODE, s);
    return MarkRetryable(absl::UnavailableError(
        StrCat("decode worker ", place.decode.node_id(), " failed: ", s.ToString())));
  }
  FillStats(plan, done, turn, &out.stats);
  out.stats.output_tokens = static_cast<int64_t>(out.tokens.size());
  out.stats.total_time = clock()->Now() - start;
  return out;
}

absl::Status RouterBackend::Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                                   int64_t shared_prefix_tokens, bool include_keys,
                                   pb::LookupResponse* out) {
  if (prompt.empty()) return absl::InvalidArgumentError("lookup: the prompt is empty");
  GenerateRequest req;
  req.prompt = prompt;
  req.tenant = tenant;
  req.shared_prefix_tokens = shared_prefix_tokens;
  ASSIGN_OR_RETURN(Plan plan, MakePlan(req, /*lookup=*/true));
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

void RouterBackend::FillTiers(pb::NodeInfo* node) {
  StoreStats ss = options_.local_store->Stats();
  for (int t = 0; t < kNumTiers; ++t) {
    if (!ss.tiers[t].present) continue;
    FillCapacity(&cost_, static_cast<TierKind>(t), ss.tiers[t], node->add_tiers());
  }
}

void RouterBackend::ListNodes(const ServiceContext& self, const pb::ListNodesRequest& req,
                              pb::ListNodesResponse* out) {
  MembershipView view = membership_->Members();
  for (const pb::NodeInfo& n : view.members) {
    if (req.role() != pb::ROLE_UNSPECIFIED && !HasRole(n, req.role())) continue;
    pb::NodeInfo* o = out->add_nodes();
    *o = n;
    if (options_.local_store != nullptr && n.node_id() == options_.local_node_id) {
      // The embedded node: its own tiers and the Cluster service's request count.
      o->clear_tiers();
      FillTiers(o);
      if (o->grpc_address().empty()) o->set_grpc_address(self.address);
      o->set_version(self.version);
      o->mutable_load()->set_active_requests(
          static_cast<uint32_t>(std::max(0, self.active_requests)));
      continue;
    }
    kv::MutexLock l(&mu_);
    if (auto it = in_flight_.find(n.node_id()); it != in_flight_.end()) {
      o->mutable_load()->set_active_requests(static_cast<uint32_t>(std::max(0, it->second)));
    }
  }
  out->set_membership_source(std::string(membership_->source()));
  SetTimestamp(view.updated_at == absl::InfinitePast() ? clock()->Now() : view.updated_at,
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
  if (options_.local_store != nullptr) {
    FillStoreStats(options_.local_store->Stats(), &cost_, out);
    (*out->mutable_transport_bytes())["TRANSPORT_KIND_INPROC"] = c.bytes_transferred;
  } else {
    (*out->mutable_transport_bytes())["TRANSPORT_KIND_UCX"] = c.bytes_transferred;
  }
  const uint64_t served = c.cached_tokens + c.recomputed_tokens;
  response->set_hit_rate(served == 0 ? 0.0 : static_cast<double>(c.cached_tokens) / served);
}

void RouterBackend::CollectNodeStats(const ServiceContext& self, const std::string& tenant,
                                     absl::Time deadline, pb::GetStatsResponse* out) {
  std::vector<pb::NodeInfo> others;
  for (pb::NodeInfo& n : membership_->Members().members) {
    if (n.node_id() != self.node_id && n.node_id() != options_.local_node_id) {
      others.push_back(std::move(n));
    }
  }
  // One thread per node: a dead node costs the deadline once, not once per node.
  std::vector<absl::StatusOr<pb::NodeStats>> got(others.size(), absl::UnknownError(""));
  {
    std::vector<std::thread> askers;
    for (size_t i = 0; i < others.size(); ++i) {
      askers.emplace_back([&, i] {
        got[i] = options_.node_stats
                     ? options_.node_stats(others[i], tenant, deadline)
                     : absl::UnimplementedError("this router does not collect node stats");
      });
    }
    for (std::thread& t : askers) t.join();
  }
  for (size_t i = 0; i < others.size(); ++i) {
    pb::NodeStats* n = out->add_nodes();
    if (got[i].ok()) *n = *std::move(got[i]);
    n->set_node_id(others[i].node_id());
    if (!got[i].ok()) {
      pb::ErrorInfo* e = n->mutable_error();
      e->set_code(static_cast<int32_t>(got[i].status().code()));
      e->set_retryable(absl::IsUnavailable(got[i].status()) ||
                       absl::IsDeadlineExceeded(got[i].status()));
      e->set_reason("NODE_STATS_UNAVAILABLE");
      e->set_node_id(others[i].node_id());
      e->set_message(StrCat("stats not collected from ", others[i].grpc_address(), ": ",
                            got[i].status().ToString()));
    }
  }
  std::sort(
      out->mutable_nodes()->begin(), out->mutable_nodes()->end(),
      [](const pb::NodeStats& a, const pb::NodeStats& b) { return a.node_id() < b.node_id(); });
}

RouterCounters RouterBackend::Counters() {
  kv::MutexLock l(&mu_);
  return counters_;
}

}  // namespace kv::cluster
