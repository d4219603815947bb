// EmbeddedNode: everything `kvstrata serve --role=all` runs in one process, minus gRPC:
// the model (an MLA or a V4 model directory, model/serving_model.h; created as the seeded
// tiny-v3 reference model on first start when no model directory is given), the tiered store
// (device and host slab tiers in memory, the nvme tier in RocksDB under the data dir) and the
// Engine over both.
//
// Thread-safety: Open() is called once; the returned node's accessors are safe to use from
// any thread (the Engine and TieredStore are thread-safe). The node owns the model, store
// and engine; references it returns live as long as the node. Destruction order: engine
// (its write-back pool drains), then store, then model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvstore/tiered_store.h"
#include "model/serving_model.h"
#include "prefill/engine.h"

namespace kv::prefill {

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

class EmbeddedNode {
 public:
  // Creates the model if needed, loads it, opens the tiers and the store (recovering the
  // nvme tier's sealed pages), and builds the engine. Errors name the failing part.
  static absl::StatusOr<std::unique_ptr<EmbeddedNode>> Open(const NodeOptions& options,
                                                            EngineOptions engine_options = {});
  ~EmbeddedNode();

  Engine& engine() { return *engine_; }
  TieredStore& store() { return *store_; }
  const ServingModel& model() const { return *model_.serving; }
  // The runtime underneath: exactly one of them is set.
  const model::Transformer* transformer() const { return model_.mla.get(); }
  const model::V4Model* v4_model() const { return model_.v4.get(); }
  const std::string& model_dir() const { return model_dir_; }
  const NodeOptions& options() const { return options_; }

 private:
  EmbeddedNode() = default;
  NodeOptions options_;
  std::string model_dir_;
  model::LoadedModel model_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<Engine> engine_;
};

}  // namespace kv::prefill
