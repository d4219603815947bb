#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/blas.h"
#include "kernels/mla_attention.h"
#include "kernels/paged_kv.h"
#include "kernels/portable_math.h"
#include "kernels/rmsnorm.h"

namespace kv::model {

using kernels::kMlaKeyDim;
using kernels::kMlaLatentDim;

// Activations of one chunk of m tokens, row-major.
struct Transformer::Workspace {
  Workspace(const ModelConfig& c, int64_t m)
      : x(m * c.hidden_size),
        h(m * c.hidden_size),
        q(m * c.num_attention_heads * c.qk_head_dim()),
        q_lora(m * std::max<int64_t>(c.q_lora_rank, 1)),
        kv(m * kMlaKeyDim),
        q_abs(m * c.num_attention_heads * kMlaKeyDim),
        latent_out(m * c.num_attention_heads * kMlaLatentDim),
        attn(m * c.num_attention_heads * c.v_head_dim),
        gate(m * c.intermediate_size),
        up(m * c.intermediate_size),
        proj(m * c.hidden_size),
        positions(m) {}
  std::vector<float> x, h, q, q_lora, kv, q_abs, latent_out, attn, gate, up, proj;
  std::vector<int64_t> positions;
};

namespace {
kernels::YarnRopeParams RopeParams(const ModelConfig& c) {
  kernels::YarnRopeParams p;
  p.theta = c.rope_theta;
  p.rope_dim = static_cast<int>(c.qk_rope_head_dim);
  if (c.rope_scaling) {
    p.factor = c.rope_scaling->factor;
    p.original_max_position = c.rope_scaling->original_max_position_embeddings;
    p.beta_fast = c.rope_scaling->beta_fast;
    p.beta_slow = c.rope_scaling->beta_slow;
    p.mscale = c.rope_scaling->mscale;
    p.mscale_all_dim = c.rope_scaling->mscale_all_dim;
  } else {
    p.factor = 1.0;  // no YaRN: plain RoPE, softmax scale qk_head_dim^-0.5
  }
  return p;
}

// x += y, elementwise over n values.
void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}
}  // namespace

Transformer::Transformer(ModelWeights weights, kernels::RopeTable rope, float softmax_scale)
    : w_(std::move(weights)), rope_(std::move(rope)), softmax_scale_(softmax_scale) {}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(
    ModelWeights weights, const TransformerOptions& options) {
  const ModelConfig& c = weights.config;
  RETURN_IF_ERROR(ValidateForRuntime(c));
  const kernels::YarnRopeParams rp = RopeParams(c);
  ASSIGN_OR_RETURN(float scale, kernels::MlaSoftmaxScale(rp, static_cast<int>(c.qk_head_dim())));
  int64_t max_context = options.max_context;
  if (max_context <= 0) max_context = std::min<int64_t>(c.max_position_embeddings, 32768);
  ASSIGN_OR_RETURN(kernels::RopeTable rope, kernels::BuildRopeTable(rp, max_context));
  std::unique_ptr<Transformer> t(new Transformer(std::move(weights), std::move(rope), scale));
  RETURN_IF_ERROR(t->PackWeights(options));
  return t;
}

