#include "model/serving_model.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/kv_layout.h"
#include "kernels/v4/v4_record.h"
#include "kvstore/page_format.h"

namespace kv::model {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class MlaSequence final : public ServingSequence {
 public:
  MlaSequence(const model::Transformer* model, std::unique_ptr<model::KvCache> kv)
      : model_(model), kv_(std::move(kv)) {}
  int64_t num_tokens() const override { return kv_->num_tokens(); }
  absl::StatusOr<std::vector<float>> Prefill(std::span<const int32_t> tokens, int64_t start_pos,
                                             int64_t chunk_tokens,
                                             const LayerHook& on_layer) override {
    return model_->Prefill(tokens, start_pos, kv_.get(),
                           {.chunk_tokens = chunk_tokens, .on_layer = on_layer});
  }
  absl::StatusOr<std::vector<float>> DecodeStep(int32_t token) override {
    return model_->DecodeStep(token, kv_->num_tokens(), kv_.get());
  }
  absl::Status ImportPage(const PageView& view) override { return kv_->AppendBlock(view.kv()); }
  bool can_continue() const override { return true; }
  absl::Status AppendRawBlock(std::span<const uint8_t> bytes, int64_t tokens) override {
    return kv_->AppendBlock(bytes, tokens);
  }
  absl::StatusOr<std::string> ExportBlock(int64_t b, bool, const BlockKey&,
                                          const BlockKey&) const override {
    return kv_->ExportBlock(b);
  }
  // A block holds its layers one after another (page_tokens records each), so a layer's
  // records of positions [start, start + n) are one byte range per block they touch.
  absl::StatusOr<std::vector<HandoffPiece>> LayerHandoffPieces(int layer, int64_t start, int64_t n,
                                                               int64_t handed) const override {
    // (Called from a LayerHook, before the sequence counts the chunk's tokens: bounded by
    // the handoff; BlockView refuses blocks that do not exist.)
    if (start < 0 || n < 0 || start + n > handed) {
      return absl::OutOfRangeError(
          StrCat("handoff: positions [", start, ", +", n, ") past the handoff's ", handed));
    }
    const int64_t pt = kv_->options().page_tokens;
    const int64_t rb = kernels::RecordBytes(kv_->options().layout);
    std::vector<HandoffPiece> out;
    for (int64_t p = start; p < start + n;) {
      const int64_t b = p / pt, in = p % pt;
      const int64_t len = std::min(pt - in, start + n - p);
      ASSIGN_OR_RETURN(std::span<const uint8_t> blk, kv_->BlockView(b));
      const uint64_t off = static_cast<uint64_t>((layer * pt + in) * rb);
      out.push_back({.slot = b, .offset = off, .bytes = blk.subspan(off, len * rb)});
      p += len;
    }
    return out;
  }
  absl::StatusOr<std::vector<HandoffPiece>> FinalHandoffPieces(int64_t) override {
    return std::vector<HandoffPiece>{};
  }
  absl::Status ImportHandoff(std::span<const std::span<const uint8_t>> slots,
                             int64_t tokens) override {
    const int64_t pt = kv_->options().page_tokens;
    if (kv_->num_tokens() != 0 || static_cast<int64_t>(slots.size()) != (tokens + pt - 1) / pt) {
      return absl::InvalidArgumentError(StrCat("handoff import: ", slots.size(), " slots for ",
                                               tokens, " tokens into a sequence of ",
                                               kv_->num_tokens()));
    }
    for (size_t b = 0; b < slots.size(); ++b) {
      absl::Status s = kv_->AppendBlock(slots[b], std::min<int64_t>(pt, tokens - b * pt));
      if (!s.ok()) {
        (void)kv_->Truncate(0);  // the original status is the one to report
        return s;
      }
    }
    return absl::OkStatus();
  }

