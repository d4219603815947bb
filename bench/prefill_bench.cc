// `kvstrata bench prefill`: the CPU reference forward of tiny-v3 (or --model=DIR) on the
// batch-invariant GEMM (kernels/gemm.h), each figure next to a limit measured in the same run.
//
//   1. GEMM at every shape the forward issues, at the prefill chunk's m and at decode's m = 1:
//      the invariant GEMM's GFLOP/s next to OpenBLAS sgemm (one thread each) at the same shape,
//      and the whole projection mix (total FLOPs / total time). Goal: >= 0.8 of sgemm.
//   2. Prefill tokens/s (one thread, and with every core lent through a ThreadPool) next to the
//      same prefill on the pre-#13 path (projections through OpenBLAS in 16-row tiles).
//   3. Decode tokens/s next to the pre-#13 16-row-tile path, same model, same prompt, same run.
//      Goal: >= 3x.
// FLOPs are counted by Transformer::ForwardFlops (2 per multiply-add of every projection over
// the real rows, the absorbed attention and one lm_head row). OpenBLAS runs one thread, as the
// old serving path did (kernels/blas.h); its kernel is whatever this host's OpenBLAS picks.
//
//   kvstrata bench prefill [--tokens=1024] [--chunk=256] [--runs=3] [--decode-steps=64]
//                          [--model=DIR] [--json=F] [--svg=F]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "core/thread_pool.h"
#include "kernels/blas.h"
#include "kernels/gemm.h"
#include "model/config.h"
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
  int64_t decode_steps = 64;
  std::string model_dir;
  std::string json;
  std::string svg;
};

// Median seconds per call of `fn` over `reps` batches, each ~40 ms long.
template <typename Fn>
absl::StatusOr<double> SecondsPerCall(int reps, Fn fn) {
  RETURN_IF_ERROR(fn());  // warm-up
  int64_t iters = 0;
  double t0 = NowSeconds();
  while (NowSeconds() - t0 < 0.02) {
    RETURN_IF_ERROR(fn());
    ++iters;
  }
  iters = std::max<int64_t>(1, iters * 2);
  std::vector<double> per;
  for (int r = 0; r < reps; ++r) {
    t0 = NowSeconds();
    for (int64_t i = 0; i < iters; ++i) RETURN_IF_ERROR(fn());
    per.push_back((NowSeconds() - t0) / static_cast<double>(iters));
  }
  return bench::Median(per);
}

struct Shape {
  std::string name;  // the projection
  int64_t n, k;      // weight [n×k] (nn.Linear order)
  int64_t count;     // times per token row per forward (layers × heads)
};

// Every projection shape of one forward of the MLA model, with how often it runs.
std::vector<Shape> ForwardShapes(const model::ModelConfig& c) {
  const int64_t L = c.num_hidden_layers, h = c.num_attention_heads, d = c.hidden_size;
  std::vector<Shape> s;
  if (c.q_lora_rank == 0) {
    s.push_back({"q_proj", h * c.qk_head_dim(), d, L});
  } else {
    s.push_back({"q_a_proj", c.q_lora_rank, d, L});
    s.push_back({"q_b_proj", h * c.qk_head_dim(), c.q_lora_rank, L});
  }
  s.push_back({"kv_a_proj", 576, d, L});
  s.push_back({"W_UK (per head)", 512, c.qk_nope_head_dim, L * h});
  s.push_back({"W_UV (per head)", c.v_head_dim, 512, L * h});
  s.push_back({"o_proj", d, h * c.v_head_dim, L});
  s.push_back({"gate/up_proj", c.intermediate_size, d, 2 * L});
  s.push_back({"down_proj", d, c.intermediate_size, L});
  return s;
}

struct GemmTimes {
  double invariant_s = 0, blas_s = 0;
};

// One shape at m rows: seconds per call of the invariant GEMM and of OpenBLAS sgemm.
absl::StatusOr<GemmTimes> TimeShape(const Shape& s, int64_t m, int reps) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> a(m * s.k), w(s.n * s.k), c(m * s.n);
  for (float& x : a) x = nd(rng);
  for (float& x : w) x = nd(rng);
  ASSIGN_OR_RETURN(kernels::PackedB packed, kernels::PackedB::FromWeight(w.data(), s.n, s.k));
  GemmTimes t;
  ASSIGN_OR_RETURN(t.invariant_s, SecondsPerCall(reps, [&] {
                     return kernels::Gemm(m, a.data(), s.k, packed.view(), c.data(), s.n);
                   }));
  ASSIGN_OR_RETURN(t.blas_s, SecondsPerCall(reps, [&] {
                     return kernels::SgemmLinear(a.data(), m, s.k, w.data(), s.n, c.data());
                   }));
  return t;
}

absl::StatusOr<std::string> ModelDir(const std::string& dir, std::string* tmp) {
  if (!dir.empty()) return dir;
  *tmp = (std::filesystem::temp_directory_path() / StrCat("kvstrata-prefill-bench-", ::getpid()))
             .string();
  ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig("tiny-v3"));
  RETURN_IF_ERROR(model::WriteRandomModel(c, 1, *tmp));
  return *tmp;
}

