// ServingBackend: what the kvstrata.v1.Cluster service (cluster/cluster_service.h) serves
// requests with. The service does authentication, queueing, streaming, deadlines and
// cancellation; the backend does the work:
//   - RouterBackend (cluster/router.h), in both modes: `serve --role=router` places each
//     request on prefill and decode workers and the page pool of other processes; the
//     embedded `serve --role=all` node (cluster/embedded_cluster.h) runs the same router over
//     its own workers and store, in-process.
//
// Thread-safety: implementations are safe for concurrent calls. The service does not own
// its backend; the backend must outlive the service.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/request.h"
#include "proto/kvstrata/v1/cluster.pb.h"

namespace kv::cluster {

// Where a request runs; filled by Generate before it calls the request's on_plan.
struct Route {
  std::string prefill_node_id;  // empty: no prefill worker (everything cached or local)
  std::string decode_node_id;
};

// What the service knows about itself, for node records.
struct ServiceContext {
  std::string node_id;
  std::string address;  // advertised gRPC address
  std::string version;
  int active_requests = 0;
};

class ServingBackend {
 public:
  virtual ~ServingBackend() = default;

  // Serves one request, blocking: InvalidArgument/OutOfRange for a bad request (named), on_plan
  // once, on_token per token (returning false cancels). Placement and worker failures are
  // Unavailable (retryable).
  virtual absl::StatusOr<GenerateResult> Generate(const GenerateRequest& req, Route* route) = 0;
  // The longest cached prefix of the prompt and the cost model's plan, as a LookupResponse.
  virtual absl::Status Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                              int64_t shared_prefix_tokens, bool include_keys,
                              kvstrata::v1::LookupResponse* out) = 0;
  // The nodes of the cluster as this backend knows them.
  virtual void ListNodes(const ServiceContext& self, const kvstrata::v1::ListNodesRequest& req,
                         kvstrata::v1::ListNodesResponse* out) = 0;
  // Counters and tier statistics of this node into `out->self` and the hit rate; the
  // service adds TTFT quantiles and uptime.
  virtual void GetStats(const ServiceContext& self, kvstrata::v1::GetStatsResponse* out) = 0;
  // GetStats(all_nodes): the stats of every other live node into `out->nodes`, sorted by
  // node id, each by `deadline`; a node that cannot answer is listed with its error. Blocks
  // (the service calls it off the gRPC threads). A backend whose only node is itself (the
  // embedded cluster) adds nothing.
  // The calls act for `tenant` (the caller of GetStats) with the node credential.
  virtual void CollectNodeStats(const ServiceContext& self, const std::string& tenant,
                                absl::Time deadline, kvstrata::v1::GetStatsResponse* out) {}
};

}  // namespace kv::cluster
