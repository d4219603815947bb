// EngineBackend: the ServingBackend of `serve --role=all`: every request runs in this
// process on prefill::Engine (model + tiered store), moving bytes with the in-process
// transport. ListNodes reports this one node with every role.
//
// Thread-safety: safe for concurrent calls (the Engine is). Does not own the engine.
#pragma once

#include <string>

#include "cluster/serving_backend.h"
#include "prefill/engine.h"

namespace kv::cluster {

class EngineBackend final : public ServingBackend {
 public:
  EngineBackend(prefill::Engine* engine, std::string node_id)
      : engine_(engine), node_id_(std::move(node_id)) {}

  absl::StatusOr<prefill::GenerateResult> Generate(const prefill::GenerateRequest& req,
                                                   Route* route) override;
  absl::Status Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                      int64_t shared_prefix_tokens, bool include_keys,
                      const std::string& authorization, kvstrata::v1::LookupResponse* out) override;
  void ListNodes(const ServiceContext& self, const kvstrata::v1::ListNodesRequest& req,
                 kvstrata::v1::ListNodesResponse* out) override;
  void GetStats(const ServiceContext& self, kvstrata::v1::GetStatsResponse* out) override;

 private:
  prefill::Engine* const engine_;
  const std::string node_id_;
};

}  // namespace kv::cluster
