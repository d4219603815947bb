// ClusterService: the kvstrata.v1.Cluster gRPC service (proto/kvstrata/v1/cluster.proto) on
// gRPC's callback API, over a ServingBackend (cluster/serving_backend.h): the router over this
// process's workers and store in `serve --role=all`, over other processes in `--role=router`.
//
//   - Generate: a ServerWriteReactor. The request is authenticated (cluster/tenants.h), then
//     queued on the service's worker pool, which runs the backend's Generate and streams one
//     `accepted` event (with the cost model's plan), one `tokens` event per generated token
//     and a final `done` event carrying the request's stats. Writes are issued one at a time
//     from a queue, so a slow client never blocks generation of other requests for long.
//     Client cancellation, the client's deadline and the server's `max_request_time` stop
//     generation at the next token (CANCELLED / DEADLINE_EXCEEDED). A full queue is
//     RESOURCE_EXHAUSTED (retryable).
//   - Lookup, ListNodes, GetStats: ServerUnaryReactors answered inline (no model work).
// Every call needs a tenant: UNAUTHENTICATED when the tokens file rejects the caller. Errors
// are absl statuses mapped 1:1 to gRPC codes (cluster/grpc_status.h).
//
// Thread-safety: gRPC calls the handlers concurrently; the service is safe for that. The
// service does not own the backend (which must outlive it). Destroy the service only after
// the gRPC server serving it has shut down; the destructor drains the worker pool.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "cluster/request.h"
#include "cluster/serving_backend.h"
#include "cluster/tenants.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "proto/kvstrata/v1/cluster.grpc.pb.h"

namespace kv::cluster {

struct ClusterServiceOptions {
  std::string node_id = "node-0";
  std::string model_name = "tiny-v3";  // GenerateRequest.model may be empty or this
  absl::Duration max_request_time = absl::Minutes(5);
  int worker_threads = 2;  // Generate requests run concurrently (each has its own KvCache)
  int max_queued = 64;     // Generate requests waiting or running; more: RESOURCE_EXHAUSTED
  std::string version = "0.1.0";
  MetricsRegistry* metrics = nullptr;  // nullptr: the default registry
  Clock* clock = nullptr;              // request deadlines and timings; nullptr: Clock::Real()
};

class ClusterService final : public kvstrata::v1::Cluster::CallbackService {
 public:
  ClusterService(ServingBackend* backend, TenantAuth auth, ClusterServiceOptions options);
  ~ClusterService() override;

  // The address ListNodes advertises (known once the server has bound its port).
  void SetAdvertisedAddress(std::string address);

  grpc::ServerWriteReactor<kvstrata::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const kvstrata::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx,
                                   const kvstrata::v1::LookupRequest* request,
                                   kvstrata::v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* ctx,
                                      const kvstrata::v1::ListNodesRequest* request,
                                      kvstrata::v1::ListNodesResponse* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx,
                                     const kvstrata::v1::GetStatsRequest* request,
                                     kvstrata::v1::GetStatsResponse* response) override;

 private:
  Clock* clock() const { return options_.clock != nullptr ? options_.clock : Clock::Real(); }
  friend class GenerateReactor;
  absl::StatusOr<std::string> Authenticate(grpc::CallbackServerContext* ctx) const;
  // Builds the serving request (everything except callbacks). Errors name the field.
  absl::StatusOr<GenerateRequest> ToServingRequest(const kvstrata::v1::GenerateRequest& r,
                                                   const std::string& tenant) const;
  absl::StatusOr<std::vector<int32_t>> PromptTokens(const kvstrata::v1::Prompt& p) const;
  ServiceContext Context();

  ServingBackend* const backend_;
  const TenantAuth auth_;
  const ClusterServiceOptions options_;
  const absl::Time started_;
  Histogram* ttft_;
  std::atomic<int> in_flight_{0};
  std::atomic<uint64_t> next_request_{1};
  kv::Mutex mu_;
  std::string address_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ThreadPool> threads_;  // last: joined first
};

}  // namespace kv::cluster
