// RouterBackend: the ServingBackend (cluster/serving_backend.h) of both serving modes
// (DESIGN.md "One request, end to end"). Per Generate request:
//   1. validate it and derive the prompt's block keys (shared prefix, then the tenant's
//      namespace);
//   2. look the chain up in the page pool (kvstore/page_pool.h) and let the cost model
//      (cluster/cost_model.h) decide how much of the cached prefix to load;
//   3. pick a decode and a prefill worker from the live membership: prefix locality first (a
//      worker on the host that holds the cached prefix), then load (the router's in-flight
//      count per worker), then a rendezvous tie-break on the chain's root so one
//      conversation keeps landing on the same workers;
//   4. pin the prefix on its home, start the decode session (which answers with its handoff
//      destination), run the prefill on the prefill worker (which loads the pinned pages,
//      computes the rest of the prompt but its last token and writes the KV layer by layer
//      into the destination), forward its result to the decode session, and stream the
//      decode session's tokens until the turn ends; unpin.
// Workers are reached through WorkerClient (cluster/worker_client.h): the gRPC Worker service
// of other processes (`serve --role=router`), or this process's libraries over the in-process
// transport (`serve --role=all`, cluster/embedded_cluster.h): one code path for both.
//
// A prefill worker that fails (a dead peer, a transfer past its deadline) is not fatal: the
// decode session then computes the prompt itself from the pinned cached run. Every call is
// bounded by the request's deadline (max_request_time). A decode worker that fails is an
// Unavailable (retryable) error for the request.
//
// Thread-safety: safe for concurrent calls. Does not own membership, pool or local store.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "cluster/cost_model.h"
#include "cluster/membership.h"
#include "cluster/serving_backend.h"
#include "cluster/worker_client.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "kvstore/block_key.h"
#include "kvstore/page_pool.h"
#include "kvstore/tiered_store.h"

