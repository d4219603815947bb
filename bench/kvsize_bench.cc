// `kvstrata bench kvsize --context=N`: KV-cache bytes of one N-token request for DeepSeek V3,
// V3.2 and V4 (Pro, Flash), two ways:
//  - from the configs (formats.md §1.5, §4.1, §4.6): V3 1152 B (bf16) / 656 B (FP8) per token
//    and layer, V3.2 656 + 132; V4 per CSA layer (128 + N/4) main entries + N/4 indexer keys,
//    per HCA layer (128 + N/128) entries, per window-only layer 128 entries; bf16 1024 B per
//    entry and 256 B per indexer key, FP8 584 + 132;
//  - from records built by our encoders: a 64-token mla-fp8-656 / mla-bf16-1152 page for V3;
//    for V4, one 256-token page per layer kind whose entries come from the real compressors
//    (kernels/v4) on random projections, encoded as v4-fp8-584 blocks ([B×576 | B×8] padded
//    to 576) and 132-B indexer blocks, plus the 128-token window kept once per layer; scaled
//    by the real configs' layer mix. These include block padding (an HCA page's 2 entries
//    take 1,728 B), so they exceed the per-entry figures.
//  - from pages: the tiny models run a real prefill and export real pages (model/v4_model.h
//    v4-fp8-584 pages with indexer keys and a final resume section; model/transformer.h
//    mla-fp8-656 / mla-bf16-1152 pages). Each layer kind's share of a full page (from the
//    entries the cache actually produced, checked against the decoded section sizes), the
//    per-page header, and the resume section's per-layer window + compressor state are
//    scaled by the real configs' layer mix and page count. V4 bf16 (no bf16 page layout
//    exists) comes from the tiny-v4 bf16 A/B cache's stored bytes per token and layer.
// The limit column is the published figure where one exists (vLLM: V4-Pro 9.62 GiB bf16;
// formats.md §1.5: V3 68.6 GiB bf16), otherwise formats.md's derived figure at 2^20; ratios
// for other N compare against the same-N config figure.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/mla_record.h"
#include "kernels/test_util.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/v4_config.h"
#include "kernels/v4/v4_record.h"
#include "kvstore/page_format.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/v4_model.h"
#include "model/weights.h"

