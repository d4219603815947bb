// `kvstrata demo`: the agentic workload `make run` shows.
//
//   kvstrata demo [--sessions=3] [--turns=4] [--max-tokens=16] [--smoke] [--kv-layout=...]
//                 [--model=tiny-v3|tiny-v4] [--addr=HOST:PORT [--token=T]]
//
// Starts `serve --role=all` in this process on a free loopback port, with a temp data dir
// and the seeded tiny-v3 model (or tiny-v4: DeepSeek-V4 hybrid attention, v4-fp8-584 pages
// of 256 tokens), and drives it through the real gRPC client. With --addr it
// drives an existing cluster instead (a router or a `serve --role=all`), e.g. the
// deploy/rehearse topology. Several agent
// sessions share one system prompt and tool schemas; each takes several turns, and every
// turn after the first appends the model's previous answer and a tool result to the
// conversation. Sessions run round-robin, so each pauses between its turns while the others
// run. The same workload runs twice: first cold (CACHE_POLICY_BYPASS: nothing read, nothing
// published), then warm (the cost model decides). Per warm turn it prints TTFT, tokens cached
// and recomputed and the tier hits; then a summary: hit rate, warm vs cold TTFT and the
// ratio, where the time goes, and whether warm and cold produced identical tokens (they must:
// cached KV is bit-identical). The server and the temp dir are removed at the end.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

