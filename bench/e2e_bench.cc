// `kvstrata bench e2e`: time to first token through the real Cluster API, by prompt length and
// by where the prompt's KV is cached, plus TTFT under concurrency.
//
// States (each a server on loopback driven by the real gRPC client, seeded tiny-v3 model, or
// tiny-v4 with --model=tiny-v4: DeepSeek-V4 hybrid attention, 256-token v4-fp8-584 pages):
//   cold    nothing cached: the whole prompt is computed (the first request of each prompt);
//   host    the prompt's pages in the host tier of `serve --role=all` (device tier off);
//   nvme    the pages only in the nvme tier (RocksDB) of `serve --role=all`;
//   remote  the distributed roles in this process, each its own gRPC server: a store node
//           holds the pages; the prefill worker reads them over gRPC, computes the tail and
//           hands the KV to the decode worker over UCX; the router in front.
// A warm request uses CACHE_POLICY_FORCE_LOAD, so every state loads what it holds whatever
// the cost model would pick; its TTFT is compared with the cold TTFT of the same prompt
// (the limit: what caching must beat), ratio = cold / warm. The cache-load bandwidth of each
// warm request (page bytes / load time) is compared with single-thread memcpy measured in the
// same run. Concurrency: C clients at once, each with its own prompt of --concurrent-length
// tokens, cold then warm (host state): TTFT p50/p99 and prompt tokens/s.
// Handoff: cold prompts through the distributed roles with a prefill worker and without one
// (decode-only), with the bytes handed off and the handoff time (RequestStats).
// Writes --json and an SVG of TTFT vs prompt length per state (--svg).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "cluster/client.h"
#include "cluster/embedded_server.h"
#include "cluster/role_server.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/config.h"
#include "model/weights.h"

