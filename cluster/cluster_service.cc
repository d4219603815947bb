#include "cluster/cluster_service.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <utility>

#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "cluster/worker_convert.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/tokenizer.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

// One Generate call. Lifetime: created by Generate(), deleted in OnDone() (after Finish()
// and every write completed). The worker task holds no reference after calling Done().
class GenerateReactor final : public grpc::ServerWriteReactor<pb::GenerateResponse> {
 public:
  GenerateReactor(ClusterService* svc, grpc::CallbackServerContext* ctx, GenerateRequest req,
                  std::string request_id)
      : svc_(svc), req_(std::move(req)), request_id_(std::move(request_id)) {
    arrival_ = svc->clock()->Now();
    deadline_ = arrival_ + svc->options_.max_request_time;
    const auto client = ctx->deadline();
    if (client != std::chrono::system_clock::time_point::max()) {
      deadline_ = std::min(deadline_, FromWallTime(svc->clock(), absl::FromChrono(client)));
    }
  }

  // Queues the generation; finishes at once when the service is saturated.
  void Start() {
    if (svc_->in_flight_.fetch_add(1) >= svc_->options_.max_queued) {
      svc_->in_flight_.fetch_sub(1);
      Done(MarkRetryable(absl::ResourceExhaustedError(StrCat(
          "server busy: ", svc_->options_.max_queued, " Generate requests already queued"))));
      return;
    }
    if (!svc_->threads_->Schedule([this] { Work(); })) {
      svc_->in_flight_.fetch_sub(1);
      Done(absl::UnavailableError("server is shutting down"));
    }
  }

  void OnWriteDone(bool ok) override {
    pb::GenerateResponse* next = nullptr;
    std::optional<absl::Status> finish;
    {
      kv::MutexLock l(&mu_);
      queue_.pop_front();
      if (!ok) {  // the stream is broken (client gone): stop writing
        broken_ = true;
        queue_.clear();
      }
      if (!queue_.empty()) {
        next = &queue_.front();
      } else {
        writing_ = false;
        if (final_ && !finished_) {
          finished_ = true;
          finish = *final_;
        }
      }
    }
    if (next != nullptr) StartWrite(next);
    if (finish) Finish(ToGrpcStatus(*finish));
  }

  void OnCancel() override { cancelled_ = true; }
  void OnDone() override { delete this; }

 private:
  void Push(pb::GenerateResponse msg) {
    pb::GenerateResponse* start = nullptr;
    {
      kv::MutexLock l(&mu_);
      if (broken_) return;
      queue_.push_back(std::move(msg));
      if (!writing_) {
        writing_ = true;
        start = &queue_.front();
      }
    }
    if (start != nullptr) StartWrite(start);
  }

  // Last action of the call's owner: after this the reactor may be deleted at any time.
  void Done(absl::Status status) {
    bool finish_now = false;
    {
      kv::MutexLock l(&mu_);
      final_ = status;
      if (!writing_ && !finished_) finished_ = finish_now = true;
    }
    if (finish_now) Finish(ToGrpcStatus(status));
  }

  void Work() {
    if (cancelled_) {  // cancelled (or the server shut down) while queued
      svc_->in_flight_.fetch_sub(1);
      Done(absl::CancelledError("Generate cancelled before it started"));
      return;
    }
    ServingBackend* backend = svc_->backend_;
    Route route;
    bool deadline_hit = false;
    uint32_t index = 0;
    absl::Time first_token;
    req_.on_plan = [&](const CostPlan& plan) {
      pb::GenerateResponse m;
      pb::GenerateAccepted* a = m.mutable_accepted();
      a->set_request_id(request_id_);
      a->set_prompt_tokens(static_cast<uint32_t>(req_.prompt.size()));
      a->set_prefill_node_id(route.prefill_node_id);
      a->set_decode_node_id(route.decode_node_id);
      ToProto(plan, a->mutable_cost());
      Push(std::move(m));
    };
    req_.on_token = [&](int32_t tok) {
      const absl::Time now = svc_->clock()->Now();
      if (index == 0) first_token = now;
      pb::GenerateResponse m;
      pb::GeneratedTokens* t = m.mutable_tokens();
      t->add_token_ids(static_cast<uint32_t>(tok));
      t->set_first_index(index++);
      t->set_text(utf8_.Add(tok));
      SetDuration(now - arrival_, t->mutable_since_start());
      Push(std::move(m));
      if (cancelled_) return false;
      if (now > deadline_) {
        deadline_hit = true;
        return false;
      }
      return true;
    };
    req_.deadline = deadline_;
    req_.cancelled = [this] { return cancelled_.load(); };
    absl::StatusOr<GenerateResult> r = backend->Generate(req_, &route);
    // Stopped before any token: the deadline passed during the prompt.
    if (r.ok() && r->finish == FinishReason::kCancelled && !cancelled_ &&
        svc_->clock()->Now() > deadline_) {
      deadline_hit = true;
    }
    absl::Status status = r.status();
    if (status.ok() && deadline_hit) {
      status = absl::DeadlineExceededError(
          StrCat("Generate exceeded its deadline after ", r->tokens.size(), " tokens"));
    } else if (status.ok() && cancelled_) {
      status = absl::CancelledError("Generate cancelled by the client");
    }
    if (status.ok()) {
      pb::GenerateResponse m;
      pb::GenerateDone* d = m.mutable_done();
      d->set_finish_reason(ToProto(r->finish));
      RequestStats st = r->stats;
      if (!r->tokens.empty()) st.ttft = first_token - arrival_;  // includes queueing
      st.total_time = svc_->clock()->Now() - arrival_;
      ToProto(st, d->mutable_stats());
      svc_->ttft_->Observe(absl::ToDoubleSeconds(st.ttft));
      Push(std::move(m));
    } else {
      log::Info("generate_failed", "request_id", request_id_, "error", status.ToString());
    }
    svc_->in_flight_.fetch_sub(1);
    Done(status);
  }

