// RoleServer: one running node of a distributed kvstrata cluster, for `kvstrata serve
// --role=router|prefill|decode|store` (DESIGN.md "Cluster"; `--role=all` is EmbeddedServer):
//
//   store    a TieredStore (host slab in RAM + nvme tier in RocksDB under DATA_DIR; the
//            device tier is off unless asked for) behind the PageStore service;
//   prefill  the model and the Worker service's Prefill, a UCX transport for the handoff,
//            and the page pool (to load cached pages and publish new ones);
//   decode   the model and the Worker service's Decode, UCX, the page pool;
//   router   the Cluster service over RouterBackend (cluster/router.h): the only entry point
//            for clients.
// Every node serves gRPC health and reflection on its listen address and Prometheus metrics
// over HTTP, registers itself in the membership (static list, or etcd leases with
// --etcd), and reads the membership to find its peers. Every role of one cluster must be
// started with the same model (same --model-dir, or none and the same seed), KV layout and
// tokens file.
//
// Thread-safety: Start() once; Shutdown() is idempotent, bounded, and run by the destructor.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/membership_config.h"
#include "cluster/node.h"
#include "kvstore/kv_events.h"

namespace kv::cluster {

struct RoleServerOptions {
  std::string role;  // router | prefill | decode | store
  std::string listen = "127.0.0.1:7070";
  // host:port others reach this node at (registered in the membership); empty: the bound
  // listen address (a wildcard host becomes 127.0.0.1).
  std::string advertise;
  std::string node_id;          // empty: the advertised address
  int64_t metrics_port = 9090;  // 0 any, -1 off
  NodeOptions node;             // model, data dir, layout, tier sizes
  std::string tokens_file;
  // The node credential every node of the cluster shares (cluster/tenants.h): a file whose
  // first line is the service token. Required with a tokens file (the nodes call each other
  // for tenants); without one, calls between nodes need no credential.
  std::string service_token_file;
  int worker_threads = 2;
  MembershipConfig membership;
  int replication = 1;
  // prefill/decode: MiB of host memory caching pool pages in front of the pool
  // (kv::CachingPagePool); 0: every load reads the homes.
  int64_t local_cache_mib = 256;
  absl::Duration shutdown_grace = absl::Seconds(5);
  // store: Shutdown() then writes RAM-only pages to nvme for at most this long
  // (cluster/node.h FlushStoreForShutdown).
  absl::Duration shutdown_flush = kShutdownFlushBudget;
  absl::Duration handoff_timeout = absl::Seconds(30);
  // store: publish KV events in vLLM's wire format (kvstore/kv_events.h); unset: off. On
  // start the publisher sends AllBlocksCleared, then BlockStored for every page recovered
  // from the nvme tier, so a subscriber that replays from the start converges.
  std::optional<KvEventsOptions> kv_events;
};

// Checks options without side effects. InvalidArgument naming the option.
absl::Status ValidateRoleServerOptions(const RoleServerOptions& options);

class RoleServer {
 public:
  static absl::StatusOr<std::unique_ptr<RoleServer>> Start(RoleServerOptions options);
  ~RoleServer();

  const std::string& address() const;  // bound gRPC address
  const std::string& advertised() const { return advertised_; }
  int metrics_port() const;
  void Shutdown();

  // The server's parts (opaque; the role set-up in role_server.cc fills them).
  struct State;

 private:
  RoleServer();
  std::unique_ptr<State> s_;
  std::string advertised_;
};

}  // namespace kv::cluster
