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

}  // namespace kv::cluster
