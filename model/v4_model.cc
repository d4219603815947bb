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
#include "kvstore/page_format.h"

namespace kv::model {

namespace v4k = kernels::v4;
using v4k::kIndexerDim;
using v4k::kIndexerRecordBytes;
using v4k::kV4Dim;
using v4k::kV4RecordBytes;
using v4k::kV4TokenBytes;

namespace {

// Resume payload (the v4-resume section), little-endian:
//   "KV4R" | u16 version = 1 | u16 0 | u32 layer_count | u32 window_tokens W | u64 end_position
//   then per layer: u32 ratio | u32 main_state_len | u32 index_state_len | u32 window_len |
//   main compressor state | indexer compressor state (kernels/v4/compressor.h Serialize,
//   each with its own XXH3) | the last W window tokens as one v4-fp8-584 block of W tokens.
// W = min(sliding_window, end_position). The page's section checksum covers all of it.
constexpr char kResumeMagic[4] = {'K', 'V', '4', 'R'};
constexpr uint16_t kResumeVersion = 1;
constexpr size_t kResumeHeaderBytes = 24;
constexpr size_t kResumeLayerHeaderBytes = 16;

void PutU16(std::string* s, uint16_t v) {
  for (int i = 0; i < 2; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// A block of n records (584 B each: 576 token bytes | 8 scale bytes) in the v4-fp8-584 block
// layout [n×576 | n×8 | zero padding to 576] (formats.md §2.2).
std::vector<uint8_t> AssembleV4Block(const uint8_t* recs, int64_t n) {
  std::vector<uint8_t> out(v4k::V4BlockBytes(n), 0);
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(&out[t * kV4TokenBytes], recs + t * kV4RecordBytes, kV4TokenBytes);
    std::memcpy(&out[n * kV4TokenBytes + t * 8], recs + t * kV4RecordBytes + kV4TokenBytes, 8);
  }
  return out;
}
// Indexer keys: [n×128 codes | n×4 scales | zero padding to 576].
std::vector<uint8_t> AssembleIndexerBlock(const uint8_t* recs, int64_t n) {
  std::vector<uint8_t> out(v4k::IndexerBlockBytes(n), 0);
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(&out[t * kIndexerDim], recs + t * kIndexerRecordBytes, kIndexerDim);
    std::memcpy(&out[n * kIndexerDim + t * 4], recs + t * kIndexerRecordBytes + kIndexerDim, 4);
  }
  return out;
}

// Decodes a v4-fp8-584 block of n records into values and per-record bytes (DataLoss for a
// corrupt block, from the codec).
absl::Status SplitV4Block(const uint8_t* block, int64_t n, std::vector<float>* values,
                          std::vector<uint8_t>* recs) {
  if (n == 0) return absl::OkStatus();
  std::vector<float> v(n * kV4Dim);
  RETURN_IF_ERROR(v4k::DecodeV4Block(block, v4k::V4BlockBytes(n), n, n, v.data()));
  values->insert(values->end(), v.begin(), v.end());
  for (int64_t t = 0; t < n; ++t) {
    recs->insert(recs->end(), block + t * kV4TokenBytes, block + (t + 1) * kV4TokenBytes);
    recs->insert(recs->end(), block + n * kV4TokenBytes + t * 8,
                 block + n * kV4TokenBytes + t * 8 + 8);
  }
  return absl::OkStatus();
}
absl::Status SplitIndexerBlock(const uint8_t* block, int64_t n, std::vector<float>* values,
                               std::vector<uint8_t>* recs) {
  if (n == 0) return absl::OkStatus();
  std::vector<float> v(n * kIndexerDim);
  RETURN_IF_ERROR(v4k::DecodeIndexerBlock(block, v4k::IndexerBlockBytes(n), n, n, v.data()));
  values->insert(values->end(), v.begin(), v.end());
  for (int64_t t = 0; t < n; ++t) {
    recs->insert(recs->end(), block + t * kIndexerDim, block + (t + 1) * kIndexerDim);
    recs->insert(recs->end(), block + n * kIndexerDim + t * 4, block + n * kIndexerDim + t * 4 + 4);
  }
  return absl::OkStatus();
}

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// Entries of a ratio-m layer closed by tokens [0, end).
int64_t EntriesBefore(int64_t end, int ratio) { return ratio > 0 ? end / ratio : 0; }

}  // namespace

// ---- V4Cache ----------------------------------------------------------------------------------

int64_t V4Cache::num_entries(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) return 0;
  return static_cast<int64_t>(layers_[layer].entries.size()) / kV4Dim;
}

