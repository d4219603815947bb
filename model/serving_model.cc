#include "model/serving_model.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
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
  absl::StatusOr<std::span<const uint8_t>> HandoffSlot(int64_t slot) const override {
    return kv_->BlockView(slot);
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
                                             int64_t chunk_tokens, const LayerHook&) override {
    return model_->Prefill(tokens, start_pos, cache_.get(),
                           {.chunk_tokens = chunk_tokens, .keep_page_resume = true});
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
  absl::StatusOr<std::span<const uint8_t>> HandoffSlot(int64_t) const override {
    return absl::UnimplementedError("V4 sequences have no handoff slots yet");
  }
  absl::Status ImportHandoff(std::span<const std::span<const uint8_t>>, int64_t) override {
    return absl::UnimplementedError("V4 sequences have no handoff slots yet");
  }

 private:
  const model::V4Model* const model_;
  std::unique_ptr<model::V4Cache> cache_;
};

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
  HandoffLayout handoff_layout(int64_t) const override { return {}; }
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
  // Page sizes depend on positions only: one full page with its resume section, of any
  // tokens, has the size every full resumable page has.
  std::unique_ptr<model::V4Cache> probe = model->NewCache(model::V4CacheFormat::kFp8);
  std::vector<int32_t> zeros(model::kV4PageTokens, 0);
  RETURN_IF_ERROR(
      Annotate(model->Prefill(zeros, 0, probe.get()).status(), "measuring the V4 page size"));
  ASSIGN_OR_RETURN(std::vector<uint8_t> page, probe->ExportPage(0, /*with_resume=*/true));
  return std::unique_ptr<ServingModel>(new V4ServingModel(model, info, page.size()));
}

absl::StatusOr<uint64_t> PublishedPageBytes(const model::ModelConfig& config,
                                            std::string_view layout) {
  ASSIGN_OR_RETURN(LayoutInfo info, LookupLayout(layout));
  if (config.IsV4()) {
    // TEMPORARY estimate, replaced by the exact size in the V4 transport change.
    return uint64_t{info.record_bytes} * info.default_page_tokens * config.num_hidden_layers;
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
