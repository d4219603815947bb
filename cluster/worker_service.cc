#include "cluster/worker_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>
#include <utility>

#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "cluster/worker_convert.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/sampling.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

struct WorkerService::Metrics {
  Counter* prefill_ok;
  Counter* prefill_failed;
  Counter* decode_ok;
  Counter* decode_failed;
  Counter* handoff_verified;
  Counter* handoff_rejected;
  Counter* local_prefill;
  Counter* bytes_sent;
  Counter* bytes_loaded;
  Counter* published;
  Counter* write_back_failed;
  Histogram* handoff_seconds;
};

// A bounded queue of stream writes: one write in flight at a time, in order, so a slow
// reader never makes the request thread wait on the network. Used by both reactors.
template <class Msg>
class WriteQueue {
 public:
  // Queues `m`; returns the message to StartWrite() when no write is in flight.
  Msg* Push(Msg m) {
    kv::MutexLock l(&mu_);
    if (broken_ || finished_) return nullptr;
    q_.push_back(std::move(m));
    if (writing_) return nullptr;
    writing_ = true;
    return &q_.front();
  }
  // After a write completed: the next message to write, or the final status to Finish()
  // with (in `finish`) once the queue drained.
  Msg* Next(bool ok, std::optional<absl::Status>* finish) {
    kv::MutexLock l(&mu_);
    q_.pop_front();
    if (!ok) {
      broken_ = true;
      q_.clear();
    }
    if (!q_.empty()) return &q_.front();
    writing_ = false;
    if (final_ && !finished_) {
      finished_ = true;
      *finish = *final_;
    }
    return nullptr;
  }
  // The request is over; true when the caller must Finish() now (nothing in flight).
  bool Close(absl::Status s) {
    kv::MutexLock l(&mu_);
    final_ = std::move(s);
    if (writing_ || finished_) return false;
    finished_ = true;
    return true;
  }

 private:
  kv::Mutex mu_;
  std::deque<Msg> q_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
};

namespace {

// The call's deadline on `clock`: `max` from now, or the client's (wall-clock) deadline when
// that comes first.
absl::Time CallDeadline(grpc::CallbackServerContext* ctx, Clock* clock, absl::Duration max) {
  absl::Time d = clock->Now() + max;
  const auto client = ctx->deadline();
  if (client != std::chrono::system_clock::time_point::max()) {
    d = std::min(d, FromWallTime(clock, absl::FromChrono(client)));
  }
  return d;
}

}  // namespace

// ---- Prefill ------------------------------------------------------------------------------

class PrefillReactor final : public grpc::ServerWriteReactor<pb::PrefillResponse> {
 public:
  PrefillReactor(WorkerService* svc, grpc::CallbackServerContext* ctx, const pb::PrefillRequest* r)
      : svc_(svc), req_(*r) {
    deadline_ = CallDeadline(ctx, svc->clock(), svc->options_.max_request_time);
    tenant_ = svc->Authenticate(ctx);
  }

  void Start() {
    if (absl::Status s = svc_->Admit(tenant_.status(), svc_->options_.prefill, "prefill");
        !s.ok()) {
      return Close(s);
    }
    if (!svc_->threads_->Schedule([this] { Work(); })) {
      svc_->in_flight_.fetch_sub(1);
      Close(absl::UnavailableError("worker is shutting down"));
    }
  }

  void OnWriteDone(bool ok) override {
    std::optional<absl::Status> finish;
    if (pb::PrefillResponse* next = out_.Next(ok, &finish)) StartWrite(next);
    if (finish) Finish(ToGrpcStatus(*finish));
  }
  void OnDone() override { delete this; }
  // The router gave up (or the server is shutting down): the prefill stops after its layer.
  void OnCancel() override { cancelled_ = true; }