absl::Status Transformer::PackWeights(const TransformerOptions& options) {
  const ModelConfig& c = w_.config;
  const int64_t d = c.hidden_size, nh = c.num_attention_heads, qk = c.qk_head_dim();
  const int64_t nope = c.qk_nope_head_dim, vd = c.v_head_dim, inter = c.intermediate_size;
  mm_ = MatmulContext{.pool = options.pool, .blas_baseline = options.blas_baseline};
  std::vector<Projection*> all;
  auto weight = [&](Projection* p, const std::vector<float>& w, int64_t n, int64_t k) {
    ASSIGN_OR_RETURN(*p, Projection::FromWeight(w.data(), n, k));
    all.push_back(p);
    return absl::OkStatus();
  };
  proj_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = w_.layers[l];
    LayerProjections& P = proj_[l];
    if (c.q_lora_rank == 0) {
      RETURN_IF_ERROR(weight(&P.q, L.q_proj, nh * qk, d));
    } else {
      RETURN_IF_ERROR(weight(&P.q_a, L.q_a_proj, c.q_lora_rank, d));
      RETURN_IF_ERROR(weight(&P.q_b, L.q_b_proj, nh * qk, c.q_lora_rank));
    }
    RETURN_IF_ERROR(weight(&P.kv_a, L.kv_a_proj, kMlaKeyDim, d));
    RETURN_IF_ERROR(weight(&P.o, L.o_proj, d, nh * vd));
    RETURN_IF_ERROR(weight(&P.gate, L.gate_proj, inter, d));
    RETURN_IF_ERROR(weight(&P.up, L.up_proj, inter, d));
    RETURN_IF_ERROR(weight(&P.down, L.down_proj, d, inter));
    P.uk.resize(nh);
    P.uv.resize(nh);
    for (int64_t hd = 0; hd < nh; ++hd) {
      const float* head = L.kv_b_proj.data() + hd * (nope + vd) * kMlaLatentDim;
      ASSIGN_OR_RETURN(P.uk[hd], Projection::FromMatrix(head, nope, kMlaLatentDim, kMlaLatentDim));
      ASSIGN_OR_RETURN(P.uv[hd], Projection::FromWeight(head + nope * kMlaLatentDim, vd,
                                                        kMlaLatentDim, kMlaLatentDim));
      all.push_back(&P.uk[hd]);
      all.push_back(&P.uv[hd]);
    }
  }
  RETURN_IF_ERROR(weight(&lm_head_, w_.lm_head, c.vocab_size, d));
  if (options.blas_baseline) {
    for (Projection* p : all) p->KeepUnpacked();
    return absl::OkStatus();
  }
  // The packed copies are what the forward reads: free the originals.
  for (LayerWeights& L : w_.layers) {
    for (std::vector<float>* v : {&L.q_proj, &L.q_a_proj, &L.q_b_proj, &L.kv_a_proj, &L.kv_b_proj,
                                  &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj}) {
      std::vector<float>().swap(*v);
    }
  }
  std::vector<float>().swap(w_.lm_head);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Load(const std::string& dir,
                                                               const TransformerOptions& options) {
  ASSIGN_OR_RETURN(ModelWeights w, LoadModel(dir));
  return Create(std::move(w), options);
}

absl::StatusOr<std::unique_ptr<KvCache>> Transformer::NewCache(kernels::KvLayout layout,
                                                               int64_t max_tokens) const {
  if (max_tokens <= 0) return absl::InvalidArgumentError("NewCache: max_tokens must be > 0");
  KvCacheOptions o;
  o.layout = layout;
  o.num_layers = static_cast<int>(config().num_hidden_layers);
  o.max_blocks = (max_tokens + o.page_tokens - 1) / o.page_tokens;
  return KvCache::Create(o);
}

absl::StatusOr<std::vector<float>> Transformer::Prefill(std::span<const int32_t> tokens,
                                                        int64_t start_pos, KvCache* kv,
                                                        const PrefillOptions& options,
                                                        ForwardTrace* trace) const {
  if (options.chunk_tokens <= 0) {
    return absl::InvalidArgumentError("Prefill: chunk_tokens must be > 0");
  }
  return Run(tokens, start_pos, &options, kv, options.chunk_tokens, /*decode=*/false, trace);
}

absl::StatusOr<std::vector<float>> Transformer::DecodeStep(int32_t token, int64_t pos, KvCache* kv,
                                                           ForwardTrace* trace) const {
  return Run(std::span<const int32_t>(&token, 1), pos, nullptr, kv, 1, /*decode=*/true, trace);
}