namespace kv::bench {
namespace {

namespace v4 = kv::kernels::v4;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// formats.md §4.6, config form.
double V4ConfigBytes(const v4::V4Config& c, int64_t n, double main_b, double idx_b) {
  double total = 0;
  for (int r : c.compress_ratios) {
    if (r == v4::kCsaRatio) total += (128.0 + n / 4) * main_b + (n / 4) * idx_b;
    if (r == v4::kHcaRatio) total += (128.0 + n / 128) * main_b;
    if (r == v4::kWindowOnly) total += 128.0 * main_b;
  }
  return total;
}

// Bytes of each 256-token page kind, from blocks our encoders actually wrote.
struct MeasuredV4 {
  int64_t csa_page = 0, hca_page = 0, window = 0;
};

absl::StatusOr<int64_t> EncodeEntries(v4::Compressor& comp, kernels::testing::Rng& rng,
                                      int64_t tokens, bool indexer) {
  const int iw = comp.in_width();
  std::vector<float> c = rng.NormalVector(tokens * iw), z = rng.NormalVector(tokens * iw), e;
  RETURN_IF_ERROR(comp.CompressAll(c.data(), z.data(), tokens, &e));
  const int64_t n = static_cast<int64_t>(e.size()) / comp.spec().dim;
  std::vector<uint8_t> blk(indexer ? v4::IndexerBlockBytes(n) : v4::V4BlockBytes(n));
  std::vector<float> back(e.size());
  if (indexer) {
    RETURN_IF_ERROR(v4::EncodeIndexerBlock(e.data(), n, n, blk.data(), blk.size()));
    RETURN_IF_ERROR(v4::DecodeIndexerBlock(blk.data(), blk.size(), n, n, back.data()));
  } else {
    RETURN_IF_ERROR(v4::EncodeV4Block(e.data(), n, n, blk.data(), blk.size()));
    RETURN_IF_ERROR(v4::DecodeV4Block(blk.data(), blk.size(), n, n, back.data()));
  }
  return static_cast<int64_t>(blk.size());
}

absl::StatusOr<v4::Compressor> RandomCompressor(kernels::testing::Rng& rng, int ratio, int dim) {
  const int iw = ratio == 4 ? 2 * dim : dim;
  std::vector<float> norm(dim, 1.0f);
  return v4::Compressor::Create({.ratio = ratio, .dim = dim}, rng.NormalVector(ratio * iw), norm,
                                v4::CompressRopeParams(v4::V4Config{}));
}

absl::StatusOr<MeasuredV4> MeasureV4() {
  kernels::testing::Rng rng;
  ASSIGN_OR_RETURN(auto csa, RandomCompressor(rng, 4, 512));
  ASSIGN_OR_RETURN(auto idx, RandomCompressor(rng, 4, 128));
  ASSIGN_OR_RETURN(auto hca, RandomCompressor(rng, 128, 512));
  MeasuredV4 m;
  ASSIGN_OR_RETURN(int64_t csa_main, EncodeEntries(csa, rng, 256, false));
  ASSIGN_OR_RETURN(int64_t csa_idx, EncodeEntries(idx, rng, 256, true));
  ASSIGN_OR_RETURN(m.hca_page, EncodeEntries(hca, rng, 256, false));
  m.csa_page = csa_main + csa_idx;
  // The window: 128 raw kv rows in two 64-token v4-fp8-584 blocks.
  std::vector<float> kv = rng.NormalVector(64 * 512);
  std::vector<uint8_t> blk(v4::V4BlockBytes(64));
  RETURN_IF_ERROR(v4::EncodeV4Block(kv.data(), 64, 64, blk.data(), blk.size()));
  m.window = 2 * static_cast<int64_t>(blk.size());
  return m;
}

double V4MeasuredBytes(const v4::V4Config& c, int64_t n, const MeasuredV4& m) {
  const double pages = static_cast<double>((n + 255) / 256);
  double total = 0;
  for (int r : c.compress_ratios) {
    total += m.window;
    if (r == v4::kCsaRatio) total += pages * m.csa_page;
    if (r == v4::kHcaRatio) total += pages * m.hca_page;
  }
  return total;
}

absl::StatusOr<int64_t> MeasureMlaPage(kernels::KvLayout layout) {
  kernels::testing::Rng rng;
  std::vector<float> lat = rng.NormalVector(64 * 576);
  const int rec = kernels::RecordBytes(layout);
  std::vector<uint8_t> page(64 * rec);
  RETURN_IF_ERROR(kernels::EncodeMlaRecords(
      layout, kernels::MlaSourceF32{lat.data(), 576, lat.data() + 512, 576}, 64, page.data(), rec));
  return static_cast<int64_t>(page.size());
}

// ---- from pages written by the tiny models ---------------------------------------------------

// Byte shares of real pages exported by tiny-v4 after a 512-token prefill (page 1: tokens
// 256..511, full, with the resume section at token 512).
struct PageMeasuredV4 {
  double csa_layer_page = 0, hca_layer_page = 0;  // one layer's kv (+ indexer) bytes per page
  double page_overhead = 0;                       // header, section table, alignment: per page
  double resume_header = 0;                       // resume payload header + section alignment: once
  double resume_csa = 0, resume_hca = 0, resume_window = 0;  // per layer: window + state
  double bf16_csa_token = 0, bf16_hca_token = 0;             // bf16 cache bytes/token/layer
  int64_t page_bytes = 0, page_bytes_no_resume = 0;
};

// Writes the preset to a temporary directory, loads it with `load`, removes the directory.
template <typename T, typename Load>
absl::StatusOr<T> MakeTinyModel(const std::string& preset, Load load) {
  const std::string tmp = (std::filesystem::temp_directory_path() /
                           kv::StrCat("kvstrata-kvsize-", preset, "-", ::getpid()))
                              .string();
  ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig(preset));
  absl::Status s = model::WriteRandomModel(c, 1, tmp);
  absl::StatusOr<T> m = s.ok() ? load(tmp) : absl::StatusOr<T>(s);
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
  return m;
}

absl::StatusOr<PageMeasuredV4> MeasureV4Pages() {
  using M = absl::StatusOr<std::unique_ptr<model::V4Model>>;
  ASSIGN_OR_RETURN(auto model, MakeTinyModel<std::unique_ptr<model::V4Model>>(
                                   "tiny-v4", [](const std::string& d) -> M {
                                     return model::V4Model::Load(d);
                                   }));
  kernels::testing::Rng rng;
  std::vector<int32_t> tokens(512);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.Int(0, 255));
  auto fp8 = model->NewCache(model::V4CacheFormat::kFp8);
  auto bf16 = model->NewCache(model::V4CacheFormat::kBf16);
  RETURN_IF_ERROR(model->Prefill(tokens, 0, fp8.get()).status());
  RETURN_IF_ERROR(model->Prefill(tokens, 0, bf16.get()).status());
  ASSIGN_OR_RETURN(std::vector<uint8_t> page, fp8->ExportPage(1, true));
  ASSIGN_OR_RETURN(std::vector<uint8_t> bare, fp8->ExportPage(1, false));
  ASSIGN_OR_RETURN(PageView v, DecodePage(page));
  const std::vector<int64_t>& ratios = model->config().compress_ratios;
  PageMeasuredV4 m;
  m.page_bytes = static_cast<int64_t>(page.size());
  m.page_bytes_no_resume = static_cast<int64_t>(bare.size());
  // Per layer: the entries the cache produced for page 1, in their block sizes.
  int64_t kv_sum = 0, idx_sum = 0, n_csa = 0, n_hca = 0, n_win = 0;
  for (size_t l = 0; l < ratios.size(); ++l) {
    if (ratios[l] == 0) continue;
    const int64_t e = fp8->num_entries(static_cast<int>(l)) / 2;  // page 1's half of 512 tokens
    const int64_t main = v4::V4BlockBytes(e);
    const int64_t idx = ratios[l] == 4 ? v4::IndexerBlockBytes(fp8->num_index_keys(l) / 2) : 0;
    kv_sum += main;
    idx_sum += idx;
    if (ratios[l] == 4) {
      m.csa_layer_page += main + idx;
      ++n_csa;
    } else {
      m.hca_layer_page += main;
      ++n_hca;
    }
  }
  if (kv_sum != static_cast<int64_t>(v.kv().size()) ||
      idx_sum != static_cast<int64_t>(v.indexer_keys().size())) {
    return absl::InternalError(kv::StrCat("kvsize: page sections ", v.kv().size(), " + ",
                                          v.indexer_keys().size(), " B, entries imply ", kv_sum,
                                          " + ", idx_sum));
  }
  m.csa_layer_page /= std::max<int64_t>(n_csa, 1);
  m.hca_layer_page /= std::max<int64_t>(n_hca, 1);
  m.page_overhead = static_cast<double>(bare.size()) - kv_sum - idx_sum;
  // Resume payload: 24-byte header, then per layer 16 bytes + states + window block.
  std::span<const uint8_t> r = v.resume();
  size_t off = 24;
  double rc = 0, rh = 0, rw = 0;
  for (size_t l = 0; l < ratios.size(); ++l) {
    uint32_t len[3];
    if (off + 16 > r.size()) return absl::InternalError("kvsize: short resume section");
    std::memcpy(len, &r[off + 4], 12);
    const double bytes = 16.0 + len[0] + len[1] + len[2];
    off += 16 + len[0] + len[1] + len[2];
    (ratios[l] == 4 ? rc : ratios[l] == 128 ? rh : rw) += bytes;
    n_win += ratios[l] == 0;
  }
  m.resume_csa = rc / std::max<int64_t>(n_csa, 1);
  m.resume_hca = rh / std::max<int64_t>(n_hca, 1);
  m.resume_window = rw / std::max<int64_t>(n_win, 1);
  m.resume_header = static_cast<double>(page.size()) - bare.size() - (off - 24);
  // bf16 A/B cache: stored bytes per token and layer kind.
  for (size_t l = 0; l < ratios.size(); ++l) {
    const double b = bf16->LayerCompressedBytes(static_cast<int>(l)) / 512.0;
    if (ratios[l] == 4) m.bf16_csa_token += b / n_csa;
    if (ratios[l] == 128) m.bf16_hca_token += b / n_hca;
  }
  return m;
}

