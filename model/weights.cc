#include "model/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "kernels/bf16.h"
#include "kernels/fp8.h"
#include "kernels/portable_math.h"
#include "model/safetensors.h"

namespace kv::model {
namespace {

constexpr char kConfigFile[] = "config.json";
constexpr char kWeightsFile[] = "model.safetensors";

// One named tensor: its shape implied by the config, where it goes, and how the seeded
// generator initializes it (normal(mean, std)).
struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  double mean = 0;
  double std = 0;
  std::function<std::vector<float>*(ModelWeights&)> dst;
};

double Fan(int64_t in) { return 1.0 / std::sqrt(static_cast<double>(in)); }

// Where a tensor of layer i goes.
using LayerSlot = std::function<std::function<std::vector<float>*(ModelWeights&)>(
    std::vector<float> LayerWeights::*)>;

// The attention tensors of a DeepSeek V3-style (MLA) layer (formats.md §1.2).
void AddMlaAttentionSpecs(const ModelConfig& c, const std::string& p, const LayerSlot& L,
                          std::vector<Spec>& s) {
  const int64_t d = c.hidden_size, h = c.num_attention_heads, r = c.qk_rope_head_dim;
  const int64_t lat = c.kv_lora_rank, qk = c.qk_head_dim(), v = c.v_head_dim;
  if (c.q_lora_rank == 0) {
    s.push_back({p + "self_attn.q_proj.weight", {h * qk, d}, 0, Fan(d), L(&LayerWeights::q_proj)});
  } else {
    const int64_t q = c.q_lora_rank;
    s.push_back({p + "self_attn.q_a_proj.weight", {q, d}, 0, Fan(d), L(&LayerWeights::q_a_proj)});
    s.push_back({p + "self_attn.q_a_layernorm.weight", {q}, 1, 0.05, L(&LayerWeights::q_a_norm)});
    s.push_back(
        {p + "self_attn.q_b_proj.weight", {h * qk, q}, 0, Fan(q), L(&LayerWeights::q_b_proj)});
  }
  s.push_back({p + "self_attn.kv_a_proj_with_mqa.weight",
               {lat + r, d},
               0,
               Fan(d),
               L(&LayerWeights::kv_a_proj)});
  s.push_back({p + "self_attn.kv_a_layernorm.weight", {lat}, 1, 0.05, L(&LayerWeights::kv_a_norm)});
  s.push_back({p + "self_attn.kv_b_proj.weight",
               {h * (c.qk_nope_head_dim + v), lat},
               0,
               Fan(lat),
               L(&LayerWeights::kv_b_proj)});
  // Output projections are damped so each block adds ~0.5 rms to the residual stream.
  s.push_back(
      {p + "self_attn.o_proj.weight", {d, h * v}, 0, 0.5 * Fan(h * v), L(&LayerWeights::o_proj)});
}

// The attention tensors of a DeepSeek-V4 layer (formats.md §4.2-4.4; names after the HF
// port's modules). Window-only layers have no compressor, HCA layers no indexer.
void AddV4AttentionSpecs(const ModelConfig& c, int64_t i, const std::string& p, const LayerSlot& L,
                         std::vector<Spec>& s) {
  const int64_t d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  const int64_t q = c.q_lora_rank;
  const int64_t g = c.o_groups, ol = c.o_lora_rank, ih = c.index_n_heads, id = c.index_head_dim;
  const int64_t ratio = c.compress_ratios[i];
  s.push_back({p + "self_attn.q_a_proj.weight", {q, d}, 0, Fan(d), L(&LayerWeights::q_a_proj)});
  s.push_back({p + "self_attn.q_a_layernorm.weight", {q}, 1, 0.05, L(&LayerWeights::q_a_norm)});
  s.push_back(
      {p + "self_attn.q_b_proj.weight", {h * hd, q}, 0, Fan(q), L(&LayerWeights::q_b_proj)});
  s.push_back({p + "self_attn.kv_proj.weight", {hd, d}, 0, Fan(d), L(&LayerWeights::kv_proj)});
  s.push_back({p + "self_attn.kv_norm.weight", {hd}, 1, 0.05, L(&LayerWeights::kv_norm)});
  s.push_back({p + "self_attn.sinks", {h}, 0, 1.0, L(&LayerWeights::attn_sink)});
  s.push_back({p + "self_attn.o_a_proj.weight",
               {g * ol, h * hd / g},
               0,
               Fan(h * hd / g),
               L(&LayerWeights::o_a_proj)});
  // Damped so each block adds ~0.5 rms to the residual stream (as for V3).
  s.push_back({p + "self_attn.o_b_proj.weight",
               {d, g * ol},
               0,
               0.5 * Fan(g * ol),
               L(&LayerWeights::o_b_proj)});
  if (ratio > 0) {
    const int64_t w = ratio == 4 ? 2 * hd : hd;
    const std::string cp = p + "self_attn.compressor.";
    s.push_back({cp + "kv_proj.weight", {w, d}, 0, Fan(d), L(&LayerWeights::comp_kv_proj)});
    s.push_back({cp + "gate_proj.weight", {w, d}, 0, Fan(d), L(&LayerWeights::comp_gate_proj)});
    s.push_back({cp + "position_bias", {ratio, w}, 0, 0.5, L(&LayerWeights::comp_bias)});
    s.push_back({cp + "norm.weight", {hd}, 1, 0.05, L(&LayerWeights::comp_norm)});
  }
  if (ratio == 4) {
    const std::string ip = p + "self_attn.indexer.";
    s.push_back({ip + "q_b_proj.weight", {ih * id, q}, 0, Fan(q), L(&LayerWeights::idx_q_b_proj)});
    s.push_back(
        {ip + "weights_proj.weight", {ih, d}, 0, Fan(d), L(&LayerWeights::idx_weights_proj)});
    s.push_back(
        {ip + "compressor.kv_proj.weight", {2 * id, d}, 0, Fan(d), L(&LayerWeights::idx_kv_proj)});
    s.push_back({ip + "compressor.gate_proj.weight",
                 {2 * id, d},
                 0,
                 Fan(d),
                 L(&LayerWeights::idx_gate_proj)});
    s.push_back({ip + "compressor.position_bias", {4, 2 * id}, 0, 0.5, L(&LayerWeights::idx_bias)});
    s.push_back({ip + "compressor.norm.weight", {id}, 1, 0.05, L(&LayerWeights::idx_norm)});
  }
}

// Every tensor of a model, in file order: embedding; per layer the input norm, the
// attention tensors (MLA or V4), the post-attention norm and the dense SwiGLU MLP; the final
// norm and lm_head. The order fixes what the seeded generator gives each tensor.
std::vector<Spec> TensorSpecs(const ModelConfig& c) {
  const int64_t d = c.hidden_size, inter = c.intermediate_size;
  std::vector<Spec> s;
  s.push_back({"model.embed_tokens.weight", {c.vocab_size, d}, 0, 1.0, [](ModelWeights& w) {
                 return &w.embed;
               }});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const LayerSlot L = [i](std::vector<float> LayerWeights::*m) {
      return std::function<std::vector<float>*(ModelWeights&)>(
          [i, m](ModelWeights& w) { return &(w.layers[i].*m); });
    };
    s.push_back({p + "input_layernorm.weight", {d}, 1, 0.05, L(&LayerWeights::input_norm)});
    if (c.IsV4()) {
      AddV4AttentionSpecs(c, i, p, L, s);
    } else {
      AddMlaAttentionSpecs(c, p, L, s);
    }
    s.push_back({p + "post_attention_layernorm.weight", {d}, 1, 0.05, L(&LayerWeights::post_norm)});
    s.push_back({p + "mlp.gate_proj.weight", {inter, d}, 0, Fan(d), L(&LayerWeights::gate_proj)});
    s.push_back({p + "mlp.up_proj.weight", {inter, d}, 0, Fan(d), L(&LayerWeights::up_proj)});
    s.push_back(
        {p + "mlp.down_proj.weight", {d, inter}, 0, 0.5 * Fan(inter), L(&LayerWeights::down_proj)});
  }
  s.push_back({"model.norm.weight", {d}, 1, 0.05, [](ModelWeights& w) { return &w.final_norm; }});
  if (!c.tie_word_embeddings) {
    // Logits come out with std ~2: peaked enough that greedy decoding is meaningful.
    s.push_back({"lm_head.weight", {c.vocab_size, d}, 0, 2.0 * Fan(d), [](ModelWeights& w) {
                   return &w.lm_head;
                 }});
  }
  return s;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// DeepSeek's FP8 checkpoints: one inverse scale per 128x128 block of a 2-D weight.
absl::Status DequantFp8(const SafetensorsFile& f, const TensorInfo& t, std::vector<float>* out) {
  const std::string sname = t.name + "_scale_inv";
  const TensorInfo* s = f.Find(sname);
  if (s == nullptr || t.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", t.name, "' is F8_E4M3 but has no 2-D block scale '", sname, "'"));
  }
  const int64_t rows = t.shape[0], cols = t.shape[1];
  const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
  if (s->shape != std::vector<int64_t>{sr, sc} || s->dtype == DType::kF8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", sname, "' must be F32/BF16 of shape ", ShapeString({sr, sc})));
  }
  std::vector<float> scale(sr * sc);
  auto sb = f.Bytes(*s);
  for (int64_t i = 0; i < sr * sc; ++i) {
    if (s->dtype == DType::kF32) {
      std::memcpy(&scale[i], sb.data() + 4 * i, 4);
    } else {
      uint16_t b;
      std::memcpy(&b, sb.data() + 2 * i, 2);
      scale[i] = kernels::Bf16ToFloat(b);
    }
  }
  auto codes = f.Bytes(t);
  out->resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      (*out)[r * cols + c] =
          kernels::E4m3ToFloat(codes[r * cols + c]) * scale[(r / 128) * sc + c / 128];
    }
  }
  return absl::OkStatus();
}