absl::StatusOr<std::vector<float>> Transformer::Run(std::span<const int32_t> tokens,
                                                    int64_t start_pos,
                                                    const PrefillOptions* options, KvCache* kv,
                                                    int64_t chunk, bool decode,
                                                    ForwardTrace* trace) const {
  const ModelConfig& c = config();
  if (kv == nullptr) return absl::InvalidArgumentError("forward: null KV cache");
  if (tokens.empty()) return absl::InvalidArgumentError("forward: no tokens");
  if (kv->options().num_layers != c.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("forward: KV cache has ",
                                                   kv->options().num_layers, " layers, the model ",
                                                   c.num_hidden_layers));
  }
  if (kv->num_tokens() != start_pos) {
    return absl::FailedPreconditionError(absl::StrCat("forward: start position ", start_pos,
                                                      " but the cache holds ", kv->num_tokens(),
                                                      " tokens"));
  }
  const int64_t end = start_pos + static_cast<int64_t>(tokens.size());
  if (end > max_context()) {
    return absl::OutOfRangeError(
        absl::StrCat("forward: position ", end - 1, " is past the context limit ", max_context()));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("forward: token ", tokens[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  RETURN_IF_ERROR(kv->Reserve(end));
  Workspace ws(c, std::min<int64_t>(chunk, static_cast<int64_t>(tokens.size())));
  for (int64_t s = 0; s < static_cast<int64_t>(tokens.size()); s += chunk) {
    const int64_t n = std::min<int64_t>(chunk, tokens.size() - s);
    absl::Status st = RunChunk(tokens.subspan(s, n), start_pos + s, kv, options, decode, ws, trace);
    if (st.ok()) st = kv->Commit(start_pos + s + n);
    if (!st.ok()) {
      (void)kv->Truncate(start_pos);  // the original status is the one to report
      return st;
    }
  }
  const int64_t last = (static_cast<int64_t>(tokens.size()) - 1) % chunk;
  return Logits(ws.x.data() + last * c.hidden_size);
}

absl::Status Transformer::RunChunk(std::span<const int32_t> tokens, int64_t start_pos, KvCache* kv,
                                   const PrefillOptions* options, bool decode, Workspace& ws,
                                   ForwardTrace* trace) const {
  const ModelConfig& c = config();
  const int64_t m = static_cast<int64_t>(tokens.size()), d = c.hidden_size;
  for (int64_t i = 0; i < m; ++i) {
    std::memcpy(&ws.x[i * d], &w_.embed[tokens[i] * d], d * sizeof(float));
    ws.positions[i] = start_pos + i;
  }
  if (trace != nullptr) {
    trace->attn_latent.assign(c.num_hidden_layers * c.num_attention_heads * kMlaLatentDim, 0.f);
  }
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    RETURN_IF_ERROR(Attention(layer, m, start_pos, kv, decode, ws, trace));
    if (options != nullptr && options->on_layer) {
      RETURN_IF_ERROR(options->on_layer(layer, start_pos, m));
    }
    RETURN_IF_ERROR(Mlp(layer, m, ws));
  }
  return absl::OkStatus();
}

// Attention block: x += W_o · MLA(RMSNorm(x)), writing this chunk's KV records first.
// Projections of one chunk: ws.q (post-RoPE on the rope dims) and ws.kv = [c | k_R] rows.
absl::Status Transformer::ProjectQkv(int layer, int64_t m, Workspace& ws) const {
  const ModelConfig& c = config();
  const LayerWeights& L = w_.layers[layer];
  const LayerProjections& P = proj_[layer];
  const int64_t d = c.hidden_size, nh = c.num_attention_heads, qk = c.qk_head_dim();
  const float eps = static_cast<float>(c.rms_norm_eps);
  RETURN_IF_ERROR(kernels::RmsNorm(ws.x.data(), m, d, d, L.input_norm.data(), eps, ws.h.data(), d));
  // Queries: q = W_q h, or W_qb RMSNorm(W_qa h).
  if (c.q_lora_rank == 0) {
    RETURN_IF_ERROR(P.q.Apply(ws.h.data(), m, ws.q.data(), mm_));
  } else {
    const int64_t r = c.q_lora_rank;
    RETURN_IF_ERROR(P.q_a.Apply(ws.h.data(), m, ws.q_lora.data(), mm_));
    RETURN_IF_ERROR(
        kernels::RmsNorm(ws.q_lora.data(), m, r, r, L.q_a_norm.data(), eps, ws.q_lora.data(), r));
    RETURN_IF_ERROR(P.q_b.Apply(ws.q_lora.data(), m, ws.q.data(), mm_));
  }
  // Compressed KV: [c̃ | k̃_R] = W_kva h; c = RMSNorm(c̃) (latent only); k_R = RoPE(k̃_R).
  RETURN_IF_ERROR(P.kv_a.Apply(ws.h.data(), m, ws.kv.data(), mm_));
  RETURN_IF_ERROR(kernels::RmsNorm(ws.kv.data(), m, kMlaLatentDim, kMlaKeyDim, L.kv_a_norm.data(),
                                   eps, ws.kv.data(), kMlaKeyDim));
  RETURN_IF_ERROR(kernels::ApplyRope(rope_, ws.positions.data(), m, 1, ws.kv.data() + kMlaLatentDim,
                                     kMlaKeyDim, 0));
  return kernels::ApplyRope(rope_, ws.positions.data(), m, static_cast<int>(nh),
                            ws.q.data() + c.qk_nope_head_dim, nh * qk, qk);
}

// Attention block: x += W_o · MLA(RMSNorm(x)), writing this chunk's KV records first.
absl::Status Transformer::Attention(int layer, int64_t m, int64_t start_pos, KvCache* kv,
                                    bool decode, Workspace& ws, ForwardTrace* trace) const {
  const ModelConfig& c = config();
  const LayerProjections& P = proj_[layer];
  const int64_t nh = c.num_attention_heads, qk = c.qk_head_dim();
  const int64_t nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  RETURN_IF_ERROR(ProjectQkv(layer, m, ws));
  // Write this chunk's records into the pages, then attend over what the pages hold.
  const kernels::PagedKvView view = kv->LayerView(layer);
  ASSIGN_OR_RETURN(std::vector<int64_t> slots, kv->Slots(start_pos, m));
  RETURN_IF_ERROR(kernels::AppendMlaTokens(
      view, slots.data(), m,
      kernels::MlaSourceF32{ws.kv.data(), kMlaKeyDim, ws.kv.data() + kMlaLatentDim, kMlaKeyDim}));
  // Absorbed query per head: [W_UK_hᵀ q_C_h (512) | q_R_h (64)] (formats.md §1.4).
  for (int64_t hd = 0; hd < nh; ++hd) {
    RETURN_IF_ERROR(P.uk[hd].Apply(ws.q.data() + hd * qk, m, nh * qk,
                                   ws.q_abs.data() + hd * kMlaKeyDim, nh * kMlaKeyDim, mm_));
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(&ws.q_abs[(i * nh + hd) * kMlaKeyDim + kMlaLatentDim],
                  &ws.q[i * nh * qk + hd * qk + nope], c.qk_rope_head_dim * sizeof(float));
    }
  }
  const int heads = static_cast<int>(nh);
  if (mm_.blas_baseline) {  // the pre-#13 path, for benchmarks only (model/projection.h)
    RETURN_IF_ERROR(kernels::BlasMlaPagedAttention(ws.q_abs.data(), m, heads, start_pos, view,
                                                   softmax_scale_, ws.latent_out.data()));
  } else if (decode) {
    RETURN_IF_ERROR(kernels::MlaDecodeAttention(ws.q_abs.data(), heads, view, start_pos + 1,
                                                softmax_scale_, ws.latent_out.data(), nullptr,
                                                mm_.pool));
  } else {
    RETURN_IF_ERROR(kernels::MlaPagedAttention(ws.q_abs.data(), m, heads, start_pos, view,
                                               softmax_scale_, ws.latent_out.data(), nullptr,
                                               mm_.pool));
  }
  if (trace != nullptr) {
    std::memcpy(&trace->attn_latent[layer * nh * kMlaLatentDim],
                &ws.latent_out[(m - 1) * nh * kMlaLatentDim], nh * kMlaLatentDim * sizeof(float));
  }
  // o_h = W_UV_h ō_h, then x += W_o [o_1; ...; o_H].
  for (int64_t hd = 0; hd < nh; ++hd) {
    RETURN_IF_ERROR(P.uv[hd].Apply(ws.latent_out.data() + hd * kMlaLatentDim, m, nh * kMlaLatentDim,
                                   ws.attn.data() + hd * vd, nh * vd, mm_));
  }
  RETURN_IF_ERROR(P.o.Apply(ws.attn.data(), m, ws.proj.data(), mm_));
  AddInPlace(ws.x.data(), ws.proj.data(), m * c.hidden_size);
  return absl::OkStatus();
}