  ClusterService* const svc_;
  GenerateRequest req_;
  const std::string request_id_;
  absl::Time arrival_, deadline_;
  Utf8Assembler utf8_;
  std::atomic<bool> cancelled_{false};
  kv::Mutex mu_;
  std::deque<pb::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
};

ClusterService::ClusterService(ServingBackend* backend, TenantAuth auth,
                               ClusterServiceOptions options)
    : backend_(backend),
      auth_(std::move(auth)),
      options_(std::move(options)),
      started_(clock()->Now()),
      threads_(std::make_unique<ThreadPool>(std::max(1, options_.worker_threads))) {
  MetricsRegistry* reg = options_.metrics ? options_.metrics : &MetricsRegistry::Default();
  ttft_ = reg->GetHistogram("kvstrata_cluster_ttft_seconds",
                            "Generate time to first token, from arrival at the service",
                            Histogram::LatencyBounds());
}

ClusterService::~ClusterService() { threads_.reset(); }

void ClusterService::SetAdvertisedAddress(std::string address) {
  kv::MutexLock l(&mu_);
  address_ = std::move(address);
}

absl::StatusOr<std::string> ClusterService::Authenticate(grpc::CallbackServerContext* ctx) const {
  return AuthenticateCall(auth_, ctx);
}

absl::StatusOr<std::vector<int32_t>> ClusterService::PromptTokens(const pb::Prompt& p) const {
  std::vector<int32_t> ids;
  if (p.has_tokens()) {
    for (int i = 0; i < p.tokens().ids_size(); ++i) {
      const uint32_t id = p.tokens().ids(i);
      if (id > static_cast<uint32_t>(INT32_MAX)) {
        return absl::InvalidArgumentError(StrCat("prompt token ", i, " (", id, ") is too large"));
      }
      ids.push_back(static_cast<int32_t>(id));
    }
  } else if (p.has_text()) {
    // Empty text is an empty prompt (tokenizing it would leave a lone BOS).
    if (p.text().empty()) return absl::InvalidArgumentError("the prompt text is empty");
    ids = model::ByteTokenizer::Encode(p.text(), /*add_bos=*/true, /*parse_specials=*/true);
  }
  if (ids.empty()) return absl::InvalidArgumentError("the prompt is empty (set tokens or text)");
  return ids;
}

