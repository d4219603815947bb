// `kvstrata bench v4`: CPU throughput of the DeepSeek-V4 kernels (kernels/v4), single thread.
//  - compressors (CSA m=4 main 512-d, CSA indexer 128-d, HCA m=128 512-d): GB/s of projected
//    input read (C and Z rows, fp32), one-shot over --tokens tokens;
//  - sparse attention for one decode query (V4-Flash shape: 64 heads, top-512 CSA entries +
//    128-token window): GB/s of kv read (selected entries + window, fp32) and queries/s;
//  - v4-fp8-584 encode: GB/s of fp32 kv read;
//  - page import (the cache-load path of a V4 request): a tiny-v4 model prefills --pages
//    256-token pages, exports them (a resume section on the last only, as a cached run
//    looks), and the run is imported (verify checksums + verify and copy the records into the
//    cache; nothing is dequantized) into a cache reserved for it: GB/s of page bytes, with and
//    without creating that cache, next to the page decode + checksum verification alone
//    (DecodePage) over the same bytes; limit: memcpy over a buffer of the run's size;
//  - tiny-v4 decode steps after that prompt, on the cache that computed it and on one that
//    imported its pages (steps/s; no limit: compare builds).
// --only=kernels / --only=import runs one group (import: the page-import rows, no decode).
// The kernels' limit, measured in the same run, is single-thread memcpy bandwidth
// (kv::bench::MeasureMemcpyGBps) over a buffer the size of the compressor input; the ratio
// says how close each kernel is to just streaming its input. Inputs are fresh random values.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/test_util.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/indexer.h"
#include "kernels/v4/sparse_attention.h"
#include "kernels/v4/v4_config.h"
#include "kernels/v4/v4_record.h"
#include "kvstore/page_format.h"
#include "model/config.h"
#include "model/test_util.h"
#include "model/v4_model.h"
#include "model/weights.h"

