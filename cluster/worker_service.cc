#include "cluster/worker_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>
#include <utility>

#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "model/sampling.h"
#include "prefill/engine.h"

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

absl::Time CallDeadline(grpc::CallbackServerContext* ctx, absl::Duration max) {
  absl::Time d = absl::Now() + max;
  const auto client = ctx->deadline();
  if (client != std::chrono::system_clock::time_point::max()) {
    d = std::min(d, absl::FromChrono(client));
  }
  return d;
}

absl::StatusOr<model::SamplingParams> ToSampling(const pb::SamplingParams& s) {
  if (s.top_k() != 0) return absl::InvalidArgumentError("sampling.top_k is not supported");
  model::SamplingParams p;
  p.temperature = s.temperature();
  p.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  p.seed = s.seed();
  RETURN_IF_ERROR(model::ValidateSamplingParams(p));
  return p;
}

}  // namespace

// ---- Prefill ------------------------------------------------------------------------------

class PrefillReactor final : public grpc::ServerWriteReactor<pb::PrefillResponse> {
 public:
  PrefillReactor(WorkerService* svc, grpc::CallbackServerContext* ctx, const pb::PrefillRequest* r)
      : svc_(svc), req_(*r), authorization_(AuthorizationOf(ctx)) {
    deadline_ = CallDeadline(ctx, svc->options_.max_request_time);
    tenant_ = svc->Authenticate(ctx);
  }

  void Start() {
    if (absl::Status s = svc_->Admit(tenant_.status(), svc_->options_.prefill, "prefill");
        !s.ok()) {
      return Close(s);
    }
    if (!svc_->pool_threads_->Schedule([this] { Work(); })) {
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

 private:
  void Push(pb::PrefillResponse m) {
    if (pb::PrefillResponse* first = out_.Push(std::move(m))) StartWrite(first);
  }
  void Close(absl::Status s) {
    if (out_.Close(s)) Finish(ToGrpcStatus(s));
  }
  void Work() {
    absl::StatusOr<pb::PrefillDone> done = svc_->RunPrefill(
        req_, *tenant_, authorization_, deadline_, [this](const pb::PrefillProgress& p) {
          pb::PrefillResponse m;
          *m.mutable_progress() = p;
          Push(std::move(m));
        });
    {
      kv::MutexLock l(&svc_->mu_);
      ++(done.ok() ? svc_->counters_.prefills_ok : svc_->counters_.prefills_failed);
    }
    (done.ok() ? svc_->metrics_->prefill_ok : svc_->metrics_->prefill_failed)->Inc();
    if (done.ok()) {
      pb::PrefillResponse m;
      *m.mutable_done() = *std::move(done);
      Push(std::move(m));
    } else {
      log::Info("prefill_failed", "request_id", req_.request_id(), "error",
                done.status().ToString());
    }
    svc_->in_flight_.fetch_sub(1);
    Close(done.status());
  }

  WorkerService* const svc_;
  const pb::PrefillRequest req_;
  const std::string authorization_;
  absl::Time deadline_;
  absl::StatusOr<std::string> tenant_;
  WriteQueue<pb::PrefillResponse> out_;
};

// The destination of one handoff: a poisoned buffer registered with the transport.
struct WorkerService::Handoff {
  std::shared_ptr<std::vector<uint8_t>> buffer;
  transport::RegionId region = 0;
  std::string packed_key;
};

absl::StatusOr<pb::PrefillDone> WorkerService::RunPrefill(
    const pb::PrefillRequest& r, const std::string& tenant, const std::string& authorization,
    absl::Time deadline, const std::function<void(const pb::PrefillProgress&)>& progress) {
  const absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(CheckKeySpace(r.key_space()));
  if (mla_ == nullptr) {
    return absl::FailedPreconditionError(
        StrCat("this worker serves ", params_.layout_id,
               " pages, which are not handed over as raw KV blocks: its decode workers compute "
               "prompts themselves"));
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, Tokens(r.token_ids()));
  ASSIGN_OR_RETURN(model::SamplingParams sampling, ToSampling(r.sampling()));
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<std::string> ns;
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   DeriveRequestKeys(params_, tokens, tenant, r.shared_prefix_tokens(), &ns));
  ASSIGN_OR_RETURN(kernels::KvLayout mla_layout, kernels::ParseLayout(params_.layout_id));
  ASSIGN_OR_RETURN(std::unique_ptr<model::KvCache> kv, mla_->NewCache(mla_layout, n));
  const int64_t pt = page_tokens_, bb = kv->block_bytes(), rb = kv->record_bytes();
  const int64_t nblocks = (n + pt - 1) / pt;
  const int layers = model_->config().num_hidden_layers;

  // The destination: one region on the decode worker, one block per prompt block.
  const pb::HandoffTarget& target = r.target();
  if (transport_ == nullptr) return absl::FailedPreconditionError("this worker has no transport");
  if (target.pages_size() != nblocks) {
    return absl::InvalidArgumentError(
        StrCat("handoff target has ", target.pages_size(), " pages; the prompt needs ", nblocks));
  }
  for (const pb::RemoteRegion& p : target.pages()) {
    if (p.length() != static_cast<uint64_t>(bb) || p.remote_key() != target.pages(0).remote_key()) {
      return absl::InvalidArgumentError(
          StrCat("handoff target pages must be ", bb, "-byte slices of one region"));
    }
  }
  // handoff_timeout bounds each step that waits on another process (connecting, one
  // transfer, one pool read), measured from when the step starts; the whole prefill,
  // compute included, is bounded by the request's deadline.
  auto step_deadline = [&] { return std::min(deadline, absl::Now() + options_.handoff_timeout); };
  ASSIGN_OR_RETURN(transport::PeerId peer, transport_->Connect(target.endpoint(), step_deadline()));
  ASSIGN_OR_RETURN(transport::RemoteRegionId remote,
                   transport_->ImportRemoteRegion(peer, target.pages(0).remote_key()));
  // Staging: what we send, laid out exactly like the destination (0xFF where nothing is).
  auto staging = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(nblocks * bb), 0xFF);
  ASSIGN_OR_RETURN(
      transport::RegisteredRegion local,
      transport_->Register(staging->data(), staging->size(), transport::MemoryKind::kHost));
  std::vector<transport::TransferId> transfers;
  uint64_t bytes_sent = 0;
  auto post = [&](std::vector<transport::TransferOp> ops) -> absl::Status {
    if (ops.empty()) return absl::OkStatus();
    for (auto& op : ops) {
      op.local = local.id;
      op.remote = remote;
      bytes_sent += op.length;
    }
    ASSIGN_OR_RETURN(transport::TransferId id,
                     transport_->Prepare(
                         {.peer = peer, .kind = transport::OpKind::kWrite, .ops = std::move(ops)}));
    transfers.push_back(id);
    return transport_->Post(id, step_deadline());
  };
  auto finish_transfers = [&](absl::Status status) -> absl::Status {
    for (transport::TransferId id : transfers) {
      if (status.ok()) status = transport_->Wait(id, step_deadline());
      (void)transport_->Release(id);  // cancels what is still running after a failure
    }
    if (!transport_->Deregister(local.id).ok()) Bury(staging);  // quarantined: keep alive
    return status;
  };

