// V4Cache (the per-sequence V4 KV state) and V4Model's page import and export: the record
// layout the attention reads, v4-fp8-584 pages and their v4-resume section
// (model/v4_model.h). The forward pass is in model/v4_model.cc.
//
// Import is verify + copy: a page's (or a handoff's) blocks hold the records split as
// [E×576 | E×8 | padding], which is how the cache keeps them, so each layer's records are
// appended by two copies while kernels::v4::CopyV4Block checks every byte the attention will
// read. Nothing is dequantized here.
#include <algorithm>
#include <cstring>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/v4/v4_record.h"
#include "kvstore/page_format.h"
#include "model/config.h"
#include "model/v4_model.h"

namespace kv::model {

namespace v4k = kernels::v4;
using v4k::kIndexerDim;
using v4k::kIndexerRecordBytes;
using v4k::kV4Dim;
using v4k::kV4RecordBytes;
using v4k::kV4ScaleBytes;
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

// Appends records [from, from + n) (split: rec_bytes / tail_bytes per record) as one block
// [n × rec | n × tail | zero padding to 576] to *out.
template <typename Out>
void AppendBlock(const std::vector<uint8_t>& body, const std::vector<uint8_t>& tail, int rec,
                 int tail_bytes, int64_t from, int64_t n, Out* out) {
  const size_t at = out->size();
  const int64_t bytes = v4k::RoundUp576(n * (rec + tail_bytes));
  out->resize(at + bytes);
  auto* p = reinterpret_cast<uint8_t*>(out->data()) + at;
  std::memcpy(p, body.data() + from * rec, n * rec);
  std::memcpy(p + n * rec, tail.data() + from * tail_bytes, n * tail_bytes);
  std::memset(p + n * (rec + tail_bytes), 0, bytes - n * (rec + tail_bytes));
}

// Checks a block of n records through check (CopyV4Block or CopyIndexerBlock with no
// outputs), then appends its two parts to tok / sc; nothing is appended on error. (Checking
// first and copying with insert writes each byte once; copying into resized vectors would
// zero-fill them first.)
template <typename Check>
absl::Status AppendChecked(std::span<const uint8_t> block, int64_t n, int rec, int tail,
                           std::vector<uint8_t>* tok, std::vector<uint8_t>* sc, Check check) {
  RETURN_IF_ERROR(check(block.data(), static_cast<int64_t>(block.size()), n, nullptr, nullptr));
  tok->insert(tok->end(), block.data(), block.data() + n * rec);
  sc->insert(sc->end(), block.data() + n * rec, block.data() + n * (rec + tail));
  return absl::OkStatus();
}

}  // namespace

// ---- sizes ------------------------------------------------------------------------------------

uint64_t V4LayerRecordBytes(const v4k::V4Config& c, int layer, int64_t start, int64_t end) {
  if (layer < 0 || layer >= c.num_layers()) return 0;
  const int ratio = c.compress_ratios[layer];
  const int64_t e = V4EntriesBefore(end, ratio) - V4EntriesBefore(start, ratio);
  if (ratio == 0) return 0;
  return v4k::V4BlockBytes(e) + (ratio == v4k::kCsaRatio ? v4k::IndexerBlockBytes(e) : 0);
}

uint64_t V4ResumeBytes(const v4k::V4Config& c, int64_t end) {
  const int64_t w = std::min<int64_t>(c.sliding_window, end);
  uint64_t total = kResumeHeaderBytes;
  for (int l = 0; l < c.num_layers(); ++l) {
    const int ratio = c.compress_ratios[l];
    total += kResumeLayerHeaderBytes + v4k::V4BlockBytes(w);
    if (ratio > 0) total += v4k::CompressorStream::SerializedBytes(ratio, c.head_dim, end);
    if (ratio == v4k::kCsaRatio) {
      total += v4k::CompressorStream::SerializedBytes(ratio, c.index_head_dim, end);
    }
  }
  return total;
}