 private:
  const model::Transformer* const model_;
  std::unique_ptr<model::KvCache> kv_;
};

class MlaServingModel final : public ServingModel {
 public:
  MlaServingModel(const model::Transformer* model, kernels::KvLayout layout, LayoutInfo info,
                  uint64_t page_bytes)
      : model_(model), layout_(layout), info_(info), page_bytes_(page_bytes) {}
  const model::ModelConfig& config() const override { return model_->config(); }
  const Digest256& fingerprint() const override { return model_->weights().fingerprint; }
  int64_t max_context() const override { return model_->max_context(); }
  const LayoutInfo& layout() const override { return info_; }
  uint64_t page_bytes() const override { return page_bytes_; }
  int64_t raw_block_bytes() const override {
    return int64_t{model_->config().num_hidden_layers} * page_tokens() * info_.record_bytes;
  }
  HandoffLayout handoff_layout(int64_t tokens) const override {
    return {(tokens + page_tokens() - 1) / page_tokens(), static_cast<uint64_t>(raw_block_bytes())};
  }
  bool pages_have_resume() const override { return false; }
  absl::StatusOr<std::unique_ptr<ServingSequence>> NewSequence(int64_t max_tokens) const override {
    ASSIGN_OR_RETURN(std::unique_ptr<model::KvCache> kv, model_->NewCache(layout_, max_tokens));
    return std::unique_ptr<ServingSequence>(new MlaSequence(model_, std::move(kv)));
  }
  absl::StatusOr<std::vector<uint8_t>> EncodeExported(const std::string& exported,
                                                      const BlockKey& key,
                                                      const BlockKey& parent) const override {
    return EncodeBlockPage(info_, key, parent, page_tokens(),
                           static_cast<int>(config().num_hidden_layers), Bytes(exported));
  }

 private:
  const model::Transformer* const model_;
  const kernels::KvLayout layout_;
  const LayoutInfo info_;
  const uint64_t page_bytes_;
};

class V4Sequence final : public ServingSequence {
 public:
  V4Sequence(const model::V4Model* model, std::unique_ptr<model::V4Cache> cache)
      : model_(model), cache_(std::move(cache)) {}
  int64_t num_tokens() const override { return cache_->num_tokens(); }
  // Resume snapshots are kept at every page end the forward crosses, so any full page can
  // be published with its resume section (the Engine's policy picks which).
  absl::StatusOr<std::vector<float>> Prefill(std::span<const int32_t> tokens, int64_t start_pos,
                                             int64_t chunk_tokens,
                                             const LayerHook& on_layer) override {
    return model_->Prefill(
        tokens, start_pos, cache_.get(),
        {.chunk_tokens = chunk_tokens, .keep_page_resume = true, .on_layer = on_layer});
  }
  absl::StatusOr<std::vector<float>> DecodeStep(int32_t token) override {
    return model_->DecodeStep(token, cache_->num_tokens(), cache_.get());
  }
  absl::Status ImportPage(const PageView& view) override {
    return model_->ImportPage(view, cache_.get());
  }
  bool can_continue() const override { return cache_->can_continue(); }
  absl::Status AppendRawBlock(std::span<const uint8_t>, int64_t) override {
    return absl::UnimplementedError("a V4 sequence takes pages, not raw KV blocks");
  }
  absl::StatusOr<std::string> ExportBlock(int64_t b, bool with_resume, const BlockKey& key,
                                          const BlockKey& parent) const override {
    if (b < 0 || (b + 1) * model::kV4PageTokens > cache_->num_tokens()) {
      return absl::OutOfRangeError(StrCat("export: block ", b, " is not a full page of the ",
                                          cache_->num_tokens(), " tokens"));
    }
    ASSIGN_OR_RETURN(std::vector<uint8_t> page, cache_->ExportPage(b, with_resume, key, parent));
    return std::string(page.begin(), page.end());
  }
  absl::StatusOr<std::vector<HandoffPiece>> LayerHandoffPieces(int layer, int64_t start, int64_t n,
                                                               int64_t handed) const override;
  absl::StatusOr<std::vector<HandoffPiece>> FinalHandoffPieces(int64_t handed) override;
  absl::Status ImportHandoff(std::span<const std::span<const uint8_t>> slots,
                             int64_t tokens) override;