 private:
  void Push(pb::PrefillResponse m) {
    if (pb::PrefillResponse* first = out_.Push(std::move(m))) StartWrite(first);
  }
  void Close(absl::Status s) {
    if (out_.Close(s)) Finish(ToGrpcStatus(s));
  }
  absl::StatusOr<prefill::PrefillDone> RunPrefill() {
    WorkerService& w = *svc_;
    RETURN_IF_ERROR(w.CheckKeySpace(req_.key_space()));
    if (w.prefill_ == nullptr) return absl::FailedPreconditionError("this worker has no transport");
    prefill::PrefillRequest r{.request_id = req_.request_id(),
                              .tenant = *tenant_,
                              .shared_prefix_tokens = req_.shared_prefix_tokens(),
                              .session_id = req_.session_id(),
                              .skip_publish = req_.skip_publish(),
                              .cancelled = [this] { return cancelled_.load(); }};
    ASSIGN_OR_RETURN(r.prompt, w.Tokens(req_.token_ids()));
    if (!req_.cached().empty() && req_.cached(0).first_block() == 0) {
      ASSIGN_OR_RETURN(r.cached, FromProto(req_.cached(0)));
    }
    ASSIGN_OR_RETURN(r.target, FromProto(req_.target()));
    r.retention = w.Retention(req_.session_id(), req_.has_retention_ttl(), req_.retention_ttl());
    return w.prefill_->Run(r, deadline_, [this](const prefill::PrefillProgress& p) {
      pb::PrefillResponse m;
      pb::PrefillProgress* pr = m.mutable_progress();
      pr->set_layers_done(static_cast<uint32_t>(p.layers_done));
      pr->set_layers_total(static_cast<uint32_t>(p.layers_total));
      pr->set_bytes_sent(p.bytes_sent);
      Push(std::move(m));
    });
  }
  void Work() {
    absl::StatusOr<prefill::PrefillDone> done = RunPrefill();
    svc_->CountPrefill(done);
    if (done.ok()) {
      pb::PrefillResponse m;
      ToProto(*done, m.mutable_done());
      Push(std::move(m));
    } else {
      log::Info("prefill_failed", "request_id", req_.request_id(), "error",
                done.status().ToString());
    }
    svc_->in_flight_.fetch_sub(1);
    Close(done.status());
  }

  WorkerService* const svc_;
  std::atomic<bool> cancelled_{false};
  const pb::PrefillRequest req_;
  absl::Time deadline_;
  absl::StatusOr<std::string> tenant_;
  WriteQueue<pb::PrefillResponse> out_;
};

// ---- Decode -------------------------------------------------------------------------------