uint64_t V4PageBytes(const v4k::V4Config& c, int64_t start, int64_t end, bool with_resume) {
  uint64_t kv = 0, idx = 0;
  for (int l = 0; l < c.num_layers(); ++l) {
    const int ratio = c.compress_ratios[l];
    const int64_t e = V4EntriesBefore(end, ratio) - V4EntriesBefore(start, ratio);
    if (ratio > 0) kv += v4k::V4BlockBytes(e);
    if (ratio == v4k::kCsaRatio) idx += v4k::IndexerBlockBytes(e);
  }
  std::vector<uint64_t> sections{kv};
  if (c.CountLayers(v4k::kCsaRatio) > 0) sections.push_back(idx);
  if (with_resume) sections.push_back(V4ResumeBytes(c, end));
  return EncodedSectionsPageBytes(sections);
}

absl::StatusOr<uint64_t> V4PublishedPageBytes(const ModelConfig& config) {
  RETURN_IF_ERROR(ValidateV4ForRuntime(config));
  return V4PageBytes(ToV4Config(config), 0, kV4PageTokens, /*with_resume=*/true);
}

// ---- V4Cache ----------------------------------------------------------------------------------

int64_t V4Cache::num_entries(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) return 0;
  const Layer& L = layers_[layer];
  return format_ == V4CacheFormat::kFp8 ? static_cast<int64_t>(L.entry_sc.size()) / kV4ScaleBytes
                                        : static_cast<int64_t>(L.entries.size()) / kV4Dim;
}

int64_t V4Cache::num_index_keys(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) return 0;
  const Layer& L = layers_[layer];
  return format_ == V4CacheFormat::kFp8 ? static_cast<int64_t>(L.key_sc.size()) / 4
                                        : static_cast<int64_t>(L.index_keys.size()) / kIndexerDim;
}

V4Cache::LayerRecordViews V4Cache::LayerRecords(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size()) || format_ != V4CacheFormat::kFp8) {
    return {};
  }
  const Layer& L = layers_[layer];
  return {L.entry_tok, L.entry_sc, L.key_codes, L.key_sc};
}

int64_t V4Cache::WindowRows(const Layer& L) const {
  return format_ == V4CacheFormat::kFp8 ? static_cast<int64_t>(L.window_sc.size()) / kV4ScaleBytes
                                        : static_cast<int64_t>(L.window.size()) / kV4Dim;
}

void V4Cache::DecodeWindow(Layer& L) const {
  const int64_t rows = WindowRows(L);
  if (format_ != V4CacheFormat::kFp8 || static_cast<int64_t>(L.window.size()) == rows * kV4Dim) {
    return;
  }
  L.window.resize(rows * kV4Dim);
  v4k::DequantizeV4Records(L.window_tok.data(), L.window_sc.data(), rows, L.window.data());
}

void V4Cache::TrimWindow(Layer& L, int64_t keep) const {
  const int64_t rows = WindowRows(L);
  if (rows <= keep + sliding_window_) return;
  const int64_t drop = rows - keep;
  if (format_ == V4CacheFormat::kFp8) {
    L.window_tok.erase(L.window_tok.begin(), L.window_tok.begin() + drop * kV4TokenBytes);
    L.window_sc.erase(L.window_sc.begin(), L.window_sc.begin() + drop * kV4ScaleBytes);
  }
  if (!L.window.empty()) L.window.erase(L.window.begin(), L.window.begin() + drop * kV4Dim);
  L.window_start += drop;
}

void V4Cache::TruncateRecords(int64_t end) {
  for (Layer& L : layers_) {
    const int64_t e = V4EntriesBefore(end, L.ratio);
    if (static_cast<int64_t>(L.entry_sc.size()) > e * kV4ScaleBytes) {
      L.entry_tok.resize(e * kV4TokenBytes);
      L.entry_sc.resize(e * kV4ScaleBytes);
    }
    if (static_cast<int64_t>(L.key_sc.size()) > e * 4) {
      L.key_codes.resize(e * kIndexerDim);
      L.key_sc.resize(e * 4);
    }
  }
  import_end_ = -1;
}

