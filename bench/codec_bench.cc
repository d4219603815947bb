// `kvstrata bench codec`: the CPU MLA record codec (kernels/mla_record.h).
//
// Quantises f32 and bf16 latents (+ rope) of --tokens tokens into 656-byte mla-fp8-656
// records, and decodes them back, single-threaded. Figures: tokens/s and GB/s of input read
// (f32: 2304 B/token, bf16: 1152 B/token; decode reads the 656 B records). The limit, measured
// in the same run, is single-thread memcpy bandwidth over a buffer of the f32 input's size
// (kv::bench::MeasureMemcpyGBps); the ratio says how close the codec gets to just moving the
// bytes. Inputs are fresh random values of varied magnitude (never zeros).
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "kernels/bf16.h"
#include "kernels/mla_record.h"

namespace kv::bench {
namespace {

using kernels::KvLayout;

struct CodecFlags {
  int64_t tokens = 65536;
  int64_t runs = 7;
  std::string json;
};

// Median seconds of `runs` calls of fn (after one warm-up); the first error wins.
template <typename Fn>
absl::StatusOr<double> MedianSeconds(int64_t runs, Fn fn) {
  std::vector<double> t;
  for (int64_t i = 0; i <= runs; ++i) {
    const double t0 = NowSeconds();
    absl::Status s = fn();
    if (!s.ok()) return s;
    if (i > 0) t.push_back(NowSeconds() - t0);
  }
  return Median(t);
}

absl::Status RunCodec(const CodecFlags& f) {
  if (f.tokens < 1 || f.runs < 1) return absl::InvalidArgumentError("need tokens, runs >= 1");
  const int64_t n = f.tokens;
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exp(-8, 4);
  std::vector<float> f32(n * 576);
  for (float& v : f32) v = std::ldexp(normal(rng), exp(rng));
  std::vector<uint16_t> b16(f32.size());
  for (size_t i = 0; i < f32.size(); ++i) b16[i] = kernels::FloatToBf16(f32[i]);
  std::vector<uint8_t> rec(n * 656, 0xA5);
  std::vector<float> dec(n * 576);

  const double limit = MeasureMemcpyGBps(f32.size() * sizeof(float));
  const kernels::MlaSourceF32 src32{f32.data(), 576, f32.data() + 512, 576};
  const kernels::MlaSourceBf16 src16{b16.data(), 576, b16.data() + 512, 576};
  auto enc32 = [&] { return EncodeMlaRecords(KvLayout::kMlaFp8_656, src32, n, rec.data(), 656); };
  auto enc16 = [&] { return EncodeMlaRecords(KvLayout::kMlaFp8_656, src16, n, rec.data(), 656); };
  auto decode = [&] {
    return DecodeMlaRecords(KvLayout::kMlaFp8_656, rec.data(), 656, n, dec.data(), 576);
  };
  struct Case {
    const char* name;
    std::function<absl::Status()> fn;
    double bytes_per_token;
  };
  const Case cases[] = {{"quantize f32 -> mla-fp8-656", enc32, 576 * 4.0},
                        {"quantize bf16 -> mla-fp8-656", enc16, 576 * 2.0},
                        {"dequantize mla-fp8-656 -> f32", decode, 656.0}};
  BenchReport r("codec");
  for (const Case& c : cases) {
    auto secs = MedianSeconds(f.runs, c.fn);
    if (!secs.ok()) return secs.status();
    const std::map<std::string, std::string> params = {
        {"tokens", std::to_string(n)}, {"bytes_read_per_token", absl::StrCat(c.bytes_per_token)}};
    r.Add({.name = absl::StrCat(c.name, " (read)"),
           .value = n * c.bytes_per_token / *secs / 1e9,
           .unit = "GB/s",
           .limit_name = "memcpy 1 thread",
           .limit = limit,
           .params = params});
    r.Add({.name = absl::StrCat(c.name, " tokens/s"),
           .value = n / *secs / 1e6,
           .unit = "Mtok/s",
           .limit_name = "memcpy of same bytes",
           .limit = limit * 1e9 / c.bytes_per_token / 1e6,
           .params = params});
  }
  r.Note("threads", "1 (the codec call is single-threaded)");
  r.Note("runs", absl::StrCat(f.runs, " timed runs after a warm-up, median"));
  r.Print();
  return r.WriteJson(f.json);
}

int RunBenchCodec(int argc, char** argv) {
  CodecFlags f;
  FlagSet flags("kvstrata bench codec");
  flags.Int("tokens", &f.tokens, "tokens per run");
  flags.Int("runs", &f.runs, "timed runs (the median is reported)");
  flags.String("json", &f.json, "also write the report as JSON to this file");
  return RunSuite(flags, argc, argv, [&] { return RunCodec(f); });
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(codec, "FP8 MLA record quantize/dequantize (CPU), vs memcpy",
                  kv::bench::RunBenchCodec);