double V4PageBytes(const v4::V4Config& c, int64_t n, const PageMeasuredV4& m) {
  const double pages = static_cast<double>((n + 255) / 256);
  double total = pages * m.page_overhead + m.resume_header;
  for (int r : c.compress_ratios) {
    if (r == v4::kCsaRatio) total += pages * m.csa_layer_page + m.resume_csa;
    if (r == v4::kHcaRatio) total += pages * m.hca_layer_page + m.resume_hca;
    if (r == v4::kWindowOnly) total += m.resume_window;
  }
  return total;
}

double V4Bf16CacheBytes(const v4::V4Config& c, int64_t n, const PageMeasuredV4& m) {
  const double window = 128.0 * 1024;  // 128 bf16 window rows per layer
  double total = 0;
  for (int r : c.compress_ratios) {
    total += window;
    if (r == v4::kCsaRatio) total += n * m.bf16_csa_token;
    if (r == v4::kHcaRatio) total += n * m.bf16_hca_token;
  }
  return total;
}

// tiny-v3: a real 64-token prefill, its block exported and encoded as a page. Returns the
// page bytes (4 layers) and the header bytes.
absl::StatusOr<std::pair<int64_t, int64_t>> MeasureV3Page(kernels::KvLayout layout) {
  using M = absl::StatusOr<std::unique_ptr<model::Transformer>>;
  ASSIGN_OR_RETURN(auto model, MakeTinyModel<std::unique_ptr<model::Transformer>>(
                                   "tiny-v3", [](const std::string& d) -> M {
                                     return model::Transformer::Load(d, {.max_context = 1024});
                                   }));
  kernels::testing::Rng rng;
  std::vector<int32_t> tokens(64);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.Int(0, 255));
  ASSIGN_OR_RETURN(auto cache, model->NewCache(layout, 64));
  RETURN_IF_ERROR(model->Prefill(tokens, 0, cache.get()).status());
  ASSIGN_OR_RETURN(std::string block, cache->ExportBlock(0));
  ASSIGN_OR_RETURN(LayoutInfo info, LookupLayout(kernels::LayoutName(layout)));
  PageSpec spec{.layout = info.id,
                .token_count = 64,
                .first_layer = 0,
                .layer_count = static_cast<uint32_t>(model->config().num_hidden_layers)};
  ASSIGN_OR_RETURN(
      std::vector<uint8_t> page,
      EncodePage(spec, {reinterpret_cast<const uint8_t*>(block.data()), block.size()}));
  return std::pair<int64_t, int64_t>{static_cast<int64_t>(page.size()),
                                     static_cast<int64_t>(PageHeaderBytes(1))};
}