// One Decode call. Reads run continuously into an inbox the request thread waits on with a
// deadline; writes go through a WriteQueue. Deleted in OnDone(), after Finish() and every
// read and write completed; the request thread's last action is Close().
class DecodeReactor final
    : public grpc::ServerBidiReactor<pb::DecodeClientMessage, pb::DecodeResponse> {
 public:
  DecodeReactor(WorkerService* svc, grpc::CallbackServerContext* ctx) : svc_(svc) {
    deadline_ = CallDeadline(ctx, svc->clock(), svc->options_.max_request_time);
    tenant_ = svc->Authenticate(ctx);
  }

  void Start() {
    if (absl::Status s = svc_->Admit(tenant_.status(), svc_->options_.decode, "decode"); !s.ok()) {
      return Close(s);
    }
    StartRead(&in_);
    if (!svc_->threads_->Schedule([this] { Work(); })) {
      svc_->in_flight_.fetch_sub(1);
      Close(absl::UnavailableError("worker is shutting down"));
    }
  }

  void OnReadDone(bool ok) override {
    kv::MutexLock l(&mu_);
    if (!ok) {
      reads_closed_ = true;
    } else {
      if (in_.has_cancel()) cancel_seen_ = true;
      inbox_.push_back(in_);
      StartRead(&in_);
    }
    if ((cancelled_ || cancel_seen_) && session_ != nullptr) session_->Cancel();
  }
  void OnWriteDone(bool ok) override {
    std::optional<absl::Status> finish;
    if (pb::DecodeResponse* next = out_.Next(ok, &finish)) StartWrite(next);
    if (finish) Finish(ToGrpcStatus(*finish));
  }
  void OnCancel() override {
    kv::MutexLock l(&mu_);
    cancelled_ = true;
    if (session_ != nullptr) session_->Cancel();
  }
  void OnDone() override { delete this; }

 private:
  void Push(pb::DecodeResponse m) {
    if (pb::DecodeResponse* first = out_.Push(std::move(m))) StartWrite(first);
  }
  void Close(absl::Status s) {
    if (out_.Close(s)) Finish(ToGrpcStatus(s));
  }
  // The next client message, waiting at most until `deadline`.
  absl::StatusOr<pb::DecodeClientMessage> NextMessage(absl::Time deadline) {
    kv::MutexLock l(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !inbox_.empty() || reads_closed_ || cancelled_;
    };
    mu_.AwaitWithDeadline(kv::Condition(&ready), ToWallTime(svc_->clock(), deadline));
    if (cancelled_) return absl::CancelledError("Decode cancelled by the caller");
    if (!inbox_.empty()) {
      pb::DecodeClientMessage m = std::move(inbox_.front());
      inbox_.pop_front();
      return m;
    }
    if (reads_closed_) return absl::CancelledError("the caller closed the Decode stream");
    return MarkRetryable(absl::DeadlineExceededError("no message from the router in time"));
  }
  absl::StatusOr<decode::DecodeRequest> ToRequest(const pb::DecodeStart& st) {
    WorkerService& w = *svc_;
    RETURN_IF_ERROR(w.CheckKeySpace(st.key_space()));
    decode::DecodeRequest r{.request_id = st.request_id(),
                            .tenant = *tenant_,
                            .shared_prefix_tokens = st.shared_prefix_tokens(),
                            .max_tokens = st.sampling().max_new_tokens(),
                            .ignore_eos = st.sampling().ignore_eos(),
                            .session_id = st.session_id(),
                            .skip_publish = st.skip_publish()};
    if (r.request_id.empty()) r.request_id = StrCat("d", w.next_request_.fetch_add(1));
    ASSIGN_OR_RETURN(r.prompt, w.Tokens(st.token_ids()));
    ASSIGN_OR_RETURN(r.sampling, FromProto(st.sampling()));
    r.stop_tokens.assign(st.sampling().stop_token_ids().begin(),
                         st.sampling().stop_token_ids().end());
    r.retention = w.Retention(st.session_id(), st.has_retention_ttl(), st.retention_ttl());
    if (!st.cached().empty() && st.cached(0).first_block() == 0) {
      ASSIGN_OR_RETURN(r.cached, FromProto(st.cached(0)));
    }
    return r;
  }
  void Work() {
    absl::StatusOr<decode::DecodeOutcome> out = Run();
    svc_->CountDecode(out);
    if (!out.ok()) log::Info("decode_failed", "error", out.status().ToString());
    {
      kv::MutexLock l(&mu_);
      session_ = nullptr;
    }
    session_owner_.reset();
    svc_->in_flight_.fetch_sub(1);
    Close(out.status());
  }
  absl::StatusOr<decode::DecodeOutcome> Run();

  WorkerService* const svc_;
  absl::Time deadline_;
  absl::StatusOr<std::string> tenant_;
  pb::DecodeClientMessage in_;  // the read in flight
  std::unique_ptr<decode::DecodeSession> session_owner_;
  kv::Mutex mu_;
  decode::DecodeSession* session_ ABSL_GUARDED_BY(mu_) = nullptr;  // for Cancel from callbacks
  std::deque<pb::DecodeClientMessage> inbox_ ABSL_GUARDED_BY(mu_);
  bool reads_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_seen_ ABSL_GUARDED_BY(mu_) = false;
  WriteQueue<pb::DecodeResponse> out_;
};

absl::StatusOr<decode::DecodeOutcome> DecodeReactor::Run() {
  ASSIGN_OR_RETURN(pb::DecodeClientMessage first, NextMessage(deadline_));
  if (!first.has_start()) return absl::InvalidArgumentError("Decode must start with DecodeStart");
  ASSIGN_OR_RETURN(decode::DecodeRequest req, ToRequest(first.start()));
  ASSIGN_OR_RETURN(session_owner_,
                   decode::DecodeSession::Create(&svc_->decode_ctx_, std::move(req), deadline_));
  {
    kv::MutexLock l(&mu_);
    session_ = session_owner_.get();
    if (cancelled_ || cancel_seen_) session_->Cancel();
  }
  ASSIGN_OR_RETURN(transport::HandoffDestination dest, session_owner_->Start());
  {
    pb::DecodeResponse m;
    ToProto(dest, m.mutable_ready());
    Push(std::move(m));
  }
  // The prefill may compute for long: wait up to the request's deadline.
  ASSIGN_OR_RETURN(pb::DecodeClientMessage msg, NextMessage(deadline_));
  if (msg.has_prefill_result()) {
    RETURN_IF_ERROR(session_owner_->OnPrefillResult(FromProto(msg.prefill_result())));
  } else if (msg.has_cancel()) {
    session_owner_->Cancel();
  } else {
    return absl::InvalidArgumentError("expected PrefillResult or DecodeCancel after HandoffReady");
  }
  int64_t index = 0;
  ASSIGN_OR_RETURN(decode::DecodeOutcome out, session_owner_->Run([&](int32_t tok) {
    pb::DecodeResponse m;
    m.mutable_tokens()->add_token_ids(static_cast<uint32_t>(tok));
    m.mutable_tokens()->set_first_index(static_cast<uint32_t>(index++));
    Push(std::move(m));
    return true;
  }));
  pb::DecodeResponse m;
  ToProto(out, m.mutable_done());
  Push(std::move(m));
  return out;
}

