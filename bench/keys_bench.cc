// `kvstrata bench keys`: block-key derivation speed (kvstore/block_key.h).
//
// Derives the keys of a 1,000,000-token prompt at 64 tokens per block (median of --runs).
// The limit measured in the same run is OpenSSL's raw SHA-256 over the same number of bytes
// (one contiguous buffer, so no per-block overhead): the ratio says how close derivation
// gets to the hash itself. The comparison figure is vLLM's published 100-200 ns per token
// for SHA-256 prefix-block hashing (a published number, not measured here); the goal is at
// least 20x faster.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/hash.h"
#include "core/strings.h"
#include "kvstore/block_key.h"

namespace kv::bench {
namespace {

struct KeysBenchFlags {
  int64_t tokens = 1000000;
  int64_t page_tokens = 64;
  int64_t runs = 15;
  std::string json;
};

// Seconds taken by one call of `fn`.
template <typename Fn>
double TimeMs(Fn fn) {
  const double t0 = NowSeconds();
  fn();
  return (NowSeconds() - t0) * 1e3;
}

absl::Status RunKeysBench(const KeysBenchFlags& f) {
  if (f.tokens < 1 || f.page_tokens < 1 || f.page_tokens > f.tokens || f.runs < 1) {
    return absl::InvalidArgumentError("need tokens >= page-tokens >= 1 and runs >= 1");
  }
  std::mt19937 rng(20261122);
  std::uniform_int_distribution<uint32_t> dist(0, 129279);
  std::vector<uint32_t> tokens(f.tokens);
  for (auto& t : tokens) t = dist(rng);
  KeyParams p;
  p.model_fingerprint = Sha256Of("bench model");
  p.layout_id = "mla-fp8-656";
  p.page_tokens = static_cast<uint32_t>(f.page_tokens);
  auto ns = KeyNamespace::Tenant("bench-tenant");
  if (!ns.ok()) return ns.status();
  p.ns = *ns;

  size_t blocks = 0;
  absl::Status status;
  auto derive = [&] {
    auto keys = DeriveBlockKeys(p, tokens);
    if (!keys.ok()) status = keys.status();
    blocks = keys.ok() ? keys->size() : 0;
  };
  derive();  // warm-up; also gives the block count
  if (!status.ok()) return status;
  auto pre = BlockKeyPreimage(p, BlockKey::Zero(), std::span(tokens).first(p.page_tokens));
  if (!pre.ok()) return pre.status();
  const size_t bytes = pre->size() * blocks;  // every block's preimage has the same size
  std::vector<uint8_t> buf(bytes);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  Digest256 sink = Sha256Of(buf.data(), buf.size());
  // Interleaved, so both see the same machine load; medians of each.
  std::vector<double> derive_runs, sha_runs;
  for (int64_t i = 0; i < f.runs; ++i) {
    derive_runs.push_back(TimeMs(derive));
    sha_runs.push_back(TimeMs([&] { sink = Sha256Of(buf.data(), buf.size()); }));
  }
  const double derive_ms = Median(derive_runs);
  const double sha_ms = Median(sha_runs);

  const double hashed_tokens = static_cast<double>(blocks) * f.page_tokens;
  const std::string size = kv::StrCat(f.tokens, " tokens, ", f.page_tokens, "/block");
  BenchReport r("keys");
  r.Add({.name = "derive keys (" + size + ")",
         .value = derive_ms,
         .unit = "ms",
         .limit_name = "OpenSSL SHA-256 same bytes",
         .limit = sha_ms,
         .lower_is_better = true,
         .params = {{"blocks", std::to_string(blocks)}, {"bytes_hashed", std::to_string(bytes)}}});
  r.Add({.name = "derive throughput",
         .value = hashed_tokens / derive_ms / 1e3,
         .unit = "Mtok/s",
         .limit_name = "OpenSSL SHA-256 same bytes",
         .limit = hashed_tokens / sha_ms / 1e3});
  const double ns_per_token = derive_ms * 1e6 / hashed_tokens;
  r.Add({.name = "derive per token",
         .value = ns_per_token,
         .unit = "ns/tok",
         .limit_name = "vLLM published 100 ns/tok",
         .limit = 100,
         .lower_is_better = true});
  r.Add({.name = "derive per token",
         .value = ns_per_token,
         .unit = "ns/tok",
         .limit_name = "vLLM published 200 ns/tok",
         .limit = 200,
         .lower_is_better = true});
  r.Note("vllm", "published figure (100-200 ns/token SHA-256 block hashing), not measured here");
  r.Note("goal", ">= 20x faster than vLLM's published figure (ratio >= 20 on the vLLM rows)");
  r.Note("runs", kv::StrCat(f.runs, " (median), bytes per block ", pre->size(), ", sink ",
                            ToHex(sink.data(), 2)));
  r.Print();
  return r.WriteJson(f.json);
}

int RunBenchKeys(int argc, char** argv) {
  KeysBenchFlags f;
  FlagSet flags("kvstrata bench keys");
  flags.Int("tokens", &f.tokens, "prompt length in tokens");
  flags.Int("page-tokens", &f.page_tokens, "tokens per block");
  flags.Int("runs", &f.runs, "timed runs (the median is reported)");
  flags.String("json", &f.json, "also write the report as JSON to this file");
  return RunSuite(flags, argc, argv, [&] { return RunKeysBench(f); });
}

}  // namespace

KV_REGISTER_BENCH(keys, "block-key derivation of a 1M-token prompt vs raw SHA-256", RunBenchKeys);

}  // namespace kv::bench
