// Client-side probes of any kvstrata gRPC server (or any gRPC server with the standard
// services): the grpc.health.v1 health check and server reflection. Used by tests, by
// `kvstrata` subcommands that wait for a server, and by routers probing peers.
//
// Each call opens one RPC on the given channel with a deadline of `timeout` and returns once
// it completed or the deadline passed; nothing is left running afterwards. Errors come back as
// absl::Status with the RPC's gRPC code (UNAVAILABLE: nothing listening; DEADLINE_EXCEEDED;
// UNIMPLEMENTED: the server lacks the service).
//
// Thread-safety: functions are safe to call concurrently (gRPC channels are thread-safe).
// Returned values are owned by the caller.
#pragma once

#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/grpc/health/v1/health.pb.h"

namespace kv::cluster {

// Health of `service` ("" = the server as a whole). NOT_FOUND when the server does not know
// the service name.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
    grpc::Channel* channel, const std::string& service, absl::Duration timeout);

// Fully qualified names of the services the server exposes through reflection, sorted.
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(grpc::Channel* channel,
                                                                  absl::Duration timeout);

// Serialized google.protobuf.FileDescriptorProto of the file defining `symbol` (for example
// "kvstrata.v1.Cluster") and of its dependencies, as reflection returns them. NOT_FOUND when
// the server does not know the symbol.
absl::StatusOr<std::vector<std::string>> FileDescriptorsBySymbol(grpc::Channel* channel,
                                                                 const std::string& symbol,
                                                                 absl::Duration timeout);

}  // namespace kv::cluster