// ---- the service --------------------------------------------------------------------------

WorkerService::WorkerService(const model::ServingModel* model, transport::Transport* transport,
                             transport::RegionGraveyard* graveyard, PagePool* pool, TenantAuth auth,
                             WorkerServiceOptions options)
    : model_(model),
      transport_(transport),
      pool_(pool),
      auth_(std::move(auth)),
      options_(std::move(options)),
      threads_(std::make_unique<ThreadPool>(std::max(1, options_.worker_threads))) {
  params_ = model->key_params();
  page_tokens_ = model->page_tokens();
  prefill_ctx_ = prefill::PrefillContext{
      .model = model,
      .pool = pool,
      .transport = transport,
      .graveyard = graveyard,
      .clock = options_.clock,
      .options = {.prefill_chunk = options_.prefill_chunk,
                  .resume_checkpoint_pages = options_.resume_checkpoint_pages,
                  .handoff_timeout = options_.handoff_timeout},
      .on_write_back = [this](int64_t stored, int64_t not_stored) {
        CountWriteBack(stored, not_stored);
      }};
  decode_ctx_ =
      decode::DecodeContext{.model = model,
                            .pool = pool,
                            .transport = transport,
                            .graveyard = graveyard,
                            .clock = options_.clock,
                            .options = {.node_id = options_.node_id,
                                        .prefill_chunk = options_.prefill_chunk,
                                        .resume_checkpoint_pages = options_.resume_checkpoint_pages,
                                        .handoff_timeout = options_.handoff_timeout}};
  if (transport != nullptr && graveyard != nullptr) {
    absl::StatusOr<std::unique_ptr<prefill::PrefillWorker>> p =
        prefill::PrefillWorker::Create(&prefill_ctx_);
    if (p.ok()) {
      prefill_ = *std::move(p);
    } else {
      log::Warn("prefill_worker_unavailable", "error", p.status().ToString());
    }
  }
  MetricsRegistry* reg = options_.metrics ? options_.metrics : &MetricsRegistry::Default();
  metrics_ = std::make_unique<Metrics>();
  auto counter = [&](const char* name, const char* help, std::string_view label = {},
                     std::string_view value = {}) {
    return label.empty() ? reg->GetCounter(name, help)
                         : reg->GetCounter(name, help, {{std::string(label), std::string(value)}});
  };
  metrics_->prefill_ok = counter("kvstrata_worker_prefills_total", "Prefill calls", "result", "ok");
  metrics_->prefill_failed =
      counter("kvstrata_worker_prefills_total", "Prefill calls", "result", "error");
  metrics_->decode_ok = counter("kvstrata_worker_decodes_total", "Decode calls", "result", "ok");
  metrics_->decode_failed =
      counter("kvstrata_worker_decodes_total", "Decode calls", "result", "error");
  metrics_->handoff_verified =
      counter("kvstrata_worker_handoffs_total", "KV handoffs received, by checksum verdict",
              "result", "verified");
  metrics_->handoff_rejected =
      counter("kvstrata_worker_handoffs_total", "KV handoffs received, by checksum verdict",
              "result", "rejected");
  metrics_->local_prefill = counter("kvstrata_worker_local_prefills_total",
                                    "Prompts a decode worker computed itself (no usable handoff)");
  metrics_->bytes_sent =
      counter("kvstrata_worker_handoff_bytes_total", "KV bytes written to decode workers");
  metrics_->bytes_loaded =
      counter("kvstrata_worker_loaded_bytes_total", "Page bytes read from the page pool");
  metrics_->published = counter("kvstrata_worker_published_pages_total",
                                "Pages the page pool stored (or already held) from this worker");
  metrics_->write_back_failed =
      counter("kvstrata_worker_write_back_failed_pages_total",
              "Pages a prefill worker queued for write-back that the page pool did not take");
  metrics_->handoff_seconds = reg->GetHistogram("kvstrata_worker_prefill_seconds",
                                                "Prefill call duration (load, "
                                                "compute and handoff)",
                                                Histogram::LatencyBounds());
}

