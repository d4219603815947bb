// A serving node's local parts, shared by `serve --role=all` (cluster/embedded_cluster.h) and
// the distributed roles (cluster/role_server.h): its options, the model directory (the seeded
// tiny-v3 reference model is written on first start when none is given), and the tiered store
// (device and host slab tiers in memory, the nvme tier under the data dir).
//
// Thread-safety: pure functions (they touch the filesystem). Results are owned by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/grpc_server.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "kvstore/tiered_store.h"
#include "model/serving_model.h"

namespace kv::cluster {

struct NodeOptions {
  // Model directory (config.json + model.safetensors). Empty: DATA_DIR/model-tiny-v3,
  // written with the seeded tiny-v3 preset (seed `model_seed`) if it does not exist yet.
  std::string model_dir;
  uint64_t model_seed = 1;
  // Data directory: the nvme tier lives in DATA_DIR/nvme. Required; created if missing.
  std::string data_dir;
  // mla-fp8-656 or mla-bf16-1152 for MLA models, v4-fp8-584 for V4 models; empty: the
  // model's FP8 layout (model/serving_model.h ServingLayoutName).
  std::string kv_layout;
  // What block keys chain over (kvstore/block_key.h): token ids, or vLLM's sha256_cbor block
  // hashes so an engine computing its own hashes names the same pages (engine_hash_seed:
  // the engines' PYTHONHASHSEED; their block size must be the layout's page tokens).
  KeyChain key_chain = KeyChain::kTokens;
  std::string engine_hash_seed;
  uint64_t device_bytes = 64ull << 20;  // 0: no device tier
  uint64_t host_bytes = 256ull << 20;   // 0: no host tier
  uint64_t nvme_bytes = 4ull << 30;     // 0: no nvme tier
  uint64_t slab_bytes = 4ull << 20;     // slab size of the device/host tiers
  int64_t max_context = 0;              // 0: the model's default
  // Threads one request's forward may use (the batch-invariant GEMMs split over them; the
  // bytes written do not depend on it). 0: every core of the host.
  int compute_threads = 0;
  MetricsRegistry* metrics = nullptr;  // nullptr: the default registry
  Clock* clock = nullptr;
  // OpenStore: the store's TieredStoreOptions::residency_listener (KV events); empty: none.
  ResidencyListener residency_listener;
};

// Checks options without side effects. InvalidArgument naming the option.
absl::Status ValidateNodeOptions(const NodeOptions& options);

// The model directory options name: `model_dir`, or DATA_DIR/model-tiny-v3, written with
// the seeded tiny-v3 preset on first use (every role of a cluster started with the same
// seed and no model dir thus serves the same model). Errors of creating it.
absl::StatusOr<std::string> EnsureModelDir(const NodeOptions& options);
// Opens the tiers options enable (device and host slabs in memory, nvme under
// DATA_DIR/nvme, recovering its sealed pages) and the TieredStore over them.
absl::StatusOr<std::unique_ptr<TieredStore>> OpenStore(const NodeOptions& options);

// Tier health for the node's probes (docs/serving.md "Durability and tier health"). A
// failing tier never makes the node NOT_SERVING: the server ("") and its services stay
// SERVING, and each present tier has its own gRPC health service name, kTierHealthPrefix +
// its name ("kvstrata.tier.nvme"), SERVING or NOT_SERVING.
inline constexpr char kTierHealthPrefix[] = "kvstrata.tier.";
// Reports the store's tier health to `grpc` now and on every change. `grpc` must outlive
// the report: call StopTierHealthReport before destroying it.
void ReportTierHealth(TieredStore& store, GrpcServer& grpc);
void StopTierHealthReport(TieredStore& store);
// "" while every tier is healthy; otherwise what is failing (for /healthz "degraded: ...").
std::string TierHealthDetail(TieredStore& store);
// The SIGTERM path's durability step: TieredStore::Flush within `budget`, logged. A store
// without an nvme tier has nothing to flush.
void FlushStoreForShutdown(TieredStore& store, absl::Duration budget);
// Time a stopping node gives the flush: with the 5 s gRPC grace it stays below the
// Kubernetes default terminationGracePeriodSeconds of 30 (deploy/k8s sets 30).
inline constexpr absl::Duration kShutdownFlushBudget = absl::Seconds(20);

}  // namespace kv::cluster