absl::Status LoadTensor(const SafetensorsFile& f, const Spec& spec, std::vector<float>* out) {
  const TensorInfo* t = f.Find(spec.name);
  if (t == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name, "' is missing"));
  }
  if (t->shape != spec.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", spec.name, "' has shape ", ShapeString(t->shape),
                     " but config.json implies ", ShapeString(spec.shape)));
  }
  auto bytes = f.Bytes(*t);
  const int64_t n = t->numel();
  switch (t->dtype) {
    case DType::kF32:
      out->resize(n);
      std::memcpy(out->data(), bytes.data(), n * 4);
      break;
    case DType::kBF16: {
      std::vector<uint16_t> raw(n);
      std::memcpy(raw.data(), bytes.data(), n * 2);
      out->resize(n);
      kernels::Bf16ToFloat(raw.data(), out->data(), n);
      break;
    }
    case DType::kF8E4M3:
      RETURN_IF_ERROR(DequantFp8(f, *t, out));
      break;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite((*out)[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", spec.name, "' element ", i, " is not finite"));
    }
  }
  return absl::OkStatus();
}

Digest256 Fingerprint(const ModelConfig& c, const SafetensorsFile& f) {
  auto framed = [](Sha256& h, std::string_view s) {
    uint64_t n = s.size();
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    h.Update(len, 8);
    h.Update(s);
  };
  auto data = f.data_section();
  Digest256 data_hash = Sha256Of(data.data(), data.size());
  Sha256 h;
  framed(h, "kvstrata/model/v1");
  framed(h, CanonicalJson(c));
  framed(h, f.header_json());
  framed(h, std::string_view(reinterpret_cast<const char*>(data_hash.data()), data_hash.size()));
  return h.Final();
}

