#include "cluster/grpc_server.h"

#include <utility>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/base/call_once.h"
#include "absl/strings/numbers.h"
#include "cluster/transport_security.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {
namespace {

// Both switches are process-wide in gRPC; they must be set before the first ServerBuilder.
void EnableHealthAndReflectionOnce() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
}

// Splits "host:port" / "[v6]:port"; InvalidArgument naming the address otherwise.
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (address.empty() || colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        kv::StrCat("grpc server address '", address, "' is not HOST:PORT"));
  }
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        kv::StrCat("grpc server address '", address, "' has an invalid port (0..65535)"));
  }
  return std::make_pair(address.substr(0, colon), port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(GrpcServerOptions options) {
  ASSIGN_OR_RETURN(auto host_port, SplitHostPort(options.address));
  for (grpc::Service* service : options.services) {
    if (service == nullptr) return absl::InvalidArgumentError("grpc server: null service");
  }
  EnableHealthAndReflectionOnce();

  grpc::ServerBuilder builder;
  int bound_port = 0;
  std::shared_ptr<TransportSecurity> security =
      options.security != nullptr ? options.security : ProcessTransportSecurity();
  builder.AddListeningPort(options.address, security->ServerCredentials(), &bound_port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // One server per port: never share a port with another process (SO_REUSEPORT).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (options.stream_window_bytes > 0) {
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, options.stream_window_bytes);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
    builder.AddChannelArgument(GRPC_ARG_TCP_READ_CHUNK_SIZE, 1 << 20);
  }
  for (grpc::Service* service : options.services) builder.RegisterService(service);

  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    if (server != nullptr) server->Shutdown(gpr_now(GPR_CLOCK_MONOTONIC));
    return kv::MarkRetryable(absl::UnavailableError(kv::StrCat(
        "grpc server could not bind '", options.address, "' (address in use or not local?)")));
  }
  std::string address = kv::StrCat(host_port.first, ":", bound_port);
  kv::log::Info("grpc_server_started", "address", address, "services", options.services.size(),
                "tls", security->tls());
  auto out = std::unique_ptr<GrpcServer>(new GrpcServer(std::move(server), bound_port,
                                                        std::move(address), options.shutdown_grace,
                                                        std::move(options.health_service_names)));
  out->SetServing(true);
  return out;
}

GrpcServer::GrpcServer(std::unique_ptr<grpc::Server> server, int port, std::string address,
                       absl::Duration grace, std::vector<std::string> health_names)
    : server_(std::move(server)),
      port_(port),
      address_(std::move(address)),
      grace_(grace),
      health_names_(std::move(health_names)) {}

GrpcServer::~GrpcServer() { Shutdown(); }

void GrpcServer::SetServing(bool serving) {
  kv::MutexLock lock(&mu_);
  if (!shut_down_) SetServingLocked(serving);
}

void GrpcServer::SetServiceServing(const std::string& name, bool serving) {
  kv::MutexLock lock(&mu_);
  if (shut_down_) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health != nullptr) health->SetServingStatus(name, serving);
}

void GrpcServer::SetServingLocked(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  for (const std::string& name : health_names_) health->SetServingStatus(name, serving);
}

void GrpcServer::Shutdown() {
  std::unique_ptr<grpc::Server> server;
  {
    kv::MutexLock lock(&mu_);
    if (shut_down_) return;
    SetServingLocked(false);
    shut_down_ = true;
    server = std::move(server_);
  }
  const absl::Time deadline = absl::Now() + grace_;
  server->Shutdown(absl::ToChronoTime(deadline));
  server->Wait();
  kv::log::Info("grpc_server_stopped", "address", address_);
}

absl::StatusOr<std::string> ListenHost(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (address.empty() || colon == std::string::npos || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        kv::StrCat("listen address '", address, "' must be HOST:PORT, e.g. 127.0.0.1:7070"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host.empty() ? "0.0.0.0" : host;
}

}  // namespace kv::cluster