WorkerService::~WorkerService() {
  threads_.reset();
  prefill_.reset();  // waits for queued write-backs
}

void WorkerService::CountPrefill(const absl::StatusOr<prefill::PrefillDone>& done) {
  (done.ok() ? metrics_->prefill_ok : metrics_->prefill_failed)->Inc();
  kv::MutexLock l(&mu_);
  ++(done.ok() ? counters_.prefills_ok : counters_.prefills_failed);
  if (!done.ok()) return;
  counters_.cached_tokens += static_cast<uint64_t>(done->cached_tokens);
  counters_.recomputed_tokens += static_cast<uint64_t>(done->recomputed_tokens);
  counters_.bytes_sent += done->bytes_sent;
  counters_.bytes_loaded += done->bytes_loaded;
  metrics_->bytes_sent->Inc(static_cast<double>(done->bytes_sent));
  metrics_->bytes_loaded->Inc(static_cast<double>(done->bytes_loaded));
  metrics_->handoff_seconds->Observe(absl::ToDoubleSeconds(done->load_time + done->compute_time));
}

void WorkerService::CountWriteBack(int64_t stored, int64_t not_stored) {
  kv::MutexLock l(&mu_);
  counters_.published_pages += static_cast<uint64_t>(stored);
  counters_.write_back_failed_pages += static_cast<uint64_t>(not_stored);
  metrics_->published->Inc(static_cast<double>(stored));
  metrics_->write_back_failed->Inc(static_cast<double>(not_stored));
}

void WorkerService::CountDecode(const absl::StatusOr<decode::DecodeOutcome>& out) {
  (out.ok() ? metrics_->decode_ok : metrics_->decode_failed)->Inc();
  kv::MutexLock l(&mu_);
  ++(out.ok() ? counters_.decodes_ok : counters_.decodes_failed);
  if (!out.ok()) return;
  counters_.output_tokens += out->tokens.size();
  counters_.published_pages += static_cast<uint64_t>(out->published_pages);
  metrics_->published->Inc(static_cast<double>(out->published_pages));
  switch (out->handoff) {
    case decode::HandoffVerdict::kVerified:
      ++counters_.handoffs_verified;
      metrics_->handoff_verified->Inc();
      return;  // the prompt's tokens were counted by the prefill worker
    case decode::HandoffVerdict::kRejected:
      ++counters_.handoffs_rejected;
      metrics_->handoff_rejected->Inc();
      break;
    case decode::HandoffVerdict::kNone:
      break;
  }
  if (out->finish == decode::FinishReason::kCancelled && out->tokens.empty()) return;
  ++counters_.local_prefills;
  metrics_->local_prefill->Inc();
  counters_.cached_tokens += static_cast<uint64_t>(out->cached_tokens);
  counters_.recomputed_tokens += static_cast<uint64_t>(out->recomputed_tokens);
  counters_.bytes_loaded += out->bytes_read;
  metrics_->bytes_loaded->Inc(static_cast<double>(out->bytes_read));
}

absl::Duration WorkerService::Retention(const std::string& session_id, bool has_ttl,
                                        const google::protobuf::Duration& ttl) const {
  if (session_id.empty()) return absl::ZeroDuration();
  return std::min(has_ttl ? FromProto(ttl) : options_.default_retention, options_.max_retention);
}

absl::StatusOr<std::string> WorkerService::Authenticate(grpc::CallbackServerContext* ctx) const {
  ASSIGN_OR_RETURN(CallIdentity id, RequireNode(auth_, ctx, "the Worker service"));
  return std::move(id.tenant);
}