int64_t V4Cache::num_index_keys(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) return 0;
  return static_cast<int64_t>(layers_[layer].index_keys.size()) / kIndexerDim;
}

bool V4Cache::HasResumeAt(int64_t end) const {
  if (end == num_tokens_ && can_continue()) return true;
  return resume_at_.count(end) > 0;
}

int64_t V4Cache::LayerCompressedBytes(int layer) const {
  const int64_t entry = format_ == V4CacheFormat::kFp8 ? kV4RecordBytes : 2 * kV4Dim;
  const int64_t key = format_ == V4CacheFormat::kFp8 ? kIndexerRecordBytes : 2 * kIndexerDim;
  return num_entries(layer) * entry + num_index_keys(layer) * key;
}

int64_t V4Cache::CompressedBytes() const {
  int64_t total = 0;
  for (size_t l = 0; l < layers_.size(); ++l) total += LayerCompressedBytes(static_cast<int>(l));
  return total;
}

std::string V4Cache::SerializeResume() const {
  const int64_t w = std::min<int64_t>(sliding_window_, num_tokens_);
  std::string out(kResumeMagic, 4);
  PutU16(&out, kResumeVersion);
  PutU16(&out, 0);
  PutU32(&out, static_cast<uint32_t>(layers_.size()));
  PutU32(&out, static_cast<uint32_t>(w));
  PutU64(&out, static_cast<uint64_t>(num_tokens_));
  for (const Layer& L : layers_) {
    const std::string main = L.main ? L.main->Serialize() : std::string();
    const std::string index = L.index ? L.index->Serialize() : std::string();
    const int64_t rows = static_cast<int64_t>(L.window_recs.size()) / kV4RecordBytes;
    const std::vector<uint8_t> win =
        AssembleV4Block(L.window_recs.data() + (rows - w) * kV4RecordBytes, w);
    PutU32(&out, static_cast<uint32_t>(L.ratio));
    PutU32(&out, static_cast<uint32_t>(main.size()));
    PutU32(&out, static_cast<uint32_t>(index.size()));
    PutU32(&out, static_cast<uint32_t>(win.size()));
    out += main;
    out += index;
    out.append(reinterpret_cast<const char*>(win.data()), win.size());
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> V4Cache::ExportPage(int64_t p, bool with_resume,
                                                         const BlockKey& key,
                                                         const BlockKey& parent) const {
  if (format_ != V4CacheFormat::kFp8) {
    return absl::FailedPreconditionError(
        "export page: pages are v4-fp8-584; this cache holds the bf16 A/B format");
  }
  if (broken_) return absl::FailedPreconditionError("export page: the cache is unusable");
  if (p < 0 || p >= num_pages()) {
    return absl::OutOfRangeError(
        kv::StrCat("export page: page ", p, " outside [0, ", num_pages(), ")"));
  }
  const int64_t start = p * kV4PageTokens;
  const int64_t end = std::min(start + kV4PageTokens, num_tokens_);
  std::vector<uint8_t> kv, idx;
  bool any_csa = false;
  for (const Layer& L : layers_) {
    if (L.ratio == 0) continue;
    const int64_t e0 = EntriesBefore(start, L.ratio), e1 = EntriesBefore(end, L.ratio);
    auto b = AssembleV4Block(L.entry_recs.data() + e0 * kV4RecordBytes, e1 - e0);
    kv.insert(kv.end(), b.begin(), b.end());
    if (L.ratio == v4k::kCsaRatio) {
      any_csa = true;
      auto ib = AssembleIndexerBlock(L.index_recs.data() + e0 * kIndexerRecordBytes, e1 - e0);
      idx.insert(idx.end(), ib.begin(), ib.end());
    }
  }
  std::string resume;
  if (with_resume) {
    if (end == num_tokens_ && can_continue()) {
      resume = SerializeResume();
    } else if (auto it = resume_at_.find(end); it != resume_at_.end()) {
      resume = it->second;
    } else {
      return absl::FailedPreconditionError(kv::StrCat(
          "export page: the window and compressor state at token ", end, " (the end of page ", p,
          ") were not kept, so the page has no resume section"));
    }
  }
  std::vector<PageSectionData> secs{{SectionKind::kKv, kv}};
  if (any_csa) secs.push_back({SectionKind::kIndexerKeys, idx});
  if (with_resume) {
    secs.push_back({SectionKind::kV4Resume,
                    std::span(reinterpret_cast<const uint8_t*>(resume.data()), resume.size())});
  }
  PageSpec spec{.layout = LayoutId::kV4Fp8_584,
                .key = key,
                .parent = parent,
                .token_count = static_cast<uint32_t>(end - start),
                .first_layer = 0,
                .layer_count = static_cast<uint32_t>(layers_.size())};
  return EncodePageSections(spec, secs);
}

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
                              std::vector<float>* values, std::vector<uint8_t>* recs) const {
  if (f == V4CacheFormat::kBf16) {
    for (int64_t i = 0; i < n * kV4Dim; ++i) {
      values->push_back(kernels::Bf16ToFloat(kernels::FloatToBf16(rows[i])));
    }
    return absl::OkStatus();
  }
  uint8_t buf[v4k::V4BlockBytes(1)];
  float out[kV4Dim];
  for (int64_t t = 0; t < n; ++t) {
    RETURN_IF_ERROR(v4k::EncodeV4Block(rows + t * kV4Dim, 1, 1, buf, sizeof(buf)));
    RETURN_IF_ERROR(v4k::DecodeV4Block(buf, sizeof(buf), 1, 1, out));
    recs->insert(recs->end(), buf, buf + kV4RecordBytes);
    values->insert(values->end(), out, out + kV4Dim);
  }
  return absl::OkStatus();
}

absl::Status V4Model::StoreIndexKeys(V4CacheFormat f, const float* rows, int64_t n,
                                     std::vector<float>* values, std::vector<uint8_t>* recs) const {
  if (f == V4CacheFormat::kBf16) {
    for (int64_t i = 0; i < n * kIndexerDim; ++i) {
      values->push_back(kernels::Bf16ToFloat(kernels::FloatToBf16(rows[i])));
    }
    return absl::OkStatus();
  }
  uint8_t buf[v4k::IndexerBlockBytes(1)];
  float out[kIndexerDim];
  for (int64_t t = 0; t < n; ++t) {
    RETURN_IF_ERROR(v4k::EncodeIndexerBlock(rows + t * kIndexerDim, 1, 1, buf, sizeof(buf)));
    RETURN_IF_ERROR(v4k::DecodeIndexerBlock(buf, sizeof(buf), 1, 1, out));
    recs->insert(recs->end(), buf, buf + kIndexerRecordBytes);
    values->insert(values->end(), out, out + kIndexerDim);
  }
  return absl::OkStatus();
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
  const int64_t chunk = std::max<int64_t>(1, options.chunk_tokens);
  int64_t done = 0;
  V4Trace local;
  while (done < n) {
    const int64_t pos = start_pos + done;
    // Chunks end at page ends so the state there can be snapshotted for a resume section.
    const int64_t to_page_end = kV4PageTokens - pos % kV4PageTokens;
    const int64_t m = std::min({chunk, n - done, to_page_end});
    Workspace ws(c, m);
    absl::Status s = RunChunk(tokens.subspan(done, m), pos, cache, ws, trace ? &local : nullptr);
    if (!s.ok()) {
      cache->broken_ = true;
      return s;
    }
    done += m;
    if (cache->num_tokens_ % kV4PageTokens == 0 && cache->format_ == V4CacheFormat::kFp8 &&
        options.keep_page_resume) {
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
                               Workspace& ws, V4Trace* trace) const {
  const ModelConfig& c = config();
  const int64_t m = static_cast<int64_t>(tokens.size()), d = c.hidden_size;
  for (int64_t t = 0; t < m; ++t) {
    std::memcpy(&ws.x[t * d], &w_.embed[tokens[t] * d], d * sizeof(float));
  }
  if (trace) trace->attn_out.assign(v4_.num_layers() * c.num_attention_heads * c.head_dim, 0.0f);
  for (int l = 0; l < v4_.num_layers(); ++l) {
    RETURN_IF_ERROR(Attention(l, m, start_pos, cache, ws, trace));
    RETURN_IF_ERROR(Mlp(l, m, ws));
  }
  cache->num_tokens_ = start_pos + m;
  return absl::OkStatus();
}

absl::Status V4Model::Attention(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                Workspace& ws, V4Trace* trace) const {
  const ModelConfig& c = config();
  const LayerWeights& L = w_.layers[layer];
  const LayerProjections& P = proj_[layer];
  V4Cache::Layer& C = cache->layers_[layer];
  const int ratio = v4_.compress_ratios[layer];
  const int64_t d = c.hidden_size, h = c.num_attention_heads, hd = c.head_dim;
  const int64_t ql = c.q_lora_rank, rd = c.qk_rope_head_dim;
  const int64_t ih = c.index_n_heads, id = c.index_head_dim;
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
  RETURN_IF_ERROR(StoreKv(cache->format_, ws.kv.data(), m, &C.window, &C.window_recs));

  // Compressed entries closed by this chunk (§4.3), then the indexer keys (§4.4).
  if (ratio > 0) {
    RETURN_IF_ERROR(P.comp_kv.Apply(ws.hn.data(), m, ws.cc.data(), mm_));
    RETURN_IF_ERROR(P.comp_gate.Apply(ws.hn.data(), m, ws.cz.data(), mm_));
    std::vector<float> fresh;
    RETURN_IF_ERROR(C.main->Append(*main_comp_[layer], ws.cc.data(), ws.cz.data(), m, &fresh));
    RETURN_IF_ERROR(StoreKv(cache->format_, fresh.data(),
                            static_cast<int64_t>(fresh.size()) / kV4Dim, &C.entries,
                            &C.entry_recs));
  }
  if (ratio == v4k::kCsaRatio) {
    RETURN_IF_ERROR(P.idx_kv.Apply(ws.hn.data(), m, ws.ic.data(), mm_));
    RETURN_IF_ERROR(P.idx_gate.Apply(ws.hn.data(), m, ws.iz.data(), mm_));
    std::vector<float> fresh;
    RETURN_IF_ERROR(C.index->Append(*index_comp_[layer], ws.ic.data(), ws.iz.data(), m, &fresh));
    RETURN_IF_ERROR(StoreIndexKeys(cache->format_, fresh.data(),
                                   static_cast<int64_t>(fresh.size()) / kIndexerDim, &C.index_keys,
                                   &C.index_recs));
    RETURN_IF_ERROR(P.idx_q_b.Apply(ws.qlat.data(), m, ws.iq.data(), mm_));
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t hh = 0; hh < ih; ++hh) {
        v4k::ApplyTrailingRope(compress_freqs_, start_pos + t, static_cast<int>(id),
                               static_cast<int>(rd), &ws.iq[(t * ih + hh) * id]);
      }
    }
    RETURN_IF_ERROR(P.idx_w.Apply(ws.hn.data(), m, ws.iw.data(), mm_));
  }

  const int64_t n_entries = static_cast<int64_t>(C.entries.size()) / hd;
  std::vector<float> scores(std::max<int64_t>(n_entries, 1));
  std::vector<int32_t> picks;
  for (int64_t t = 0; t < m; ++t) {
    const int64_t pos = start_pos + t;
    picks.clear();
    if (ratio == v4k::kCsaRatio && n_entries > 0) {
      v4k::IndexerQuery iq{.position = pos,
                           .n_heads = static_cast<int>(ih),
                           .head_dim = static_cast<int>(id),
                           .q = &ws.iq[t * ih * id],
                           .weights = &ws.iw[t * ih]};
      RETURN_IF_ERROR(v4k::IndexerScores(iq, C.index_keys.data(), n_entries, scores.data()));
      picks.resize(v4_.index_topk);
      RETURN_IF_ERROR(v4k::TopKIndices(scores.data(), n_entries, v4_.index_topk, picks.data()));
    } else if (ratio == v4k::kHcaRatio) {
      picks = v4k::AllVisibleIndices(pos, ratio);  // HCA attends every visible entry (§4.2)
    }
    const int64_t n_window = std::min<int64_t>(v4_.sliding_window, pos + 1);
    const int64_t first_row = pos - n_window + 1 - C.window_start;
    v4k::SparseAttentionArgs a{.position = pos,
                               .n_heads = static_cast<int>(h),
                               .head_dim = static_cast<int>(hd),
                               .rope_dim = static_cast<int>(rd),
                               .sliding_window = v4_.sliding_window,
                               .q = &ws.q[t * h * hd],
                               .sink = L.attn_sink.data(),
                               .entries = C.entries.data(),
                               .n_entries = n_entries,
                               .ratio = ratio,
                               .indices = picks.data(),
                               .n_indices = static_cast<int64_t>(picks.size()),
                               .window = C.window.data() + first_row * hd,
                               .n_window = n_window};
    RETURN_IF_ERROR(v4k::SparseAttention(a, freqs, &ws.o[t * h * hd]));
  }
  if (trace) {
    std::memcpy(&trace->attn_out[layer * h * hd], &ws.o[(m - 1) * h * hd], h * hd * sizeof(float));
  }
  // Keep the last sliding_window rows for the next call.
  const int64_t rows = static_cast<int64_t>(C.window.size()) / hd;
  const int64_t keep = std::min<int64_t>(v4_.sliding_window, start_pos + m);
  if (rows > keep) {
    C.window.erase(C.window.begin(), C.window.begin() + (rows - keep) * hd);
    if (!C.window_recs.empty()) {
      C.window_recs.erase(C.window_recs.begin(),
                          C.window_recs.begin() + (rows - keep) * kV4RecordBytes);
    }
    C.window_start += rows - keep;
  }
  // Grouped low-rank output (§4.2): group g's heads (H/G × 512) -> o_lora, concat, -> hidden.
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

// ---- page import ------------------------------------------------------------------------------

absl::Status V4Model::CheckImportTarget(const V4Cache* cache) const {
  if (cache == nullptr) return absl::InvalidArgumentError("import page: null cache");
  if (cache->format_ != V4CacheFormat::kFp8) {
    return absl::FailedPreconditionError("import page: v4-fp8-584 pages need an FP8 cache");
  }
  if (cache->broken_) return absl::FailedPreconditionError("import page: the cache is unusable");
  if (cache->num_tokens_ % kV4PageTokens != 0) {
    return absl::FailedPreconditionError(
        kv::StrCat("import page: the cache holds ", cache->num_tokens_,
                   " tokens; a page can only be appended at a multiple of ", kV4PageTokens));
  }
  return absl::OkStatus();
}

absl::Status V4Model::ImportPage(std::span<const uint8_t> page, V4Cache* cache) const {
  RETURN_IF_ERROR(CheckImportTarget(cache));
  ASSIGN_OR_RETURN(PageView view, DecodePage(page));
  return ImportPage(view, cache);
}

absl::Status V4Model::ImportPage(const PageView& view, V4Cache* cache) const {
  RETURN_IF_ERROR(CheckImportTarget(cache));
  const int64_t start = cache->num_tokens_;
  const PageHeader& hdr = view.header();
  const int layers = v4_.num_layers();
  if (hdr.layout.id != LayoutId::kV4Fp8_584) {
    return absl::InvalidArgumentError(
        kv::StrCat("import page: layout ", hdr.layout.name, ", this model needs v4-fp8-584"));
  }
  if (hdr.first_layer != 0 || hdr.layer_count != static_cast<uint32_t>(layers) ||
      hdr.token_count > kV4PageTokens) {
    return absl::InvalidArgumentError(
        kv::StrCat("import page: page holds layers [", hdr.first_layer, ", +", hdr.layer_count,
                   ") x ", hdr.token_count, " tokens; this model's pages hold layers [0, ", layers,
                   ") x <= ", kV4PageTokens, " tokens"));
  }
  const int64_t end = start + hdr.token_count;
  // Compressed entries and indexer keys, checked against this model's layer mix.
  struct Fresh {
    std::vector<float> entries, keys;
    std::vector<uint8_t> entry_recs, key_recs;
  };
  std::vector<Fresh> fresh(layers);
  uint64_t kv_off = 0, idx_off = 0;
  bool any_csa = false;
  for (int l = 0; l < layers; ++l) {
    const int ratio = v4_.compress_ratios[l];
    if (ratio == 0) continue;
    const int64_t e0 = EntriesBefore(start, ratio), e = EntriesBefore(end, ratio) - e0;
    if (cache->num_entries(l) != e0) {
      return absl::FailedPreconditionError(kv::StrCat("import page: layer ", l, " holds ",
                                                      cache->num_entries(l),
                                                      " entries; the page starts at entry ", e0));
    }
    const uint64_t bytes = v4k::V4BlockBytes(e);
    if (kv_off + bytes > view.kv().size()) {
      return absl::InvalidArgumentError(kv::StrCat("import page: kv section is ", view.kv().size(),
                                                   " bytes, too short for layer ", l, " (", e,
                                                   " entries): this model's layer mix needs more"));
    }
    absl::Status s =
        SplitV4Block(view.kv().data() + kv_off, e, &fresh[l].entries, &fresh[l].entry_recs);
    if (!s.ok()) return Annotate(s, kv::StrCat("import page: layer ", l, " entries"));
    kv_off += bytes;
    if (ratio == v4k::kCsaRatio) {
      any_csa = true;
      const uint64_t ib = v4k::IndexerBlockBytes(e);
      if (idx_off + ib > view.indexer_keys().size()) {
        return absl::InvalidArgumentError(
            kv::StrCat("import page: indexer-keys section is ", view.indexer_keys().size(),
                       " bytes, too short for layer ", l, " (", e, " keys)"));
      }
      s = SplitIndexerBlock(view.indexer_keys().data() + idx_off, e, &fresh[l].keys,
                            &fresh[l].key_recs);
      if (!s.ok()) return Annotate(s, kv::StrCat("import page: layer ", l, " indexer keys"));
      idx_off += ib;
    }
  }
  if (kv_off != view.kv().size() || idx_off != view.indexer_keys().size()) {
    return absl::InvalidArgumentError(kv::StrCat(
        "import page: sections are ", view.kv().size(), " + ", view.indexer_keys().size(),
        " bytes; this model's layer mix needs ", kv_off, " + ", idx_off));
  }
  bool has_idx_section = false;
  for (const SectionInfo& s : hdr.sections) has_idx_section |= s.kind == SectionKind::kIndexerKeys;
  if (has_idx_section != any_csa) {
    return absl::InvalidArgumentError(kv::StrCat("import page: an indexer-keys section is ",
                                                 any_csa ? "required" : "not expected",
                                                 " for this model"));
  }

  // The resume section: window KV and compressor state at the page end.
  struct ResumeLayer {
    std::optional<v4k::CompressorStream> main, index;
    std::vector<float> window;
    std::vector<uint8_t> window_recs;
  };
  std::vector<ResumeLayer> resumed;
  if (view.has_resume()) {
    auto bad = [](auto... p) {
      return absl::DataLossError(kv::StrCat("import page: resume section: ", p...));
    };
    std::span<const uint8_t> r = view.resume();
    if (r.size() < kResumeHeaderBytes || std::memcmp(r.data(), kResumeMagic, 4) != 0) {
      return bad("bad magic or truncated header");
    }
    if (GetLe(r.data() + 4, 2) != kResumeVersion) {
      return absl::UnimplementedError(
          kv::StrCat("import page: resume section version ", GetLe(r.data() + 4, 2), " is not 1"));
    }
    const uint64_t n_layers = GetLe(r.data() + 8, 4), wt = GetLe(r.data() + 12, 4);
    const uint64_t rend = GetLe(r.data() + 16, 8);
    if (GetLe(r.data() + 6, 2) != 0) return bad("reserved bytes are not zero");
    if (n_layers != static_cast<uint64_t>(layers)) {
      return bad(n_layers, " layers, the model has ", layers);
    }
    if (rend != static_cast<uint64_t>(end)) {
      return bad("state is for token ", rend, ", the page ends at token ", end);
    }
    if (wt != static_cast<uint64_t>(std::min<int64_t>(v4_.sliding_window, end))) {
      return bad(wt, " window tokens, want min(window, ", end, ")");
    }
    size_t off = kResumeHeaderBytes;
    for (int l = 0; l < layers; ++l) {
      if (r.size() - off < kResumeLayerHeaderBytes) return bad("truncated at layer ", l);
      const uint64_t ratio = GetLe(&r[off], 4), ml = GetLe(&r[off + 4], 4),
                     il = GetLe(&r[off + 8], 4), wl = GetLe(&r[off + 12], 4);
      off += kResumeLayerHeaderBytes;
      if (ratio != static_cast<uint64_t>(v4_.compress_ratios[l])) {
        return bad("layer ", l, " ratio ", ratio, ", the model's is ", v4_.compress_ratios[l]);
      }
      if (wl != static_cast<uint64_t>(v4k::V4BlockBytes(wt))) {
        return bad("layer ", l, " window block is ", wl, " bytes, want ", v4k::V4BlockBytes(wt));
      }
      if (ml > r.size() - off || il > r.size() - off - ml || wl > r.size() - off - ml - il) {
        return bad("truncated in layer ", l);
      }
      if ((ml > 0) != main_comp_[l].has_value() || (il > 0) != index_comp_[l].has_value()) {
        return bad("layer ", l, " compressor states do not match its ratio");
      }
      ResumeLayer rl;
      if (ml > 0) {
        auto st = v4k::CompressorStream::Deserialize(
            *main_comp_[l], std::string(reinterpret_cast<const char*>(&r[off]), ml));
        if (!st.ok()) return Annotate(st.status(), kv::StrCat("import page: layer ", l));
        if (st->next_position() != end) return bad("layer ", l, " compressor is at another token");
        rl.main = *std::move(st);
      }
      off += ml;
      if (il > 0) {
        auto st = v4k::CompressorStream::Deserialize(
            *index_comp_[l], std::string(reinterpret_cast<const char*>(&r[off]), il));
        if (!st.ok()) return Annotate(st.status(), kv::StrCat("import page: layer ", l));
        if (st->next_position() != end) return bad("layer ", l, " indexer is at another token");
        rl.index = *std::move(st);
      }
      off += il;
      absl::Status s = SplitV4Block(&r[off], static_cast<int64_t>(wt), &rl.window, &rl.window_recs);
      if (!s.ok()) return Annotate(s, kv::StrCat("import page: layer ", l, " window"));
      off += wl;
      resumed.push_back(std::move(rl));
    }
    if (off != r.size()) return bad(r.size() - off, " trailing bytes");
  }

  // Everything checked: commit.
  for (int l = 0; l < layers; ++l) {
    V4Cache::Layer& C = cache->layers_[l];
    Fresh& f = fresh[l];
    C.entries.insert(C.entries.end(), f.entries.begin(), f.entries.end());
    C.entry_recs.insert(C.entry_recs.end(), f.entry_recs.begin(), f.entry_recs.end());
    C.index_keys.insert(C.index_keys.end(), f.keys.begin(), f.keys.end());
    C.index_recs.insert(C.index_recs.end(), f.key_recs.begin(), f.key_recs.end());
    if (view.has_resume()) {
      C.main = std::move(resumed[l].main);
      C.index = std::move(resumed[l].index);
      C.window = std::move(resumed[l].window);
      C.window_recs = std::move(resumed[l].window_recs);
      C.window_start = end - static_cast<int64_t>(C.window.size()) / kV4Dim;
    } else {
      C.main.reset();
      C.index.reset();
      C.window.clear();
      C.window_recs.clear();
      C.window_start = end;
    }
  }
  cache->num_tokens_ = end;
  cache->continuable_ = view.has_resume();
  if (view.has_resume()) {
    cache->resume_at_[end] =
        std::string(reinterpret_cast<const char*>(view.resume().data()), view.resume().size());
  }
  return absl::OkStatus();
}

}  // namespace kv::model
