// WorkerService: the kvstrata.v1.Worker gRPC service (proto/kvstrata/v1/worker.proto) of the
// `prefill` and `decode` roles, on gRPC's callback API. A thin adapter: authentication,
// admission, conversion between messages and the libraries' values, and streaming. The work is
// prefill::PrefillWorker (Prefill) and decode::DecodeSession (Decode), the same libraries the
// embedded `--role=all` server runs in-process.
//
//   Prefill (server streaming): PrefillRequest -> PrefillWorker::Run, progress per layer of
//     the last chunk, then PrefillDone (one XXH3-64 per destination slot).
//   Decode (bidirectional): DecodeStart -> DecodeSession::Start (HandoffReady with the
//     destination's slots), PrefillResult or DecodeCancel -> OnPrefillResult / Cancel, then
//     DecodeSession::Run streaming tokens, then DecodeDone.
//
// The Worker service is node-internal: every call needs the node credential (cluster/tenants.h:
// the cluster's service token, and the tenant it acts for in `x-kvstrata-tenant`, which the
// router took from the end user's token); a tenant token is PERMISSION_DENIED. The worker's
// page pool calls act for the same tenant with the node credential.
// The whole call is bounded by the request's deadline (the gRPC deadline, at most
// `max_request_time`); each wait on another process by `handoff_timeout`.
//
// Thread-safety: gRPC calls the handlers concurrently; each request runs on the service's
// pool. Not owned: model, transport, pool, clock — they must outlive the service. Destroy the
// service only after its gRPC server has shut down.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "cluster/page_pool.h"
#include "cluster/tenants.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "decode/decode_session.h"
#include "kvstore/block_key.h"
#include "model/serving_model.h"
#include "prefill/prefill_worker.h"
#include "proto/kvstrata/v1/worker.grpc.pb.h"
#include "transport/handoff.h"
#include "transport/transport.h"

namespace kv::cluster {

struct WorkerServiceOptions {
  std::string node_id = "worker";
  bool prefill = true;  // serves Prefill (else FAILED_PRECONDITION)
  bool decode = true;   // serves Decode
  int worker_threads = 2;
  int max_queued = 64;
  int64_t prefill_chunk = 256;
  // V4 pages: a resume section every Nth page of a chain (kvstore/resume_policy.h PublishRole).
  int64_t resume_checkpoint_pages = 4;
  absl::Duration handoff_timeout = absl::Seconds(30);
  absl::Duration max_request_time = absl::Minutes(5);
  absl::Duration max_retention = absl::Hours(24);
  absl::Duration default_retention = absl::Minutes(10);
  MetricsRegistry* metrics = nullptr;  // nullptr: the default registry
  Clock* clock = nullptr;              // nullptr: Clock::Real()
};

struct WorkerCounters {
  uint64_t prefills_ok = 0, prefills_failed = 0, decodes_ok = 0, decodes_failed = 0;
  uint64_t handoffs_verified = 0, handoffs_rejected = 0, local_prefills = 0;
  uint64_t cached_tokens = 0, recomputed_tokens = 0, output_tokens = 0;
  uint64_t bytes_sent = 0, bytes_loaded = 0;
  // Pages the pool stored from this worker (decode end-of-turn pages and prefill write-back),
  // and prefill write-back pages it did not take.
  uint64_t published_pages = 0, write_back_failed_pages = 0;
};

class WorkerService final : public kvstrata::v1::Worker::CallbackService {
 public:
  // `model` is what the worker serves (model/serving_model.h). `transport` may be null for a
  // decode worker that always computes prompts itself (then Prefill answers
  // FAILED_PRECONDITION); with one, `graveyard` keeps quarantined memory and must outlive the
  // transport (transport/handoff.h). `pool` may be null (no cache loads, no publishing).
  WorkerService(const model::ServingModel* model, transport::Transport* transport,
                transport::RegionGraveyard* graveyard, PagePool* pool, TenantAuth auth,
                WorkerServiceOptions options);
  ~WorkerService() override;

  grpc::ServerWriteReactor<kvstrata::v1::PrefillResponse>* Prefill(
      grpc::CallbackServerContext* ctx, const kvstrata::v1::PrefillRequest* request) override;
  grpc::ServerBidiReactor<kvstrata::v1::DecodeClientMessage, kvstrata::v1::DecodeResponse>* Decode(
      grpc::CallbackServerContext* ctx) override;
  // Requests served and failed, tokens cached / computed / generated, KV bytes handed off
  // (TRANSPORT_KIND_UCX), uptime.
  grpc::ServerUnaryReactor* GetNodeStats(grpc::CallbackServerContext* ctx,
                                         const kvstrata::v1::GetNodeStatsRequest* request,
                                         kvstrata::v1::NodeStats* response) override;

  const KeyParams& key_params() const { return params_; }
  int active_requests() const { return in_flight_.load(); }
  WorkerCounters Counters();
  // Blocks until queued publishes are done.
  void WaitIdle();

 private:
  Clock* clock() const { return options_.clock != nullptr ? options_.clock : Clock::Real(); }
  friend class PrefillReactor;
  friend class DecodeReactor;
  struct Metrics;

  absl::StatusOr<std::string> Authenticate(grpc::CallbackServerContext* ctx) const;
  absl::Status CheckKeySpace(const kvstrata::v1::KeySpace& ks) const;
  absl::StatusOr<std::vector<int32_t>> Tokens(
      const google::protobuf::RepeatedField<uint32_t>& ids) const;
  // The retention hint of a request's pages: none without a session, else its TTL (or the
  // default) capped at max_retention.
  absl::Duration Retention(const std::string& session_id, bool has_ttl,
                           const google::protobuf::Duration& ttl) const;
  // Admission of a call: the caller's authentication, the role, the queue bound (counts the
  // call in in_flight_ on success).
  absl::Status Admit(const absl::Status& auth, bool has_role, std::string_view role);
  void CountPrefill(const absl::StatusOr<prefill::PrefillDone>& done);
  void CountDecode(const absl::StatusOr<decode::DecodeOutcome>& out);
  // The prefill write-back's outcome (PrefillContext::on_write_back, write-back thread).
  void CountWriteBack(int64_t stored, int64_t not_stored) ABSL_LOCKS_EXCLUDED(mu_);

  const model::ServingModel* const model_;
  transport::Transport* const transport_;
  PagePool* const pool_;
  const TenantAuth auth_;
  const WorkerServiceOptions options_;
  KeyParams params_;
  int page_tokens_ = 0;
  std::unique_ptr<Metrics> metrics_;
  std::atomic<int> in_flight_{0};
  std::atomic<uint64_t> next_request_{1};
  const absl::Time started_ = absl::Now();
  kv::Mutex mu_;
  WorkerCounters counters_ ABSL_GUARDED_BY(mu_);
  prefill::PrefillContext prefill_ctx_;
  decode::DecodeContext decode_ctx_;
  std::unique_ptr<prefill::PrefillWorker> prefill_;  // null without a transport
  std::unique_ptr<ThreadPool> threads_;              // last: joined first
};

}  // namespace kv::cluster