  // Cached runs, in block order, from the pool; each page verified before use.
  pb::PrefillDone done;
  absl::Status status;
  int64_t loaded = 0;
  uint64_t bytes_loaded = 0;
  auto layout = LookupLayout(params_.layout_id);
  if (!layout.ok()) return layout.status();
  const absl::Time load_start = absl::Now();
  for (const pb::CachedRun& run : r.cached()) {
    if (run.first_block() != loaded || pool_ == nullptr) break;
    std::vector<BlockKey> want;
    for (const std::string& k : run.keys()) {
      if (k.size() != 32 || loaded + static_cast<int64_t>(want.size()) >= (n - 1) / pt) break;
      BlockKey key;
      std::memcpy(key.bytes.data(), k.data(), 32);
      if (key != keys[loaded + want.size()]) break;  // not this request's chain: ignore
      want.push_back(key);
    }
    absl::StatusOr<std::vector<std::vector<uint8_t>>> pages =
        pool_->Read(run.grpc_address(), want, run.lease_id(), authorization, step_deadline());
    if (!pages.ok()) {
      log::Warn("prefill_cache_read_failed", "node", run.node_id(), "error",
                pages.status().ToString());
      break;
    }
    bool stop = pages->size() < want.size();
    for (const std::vector<uint8_t>& page : *pages) {
      absl::StatusOr<PageView> view = DecodePage(page);
      absl::Status s = view.status();
      if (s.ok()) {
        s = CheckPage(*view, keys[loaded], loaded == 0 ? BlockKey::Zero() : keys[loaded - 1],
                      *layout, static_cast<int>(pt), layers);
      }
      if (s.ok()) s = kv->AppendBlock(view->kv());
      if (!s.ok()) {
        log::Warn("prefill_cache_page_rejected", "block", loaded, "error", s.ToString());
        stop = true;
        break;
      }
      bytes_loaded += page.size();
      ++loaded;
    }
    if (stop) break;
  }
  const absl::Duration load_time = absl::Now() - load_start;
  // Loaded blocks go to the decode worker at once, while the rest computes.
  if (loaded > 0) {
    for (int64_t b = 0; b < loaded; ++b) {
      ASSIGN_OR_RETURN(std::span<const uint8_t> blk, kv->BlockView(b));
      std::memcpy(staging->data() + b * bb, blk.data(), static_cast<size_t>(bb));
    }
    status = post(
        {{.local_offset = 0, .remote_offset = 0, .length = static_cast<uint64_t>(loaded * bb)}});
  }
  const int64_t start_pos = loaded * pt;
  const absl::Time compute_start = absl::Now();
  absl::StatusOr<std::vector<float>> logits = absl::InternalError("not run");
  if (status.ok()) {
    model::PrefillOptions po{.chunk_tokens = options_.prefill_chunk};
    int64_t layers_done = 0;
    // Each layer's fresh records: one op per touched block, at the same offset both sides.
    po.on_layer = [&](int layer, int64_t start, int64_t count) -> absl::Status {
      std::vector<transport::TransferOp> ops;
      for (int64_t p = start; p < start + count;) {
        const int64_t b = p / pt, in = p % pt, len = std::min(pt - in, start + count - p);
        ASSIGN_OR_RETURN(std::span<const uint8_t> blk, kv->BlockView(b));
        const int64_t off = layer * pt * rb + in * rb;
        std::memcpy(staging->data() + b * bb + off, blk.data() + off,
                    static_cast<size_t>(len * rb));
        ops.push_back({.local_offset = static_cast<uint64_t>(b * bb + off),
                       .remote_offset = static_cast<uint64_t>(b * bb + off),
                       .length = static_cast<uint64_t>(len * rb)});
        p += len;
      }
      RETURN_IF_ERROR(post(std::move(ops)));
      if (start + count == n) {  // progress once per layer of the last chunk
        pb::PrefillProgress pr;
        pr.set_layers_done(static_cast<uint32_t>(++layers_done));
        pr.set_layers_total(static_cast<uint32_t>(layers));
        pr.set_bytes_sent(bytes_sent);
        progress(pr);
      }
      return absl::OkStatus();
    };
    logits =
        mla_->Prefill(std::span<const int32_t>(tokens).subspan(start_pos), start_pos, kv.get(), po);
    status = logits.status();
  }
  const absl::Duration compute_time = absl::Now() - compute_start;
  status = finish_transfers(status);
  RETURN_IF_ERROR(status);
  model::Sampler sampler(sampling);
  ASSIGN_OR_RETURN(int32_t first, sampler.Sample(*logits));

