#include "model/v4_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/bf16.h"
#include "kernels/portable_math.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/v4/indexer.h"
#include "kernels/v4/sparse_attention.h"
#include "kernels/v4/v4_record.h"

namespace kv::model {

namespace v4k = kernels::v4;
using v4k::kIndexerDim;
using v4k::kV4Dim;
using v4k::kV4ScaleBytes;
using v4k::kV4TokenBytes;

namespace {

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

// ---- V4Model ----------------------------------------------------------------------------------

struct V4Model::Workspace {
  Workspace(const ModelConfig& c, int64_t m) {
    const int64_t d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
    x.resize(m * d);
    hn.resize(m * d);
    qlat.resize(m * c.q_lora_rank);
    q.resize(m * h * hd);
    kv.resize(m * hd);
    cc.resize(m * 2 * hd);
    cz.resize(m * 2 * hd);
    ic.resize(m * 2 * c.index_head_dim);
    iz.resize(m * 2 * c.index_head_dim);
    iq.resize(m * c.index_n_heads * c.index_head_dim);
    iw.resize(m * c.index_n_heads);
    o.resize(m * h * hd);
    oa.resize(m * c.o_groups * c.o_lora_rank);
    proj.resize(m * d);
    gate.resize(m * c.intermediate_size);
    up.resize(m * c.intermediate_size);
  }
  std::vector<float> x, hn, qlat, q, kv, cc, cz, ic, iz, iq, iw, o, oa, proj, gate, up;
};

absl::StatusOr<std::unique_ptr<V4Model>> V4Model::Create(ModelWeights weights,
                                                         const V4ModelOptions& options) {
  RETURN_IF_ERROR(ValidateV4ForRuntime(weights.config));
  std::unique_ptr<V4Model> m(new V4Model());
  m->v4_ = ToV4Config(weights.config);
  const ModelConfig& c = weights.config;
  m->max_context_ = options.max_context > 0
                        ? options.max_context
                        : std::min<int64_t>(c.max_position_embeddings, int64_t{1} << 20);
  const int layers = m->v4_.num_layers();
  m->main_comp_.resize(layers);
  m->index_comp_.resize(layers);
  const kernels::YarnRopeParams crope = v4k::CompressRopeParams(m->v4_);
  ASSIGN_OR_RETURN(m->compress_freqs_, kernels::RopeFrequencies(crope));
  for (int l = 0; l < layers; ++l) {
    const LayerWeights& L = weights.layers[l];
    const int ratio = m->v4_.compress_ratios[l];
    ASSIGN_OR_RETURN(kernels::YarnRopeParams rp, v4k::LayerRopeParams(m->v4_, l));
    ASSIGN_OR_RETURN(std::vector<double> f, kernels::RopeFrequencies(rp));
    m->layer_freqs_.push_back(std::move(f));
    if (ratio > 0) {
      v4k::CompressorSpec spec{.ratio = ratio,
                               .dim = m->v4_.head_dim,
                               .rope_dim = m->v4_.rope_dim,
                               .eps = m->v4_.rms_eps};
      auto comp = v4k::Compressor::Create(spec, L.comp_bias, L.comp_norm, crope);
      if (!comp.ok()) return Annotate(comp.status(), kv::StrCat("layer ", l, " compressor"));
      m->main_comp_[l] = *std::move(comp);
    }
    if (ratio == v4k::kCsaRatio) {
      v4k::CompressorSpec spec{.ratio = ratio,
                               .dim = m->v4_.index_head_dim,
                               .rope_dim = m->v4_.rope_dim,
                               .eps = m->v4_.rms_eps};
      auto comp = v4k::Compressor::Create(spec, L.idx_bias, L.idx_norm, crope);
      if (!comp.ok()) return Annotate(comp.status(), kv::StrCat("layer ", l, " indexer"));
      m->index_comp_[l] = *std::move(comp);
    }
  }
  m->ones_.assign(c.head_dim, 1.0f);
  m->w_ = std::move(weights);
  m->mm_ = MatmulContext{.pool = options.pool};
  RETURN_IF_ERROR(m->PackWeights());
  return m;
}

absl::Status V4Model::PackWeights() {
  const ModelConfig& c = w_.config;
  const int64_t d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  const int64_t ql = c.q_lora_rank, ih = c.index_n_heads, id = c.index_head_dim;
  const int64_t g = c.o_groups, ol = c.o_lora_rank, k = h * hd / g, inter = c.intermediate_size;
  auto weight = [](Projection* p, const std::vector<float>& w, int64_t n, int64_t kk) {
    ASSIGN_OR_RETURN(*p, Projection::FromWeight(w.data(), n, kk));
    return absl::OkStatus();
  };
  proj_.resize(v4_.num_layers());
  for (int l = 0; l < v4_.num_layers(); ++l) {
    LayerWeights& L = w_.layers[l];
    LayerProjections& P = proj_[l];
    const int ratio = v4_.compress_ratios[l];
    RETURN_IF_ERROR(weight(&P.q_a, L.q_a_proj, ql, d));
    RETURN_IF_ERROR(weight(&P.q_b, L.q_b_proj, h * hd, ql));
    RETURN_IF_ERROR(weight(&P.kv, L.kv_proj, hd, d));
    if (ratio > 0) {
      const int64_t w = main_comp_[l]->in_width();
      RETURN_IF_ERROR(weight(&P.comp_kv, L.comp_kv_proj, w, d));
      RETURN_IF_ERROR(weight(&P.comp_gate, L.comp_gate_proj, w, d));
    }
    if (ratio == v4k::kCsaRatio) {
      const int64_t w = index_comp_[l]->in_width();
      RETURN_IF_ERROR(weight(&P.idx_kv, L.idx_kv_proj, w, d));
      RETURN_IF_ERROR(weight(&P.idx_gate, L.idx_gate_proj, w, d));
      RETURN_IF_ERROR(weight(&P.idx_q_b, L.idx_q_b_proj, ih * id, ql));
      RETURN_IF_ERROR(weight(&P.idx_w, L.idx_weights_proj, ih, d));
    }
    P.o_a.resize(g);
    for (int64_t gi = 0; gi < g; ++gi) {
      ASSIGN_OR_RETURN(P.o_a[gi], Projection::FromWeight(L.o_a_proj.data() + gi * ol * k, ol, k));
    }
    RETURN_IF_ERROR(weight(&P.o_b, L.o_b_proj, d, g * ol));
    RETURN_IF_ERROR(weight(&P.gate, L.gate_proj, inter, d));
    RETURN_IF_ERROR(weight(&P.up, L.up_proj, inter, d));
    RETURN_IF_ERROR(weight(&P.down, L.down_proj, d, inter));
    // The packed copies are what the forward reads: free the originals.
    for (std::vector<float>* v :
         {&L.q_a_proj, &L.q_b_proj, &L.kv_proj, &L.comp_kv_proj, &L.comp_gate_proj, &L.idx_kv_proj,
          &L.idx_gate_proj, &L.idx_q_b_proj, &L.idx_weights_proj, &L.o_a_proj, &L.o_b_proj,
          &L.gate_proj, &L.up_proj, &L.down_proj}) {
      std::vector<float>().swap(*v);
    }
  }
  RETURN_IF_ERROR(weight(&lm_head_, w_.lm_head, c.vocab_size, d));
  std::vector<float>().swap(w_.lm_head);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<V4Model>> V4Model::Load(const std::string& dir,
                                                       const V4ModelOptions& options) {
  ASSIGN_OR_RETURN(ModelWeights w, LoadModel(dir));
  return Create(std::move(w), options);
}

std::unique_ptr<V4Cache> V4Model::NewCache(V4CacheFormat format) const {
  std::unique_ptr<V4Cache> c(new V4Cache());
  c->format_ = format;
  c->sliding_window_ = v4_.sliding_window;
  c->layers_.resize(v4_.num_layers());
  for (int l = 0; l < v4_.num_layers(); ++l) {
    V4Cache::Layer& L = c->layers_[l];
    L.ratio = v4_.compress_ratios[l];
    if (main_comp_[l]) L.main.emplace(*main_comp_[l]);
    if (index_comp_[l]) L.index.emplace(*index_comp_[l]);
  }
  return c;
}

absl::Status V4Model::StoreKv(V4CacheFormat f, const float* rows, int64_t n,
                              std::vector<float>* values, std::vector<uint8_t>* tok,
                              std::vector<uint8_t>* sc) const {
  if (f == V4CacheFormat::kBf16) {
    for (int64_t i = 0; i < n * kV4Dim; ++i) {
      values->push_back(kernels::Bf16ToFloat(kernels::FloatToBf16(rows[i])));
    }
    return absl::OkStatus();
  }
  const size_t t0 = tok->size(), s0 = sc->size();
  tok->resize(t0 + n * kV4TokenBytes);
  sc->resize(s0 + n * kV4ScaleBytes);
  absl::Status s = v4k::EncodeV4Records(rows, n, tok->data() + t0, sc->data() + s0);
  if (!s.ok()) {
    tok->resize(t0);
    sc->resize(s0);
    return s;
  }
  if (values != nullptr) {
    const size_t v0 = values->size();
    values->resize(v0 + n * kV4Dim);
    v4k::DequantizeV4Records(tok->data() + t0, sc->data() + s0, n, values->data() + v0);
  }
  return absl::OkStatus();
}

absl::Status V4Model::StoreIndexKeys(V4CacheFormat f, const float* rows, int64_t n,
                                     std::vector<float>* values, std::vector<uint8_t>* codes,
                                     std::vector<uint8_t>* scales) const {
  if (f == V4CacheFormat::kBf16) {
    for (int64_t i = 0; i < n * kIndexerDim; ++i) {
      values->push_back(kernels::Bf16ToFloat(kernels::FloatToBf16(rows[i])));
    }
    return absl::OkStatus();
  }
  const size_t c0 = codes->size(), s0 = scales->size();
  codes->resize(c0 + n * kIndexerDim);
  scales->resize(s0 + n * 4);
  absl::Status s = v4k::EncodeIndexerRecords(rows, n, codes->data() + c0, scales->data() + s0);
  if (!s.ok()) {
    codes->resize(c0);
    scales->resize(s0);
  }
  return s;
}

absl::StatusOr<std::vector<float>> V4Model::Prefill(std::span<const int32_t> tokens,
                                                    int64_t start_pos, V4Cache* cache,
                                                    const V4PrefillOptions& options,
                                                    V4Trace* trace) const {
  const ModelConfig& c = config();
  if (cache == nullptr) return absl::InvalidArgumentError("v4 prefill: null cache");
  if (tokens.empty()) return absl::InvalidArgumentError("v4 prefill: no tokens");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(kv::StrCat("v4 prefill: token ", i, " id ", tokens[i],
                                                   " outside the vocabulary [0, ", c.vocab_size,
                                                   ")"));
    }
  }
  if (static_cast<int>(cache->layers_.size()) != v4_.num_layers()) {
    return absl::InvalidArgumentError(kv::StrCat("v4 prefill: cache has ", cache->layers_.size(),
                                                 " layers, the model ", v4_.num_layers()));
  }
  if (cache->broken_) {
    return absl::FailedPreconditionError(
        "v4 prefill: an earlier forward failed half-way; the cache must be discarded");
  }
  if (cache->import_end_ >= 0) {
    return absl::FailedPreconditionError(kv::StrCat(
        "v4 prefill: an import to token ", cache->import_end_, " is under way (FinishImport)"));
  }
  if (cache->num_tokens_ != start_pos) {
    return absl::FailedPreconditionError(kv::StrCat("v4 prefill: start_pos ", start_pos,
                                                    " but the cache holds ", cache->num_tokens_,
                                                    " tokens"));
  }
  if (!cache->continuable_) {
    return absl::FailedPreconditionError(kv::StrCat(
        "v4 prefill: cannot continue from token ", start_pos,
        ": the last imported page has no resume section (window KV and compressor state), so "
        "the state at its end is unknown; import a page with one or recompute"));
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (start_pos + n > max_context_) {
    return absl::OutOfRangeError(kv::StrCat("v4 prefill: positions up to ", start_pos + n,
                                            " exceed max_context ", max_context_));
  }
  const bool keep = cache->format_ == V4CacheFormat::kFp8 && options.keep_page_resume;
  if (keep && start_pos > 0 && start_pos % kV4PageTokens == 0 &&
      !cache->resume_at_.count(start_pos)) {
    // The state at an imported page end, kept before it moves on (FinishImport does not copy
    // the page's resume section).
    cache->resume_at_[start_pos] = cache->SerializeResume();
  }
  const int64_t chunk = std::max<int64_t>(1, options.chunk_tokens);
  int64_t done = 0;
  V4Trace local;
  while (done < n) {
    const int64_t pos = start_pos + done;
    // Chunks end at page ends so the state there can be snapshotted for a resume section.
    const int64_t to_page_end = kV4PageTokens - pos % kV4PageTokens;
    const int64_t m = std::min({chunk, n - done, to_page_end});
    Workspace ws(c, m);
    absl::Status s = RunChunk(tokens.subspan(done, m), pos, cache, ws, trace ? &local : nullptr,
                              options.on_layer);
    if (!s.ok()) {
      cache->broken_ = true;
      return s;
    }
    done += m;
    if (cache->num_tokens_ % kV4PageTokens == 0 && keep) {
      cache->resume_at_[cache->num_tokens_] = cache->SerializeResume();
    }
    if (done == n) {
      if (trace) *trace = std::move(local);
      return Logits(ws.x.data() + (m - 1) * c.hidden_size);
    }
  }
  return absl::InternalError("v4 prefill: unreachable");
}

absl::StatusOr<std::vector<float>> V4Model::DecodeStep(int32_t token, int64_t pos, V4Cache* cache,
                                                       V4Trace* trace) const {
  const int32_t t[1] = {token};
  return Prefill(t, pos, cache, {}, trace);
}

absl::Status V4Model::RunChunk(std::span<const int32_t> tokens, int64_t start_pos, V4Cache* cache,
                               Workspace& ws, V4Trace* trace, const V4LayerHook& on_layer) const {
  const ModelConfig& c = config();
  const int64_t m = static_cast<int64_t>(tokens.size()), d = c.hidden_size;
  for (int64_t t = 0; t < m; ++t) {
    std::memcpy(&ws.x[t * d], &w_.embed[tokens[t] * d], d * sizeof(float));
  }
  if (trace) trace->attn_out.assign(v4_.num_layers() * c.num_attention_heads * c.head_dim, 0.0f);
  for (int l = 0; l < v4_.num_layers(); ++l) {
    RETURN_IF_ERROR(Attention(l, m, start_pos, cache, ws, trace));
    RETURN_IF_ERROR(Mlp(l, m, ws));
    if (on_layer) RETURN_IF_ERROR(on_layer(l, start_pos, m));
  }
  cache->num_tokens_ = start_pos + m;
  return absl::OkStatus();
}

absl::Status V4Model::Attention(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                Workspace& ws, V4Trace* trace) const {
  const ModelConfig& c = config();
  const int64_t h = c.num_attention_heads, hd = c.head_dim;
  RETURN_IF_ERROR(ProjectQueryAndKv(layer, m, start_pos, cache, ws));
  RETURN_IF_ERROR(AppendCompressed(layer, m, start_pos, cache, ws));
  RETURN_IF_ERROR(AttendChunk(layer, m, start_pos, cache, ws));
  if (trace) {
    std::memcpy(&trace->attn_out[layer * h * hd], &ws.o[(m - 1) * h * hd], h * hd * sizeof(float));
  }
  // Keep (at least) the last sliding_window rows for the next call.
  cache->TrimWindow(cache->layers_[layer], std::min<int64_t>(v4_.sliding_window, start_pos + m));
  return OutputProjection(layer, m, ws);
}

absl::Status V4Model::ProjectQueryAndKv(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                        Workspace& ws) const {
  const ModelConfig& c = config();
  const LayerWeights& L = w_.layers[layer];
  const LayerProjections& P = proj_[layer];
  V4Cache::Layer& C = cache->layers_[layer];
  const int64_t d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  const int64_t ql = c.q_lora_rank, rd = c.qk_rope_head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const std::vector<double>& freqs = layer_freqs_[layer];

  RETURN_IF_ERROR(
      kernels::RmsNorm(ws.x.data(), m, d, d, L.input_norm.data(), eps, ws.hn.data(), d));
  // q (§4.2): q_b(RMSNorm(q_a h)), unweighted RMSNorm per head, RoPE on the trailing 64.
  RETURN_IF_ERROR(P.q_a.Apply(ws.hn.data(), m, ws.qlat.data(), mm_));
  RETURN_IF_ERROR(
      kernels::RmsNorm(ws.qlat.data(), m, ql, ql, L.q_a_norm.data(), eps, ws.qlat.data(), ql));
  RETURN_IF_ERROR(P.q_b.Apply(ws.qlat.data(), m, ws.q.data(), mm_));
  RETURN_IF_ERROR(kernels::RmsNorm(ws.q.data(), m * h, hd, hd, ones_.data(), eps, ws.q.data(), hd));
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t hh = 0; hh < h; ++hh) {
      v4k::ApplyTrailingRope(freqs, start_pos + t, static_cast<int>(hd), static_cast<int>(rd),
                             &ws.q[(t * h + hh) * hd]);
    }
  }
  // kv = RMSNorm(kv_proj h), RoPE at its position; K = V. Stored through the cache format
  // into the window (the current chunk's rows first, so queries read them back).
  RETURN_IF_ERROR(P.kv.Apply(ws.hn.data(), m, ws.kv.data(), mm_));
  RETURN_IF_ERROR(
      kernels::RmsNorm(ws.kv.data(), m, hd, hd, L.kv_norm.data(), eps, ws.kv.data(), hd));
  for (int64_t t = 0; t < m; ++t) {
    v4k::ApplyTrailingRope(freqs, start_pos + t, static_cast<int>(hd), static_cast<int>(rd),
                           &ws.kv[t * hd]);
  }
  cache->DecodeWindow(C);  // an imported window has records only until now
  return StoreKv(cache->format_, ws.kv.data(), m, &C.window, &C.window_tok, &C.window_sc);
}