// SwiGLU MLP: x += W_down (silu(W_gate h) ⊙ W_up h), h = RMSNorm(x).
absl::Status Transformer::Mlp(int layer, int64_t m, Workspace& ws) const {
  const ModelConfig& c = config();
  const LayerWeights& L = w_.layers[layer];
  const LayerProjections& P = proj_[layer];
  const int64_t d = c.hidden_size, inter = c.intermediate_size;
  RETURN_IF_ERROR(kernels::RmsNorm(ws.x.data(), m, d, d, L.post_norm.data(),
                                   static_cast<float>(c.rms_norm_eps), ws.h.data(), d));
  RETURN_IF_ERROR(P.gate.Apply(ws.h.data(), m, ws.gate.data(), mm_));
  RETURN_IF_ERROR(P.up.Apply(ws.h.data(), m, ws.up.data(), mm_));
  for (int64_t i = 0; i < m * inter; ++i) {
    const float g = ws.gate[i];
    ws.gate[i] = g / (1.0f + kernels::ExpF(-g)) * ws.up[i];
  }
  RETURN_IF_ERROR(P.down.Apply(ws.gate.data(), m, ws.proj.data(), mm_));
  AddInPlace(ws.x.data(), ws.proj.data(), m * d);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Transformer::Logits(const float* x_row) const {
  const ModelConfig& c = config();
  std::vector<float> h(c.hidden_size);
  RETURN_IF_ERROR(kernels::RmsNorm(x_row, 1, c.hidden_size, c.hidden_size, w_.final_norm.data(),
                                   static_cast<float>(c.rms_norm_eps), h.data(), c.hidden_size));
  std::vector<float> logits(c.vocab_size);
  RETURN_IF_ERROR(lm_head_.Apply(h.data(), 1, logits.data(), mm_));
  for (int64_t i = 0; i < c.vocab_size; ++i) {
    if (!std::isfinite(logits[i])) {
      return absl::InternalError(absl::StrCat("forward: logit ", i, " is not finite"));
    }
  }
  return logits;
}

double Transformer::ForwardFlops(const ModelConfig& c, int64_t start_pos, int64_t n) {
  const double d = c.hidden_size, h = c.num_attention_heads, qk = c.qk_head_dim();
  const double lat = kMlaLatentDim, nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  double q = c.q_lora_rank == 0 ? d * h * qk : d * c.q_lora_rank + c.q_lora_rank * h * qk;
  double per_token_layer = q + d * kMlaKeyDim              // projections
                           + h * nope * lat                // W_UK absorption
                           + h * lat * vd                  // W_UV
                           + h * vd * d                    // W_o
                           + 3 * d * c.intermediate_size;  // SwiGLU
  // Causal context: query at position p sees p + 1 keys. Sum over the n queries.
  const double s = static_cast<double>(start_pos), m = static_cast<double>(n);
  const double keys = m * (s + 1) + m * (m - 1) / 2;
  const double attn_per_layer = h * keys * (kMlaKeyDim + lat);
  return 2.0 * (c.num_hidden_layers * (m * per_token_layer + attn_per_layer) + d * c.vocab_size);
}

}  // namespace kv::model
