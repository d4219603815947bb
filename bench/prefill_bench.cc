// `kvstrata bench prefill`: tiny-v3 prefill throughput on the CPU reference forward.
//
// Generates the seeded tiny-v3 model (or loads --model=DIR), prefills a random prompt of
// --tokens tokens into mla-fp8-656 pages and reports tokens/s and GFLOP/s. FLOPs are
// counted by Transformer::ForwardFlops: 2 per multiply-add of every projection over the real
// (unpadded) rows, the absorbed attention (576-d scores + 512-d values over each query's
// causal context, per head and layer), the W_UK / W_UV absorptions and one lm_head row.
//
// Limit, measured in the same run: OpenBLAS sgemm GFLOP/s at the shape the forward actually
// issues (model/row_gemm.h: every GEMM is a 16-row tile; measured at 16 x 768 x 256, the
// q projection) and, for context, at a full-chunk shape (256 x 768 x 256). A third row
// reports decode tokens/s against the rate the 16-row sgemm would allow.
//
//   kvstrata bench prefill [--tokens=1024] [--chunk=256] [--runs=3] [--model=DIR] [--json=F]
#include <unistd.h>

#include <cblas.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/gemm.h"
#include "model/config.h"
#include "model/row_gemm.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "model/weights.h"

namespace kv::cmd {
namespace {

using bench::BenchReport;
using bench::NowSeconds;

struct PrefillBenchFlags {
  int64_t tokens = 1024;
  int64_t chunk = 256;
  int64_t runs = 3;
  std::string model_dir;
  std::string json;
};

// Median GFLOP/s of `reps` timed batches of sgemm C[m×n] = A[m×k]·Bᵀ (B stored n×k, the
// nn.Linear shape), each batch long enough (~50 ms) to time reliably.
absl::StatusOr<double> SgemmGflops(int64_t m, int64_t n, int64_t k, int reps) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> a(m * k), b(n * k), c(m * n);
  for (float& x : a) x = nd(rng);
  for (float& x : b) x = nd(rng);
  const double flops = 2.0 * m * n * k;
  RETURN_IF_ERROR(kernels::Linear(a.data(), m, k, b.data(), n, c.data()));  // warm-up
  double t0 = NowSeconds();
  int64_t iters = 0;
  while (NowSeconds() - t0 < 0.02) {
    RETURN_IF_ERROR(kernels::Linear(a.data(), m, k, b.data(), n, c.data()));
    ++iters;
  }
  iters = std::max<int64_t>(1, iters * 5 / 2);  // ~50 ms per batch
  std::vector<double> g;
  for (int r = 0; r < reps; ++r) {
    t0 = NowSeconds();
    for (int64_t i = 0; i < iters; ++i) {
      RETURN_IF_ERROR(kernels::Linear(a.data(), m, k, b.data(), n, c.data()));
    }
    g.push_back(flops * iters / (NowSeconds() - t0) / 1e9);
  }
  return bench::Median(g);
}

absl::StatusOr<std::unique_ptr<model::Transformer>> LoadOrMake(const std::string& dir,
                                                               int64_t max_context) {
  model::TransformerOptions o{.max_context = max_context};
  if (!dir.empty()) return model::Transformer::Load(dir, o);
  const std::string tmp =
      (std::filesystem::temp_directory_path() / StrCat("kvstrata-prefill-bench-", ::getpid()))
          .string();
  ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig("tiny-v3"));
  RETURN_IF_ERROR(model::WriteRandomModel(c, 1, tmp));
  auto t = model::Transformer::Load(tmp, o);
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
  return t;
}

