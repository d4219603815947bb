#include "model/config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/tokenizer.h"

namespace kv::model {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: field '", std::string(field), "' ", std::string(what)));
}

// Reads an integer field. `required` fields must be present; a present field must be an
// integer (DeepSeek writes dimensions as JSON integers).
absl::Status ReadInt(const Json& j, const char* field, bool required, int64_t* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (!it->is_number_integer()) return FieldError(field, "must be an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadDouble(const Json& j, const char* field, bool required, double* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (!it->is_number()) return FieldError(field, "must be a number");
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status ReadString(const Json& j, const char* field, std::string* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return FieldError(field, "must be a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::Status ReadBool(const Json& j, const char* field, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return FieldError(field, "must be a boolean");
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const Json& j) {
  if (!j.is_object()) return FieldError("rope_scaling", "must be an object or null");
  RopeScaling r;
  // HF writes "type" (older) or "rope_type" (newer).
  r.type.clear();
  RETURN_IF_ERROR(ReadString(j, "type", &r.type));
  if (r.type.empty()) RETURN_IF_ERROR(ReadString(j, "rope_type", &r.type));
  if (r.type.empty()) return FieldError("rope_scaling.type", "is missing");
  RETURN_IF_ERROR(ReadDouble(j, "factor", true, &r.factor));
  RETURN_IF_ERROR(ReadInt(j, "original_max_position_embeddings", r.type == "yarn",
                          &r.original_max_position_embeddings));
  RETURN_IF_ERROR(ReadDouble(j, "beta_fast", false, &r.beta_fast));
  RETURN_IF_ERROR(ReadDouble(j, "beta_slow", false, &r.beta_slow));
  RETURN_IF_ERROR(ReadDouble(j, "mscale", false, &r.mscale));
  RETURN_IF_ERROR(ReadDouble(j, "mscale_all_dim", false, &r.mscale_all_dim));
  if (!(r.factor >= 1.0)) return FieldError("rope_scaling.factor", "must be >= 1");
  if (r.original_max_position_embeddings <= 0) {
    return FieldError("rope_scaling.original_max_position_embeddings", "must be positive");
  }
  if (!(r.beta_fast > r.beta_slow) || !(r.beta_slow > 0)) {
    return FieldError("rope_scaling.beta_fast", "must exceed beta_slow > 0");
  }
  return r;
}

// Dimensions beyond 2^24 are not a model this runtime could allocate; refusing them here
// keeps later size arithmetic far from overflow.
absl::Status CheckPositive(int64_t v, const char* field) {
  if (v <= 0) return FieldError(field, "must be positive");
  if (v > (int64_t{1} << 24)) return FieldError(field, "is implausibly large (> 2^24)");
  return absl::OkStatus();
}

// The V4 fields (formats.md §4.1). compress_ratios must be an array of integers, one per
// layer; the other sizes are required and positive.
absl::Status ParseV4Fields(const Json& j, ModelConfig* c) {
  auto it = j.find("compress_ratios");
  if (it == j.end() || it->is_null()) return FieldError("compress_ratios", "is missing");
  if (!it->is_array()) return FieldError("compress_ratios", "must be an array of integers");
  for (const Json& r : *it) {
    if (!r.is_number_integer()) return FieldError("compress_ratios", "must hold integers");
    c->compress_ratios.push_back(r.get<int64_t>());
  }
  RETURN_IF_ERROR(ReadInt(j, "head_dim", true, &c->head_dim));
  RETURN_IF_ERROR(ReadInt(j, "sliding_window", true, &c->sliding_window));
  RETURN_IF_ERROR(ReadInt(j, "index_n_heads", true, &c->index_n_heads));
  RETURN_IF_ERROR(ReadInt(j, "index_head_dim", true, &c->index_head_dim));
  RETURN_IF_ERROR(ReadInt(j, "index_topk", true, &c->index_topk));
  RETURN_IF_ERROR(ReadInt(j, "o_groups", true, &c->o_groups));
  RETURN_IF_ERROR(ReadInt(j, "o_lora_rank", true, &c->o_lora_rank));
  RETURN_IF_ERROR(ReadDouble(j, "compress_rope_theta", true, &c->compress_rope_theta));
  for (auto [v, name] : {std::pair{c->head_dim, "head_dim"},
                         {c->sliding_window, "sliding_window"},
                         {c->index_n_heads, "index_n_heads"},
                         {c->index_head_dim, "index_head_dim"},
                         {c->index_topk, "index_topk"},
                         {c->o_groups, "o_groups"},
                         {c->o_lora_rank, "o_lora_rank"}}) {
    RETURN_IF_ERROR(CheckPositive(v, name));
  }
  if (!(c->compress_rope_theta > 1)) return FieldError("compress_rope_theta", "must be > 1");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");
  ModelConfig c;
  RETURN_IF_ERROR(ReadString(j, "model_type", &c.model_type));
  RETURN_IF_ERROR(ReadInt(j, "hidden_size", true, &c.hidden_size));
  RETURN_IF_ERROR(ReadInt(j, "num_hidden_layers", true, &c.num_hidden_layers));
  RETURN_IF_ERROR(ReadInt(j, "num_attention_heads", true, &c.num_attention_heads));
  RETURN_IF_ERROR(ReadInt(j, "q_lora_rank", false, &c.q_lora_rank));
  const bool v4 = c.IsV4();
  RETURN_IF_ERROR(ReadInt(j, "kv_lora_rank", !v4, &c.kv_lora_rank));
  RETURN_IF_ERROR(ReadInt(j, "qk_nope_head_dim", !v4, &c.qk_nope_head_dim));
  RETURN_IF_ERROR(ReadInt(j, "qk_rope_head_dim", true, &c.qk_rope_head_dim));
  RETURN_IF_ERROR(ReadInt(j, "v_head_dim", !v4, &c.v_head_dim));
  RETURN_IF_ERROR(ReadInt(j, "intermediate_size", true, &c.intermediate_size));
  RETURN_IF_ERROR(ReadInt(j, "vocab_size", true, &c.vocab_size));
  RETURN_IF_ERROR(ReadDouble(j, "rms_norm_eps", false, &c.rms_norm_eps));
  RETURN_IF_ERROR(ReadDouble(j, "rope_theta", false, &c.rope_theta));
  RETURN_IF_ERROR(ReadInt(j, "max_position_embeddings", false, &c.max_position_embeddings));
  RETURN_IF_ERROR(ReadString(j, "hidden_act", &c.hidden_act));
  RETURN_IF_ERROR(ReadBool(j, "tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(ReadInt(j, "n_routed_experts", false, &c.n_routed_experts));
  RETURN_IF_ERROR(ReadInt(j, "n_shared_experts", false, &c.n_shared_experts));
  RETURN_IF_ERROR(ReadInt(j, "first_k_dense_replace", false, &c.first_k_dense_replace));
  RETURN_IF_ERROR(ReadInt(j, "moe_intermediate_size", false, &c.moe_intermediate_size));
  RETURN_IF_ERROR(ReadInt(j, "index_topk", false, &c.index_topk));
  RETURN_IF_ERROR(ReadInt(j, "bos_token_id", false, &c.bos_token_id));
  RETURN_IF_ERROR(ReadInt(j, "eos_token_id", false, &c.eos_token_id));
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(*it));
  }
  if (v4) RETURN_IF_ERROR(ParseV4Fields(j, &c));
  RETURN_IF_ERROR(CheckPositive(c.hidden_size, "hidden_size"));
  RETURN_IF_ERROR(CheckPositive(c.num_hidden_layers, "num_hidden_layers"));
  RETURN_IF_ERROR(CheckPositive(c.num_attention_heads, "num_attention_heads"));
  if (!v4) {
    RETURN_IF_ERROR(CheckPositive(c.kv_lora_rank, "kv_lora_rank"));
    RETURN_IF_ERROR(CheckPositive(c.qk_nope_head_dim, "qk_nope_head_dim"));
    RETURN_IF_ERROR(CheckPositive(c.v_head_dim, "v_head_dim"));
  }
  RETURN_IF_ERROR(CheckPositive(c.qk_rope_head_dim, "qk_rope_head_dim"));
  RETURN_IF_ERROR(CheckPositive(c.intermediate_size, "intermediate_size"));
  RETURN_IF_ERROR(CheckPositive(c.vocab_size, "vocab_size"));
  RETURN_IF_ERROR(CheckPositive(c.max_position_embeddings, "max_position_embeddings"));
  if (c.q_lora_rank != 0) RETURN_IF_ERROR(CheckPositive(c.q_lora_rank, "q_lora_rank"));
  if (c.q_lora_rank < 0) return FieldError("q_lora_rank", "must be null or positive");
  if (!(c.rms_norm_eps > 0)) return FieldError("rms_norm_eps", "must be positive");
  if (!(c.rope_theta > 1)) return FieldError("rope_theta", "must be > 1");
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto c = ParseModelConfig(ss.str());
  if (!c.ok()) return kv::Annotate(c.status(), path);
  return c;
}

namespace {

// What both runtimes (MLA and V4) support: SiLU MLPs and YaRN or no RoPE scaling.
absl::Status CheckActivationAndRope(const ModelConfig& c) {
  if (c.hidden_act != "silu") {
    return absl::UnimplementedError(absl::StrCat("config.json: field 'hidden_act' = '",
                                                 c.hidden_act, "' is not supported (silu only)"));
  }
  if (c.rope_scaling && c.rope_scaling->type != "yarn") {
    return absl::UnimplementedError(absl::StrCat("config.json: field 'rope_scaling.type' = '",
                                                 c.rope_scaling->type,
                                                 "' is not supported (yarn or none)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateForRuntime(const ModelConfig& c) {
  if (c.IsV4()) {
    return absl::UnimplementedError(
        "config.json: field 'model_type' = 'deepseek_v4': V4 hybrid attention runs on the V4 "
        "runtime (model/v4_model.h), not the MLA transformer");
  }
  if (c.HasMoeLayers()) {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: field 'n_routed_experts' = ", c.n_routed_experts,
        " with first_k_dense_replace = ", c.first_k_dense_replace, " < num_hidden_layers = ",
        c.num_hidden_layers, ": mixture-of-experts layers are not supported by this runtime"));
  }
  if (c.index_topk > 0) {
    return absl::UnimplementedError(
        "config.json: field 'index_topk': DeepSeek sparse attention (the V3.2 lightning "
        "indexer) is not supported by this runtime");
  }
  RETURN_IF_ERROR(CheckActivationAndRope(c));
  // The MLA KV layouts hold a 512-d latent and a 64-d rope key (formats.md §2.1).
  if (c.kv_lora_rank != 512) {
    return FieldError("kv_lora_rank", "must be 512: mla-fp8-656 / mla-bf16-1152 hold 512 + 64");
  }
  if (c.qk_rope_head_dim != 64) {
    return FieldError("qk_rope_head_dim", "must be 64: mla-fp8-656 / mla-bf16-1152 hold 512 + 64");
  }
  if (c.qk_rope_head_dim % 2 != 0) return FieldError("qk_rope_head_dim", "must be even");
  if (c.bos_token_id >= c.vocab_size || c.eos_token_id >= c.vocab_size) {
    return FieldError("bos_token_id", "bos/eos token id outside the vocabulary");
  }
  return absl::OkStatus();
}

kernels::v4::V4Config ToV4Config(const ModelConfig& c) {
  kernels::v4::V4Config v;
  v.compress_ratios.assign(c.compress_ratios.begin(), c.compress_ratios.end());
  v.sliding_window = static_cast<int>(c.sliding_window);
  v.head_dim = static_cast<int>(c.head_dim);
  v.rope_dim = static_cast<int>(c.qk_rope_head_dim);
  v.nope_dim = v.head_dim - v.rope_dim;
  v.n_heads = static_cast<int>(c.num_attention_heads);
  v.index_n_heads = static_cast<int>(c.index_n_heads);
  v.index_head_dim = static_cast<int>(c.index_head_dim);
  v.index_topk = static_cast<int>(c.index_topk);
  v.o_groups = static_cast<int>(c.o_groups);
  v.o_lora_rank = static_cast<int>(c.o_lora_rank);
  v.rms_eps = static_cast<float>(c.rms_norm_eps);
  v.compress_rope_theta = c.compress_rope_theta;
  if (c.rope_scaling) {
    v.compress_rope_factor = c.rope_scaling->factor;
    v.compress_rope_original_max_position = c.rope_scaling->original_max_position_embeddings;
    v.compress_rope_beta_fast = c.rope_scaling->beta_fast;
    v.compress_rope_beta_slow = c.rope_scaling->beta_slow;
  } else {
    v.compress_rope_factor = 1.0;
  }
  v.main_rope_theta = c.rope_theta;
  return v;
}

absl::Status ValidateV4ForRuntime(const ModelConfig& c) {
  if (!c.IsV4()) {
    return FieldError("model_type", kv::StrCat("= '", c.model_type, "' is not deepseek_v4"));
  }
  if (c.HasMoeLayers()) {
    return absl::UnimplementedError(
        "config.json: field 'n_routed_experts': mixture-of-experts layers are not supported "
        "by the V4 runtime (dense MLP only)");
  }
  RETURN_IF_ERROR(CheckActivationAndRope(c));
  if (c.q_lora_rank <= 0) {
    return FieldError("q_lora_rank", "must be positive: V4's indexer reads the q latent (§4.4)");
  }
  // v4-fp8-584 holds 448 e4m3 + 64 bf16 per entry, the indexer record 128 e4m3 (§2.2, §4.4).
  if (c.head_dim != 512 || c.qk_rope_head_dim != 64) {
    return FieldError("head_dim",
                      "must be 512 with qk_rope_head_dim 64: v4-fp8-584 holds 448 + 64");
  }
  if (c.index_head_dim != 128) {
    return FieldError("index_head_dim", "must be 128: the indexer record holds 128 e4m3 codes");
  }
  if (static_cast<int64_t>(c.compress_ratios.size()) != c.num_hidden_layers) {
    return FieldError("compress_ratios",
                      kv::StrCat("has ", c.compress_ratios.size(),
                                 " entries; num_hidden_layers = ", c.num_hidden_layers));
  }
  for (int64_t r : c.compress_ratios) {
    if (r != 0 && r != 4 && r != 128) {
      return FieldError("compress_ratios", kv::StrCat("holds ", r, " (must be 0, 4 or 128)"));
    }
  }
  absl::Status s = kernels::v4::ValidateV4Config(ToV4Config(c));
  if (!s.ok()) return FieldError("compress_ratios / V4 geometry", std::string(s.message()));
  if (c.bos_token_id >= c.vocab_size || c.eos_token_id >= c.vocab_size) {
    return FieldError("bos_token_id", "bos/eos token id outside the vocabulary");
  }
  return absl::OkStatus();
}

absl::Status ValidateForAnyRuntime(const ModelConfig& c) {
  return c.IsV4() ? ValidateV4ForRuntime(c) : ValidateForRuntime(c);
}

namespace {
Json ToJson(const ModelConfig& c) {
  Json j = Json::object();
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? Json(c.q_lora_rank) : Json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["intermediate_size"] = c.intermediate_size;
  j["vocab_size"] = c.vocab_size;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["hidden_act"] = c.hidden_act;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["index_topk"] = c.index_topk;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  if (c.rope_scaling) {
    const RopeScaling& r = *c.rope_scaling;
    j["rope_scaling"] = {{"type", r.type},
                         {"factor", r.factor},
                         {"original_max_position_embeddings", r.original_max_position_embeddings},
                         {"beta_fast", r.beta_fast},
                         {"beta_slow", r.beta_slow},
                         {"mscale", r.mscale},
                         {"mscale_all_dim", r.mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (c.IsV4()) {  // V3 configs keep exactly their old fields (and fingerprints)
    j["compress_ratios"] = c.compress_ratios;
    j["head_dim"] = c.head_dim;
    j["sliding_window"] = c.sliding_window;
    j["index_n_heads"] = c.index_n_heads;
    j["index_head_dim"] = c.index_head_dim;
    j["o_groups"] = c.o_groups;
    j["o_lora_rank"] = c.o_lora_rank;
    j["compress_rope_theta"] = c.compress_rope_theta;
  }
  return j;
}
}  // namespace

std::string ToConfigJson(const ModelConfig& c) { return ToJson(c).dump(2) + "\n"; }

// nlohmann::json objects are std::map-backed, so keys come out sorted: a fixed order.
std::string CanonicalJson(const ModelConfig& c) { return ToJson(c).dump(); }

namespace {
ModelConfig TinyV4() {
  ModelConfig c;
  c.model_type = "deepseek_v4";
  c.hidden_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.q_lora_rank = 128;
  // V4's attention geometry (formats.md §4.1, §4.2): K = V = 512 (448 nope + 64 rope),
  // 128-token window, 64 x 128 indexer heads scaled down to 4 x 128.
  c.compress_ratios = {0, 4, 128, 4};  // window-only, CSA, HCA, CSA
  c.head_dim = 512;
  c.qk_rope_head_dim = 64;
  c.sliding_window = 128;
  c.index_n_heads = 4;
  c.index_head_dim = 128;
  c.index_topk = 16;
  c.o_groups = 2;
  c.o_lora_rank = 128;
  c.intermediate_size = 512;
  c.vocab_size = ByteTokenizer::kVocabSize;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;  // main RoPE (window-only layers), no scaling
  c.compress_rope_theta = 160000.0;
  c.rope_scaling = RopeScaling{.type = "yarn",
                               .factor = 16.0,
                               .original_max_position_embeddings = 65536,
                               .beta_fast = 32.0,
                               .beta_slow = 1.0,
                               .mscale = 1.0,
                               .mscale_all_dim = 1.0};
  c.max_position_embeddings = 1048576;
  c.bos_token_id = ByteTokenizer::kBos;
  c.eos_token_id = ByteTokenizer::kEos;
  return c;
}
}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(std::string_view name) {
  if (name == "tiny-v4") return TinyV4();
  if (name != "tiny-v3") {
    return absl::NotFoundError(
        absl::StrCat("unknown model preset '", std::string(name), "' (known: tiny-v3, tiny-v4)"));
  }
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.hidden_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.q_lora_rank = 0;  // direct q projection
  // DeepSeek-V3's KV geometry (formats.md §1.1).
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.intermediate_size = 768;
  c.vocab_size = ByteTokenizer::kVocabSize;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  // V3's YaRN constants (formats.md §1.3).
  c.rope_scaling = RopeScaling{.type = "yarn",
                               .factor = 40.0,
                               .original_max_position_embeddings = 4096,
                               .beta_fast = 32.0,
                               .beta_slow = 1.0,
                               .mscale = 1.0,
                               .mscale_all_dim = 1.0};
  c.max_position_embeddings = 163840;
  c.bos_token_id = ByteTokenizer::kBos;
  c.eos_token_id = ByteTokenizer::kEos;
  return c;
}

}  // namespace kv::model