  done.set_first_token_id(static_cast<uint32_t>(first));
  done.set_cached_tokens(static_cast<uint32_t>(start_pos));
  done.set_recomputed_tokens(static_cast<uint32_t>(n - start_pos));
  done.set_bytes_transferred(bytes_loaded + bytes_sent);
  done.set_transport(pb::TRANSPORT_KIND_UCX);
  SetDuration(load_time, done.mutable_load_time());
  SetDuration(compute_time, done.mutable_compute_time());
  done.set_kv_tokens(static_cast<uint32_t>(n));
  for (int64_t b = 0; b < nblocks; ++b) {
    done.add_block_xxh3(Xxh3_64(staging->data() + b * bb, static_cast<size_t>(bb)));
  }
  // Write-back of the new full prompt pages, after the answer (off the critical path).
  const int64_t full = n / pt;
  if (!r.skip_publish() && pool_ != nullptr && full > loaded) {
    std::vector<std::string> blocks;
    for (int64_t b = loaded; b < full; ++b) {
      ASSIGN_OR_RETURN(std::string bytes, kv->ExportBlock(b));
      blocks.push_back(std::move(bytes));
    }
    done.set_published_pages(static_cast<uint32_t>(full - loaded));
    absl::Duration retention = absl::ZeroDuration();
    if (!r.session_id().empty()) {
      retention = std::min(
          r.has_retention_ttl() ? FromProto(r.retention_ttl()) : options_.default_retention,
          options_.max_retention);
    }
    publish_pool_->Schedule([this, keys = std::move(keys), ns = std::move(ns),
                             blocks = std::move(blocks), loaded, authorization,
                             session = r.session_id(), retention] {
      (void)Publish(keys, ns, loaded, blocks, {}, session, retention, authorization);
    });
  }
  {
    kv::MutexLock l(&mu_);
    counters_.cached_tokens += static_cast<uint64_t>(start_pos);
    counters_.recomputed_tokens += static_cast<uint64_t>(n - start_pos);
    counters_.bytes_sent += bytes_sent;
    counters_.bytes_loaded += bytes_loaded;
  }
  metrics_->bytes_sent->Inc(static_cast<double>(bytes_sent));
  metrics_->bytes_loaded->Inc(static_cast<double>(bytes_loaded));
  metrics_->handoff_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
  return done;
}

}  // namespace kv::cluster