absl::Status RunPrefillBench(const PrefillBenchFlags& f) {
  if (f.tokens < 16 || f.chunk < 1 || f.runs < 1) {
    return absl::InvalidArgumentError("need --tokens >= 16, --chunk >= 1, --runs >= 1");
  }
  // One OpenBLAS thread: the forward issues many small 16-row GEMMs (model/row_gemm.h), for
  // which a thread pool only adds synchronisation (and spin-waits badly on a busy machine),
  // and one thread makes page bytes independent of the host's core count. kernels/gemm.h has
  // no thread setting yet, so this calls OpenBLAS directly.
  openblas_set_num_threads(1);
  ASSIGN_OR_RETURN(auto model, LoadOrMake(f.model_dir, f.tokens + 64));
  const model::ModelConfig& c = model->config();
  std::mt19937_64 rng(7);
  std::vector<int32_t> prompt(f.tokens);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % c.vocab_size);
  std::vector<double> secs;
  for (int64_t r = 0; r < f.runs; ++r) {
    ASSIGN_OR_RETURN(auto kv, model->NewCache(kernels::KvLayout::kMlaFp8_656, f.tokens + 64));
    const double t0 = NowSeconds();
    ASSIGN_OR_RETURN(auto logits, model->Prefill(prompt, 0, kv.get(), {.chunk_tokens = f.chunk}));
    secs.push_back(NowSeconds() - t0);
  }
  const double t = bench::Median(secs);
  const double flops = model::Transformer::ForwardFlops(c, 0, f.tokens);
  // Decode: 32 steps after the prompt.
  ASSIGN_OR_RETURN(auto kv, model->NewCache(kernels::KvLayout::kMlaFp8_656, f.tokens + 64));
  ASSIGN_OR_RETURN(auto logits, model->Prefill(prompt, 0, kv.get(), {.chunk_tokens = f.chunk}));
  const int steps = 32;
  double d0 = NowSeconds();
  for (int s = 0; s < steps; ++s) {
    ASSIGN_OR_RETURN(logits, model->DecodeStep(prompt[s], kv->num_tokens(), kv.get()));
  }
  const double decode_s = NowSeconds() - d0;
  const int64_t hq = c.num_attention_heads * c.qk_head_dim();
  ASSIGN_OR_RETURN(double tile_gflops, SgemmGflops(model::kRowTile, hq, c.hidden_size, 5));
  ASSIGN_OR_RETURN(double big_gflops, SgemmGflops(256, hq, c.hidden_size, 5));
  // A decode step issues one 16-row tile per GEMM: its sgemm-bound time is the padded
  // projection FLOPs (16x a token's, minus attention) at the tile rate.
  const double step_flops = model::Transformer::ForwardFlops(c, f.tokens, 1);
  const double attn_flops = step_flops - model::Transformer::ForwardFlops(c, 0, 1);
  const double padded = (step_flops - attn_flops) * model::kRowTile + attn_flops;
  const double decode_limit = tile_gflops * 1e9 / padded;

  BenchReport rep("prefill");
  const std::string shape = StrCat(model::kRowTile, "x", hq, "x", c.hidden_size);
  rep.Add({.name = StrCat("prefill ", f.tokens, " tok GFLOP/s"),
           .value = flops / t / 1e9,
           .unit = "GFLOP/s",
           .limit_name = "sgemm " + shape,
           .limit = tile_gflops});
  rep.Add({.name = StrCat("prefill ", f.tokens, " tok"),
           .value = f.tokens / t,
           .unit = "tok/s",
           .limit_name = "sgemm-bound tok/s",
           .limit = tile_gflops * 1e9 / (flops / f.tokens)});
  rep.Add({.name = "sgemm 16-row tile",
           .value = tile_gflops,
           .unit = "GFLOP/s",
           .limit_name = StrCat("sgemm 256x", hq, "x", c.hidden_size),
           .limit = big_gflops});
  rep.Add({.name = "decode step",
           .value = steps / decode_s,
           .unit = "tok/s",
           .limit_name = "sgemm-bound (16-row tile)",
           .limit = decode_limit});
  rep.Note("model",
           StrCat(c.num_hidden_layers, " layers, hidden ", c.hidden_size, ", ",
                  c.num_attention_heads, " heads, kv_lora 512 + rope 64, layout ", "mla-fp8-656"));
  rep.Note("flops_per_prefill", StrCat(flops));
  rep.Note("runs", StrCat(f.runs, " (median), chunk ", f.chunk));
  rep.Print();
  return rep.WriteJson(f.json);
}

int RunBenchPrefill(int argc, char** argv) {
  PrefillBenchFlags f;
  FlagSet flags("kvstrata bench prefill");
  flags.Int("tokens", &f.tokens, "prompt tokens");
  flags.Int("chunk", &f.chunk, "prefill chunk tokens");
  flags.Int("runs", &f.runs, "timed prefill runs (median)");
  flags.String("model", &f.model_dir, "model directory (default: generate tiny-v3, seed 1)");
  flags.String("json", &f.json, "also write the report as JSON to this file");
  return bench::RunSuite(flags, argc, argv, [&] { return RunPrefillBench(f); });
}

}  // namespace

KV_REGISTER_BENCH(prefill, "tiny-v3 CPU prefill tokens/s and GFLOP/s vs OpenBLAS sgemm",
                  RunBenchPrefill);

}  // namespace kv::cmd
