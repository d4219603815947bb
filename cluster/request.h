// The Cluster API's request as the serving code sees it (proto/kvstrata/v1/cluster.proto
// Generate, converted by cluster/cluster_service.h): what one Generate asks for, what it
// returns, and the statistics it reports. One request type per layer: the router turns a
// GenerateRequest into a decode::DecodeRequest and a prefill::PrefillRequest.
//
// Values; no behaviour beyond FinishReasonName.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "cluster/cost_model.h"
#include "decode/decode_session.h"
#include "kvstore/block_key.h"
#include "kvstore/tier.h"
#include "model/sampling.h"

namespace kv::cluster {

enum class CachePolicy {
  kAuto,            // the cost model decides
  kForceLoad,       // load every cached page
  kForceRecompute,  // read nothing; still publish
  kBypass,          // read nothing, publish nothing (a cold baseline)
};

using FinishReason = decode::FinishReason;
using decode::FinishReasonName;

struct GenerateRequest {
  std::vector<int32_t> prompt;  // token ids; non-empty
  // Authenticated tenant; non-empty. The router's calls to workers and stores act for it with
  // the node credential (cluster/tenants.h).
  std::string tenant;
  int64_t shared_prefix_tokens = 0;
  std::string session_id;                       // optional; 1..128 printable ASCII when set
  std::optional<absl::Duration> retention_ttl;  // unset: default; zero: no hint
  model::SamplingParams sampling;
  int64_t max_tokens = 0;  // > 0
  std::vector<int32_t> stop_tokens;
  bool ignore_eos = false;
  CachePolicy policy = CachePolicy::kAuto;
  // Called once the cost model has planned the request, before any page is loaded.
  std::function<void(const CostPlan&)> on_plan;
  // Called with each generated token as soon as it is sampled; returning false cancels the
  // request (FinishReason::kCancelled, the tokens so far are kept).
  std::function<bool(int32_t)> on_token;
  // The caller's deadline (the router also caps a request at its max_request_time) and, when
  // set, whether the caller gave up. Both are checked after every layer of the prompt's
  // compute, so an abandoned request stops within one layer's work, not at its first token.
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;
};

struct TierHit {
  TierKind tier = TierKind::kDevice;
  std::string node_id;  // node that held the pages
  bool remote = false;  // the pages came from another process
  int64_t pages = 0;
  int64_t tokens = 0;
  uint64_t bytes = 0;
};

struct RequestStats {
  absl::Duration ttft, total_time, load_time, prefill_time, decode_time;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cached_tokens = 0;       // prompt tokens whose KV was loaded
  int64_t recomputed_tokens = 0;   // prompt tokens computed
  std::vector<TierHit> tier_hits;  // one per tier that served pages, fastest first
  uint64_t bytes_loaded = 0;
  // KV bytes moved (cache loads + prefill->decode handoff) and by which transport ("ucx",
  // "inproc", or "grpc" when a decode worker read its pages over gRPC).
  uint64_t bytes_transferred = 0;
  std::string transport;
  // How the cached pages came from the pool's stores ("ucx", "grpc" only when UCX could not
  // connect, "inproc" for the embedded node's own store); "" when none were loaded.
  std::string pool_transport;
  // Pages this request published before its response (decode, end of turn), and pages the
  // prefill worker queued for its asynchronous write-back (not yet stored): see
  // RequestStats.published_pages and queued_pages in cluster.proto.
  int64_t published_pages = 0;
  int64_t queued_pages = 0;
  // The prefill->decode handoff the decode worker imported (0 / zero when none): bytes the
  // prefill worker wrote, and its time not overlapped with compute (PrefillDone).
  uint64_t handoff_bytes = 0;
  absl::Duration handoff_time;
  CostPlan cost;
};

struct GenerateResult {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kLength;
  RequestStats stats;
};

}  // namespace kv::cluster