namespace kv::cluster {

int64_t WorkerService::Publish(std::span<const BlockKey> keys, std::span<const std::string> ns,
                               int64_t from, std::span<const std::string> blocks,
                               std::span<const PageRole> roles, const std::string& session,
                               absl::Duration retention, const std::string& authorization) {
  if (pool_ == nullptr || keys.empty()) return 0;
  std::vector<PoolPage> pages;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int64_t b = from + static_cast<int64_t>(i);
    absl::StatusOr<std::vector<uint8_t>> page =
        model_->EncodeExported(blocks[i], keys[b], b == 0 ? BlockKey::Zero() : keys[b - 1]);
    if (!page.ok()) {
      log::Warn("publish_encode_failed", "block", b, "error", page.status().ToString());
      break;
    }
    pages.push_back({keys[b], *std::move(page), i < roles.size() ? roles[i] : PageRole::kTurnEnd});
  }
  PoolWriteOptions wo;
  wo.key_space.set_model_fingerprint(
      std::string(params_.model_fingerprint.begin(), params_.model_fingerprint.end()));
  wo.key_space.set_layout(params_.layout_id);
  wo.key_space.set_page_tokens(static_cast<uint32_t>(page_tokens_));
  wo.session_id = session;
  wo.retention = retention;
  // The shared prefix and the tenant's pages are separate writes (a write names one
  // namespace); in chain order, so every parent is stored before its child.
  const std::string shared_ns = KeyNamespace::Shared().ToString();
  int64_t published = 0;
  for (size_t i = 0; i < pages.size();) {
    const bool shared = ns[from + i] == shared_ns;
    size_t j = i;
    while (j < pages.size() && (ns[from + j] == shared_ns) == shared) ++j;
    wo.shared_namespace = shared;
    absl::StatusOr<int64_t> stored = pool_->Publish(
        keys[0], std::span<const PoolPage>(pages).subspan(i, j - i), wo, authorization);
    if (!stored.ok()) {
      log::Warn("publish_failed", "error", stored.status().ToString());
      break;
    }
    published += *stored;
    i = j;
  }
  kv::MutexLock l(&mu_);
  counters_.published_pages += static_cast<uint64_t>(published);
  metrics_->published->Inc(static_cast<double>(published));
  return published;
}

}  // namespace kv::cluster