void V4Cache::Reserve(int64_t tokens) {
  for (Layer& L : layers_) {
    const int64_t e = V4EntriesBefore(tokens, L.ratio);
    if (format_ == V4CacheFormat::kBf16) {
      L.entries.reserve(e * kV4Dim);
      if (L.ratio == v4k::kCsaRatio) L.index_keys.reserve(e * kIndexerDim);
      continue;
    }
    L.entry_tok.reserve(e * kV4TokenBytes);
    L.entry_sc.reserve(e * kV4ScaleBytes);
    if (L.ratio == v4k::kCsaRatio) {
      L.key_codes.reserve(e * kIndexerDim);
      L.key_sc.reserve(e * 4);
    }
  }
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
    PutU32(&out, static_cast<uint32_t>(L.ratio));
    PutU32(&out, static_cast<uint32_t>(main.size()));
    PutU32(&out, static_cast<uint32_t>(index.size()));
    PutU32(&out, static_cast<uint32_t>(v4k::V4BlockBytes(w)));
    out += main;
    out += index;
    AppendBlock(L.window_tok, L.window_sc, kV4TokenBytes, kV4ScaleBytes, WindowRows(L) - w, w,
                &out);
  }
  return out;
}

absl::StatusOr<V4Cache::LayerBlocks> V4Cache::ExportLayerRecords(int layer, int64_t start,
                                                                 int64_t end) const {
  if (format_ != V4CacheFormat::kFp8) {
    return absl::FailedPreconditionError(
        "export: pages are v4-fp8-584; this cache holds the bf16 A/B format");
  }
  if (broken_ || import_end_ >= 0) {
    return absl::FailedPreconditionError("export: the cache is unusable or mid-import");
  }
  if (layer < 0 || layer >= static_cast<int>(layers_.size()) || start < 0 || start > end ||
      end > num_tokens_) {
    return absl::OutOfRangeError(kv::StrCat("export: layer ", layer, " tokens [", start, ", ", end,
                                            ") outside ", layers_.size(), " layers x [0, ",
                                            num_tokens_, ")"));
  }
  const Layer& L = layers_[layer];
  LayerBlocks out;
  if (L.ratio == 0) return out;
  const int64_t e0 = V4EntriesBefore(start, L.ratio), e1 = V4EntriesBefore(end, L.ratio);
  AppendBlock(L.entry_tok, L.entry_sc, kV4TokenBytes, kV4ScaleBytes, e0, e1 - e0, &out.entries);
  if (L.ratio == v4k::kCsaRatio) {
    AppendBlock(L.key_codes, L.key_sc, kIndexerDim, 4, e0, e1 - e0, &out.keys);
  }
  return out;
}

absl::StatusOr<std::string> V4Cache::ExportResume() const {
  if (format_ != V4CacheFormat::kFp8 || import_end_ >= 0 || !can_continue()) {
    return absl::FailedPreconditionError(
        kv::StrCat("export resume: the state at token ", num_tokens_,
                   " is not known (bf16 cache, import under way, or no resume section imported)"));
  }
  return SerializeResume();
}

