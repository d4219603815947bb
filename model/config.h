// ModelConfig: the subset of a DeepSeek `config.json` (formats.md §1.1, §1.3) that the
// reference runtime needs, plus the checks that decide whether the runtime can run it.
//
// A ModelConfig is a plain value: copyable, no hidden state, safe to read from any number of
// threads. ParseModelConfig() accepts the field names DeepSeek-V3 checkpoints use
// (hidden_size, num_hidden_layers, q_lora_rank (null => direct q projection), kv_lora_rank,
// qk_nope_head_dim, qk_rope_head_dim, v_head_dim, rope_scaling {type: yarn, ...}, MoE fields
// n_routed_experts / first_k_dense_replace / ...). Unknown fields are ignored, because real
// checkpoints carry many (torch_dtype, architectures, auto_map, ...). Fields the runtime
// cannot honour are refused by ValidateForRuntime() with a message naming the field.
//
// CanonicalJson() renders the parsed fields in a fixed order; together with the weights'
// identity it feeds the model fingerprint that block keys use (model/weights.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/v4/v4_config.h"

namespace kv::model {

// DeepSeek's YaRN rope scaling block (formats.md §1.3).
struct RopeScaling {
  std::string type = "yarn";
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t q_lora_rank = 0;  // 0: config.json had null => q = W_q h directly
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  int64_t max_position_embeddings = 4096;
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  // MoE (DeepSeek-V3: 256 routed, 1 shared, first 3 layers dense). Not run yet.
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_intermediate_size = 0;
  // V3.2 sparse attention (lightning indexer). Not run yet.
  int64_t index_topk = 0;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  // DeepSeek-V4 hybrid attention (model_type "deepseek_v4", formats.md §4.1). Written to
  // config.json / CanonicalJson only for V4 models, so V3 configs and fingerprints are
  // unchanged. For V4, kv_lora_rank / qk_nope_head_dim / v_head_dim are unused (0) and
  // rope_theta is the main RoPE θ of window-only layers; rope_scaling is the compress
  // RoPE's YaRN block (attention factor forced to 1.0) with θ = compress_rope_theta.
  std::vector<int64_t> compress_ratios;  // one per layer: 0 window-only, 4 CSA, 128 HCA
  int64_t head_dim = 0;                  // K = V width: 448 nope + 64 rope
  int64_t sliding_window = 0;
  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  double compress_rope_theta = 0.0;

  bool IsV4() const { return model_type == "deepseek_v4"; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Whole-model MoE: true when any layer would use routed experts.
  bool HasMoeLayers() const {
    return n_routed_experts > 0 && first_k_dense_replace < num_hidden_layers;
  }
};

// Parses config.json text. Returns InvalidArgument naming the field for a missing required
// field, a wrong JSON type, or a non-positive dimension. Does not check runtime support.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
// Reads and parses a file. NotFound when it cannot be opened.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// OK when the reference MLA runtime (model/transformer.h) can run `c`; otherwise
// Unimplemented (a feature we do not run: MoE layers, the V3.2 indexer, a non-YaRN rope
// scaling, an activation other than silu, a deepseek_v4 model, which runs on
// model/v4_model.h instead) or InvalidArgument (a geometry no KV layout holds: kv_lora_rank
// must be 512 and qk_rope_head_dim 64, formats.md §2.1), each naming the field.
absl::Status ValidateForRuntime(const ModelConfig& c);

// The same for the V4 runtime (model/v4_model.h): `c` must be a deepseek_v4 config with the
// v4-fp8-584 geometry (head_dim 512 = 448 + 64 rope, index_head_dim 128), compress_ratios
// of 0/4/128 (one per layer), a dense silu MLP and a YaRN compress RoPE. InvalidArgument /
// Unimplemented naming the field otherwise.
absl::Status ValidateV4ForRuntime(const ModelConfig& c);
// The kernels' view of a V4 config (kernels/v4/v4_config.h): ratios, window, head and
// indexer geometry, o-groups and the compress RoPE. Meaningful only when c.IsV4().
kernels::v4::V4Config ToV4Config(const ModelConfig& c);
// ValidateV4ForRuntime for V4 configs, ValidateForRuntime otherwise (what a model directory
// must pass to be loaded or written).
absl::Status ValidateForAnyRuntime(const ModelConfig& c);

// config.json text for `c` (DeepSeek field names; q_lora_rank 0 is written as null).
std::string ToConfigJson(const ModelConfig& c);
// Deterministic one-line JSON of every parsed field in a fixed order; the fingerprint input.
std::string CanonicalJson(const ModelConfig& c);

// The tiny-v3 preset: DeepSeek-V3's KV geometry (kv_lora_rank 512, rope 64, nope 128, v 128,
// V3's YaRN constants) with hidden 256, 4 layers, 4 heads, a dense SwiGLU MLP and the byte
// vocabulary of model/tokenizer.h.
// The tiny-v4 preset: DeepSeek-V4's attention geometry (512-wide K = V, 448 + 64 rope,
// 128-token window, 128-d indexer keys, compress RoPE θ 160000 with YaRN 16 / 65536) over
// 4 layers [0, 4, 128, 4] (window-only, CSA, HCA, CSA), hidden 256, 4 heads, q_lora 128,
// 4 index heads, index_topk 16, 2 o-groups × 128, a dense SwiGLU MLP, byte vocabulary.
// Returns NotFound for an unknown preset name.
absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);

}  // namespace kv::model