// Median prefill seconds of the prompt, and decode steps/s after it.
struct ForwardTimes {
  double prefill_s = 0, decode_tok_s = 0;
};
absl::StatusOr<ForwardTimes> TimeForward(const model::Transformer& t,
                                         const std::vector<int32_t>& prompt,
                                         const PrefillBenchFlags& f) {
  const int64_t cap = static_cast<int64_t>(prompt.size()) + f.decode_steps + 64;
  std::vector<double> secs;
  for (int64_t r = 0; r < f.runs; ++r) {
    ASSIGN_OR_RETURN(auto kv, t.NewCache(kernels::KvLayout::kMlaFp8_656, cap));
    const double t0 = NowSeconds();
    RETURN_IF_ERROR(t.Prefill(prompt, 0, kv.get(), {.chunk_tokens = f.chunk}).status());
    secs.push_back(NowSeconds() - t0);
  }
  ForwardTimes out{.prefill_s = bench::Median(secs)};
  ASSIGN_OR_RETURN(auto kv, t.NewCache(kernels::KvLayout::kMlaFp8_656, cap));
  RETURN_IF_ERROR(t.Prefill(prompt, 0, kv.get(), {.chunk_tokens = f.chunk}).status());
  const double d0 = NowSeconds();
  for (int64_t s = 0; s < f.decode_steps; ++s) {
    RETURN_IF_ERROR(t.DecodeStep(prompt[s % prompt.size()], kv->num_tokens(), kv.get()).status());
  }
  out.decode_tok_s = static_cast<double>(f.decode_steps) / (NowSeconds() - d0);
  return out;
}

// 1. The invariant GEMM against OpenBLAS at the forward's shapes, at m = chunk and m = 1.
absl::StatusOr<bench::Plot> GemmRows(const model::ModelConfig& c, const PrefillBenchFlags& f,
                                     kernels::GemmIsa isa, BenchReport& rep) {
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  bench::Plot plot{
      .title =
          StrCat("tiny-v3 forward GEMMs, 1 thread each: invariant (", kernels::GemmIsaName(isa),
                 ") vs OpenBLAS (",
                 coretype == nullptr ? "own kernel choice" : StrCat("CORETYPE=", coretype), ")"),
      .x_label = "projection, weight n x k, at m rows",
      .y_label = "GFLOP/s",
      .log_y = true,
      .bars = true};
  bench::Series inv_series{"batch-invariant GEMM", {}}, blas_series{"OpenBLAS sgemm", {}};
  for (int64_t m : {f.chunk, int64_t{1}}) {
    double inv_total = 0, blas_total = 0, flops_total = 0;
    for (const Shape& s : ForwardShapes(c)) {
      ASSIGN_OR_RETURN(GemmTimes t, TimeShape(s, m, 5));
      const double flops = 2.0 * m * s.n * s.k;
      inv_total += t.invariant_s * s.count;
      blas_total += t.blas_s * s.count;
      flops_total += flops * s.count;
      const std::string shape = StrCat(s.name, " ", m, "x", s.n, "x", s.k);
      rep.Add({.name = StrCat("gemm ", shape),
               .value = flops / t.invariant_s / 1e9,
               .unit = "GFLOP/s",
               .limit_name = "OpenBLAS sgemm, same shape",
               .limit = flops / t.blas_s / 1e9});
      const double x = static_cast<double>(plot.categories.size());
      plot.categories.push_back(StrCat(s.name, "\n", s.n, "x", s.k, ", m=", m));
      inv_series.points.push_back({x, flops / t.invariant_s / 1e9});
      blas_series.points.push_back({x, flops / t.blas_s / 1e9});
    }
    rep.Add({.name = StrCat("gemm forward mix, m=", m),
             .value = flops_total / inv_total / 1e9,
             .unit = "GFLOP/s",
             .limit_name = "OpenBLAS sgemm, same mix",
             .limit = flops_total / blas_total / 1e9});
  }
  plot.series = {inv_series, blas_series};
  return plot;
}

