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
// The limit column is the published figure where one exists (vLLM: V4-Pro 9.62 GiB bf16;
// formats.md §1.5: V3 68.6 GiB bf16), otherwise formats.md's derived figure at 2^20; ratios
// for other N compare against the same-N config figure.
#include <cstdio>
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

absl::Status RunKvSize(int64_t n, const std::string& json) {
  if (n < 1) return absl::InvalidArgumentError(kv::StrCat("--context ", n, " must be >= 1"));
  const bool at_1m = n == (int64_t{1} << 20);
  const v4::V4Config pro = v4::V4ProConfig(), flash = v4::V4FlashConfig();
  RETURN_IF_ERROR(v4::ValidateV4Config(pro));
  RETURN_IF_ERROR(v4::ValidateV4Config(flash));
  ASSIGN_OR_RETURN(const MeasuredV4 m, MeasureV4());
  ASSIGN_OR_RETURN(const int64_t v3_fp8_page, MeasureMlaPage(kernels::KvLayout::kMlaFp8_656));
  ASSIGN_OR_RETURN(const int64_t v3_bf16_page, MeasureMlaPage(kernels::KvLayout::kMlaBf16_1152));
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
      {"V3 FP8 (config)", v3_fp8, der, lim(39.08, v3_fp8)},
      {"V3 FP8 (records)", v3_fp8_page / 64.0 * L3 * N, "V3 FP8 config", v3_fp8 / kGiB},
      {"V3.2 FP8 (config)", v32_fp8, der, lim(46.94, v32_fp8)},
      {"V3.2 FP8 (656 records + 132)", (v3_fp8_page / 64.0 + 132) * L3 * N, "V3.2 FP8 config",
       v32_fp8 / kGiB},
      {"V4-Pro bf16 (config)", pro_bf16, at_1m ? "published (vLLM)" : pub, lim(9.62, pro_bf16)},
      {"V4-Pro FP8 (config)", pro_fp8, der, lim(5.39, pro_fp8)},
      {"V4-Pro FP8 (records)", V4MeasuredBytes(pro, n, m), "V4-Pro FP8 config", pro_fp8 / kGiB},
      {"V4-Flash bf16 (config)", flash_bf16, at_1m ? "vLLM (formats §4.6)" : pub,
       lim(6.72, flash_bf16)},
      {"V4-Flash FP8 (config)", flash_fp8, der, lim(3.76, flash_fp8)},
      {"V4-Flash FP8 (records)", V4MeasuredBytes(flash, n, m), "V4-Flash FP8 config",
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
  r.Note("context_tokens", kv::StrCat(n));
  r.Note("v4_page_bytes", kv::StrCat("CSA page (64 entries + 64 indexer keys) ", m.csa_page,
                                     " B, HCA page (2 entries) ", m.hca_page, " B, window ",
                                     m.window, " B per layer"));
  r.Note("layers",
         "V3/V3.2 61; V4-Pro 61 = 31 HCA + 30 CSA; V4-Flash 43 = 2 window + 21 CSA + 20 HCA");
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