absl::StatusOr<GenerateRequest> ClusterService::ToServingRequest(const pb::GenerateRequest& r,
                                                                 const std::string& tenant) const {
  if (!r.model().empty() && r.model() != options_.model_name) {
    return absl::NotFoundError(
        StrCat("unknown model '", r.model(), "'; this server serves '", options_.model_name, "'"));
  }
  if (r.request_id().size() > 128) {
    return absl::InvalidArgumentError("request_id longer than 128 characters");
  }
  GenerateRequest q;
  ASSIGN_OR_RETURN(q.prompt, PromptTokens(r.prompt()));
  q.tenant = tenant;
  q.shared_prefix_tokens = r.shared_prefix_tokens();
  q.session_id = r.session_id();
  if (r.has_retention_ttl()) q.retention_ttl = FromProto(r.retention_ttl());
  const pb::SamplingParams& s = r.sampling();
  if (s.max_new_tokens() == 0) {
    return absl::InvalidArgumentError("sampling.max_new_tokens must be > 0");
  }
  if (s.top_k() != 0) {
    return absl::InvalidArgumentError("sampling.top_k is not supported by this server; use top_p");
  }
  q.max_tokens = s.max_new_tokens();
  q.sampling.temperature = s.temperature();
  q.sampling.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  q.sampling.seed = s.seed();
  for (uint32_t t : s.stop_token_ids()) q.stop_tokens.push_back(static_cast<int32_t>(t));
  q.ignore_eos = s.ignore_eos();
  switch (r.cache_policy()) {
    case pb::CACHE_POLICY_UNSPECIFIED:
    case pb::CACHE_POLICY_AUTO:
      q.policy = CachePolicy::kAuto;
      break;
    case pb::CACHE_POLICY_FORCE_LOAD:
      q.policy = CachePolicy::kForceLoad;
      break;
    case pb::CACHE_POLICY_FORCE_RECOMPUTE:
      q.policy = CachePolicy::kForceRecompute;
      break;
    case pb::CACHE_POLICY_BYPASS:
      q.policy = CachePolicy::kBypass;
      break;
    default:
      return absl::InvalidArgumentError(StrCat("unknown cache_policy ", r.cache_policy()));
  }
  return q;
}

grpc::ServerWriteReactor<pb::GenerateResponse>* ClusterService::Generate(
    grpc::CallbackServerContext* ctx, const pb::GenerateRequest* request) {
  absl::StatusOr<GenerateRequest> q;
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (tenant.ok()) {
    q = ToServingRequest(*request, *tenant);
  } else {
    q = tenant.status();
  }
  std::string id = request->request_id();
  if (id.empty()) id = StrCat(options_.node_id, "-", next_request_.fetch_add(1));
  if (!q.ok()) {
    // A reactor that finishes at once with the error.
    class Failed final : public grpc::ServerWriteReactor<pb::GenerateResponse> {
     public:
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(q.status());
  }
  auto* reactor = new GenerateReactor(this, ctx, *std::move(q), std::move(id));
  reactor->Start();
  return reactor;
}

grpc::ServerUnaryReactor* ClusterService::Lookup(grpc::CallbackServerContext* ctx,
                                                 const pb::LookupRequest* request,
                                                 pb::LookupResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::string tenant, Authenticate(ctx));
    if (!request->model().empty() && request->model() != options_.model_name) {
      return absl::NotFoundError(StrCat("unknown model '", request->model(), "'"));
    }
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptTokens(request->prompt()));
    return backend_->Lookup(prompt, tenant, request->shared_prefix_tokens(),
                            request->include_keys(), response);
  }();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

ServiceContext ClusterService::Context() {
  ServiceContext c;
  c.node_id = options_.node_id;
  c.version = options_.version;
  c.active_requests = in_flight_.load();
  kv::MutexLock l(&mu_);
  c.address = address_;
  return c;
}

grpc::ServerUnaryReactor* ClusterService::ListNodes(grpc::CallbackServerContext* ctx,
                                                    const pb::ListNodesRequest* request,
                                                    pb::ListNodesResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (tenant.ok()) backend_->ListNodes(Context(), *request, response);
  reactor->Finish(ToGrpcStatus(tenant.status()));
  return reactor;
}

grpc::ServerUnaryReactor* ClusterService::GetStats(grpc::CallbackServerContext* ctx,
                                                   const pb::GetStatsRequest* request,
                                                   pb::GetStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (tenant.ok()) {
    backend_->GetStats(Context(), response);
    pb::NodeStats* self = response->mutable_self();
    SetDuration(absl::Seconds(ttft_->Quantile(0.5)), self->mutable_ttft_p50());
    SetDuration(absl::Seconds(ttft_->Quantile(0.99)), self->mutable_ttft_p99());
    SetDuration(clock()->Now() - started_, self->mutable_uptime());
  }
  if (tenant.ok() && request->all_nodes()) {
    // Other nodes answer over the network: off the gRPC thread, bounded by the call's
    // deadline (at most 5 s).
    const absl::Time deadline =
        std::min(absl::FromChrono(ctx->deadline()), absl::Now() + absl::Seconds(5));
    const bool scheduled =
        threads_->Schedule([this, reactor, response, deadline, tenant = *tenant] {
          backend_->CollectNodeStats(Context(), tenant, deadline, response);
          reactor->Finish(grpc::Status::OK);
        });
    if (scheduled) return reactor;
    reactor->Finish(ToGrpcStatus(absl::UnavailableError("the server is shutting down")));
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(tenant.status()));
  return reactor;
}

}  // namespace kv::cluster