// Compressed entries closed by this chunk (§4.3), then the indexer keys and queries (§4.4).
absl::Status V4Model::AppendCompressed(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                       Workspace& ws) const {
  const ModelConfig& c = config();
  const LayerProjections& P = proj_[layer];
  V4Cache::Layer& C = cache->layers_[layer];
  const int ratio = v4_.compress_ratios[layer];
  const int64_t ih = c.index_n_heads, id = c.index_head_dim, rd = c.qk_rope_head_dim;
  if (ratio > 0) {
    RETURN_IF_ERROR(P.comp_kv.Apply(ws.hn.data(), m, ws.cc.data(), mm_));
    RETURN_IF_ERROR(P.comp_gate.Apply(ws.hn.data(), m, ws.cz.data(), mm_));
    std::vector<float> fresh;
    RETURN_IF_ERROR(C.main->Append(*main_comp_[layer], ws.cc.data(), ws.cz.data(), m, &fresh));
    RETURN_IF_ERROR(StoreKv(
        cache->format_, fresh.data(), static_cast<int64_t>(fresh.size()) / kV4Dim,
        cache->format_ == V4CacheFormat::kBf16 ? &C.entries : nullptr, &C.entry_tok, &C.entry_sc));
  }
  if (ratio != v4k::kCsaRatio) return absl::OkStatus();
  RETURN_IF_ERROR(P.idx_kv.Apply(ws.hn.data(), m, ws.ic.data(), mm_));
  RETURN_IF_ERROR(P.idx_gate.Apply(ws.hn.data(), m, ws.iz.data(), mm_));
  std::vector<float> fresh;
  RETURN_IF_ERROR(C.index->Append(*index_comp_[layer], ws.ic.data(), ws.iz.data(), m, &fresh));
  RETURN_IF_ERROR(StoreIndexKeys(cache->format_, fresh.data(),
                                 static_cast<int64_t>(fresh.size()) / kIndexerDim, &C.index_keys,
                                 &C.key_codes, &C.key_sc));
  RETURN_IF_ERROR(P.idx_q_b.Apply(ws.qlat.data(), m, ws.iq.data(), mm_));
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t hh = 0; hh < ih; ++hh) {
      v4k::ApplyTrailingRope(compress_freqs_, start_pos + t, static_cast<int>(id),
                             static_cast<int>(rd), &ws.iq[(t * ih + hh) * id]);
    }
  }
  return P.idx_w.Apply(ws.hn.data(), m, ws.iw.data(), mm_);
}

