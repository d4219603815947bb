// `kvstrata bench trace`: replay a Mooncake FAST'25 trace (JSONL: timestamp, input_length,
// output_length, hash_ids of 512-token prefix-chained blocks) through the real TieredStore
// with given tier capacities in tokens, and report the prefix hit rate served by each tier.
// The limit measured in the same run is the hit rate of an unbounded prefix cache on the
// same trace (every block ever seen stays cached). Default trace: the small generated one in
// kvstore/testdata; pass --trace=FILE for a released Mooncake trace.
#include <cstdio>

#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/strings.h"
#include "kvstore/trace_replay.h"

namespace kv::bench {
namespace {

int RunTraceBench(int argc, char** argv) {
  std::string json, trace_path = "kvstore/testdata/trace_mooncake_small.jsonl";
  int64_t device = 64 * 512, host = 256 * 512, nvme = 1024 * 512;
  FlagSet flags("kvstrata bench trace");
  flags.String("json", &json, "write the report as JSON to FILE");
  flags.String("trace", &trace_path, "Mooncake-format JSONL trace");
  flags.Int("device-tokens", &device, "device tier capacity in tokens (0: absent)");
  flags.Int("host-tokens", &host, "host tier capacity in tokens (0: absent)");
  flags.Int("nvme-tokens", &nvme, "nvme tier capacity in tokens (0: absent)");
  absl::Status st = flags.Parse(argc, argv);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (st.ok() && (device < 0 || host < 0 || nvme < 0)) {
    st = absl::InvalidArgumentError("tier capacities must be >= 0");
  }
  absl::StatusOr<std::vector<TraceRequest>> trace =
      st.ok() ? LoadMooncakeTrace(trace_path) : absl::StatusOr<std::vector<TraceRequest>>(st);
  BenchReport rep("trace");
  if (trace.ok()) {
    double limit = 0;
    for (bool leaf_first : {true, false}) {
      ReplayOptions o;
      o.capacity_tokens = {static_cast<uint64_t>(device), static_cast<uint64_t>(host),
                           static_cast<uint64_t>(nvme)};
      o.leaf_first = leaf_first;
      double t0 = NowSeconds();
      auto r = ReplayTrace(*trace, o);
      if (!r.ok()) {
        st = r.status();
        break;
      }
      double secs = NowSeconds() - t0;
      double blocks = static_cast<double>(std::max<uint64_t>(1, r->blocks));
      limit = static_cast<double>(UnboundedPrefixHits(*trace, 512)) / blocks;
      std::map<std::string, std::string> p = {
          {"trace", trace_path},
          {"requests", std::to_string(r->requests)},
          {"capacity tokens dev/host/nvme", StrCat(device, "/", host, "/", nvme)},
          {"eviction", leaf_first ? "leaf-first LRU" : "LRU order (leaves still pin parents)"},
          {"replay seconds", StrCat(secs)}};
      std::string tag = leaf_first ? "" : " (no leaf-first order)";
      const char* names[] = {"device", "host", "nvme"};
      for (int t = 0; t < kNumTiers; ++t) {
        rep.Add({.name = StrCat("prefix hit rate ", names[t], tag),
                 .value = static_cast<double>(r->hit_blocks[t]) / blocks,
                 .unit = "fraction",
                 .limit_name = "unbounded cache",
                 .limit = limit,
                 .params = p});
      }
      rep.Add({.name = StrCat("prefix hit rate all tiers", tag),
               .value = static_cast<double>(r->hits()) / blocks,
               .unit = "fraction",
               .limit_name = "unbounded cache",
               .limit = limit,
               .params = p});
    }
  } else {
    st = trace.status();
  }
  if (st.ok()) {
    rep.Print();
    st = rep.WriteJson(json);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "bench trace: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(trace, "Mooncake trace replay: prefix hit rate per tier",
                  kv::bench::RunTraceBench);