absl::Status WorkerService::CheckKeySpace(const pb::KeySpace& ks) const {
  const std::string_view chain = ks.key_chain().empty() ? "tokens" : ks.key_chain();
  if (chain != KeyChainName(params_.chain) || ks.engine_hash_seed() != params_.engine_hash_seed) {
    return absl::FailedPreconditionError(
        StrCat("key chain mismatch: this worker derives keys over '", KeyChainName(params_.chain),
               "'", params_.chain == KeyChain::kTokens ? "" : " with its configured seed",
               "; the request names '", chain, "'",
               chain == "tokens" ? "" : " and a seed of its own", " (configure both alike)"));
  }
  const std::string fp(params_.model_fingerprint.begin(), params_.model_fingerprint.end());
  if (ks.model_fingerprint() != fp || ks.layout() != params_.layout_id ||
      ks.page_tokens() != static_cast<uint32_t>(page_tokens_)) {
    return absl::FailedPreconditionError(
        StrCat("key space mismatch: this worker serves model ", ToHex(params_.model_fingerprint),
               " layout ", params_.layout_id, " with ", page_tokens_,
               "-token pages; the request names layout '", ks.layout(), "' and ", ks.page_tokens(),
               "-token pages"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> WorkerService::Tokens(
    const google::protobuf::RepeatedField<uint32_t>& ids) const {
  if (ids.empty()) return absl::InvalidArgumentError("token_ids is empty");
  const int64_t vocab = model_->config().vocab_size;
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] >= static_cast<uint64_t>(vocab)) {
      return absl::InvalidArgumentError(
          StrCat("token ", ids[i], " at index ", i, " is outside the vocabulary [0, ", vocab, ")"));
    }
    out.push_back(static_cast<int32_t>(ids[i]));
  }
  if (static_cast<int64_t>(out.size()) >= model_->max_context()) {
    return absl::OutOfRangeError(StrCat(
        "prompt of ", out.size(), " tokens reaches the context limit ", model_->max_context()));
  }
  return out;
}

absl::Status WorkerService::Admit(const absl::Status& auth, bool has_role, std::string_view role) {
  RETURN_IF_ERROR(auth);
  if (!has_role) {
    return absl::FailedPreconditionError(
        StrCat("node ", options_.node_id, " does not have the ", role, " role"));
  }
  if (in_flight_.fetch_add(1) >= options_.max_queued) {
    in_flight_.fetch_sub(1);
    return MarkRetryable(absl::ResourceExhaustedError(
        StrCat(role, " worker busy: ", options_.max_queued, " requests already queued")));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* WorkerService::GetNodeStats(grpc::CallbackServerContext* ctx,
                                                      const pb::GetNodeStatsRequest* request,
                                                      pb::NodeStats* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<std::string> tenant = Authenticate(ctx);
  if (tenant.ok()) {
    const WorkerCounters c = Counters();
    response->set_node_id(options_.node_id);
    response->set_requests_ok(c.prefills_ok + c.decodes_ok);
    response->set_requests_failed(c.prefills_failed + c.decodes_failed);
    response->set_cached_tokens(c.cached_tokens);
    response->set_recomputed_tokens(c.recomputed_tokens);
    response->set_output_tokens(c.output_tokens);
    (*response->mutable_transport_bytes())["TRANSPORT_KIND_UCX"] = c.bytes_sent;
    SetDuration(absl::Now() - started_, response->mutable_uptime());
  }
  reactor->Finish(ToGrpcStatus(tenant.status()));
  return reactor;
}

WorkerCounters WorkerService::Counters() {
  kv::MutexLock l(&mu_);
  return counters_;
}

void WorkerService::WaitIdle() {
  if (prefill_ != nullptr) prefill_->WaitIdle();
}

grpc::ServerWriteReactor<pb::PrefillResponse>* WorkerService::Prefill(
    grpc::CallbackServerContext* ctx, const pb::PrefillRequest* request) {
  auto* r = new PrefillReactor(this, ctx, request);
  r->Start();
  return r;
}

grpc::ServerBidiReactor<pb::DecodeClientMessage, pb::DecodeResponse>* WorkerService::Decode(
    grpc::CallbackServerContext* ctx) {
  auto* r = new DecodeReactor(this, ctx);
  r->Start();
  return r;
}

}  // namespace kv::cluster