#include "absl/time/clock.h"
#include "cluster/client.h"
#include "cluster/embedded_server.h"
#include "cluster/proto_convert.h"
#include "cluster/transport_security.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace kv::cmd {
namespace {

namespace pb = ::kvstrata::v1;
using model::ByteTokenizer;

struct DemoFlags {
  int64_t sessions = 3;
  int64_t turns = 4;
  int64_t max_tokens = 16;
  bool smoke = false;
  std::string kv_layout;  // empty: the model's FP8 layout
  std::string model = "tiny-v3";
  std::string addr;   // existing cluster; empty: start serve --role=all here
  std::string token;  // bearer token for --addr
};

const char kSystem[] =
    "You are an operations agent for a cloud platform. Work step by step. Call exactly one "
    "tool per turn, read its result, then decide. Never invent tool output. Answer in plain "
    "text when the task is done. Keep secrets out of logs.";
const char kTools[] =
    "[{\"name\":\"search_logs\",\"params\":{\"service\":\"string\",\"query\":\"string\","
    "\"since\":\"duration\"}},{\"name\":\"get_metrics\",\"params\":{\"service\":\"string\","
    "\"metric\":\"string\",\"window\":\"duration\"}},{\"name\":\"list_deploys\",\"params\":"
    "{\"service\":\"string\",\"limit\":\"int\"}},{\"name\":\"rollback\",\"params\":{\"service\":"
    "\"string\",\"to_version\":\"string\"}},{\"name\":\"page_oncall\",\"params\":{\"team\":"
    "\"string\",\"summary\":\"string\"}}]";
const char* const kTasks[] = {
    "checkout latency doubled since noon; find out why",
    "the search service returns 502 for 3% of requests",
    "disk usage on the billing database grows 5% per hour",
    "users report stale prices after the last deploy",
    "the auth service restarts every few minutes",
    "nightly export job missed its deadline twice",
    "error budget for the payments API is almost spent",
    "a canary in eu-west shows high memory use",
};

std::vector<int32_t> Tok(const std::string& text) {
  return ByteTokenizer::Encode(text, /*add_bos=*/false, /*parse_specials=*/true);
}

std::string ToolResult(int64_t session, int64_t turn) {
  std::string out = "{\"status\":\"ok\",\"rows\":[";
  for (int i = 0; i < 2; ++i) {
    out += fmt::format(
        "{{\"ts\":\"12:{:02d}:{:02d}\",\"service\":\"svc-{}\",\"p99_ms\":{},\"errors\":{}}},",
        (turn * 7 + i) % 60, (session * 13 + i * 5) % 60, session, 120 + 37 * i + turn,
        (i * session + turn) % 9);
  }
  out += "]}";
  return out;
}

struct TurnResult {
  std::vector<uint32_t> tokens;
  pb::RequestStats stats;
};

// The whole workload, one pass. `policy` is BYPASS for the cold pass. Each session's
// history grows by the model's answer (from this pass) and a tool result.
absl::StatusOr<std::vector<std::vector<TurnResult>>> RunPass(cluster::ClusterClient& client,
                                                             const DemoFlags& f,
                                                             pb::CachePolicy policy, bool print) {
  std::vector<std::vector<int32_t>> history(f.sessions);
  std::vector<std::vector<TurnResult>> results(f.sessions);
  const std::vector<int32_t> prefix = [] {
    std::vector<int32_t> p = {ByteTokenizer::kBos, ByteTokenizer::kSystem};
    for (int32_t t : Tok(kSystem)) p.push_back(t);
    p.push_back(ByteTokenizer::kTools);
    for (int32_t t : Tok(kTools)) p.push_back(t);
    return p;
  }();
  const int64_t total = f.sessions * f.turns;
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  int64_t done = 0;
  for (int64_t turn = 0; turn < f.turns; ++turn) {
    for (int64_t s = 0; s < f.sessions; ++s) {
      std::vector<int32_t>& h = history[s];
      if (turn == 0) {
        h = prefix;
        h.push_back(ByteTokenizer::kUser);
        for (int32_t t : Tok(kTasks[s % std::size(kTasks)])) h.push_back(t);
      } else {
        for (uint32_t t : results[s].back().tokens) h.push_back(static_cast<int32_t>(t));
        h.push_back(ByteTokenizer::kTool);
        h.push_back(ByteTokenizer::kResult);
        for (int32_t t : Tok(ToolResult(s, turn))) h.push_back(t);
      }
      h.push_back(ByteTokenizer::kAssistant);
      pb::GenerateRequest r;
      for (int32_t t : h) r.mutable_prompt()->mutable_tokens()->add_ids(static_cast<uint32_t>(t));
      r.set_session_id(StrCat("agent-", s));
      r.mutable_sampling()->set_max_new_tokens(static_cast<uint32_t>(f.max_tokens));
      r.mutable_sampling()->set_ignore_eos(true);
      r.set_cache_policy(policy);
      ASSIGN_OR_RETURN(cluster::GenerateOutcome out, client.Generate(r, absl::Minutes(5)));
      results[s].push_back({out.tokens, out.stats});
      ++done;
      const pb::RequestStats& st = out.stats;
      const double ttft = absl::ToDoubleMilliseconds(cluster::FromProto(st.ttft()));
      if (print) {
        std::printf(
            "  agent %ld turn %ld: prompt %5u tok | cached %5u, recomputed %5u | "
            "TTFT %8.2f ms | hits: %s\n",
            static_cast<long>(s), static_cast<long>(turn + 1), st.prompt_tokens(),
            st.cached_tokens(), st.recomputed_tokens(), ttft, cluster::FormatTierHits(st).c_str());
      } else {  // progress: one updating line on a terminal, a line per turn otherwise
        std::printf("%s  cold run: %ld/%ld turns (last: prompt %u tok, TTFT %.1f ms)   %s",
                    tty ? "\r" : "", static_cast<long>(done), static_cast<long>(total),
                    st.prompt_tokens(), ttft, tty ? "" : "\n");
      }
      std::fflush(stdout);
    }
  }
  if (!print && tty) std::printf("\n");
  return results;
}

struct Totals {
  double ttft_ms = 0, load_ms = 0, prefill_ms = 0;
  uint64_t cached = 0, recomputed = 0, turns = 0;
};

Totals Sum(const std::vector<std::vector<TurnResult>>& r) {
  Totals t;
  for (const auto& s : r) {
    for (const TurnResult& x : s) {
      t.ttft_ms += absl::ToDoubleMilliseconds(cluster::FromProto(x.stats.ttft()));
      t.load_ms += absl::ToDoubleMilliseconds(cluster::FromProto(x.stats.load_time()));
      t.prefill_ms += absl::ToDoubleMilliseconds(cluster::FromProto(x.stats.prefill_time()));
      t.cached += x.stats.cached_tokens();
      t.recomputed += x.stats.recomputed_tokens();
      ++t.turns;
    }
  }
  return t;
}

absl::Status RunWorkload(cluster::ClusterClient& c, const DemoFlags& f);

absl::Status RunDemo(DemoFlags f) {
  if (f.smoke) {
    f.sessions = std::min<int64_t>(f.sessions, 2);
    f.turns = std::min<int64_t>(f.turns, 2);
    f.max_tokens = std::min<int64_t>(f.max_tokens, 8);
  }
  if (f.sessions < 1 || f.sessions > 64) {
    return absl::InvalidArgumentError("--sessions must be in 1..64");
  }
  if (f.turns < 1 || f.turns > 32) return absl::InvalidArgumentError("--turns must be in 1..32");
  if (f.max_tokens < 1 || f.max_tokens > 256) {
    return absl::InvalidArgumentError("--max-tokens must be in 1..256");
  }
  if (!f.addr.empty()) {
    std::printf("kvstrata demo: against the cluster at %s\n", f.addr.c_str());
    std::fflush(stdout);
    ASSIGN_OR_RETURN(auto client,
                     cluster::ClusterClient::Connect(f.addr, f.token, absl::Seconds(10)));
    return RunWorkload(*client, f);
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "kvstrata-demo-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return ErrnoToStatus(errno, "creating the demo dir");
  const std::string dir = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{dir};

  cluster::EmbeddedServerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
  o.worker_threads = 1;
  o.node.data_dir = dir;
  o.node.kv_layout = f.kv_layout;
  if (f.model != "tiny-v3") {  // the default tiny-v3 model is created by the server itself
    ASSIGN_OR_RETURN(model::ModelConfig config, model::PresetConfig(f.model));
    o.node.model_dir = dir + "/model";
    RETURN_IF_ERROR(model::WriteRandomModel(config, o.node.model_seed, o.node.model_dir));
  }
  o.node.device_bytes = 16ull << 20;  // small: older pages demote to the host tier
  o.node.host_bytes = 64ull << 20;
  o.node.nvme_bytes = 1ull << 30;
  o.node.slab_bytes = 1ull << 20;
  const std::string layout = !f.kv_layout.empty()   ? f.kv_layout
                             : f.model == "tiny-v4" ? "v4-fp8-584"
                                                    : "mla-fp8-656";
  std::printf("kvstrata demo: starting serve --role=all (%s, %s pages) in %s ...\n",
              f.model.c_str(), layout.c_str(), dir.c_str());
  std::fflush(stdout);
  ASSIGN_OR_RETURN(auto server, cluster::EmbeddedServer::Start(o));
  ASSIGN_OR_RETURN(auto client, cluster::ClusterClient::Connect(server->address(), ""));
  std::printf("server on %s\n", server->address().c_str());
  absl::Status status = RunWorkload(*client, f);
  client.reset();
  server->Shutdown();
  std::printf("server stopped; demo data removed\n");
  return status;
}

// The cold and warm passes and the summary, against any Cluster endpoint.
absl::Status RunWorkload(cluster::ClusterClient& cc, const DemoFlags& f) {
  cluster::ClusterClient* client = &cc;
  std::printf(
      "%ld agent sessions x %ld turns, %ld tokens per answer; shared system prompt + tool "
      "schemas\n\n",
      static_cast<long>(f.sessions), static_cast<long>(f.turns), static_cast<long>(f.max_tokens));

  std::printf("1) cold run (cache bypassed: every prompt computed from scratch)\n");
  ASSIGN_OR_RETURN(auto cold, RunPass(*client, f, pb::CACHE_POLICY_BYPASS, /*print=*/false));
  std::printf("2) warm run (cache on: shared prefix and each session's history are reused)\n");
  ASSIGN_OR_RETURN(auto warm, RunPass(*client, f, pb::CACHE_POLICY_AUTO, /*print=*/true));

  bool identical = true;
  for (size_t s = 0; s < cold.size(); ++s) {
    for (size_t t = 0; t < cold[s].size(); ++t) {
      identical = identical && cold[s][t].tokens == warm[s][t].tokens;
    }
  }
  const Totals c = Sum(cold), w = Sum(warm);
  const double n = static_cast<double>(w.turns);
  const double hit_rate =
      w.cached + w.recomputed == 0 ? 0 : static_cast<double>(w.cached) / (w.cached + w.recomputed);
  const double cold_ttft = c.ttft_ms / n, warm_ttft = w.ttft_ms / n;
  std::printf("\nsummary (%ld turns each)\n", static_cast<long>(w.turns));
  std::printf("  %-28s %12s %12s\n", "", "cold", "warm");
  std::printf("  %-28s %12.2f %12.2f\n", "mean TTFT (ms)", cold_ttft, warm_ttft);
  std::printf("  %-28s %12lu %12lu\n", "prompt tokens computed",
              static_cast<unsigned long>(c.recomputed), static_cast<unsigned long>(w.recomputed));
  std::printf("  %-28s %12lu %12lu\n", "prompt tokens from cache",
              static_cast<unsigned long>(c.cached), static_cast<unsigned long>(w.cached));
  std::printf("  %-28s %11.1f%% %11.1f%%\n", "hit rate", 0.0, hit_rate * 100);
  std::printf("  TTFT ratio cold/warm: %.2fx\n", warm_ttft > 0 ? cold_ttft / warm_ttft : 0.0);
  std::printf(
      "  where the time goes (warm): loading cached pages %.2f ms/turn, prefill of the %.0f "
      "uncached tokens/turn %.2f ms/turn; cold: prefill of %.0f tokens/turn %.2f ms/turn\n",
      w.load_ms / n, static_cast<double>(w.recomputed) / n, w.prefill_ms / n,
      static_cast<double>(c.recomputed) / n, c.prefill_ms / n);
  std::printf("  warm and cold outputs identical: %s\n", identical ? "yes" : "NO");
  // The router's own tiers (--role=all) and every other node's (a cluster's store nodes).
  auto stats = client->GetStats(absl::Seconds(10), /*all_nodes=*/true);
  if (stats.ok()) {
    std::vector<kvstrata::v1::NodeStats> nodes = {stats->self()};
    nodes.insert(nodes.end(), stats->nodes().begin(), stats->nodes().end());
    for (const kvstrata::v1::NodeStats& n : nodes) {
      std::string tiers;
      for (const auto& t : n.tiers()) {
        tiers += fmt::format(" {} {} pages ({:.1f} MiB);", cluster::TierProtoName(t.tier()),
                             t.capacity().pages(), t.capacity().used_bytes() / 1048576.0);
      }
      if (!tiers.empty()) std::printf("  store now (%s):%s\n", n.node_id().c_str(), tiers.c_str());
    }
  }
  if (!identical) {
    return absl::InternalError("warm and cold runs generated different tokens");
  }
  if (w.turns > 1 && w.cached == 0) {
    return absl::InternalError("the warm run loaded nothing from the cache");
  }
  return absl::OkStatus();
}

int RunDemoCmd(int argc, char** argv) {
  DemoFlags f;
  FlagSet flags("kvstrata demo");
  flags.Int("sessions", &f.sessions, "agent sessions");
  flags.Int("turns", &f.turns, "turns per session");
  flags.Int("max-tokens", &f.max_tokens, "tokens generated per turn");
  flags.Bool("smoke", &f.smoke, "a short run (2 sessions x 2 turns) for tests");
  flags.String("kv-layout", &f.kv_layout,
               "KV page layout: mla-fp8-656 (default) or mla-bf16-1152; v4-fp8-584 for tiny-v4");
  flags.String("model", &f.model, "model preset to serve: tiny-v3 (MLA) or tiny-v4 (DeepSeek-V4)");
  flags.String("addr", &f.addr, "drive an existing cluster (router) at HOST:PORT instead");
  flags.String("token", &f.token, "bearer token for --addr (its tokens file)");
  cluster::TlsFiles tls;
  cluster::BindTlsFlags(&flags, &tls, "the client's");
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok() && !tls.empty() && f.addr.empty()) {
    s = absl::InvalidArgumentError("--tls-* files are for --addr");
  }
  if (s.ok()) s = cluster::UseProcessTls(tls, /*reloadable=*/false).status();
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata demo: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (std::getenv("KVSTRATA_LOG_LEVEL") == nullptr) log::SetLevel(log::Level::kWarn);
  s = RunDemo(f);
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata demo: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

KV_REGISTER_COMMAND(demo, "the agentic KV-reuse demo (make run): warm vs cold TTFT", RunDemoCmd);

}  // namespace kv::cmd