// Where the measured sizes come from.
void AddNotes(int64_t n, const MeasuredV4& m, const PageMeasuredV4& pm,
              std::pair<int64_t, int64_t> v3p_fp8, std::pair<int64_t, int64_t> v3p_bf16,
              BenchReport& r) {
  r.Note("context_tokens", kv::StrCat(n));
  r.Note("v4_page_bytes", kv::StrCat("CSA page (64 entries + 64 indexer keys) ", m.csa_page,
                                     " B, HCA page (2 entries) ", m.hca_page, " B, window ",
                                     m.window, " B per layer"));
  r.Note("v4_tiny_pages",
         kv::StrCat("tiny-v4 page 1 of a 512-token prefill: ", pm.page_bytes, " B with resume, ",
                    pm.page_bytes_no_resume, " B without; per page: CSA layer ",
                    static_cast<int64_t>(pm.csa_layer_page), " B, HCA layer ",
                    static_cast<int64_t>(pm.hca_layer_page), " B, header ",
                    static_cast<int64_t>(pm.page_overhead), " B; resume per layer: CSA ",
                    static_cast<int64_t>(pm.resume_csa), " B, HCA ",
                    static_cast<int64_t>(pm.resume_hca), " B, window-only ",
                    static_cast<int64_t>(pm.resume_window), " B"));
  r.Note("v3_tiny_pages",
         kv::StrCat("tiny-v3 64-token 4-layer page: fp8 ", v3p_fp8.first, " B, bf16 ",
                    v3p_bf16.first, " B (header ", v3p_fp8.second, " B)"));
  r.Note("layers",
         "V3/V3.2 61; V4-Pro 61 = 31 HCA + 30 CSA; V4-Flash 43 = 2 window + 21 CSA + 20 HCA");
}

