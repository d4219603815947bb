// `kvstrata bench attention`: CPU absorbed-MLA decode attention over paged mla-fp8-656 KV
// (kernels/mla_attention.h), one query token attending to 4K, 32K and 128K cached tokens.
//
// Heads: --heads (default 16, i.e. DeepSeek-V3's 128 query heads split 8-way by tensor
// parallelism, the per-GPU share a decode worker sees; --heads=128 gives the whole model).
// Figures: decode steps/s, cached tokens/s, and GB/s of KV read (656 B per cached token).
// The limit, measured in the same run, is single-thread memcpy bandwidth over a buffer of
// the 128K-token KV's size. OpenBLAS may use its own threads for the GEMMs
// (OPENBLAS_NUM_THREADS); the dequantisation is single-threaded. Pages are filled with real
// quantised records of random latents, reached through a shuffled block table.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "kernels/mla_attention.h"
#include "kernels/paged_kv.h"

namespace kv::bench {
namespace {

using kernels::KvLayout;
using kernels::PagedKvView;

struct AttentionFlags {
  int64_t heads = 16;
  int64_t runs = 3;
  std::string json;
};

constexpr float kV3SoftmaxScale = 0.13523378f;  // formats.md §1.3
constexpr int kPageTokens = 64;

// Fills a pool of `seq` tokens of FP8 records; returns the shuffled block table.
absl::StatusOr<std::vector<int32_t>> FillPool(int64_t seq, std::mt19937_64& rng,
                                              std::vector<uint8_t>* pool) {
  const int64_t blocks = seq / kPageTokens;
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  pool->assign(blocks * kPageTokens * 656, 0);
  const int64_t chunk = 4096;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> src(chunk * 576);
  for (int64_t done = 0; done < seq; done += chunk) {
    for (float& v : src) v = normal(rng);
    RETURN_IF_ERROR(EncodeMlaRecords(KvLayout::kMlaFp8_656,
                                     kernels::MlaSourceF32{src.data(), 576, src.data() + 512, 576},
                                     chunk, pool->data() + done * 656, 656));
  }
  return table;
}

absl::Status RunAttention(const AttentionFlags& f) {
  if (f.heads < 1 || f.heads > 1024 || f.runs < 1) {
    return absl::InvalidArgumentError("need 1 <= heads <= 1024 and runs >= 1");
  }
  std::mt19937_64 rng(std::random_device{}());
  const int64_t seqs[] = {4096, 32768, 131072};
  const double limit = MeasureMemcpyGBps(131072 * 656);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(f.heads * 576), out(f.heads * 512);
  for (float& v : q) v = normal(rng);
  BenchReport r("attention");
  for (int64_t seq : seqs) {
    std::vector<uint8_t> pool;
    ASSIGN_OR_RETURN(std::vector<int32_t> table, FillPool(seq, rng, &pool));
    const PagedKvView kv{pool.data(),
                         kPageTokens * 656,
                         0,
                         kPageTokens,
                         KvLayout::kMlaFp8_656,
                         table.data(),
                         static_cast<int64_t>(table.size()),
                         static_cast<int64_t>(table.size())};
    std::vector<double> t;
    for (int64_t i = 0; i <= f.runs; ++i) {
      const double t0 = NowSeconds();
      RETURN_IF_ERROR(kernels::MlaDecodeAttention(q.data(), static_cast<int>(f.heads), kv, seq,
                                                  kV3SoftmaxScale, out.data(), nullptr));
      if (i > 0) t.push_back(NowSeconds() - t0);
    }
    const double secs = Median(t);
    const std::string ctx = absl::StrCat(seq / 1024, "K");
    const std::map<std::string, std::string> params = {{"cached_tokens", std::to_string(seq)},
                                                       {"heads", std::to_string(f.heads)},
                                                       {"kv_bytes", std::to_string(seq * 656)}};
    r.Add({.name = absl::StrCat("decode fp8 ", ctx, " KV read"),
           .value = seq * 656.0 / secs / 1e9,
           .unit = "GB/s",
           .limit_name = "memcpy 1 thread",
           .limit = limit,
           .params = params});
    r.Add({.name = absl::StrCat("decode fp8 ", ctx, " cached tokens/s"),
           .value = seq / secs / 1e6,
           .unit = "Mtok/s",
           .limit_name = "memcpy of same bytes",
           .limit = limit * 1e9 / 656 / 1e6,
           .params = params});
    r.Add({.name = absl::StrCat("decode fp8 ", ctx, " step"),
           .value = secs * 1e3,
           .unit = "ms",
           .limit_name = "memcpy of same bytes",
           .limit = seq * 656.0 / (limit * 1e9) * 1e3,
           .lower_is_better = true,
           .params = params});
  }
  r.Note("heads", absl::StrCat(f.heads, " (V3 has 128; 16 = one GPU's share at TP=8)"));
  r.Note("runs", absl::StrCat(f.runs, " timed decode steps per length after a warm-up, median"));
  r.Print();
  return r.WriteJson(f.json);
}

int RunBenchAttention(int argc, char** argv) {
  AttentionFlags f;
  FlagSet flags("kvstrata bench attention");
  flags.Int("heads", &f.heads, "query heads (16 = V3's 128 heads at TP=8)");
  flags.Int("runs", &f.runs, "timed decode steps per context length (median reported)");
  flags.String("json", &f.json, "also write the report as JSON to this file");
  return RunSuite(flags, argc, argv, [&] { return RunAttention(f); });
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(attention, "CPU MLA decode attention over FP8 pages (4K/32K/128K), vs memcpy",
                  kv::bench::RunBenchAttention);