namespace kv::bench {
namespace {

namespace pb = ::kvstrata::v1;

struct Sample {
  double ttft_ms = 0;
  double load_gbps = 0;  // 0 when nothing was loaded
  uint32_t cached = 0;
  uint32_t prompt = 0;
  uint64_t handoff_bytes = 0;  // prefill->decode handoff the decode worker imported
  double handoff_ms = 0;
};

absl::StatusOr<std::vector<int64_t>> ParseList(const std::string& s, const char* flag) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(ToAbsl(s), ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          StrCat("--", flag, ": '", std::string(part), "' is not a positive number"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(StrCat("--", flag, " is empty"));
  return out;
}

// A prompt of `n` token ids, distinct per `salt` from its first block on.
pb::Prompt MakePrompt(int64_t n, uint64_t salt) {
  pb::Prompt p;
  uint64_t x = salt * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p.mutable_tokens()->add_ids(static_cast<uint32_t>(32 + x % 200));  // plain byte tokens
  }
  return p;
}

absl::StatusOr<Sample> Generate(cluster::ClusterClient& c, const pb::Prompt& prompt,
                                pb::CachePolicy policy, int max_tokens) {
  pb::GenerateRequest r;
  *r.mutable_prompt() = prompt;
  r.mutable_sampling()->set_max_new_tokens(max_tokens);
  r.mutable_sampling()->set_ignore_eos(true);
  r.set_cache_policy(policy);
  ASSIGN_OR_RETURN(cluster::GenerateOutcome o, c.Generate(r, absl::Minutes(20)));
  Sample s;
  s.ttft_ms = absl::ToDoubleMilliseconds(o.client_ttft);
  s.cached = o.stats.cached_tokens();
  s.prompt = o.stats.prompt_tokens();
  uint64_t bytes = 0;
  for (const auto& h : o.stats.tier_hits()) bytes += h.bytes();
  const double load_s = o.stats.load_time().seconds() + o.stats.load_time().nanos() * 1e-9;
  if (bytes > 0 && load_s > 0) s.load_gbps = static_cast<double>(bytes) / load_s / 1e9;
  s.handoff_bytes = o.stats.handoff_bytes();
  s.handoff_ms = o.stats.handoff_time().seconds() * 1e3 + o.stats.handoff_time().nanos() * 1e-6;
  return s;
}

// Waits until the cluster reports at least `blocks` cached blocks of `prompt` (publishing is
// asynchronous). DeadlineExceeded after 60 s.
absl::Status WaitCached(cluster::ClusterClient& c, const pb::Prompt& prompt, uint32_t blocks) {
  pb::LookupRequest l;
  *l.mutable_prompt() = prompt;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    absl::StatusOr<pb::LookupResponse> r = c.Lookup(l, absl::Seconds(10));
    if (r.ok() && r->cached_blocks() >= blocks) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(StrCat("the prompt's ", blocks, " pages were not published"));
}

struct Options {
  std::vector<int64_t> lengths, concurrency;
  int64_t concurrent_length = 1024;
  int64_t max_tokens = 4;
  std::string model = "tiny-v3";  // or tiny-v4
  std::string json, svg, dir;
};

// The in-process distributed cluster: a store, a prefill and a decode worker, a router.
struct Distributed {
  std::vector<std::unique_ptr<cluster::RoleServer>> nodes;
  std::string router;
  // with_prefill false: no prefill worker, the decode worker computes every prompt.
  absl::Status Start(const std::string& dir, const std::string& model_dir,
                     bool with_prefill = true) {
    auto start = [&](const std::string& role,
                     const std::string& members) -> absl::StatusOr<std::string> {
      cluster::RoleServerOptions o;
      o.role = role;
      o.node_id = role;
      o.listen = "127.0.0.1:0";
      o.metrics_port = -1;
      // "remote" measures the homes' read path: no worker-local tier in front of it.
      o.local_cache_mib = 0;
      o.membership.members = members;
      o.node.model_dir = model_dir;
      o.node.data_dir = StrCat(dir, "/", role);
      o.node.device_bytes = 0;
      o.node.host_bytes = role == "store" ? (1ull << 30) : 0;
      o.node.nvme_bytes = role == "store" ? (1ull << 30) : 0;
      if (role != "store") o.node.nvme_bytes = 1ull << 20;  // unused; validation wants a tier
      ASSIGN_OR_RETURN(auto node, cluster::RoleServer::Start(o));
      std::string address = node->advertised();
      nodes.push_back(std::move(node));
      return address;
    };
    ASSIGN_OR_RETURN(std::string store, start("store", ""));
    const std::string stores = StrCat("store=", store, "@store");
    std::string prefill_member;
    if (with_prefill) {
      ASSIGN_OR_RETURN(std::string prefill, start("prefill", stores));
      prefill_member = StrCat(",prefill=", prefill, "@prefill");
    }
    ASSIGN_OR_RETURN(std::string decode, start("decode", stores));
    ASSIGN_OR_RETURN(
        router, start("router", StrCat(stores, prefill_member, ",decode=", decode, "@decode")));
    return absl::OkStatus();
  }
  ~Distributed() {
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) (*it)->Shutdown();
  }
};

// Cold prompts through the distributed roles with a prefill worker (it computes the prompt but
// its last token and hands the state to the decode worker over the node's transport) and
// without one (the decode worker computes the prompt): TTFT of each, and the bytes handed off
// and the handoff time the prefill path reports.
absl::Status AddHandoffRows(const Options& opt, BenchReport* rep, uint64_t* salt) {
  Distributed with, without;
  RETURN_IF_ERROR(with.Start(StrCat(opt.dir, "/handoff"), StrCat(opt.dir, "/model")));
  RETURN_IF_ERROR(without.Start(StrCat(opt.dir, "/decode-only"), StrCat(opt.dir, "/model"),
                                /*with_prefill=*/false));
  ASSIGN_OR_RETURN(auto via, cluster::ClusterClient::Connect(with.router, ""));
  ASSIGN_OR_RETURN(auto direct, cluster::ClusterClient::Connect(without.router, ""));
  for (int64_t n : opt.lengths) {
    std::fprintf(stderr, "  e2e: handoff, %ld-token prompt ...\r", static_cast<long>(n));
    ASSIGN_OR_RETURN(Sample d, Generate(*direct, MakePrompt(n, (*salt)++), pb::CACHE_POLICY_AUTO,
                                        opt.max_tokens));
    ASSIGN_OR_RETURN(
        Sample p, Generate(*via, MakePrompt(n, (*salt)++), pb::CACHE_POLICY_AUTO, opt.max_tokens));
    if (p.handoff_bytes == 0) {
      return absl::InternalError(StrCat("the ", n, "-token prompt was not handed off"));
    }
    rep->Add({.name = StrCat("TTFT cold decode-only ", n, " tok"),
              .value = d.ttft_ms,
              .unit = "ms",
              .params = {{"state", "decode-only"}, {"prompt_tokens", StrCat(n)}}});
    rep->Add({.name = StrCat("TTFT cold via prefill worker ", n, " tok"),
              .value = p.ttft_ms,
              .unit = "ms",
              .limit_name = "decode-only TTFT (same length)",
              .limit = d.ttft_ms,
              .lower_is_better = true,
              .params = {{"state", "prefill-handoff"},
                         {"prompt_tokens", StrCat(n)},
                         {"handoff_bytes", StrCat(p.handoff_bytes)},
                         {"handoff_ms", StrCat(p.handoff_ms)}}});
    rep->Add({.name = StrCat("handoff ", n, " tok"),
              .value = static_cast<double>(p.handoff_bytes) / 1e6,
              .unit = "MB",
              .params = {{"handoff_ms", StrCat(p.handoff_ms)}}});
  }
  return absl::OkStatus();
}

// What Run's steps share.
struct RunState {
  BenchReport rep{"e2e"};
  double memcpy_gbps = 0;
  int64_t page_tokens = 0;
  std::vector<Series> plot;
  uint64_t salt = 1;
};

// The model directory every server of the run loads.
absl::Status PrepareModel(const Options& opt) {
  if (opt.model == "tiny-v4") {
    ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig("tiny-v4"));
    return model::WriteRandomModel(c, 1, StrCat(opt.dir, "/model"));
  }
  cluster::NodeOptions no;
  no.data_dir = StrCat(opt.dir, "/model-src");
  ASSIGN_OR_RETURN(std::string src, cluster::EnsureModelDir(no));
  std::filesystem::rename(src, StrCat(opt.dir, "/model"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<cluster::EmbeddedServer>> StartEmbedded(const Options& opt,
                                                                       const std::string& name,
                                                                       uint64_t host,
                                                                       uint64_t nvme) {
  cluster::EmbeddedServerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
  o.node.data_dir = StrCat(opt.dir, "/", name);
  o.node.model_dir = StrCat(opt.dir, "/model");
  o.node.device_bytes = 0;
  o.node.host_bytes = host;
  o.node.nvme_bytes = nvme;
  o.node.slab_bytes = 1ull << 20;
  return cluster::EmbeddedServer::Start(o);
}

// One prompt length in one cache state: a cold request, then a warm one that forces the load.
absl::Status LengthRows(const Options& opt, const std::string& state, int64_t n,
                        cluster::ClusterClient& client, RunState& run, Series& series,
                        Series& cold_series) {
  const pb::Prompt prompt = MakePrompt(n, run.salt++);
  std::fprintf(stderr, "  e2e: %s state, %ld-token prompt: cold ...\r", state.c_str(),
               static_cast<long>(n));
  ASSIGN_OR_RETURN(Sample cold, Generate(client, prompt, pb::CACHE_POLICY_AUTO, opt.max_tokens));
  const uint32_t blocks = static_cast<uint32_t>((n - 1) / run.page_tokens);
  RETURN_IF_ERROR(WaitCached(client, prompt, blocks));
  std::fprintf(stderr, "  e2e: %s state, %ld-token prompt: warm ...\r", state.c_str(),
               static_cast<long>(n));
  // What the cost model would do with this prefix (the warm request forces the load).
  pb::LookupRequest lr;
  *lr.mutable_prompt() = prompt;
  ASSIGN_OR_RETURN(pb::LookupResponse look, client.Lookup(lr, absl::Seconds(30)));
  const std::string decision = pb::CacheDecision_Name(look.cost().decision());
  ASSIGN_OR_RETURN(Sample warm,
                   Generate(client, prompt, pb::CACHE_POLICY_FORCE_LOAD, opt.max_tokens));
  if (state == "host") {
    cold_series.points.push_back({static_cast<double>(n), cold.ttft_ms});
    run.rep.Add({.name = StrCat("TTFT cold ", n, " tok"),
                 .value = cold.ttft_ms,
                 .unit = "ms",
                 .params = {{"state", "cold"}, {"prompt_tokens", StrCat(n)}}});
  }
  run.rep.Add({.name = StrCat("TTFT ", state, " ", n, " tok"),
               .value = warm.ttft_ms,
               .unit = "ms",
               .limit_name = "cold TTFT (same prompt)",
               .limit = cold.ttft_ms,
               .lower_is_better = true,
               .params = {{"state", state},
                          {"prompt_tokens", StrCat(n)},
                          {"cached_tokens", StrCat(warm.cached)},
                          {"cost_model_decision", decision},
                          {"cost_model_reason", look.cost().reason()}}});
  if (warm.load_gbps > 0) {
    run.rep.Add({.name = StrCat("cache load ", state, " ", n, " tok"),
                 .value = warm.load_gbps,
                 .unit = "GB/s",
                 .limit_name = "memcpy",
                 .limit = run.memcpy_gbps,
                 .params = {{"state", state}, {"prompt_tokens", StrCat(n)}}});
  }
  series.points.push_back({static_cast<double>(n), warm.ttft_ms});
  return absl::OkStatus();
}

// C clients at once on the server at `address`, cold (`warm` false) or warm.
absl::Status ConcurrencyRows(const Options& opt, const std::string& address,
                             cluster::ClusterClient& client, int64_t c, bool warm, RunState& run) {
  std::vector<pb::Prompt> prompts;
  for (int64_t i = 0; i < c; ++i)
    prompts.push_back(MakePrompt(opt.concurrent_length, 1000 * c + i));
  if (warm) {
    const auto blocks = static_cast<uint32_t>((opt.concurrent_length - 1) / run.page_tokens);
    for (const auto& p : prompts) RETURN_IF_ERROR(WaitCached(client, p, blocks));
  }
  std::vector<absl::StatusOr<Sample>> results(c, absl::UnknownError("not run"));
  const double t0 = NowSeconds();
  std::vector<std::thread> threads;
  for (int64_t i = 0; i < c; ++i) {
    threads.emplace_back([&, i] {
      auto cc = cluster::ClusterClient::Connect(address, "");
      results[i] = cc.ok() ? Generate(**cc, prompts[i],
                                      warm ? pb::CACHE_POLICY_FORCE_LOAD : pb::CACHE_POLICY_AUTO,
                                      static_cast<int>(opt.max_tokens))
                           : absl::StatusOr<Sample>(cc.status());
    });
  }
  for (auto& t : threads) t.join();
  const double wall = NowSeconds() - t0;
  std::vector<double> ttft;
  for (auto& r : results) {
    RETURN_IF_ERROR(r.status());
    ttft.push_back(r->ttft_ms);
  }
  const char* tag = warm ? "warm" : "cold";
  const std::map<std::string, std::string> params = {
      {"concurrency", StrCat(c)}, {"prompt_tokens", StrCat(opt.concurrent_length)}};
  run.rep.Add({.name = StrCat("TTFT p50 c=", c, " ", tag),
               .value = Percentile(ttft, 50),
               .unit = "ms",
               .params = params});
  run.rep.Add({.name = StrCat("TTFT p99 c=", c, " ", tag),
               .value = Percentile(ttft, 99),
               .unit = "ms",
               .params = params});
  run.rep.Add({.name = StrCat("prompt tokens/s c=", c, " ", tag),
               .value = static_cast<double>(c * opt.concurrent_length) / wall,
               .unit = "tok/s",
               .params = {{"concurrency", StrCat(c)}, {"wall_s", StrCat(wall)}}});
  return absl::OkStatus();
}

// Every prompt length in one cache state (host, nvme: one embedded server; remote: the
// distributed roles), then, on the host state, the concurrency rows.
absl::Status StateRows(const Options& opt, const std::string& state, RunState& run) {
  std::unique_ptr<cluster::EmbeddedServer> server;
  Distributed dist;
  std::string address;
  if (state == "remote") {
    RETURN_IF_ERROR(dist.Start(opt.dir, StrCat(opt.dir, "/model")));
    address = dist.router;
  } else {
    ASSIGN_OR_RETURN(server, StartEmbedded(opt, state, state == "host" ? (2ull << 30) : 0,
                                           state == "host" ? 0 : (4ull << 30)));
    address = server->address();
  }
  ASSIGN_OR_RETURN(auto client, cluster::ClusterClient::Connect(address, ""));
  Series series{.label = state};
  Series cold_series{.label = "cold"};
  for (int64_t n : opt.lengths) {
    RETURN_IF_ERROR(LengthRows(opt, state, n, *client, run, series, cold_series));
  }
  if (!cold_series.points.empty()) run.plot.push_back(cold_series);
  run.plot.push_back(series);
  if (state != "host") return absl::OkStatus();
  for (int64_t c : opt.concurrency) {
    for (const bool warm : {false, true}) {
      RETURN_IF_ERROR(ConcurrencyRows(opt, address, *client, c, warm, run));
    }
  }
  return absl::OkStatus();
}

absl::Status Run(const Options& opt) {
  RunState run;
  run.memcpy_gbps = MeasureMemcpyGBps(256ull << 20);
  const bool v4 = opt.model == "tiny-v4";
  run.page_tokens = v4 ? 256 : 64;
  run.rep.Note("model", v4 ? "tiny-v4 (seeded), v4-fp8-584 pages of 256 tokens"
                           : "tiny-v3 (seeded), mla-fp8-656 pages of 64 tokens");
  run.rep.Note("warm policy", "CACHE_POLICY_FORCE_LOAD");
  run.rep.Note("max_tokens", StrCat(opt.max_tokens));
  RETURN_IF_ERROR(PrepareModel(opt));
  for (const std::string state : {"host", "nvme", "remote"}) {
    RETURN_IF_ERROR(StateRows(opt, state, run));
  }
  RETURN_IF_ERROR(AddHandoffRows(opt, &run.rep, &run.salt));
  std::fprintf(stderr, "%80s\r", "");
  run.rep.Print();
  RETURN_IF_ERROR(run.rep.WriteJson(opt.json));
  if (opt.svg.empty()) return absl::OkStatus();
  return WritePlotSvg(
      opt.svg, {.title = StrCat("kvstrata e2e: TTFT vs prompt length (", opt.model, ", CPU)"),
                .x_label = "prompt tokens",
                .y_label = "TTFT (ms)",
                .log_x = true,
                .log_y = true,
                .series = run.plot});
}

int RunE2eBench(int argc, char** argv) {
  std::string lengths = "1024,4096,16384", concurrency = "1,4,16";
  Options opt;
  FlagSet flags("kvstrata bench e2e");
  flags.String("lengths", &lengths, "prompt lengths in tokens, comma-separated (max 32768)");
  flags.String("concurrency", &concurrency, "concurrent clients, comma-separated");
  flags.Int("concurrent-length", &opt.concurrent_length, "prompt tokens in the concurrency runs");
  flags.Int("max-tokens", &opt.max_tokens, "tokens generated per request");
  flags.String("model", &opt.model, "tiny-v3 (MLA) or tiny-v4 (DeepSeek-V4)");
  flags.String("json", &opt.json, "write the report as JSON to FILE");
  flags.String("svg", &opt.svg, "write TTFT vs prompt length as an SVG plot to FILE");
  return RunSuite(flags, argc, argv, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(opt.lengths, ParseList(lengths, "lengths"));
    ASSIGN_OR_RETURN(opt.concurrency, ParseList(concurrency, "concurrency"));
    for (int64_t n : opt.lengths) {
      if (n < 65 || n > 32768) {
        return absl::InvalidArgumentError(StrCat("--lengths: ", n, " is outside 65..32768"));
      }
    }
    if (opt.concurrent_length < 65 || opt.concurrent_length > 32768) {
      return absl::InvalidArgumentError("--concurrent-length must be in 65..32768");
    }
    if (opt.model != "tiny-v3" && opt.model != "tiny-v4") {
      return absl::InvalidArgumentError(
          StrCat("--model must be tiny-v3 or tiny-v4, got '", opt.model, "'"));
    }
    if (opt.max_tokens < 1 || opt.max_tokens > 256) {
      return absl::InvalidArgumentError("--max-tokens must be in 1..256");
    }
    for (int64_t c : opt.concurrency) {
      if (c > 64) return absl::InvalidArgumentError("--concurrency values must be <= 64");
    }
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvstrata-e2e-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) return ErrnoToStatus(errno, "creating a temp dir");
    opt.dir = tmpl;
    absl::Status s = Run(opt);
    std::error_code ec;
    std::filesystem::remove_all(opt.dir, ec);
    return s;
  });
}

}  // namespace

KV_REGISTER_BENCH(e2e, "TTFT through the Cluster API by prompt length, cache state and concurrency",
                  RunE2eBench);

}  // namespace kv::bench