 private:
  const model::V4Model* const model_;
  std::unique_ptr<model::V4Cache> cache_;
  std::string resume_;  // the resume payload FinalHandoffPieces hands out
};

// Zeros for block padding pieces (a padding run is < 576 bytes).
const uint8_t kZeros[kernels::v4::kV4BlockAlign] = {};

// Slot `layer` of a handoff of `handed` tokens holds [entries block | keys block] (E = the
// entries those tokens close): token bytes of entry j at j·576, its scale bytes at E·576 + j·8;
// then at V4BlockBytes(E) the key codes of j at j·128 and its scale at E·128 + j·4.
absl::StatusOr<std::vector<HandoffPiece>> V4Sequence::LayerHandoffPieces(int layer, int64_t start,
                                                                         int64_t n,
                                                                         int64_t handed) const {
  namespace v4k = kernels::v4;
  const kernels::v4::V4Config& c = model_->v4_config();
  // (Called from a LayerHook, before the cache counts the chunk's tokens: bounded by the
  // handoff, and by the records the layer holds.)
  if (layer < 0 || layer >= c.num_layers() || start < 0 || n < 0 || start + n > handed) {
    return absl::OutOfRangeError(StrCat("handoff: layer ", layer, " positions [", start, ", +", n,
                                        ") outside ", c.num_layers(), " layers x ", handed,
                                        " tokens"));
  }
  const int ratio = c.compress_ratios[layer];
  const int64_t e = model::V4EntriesBefore(handed, ratio);
  const int64_t j0 = model::V4EntriesBefore(start, ratio),
                j1 = model::V4EntriesBefore(start + n, ratio);
  std::vector<HandoffPiece> out;
  if (ratio == 0 || j1 == j0) return out;
  const model::V4Cache::LayerRecordViews r = cache_->LayerRecords(layer);
  if (static_cast<int64_t>(r.entry_sc.size()) < j1 * v4k::kV4ScaleBytes ||
      (ratio == v4k::kCsaRatio && static_cast<int64_t>(r.key_sc.size()) < j1 * 4)) {
    return absl::FailedPreconditionError(
        StrCat("handoff: layer ", layer, " holds no entry ", j1 - 1));
  }
  auto piece = [&](uint64_t off, std::span<const uint8_t> src, int64_t unit) {
    out.push_back(
        {.slot = layer, .offset = off, .bytes = src.subspan(j0 * unit, (j1 - j0) * unit)});
  };
  piece(j0 * v4k::kV4TokenBytes, r.entry_tok, v4k::kV4TokenBytes);
  piece(e * v4k::kV4TokenBytes + j0 * v4k::kV4ScaleBytes, r.entry_sc, v4k::kV4ScaleBytes);
  if (ratio == v4k::kCsaRatio) {
    const uint64_t base = v4k::V4BlockBytes(e);
    piece(base + j0 * v4k::kIndexerDim, r.key_codes, v4k::kIndexerDim);
    piece(base + e * v4k::kIndexerDim + j0 * 4, r.key_sc, 4);
  }
  return out;
}

absl::StatusOr<std::vector<HandoffPiece>> V4Sequence::FinalHandoffPieces(int64_t handed) {
  namespace v4k = kernels::v4;
  if (handed != cache_->num_tokens()) {
    return absl::OutOfRangeError(StrCat("handoff: the sequence holds ", cache_->num_tokens(),
                                        " tokens, the handoff ", handed));
  }
  ASSIGN_OR_RETURN(resume_, cache_->ExportResume());
  const kernels::v4::V4Config& c = model_->v4_config();
  std::vector<HandoffPiece> out;
  auto zeros = [&](int64_t slot, uint64_t from, uint64_t to) {
    if (to > from) out.push_back({.slot = slot, .offset = from, .bytes = {kZeros, to - from}});
  };
  for (int l = 0; l < c.num_layers(); ++l) {  // each block's zero padding
    const int ratio = c.compress_ratios[l];
    const int64_t e = model::V4EntriesBefore(handed, ratio);
    if (ratio == 0) continue;
    zeros(l, e * v4k::kV4RecordBytes, v4k::V4BlockBytes(e));
    if (ratio == v4k::kCsaRatio) {
      const uint64_t base = v4k::V4BlockBytes(e);
      zeros(l, base + e * v4k::kIndexerRecordBytes, base + v4k::IndexerBlockBytes(e));
    }
  }
  out.push_back({.slot = c.num_layers(), .offset = 0, .bytes = Bytes(resume_)});
  return out;
}

absl::Status V4Sequence::ImportHandoff(std::span<const std::span<const uint8_t>> slots,
                                       int64_t tokens) {
  namespace v4k = kernels::v4;
  const kernels::v4::V4Config& c = model_->v4_config();
  if (cache_->num_tokens() != 0 || tokens <= 0 ||
      static_cast<int64_t>(slots.size()) != c.num_layers() + 1) {
    return absl::InvalidArgumentError(StrCat("handoff import: ", slots.size(), " slots for ",
                                             tokens, " tokens into a sequence of ",
                                             cache_->num_tokens(), "; want ", c.num_layers() + 1));
  }
  absl::Status s;
  for (int l = 0; l < c.num_layers() && s.ok(); ++l) {
    const int ratio = c.compress_ratios[l];
    const int64_t e = model::V4EntriesBefore(tokens, ratio);
    const uint64_t eb = ratio > 0 ? v4k::V4BlockBytes(e) : 0;
    const uint64_t kb = ratio == v4k::kCsaRatio ? v4k::IndexerBlockBytes(e) : 0;
    if (slots[l].size() < eb + kb) {
      s = absl::InvalidArgumentError(StrCat("handoff import: slot ", l, " is ", slots[l].size(),
                                            " bytes, layer ", l, " needs ", eb + kb));
      break;
    }
    s = model_->ImportLayerRecords(l, tokens, slots[l].first(eb), slots[l].subspan(eb, kb),
                                   cache_.get());
  }
  const uint64_t rb = model::V4ResumeBytes(c, tokens);
  if (s.ok() && slots.back().size() < rb) {
    s = absl::InvalidArgumentError(StrCat("handoff import: the resume slot is ",
                                          slots.back().size(), " bytes, token ", tokens, " needs ",
                                          rb));
  }
  if (s.ok()) s = model_->FinishImport(tokens, slots.back().first(rb), cache_.get());
  if (!s.ok()) model_->AbortImport(cache_.get());  // the caller starts over
  return s;
}

class V4ServingModel final : public ServingModel {
 public:
  V4ServingModel(const model::V4Model* model, LayoutInfo info, uint64_t page_bytes)
      : model_(model), info_(info), page_bytes_(page_bytes) {}
  const model::ModelConfig& config() const override { return model_->config(); }
  const Digest256& fingerprint() const override { return model_->weights().fingerprint; }
  int64_t max_context() const override { return model_->max_context(); }
  const LayoutInfo& layout() const override { return info_; }
  uint64_t page_bytes() const override { return page_bytes_; }
  int64_t raw_block_bytes() const override { return 0; }
  HandoffLayout handoff_layout(int64_t tokens) const override {
    if (tokens <= 0) return {};
    const kernels::v4::V4Config& c = model_->v4_config();
    uint64_t slot = model::V4ResumeBytes(c, tokens);
    for (int l = 0; l < c.num_layers(); ++l) {
      slot = std::max(slot, model::V4LayerRecordBytes(c, l, 0, tokens));
    }
    return {c.num_layers() + 1, slot};
  }
  bool pages_have_resume() const override { return true; }
  absl::StatusOr<std::unique_ptr<ServingSequence>> NewSequence(int64_t max_tokens) const override {
    if (max_tokens > model_->max_context()) {
      return absl::OutOfRangeError(StrCat(
          "sequence of ", max_tokens, " tokens exceeds the context limit ", model_->max_context()));
    }
    std::unique_ptr<model::V4Cache> cache = model_->NewCache(model::V4CacheFormat::kFp8);
    cache->Reserve(max_tokens);
    return std::unique_ptr<ServingSequence>(new V4Sequence(model_, std::move(cache)));
  }
  absl::StatusOr<std::vector<uint8_t>> EncodeExported(const std::string& exported,
                                                      const BlockKey& key,
                                                      const BlockKey& parent) const override {
    // The header names the page; its sections are verified by whoever stores it.
    ASSIGN_OR_RETURN(PageHeader h, DecodePageHeader(Bytes(exported)));
    if (h.key != key || h.parent != parent || h.layout.id != info_.id) {
      return absl::InvalidArgumentError("encode: the exported V4 page is not the requested one");
    }
    return std::vector<uint8_t>(exported.begin(), exported.end());
  }