namespace kv::bench {
namespace {

namespace v4 = kv::kernels::v4;

absl::StatusOr<double> MedianSecs(int64_t runs, const std::function<absl::Status()>& fn) {
  std::vector<double> t;
  for (int64_t i = 0; i <= runs; ++i) {
    const double t0 = NowSeconds();
    RETURN_IF_ERROR(fn());
    if (i > 0) t.push_back(NowSeconds() - t0);
  }
  return Median(t);
}

// tiny-v4 decode steps after the prompt, on the cache that computed it and on one that
// imported its pages: steps/s (median over `runs` runs of kDecodeSteps steps each). No limit:
// the figure is compared across builds (docs/benchmarks.md, "Page import").
absl::Status AddDecodeRows(const model::V4Model& m, const model::V4Cache& src,
                           const std::vector<std::vector<uint8_t>>& run, int64_t runs,
                           BenchReport* r) {
  constexpr int64_t kDecodeSteps = 32;
  const int64_t ctx = src.num_tokens();
  for (const bool imported : {false, true}) {
    std::vector<double> secs;
    for (int64_t i = 0; i <= runs; ++i) {
      std::unique_ptr<model::V4Cache> c;
      if (imported) {
        c = m.NewCache();
        c->Reserve(ctx + kDecodeSteps);
        for (const auto& page : run) RETURN_IF_ERROR(m.ImportPage(page, c.get()));
      } else {
        c = std::make_unique<model::V4Cache>(src);  // a copy: decode appends to it
      }
      const double t0 = NowSeconds();
      for (int64_t s = 0; s < kDecodeSteps; ++s) {
        RETURN_IF_ERROR(m.DecodeStep(32 + static_cast<int32_t>(s % 90), ctx + s, c.get()).status());
      }
      if (i > 0) secs.push_back(NowSeconds() - t0);
    }
    r->Add({.name = imported ? "tiny-v4 decode step, cache imported from pages"
                             : "tiny-v4 decode step, cache computed here",
            .value = kDecodeSteps / Median(secs),
            .unit = "steps/s",
            .params = {{"context", kv::StrCat(ctx, "..", ctx + kDecodeSteps)}}});
  }
  return absl::OkStatus();
}

// The three compressors over fresh random inputs.
absl::Status AddCompressorRows(int64_t tokens, int64_t runs, double limit,
                               kernels::testing::Rng& rng, BenchReport* r) {
  const v4::V4Config cfg = v4::V4FlashConfig();
  struct Comp {
    const char* name;
    int ratio, dim;
  };
  for (const Comp c :
       {Comp{"CSA compressor 512-d (m=4)", 4, 512}, Comp{"CSA indexer compressor 128-d", 4, 128},
        Comp{"HCA compressor 512-d (m=128)", 128, 512}}) {
    const int iw = c.ratio == 4 ? 2 * c.dim : c.dim;
    ASSIGN_OR_RETURN(
        auto comp,
        v4::Compressor::Create({.ratio = c.ratio, .dim = c.dim}, rng.NormalVector(c.ratio * iw),
                               std::vector<float>(c.dim, 1.0f), v4::CompressRopeParams(cfg)));
    std::vector<float> cc = rng.NormalVector(tokens * iw), zz = rng.NormalVector(tokens * iw), out;
    out.reserve(tokens / c.ratio * c.dim);
    ASSIGN_OR_RETURN(double secs, MedianSecs(runs, [&] {
                       out.clear();
                       return comp.CompressAll(cc.data(), zz.data(), tokens, &out);
                     }));
    const double bytes = 2.0 * tokens * iw * 4;
    r->Add(
        {.name = kv::StrCat(c.name, " (input read)"),
         .value = bytes / secs / 1e9,
         .unit = "GB/s",
         .limit_name = "memcpy 1 thread",
         .limit = limit,
         .params = {{"tokens", kv::StrCat(tokens)}, {"Mtok/s", kv::StrCat(tokens / secs / 1e6)}}});
  }
  return absl::OkStatus();
}

// Compressors, sparse attention and the 584-B encoder over fresh random inputs.
absl::Status AddKernelRows(int64_t tokens, int64_t runs, BenchReport* r) {
  kernels::testing::Rng rng;
  const v4::V4Config cfg = v4::V4FlashConfig();
  const double limit = MeasureMemcpyGBps(static_cast<size_t>(tokens) * 1024 * 4);
  RETURN_IF_ERROR(AddCompressorRows(tokens, runs, limit, rng, r));
  {  // Sparse attention, one query at position tokens-1.
    const int H = cfg.n_heads, d = 512, k = cfg.index_topk;
    const int64_t pos = std::max<int64_t>(tokens - 1, 4 * k + 3);
    const int64_t ne = v4::NumVisibleEntries(pos, 4);
    std::vector<float> entries = rng.NormalVector(ne * d), window = rng.NormalVector(128 * d);
    std::vector<float> q = rng.NormalVector(H * d), sink = rng.NormalVector(H), out(H * d);
    std::vector<int32_t> idx = v4::AllVisibleIndices(pos, 4);
    std::shuffle(idx.begin(), idx.end(), rng.gen());
    idx.resize(k);
    ASSIGN_OR_RETURN(auto freqs, kernels::RopeFrequencies(v4::CompressRopeParams(cfg)));
    const v4::SparseAttentionArgs a{.position = pos,
                                    .n_heads = H,
                                    .q = q.data(),
                                    .sink = sink.data(),
                                    .entries = entries.data(),
                                    .n_entries = ne,
                                    .ratio = 4,
                                    .indices = idx.data(),
                                    .n_indices = k,
                                    .window = window.data(),
                                    .n_window = 128};
    ASSIGN_OR_RETURN(double secs,
                     MedianSecs(runs, [&] { return v4::SparseAttention(a, freqs, out.data()); }));
    const double bytes = (k + 128.0) * d * 4;
    r->Add({.name = "sparse attention 64 heads, top-512 + 128 window (kv read)",
            .value = bytes / secs / 1e9,
            .unit = "GB/s",
            .limit_name = "memcpy 1 thread",
            .limit = limit,
            .params = {{"queries/s", kv::StrCat(1.0 / secs)},
                       {"GFLOP/s", kv::StrCat(4.0 * H * (k + 128) * d / secs / 1e9)}}});
  }
  {  // v4-fp8-584 encode.
    const int64_t B = 64, blocks = std::max<int64_t>(1, tokens / B);
    std::vector<float> kv = rng.NormalVector(blocks * B * 512);
    std::vector<uint8_t> blk(blocks * v4::V4BlockBytes(B));
    ASSIGN_OR_RETURN(
        double secs, MedianSecs(runs, [&]() -> absl::Status {
          for (int64_t b = 0; b < blocks; ++b) {
            RETURN_IF_ERROR(v4::EncodeV4Block(&kv[b * B * 512], B, B, &blk[b * v4::V4BlockBytes(B)],
                                              v4::V4BlockBytes(B)));
          }
          return absl::OkStatus();
        }));
    r->Add({.name = "v4-fp8-584 encode (f32 read)",
            .value = blocks * B * 2048.0 / secs / 1e9,
            .unit = "GB/s",
            .limit_name = "memcpy 1 thread",
            .limit = limit});
  }
  return absl::OkStatus();
}

// The load path of a cached V4 run: a tiny-v4 model prefills `pages` pages, exports them (a
// resume section on the last only, as a cached run looks), and the run is imported into a
// fresh cache reserved for it (as a serving sequence is); then decode steps (AddDecodeRows).
absl::Status AddPageRows(int64_t runs, int64_t pages, bool decode, BenchReport* r) {
  const std::string dir = model::testing::FreshTempDir("bench-v4-import");
  ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig("tiny-v4"));
  RETURN_IF_ERROR(model::WriteRandomModel(c, 1, dir));
  absl::StatusOr<std::unique_ptr<model::V4Model>> m = model::V4Model::Load(dir);
  std::filesystem::remove_all(dir);
  if (!m.ok()) return m.status();
  std::vector<int32_t> prompt(static_cast<size_t>(pages * model::kV4PageTokens));
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = 32 + static_cast<int32_t>(i * 7 % 90);
  std::unique_ptr<model::V4Cache> src = (*m)->NewCache();
  RETURN_IF_ERROR((*m)->Prefill(prompt, 0, src.get()).status());
  std::vector<std::vector<uint8_t>> run;
  uint64_t bytes = 0;
  for (int64_t p = 0; p < pages; ++p) {
    ASSIGN_OR_RETURN(std::vector<uint8_t> page, src->ExportPage(p, p + 1 == pages));
    bytes += page.size();
    run.push_back(std::move(page));
  }
  // The import alone (the cache created and reserved before the clock starts), and with the
  // cache's creation (NewCache: empty compressor states; Reserve) counted.
  std::vector<double> import_t, fresh_t;
  for (int64_t i = 0; i <= runs; ++i) {
    const double t0 = NowSeconds();
    std::unique_ptr<model::V4Cache> dst = (*m)->NewCache();
    dst->Reserve(pages * model::kV4PageTokens);  // as a serving sequence does
    const double t1 = NowSeconds();
    for (const auto& page : run) RETURN_IF_ERROR((*m)->ImportPage(page, dst.get()));
    const double t2 = NowSeconds();
    if (!dst->can_continue()) return absl::InternalError("import: not resumable");
    if (i > 0) {
      import_t.push_back(t2 - t1);
      fresh_t.push_back(t2 - t0);
    }
  }
  const double import_secs = Median(import_t), fresh_secs = Median(fresh_t);
  ASSIGN_OR_RETURN(double decode_secs, MedianSecs(runs, [&]() -> absl::Status {
                     for (const auto& page : run) RETURN_IF_ERROR(DecodePage(page).status());
                     return absl::OkStatus();
                   }));
  const std::string what = kv::StrCat(pages, " tiny-v4 pages, ", bytes, " B");
  // The limit over a buffer of the run's size (cache-resident like the pages).
  const double run_limit = MeasureMemcpyGBps(bytes);
  r->Add({.name = "v4 page import (verify + copy records + resume)",
          .value = bytes / import_secs / 1e9,
          .unit = "GB/s",
          .limit_name = "memcpy 1 thread, run-sized",
          .limit = run_limit,
          .params = {{"run", what}}});
  r->Add({.name = "v4 page import into a new cache (NewCache + Reserve + import)",
          .value = bytes / fresh_secs / 1e9,
          .unit = "GB/s",
          .limit_name = "memcpy 1 thread, run-sized",
          .limit = run_limit,
          .params = {{"run", what}}});
  r->Add({.name = "v4 page decode + verify only",
          .value = bytes / decode_secs / 1e9,
          .unit = "GB/s",
          .limit_name = "memcpy 1 thread, run-sized",
          .limit = run_limit,
          .params = {{"run", what}}});
  if (decode) RETURN_IF_ERROR(AddDecodeRows(**m, *src, run, runs, r));
  return absl::OkStatus();
}

absl::Status RunV4(int64_t tokens, int64_t runs, int64_t pages, const std::string& only,
                   const std::string& json) {
  if (tokens < 128 || runs < 1 || pages < 1 || pages > 64)
    return absl::InvalidArgumentError("need --tokens >= 128, --runs >= 1, --pages in 1..64");
  if (!only.empty() && only != "kernels" && only != "import")
    return absl::InvalidArgumentError("--only is kernels or import");
  BenchReport r("v4");
  if (only.empty() || only == "kernels") RETURN_IF_ERROR(AddKernelRows(tokens, runs, &r));
  if (only.empty() || only == "import") RETURN_IF_ERROR(AddPageRows(runs, pages, only.empty(), &r));
  r.Note("threads", "1");
  r.Note("runs", kv::StrCat(runs, " timed runs after a warm-up, median"));
  r.Print();
  return r.WriteJson(json);
}

int RunBenchV4(int argc, char** argv) {
  int64_t tokens = 65536, runs = 5, pages = 4;
  std::string json, only;
  FlagSet flags("kvstrata bench v4");
  flags.Int("tokens", &tokens, "tokens per compressor run (also the attention query position)");
  flags.Int("runs", &runs, "timed runs (the median is reported)");
  flags.Int("pages", &pages, "256-token tiny-v4 pages in the page-import run");
  flags.String("only", &only, "run one group: kernels, or import (page import rows only)");
  flags.String("json", &json, "also write the report as JSON to this file");
  return RunSuite(flags, argc, argv, [&] { return RunV4(tokens, runs, pages, only, json); });
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(v4, "DeepSeek-V4 compressors, sparse attention, 584 codec (CPU), vs memcpy",
                  kv::bench::RunBenchV4);