namespace kv::cluster {

// ---- Decode -------------------------------------------------------------------------------

// One Decode call. Reads run continuously into an inbox the request thread waits on with a
// deadline; writes go through a WriteQueue. Deleted in OnDone(), after Finish() and every
// read and write completed; the request thread's last action is Close().
class DecodeReactor final
    : public grpc::ServerBidiReactor<pb::DecodeClientMessage, pb::DecodeResponse> {
 public:
  DecodeReactor(WorkerService* svc, grpc::CallbackServerContext* ctx)
      : svc_(svc), authorization_(AuthorizationOf(ctx)) {
    deadline_ = CallDeadline(ctx, svc->options_.max_request_time);
    tenant_ = svc->Authenticate(ctx);
  }

  void Start() {
    if (absl::Status s = svc_->Admit(tenant_.status(), svc_->options_.decode, "decode"); !s.ok()) {
      return Close(s);
    }
    StartRead(&in_);
    if (!svc_->pool_threads_->Schedule([this] { Work(); })) {
      svc_->in_flight_.fetch_sub(1);
      Close(absl::UnavailableError("worker is shutting down"));
    }
  }

  void OnReadDone(bool ok) override {
    kv::MutexLock l(&mu_);
    if (!ok) {
      reads_closed_ = true;
      return;
    }
    inbox_.push_back(in_);
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    std::optional<absl::Status> finish;
    if (pb::DecodeResponse* next = out_.Next(ok, &finish)) StartWrite(next);
    if (finish) Finish(ToGrpcStatus(*finish));
  }
  void OnCancel() override {
    kv::MutexLock l(&mu_);
    cancelled_ = true;
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
    mu_.AwaitWithDeadline(kv::Condition(&ready), deadline);
    if (cancelled_) return absl::CancelledError("Decode cancelled by the caller");
    if (!inbox_.empty()) {
      pb::DecodeClientMessage m = std::move(inbox_.front());
      inbox_.pop_front();
      return m;
    }
    if (reads_closed_) return absl::CancelledError("the caller closed the Decode stream");
    return MarkRetryable(absl::DeadlineExceededError("no message from the router in time"));
  }
  // A cancel message or a cancelled call since the last check.
  bool StopRequested() {
    kv::MutexLock l(&mu_);
    if (cancelled_) return true;
    for (const auto& m : inbox_) {
      if (m.has_cancel()) return true;
    }
    return false;
  }
  void Work() {
    absl::Status s = Run();
    {
      kv::MutexLock l(&svc_->mu_);
      ++(s.ok() ? svc_->counters_.decodes_ok : svc_->counters_.decodes_failed);
    }
    (s.ok() ? svc_->metrics_->decode_ok : svc_->metrics_->decode_failed)->Inc();
    if (!s.ok()) log::Info("decode_failed", "error", s.ToString());
    svc_->in_flight_.fetch_sub(1);
    Close(s);
  }
  absl::Status Run();
  // Local prefill: loads the cached run DecodeStart names (pinned by the router) into `seq`,
  // verified, up to `usable` blocks and the last page a sequence can continue from. Returns
  // the blocks loaded (0 on any trouble: the prompt is then computed) and adds their page
  // bytes to *bytes_loaded.
  int64_t LoadCached(const pb::DecodeStart& st, std::span<const BlockKey> keys, int64_t usable,
                     model::ServingSequence* seq, uint64_t* bytes_loaded);

  WorkerService* const svc_;
  const std::string authorization_;
  absl::Time deadline_;
  absl::StatusOr<std::string> tenant_;
  pb::DecodeClientMessage in_;  // the read in flight
  kv::Mutex mu_;
  std::deque<pb::DecodeClientMessage> inbox_ ABSL_GUARDED_BY(mu_);
  bool reads_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  WriteQueue<pb::DecodeResponse> out_;
};

absl::Status DecodeReactor::Run() {
  WorkerService& w = *svc_;
  ASSIGN_OR_RETURN(pb::DecodeClientMessage first, NextMessage(deadline_));
  if (!first.has_start()) return absl::InvalidArgumentError("Decode must start with DecodeStart");
  const pb::DecodeStart& st = first.start();
  RETURN_IF_ERROR(w.CheckKeySpace(st.key_space()));
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, w.Tokens(st.token_ids()));
  ASSIGN_OR_RETURN(model::SamplingParams sampling, ToSampling(st.sampling()));
  const int64_t n = static_cast<int64_t>(prompt.size());
  const int64_t max_tokens = st.sampling().max_new_tokens();
  if (max_tokens <= 0) return absl::InvalidArgumentError("sampling.max_new_tokens must be > 0");
  if (n + max_tokens > w.model_->max_context()) {
    return absl::OutOfRangeError(StrCat("prompt (", n, " tokens) + max_new_tokens (", max_tokens,
                                        ") exceeds the context limit ", w.model_->max_context()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::ServingSequence> kv,
                   w.model_->NewSequence(n + max_tokens));
  const int64_t pt = w.page_tokens_, bb = w.model_->raw_block_bytes();
  const int64_t nblocks = (n + pt - 1) / pt;

  // The destination, poisoned so that a byte nobody wrote can never pass for KV. A model
  // without raw blocks (V4) offers none: its prompt is computed here.
  auto buffer = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(nblocks * bb), 0xFF);
  std::optional<transport::RegisteredRegion> region;
  if (w.transport_ != nullptr && bb > 0) {
    absl::StatusOr<transport::RegisteredRegion> reg =
        w.transport_->Register(buffer->data(), buffer->size(), transport::MemoryKind::kHost);
    if (reg.ok())
      region = *std::move(reg);
    else
      log::Warn("handoff_register_failed", "error", reg.status().ToString());
  }
  auto release = [&] {
    if (region && !w.transport_->Deregister(region->id).ok()) w.Bury(buffer);
    region.reset();
  };
  {
    pb::DecodeResponse m;
    pb::HandoffReady* ready = m.mutable_ready();
    ready->set_handoff_id(StrCat(w.options_.node_id, "-h", w.next_handoff_.fetch_add(1)));
    if (region) {
      ready->set_transport(pb::TRANSPORT_KIND_UCX);
      ready->set_endpoint(w.transport_->address());
      for (int64_t b = 0; b < nblocks; ++b) {
        pb::RemoteRegion* p = ready->add_pages();
        p->set_transport(pb::TRANSPORT_KIND_UCX);
        p->set_address(reinterpret_cast<uint64_t>(buffer->data()) + static_cast<uint64_t>(b * bb));
        p->set_length(static_cast<uint64_t>(bb));
        p->set_remote_key(region->packed_key);
      }
    }
    Push(std::move(m));
  }
  absl::StatusOr<pb::DecodeClientMessage> msg =
      NextMessage(deadline_);  // the prefill may compute for long: the request's deadline
  if (!msg.ok()) {
    release();
    return msg.status();
  }
  if (msg->has_cancel()) {
    release();
    pb::DecodeResponse m;
    m.mutable_done()->set_finish_reason(pb::FINISH_REASON_CANCELLED);
    Push(std::move(m));
    return absl::OkStatus();
  }
  if (!msg->has_prefill_result()) {
    release();
    return absl::InvalidArgumentError("expected PrefillResult after HandoffReady");
  }
  const pb::PrefillResult& pr = msg->prefill_result();
  // Accept the handed-over KV only if every block's checksum matches what the prefill
  // worker wrote; otherwise compute the prompt here. Never wrong bytes.
  bool imported = false;
  if (pr.kv_tokens() == static_cast<uint32_t>(n) && pr.block_xxh3_size() == nblocks && region) {
    release();  // every transfer into it completed (the prefill worker waited for them)
    bool intact = true;
    for (int64_t b = 0; b < nblocks && intact; ++b) {
      intact = Xxh3_64(buffer->data() + b * bb, static_cast<size_t>(bb)) == pr.block_xxh3(b);
    }
    if (intact) {
      for (int64_t b = 0; b < nblocks; ++b) {
        RETURN_IF_ERROR(kv->AppendRawBlock({buffer->data() + b * bb, static_cast<size_t>(bb)},
                                           std::min(pt, n - b * pt)));
      }
      imported = true;
    }
    kv::MutexLock l(&w.mu_);
    ++(intact ? w.counters_.handoffs_verified : w.counters_.handoffs_rejected);
    (intact ? w.metrics_->handoff_verified : w.metrics_->handoff_rejected)->Inc();
  }
  release();
  ASSIGN_OR_RETURN(std::vector<BlockKey> prompt_keys,
                   DeriveRequestKeys(w.params_, prompt, *tenant_, st.shared_prefix_tokens(),
                                     /*ns=*/nullptr));
  model::Sampler sampler(sampling);
  std::vector<int32_t> out;
  std::vector<float> logits;
  int64_t loaded = 0;
  uint64_t bytes_loaded = 0;
  absl::Duration load_time, compute_time;
  if (imported) {
    out.push_back(static_cast<int32_t>(pr.first_token_id()));
    sampler.Skip(1);  // the prefill worker drew the first token's random number
  } else {
    {
      kv::MutexLock l(&w.mu_);
      ++w.counters_.local_prefills;
    }
    w.metrics_->local_prefill->Inc();
    ASSIGN_OR_RETURN(kv, w.model_->NewSequence(n + max_tokens));
    const absl::Time load_start = absl::Now();
    loaded = LoadCached(st, prompt_keys, (n - 1) / pt, kv.get(), &bytes_loaded);
    if (!kv->can_continue()) {  // a failed import after pages without resume sections
      ASSIGN_OR_RETURN(kv, w.model_->NewSequence(n + max_tokens));
      loaded = 0;
      bytes_loaded = 0;
    }
    load_time = absl::Now() - load_start;
    const absl::Time compute_start = absl::Now();
    const int64_t start_pos = loaded * pt;
    ASSIGN_OR_RETURN(logits, kv->Prefill(std::span<const int32_t>(prompt).subspan(start_pos),
                                         start_pos, w.options_.prefill_chunk));
    compute_time = absl::Now() - compute_start;
    ASSIGN_OR_RETURN(int32_t tok, sampler.Sample(logits));
    out.push_back(tok);
    pb::DecodeResponse m;
    m.mutable_tokens()->add_token_ids(static_cast<uint32_t>(tok));
    m.mutable_tokens()->set_first_index(0);
    Push(std::move(m));
  }
  const absl::Time decode_start = absl::Now();
  pb::FinishReason finish = pb::FINISH_REASON_LENGTH;
  const int32_t eos = static_cast<int32_t>(w.model_->config().eos_token_id);
  std::vector<int32_t> stops(st.sampling().stop_token_ids().begin(),
                             st.sampling().stop_token_ids().end());
  auto stop_after = [&](int32_t tok) {
    if (std::find(stops.begin(), stops.end(), tok) != stops.end()) {
      finish = pb::FINISH_REASON_STOP_TOKEN;
      return true;
    }
    if (!st.sampling().ignore_eos() && eos >= 0 && tok == eos) {
      finish = pb::FINISH_REASON_EOS;
      return true;
    }
    return false;
  };
  bool stopped = stop_after(out.back());
  while (!stopped && static_cast<int64_t>(out.size()) < max_tokens) {
    if (StopRequested() || absl::Now() > deadline_) {
      finish = pb::FINISH_REASON_CANCELLED;
      break;
    }
    ASSIGN_OR_RETURN(logits, kv->DecodeStep(out.back()));
    ASSIGN_OR_RETURN(int32_t tok, sampler.Sample(logits));
    pb::DecodeResponse m;
    m.mutable_tokens()->add_token_ids(static_cast<uint32_t>(tok));
    m.mutable_tokens()->set_first_index(static_cast<uint32_t>(out.size()));
    Push(std::move(m));
    out.push_back(tok);
    stopped = stop_after(tok);
  }
  const absl::Duration decode_time = absl::Now() - decode_start;
  // End of turn: publish the conversation's full pages that the pool does not hold yet.
  int64_t published = 0;
  if (!st.skip_publish() && w.pool_ != nullptr) {
    // The last sampled token has no KV yet; compute it when it completes a page.
    if (kv->num_tokens() + 1 == n + static_cast<int64_t>(out.size()) &&
        (kv->num_tokens() + 1) % pt == 0) {
      RETURN_IF_ERROR(kv->DecodeStep(out.back()).status());
    }
    std::vector<int32_t> convo(prompt);
    convo.insert(convo.end(), out.begin(), out.end());
    convo.resize(static_cast<size_t>(kv->num_tokens()));
    std::vector<std::string> ns;
    ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                     DeriveRequestKeys(w.params_, convo, *tenant_, st.shared_prefix_tokens(), &ns));
    if (!keys.empty()) {
      absl::StatusOr<PoolPrefix> have = w.pool_->Lookup(keys, authorization_);
      const int64_t from = have.ok() ? have->blocks() : 0;
      const int64_t shared_blocks =
          std::min<int64_t>(static_cast<int64_t>(keys.size()), st.shared_prefix_tokens() / pt);
      const int64_t reuse_blocks = (n - 1) / pt;  // what a repeat of the prompt can load
      std::vector<std::string> blocks;
      std::vector<PageRole> roles;
      for (int64_t b = from; b < static_cast<int64_t>(keys.size()); ++b) {
        // Resume sections (V4) where prefill::Engine keeps them.
        const PageRole role =
            PublishRole(b, shared_blocks, reuse_blocks, static_cast<int64_t>(keys.size()),
                        w.options_.resume_checkpoint_pages);
        ASSIGN_OR_RETURN(std::string bytes,
                         kv->ExportBlock(b, KeepsResumeAtPublish(role), keys[b],
                                         b == 0 ? BlockKey::Zero() : keys[b - 1]));
        blocks.push_back(std::move(bytes));
        roles.push_back(role);
      }
      absl::Duration retention = absl::ZeroDuration();
      if (!st.session_id().empty()) {
        retention = std::min(
            st.has_retention_ttl() ? FromProto(st.retention_ttl()) : w.options_.default_retention,
            w.options_.max_retention);
      }
      published =
          w.Publish(keys, ns, from, blocks, roles, st.session_id(), retention, authorization_);
    }
  }
  {
    kv::MutexLock l(&w.mu_);
    w.counters_.output_tokens += out.size();
    if (!imported) {
      w.counters_.cached_tokens += static_cast<uint64_t>(loaded * pt);
      w.counters_.recomputed_tokens += static_cast<uint64_t>(n - loaded * pt);
    }
  }
  pb::DecodeResponse m;
  pb::DecodeDone* d = m.mutable_done();
  d->set_finish_reason(finish);
  d->set_output_tokens(static_cast<uint32_t>(out.size()));
  SetDuration(decode_time, d->mutable_decode_time());
  d->set_published_pages(static_cast<uint32_t>(published));
  if (!imported) {
    d->set_cached_tokens(static_cast<uint32_t>(loaded * pt));
    d->set_recomputed_tokens(static_cast<uint32_t>(n - loaded * pt));
    SetDuration(load_time, d->mutable_load_time());
    SetDuration(compute_time, d->mutable_compute_time());
    d->set_bytes_loaded(bytes_loaded);
  }
  Push(std::move(m));
  return absl::OkStatus();
}