struct Opened {
  ModelConfig config;
  std::unique_ptr<SafetensorsFile> file;
};

absl::StatusOr<Opened> OpenDir(const std::string& dir) {
  Opened o;
  ASSIGN_OR_RETURN(o.config, LoadModelConfig(dir + "/" + kConfigFile));
  RETURN_IF_ERROR(ValidateForAnyRuntime(o.config));
  ASSIGN_OR_RETURN(o.file, SafetensorsFile::Open(dir + "/" + kWeightsFile));
  return o;
}

// Seeded standard normals: SplitMix64 uniforms through Box-Muller, all in double.
class NormalStream {
 public:
  explicit NormalStream(uint64_t seed) : state_(seed) {}
  double Next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    double u1 = (static_cast<double>(Bits() >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    double u2 = static_cast<double>(Bits() >> 11) * 0x1.0p-53;
    // Portable log/sin/cos (kernels/portable_math.h): a seed gives the same weights on every
    // host, so seeded models (tests, golden digests, benchmarks) agree across a fleet.
    const double rad = std::sqrt(-2.0 * kernels::LogD(u1));
    double sn, cs;
    kernels::SinCosD(2 * M_PI * u2, &sn, &cs);
    spare_ = rad * sn;
    have_spare_ = true;
    return rad * cs;
  }

 private:
  uint64_t Bits() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
  double spare_ = 0;
  bool have_spare_ = false;
};

}  // namespace

absl::StatusOr<ModelWeights> LoadModel(const std::string& dir) {
  ASSIGN_OR_RETURN(Opened o, OpenDir(dir));
  ModelWeights w;
  w.config = o.config;
  w.layers.resize(o.config.num_hidden_layers);
  for (const Spec& spec : TensorSpecs(o.config)) {
    absl::Status s = LoadTensor(*o.file, spec, spec.dst(w));
    if (!s.ok()) return kv::Annotate(s, o.file->path());
  }
  if (o.config.tie_word_embeddings) w.lm_head = w.embed;
  w.fingerprint = Fingerprint(o.config, *o.file);
  return w;
}

absl::StatusOr<Digest256> ModelFingerprint(const std::string& dir) {
  ASSIGN_OR_RETURN(Opened o, OpenDir(dir));
  return Fingerprint(o.config, *o.file);
}

absl::Status WriteRandomModel(const ModelConfig& config, uint64_t seed, const std::string& dir) {
  RETURN_IF_ERROR(ValidateForAnyRuntime(config));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create directory ", dir, ": ", ec.message()));
  NormalStream normal(seed);
  std::vector<TensorToWrite> tensors;
  for (const Spec& spec : TensorSpecs(config)) {
    TensorToWrite t{spec.name, DType::kBF16, spec.shape, {}};
    int64_t n = 1;
    for (int64_t dim : spec.shape) n *= dim;
    t.bytes.resize(n * 2);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t b = kernels::FloatToBf16(static_cast<float>(spec.mean + spec.std * normal.Next()));
      std::memcpy(&t.bytes[2 * i], &b, 2);
    }
    tensors.push_back(std::move(t));
  }
  RETURN_IF_ERROR(WriteSafetensors(
      dir + "/" + kWeightsFile, tensors,
      {{"format", "pt"}, {"generator", "kvstrata model init"}, {"seed", std::to_string(seed)}}));
  const std::string path = dir + "/" + kConfigFile;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << ToConfigJson(config);
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("write ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace kv::model
