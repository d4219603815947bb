// `kvstrata bench v4`: CPU throughput of the DeepSeek-V4 kernels (kernels/v4), single thread.
//  - compressors (CSA m=4 main 512-d, CSA indexer 128-d, HCA m=128 512-d): GB/s of projected
//    input read (C and Z rows, fp32), one-shot over --tokens tokens;
//  - sparse attention for one decode query (V4-Flash shape: 64 heads, top-512 CSA entries +
//    128-token window): GB/s of kv read (selected entries + window, fp32) and queries/s;
//  - v4-fp8-584 encode: GB/s of fp32 kv read.
// The limit, measured in the same run, is single-thread memcpy bandwidth
// (kv::bench::MeasureMemcpyGBps) over a buffer the size of the compressor input; the ratio
// says how close each kernel is to just streaming its input. Inputs are fresh random values.
#include <algorithm>
#include <cstdio>
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

absl::Status RunV4(int64_t tokens, int64_t runs, const std::string& json) {
  if (tokens < 128 || runs < 1)
    return absl::InvalidArgumentError("need --tokens >= 128, --runs >= 1");
  kernels::testing::Rng rng;
  const v4::V4Config cfg = v4::V4FlashConfig();
  BenchReport r("v4");
  const double limit = MeasureMemcpyGBps(static_cast<size_t>(tokens) * 1024 * 4);
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
    r.Add(
        {.name = kv::StrCat(c.name, " (input read)"),
         .value = bytes / secs / 1e9,
         .unit = "GB/s",
         .limit_name = "memcpy 1 thread",
         .limit = limit,
         .params = {{"tokens", kv::StrCat(tokens)}, {"Mtok/s", kv::StrCat(tokens / secs / 1e6)}}});
  }
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
    r.Add({.name = "sparse attention 64 heads, top-512 + 128 window (kv read)",
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
    r.Add({.name = "v4-fp8-584 encode (f32 read)",
           .value = blocks * B * 2048.0 / secs / 1e9,
           .unit = "GB/s",
           .limit_name = "memcpy 1 thread",
           .limit = limit});
  }
  r.Note("threads", "1");
  r.Note("runs", kv::StrCat(runs, " timed runs after a warm-up, median"));
  r.Print();
  return r.WriteJson(json);
}

int RunBenchV4(int argc, char** argv) {
  int64_t tokens = 65536, runs = 5;
  std::string json;
  FlagSet flags("kvstrata bench v4");
  flags.Int("tokens", &tokens, "tokens per compressor run (also the attention query position)");
  flags.Int("runs", &runs, "timed runs (the median is reported)");
  flags.String("json", &json, "also write the report as JSON to this file");
  return RunSuite(flags, argc, argv, [&] { return RunV4(tokens, runs, json); });
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(v4, "DeepSeek-V4 compressors, sparse attention, 584 codec (CPU), vs memcpy",
                  kv::bench::RunBenchV4);
