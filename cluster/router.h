// RouterBackend: the ServingBackend of `serve --role=router` (DESIGN.md "One request, end to
// end"). Per Generate request:
//   1. derive the prompt's block keys (shared prefix, then the tenant's namespace);
//   2. look the chain up on its home store nodes (cluster/page_pool.h) and let the cost model
//      (prefill/cost_model.h) decide how much of the cached prefix to load;
//   3. pick a decode and a prefill worker from the live membership: prefix locality first (a
//      worker on the host that holds the cached prefix), then load (the router's in-flight
//      count per worker), then a rendezvous tie-break on the chain's root so one
//      conversation keeps landing on the same workers;
//   4. pin the prefix on its home, open Decode on the decode worker (which answers with its
//      handoff destination), run Prefill on the prefill worker (which loads the pinned pages,
//      computes the rest and writes the KV layer by layer into the destination over UCX),
//      stream the first token as soon as PrefillDone arrives, forward PrefillResult, and
//      stream the decode worker's tokens until DecodeDone; unpin.
// A prefill worker that fails (a dead peer, a transfer past its deadline) is not fatal: the
// router tells the decode worker (PrefillResult with kv_tokens = 0) to compute the prompt
// itself. Every call is bounded by the request's deadline (max_request_time).
// A decode worker that fails is an Unavailable (retryable) error for the request.
//
// Thread-safety: safe for concurrent calls. Does not own membership or pool.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "cluster/membership.h"
#include "cluster/page_pool.h"
#include "cluster/serving_backend.h"
#include "core/mutex.h"
#include "kvstore/block_key.h"
#include "prefill/cost_model.h"
#include "proto/kvstrata/v1/worker.grpc.pb.h"

namespace kv::cluster {

struct RouterOptions {
  KeyParams key_params;     // fingerprint, layout, page tokens of the served model
  uint64_t page_bytes = 0;  // encoded page size (for the cost model)
  int64_t vocab_size = 0;
  int64_t max_context = 0;
  // False for models whose KV is not handed over as raw blocks (V4, v4-fp8-584): no prefill
  // worker is used; the decode worker loads the pinned cached run itself and computes the
  // rest of the prompt.
  bool raw_handoff = true;
  // True when pages may carry resume sections (V4): a cached run is planned only up to its
  // last page that has one.
  bool pages_have_resume = false;
  absl::Duration lease = absl::Seconds(30);
  absl::Duration max_request_time = absl::Minutes(5);
  prefill::CostModelOptions cost;
};

struct RouterCounters {
  uint64_t requests_ok = 0, requests_failed = 0, prefill_fallbacks = 0;
  uint64_t cached_tokens = 0, recomputed_tokens = 0, output_tokens = 0;
  uint64_t bytes_transferred = 0;
};

class RouterBackend final : public ServingBackend {
 public:
  RouterBackend(Membership* membership, PagePool* pool, RouterOptions options);

  absl::StatusOr<prefill::GenerateResult> Generate(const prefill::GenerateRequest& req,
                                                   Route* route) override;
  absl::Status Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                      int64_t shared_prefix_tokens, bool include_keys,
                      const std::string& authorization, kvstrata::v1::LookupResponse* out) override;
  void ListNodes(const ServiceContext& self, const kvstrata::v1::ListNodesRequest& req,
                 kvstrata::v1::ListNodesResponse* out) override;
  void GetStats(const ServiceContext& self, kvstrata::v1::GetStatsResponse* out) override;

  RouterCounters Counters();

 private:
  struct Plan;
  absl::StatusOr<Plan> MakePlan(const prefill::GenerateRequest& req);
  absl::StatusOr<prefill::GenerateResult> Run(const prefill::GenerateRequest& req, Route* route);
  // Feeds the cost model with a served request and fills its tier hits from the plan's
  // prefix for the blocks it loaded; `bytes` is what the worker reported reading for them
  // (0: unknown, the configured page size is used).
  void AccountLoad(const Plan& plan, prefill::RequestStats* st, uint64_t bytes);
  // The live member with `role` best for a chain rooted at `root` near `near_address`.
  absl::StatusOr<kvstrata::v1::NodeInfo> Pick(kvstrata::v1::Role role, const BlockKey& root,
                                              const std::string& near_address);
  std::unique_ptr<kvstrata::v1::Worker::Stub> WorkerStub(const std::string& address);

  Membership* const membership_;
  PagePool* const pool_;
  const RouterOptions options_;
  prefill::CostModel cost_;
  kv::Mutex mu_;
  std::map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);  // per worker node id
  RouterCounters counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv::cluster