namespace kv::cluster {

// The client of a worker node picked from the membership.
using WorkerClientFactory =
    std::function<std::shared_ptr<WorkerClient>(const kvstrata::v1::NodeInfo& node)>;

// gRPC clients of the members' Worker services, one cached channel per address, calling with
// the node credential `service_token` (cluster/tenants.h; empty: none); call deadlines are
// read on `clock` (not owned; null: Clock::Real()).
WorkerClientFactory GrpcWorkerClients(KeyParams key_params, std::string service_token,
                                      Clock* clock = nullptr);

struct RouterOptions {
  KeyParams key_params;     // fingerprint, layout, page tokens of the served model
  uint64_t page_bytes = 0;  // encoded page size (for the cost model)
  int64_t vocab_size = 0;
  int64_t max_context = 0;
  // True when the model's prompts can be handed from a prefill worker to a decode worker
  // (model::ServingModel::handoff_layout); false: the decode worker loads the pinned cached
  // run itself and computes the rest of the prompt.
  bool prefill_handoff = true;
  // True when pages may carry resume sections (V4): a cached run is planned only up to its
  // last page that has one.
  bool pages_have_resume = false;
  absl::Duration lease = absl::Seconds(30);
  absl::Duration max_request_time = absl::Minutes(5);
  absl::Duration default_retention = absl::Minutes(10);  // session retention when unset
  absl::Duration max_retention = absl::Hours(24);
  // A worker that fails to start a call (UNAVAILABLE: not reachable, died) is marked down
  // this long: placement prefers every other live worker over it until then, and the
  // failed request is retried on another decode worker at once instead of failing until the
  // membership lease of the dead node expires.
  absl::Duration down_after_failure = absl::Seconds(10);
  CostModelOptions cost;
  // The embedded node's own store (null for a router process): ListNodes and GetStats report
  // its tiers.
  TieredStore* local_store = nullptr;
  std::string local_node_id;  // the embedded node's id in the membership
  Clock* clock = nullptr;     // null: Clock::Real()
  // GetStats(all_nodes): asks one member for its NodeStats (its PageStore or Worker service's
  // GetNodeStats) with the node credential acting for `tenant`, by the deadline; null: members are
  // listed with an error saying their stats are not collected.
  std::function<absl::StatusOr<kvstrata::v1::NodeStats>(
      const kvstrata::v1::NodeInfo& node, const std::string& tenant, absl::Time deadline)>
      node_stats;
  // Where the kvstrata_cluster_* request metrics go (requests by code, tokens by tier,
  // handoff bytes and time, worker failures); null: the default registry.
  MetricsRegistry* metrics = nullptr;
};

struct RouterCounters {
  uint64_t requests_ok = 0, requests_failed = 0, prefill_fallbacks = 0;
  uint64_t cached_tokens = 0, recomputed_tokens = 0, output_tokens = 0;
  uint64_t bytes_transferred = 0;
  // Calls a decode or prefill worker failed with UNAVAILABLE (each marks the worker down).
  uint64_t decode_failures = 0, prefill_failures = 0;
};

class RouterBackend final : public ServingBackend {
 public:
  RouterBackend(Membership* membership, PagePool* pool, WorkerClientFactory workers,
                RouterOptions options);

  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& req, Route* route) override;
  absl::Status Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                      int64_t shared_prefix_tokens, bool include_keys,
                      kvstrata::v1::LookupResponse* out) override;
  void ListNodes(const ServiceContext& self, const kvstrata::v1::ListNodesRequest& req,
                 kvstrata::v1::ListNodesResponse* out) override;
  void GetStats(const ServiceContext& self, kvstrata::v1::GetStatsResponse* out) override;
  void CollectNodeStats(const ServiceContext& self, const std::string& tenant, absl::Time deadline,
                        kvstrata::v1::GetStatsResponse* out) override;

  RouterCounters Counters();
  CostModel& cost_model() { return cost_; }

 private:
  struct Plan;
  struct Placement;
  struct Started;
  // `lookup`: the request is a Lookup (no tokens to generate; only the prompt must fit).
  absl::Status Validate(const GenerateRequest& req, bool lookup = false) const;
  absl::StatusOr<Plan> MakePlan(const GenerateRequest& req, bool lookup = false);
  absl::StatusOr<GenerateResult> Run(const GenerateRequest& req, Route* route);
  // Picks the decode and (when the model hands prompts over) the prefill worker; notes in
  // the plan's reason when no prefill worker is live.
  // Workers in `failed` (this request's failures) are not picked.
  absl::StatusOr<Placement> Place(Plan& plan, Route* route,
                                  const std::set<std::string>& failed = {});
  // Starts the request's decode session on `first`'s decode worker, or on another (placed
  // again) when one fails to start with UNAVAILABLE (it is marked down). UNAVAILABLE naming the
  // last failure when no other live decode worker is left.
  absl::StatusOr<Started> StartDecode(Plan& plan, Placement first,
                                      const decode::DecodeRequest& dreq, absl::Time deadline,
                                      Route* route);
  // Marks `node_id` down for options_.down_after_failure after `error` (logged, counted).
  void MarkDown(const std::string& node_id, kvstrata::v1::Role role, const absl::Status& error);
  // The decode session's request for `req`, loading `run` (the pinned prefix) if any.
  decode::DecodeRequest DecodeRequestOf(const GenerateRequest& req,
                                        const std::optional<CachedRun>& run,
                                        absl::Time start) const;
  // Pins the blocks the plan loads on their home; none when nothing is loaded or the pin
  // failed (logged: the workers then compute those blocks).
  std::optional<CachedRun> PinPrefix(const GenerateRequest& req, const Plan& plan);
  // Runs the prefill into `dest`; Unavailable without a prefill worker or destination.
  // A failure is counted as a prefill fallback.
  absl::StatusOr<prefill::PrefillDone> RunPrefill(const decode::DecodeRequest& dreq,
                                                  const Placement& place,
                                                  const transport::HandoffDestination& dest,
                                                  absl::Time deadline);
  // The request's load, prefill and transfer figures from whoever computed the prompt.
  void FillStats(const Plan& plan, const absl::StatusOr<prefill::PrefillDone>& done,
                 const decode::DecodeOutcome& turn, RequestStats* st);
  // Streams the decode session's tokens into `out` until the turn ends.
  absl::Status Stream(const GenerateRequest& req, DecodeCall& call, absl::Time start,
                      GenerateResult* out, decode::DecodeOutcome* done);
  // Feeds the cost model with a served request and fills its tier hits from the plan's
  // prefix for the blocks it loaded; `bytes` is what the worker reported reading for them
  // (0: unknown, the configured page size is used).
  void AccountLoad(const Plan& plan, RequestStats* st, uint64_t bytes);
  // The live member with `role` best for a chain rooted at `root` near `near_address`, not in
  // `failed`; members marked down come last.
  absl::StatusOr<kvstrata::v1::NodeInfo> Pick(kvstrata::v1::Role role, const BlockKey& root,
                                              const std::string& near_address,
                                              const std::set<std::string>& failed = {});
  void FillTiers(kvstrata::v1::NodeInfo* node);
  Clock* clock() const { return options_.clock != nullptr ? options_.clock : Clock::Real(); }

  Membership* const membership_;
  PagePool* const pool_;
  const WorkerClientFactory workers_;
  const RouterOptions options_;
  CostModel cost_;
  kv::Mutex mu_;
  std::map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);  // per worker node id
  RouterCounters counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Time> down_until_ ABSL_GUARDED_BY(mu_);  // per worker node id
  // The request metrics (see RouterOptions::metrics). Owned by the registry.
  void Record(const absl::StatusOr<GenerateResult>& r);
  MetricsRegistry* const reg_;
  Histogram* const handoff_seconds_;
  Counter* const handoff_bytes_;
};

}  // namespace kv::cluster