int64_t DecodeReactor::LoadCached(const pb::DecodeStart& st, std::span<const BlockKey> keys,
                                  int64_t usable, model::ServingSequence* seq,
                                  uint64_t* bytes_loaded) {
  WorkerService& w = *svc_;
  if (w.pool_ == nullptr || st.cached().empty()) return 0;
  const pb::CachedRun& run = st.cached(0);  // the router plans one run, from block 0
  if (run.first_block() != 0) return 0;
  std::vector<BlockKey> want;
  for (const std::string& k : run.keys()) {
    if (k.size() != 32 || static_cast<int64_t>(want.size()) >= usable ||
        want.size() >= keys.size()) {
      break;
    }
    BlockKey key;
    std::memcpy(key.bytes.data(), k.data(), 32);
    if (key != keys[want.size()]) break;  // not this request's chain: ignore
    want.push_back(key);
  }
  if (want.empty()) return 0;
  const absl::Time step = std::min(deadline_, absl::Now() + w.options_.handoff_timeout);
  absl::StatusOr<std::vector<std::vector<uint8_t>>> pages =
      w.pool_->Read(run.grpc_address(), want, run.lease_id(), authorization_, step);
  if (!pages.ok()) {
    log::Warn("decode_cache_read_failed", "node", run.node_id(), "error",
              pages.status().ToString());
    return 0;
  }
  uint64_t bytes = 0;  // everything read, also pages past the last resumable one
  for (const auto& p : *pages) bytes += p.size();
  {
    kv::MutexLock l(&w.mu_);
    w.counters_.bytes_loaded += bytes;
  }
  w.metrics_->bytes_loaded->Inc(static_cast<double>(bytes));
  const std::vector<std::span<const uint8_t>> spans(pages->begin(), pages->end());
  absl::StatusOr<int64_t> n = model::ImportResumable(*w.model_, seq, spans, want, BlockKey::Zero());
  if (!n.ok()) return 0;  // the caller sees !seq->can_continue()
  for (int64_t i = 0; i < *n; ++i) *bytes_loaded += (*pages)[i].size();
  return *n;
}

