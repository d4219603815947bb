// EmbeddedServer: a running `kvstrata serve --role=all` in this process: the EmbeddedCluster
// (model, tiered store, prefill worker and decode sessions over the in-process transport, and
// the router over them; cluster/embedded_cluster.h), the Cluster service and the PageStore
// service over the same tiered store on one GrpcServer (with health and reflection), and the
// metrics HTTP server (/metrics, /healthz). The PageStore serves pages over gRPC only (no
// registered UCX memory: a store role node is the fabric-speed path), so clients and engine
// connectors can use an all-in-one node as their store.
// `kvstrata serve` runs one until a signal; `kvstrata demo` and tests start one on a free
// loopback port.
//
// Tenants: with `tokens_file` set, every call needs a bearer token from it
// (cluster/tenants.h); empty, every call is the built-in tenant "default". Who may call what
// is docs/serving.md "Security model".
//
// Thread-safety: Start() once; accessors are safe from any thread. Shutdown() is
// idempotent, bounded (grpc shutdown grace, then cancellation) and run by the destructor.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/cluster_service.h"
#include "cluster/embedded_cluster.h"
#include "cluster/grpc_server.h"
#include "cluster/node.h"
#include "cluster/page_store_service.h"
#include "core/http_server.h"

namespace kv::cluster {

struct EmbeddedServerOptions {
  NodeOptions node;
  // Worker and router options of the embedded cluster (its node, node_id and
  // max_request_time come from the fields here).
  EmbeddedClusterOptions cluster;
  std::string listen = "127.0.0.1:7070";
  // Metrics HTTP port on the listen host; 0 picks a free port; -1 disables it.
  int64_t metrics_port = 9090;
  std::string tokens_file;  // empty: single built-in tenant "default"
  // The node credential (cluster/tenants.h), accepted by the PageStore service (shared-namespace
  // writes need it). Empty: none; with a tokens file, shared writes over the port are then
  // refused to everyone (the embedded cluster publishes in-process).
  std::string service_token_file;
  std::string node_id;  // empty: "local"
  int worker_threads = 2;
  absl::Duration shutdown_grace = absl::Seconds(5);
  // Shutdown() then writes the store's RAM-only pages to nvme for at most this long
  // (cluster/node.h FlushStoreForShutdown; docs/serving.md "Durability").
  absl::Duration shutdown_flush = kShutdownFlushBudget;
  absl::Duration max_request_time = absl::Minutes(5);
};

// Checks options without side effects (node options, listen address shape, tokens file
// parses, ports in range). InvalidArgument / NotFound naming the option.
absl::Status ValidateEmbeddedServerOptions(const EmbeddedServerOptions& options);

class EmbeddedServer {
 public:
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(EmbeddedServerOptions options);
  ~EmbeddedServer();

  const std::string& address() const { return grpc_->address(); }
  int metrics_port() const { return metrics_ ? metrics_->port() : -1; }
  EmbeddedCluster& cluster() { return *cluster_; }
  bool requires_token() const { return requires_token_; }
  void Shutdown();

 private:
  EmbeddedServer() = default;
  std::unique_ptr<EmbeddedCluster> cluster_;
  std::unique_ptr<ClusterService> service_;
  std::unique_ptr<PageStoreService> page_store_;  // over cluster_->store()
  std::unique_ptr<GrpcServer> grpc_;
  std::unique_ptr<MetricsHttpServer> metrics_;
  bool requires_token_ = false;
  bool shut_down_ = false;
  absl::Duration shutdown_flush_ = kShutdownFlushBudget;
};

}  // namespace kv::cluster