 private:
  const model::V4Model* const model_;
  const LayoutInfo info_;
  const uint64_t page_bytes_;
};

}  // namespace

KeyParams ServingModel::key_params() const {
  return KeyParams{.model_fingerprint = fingerprint(),
                   .layout_id = std::string(layout().name),
                   .page_tokens = layout().default_page_tokens,
                   .chain = chain_,
                   .engine_hash_seed = engine_hash_seed_};
}

absl::Status ServingModel::SetKeyChain(KeyChain chain, std::string engine_hash_seed) {
  RETURN_IF_ERROR(ValidateKeyChain(chain, engine_hash_seed));
  chain_ = chain;
  engine_hash_seed_ = std::move(engine_hash_seed);
  return absl::OkStatus();
}

int64_t ContinuableBlocks(bool pages_have_resume, const std::vector<bool>& has_resume,
                          int64_t blocks) {
  if (!pages_have_resume) return blocks;
  int64_t n = 0;
  for (int64_t i = 0; i < blocks && i < static_cast<int64_t>(has_resume.size()); ++i) {
    if (has_resume[i]) n = i + 1;
  }
  return n;
}

absl::StatusOr<int64_t> ImportResumable(const ServingModel& model, ServingSequence* seq,
                                        std::span<const std::span<const uint8_t>> pages,
                                        std::span<const BlockKey> keys, const BlockKey& parent) {
  const int layers = static_cast<int>(model.config().num_hidden_layers);
  // How many of `pages` a sequence can continue after: all verified ones up to the last
  // resumable one.
  int64_t usable = 0;
  std::vector<PageView> views;
  for (size_t i = 0; i < pages.size() && i < keys.size(); ++i) {
    absl::StatusOr<PageView> view = DecodePage(pages[i]);
    absl::Status s = view.status();
    if (s.ok()) {
      s = CheckPage(*view, keys[i], i == 0 ? parent : keys[i - 1], model.layout(),
                    model.page_tokens(), layers);
    }
    if (!s.ok()) {
      log::Warn("prefix_load_stopped", "block", i, "key", keys[i].Hex(), "error", s.ToString());
      break;
    }
    if (model.resumable(*view)) usable = static_cast<int64_t>(i) + 1;
    views.push_back(*std::move(view));
  }
  if (usable < static_cast<int64_t>(pages.size())) {
    log::Info("prefix_load_trimmed", "pages", pages.size(), "resumable", usable);
  }
  for (int64_t i = 0; i < usable; ++i) {
    absl::Status s = seq->ImportPage(views[i]);
    if (!s.ok()) {  // the runtime refused a page CheckPage accepted
      log::Warn("prefix_import_failed", "block", i, "error", s.ToString());
      if (!seq->can_continue()) {
        return absl::FailedPreconditionError(StrCat(
            "import stopped at page ", i, " after pages without a resume section: ", s.message()));
      }
      return i;
    }
  }
  return usable;
}