absl::StatusOr<std::vector<uint8_t>> V4Cache::ExportPage(int64_t p, bool with_resume,
                                                         const BlockKey& key,
                                                         const BlockKey& parent) const {
  if (format_ != V4CacheFormat::kFp8) {
    return absl::FailedPreconditionError(
        "export page: pages are v4-fp8-584; this cache holds the bf16 A/B format");
  }
  if (broken_) return absl::FailedPreconditionError("export page: the cache is unusable");
  if (import_end_ >= 0) return absl::FailedPreconditionError("export page: an import is under way");
  if (p < 0 || p >= num_pages()) {
    return absl::OutOfRangeError(
        kv::StrCat("export page: page ", p, " outside [0, ", num_pages(), ")"));
  }
  const int64_t start = p * kV4PageTokens;
  const int64_t end = std::min(start + kV4PageTokens, num_tokens_);
  std::vector<uint8_t> kv, idx;
  bool any_csa = false;
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    if (layers_[l].ratio == 0) continue;
    ASSIGN_OR_RETURN(LayerBlocks b, ExportLayerRecords(l, start, end));
    kv.insert(kv.end(), b.entries.begin(), b.entries.end());
    if (layers_[l].ratio == v4k::kCsaRatio) {
      any_csa = true;
      idx.insert(idx.end(), b.keys.begin(), b.keys.end());
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

// ---- import -----------------------------------------------------------------------------------

struct V4Model::ResumeLayer {
  std::optional<v4k::CompressorStream> main, index;
  std::vector<uint8_t> window_tok, window_sc;
};

absl::Status V4Model::CheckImportTarget(const V4Cache* cache) const {
  if (cache == nullptr) return absl::InvalidArgumentError("import: null cache");
  if (cache->format_ != V4CacheFormat::kFp8) {
    return absl::FailedPreconditionError("import: v4-fp8-584 records need an FP8 cache");
  }
  if (cache->broken_) return absl::FailedPreconditionError("import: the cache is unusable");
  if (static_cast<int>(cache->layers_.size()) != v4_.num_layers()) {
    return absl::InvalidArgumentError(kv::StrCat("import: cache has ", cache->layers_.size(),
                                                 " layers, the model ", v4_.num_layers()));
  }
  return absl::OkStatus();
}

absl::Status V4Model::CheckPageGeometry(const PageView& view, int64_t start) const {
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
  uint64_t kv = 0, idx = 0;
  bool any_csa = false;
  for (int l = 0; l < layers; ++l) {
    const int ratio = v4_.compress_ratios[l];
    const int64_t e = V4EntriesBefore(end, ratio) - V4EntriesBefore(start, ratio);
    if (ratio > 0) kv += v4k::V4BlockBytes(e);
    if (ratio == v4k::kCsaRatio) {
      any_csa = true;
      idx += v4k::IndexerBlockBytes(e);
    }
  }
  if (kv != view.kv().size() || idx != view.indexer_keys().size()) {
    return absl::InvalidArgumentError(kv::StrCat(
        "import page: sections are ", view.kv().size(), " + ", view.indexer_keys().size(),
        " bytes; this model's layer mix needs ", kv, " + ", idx));
  }
  bool has_idx_section = false;
  for (const SectionInfo& s : hdr.sections) has_idx_section |= s.kind == SectionKind::kIndexerKeys;
  if (has_idx_section != any_csa) {
    return absl::InvalidArgumentError(kv::StrCat("import page: an indexer-keys section is ",
                                                 any_csa ? "required" : "not expected",
                                                 " for this model"));
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
  if (start % kV4PageTokens != 0 || cache->import_end_ >= 0) {
    return absl::FailedPreconditionError(
        kv::StrCat("import page: the cache holds ", start, " tokens",
                   cache->import_end_ >= 0 ? " and an import is under way" : "",
                   "; a page can only be appended at a multiple of ", kV4PageTokens));
  }
  RETURN_IF_ERROR(CheckPageGeometry(view, start));
  const int64_t end = start + view.header().token_count;
  size_t kv_off = 0, idx_off = 0;
  for (int l = 0; l < v4_.num_layers(); ++l) {
    const int ratio = v4_.compress_ratios[l];
    const int64_t e = V4EntriesBefore(end, ratio) - V4EntriesBefore(start, ratio);
    const size_t kb = ratio > 0 ? v4k::V4BlockBytes(e) : 0;
    const size_t ib = ratio == v4k::kCsaRatio ? v4k::IndexerBlockBytes(e) : 0;
    absl::Status s = ImportLayerRecords(l, end, view.kv().subspan(kv_off, kb),
                                        view.indexer_keys().subspan(idx_off, ib), cache);
    if (!s.ok()) {
      cache->TruncateRecords(start);
      return Annotate(s, "import page");
    }
    kv_off += kb;
    idx_off += ib;
  }
  std::optional<std::span<const uint8_t>> resume;
  if (view.has_resume()) resume = view.resume();
  absl::Status s = FinishImport(end, resume, cache);
  if (!s.ok()) {
    cache->TruncateRecords(start);
    return Annotate(s, "import page");
  }
  return absl::OkStatus();
}

absl::Status V4Model::ImportLayerRecords(int layer, int64_t end, std::span<const uint8_t> entries,
                                         std::span<const uint8_t> keys, V4Cache* cache) const {
  RETURN_IF_ERROR(CheckImportTarget(cache));
  const int64_t start = cache->num_tokens_;
  if (layer < 0 || layer >= v4_.num_layers() || end <= start ||
      (cache->import_end_ >= 0 && cache->import_end_ != end)) {
    return absl::FailedPreconditionError(
        kv::StrCat("import layer ", layer, ": tokens [", start, ", ", end, ") with ",
                   v4_.num_layers(), " layers and an import to ", cache->import_end_, " open"));
  }
  V4Cache::Layer& C = cache->layers_[layer];
  const int ratio = v4_.compress_ratios[layer];
  const int64_t e0 = V4EntriesBefore(start, ratio), e = V4EntriesBefore(end, ratio) - e0;
  if (cache->num_entries(layer) != e0) {
    return absl::FailedPreconditionError(
        kv::StrCat("import layer ", layer, ": it holds ", cache->num_entries(layer),
                   " entries; the import starts at entry ", e0, " (imported twice?)"));
  }
  const uint64_t want_e = ratio > 0 ? v4k::V4BlockBytes(e) : 0;
  const uint64_t want_k = ratio == v4k::kCsaRatio ? v4k::IndexerBlockBytes(e) : 0;
  if (entries.size() != want_e || keys.size() != want_k) {
    return absl::InvalidArgumentError(kv::StrCat(
        "import layer ", layer, ": blocks are ", entries.size(), " + ", keys.size(), " bytes; ", e,
        " entries of a ratio-", ratio, " layer need ", want_e, " + ", want_k));
  }
  absl::Status s = AppendChecked(entries, e, kV4TokenBytes, kV4ScaleBytes, &C.entry_tok,
                                 &C.entry_sc, v4k::CopyV4Block);
  if (!s.ok()) return Annotate(s, kv::StrCat("layer ", layer, " entries"));
  if (ratio == v4k::kCsaRatio) {
    s = AppendChecked(keys, e, kIndexerDim, 4, &C.key_codes, &C.key_sc, v4k::CopyIndexerBlock);
    if (!s.ok()) {
      C.entry_tok.resize(e0 * kV4TokenBytes);
      C.entry_sc.resize(e0 * kV4ScaleBytes);
      return Annotate(s, kv::StrCat("layer ", layer, " indexer keys"));
    }
  }
  cache->import_end_ = end;
  return absl::OkStatus();
}

absl::Status V4Model::FinishImport(int64_t end, std::optional<std::span<const uint8_t>> resume,
                                   V4Cache* cache) const {
  RETURN_IF_ERROR(CheckImportTarget(cache));
  if (end <= cache->num_tokens_ || (cache->import_end_ >= 0 && cache->import_end_ != end)) {
    return absl::FailedPreconditionError(kv::StrCat("finish import: end ", end,
                                                    ", the cache holds ", cache->num_tokens_,
                                                    " tokens, import to ", cache->import_end_));
  }
  for (int l = 0; l < v4_.num_layers(); ++l) {
    const int ratio = v4_.compress_ratios[l];
    const int64_t want = V4EntriesBefore(end, ratio);
    if (cache->num_entries(l) != want ||
        (ratio == v4k::kCsaRatio && cache->num_index_keys(l) != want)) {
      return absl::FailedPreconditionError(
          kv::StrCat("finish import: layer ", l, " holds ", cache->num_entries(l), " entries and ",
                     cache->num_index_keys(l), " keys; token ", end, " needs ", want));
    }
  }
  std::vector<ResumeLayer> resumed;
  if (resume) {
    ASSIGN_OR_RETURN(resumed, ParseResume(*resume, end));
  }
  // Everything checked: commit.
  for (int l = 0; l < v4_.num_layers(); ++l) {
    V4Cache::Layer& C = cache->layers_[l];
    C.window.clear();  // rebuilt from the records by the next forward (DecodeWindow)
    if (resume) {
      C.main = std::move(resumed[l].main);
      C.index = std::move(resumed[l].index);
      C.window_tok = std::move(resumed[l].window_tok);
      C.window_sc = std::move(resumed[l].window_sc);
    } else {
      C.main.reset();
      C.index.reset();
      C.window_tok.clear();
      C.window_sc.clear();
    }
    C.window_start = end - cache->WindowRows(C);
  }
  cache->num_tokens_ = end;
  cache->continuable_ = resume.has_value();
  cache->import_end_ = -1;
  // The resume payload is not copied: the state at `end` is the cache's own until it moves
  // on, and Prefill snapshots it at its start when `end` is a page end (HasResumeAt).
  return absl::OkStatus();
}

void V4Model::AbortImport(V4Cache* cache) const {
  if (cache != nullptr) cache->TruncateRecords(cache->num_tokens_);
}

absl::StatusOr<std::vector<V4Model::ResumeLayer>> V4Model::ParseResume(std::span<const uint8_t> r,
                                                                       int64_t end) const {
  auto bad = [](auto... p) { return absl::DataLossError(kv::StrCat("resume section: ", p...)); };
  if (r.size() < kResumeHeaderBytes || std::memcmp(r.data(), kResumeMagic, 4) != 0) {
    return bad("bad magic or truncated header");
  }
  if (GetLe(r.data() + 4, 2) != kResumeVersion) {
    return absl::UnimplementedError(
        kv::StrCat("resume section version ", GetLe(r.data() + 4, 2), " is not 1"));
  }
  const int layers = v4_.num_layers();
  const uint64_t n_layers = GetLe(r.data() + 8, 4), wt = GetLe(r.data() + 12, 4);
  const uint64_t rend = GetLe(r.data() + 16, 8);
  if (GetLe(r.data() + 6, 2) != 0) return bad("reserved bytes are not zero");
  if (n_layers != static_cast<uint64_t>(layers)) {
    return bad(n_layers, " layers, the model has ", layers);
  }
  if (rend != static_cast<uint64_t>(end)) {
    return bad("state is for token ", rend, ", the import ends at token ", end);
  }
  if (wt != static_cast<uint64_t>(std::min<int64_t>(v4_.sliding_window, end))) {
    return bad(wt, " window tokens, want min(window, ", end, ")");
  }
  std::vector<ResumeLayer> out(layers);
  size_t off = kResumeHeaderBytes;
  for (int l = 0; l < layers; ++l) {
    RETURN_IF_ERROR(ParseResumeLayer(r, &off, l, end, wt, &out[l]));
  }
  if (off != r.size()) return bad(r.size() - off, " trailing bytes");
  return out;
}

absl::Status V4Model::ParseResumeLayer(std::span<const uint8_t> r, size_t* off_io, int l,
                                       int64_t end, uint64_t wt, ResumeLayer* out) const {
  auto bad = [](auto... p) { return absl::DataLossError(kv::StrCat("resume section: ", p...)); };
  size_t off = *off_io;
  if (r.size() - off < kResumeLayerHeaderBytes) return bad("truncated at layer ", l);
  const uint64_t ratio = GetLe(&r[off], 4), ml = GetLe(&r[off + 4], 4), il = GetLe(&r[off + 8], 4),
                 wl = GetLe(&r[off + 12], 4);
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
  const std::optional<v4k::Compressor>* comps[2] = {&main_comp_[l], &index_comp_[l]};
  std::optional<v4k::CompressorStream>* streams[2] = {&out->main, &out->index};
  const uint64_t lens[2] = {ml, il};
  for (int i = 0; i < 2; ++i) {
    if (lens[i] == 0) continue;
    auto st = v4k::CompressorStream::Deserialize(
        **comps[i], std::string(reinterpret_cast<const char*>(&r[off]), lens[i]));
    if (!st.ok()) return Annotate(st.status(), kv::StrCat("resume section: layer ", l));
    if (st->next_position() != end) {
      return bad("layer ", l, i == 0 ? " compressor" : " indexer", " is at another token");
    }
    *streams[i] = *std::move(st);
    off += lens[i];
  }
  absl::Status s =
      AppendChecked(r.subspan(off, wl), static_cast<int64_t>(wt), kV4TokenBytes, kV4ScaleBytes,
                    &out->window_tok, &out->window_sc, v4k::CopyV4Block);
  if (!s.ok()) return Annotate(s, kv::StrCat("resume section: layer ", l, " window"));
  *off_io = off + wl;
  return absl::OkStatus();
}

}  // namespace kv::model