// ---- the service --------------------------------------------------------------------------

WorkerService::WorkerService(const model::ServingModel* model, const model::Transformer* mla,
                             transport::Transport* transport, PagePool* pool, TenantAuth auth,
                             WorkerServiceOptions options)
    : model_(model),
      mla_(mla),
      transport_(transport),
      pool_(pool),
      auth_(std::move(auth)),
      options_(std::move(options)),
      publish_pool_(std::make_unique<ThreadPool>(1)),
      pool_threads_(std::make_unique<ThreadPool>(std::max(1, options_.worker_threads))) {
  params_.model_fingerprint = model->fingerprint();
  params_.layout_id = std::string(model->layout().name);
  params_.page_tokens = model->layout().default_page_tokens;
  page_tokens_ = model->page_tokens();
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
  metrics_->published =
      counter("kvstrata_worker_published_pages_total", "Pages published to the page pool");
  metrics_->handoff_seconds = reg->GetHistogram("kvstrata_worker_prefill_seconds",
                                                "Prefill call duration (load, "
                                                "compute and handoff)",
                                                Histogram::LatencyBounds());
}

WorkerService::~WorkerService() {
  pool_threads_.reset();
  publish_pool_.reset();
}

absl::StatusOr<std::string> WorkerService::Authenticate(grpc::CallbackServerContext* ctx) const {
  return AuthenticateCall(auth_, ctx);
}

absl::Status WorkerService::CheckKeySpace(const pb::KeySpace& ks) const {
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

void WorkerService::Bury(std::shared_ptr<void> memory) {
  kv::MutexLock l(&mu_);
  graveyard_.push_back(std::move(memory));
}

WorkerCounters WorkerService::Counters() {
  kv::MutexLock l(&mu_);
  return counters_;
}

void WorkerService::WaitIdle() { publish_pool_->WaitIdle(); }

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
