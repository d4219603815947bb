// ClusterClient: the C++ client of the kvstrata.v1.Cluster service (Generate streaming,
// Lookup, ListNodes, GetStats) over gRPC, with the caller's bearer token in the
// `authorization` metadata of every call. RunGenerateClient() is `kvstrata generate
// --addr=HOST:PORT`: it streams the output to stdout and prints the request's stats.
//
// Every call has a deadline (the `timeout` argument); nothing blocks past it. Errors are
// the server's status mapped back to absl (cluster/grpc_status.h): UNAUTHENTICATED for a
// bad token, UNAVAILABLE when nothing listens, DEADLINE_EXCEEDED, INVALID_ARGUMENT...
//
// Thread-safety: a ClusterClient may be used from several threads at once (gRPC channels and
// stubs are thread-safe); callbacks run on the calling thread. Returned values are owned by
// the caller.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/kvstrata/v1/cluster.grpc.pb.h"

namespace kv::cluster {

struct GenerateOutcome {
  std::string request_id;
  std::vector<uint32_t> tokens;
  std::string text;
  kvstrata::v1::CostEstimate plan;  // from the `accepted` event
  kvstrata::v1::FinishReason finish = kvstrata::v1::FINISH_REASON_UNSPECIFIED;
  kvstrata::v1::RequestStats stats;  // from the `done` event
  absl::Duration client_ttft;        // measured here: call start -> first token event
};

class ClusterClient {
 public:
  // Opens a channel to `address` and waits up to `connect_timeout` for it to connect.
  // UNAVAILABLE naming the address when nothing answers. `token` may be empty (no header).
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Connect(
      const std::string& address, std::string token,
      absl::Duration connect_timeout = absl::Seconds(5));

  // Runs a Generate stream. `on_tokens` (optional) sees every tokens event as it arrives.
  // INTERNAL if the stream breaks its contract (no `done` event, tokens out of order).
  absl::StatusOr<GenerateOutcome> Generate(
      const kvstrata::v1::GenerateRequest& request, absl::Duration timeout,
      const std::function<void(const kvstrata::v1::GeneratedTokens&)>& on_tokens = {});
  absl::StatusOr<kvstrata::v1::LookupResponse> Lookup(const kvstrata::v1::LookupRequest& request,
                                                      absl::Duration timeout);
  absl::StatusOr<kvstrata::v1::ListNodesResponse> ListNodes(absl::Duration timeout);
  // With `all_nodes`, the router also collects every live node's stats (GetStatsResponse.nodes).
  absl::StatusOr<kvstrata::v1::GetStatsResponse> GetStats(absl::Duration timeout,
                                                          bool all_nodes = false);

 private:
  ClusterClient(std::shared_ptr<grpc::Channel> channel, std::string token);
  void Prepare(grpc::ClientContext* ctx, absl::Duration timeout) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<kvstrata::v1::Cluster::Stub> stub_;
  const std::string token_;
};

// One-line summaries for printing.
std::string FormatTierHits(const kvstrata::v1::RequestStats& stats);  // "host 3p/192t, ..."
std::string FormatStats(const kvstrata::v1::RequestStats& stats);     // multi-line

struct GenerateClientFlags {
  std::string addr;
  std::string token;
  std::string session;
  std::string prompt;
  int64_t max_tokens = 64;
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t seed = 0;
  int64_t shared_prefix_tokens = 0;
  absl::Duration retention = absl::ZeroDuration();  // 0: the server's default
  absl::Duration timeout = absl::Minutes(2);
  std::string cache_policy = "auto";  // auto|force-load|force-recompute|bypass
  bool raw = false;                   // bytes as-is (default: escape non-printable as \xNN)
};

// `kvstrata generate --addr=...`: streams the text to stdout, then prints the stats.
// Returns 0 on success; prints the error to stderr and returns 1 (server/RPC error) or 2
// (bad flags).
int RunGenerateClient(const GenerateClientFlags& flags);

}  // namespace kv::cluster