absl::StatusOr<std::unique_ptr<ServingModel>> NewMlaServingModel(const model::Transformer* model,
                                                                 kernels::KvLayout layout) {
  if (model == nullptr) return absl::InvalidArgumentError("serving model: no model");
  ASSIGN_OR_RETURN(LayoutInfo info, LookupLayout(kernels::LayoutName(layout)));
  PageSpec spec{.layout = info.id,
                .token_count = info.default_page_tokens,
                .first_layer = 0,
                .layer_count = static_cast<uint32_t>(model->config().num_hidden_layers)};
  ASSIGN_OR_RETURN(uint64_t bytes, EncodedPageBytes(spec));
  return std::unique_ptr<ServingModel>(new MlaServingModel(model, layout, info, bytes));
}

absl::StatusOr<std::unique_ptr<ServingModel>> NewV4ServingModel(const model::V4Model* model) {
  if (model == nullptr) return absl::InvalidArgumentError("serving model: no model");
  ASSIGN_OR_RETURN(LayoutInfo info, LookupLayout(static_cast<uint16_t>(LayoutId::kV4Fp8_584)));
  // Page sizes depend on positions only: every full page with its resume section has this
  // size (computed from the section sizes; model/v4_model_test.cc checks it against pages).
  ASSIGN_OR_RETURN(uint64_t page_bytes, model::V4PublishedPageBytes(model->config()));
  return std::unique_ptr<ServingModel>(new V4ServingModel(model, info, page_bytes));
}

absl::StatusOr<uint64_t> PublishedPageBytes(const model::ModelConfig& config,
                                            std::string_view layout) {
  ASSIGN_OR_RETURN(LayoutInfo info, LookupLayout(layout));
  if (config.IsV4()) {
    if (info.id != LayoutId::kV4Fp8_584) {
      return absl::InvalidArgumentError(StrCat(
          "layout ", info.name, " does not fit a DeepSeek-V4 model: its pages are v4-fp8-584"));
    }
    return model::V4PublishedPageBytes(config);  // exact: a full page with its resume section
  }
  PageSpec spec{.layout = info.id,
                .token_count = static_cast<uint32_t>(info.default_page_tokens),
                .first_layer = 0,
                .layer_count = static_cast<uint32_t>(config.num_hidden_layers)};
  return EncodedPageBytes(spec);
}

