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

#include "absl/status/status.h"
#include "absl/status/statusor.h"

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

// OK when the reference runtime can run `c`; otherwise Unimplemented (a feature we do not
// run: MoE layers, the V3.2 indexer, a non-YaRN rope scaling, an activation other than silu)
// or InvalidArgument (a geometry no KV layout holds: kv_lora_rank must be 512 and
// qk_rope_head_dim 64, formats.md §2.1), each naming the field.
absl::Status ValidateForRuntime(const ModelConfig& c);

// config.json text for `c` (DeepSeek field names; q_lora_rank 0 is written as null).
std::string ToConfigJson(const ModelConfig& c);
// Deterministic one-line JSON of every parsed field in a fixed order; the fingerprint input.
std::string CanonicalJson(const ModelConfig& c);

// The tiny-v3 preset: DeepSeek-V3's KV geometry (kv_lora_rank 512, rope 64, nope 128, v 128,
// V3's YaRN constants) with hidden 256, 4 layers, 4 heads, a dense SwiGLU MLP and the byte
// vocabulary of model/tokenizer.h. Returns NotFound for an unknown preset name.
absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);

}  // namespace kv::model
