// WorkerService: the kvstrata.v1.Worker gRPC service (proto/kvstrata/v1/worker.proto) of the
// `prefill` and `decode` roles, on gRPC's callback API.
//
//   Prefill (server streaming): load the cached runs the router planned from the page pool
//     (PageStore reads, each page verified), compute the rest of the prompt, and write the
//     prompt's KV straight into the decode worker's destination region over the transport
//     (UCX): cached blocks as soon as they are loaded, then each layer of each chunk as soon
//     as the forward has written it (PrefillOptions::on_layer), so transfer overlaps compute.
//     Then sample the first token and answer PrefillDone with the XXH3-64 of every
//     destination block. The prompt's new full pages are published to the pool afterwards,
//     off the critical path.
//   Decode (bidirectional): on DecodeStart, allocate and register the destination (one
//     region, one KvCache block per prompt block, poisoned with 0xFF) and answer
//     HandoffReady; on PrefillResult, verify every block's checksum and import the KV (or,
//     when the handoff failed or was skipped, compute the prompt locally, first loading the
//     cached runs DecodeStart names from the pool: a failed transfer costs time, never
//     correctness); then generate, stream tokens, and at the end of the turn publish the
//     conversation's full pages so the next turn hits all of it.
//   V4 models (v4-fp8-584 pages) have no raw-block handoff: their decode worker always takes
//     the local path (HandoffReady without a destination), loading cached pages up to the
//     last one with a resume section, and publishes pages with resume sections where the
//     policy keeps them (kvstore/resume_policy.h, as prefill::Engine does).
//
// Every call is authenticated with the caller's bearer token (the router forwards the end
// user's); the tenant comes from the token only, and the same token goes on to the stores.
// Every wait is bounded: each step that waits on another process (connecting, one transfer,
// one page-pool read) by `handoff_timeout` from its start, the whole call by the request's
// deadline (the gRPC deadline, at most `max_request_time`).
// Transport regions of a failed transfer stay quarantined (transport/transport.h); their
// memory is kept alive until the transport is destroyed.
//
// Thread-safety: gRPC calls the handlers concurrently; each request runs on the service's
// pool with its own KvCache. Not owned: model, transport, pool — they must outlive the
// service. Destroy the service only after its gRPC server has shut down.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "cluster/page_pool.h"
#include "cluster/tenants.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "kernels/kv_layout.h"
#include "kvstore/block_key.h"
#include "model/serving_model.h"
#include "model/transformer.h"
#include "proto/kvstrata/v1/worker.grpc.pb.h"
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
};

struct WorkerCounters {
  uint64_t prefills_ok = 0, prefills_failed = 0, decodes_ok = 0, decodes_failed = 0;
  uint64_t handoffs_verified = 0, handoffs_rejected = 0, local_prefills = 0;
  uint64_t cached_tokens = 0, recomputed_tokens = 0, output_tokens = 0;
  uint64_t bytes_sent = 0, bytes_loaded = 0, published_pages = 0;
};

class WorkerService final : public kvstrata::v1::Worker::CallbackService {
 public:
  // `model` is what the worker serves (prefill/serving_model.h); `mla` its MLA transformer,
  // which the Prefill call's layer-by-layer handoff needs (null for a V4 model: its decode
  // workers compute prompts themselves, loading cached pages from the pool, and Prefill
  // answers FAILED_PRECONDITION). `transport` may be null for a prefill-only worker that
  // never hands off (then Prefill with a target fails) and for decode workers that always
  // recompute.
  WorkerService(const model::ServingModel* model, const model::Transformer* mla,
                transport::Transport* transport, PagePool* pool, TenantAuth auth,
                WorkerServiceOptions options);
  ~WorkerService() override;

  grpc::ServerWriteReactor<kvstrata::v1::PrefillResponse>* Prefill(
      grpc::CallbackServerContext* ctx, const kvstrata::v1::PrefillRequest* request) override;
  grpc::ServerBidiReactor<kvstrata::v1::DecodeClientMessage, kvstrata::v1::DecodeResponse>* Decode(
      grpc::CallbackServerContext* ctx) override;

  const KeyParams& key_params() const { return params_; }
  int active_requests() const { return in_flight_.load(); }
  WorkerCounters Counters();
  // Blocks until queued publishes are done.
  void WaitIdle();

 private:
  friend class PrefillReactor;
  friend class DecodeReactor;
  struct Metrics;
  struct Handoff;  // a registered destination region

  absl::StatusOr<std::string> Authenticate(grpc::CallbackServerContext* ctx) const;
  absl::Status CheckKeySpace(const kvstrata::v1::KeySpace& ks) const;
  absl::StatusOr<std::vector<int32_t>> Tokens(
      const google::protobuf::RepeatedField<uint32_t>& ids) const;
  // The body of one Prefill call.
  absl::StatusOr<kvstrata::v1::PrefillDone> RunPrefill(
      const kvstrata::v1::PrefillRequest& r, const std::string& tenant,
      const std::string& authorization, absl::Time deadline,
      const std::function<void(const kvstrata::v1::PrefillProgress&)>& progress);
  // Encodes `blocks` (ServingSequence::ExportBlock results of chain blocks from, from + 1,
  // ...) as pages and publishes them to the pool in chain order, each with its resume role
  // (`roles`, parallel to blocks; empty: turn ends); returns pages stored or already present.
  int64_t Publish(std::span<const BlockKey> keys, std::span<const std::string> ns, int64_t from,
                  std::span<const std::string> blocks, std::span<const PageRole> roles,
                  const std::string& session, absl::Duration retention,
                  const std::string& authorization);
  // Admission of a call: the caller's authentication, the role, the queue bound (counts the
  // call in in_flight_ on success).
  absl::Status Admit(const absl::Status& auth, bool has_role, std::string_view role);
  // Keeps memory a transport may still touch alive until the service dies.
  void Bury(std::shared_ptr<void> memory);

  const model::ServingModel* const model_;
  const model::Transformer* const mla_;
  transport::Transport* const transport_;
  PagePool* const pool_;
  const TenantAuth auth_;
  const WorkerServiceOptions options_;
  KeyParams params_;
  int page_tokens_ = 0;
  std::unique_ptr<Metrics> metrics_;
  std::atomic<int> in_flight_{0};
  std::atomic<uint64_t> next_handoff_{1};
  kv::Mutex mu_;
  WorkerCounters counters_ ABSL_GUARDED_BY(mu_);
  std::list<std::shared_ptr<void>> graveyard_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ThreadPool> publish_pool_;
  std::unique_ptr<ThreadPool> pool_threads_;  // last: joined first
};

}  // namespace kv::cluster