absl::StatusOr<std::string> ServingLayoutName(const model::ModelConfig& config,
                                              std::string_view requested) {
  const std::string_view v4 = "v4-fp8-584";
  if (config.IsV4()) {
    if (requested.empty() || requested == v4) return std::string(v4);
    return absl::InvalidArgumentError(
        StrCat("KV layout '", requested, "' does not fit a DeepSeek-V4 model: its pages are ", v4));
  }
  if (requested.empty()) return std::string("mla-fp8-656");
  if (requested == v4) {
    return absl::InvalidArgumentError(
        StrCat("KV layout '", v4, "' is for DeepSeek-V4 models; this model takes mla-fp8-656 or ",
               "mla-bf16-1152"));
  }
  RETURN_IF_ERROR(kernels::ParseLayout(requested).status());
  return std::string(requested);
}

absl::StatusOr<LoadedModel> LoadServingModel(const std::string& dir, std::string_view layout,
                                             int64_t max_context, int compute_threads) {
  if (compute_threads < 0 || compute_threads > 1024) {
    return absl::InvalidArgumentError(
        StrCat("compute threads must be in 0..1024 (0: one per core), got ", compute_threads));
  }
  ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(StrCat(dir, "/config.json")));
  ASSIGN_OR_RETURN(std::string name, ServingLayoutName(config, layout));
  LoadedModel m;
  const int threads = compute_threads > 0
                          ? compute_threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (threads > 1) m.pool = std::make_unique<ThreadPool>(threads - 1);
  if (config.IsV4()) {
    ASSIGN_OR_RETURN(m.v4,
                     model::V4Model::Load(dir, {.max_context = max_context, .pool = m.pool.get()}));
    ASSIGN_OR_RETURN(m.serving, NewV4ServingModel(m.v4.get()));
  } else {
    ASSIGN_OR_RETURN(
        m.mla, model::Transformer::Load(dir, {.max_context = max_context, .pool = m.pool.get()}));
    ASSIGN_OR_RETURN(LayoutInfo info, LookupLayout(name));
    ASSIGN_OR_RETURN(kernels::KvLayout kernel_layout, MlaKernelLayout(info.id));
    ASSIGN_OR_RETURN(m.serving, NewMlaServingModel(m.mla.get(), kernel_layout));
  }
  return m;
}

std::vector<ExportedBlock> ExportChainBlocks(const ServingModel& model, const ServingSequence& seq,
                                             std::span<const BlockKey> keys, int64_t from,
                                             int64_t to, int64_t shared_blocks,
                                             int64_t reuse_blocks, int64_t checkpoint_pages) {
  std::vector<ExportedBlock> out;
  for (int64_t b = from; b < to && b < static_cast<int64_t>(keys.size()); ++b) {
    ExportedBlock e{.key = keys[b], .parent = b == 0 ? BlockKey::Zero() : keys[b - 1]};
    e.role = PublishRole(b, shared_blocks, reuse_blocks, to, checkpoint_pages);
    const bool with_resume = model.pages_have_resume() && KeepsResumeAtPublish(e.role);
    absl::StatusOr<std::string> bytes = seq.ExportBlock(b, with_resume, e.key, e.parent);
    if (!bytes.ok()) {
      log::Warn("publish_export_failed", "block", b, "error", bytes.status().ToString());
      break;
    }
    e.bytes = *std::move(bytes);
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<PoolPage> EncodePoolPages(const ServingModel& model,
                                      std::span<const ExportedBlock> blocks) {
  std::vector<PoolPage> pages;
  for (const ExportedBlock& b : blocks) {
    absl::StatusOr<std::vector<uint8_t>> page = model.EncodeExported(b.bytes, b.key, b.parent);
    if (!page.ok()) {
      log::Warn("publish_encode_failed", "key", b.key.Hex(), "error", page.status().ToString());
      break;
    }
    pages.push_back({b.key, *std::move(page), b.role});
  }
  return pages;
}

}  // namespace kv::model