absl::Status RunKvSize(int64_t n, const std::string& json) {
  if (n < 1) return absl::InvalidArgumentError(kv::StrCat("--context ", n, " must be >= 1"));
  const bool at_1m = n == (int64_t{1} << 20);
  const v4::V4Config pro = v4::V4ProConfig(), flash = v4::V4FlashConfig();
  RETURN_IF_ERROR(v4::ValidateV4Config(pro));
  RETURN_IF_ERROR(v4::ValidateV4Config(flash));
  ASSIGN_OR_RETURN(const MeasuredV4 m, MeasureV4());
  ASSIGN_OR_RETURN(const int64_t v3_fp8_page, MeasureMlaPage(kernels::KvLayout::kMlaFp8_656));
  ASSIGN_OR_RETURN(const int64_t v3_bf16_page, MeasureMlaPage(kernels::KvLayout::kMlaBf16_1152));
  ASSIGN_OR_RETURN(const PageMeasuredV4 pm, MeasureV4Pages());
  ASSIGN_OR_RETURN(const auto v3p_fp8, MeasureV3Page(kernels::KvLayout::kMlaFp8_656));
  ASSIGN_OR_RETURN(const auto v3p_bf16, MeasureV3Page(kernels::KvLayout::kMlaBf16_1152));
  // tiny-v3 pages hold 4 layers x 64 tokens; scale the records to 61 layers, one header per
  // 64-token page.
  auto v3_pages = [&](std::pair<int64_t, int64_t> p) {
    const double pages = static_cast<double>((n + 63) / 64);
    return pages * (p.second + (p.first - p.second) / 4.0 * 61);
  };
  const double N = static_cast<double>(n), L3 = 61;
  struct Item {
    std::string name;
    double bytes;
    std::string limit_name;
    double limit_gib;
  };
  const double v3_bf16 = 1152 * L3 * N, v3_fp8 = 656 * L3 * N, v32_fp8 = (656 + 132) * L3 * N;
  const double pro_bf16 = V4ConfigBytes(pro, n, 1024, 256),
               flash_bf16 = V4ConfigBytes(flash, n, 1024, 256);
  const double pro_fp8 = V4ConfigBytes(pro, n, 584, 132),
               flash_fp8 = V4ConfigBytes(flash, n, 584, 132);
  auto lim = [&](double published_gib, double same_n_bytes) {
    return at_1m ? published_gib : same_n_bytes / kGiB;
  };
  const std::string pub = at_1m ? "published" : "config, same N";
  const std::string der = at_1m ? "formats.md derived" : "config, same N";
  const std::vector<Item> items = {
      {"V3 bf16 (config)", v3_bf16, at_1m ? "published (formats §1.5)" : pub, lim(68.6, v3_bf16)},
      {"V3 bf16 (records)", v3_bf16_page / 64.0 * L3 * N, "V3 bf16 config", v3_bf16 / kGiB},
      {"V3 bf16 (tiny-v3 pages)", v3_pages(v3p_bf16), "V3 bf16 config", v3_bf16 / kGiB},
      {"V3 FP8 (config)", v3_fp8, der, lim(39.08, v3_fp8)},
      {"V3 FP8 (records)", v3_fp8_page / 64.0 * L3 * N, "V3 FP8 config", v3_fp8 / kGiB},
      {"V3 FP8 (tiny-v3 pages)", v3_pages(v3p_fp8), "V3 FP8 config", v3_fp8 / kGiB},
      {"V3.2 FP8 (config)", v32_fp8, der, lim(46.94, v32_fp8)},
      {"V3.2 FP8 (656 records + 132)", (v3_fp8_page / 64.0 + 132) * L3 * N, "V3.2 FP8 config",
       v32_fp8 / kGiB},
      {"V4-Pro bf16 (config)", pro_bf16, at_1m ? "published (vLLM)" : pub, lim(9.62, pro_bf16)},
      {"V4-Pro bf16 (tiny-v4 cache)", V4Bf16CacheBytes(pro, n, pm), "V4-Pro bf16 config",
       pro_bf16 / kGiB},
      {"V4-Pro FP8 (config)", pro_fp8, der, lim(5.39, pro_fp8)},
      {"V4-Pro FP8 (records)", V4MeasuredBytes(pro, n, m), "V4-Pro FP8 config", pro_fp8 / kGiB},
      {"V4-Pro FP8 (tiny-v4 pages)", V4PageBytes(pro, n, pm), "V4-Pro FP8 config", pro_fp8 / kGiB},
      {"V4-Flash bf16 (config)", flash_bf16, at_1m ? "vLLM (formats §4.6)" : pub,
       lim(6.72, flash_bf16)},
      {"V4-Flash FP8 (config)", flash_fp8, der, lim(3.76, flash_fp8)},
      {"V4-Flash FP8 (records)", V4MeasuredBytes(flash, n, m), "V4-Flash FP8 config",
       flash_fp8 / kGiB},
      {"V4-Flash bf16 (tiny-v4 cache)", V4Bf16CacheBytes(flash, n, pm), "V4-Flash bf16 config",
       flash_bf16 / kGiB},
      {"V4-Flash FP8 (tiny-v4 pages)", V4PageBytes(flash, n, pm), "V4-Flash FP8 config",
       flash_fp8 / kGiB},
  };
  BenchReport r("kvsize");
  for (const Item& it : items) {
    r.Add({.name = it.name,
           .value = it.bytes / kGiB,
           .unit = "GiB",
           .limit_name = it.limit_name,
           .limit = it.limit_gib,
           .lower_is_better = true,
           .params = {{"bytes", kv::StrCat(static_cast<int64_t>(it.bytes))}}});
  }
  AddNotes(n, m, pm, v3p_fp8, v3p_bf16, r);
  r.Print();
  return r.WriteJson(json);
}

int RunBenchKvSize(int argc, char** argv) {
  int64_t context = int64_t{1} << 20;
  std::string json;
  FlagSet flags("kvstrata bench kvsize");
  flags.Int("context", &context, "context length in tokens");
  flags.String("json", &json, "also write the report as JSON to this file");
  return RunSuite(flags, argc, argv, [&] { return RunKvSize(context, json); });
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(kvsize, "KV bytes per request: V3, V3.2, V4-Pro/Flash (config and records)",
                  kv::bench::RunBenchKvSize);
