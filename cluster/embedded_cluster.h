// EmbeddedCluster: everything `kvstrata serve --role=all` runs in one process, minus gRPC: the
// model and the tiered store of cluster/node.h, the page pool over that store
// (kvstore/local_page_pool.h), a prefill worker and a decode context (the prefill/ and
// decode/ libraries) wired over the in-process transport, and the router (cluster/router.h)
// that places requests on them through InProcWorkerClient. The distributed roles run the very
// same router, worker libraries and turn loop; only the WorkerClient and the PagePool differ.
//
// Thread-safety: Open() once; Generate/Lookup and the accessors are safe from any thread.
// The cluster owns all of it; references it returns live as long as it. Destruction order: the
// router, the workers (their write-back drains), the transports, the pool, the store, then
// the model.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/membership.h"
#include "cluster/node.h"
#include "cluster/request.h"
#include "cluster/router.h"
#include "cluster/worker_client.h"
#include "core/thread_pool.h"
#include "decode/decode_session.h"
#include "kvstore/local_page_pool.h"
#include "kvstore/tiered_store.h"
#include "model/serving_model.h"
#include "prefill/prefill_worker.h"
#include "transport/handoff.h"
#include "transport/inproc_transport.h"

namespace kv::cluster {

struct EmbeddedClusterOptions {
  NodeOptions node;
  std::string node_id = "local";
  std::string address;     // the node's gRPC address, for its membership record (may be empty)
  int decode_threads = 4;  // turns decoding at once
  int64_t prefill_chunk = 256;
  int64_t resume_checkpoint_pages = 4;
  absl::Duration lease = absl::Seconds(30);
  absl::Duration default_retention = absl::Minutes(10);
  absl::Duration max_retention = absl::Hours(24);
  absl::Duration max_request_time = absl::Minutes(5);
  CostModelOptions cost;
};

class EmbeddedCluster {
 public:
  // Creates the model if needed, loads it, opens the tiers and the store (recovering the nvme
  // tier's sealed pages), and wires workers and router. Errors name the failing part.
  static absl::StatusOr<std::unique_ptr<EmbeddedCluster>> Open(EmbeddedClusterOptions options);
  ~EmbeddedCluster();

  // RouterBackend::Generate.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& req);
  // Blocks until queued page write-backs are published and the store's write-backs to its
  // lower tiers (which pin the pages they copy) have finished.
  void WaitIdle();

  RouterBackend& router() { return *router_; }
  TieredStore& store() { return *store_; }
  const model::ServingModel& model() const { return *model_.serving; }
  // The runtime underneath: exactly one of them is set.
  const model::Transformer* transformer() const { return model_.mla.get(); }
  const model::V4Model* v4_model() const { return model_.v4.get(); }
  const std::string& model_dir() const { return model_dir_; }
  const EmbeddedClusterOptions& options() const { return options_; }

 private:
  EmbeddedCluster() = default;

  EmbeddedClusterOptions options_;
  std::string model_dir_;
  model::LoadedModel model_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<LocalPagePool> pool_;
  transport::RegionGraveyard graveyard_;  // outlives the transports
  std::unique_ptr<transport::InProcFabric> fabric_;
  std::unique_ptr<transport::InProcTransport> prefill_transport_, decode_transport_;
  prefill::PrefillContext prefill_ctx_;
  decode::DecodeContext decode_ctx_;
  std::unique_ptr<prefill::PrefillWorker> prefill_;
  std::unique_ptr<ThreadPool> decode_threads_;
  std::shared_ptr<WorkerClient> workers_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<RouterBackend> router_;
};

}  // namespace kv::cluster