// 2. and 3. The forward on the invariant path (1 thread and every core) against the old path.
void ForwardRows(const model::ModelConfig& c, const PrefillBenchFlags& f, int cores,
                 const ForwardTimes& inv, const ForwardTimes& par, const ForwardTimes& old,
                 BenchReport& rep) {
  const double flops = model::Transformer::ForwardFlops(c, 0, f.tokens);
  rep.Add({.name = StrCat("prefill ", f.tokens, " tok, 1 thread"),
           .value = f.tokens / inv.prefill_s,
           .unit = "tok/s",
           .limit_name = "old path (OpenBLAS 16-row tiles)",
           .limit = f.tokens / old.prefill_s});
  rep.Add({.name = StrCat("prefill ", f.tokens, " tok GFLOP/s, 1 thread"),
           .value = flops / inv.prefill_s / 1e9,
           .unit = "GFLOP/s",
           .limit_name = "old path",
           .limit = flops / old.prefill_s / 1e9});
  rep.Add({.name = StrCat("prefill ", f.tokens, " tok, ", cores, " threads"),
           .value = f.tokens / par.prefill_s,
           .unit = "tok/s",
           .limit_name = "1 thread x cores",
           .limit = f.tokens / inv.prefill_s * cores});
  rep.Add({.name = "decode step, 1 thread",
           .value = inv.decode_tok_s,
           .unit = "tok/s",
           .limit_name = "old path (16-row tile)",
           .limit = old.decode_tok_s});
  rep.Add({.name = StrCat("decode step, ", cores, " threads"),
           .value = par.decode_tok_s,
           .unit = "tok/s",
           .limit_name = "old path (16-row tile)",
           .limit = old.decode_tok_s});
  rep.Note("flops_per_prefill", StrCat(flops));
}

absl::Status RunPrefillBench(const PrefillBenchFlags& f) {
  if (f.tokens < 16 || f.chunk < 1 || f.runs < 1 || f.decode_steps < 1) {
    return absl::InvalidArgumentError(
        "need --tokens >= 16, --chunk >= 1, --runs >= 1, --decode-steps >= 1");
  }
  kernels::SetBlasThreads(1);
  ASSIGN_OR_RETURN(const kernels::GemmIsa isa, kernels::DefaultGemmIsa());
  std::string tmp;
  ASSIGN_OR_RETURN(const std::string dir, ModelDir(f.model_dir, &tmp));
  const int64_t ctx = f.tokens + f.decode_steps + 64;
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  ThreadPool pool(std::max(1, cores - 1));
  auto invariant = model::Transformer::Load(dir, {.max_context = ctx});
  auto parallel = model::Transformer::Load(dir, {.max_context = ctx, .pool = &pool});
  auto baseline = model::Transformer::Load(dir, {.max_context = ctx, .blas_baseline = true});
  if (!tmp.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(tmp, ec);
  }
  RETURN_IF_ERROR(invariant.status());
  RETURN_IF_ERROR(parallel.status());
  RETURN_IF_ERROR(baseline.status());
  const model::ModelConfig& c = (*invariant)->config();
  std::mt19937_64 rng(7);
  std::vector<int32_t> prompt(f.tokens);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % c.vocab_size);

  BenchReport rep("prefill");
  ASSIGN_OR_RETURN(const bench::Plot plot, GemmRows(c, f, isa, rep));
  ASSIGN_OR_RETURN(const ForwardTimes inv, TimeForward(**invariant, prompt, f));
  ASSIGN_OR_RETURN(const ForwardTimes par, TimeForward(**parallel, prompt, f));
  ASSIGN_OR_RETURN(const ForwardTimes old, TimeForward(**baseline, prompt, f));
  ForwardRows(c, f, cores, inv, par, old, rep);
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  rep.Note("model",
           StrCat(c.num_hidden_layers, " layers, hidden ", c.hidden_size, ", ",
                  c.num_attention_heads, " heads, kv_lora 512 + rope 64, layout ", "mla-fp8-656"));
  rep.Note("gemm_kernels", std::string(kernels::GemmIsaName(isa)));
  rep.Note("openblas_coretype", coretype == nullptr ? "(unset: OpenBLAS picks)" : coretype);
  rep.Note("runs", StrCat(f.runs, " (median), chunk ", f.chunk, ", decode steps ", f.decode_steps,
                          " after the prompt"));
  rep.Print();
  RETURN_IF_ERROR(rep.WriteJson(f.json));
  if (!f.svg.empty()) RETURN_IF_ERROR(bench::WritePlotSvg(f.svg, plot));
  return absl::OkStatus();
}

int RunBenchPrefill(int argc, char** argv) {
  PrefillBenchFlags f;
  FlagSet flags("kvstrata bench prefill");
  flags.Int("tokens", &f.tokens, "prompt tokens");
  flags.Int("chunk", &f.chunk, "prefill chunk tokens (also the m of the GEMM rows)");
  flags.Int("runs", &f.runs, "timed prefill runs (median)");
  flags.Int("decode-steps", &f.decode_steps, "decode steps timed after the prompt");
  flags.String("model", &f.model_dir, "model directory (default: generate tiny-v3, seed 1)");
  flags.String("json", &f.json, "also write the report as JSON to this file");
  flags.String("svg", &f.svg, "also plot the GEMM rows as SVG (matplotlib) to this file");
  return bench::RunSuite(flags, argc, argv, [&] { return RunPrefillBench(f); });
}

}  // namespace

KV_REGISTER_BENCH(prefill,
                  "tiny-v3 CPU forward: invariant GEMM vs OpenBLAS, prefill and decode tok/s vs "
                  "the old 16-row-tile path",
                  RunBenchPrefill);

}  // namespace kv::cmd
