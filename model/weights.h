// ModelWeights: a DeepSeek MLA (or V4 hybrid-attention) model's parameters in fp32, loaded from a
// model directory (config.json + model.safetensors), and the seeded generator that writes such
// directories for the reference models (DESIGN.md "Models": tiny-v3).
//
// Tensor names follow the Hugging Face DeepSeek-V3 checkpoints (model.layers.{i}.self_attn.
// kv_a_proj_with_mqa.weight, ...); every linear weight is [out, in] row-major. Stored dtypes
// BF16 and F32 load exactly; F8_E4M3 weights need DeepSeek's "<name>_scale_inv" companion
// (one F32/BF16 scale per 128x128 block) and are dequantized on load. Every tensor's shape
// is checked against what config.json implies, with an error naming the tensor.
//
// The fingerprint is SHA-256 over a domain tag, the canonical config (model/config.h) and the
// weights' identity: the safetensors header bytes plus a SHA-256 of the data section. Block
// keys use it, so pages computed by different weights never match.
//
// ModelWeights is a plain value, immutable once loaded, safe to share across threads for
// reading. The caller owns everything returned.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/hash.h"
#include "model/config.h"

namespace kv::model {

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  // q path: direct (q_lora_rank == 0) or low-rank with a norm.
  std::vector<float> q_proj;     // [H*(nope+rope), hidden]     when q_lora_rank == 0
  std::vector<float> q_a_proj;   // [q_lora, hidden]            when q_lora_rank > 0
  std::vector<float> q_a_norm;   // [q_lora]
  std::vector<float> q_b_proj;   // [H*(nope+rope), q_lora]
  std::vector<float> kv_a_proj;  // [kv_lora + rope, hidden]  (formats.md §1.1 wkv_a)
  std::vector<float> kv_a_norm;  // [kv_lora]
  std::vector<float> kv_b_proj;  // [H*(nope+v), kv_lora]: per head W_UK rows then W_UV rows
  std::vector<float> o_proj;     // [hidden, H*v]
  std::vector<float> post_norm;  // [hidden]
  std::vector<float> gate_proj;  // [inter, hidden]
  std::vector<float> up_proj;    // [inter, hidden]
  std::vector<float> down_proj;  // [hidden, inter]

  // DeepSeek-V4 attention (model_type deepseek_v4, formats.md §4.2-4.4); q_a_proj /
  // q_a_norm / q_b_proj above are shared ([H*512, q_lora] for q_b), the MLA fields unused.
  std::vector<float> kv_proj;           // [512, hidden]: K = V = RMSNorm(kv_proj h)
  std::vector<float> kv_norm;           // [512]
  std::vector<float> attn_sink;         // [H] per-head sink logits
  std::vector<float> o_a_proj;          // [G*o_lora, H*512/G]: group g's rows g*o_lora..
  std::vector<float> o_b_proj;          // [hidden, G*o_lora]
  std::vector<float> comp_kv_proj;      // [w, hidden], w = 2*512 (CSA) or 512 (HCA)
  std::vector<float> comp_gate_proj;    // [w, hidden]
  std::vector<float> comp_bias;         // [ratio, w] per-slot position bias
  std::vector<float> comp_norm;         // [512]
  std::vector<float> idx_q_b_proj;      // [IH*128, q_lora] (CSA layers)
  std::vector<float> idx_weights_proj;  // [IH, hidden]
  std::vector<float> idx_kv_proj;       // [256, hidden]
  std::vector<float> idx_gate_proj;     // [256, hidden]
  std::vector<float> idx_bias;          // [4, 256]
  std::vector<float> idx_norm;          // [128]
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab, hidden]
  Digest256 fingerprint{};
};

// Loads DIR/config.json and DIR/model.safetensors (V3 or V4). NotFound for a missing file,
// Unimplemented / InvalidArgument from ValidateForAnyRuntime for a config no runtime can
// run, InvalidArgument naming the tensor for a missing tensor, a wrong shape or dtype, or a
// non-finite weight.
absl::StatusOr<ModelWeights> LoadModel(const std::string& dir);

// Writes DIR/config.json and DIR/model.safetensors (BF16) for `config` with weights drawn
// from a seeded normal distribution (SplitMix64 + Box-Muller, so the bytes are the same on
// every platform), scaled so activations stay O(1) through the layers. Creates DIR if
// needed. Refuses configs ValidateForAnyRuntime refuses.
absl::Status WriteRandomModel(const ModelConfig& config, uint64_t seed, const std::string& dir);

// The fingerprint of a model directory's config + weights without converting weights.
absl::StatusOr<Digest256> ModelFingerprint(const std::string& dir);

}  // namespace kv::model
