// GrpcServer: the one way kvstrata starts a gRPC server. Every server it builds has
//   - the standard health service (grpc.health.v1.Health, via
//     grpc::EnableDefaultHealthCheckService), reporting SERVING for "" once started;
//   - server reflection (grpc.reflection.v1alpha), so `grpcurl -plaintext HOST:PORT list`
//     and `describe` work (with mTLS: `grpcurl -cacert CA -cert CRT -key KEY`);
//   - the caller's services, registered before start.
// It binds the given address ("127.0.0.1:0" picks a free loopback port), reports the port
// actually bound, and shuts down with a bounded deadline: in-flight calls get `shutdown_grace`
// to finish, then are cancelled.
//
// Transport security: the server listens with the credentials of `options.security` (by default
// the process's, cluster/transport_security.h): plaintext, or mutual TLS that requires a client
// certificate from the cluster CA. Tenants are authenticated by bearer tokens in metadata (see
// proto/kvstrata/v1/common.proto) either way.
//
// Thread-safety: all methods are safe to call concurrently; Shutdown() is idempotent and the
// destructor calls it. The server does not own the registered services: they must outlive
// the GrpcServer (or at least its Shutdown()).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/codegen/service_type.h>
#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/mutex.h"

namespace kv::cluster {
class TransportSecurity;
}  // namespace kv::cluster

namespace kv::cluster {

struct GrpcServerOptions {
  // host:port to listen on. Port 0 picks a free port. IPv6 hosts use brackets ("[::1]:0").
  std::string address = "127.0.0.1:0";
  // Services to register (not owned; must outlive the server). Sync, async-generic and
  // callback services are all accepted.
  std::vector<grpc::Service*> services;
  // Fully qualified names the health service reports for the registered services, for
  // example kvstrata::v1::Cluster::service_full_name(). The whole server ("") is always
  // reported. (grpc::Service does not expose its name, hence this list.)
  std::vector<std::string> health_service_names;
  // How long Shutdown() lets in-flight calls finish before cancelling them.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // Largest message accepted or sent, in bytes (page chunks are ≤ 4 MiB).
  int max_message_bytes = 64 << 20;
  // Initial HTTP/2 receive window of each stream in bytes (gRPC caps it at 4 MiB), frames up
  // to 16 MiB and 1 MiB socket reads; 0 keeps gRPC's defaults (a 64 KiB window grown by BDP
  // probes and updates of at most 1 MiB, 8 KiB reads). A store sets it so that a written page
  // is not paced by window updates.
  int stream_window_bytes = 0;
  // Plaintext or mutual TLS (cluster/transport_security.h); null: ProcessTransportSecurity().
  std::shared_ptr<TransportSecurity> security;
};

// The host of a "HOST:PORT" listen address (brackets of an IPv6 host removed; an empty host
// is "0.0.0.0"). InvalidArgument naming the address when there is no port.
absl::StatusOr<std::string> ListenHost(const std::string& address);

class GrpcServer {
 public:
  // Builds and starts a server. Errors: INVALID_ARGUMENT for an empty or malformed address
  // or a null service; UNAVAILABLE (retryable) when the address cannot be bound (in use,
  // not local). On error nothing is left running.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(GrpcServerOptions options);

  ~GrpcServer();
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // The port actually bound (never 0).
  int port() const { return port_; }
  // "host:port" with the bound port, suitable for grpc::CreateChannel.
  const std::string& address() const { return address_; }

  // Sets the health status of the whole server ("") and of every registered service.
  // Used to report NOT_SERVING while draining. No-op after Shutdown().
  void SetServing(bool serving);
  // Sets the health status of one named service only (e.g. a tier's, cluster/node.h), which
  // need not be a registered service. No-op after Shutdown().
  void SetServiceServing(const std::string& name, bool serving);

  // Stops accepting calls, waits up to shutdown_grace for in-flight calls, cancels the rest,
  // and returns once the server is down. Idempotent.
  void Shutdown();

 private:
  GrpcServer(std::unique_ptr<grpc::Server> server, int port, std::string address,
             absl::Duration grace, std::vector<std::string> health_names);
  void SetServingLocked(bool serving) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  kv::Mutex mu_;
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  const int port_;
  const std::string address_;
  const absl::Duration grace_;
  const std::vector<std::string> health_names_;
};

}  // namespace kv::cluster