// Indexer scores and top-k for queries [t0, t0 + n): FP8 keys are scored for the whole group
// at once (each key block dequantized once), bf16 keys per query; the same bits either way.
absl::Status V4Model::SelectCsa(int layer, int64_t t0, int64_t n, int64_t start_pos,
                                const V4Cache& cache, const Workspace& ws,
                                std::vector<int32_t>* picks) const {
  const ModelConfig& c = config();
  const V4Cache::Layer& C = cache.layers_[layer];
  const int64_t ih = c.index_n_heads, id = c.index_head_dim, k = v4_.index_topk;
  const int64_t n_entries = cache.num_entries(layer);
  picks->assign(n * k, -1);
  if (n_entries == 0) return absl::OkStatus();
  std::vector<v4k::IndexerQuery> qs(n);
  for (int64_t t = 0; t < n; ++t) {
    qs[t] = {.position = start_pos + t0 + t,
             .n_heads = static_cast<int>(ih),
             .head_dim = static_cast<int>(id),
             .q = &ws.iq[(t0 + t) * ih * id],
             .weights = &ws.iw[(t0 + t) * ih]};
  }
  std::vector<float> scores(n * n_entries);
  if (cache.format_ == V4CacheFormat::kFp8) {
    RETURN_IF_ERROR(v4k::IndexerScoresFp8(qs.data(), n, C.key_codes.data(), C.key_sc.data(),
                                          n_entries, scores.data()));
  } else {
    for (int64_t t = 0; t < n; ++t) {
      RETURN_IF_ERROR(
          v4k::IndexerScores(qs[t], C.index_keys.data(), n_entries, &scores[t * n_entries]));
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    RETURN_IF_ERROR(
        v4k::TopKIndices(&scores[t * n_entries], n_entries, static_cast<int>(k), &(*picks)[t * k]));
  }
  return absl::OkStatus();
}

// The selection and one softmax per query (§4.2). FP8 entries are read as records: when the
// chunk's queries pick fewer rows than the layer holds (decode), the attention dequantizes
// the picked rows; otherwise (prefill chunks, HCA) they are dequantized once for the chunk.
absl::Status V4Model::AttendChunk(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                  Workspace& ws) const {
  constexpr int64_t kQueryGroup = 32;  // queries scored together (scores: 32 × entries)
  const ModelConfig& c = config();
  const V4Cache::Layer& C = cache->layers_[layer];
  const int ratio = v4_.compress_ratios[layer];
  const int64_t h = c.num_attention_heads, hd = c.head_dim, k = v4_.index_topk;
  const int64_t n_entries = cache->num_entries(layer);
  const float* entries = C.entries.data();
  std::vector<float> decoded;
  if (cache->format_ == V4CacheFormat::kFp8) {
    entries = nullptr;
    const int64_t rows_read = ratio == v4k::kCsaRatio ? m * k : m * n_entries;
    if (n_entries > 0 && rows_read >= n_entries) {
      decoded.resize(n_entries * kV4Dim);
      v4k::DequantizeV4Records(C.entry_tok.data(), C.entry_sc.data(), n_entries, decoded.data());
      entries = decoded.data();
    }
  }
  std::vector<int32_t> csa, picks;
  for (int64_t t = 0; t < m; ++t) {
    const int64_t pos = start_pos + t;
    if (ratio == v4k::kCsaRatio && t % kQueryGroup == 0) {
      RETURN_IF_ERROR(
          SelectCsa(layer, t, std::min(kQueryGroup, m - t), start_pos, *cache, ws, &csa));
    }
    picks.clear();
    if (ratio == v4k::kCsaRatio && n_entries > 0) {
      const int32_t* p = &csa[(t % kQueryGroup) * k];
      picks.assign(p, p + k);
    } else if (ratio == v4k::kHcaRatio) {
      picks = v4k::AllVisibleIndices(pos, ratio);  // HCA attends every visible entry (§4.2)
    }
    const int64_t n_window = std::min<int64_t>(v4_.sliding_window, pos + 1);
    const int64_t first_row = pos - n_window + 1 - C.window_start;
    v4k::SparseAttentionArgs a{.position = pos,
                               .n_heads = static_cast<int>(h),
                               .head_dim = static_cast<int>(hd),
                               .rope_dim = static_cast<int>(c.qk_rope_head_dim),
                               .sliding_window = v4_.sliding_window,
                               .q = &ws.q[t * h * hd],
                               .sink = w_.layers[layer].attn_sink.data(),
                               .entries = entries,
                               .entry_tok = C.entry_tok.data(),
                               .entry_sc = C.entry_sc.data(),
                               .n_entries = n_entries,
                               .ratio = ratio,
                               .indices = picks.data(),
                               .n_indices = static_cast<int64_t>(picks.size()),
                               .window = C.window.data() + first_row * hd,
                               .n_window = n_window};
    RETURN_IF_ERROR(v4k::SparseAttention(a, layer_freqs_[layer], &ws.o[t * h * hd]));
  }
  return absl::OkStatus();
}

// Grouped low-rank output (§4.2): group g's heads (H/G × 512) -> o_lora, concat, -> hidden.
absl::Status V4Model::OutputProjection(int layer, int64_t m, Workspace& ws) const {
  const ModelConfig& c = config();
  const LayerProjections& P = proj_[layer];
  const int64_t d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  const int64_t g = c.o_groups, ol = c.o_lora_rank, k = h * hd / g;
  for (int64_t gi = 0; gi < g; ++gi) {
    RETURN_IF_ERROR(
        P.o_a[gi].Apply(ws.o.data() + gi * k, m, h * hd, ws.oa.data() + gi * ol, g * ol, mm_));
  }
  RETURN_IF_ERROR(P.o_b.Apply(ws.oa.data(), m, ws.proj.data(), mm_));
  AddInPlace(ws.x.data(), ws.proj.data(), m * d);
  return absl::OkStatus();
}

// SwiGLU MLP, as model/transformer.cc.
absl::Status V4Model::Mlp(int layer, int64_t m, Workspace& ws) const {
  const ModelConfig& c = config();
  const LayerWeights& L = w_.layers[layer];
  const LayerProjections& P = proj_[layer];
  const int64_t d = c.hidden_size, inter = c.intermediate_size;
  RETURN_IF_ERROR(kernels::RmsNorm(ws.x.data(), m, d, d, L.post_norm.data(),
                                   static_cast<float>(c.rms_norm_eps), ws.hn.data(), d));
  RETURN_IF_ERROR(P.gate.Apply(ws.hn.data(), m, ws.gate.data(), mm_));
  RETURN_IF_ERROR(P.up.Apply(ws.hn.data(), m, ws.up.data(), mm_));
  for (int64_t i = 0; i < m * inter; ++i) {
    const float gv = ws.gate[i];
    ws.gate[i] = gv / (1.0f + kernels::ExpF(-gv)) * ws.up[i];
  }
  RETURN_IF_ERROR(P.down.Apply(ws.gate.data(), m, ws.proj.data(), mm_));
  AddInPlace(ws.x.data(), ws.proj.data(), m * d);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> V4Model::Logits(const float* x_row) const {
  const ModelConfig& c = config();
  std::vector<float> hn(c.hidden_size);
  RETURN_IF_ERROR(kernels::RmsNorm(x_row, 1, c.hidden_size, c.hidden_size, w_.final_norm.data(),
                                   static_cast<float>(c.rms_norm_eps), hn.data(), c.hidden_size));
  std::vector<float> logits(c.vocab_size);
  RETURN_IF_ERROR(lm_head_.Apply(hn.data(), 1, logits.data(), mm_));
  for (int64_t i = 0; i < c.vocab_size; ++i) {
    if (!std::isfinite(logits[i])) {
      return absl::InternalError(kv::StrCat("v4 forward: logit ", i, " is not finite"));
    }
  }
  return logits;
}

}  // namespace kv::model
