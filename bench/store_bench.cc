// `kvstrata bench store`: a kvstrata store node against Redis 7 at the store's own job, GET
// and PUT of whole encoded KV pages, with ucx_perftest at the same size as the limit.
//
// One run starts, on loopback:
//   - a store node, `kvstrata serve --role=store` (this binary re-executed; host tier only,
//     no nvme tier: Redis runs with persistence off too);
//   - a Redis 7, `redis-server --save "" --appendonly no` on a free port;
//   - ucx_perftest as two processes (ucp_get for GET, ucp_put_bw for PUT, UCX_TLS of shared
//     memory: the fabric of the UCX path on one host).
// Pages are real mla-fp8-656 pages of 64 tokens (kvstore/test_pages.h MakeChain): 4 layers
// (168 KB, a tiny-v3 page) and 61 layers (2.56 MB, a DeepSeek-V3 page). Each client thread owns
// a chain of --pages pages. PUT writes the chain in order, one page per request (a page's
// parent must be stored first); GET reads it back --rounds times, one page per request, after
// an untimed pass that checks every byte. Throughput is bytes moved by all clients over the
// wall time; p50/p99 are per request. The paths:
//   - grpc: PageStoreClient::WritePages / ReadPages (every chunk's XXH3, the whole page's
//     checksums and its key verified by the client, as in serving);
//   - redis: SET / GET of the same bytes through hiredis (one connection per client);
//   - ucx: kvstrata over UCX (cluster::PageRmaClient, store_ucx_bench.cc): GET pins, moves
//     the page with one UCX get into the client's registered buffer, verifies it in place and
//     unpins; PUT reserves staging space, puts, and seals (the store verifies and indexes).
//     Each path writes its own pages (distinct keys), so no PUT finds its page present.
// Writes --json and, with --svg, a bar plot of throughput per point.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/algorithm/container.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "bench/bench_util.h"
#include "bench/store_bench.h"
#include "cluster/page_store_client.h"
#include "cluster/testing/child_process.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "kvstore/test_pages.h"
#include "transport/ucx_peer.h"

#ifdef KVSTRATA_HAVE_HIREDIS
#include <hiredis.h>
#endif

namespace kv::bench::store {
namespace {

using absl::StrCat;
using cluster::PageStoreClient;
// Paths of kvstrata itself, in row order; MeasureKvstrataPath skips those not built yet.
constexpr const char* kKvstrataPaths[] = {"ucx", "ucx-chain", "grpc"};

absl::StatusOr<std::vector<int64_t>> ParseList(const std::string& s, const char* flag) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0 || v > 64) {
      return absl::InvalidArgumentError(StrCat("--", flag, ": '", part, "' is not in 1..64"));
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace

absl::StatusOr<OpStats> RunClients(int n, const ClientFn& fn) {
  std::vector<std::vector<double>> lat(n);
  std::vector<uint64_t> bytes(n, 0);
  std::vector<absl::Status> status(n);
  absl::Notification go;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      go.WaitForNotification();
      status[i] = fn(i, &lat[i], &bytes[i]);
    });
  }
  const double t0 = NowSeconds();
  go.Notify();
  for (auto& t : threads) t.join();
  const double wall = NowSeconds() - t0;
  std::vector<double> all;
  uint64_t total = 0;
  for (int i = 0; i < n; ++i) {
    RETURN_IF_ERROR(Annotate(status[i], StrCat("client ", i)));
    all.insert(all.end(), lat[i].begin(), lat[i].end());
    total += bytes[i];
  }
  return OpStats{static_cast<double>(total) / wall / 1e9, Percentile(all, 50), Percentile(all, 99)};
}

// ---- the store node and its gRPC clients --------------------------------------------------------

namespace {

absl::Status StartStore(const Flags& f, uint64_t bytes, Store& s) {
  {
    std::ofstream t(f.dir + "/tokens.yaml");
    t << kToken << ": " << kTenant << "\n";
    std::ofstream(f.dir + "/service-token") << "svc-bench\n";
  }
  // Twice the pages: slab size classes round pages up, and nothing may be evicted mid-run.
  const int64_t mib = static_cast<int64_t>(bytes >> 19) + 64;
  RETURN_IF_ERROR(s.process.Spawn(
      {"/proc/self/exe", "serve", "--role=store", "--node-id=bench-store", "--listen=127.0.0.1:0",
       "--metrics-port=-1", "--nvme-mib=0", StrCat("--host-mib=", mib),
       "--data-dir=" + f.dir + "/store", "--tokens-file=" + f.dir + "/tokens.yaml",
       "--service-token-file=" + f.dir + "/service-token"},
      f.dir + "/store.log"));
  ASSIGN_OR_RETURN(std::string line, s.process.WaitForLine("listening on", absl::Seconds(30)));
  const size_t at = line.find("listening on ") + 13;
  s.address = line.substr(at, line.find(' ', at) - at);
  return absl::OkStatus();
}

}  // namespace

kvstrata::v1::WriteOptions StoreWriteOptions() {
  kvstrata::v1::WriteOptions o;
  const BlockKey fp{Sha256Of("kvstrata test model")};  // MakeChain's model
  o.mutable_key_space()->set_model_fingerprint(
      std::string(reinterpret_cast<const char*>(fp.bytes.data()), fp.bytes.size()));
  o.mutable_key_space()->set_layout("mla-fp8-656");
  o.mutable_key_space()->set_page_tokens(kTokens);
  return o;
}

namespace {

absl::StatusOr<std::vector<std::unique_ptr<PageStoreClient>>> GrpcClients(const Store& s, int n) {
  std::vector<std::unique_ptr<PageStoreClient>> out;
  for (int i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(auto c, PageStoreClient::Connect(s.address, kToken, absl::Seconds(60)));
    out.push_back(std::move(c));
  }
  return out;
}

absl::Status GrpcPut(PageStoreClient& c, const Page& p) {
  const PageStoreClient::PageToWrite w{p.meta.key, p.bytes};
  ASSIGN_OR_RETURN(auto r, c.WritePages(StoreWriteOptions(), {&w, 1}));
  if (r.size() != 1 || (r[0].outcome != kvstrata::v1::WRITE_OUTCOME_STORED &&
                        r[0].outcome != kvstrata::v1::WRITE_OUTCOME_ALREADY_PRESENT)) {
    return absl::InternalError(StrCat("page not stored: ", r.empty() ? "" : r[0].error.ToString()));
  }
  return absl::OkStatus();
}

// Reads `p` back; with `check`, compares every byte.
absl::Status GrpcGet(PageStoreClient& c, const Page& p, bool check) {
  ASSIGN_OR_RETURN(auto r, c.ReadPages({&p.meta.key, 1}));
  if (r.size() != 1) return absl::InternalError("ReadPages answered no page");
  RETURN_IF_ERROR(r[0].page.status());
  if (r[0].page->size() != p.bytes.size() ||
      (check && std::memcmp(r[0].page->data(), p.bytes.data(), p.bytes.size()) != 0)) {
    return absl::DataLossError("the store returned other bytes");
  }
  return absl::OkStatus();
}

// ---- Redis -------------------------------------------------------------------------------------

absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return ErrnoToStatus(errno, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, "binding a loopback port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Redis {
  cluster::testing::ChildProcess process;
  int port = 0;
};

absl::Status StartRedis(const Flags& f, Redis& r) {
  if (access(f.redis_server.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        StrCat(f.redis_server, " not found (Debian package redis-server; run scripts/setup)"));
  }
  ASSIGN_OR_RETURN(r.port, FreeLoopbackPort());
  RETURN_IF_ERROR(r.process.Spawn(
      {f.redis_server, "--port", StrCat(r.port), "--bind", "127.0.0.1", "--save", "",
       "--appendonly", "no", "--dir", f.dir, "--maxmemory", "0", "--daemonize", "no"},
      f.dir + "/redis.log"));
  return r.process.WaitForLine("Ready to accept connections", absl::Seconds(15)).status();
}

#ifdef KVSTRATA_HAVE_HIREDIS
using RedisConn = std::unique_ptr<redisContext, void (*)(redisContext*)>;

absl::StatusOr<RedisConn> RedisConnect(int port) {
  const timeval tv{10, 0};
  RedisConn c(redisConnectWithTimeout("127.0.0.1", port, tv), redisFree);
  if (c == nullptr || c->err != 0) {
    return absl::UnavailableError(StrCat("redis connect: ", c ? c->errstr : "out of memory"));
  }
  if (redisSetTimeout(c.get(), tv) != REDIS_OK) return absl::InternalError("redisSetTimeout");
  // As redis-benchmark does: without it a SET's last segment waits for a delayed ACK (40 ms).
  const int one = 1;
  if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return ErrnoToStatus(errno, "TCP_NODELAY");
  }
  return c;
}

// GET (value = nullptr) or SET of the page's key; `check` compares the bytes a GET returns.
absl::Status RedisCall(redisContext* c, const Page& p, bool set, bool check) {
  const std::string key = StrCat("kv:", p.meta.key.Hex());
  auto* reply = static_cast<redisReply*>(
      set ? redisCommand(c, "SET %b %b", key.data(), key.size(), p.bytes.data(), p.bytes.size())
          : redisCommand(c, "GET %b", key.data(), key.size()));
  if (reply == nullptr) return absl::UnavailableError(StrCat("redis: ", c->errstr));
  std::unique_ptr<redisReply, void (*)(void*)> owned(reply, freeReplyObject);
  if (set) {
    if (reply->type != REDIS_REPLY_STATUS) return absl::InternalError("redis SET failed");
    return absl::OkStatus();
  }
  if (reply->type != REDIS_REPLY_STRING || reply->len != p.bytes.size() ||
      (check && std::memcmp(reply->str, p.bytes.data(), p.bytes.size()) != 0)) {
    return absl::DataLossError("redis GET returned other bytes");
  }
  return absl::OkStatus();
}
#endif

absl::StatusOr<OpStats> MeasureRedis(const Flags& f, const Redis& r, Op op, const Point& pt) {
#ifdef KVSTRATA_HAVE_HIREDIS
  const int n = static_cast<int>(pt.chains.size());
  std::vector<RedisConn> conns;
  for (int i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(RedisConn c, RedisConnect(r.port));
    conns.push_back(std::move(c));
  }
  if (op == Op::kGet) {  // the untimed pass that checks every byte
    for (int i = 0; i < n; ++i) {
      for (const Page& p : pt.chains[i]) RETURN_IF_ERROR(RedisCall(conns[i].get(), p, false, true));
    }
  }
  const int rounds = op == Op::kGet ? static_cast<int>(f.rounds) : 1;
  return RunClients(n, [&](int i, std::vector<double>* lat, uint64_t* bytes) -> absl::Status {
    for (int round = 0; round < rounds; ++round) {
      for (const Page& p : pt.chains[i]) {
        const double t0 = NowSeconds();
        RETURN_IF_ERROR(RedisCall(conns[i].get(), p, op == Op::kPut, false));
        lat->push_back((NowSeconds() - t0) * 1e6);
        *bytes += p.bytes.size();
      }
    }
    return absl::OkStatus();
  });
#else
  (void)f, (void)r, (void)op, (void)pt;
  return absl::FailedPreconditionError(
      "built without hiredis: install libhiredis-dev (scripts/setup) and reconfigure");
#endif
}

// ---- kvstrata paths
// ------------------------------------------------------------------------------

absl::StatusOr<OpStats> MeasureGrpc(const Flags& f, const Store& s, Op op, const Point& pt) {
  const int n = static_cast<int>(pt.chains.size());
  ASSIGN_OR_RETURN(auto clients, GrpcClients(s, n));
  if (op == Op::kGet) {
    for (int i = 0; i < n; ++i) {
      for (const Page& p : pt.chains[i]) RETURN_IF_ERROR(GrpcGet(*clients[i], p, true));
    }
  }
  const int rounds = op == Op::kGet ? static_cast<int>(f.rounds) : 1;
  return RunClients(n, [&](int i, std::vector<double>* lat, uint64_t* bytes) -> absl::Status {
    for (int round = 0; round < rounds; ++round) {
      for (const Page& p : pt.chains[i]) {
        const double t0 = NowSeconds();
        RETURN_IF_ERROR(op == Op::kPut ? GrpcPut(*clients[i], p) : GrpcGet(*clients[i], p, false));
        lat->push_back((NowSeconds() - t0) * 1e6);
        *bytes += p.bytes.size();
      }
    }
    return absl::OkStatus();
  });
}

// The hook for kvstrata's data paths, by name: "grpc" (the fallback) is measured here; "ucx"
// (kvstrata over UCX, issue #15 items 2-3) is added by the branch that builds it. A path this
// build does not have answers nullopt, and no row is printed for it.
absl::StatusOr<std::optional<OpStats>> MeasureKvstrataPath(std::string_view path, const Flags& f,
                                                           const Store& s, Op op, const Point& pt) {
  if (path == "grpc") return MeasureGrpc(f, s, op, pt);
  if (path == "ucx" || path == "ucx-chain") return MeasureUcx(f, s, op, pt, path == "ucx-chain");
  return std::nullopt;
}

// ---- ucx_perftest
// --------------------------------------------------------------------------------

// ucx_perftest bandwidth in GB/s (1e9 B/s) of `test` at `size` bytes over shared memory, between
// two processes on loopback (as `kvstrata bench transport` runs it).
absl::StatusOr<double> Perftest(const Flags& f, const std::string& test, size_t size) {
  static int port = 20000 + (getpid() + 7919) % 20000;
  setenv("UCX_TLS", "posix,cma,self", 1);
  const int iters = static_cast<int>(std::clamp<size_t>((512u << 20) / size, 16, 2000));
  for (int attempt = 0; attempt < 3; ++attempt) {
    const std::string p = std::to_string(++port);
    transport::ChildProcess server({f.perftest, "-p", p});
    if (!server.ok()) return absl::UnavailableError("cannot start ucx_perftest");
    absl::SleepFor(absl::Milliseconds(300));
    transport::ChildProcess client({f.perftest, "127.0.0.1", "-p", p, "-t", test, "-s",
                                    std::to_string(size), "-n", std::to_string(iters)});
    const std::string out = client.ReadAll(absl::Seconds(60));
    server.Kill();
    const size_t at = out.find("Final:");
    if (at == std::string::npos) continue;
    std::istringstream is(out.substr(at + 6));
    double v[6] = {};
    for (double& x : v) is >> x;
    // Columns: iterations, p50 us, avg us, overall us, MB/s avg, MB/s overall (MB = 2^20 B).
    return v[5] * 1048576.0 / 1e9;
  }
  return absl::UnavailableError(StrCat("ucx_perftest ", test, " produced no result"));
}

// ---- the run
// -------------------------------------------------------------------------------------

// `clients` chains of `pages` pages, distinct per `salt` (every point writes new keys).
Point MakePoint(uint32_t layers, int clients, int64_t pages, uint64_t salt) {
  Point pt;
  pt.layers = layers;
  for (int i = 0; i < clients; ++i) {
    pt.chains.push_back(kv::testing::MakeChain(salt * 1000 + i, kTenant, pages, kTokens, layers));
  }
  pt.page_bytes = pt.chains[0][0].bytes.size();
  return pt;
}

struct Figures {
  std::string label;
  Op op;
  std::optional<OpStats> redis;
  double perftest = 0;
  std::vector<std::pair<std::string, OpStats>> paths;  // kvstrata's, by path name
  const OpStats* path(std::string_view name) const {
    for (const auto& [n, s] : paths) {
      if (n == name) return &s;
    }
    return nullptr;
  }
};

void AddRows(const Figures& x, BenchReport& r) {
  const std::string what = StrCat(OpName(x.op), " ", x.label);
  const std::string lim = StrCat("ucx_perftest ", x.op == Op::kGet ? "ucp_get" : "ucp_put_bw");
  for (const auto& [path, s] : x.paths) {
    if (x.redis) {
      r.Add({.name = StrCat(path, " ", what),
             .value = s.gbps,
             .unit = "GB/s",
             .limit_name = "redis (hiredis), same run",
             .limit = x.redis->gbps});
    }
    r.Add({.name = StrCat(path, " ", what),
           .value = s.gbps,
           .unit = "GB/s",
           .limit_name = lim,
           .limit = x.perftest});
    for (const auto& [q, v, rv] : {std::tuple{"p50", s.p50_us, x.redis ? x.redis->p50_us : 0.0},
                                   std::tuple{"p99", s.p99_us, x.redis ? x.redis->p99_us : 0.0}}) {
      r.Add({.name = StrCat(path, " ", what, " ", q),
             .value = v,
             .unit = "us",
             .limit_name = x.redis ? "redis, same run" : "",
             .limit = rv,
             .lower_is_better = true});
    }
  }
  if (x.redis) {
    r.Add({.name = StrCat("redis ", what),
           .value = x.redis->gbps,
           .unit = "GB/s",
           .limit_name = lim,
           .limit = x.perftest,
           .params = {{"p50_us", StrCat(x.redis->p50_us)}, {"p99_us", StrCat(x.redis->p99_us)}}});
  }
}

// The figures of `op` at the point labelled `label`; null when that point was not run.
const Figures* FindFigures(const std::vector<Figures>& figs, Op op, std::string_view label) {
  for (const Figures& x : figs) {
    if (x.op == op && x.label == label) return &x;
  }
  return nullptr;
}

// Where a 2.56 MB page's UCX GET goes, each stage beside the request's p50 (the ratio is
// the stage's share), and the one-sided get at ucx_perftest's rate.
void AddStageRows(const UcxGetStages& st, const std::vector<Figures>& figs, BenchReport& r) {
  const Figures* x = FindFigures(figs, Op::kGet, "2.56 MB x1");
  const OpStats* ucx = x != nullptr ? x->path("ucx") : nullptr;
  const double p50 = ucx != nullptr ? ucx->p50_us : 0;
  const double perftest = x != nullptr ? x->perftest : 0;
  const std::string lim = "ucx GET 2.56 MB x1 p50, same run";
  for (const auto& [stage, us] :
       {std::pair{"PinBlocks RPC (gRPC)", st.pin_us}, std::pair{"one-sided UCX get", st.get_us},
        std::pair{"lease confirmed by its beacon, released", st.release_us},
        std::pair{"in-place verification (XXH3 of the page)", st.verify_us},
        std::pair{"the get at ucx_perftest's rate (computed)",
                  perftest > 0 ? 2561216 / (perftest * 1e3) : 0.0}}) {
    r.Add({.name = StrCat("ucx GET 2.56 MB x1 stage: ", stage),
           .value = us,
           .unit = "us",
           .limit_name = lim,
           .limit = p50,
           .lower_is_better = true});
  }
}

// The python row beside the C++ client's ucx-chain GET of 2.56 MB pages at 1 client.
void AddPythonRow(double gbps, const std::vector<Figures>& figs, BenchReport& r) {
  const Figures* x = FindFigures(figs, Op::kGet, "2.56 MB x1");
  const OpStats* chain = x != nullptr ? x->path("ucx-chain") : nullptr;
  const double cpp = chain != nullptr ? chain->gbps : 0;
  r.Add({.name = "python GET 2.56 MB x1 (kvstrata.Client.batch_get_into, a chain per call)",
         .value = gbps,
         .unit = "GB/s",
         .limit_name = "C++ ucx-chain GET 2.56 MB x1, same run (goal >= 0.8)",
         .limit = cpp});
}

// Whether --paths names `path`.
bool Selected(const Flags& f, std::string_view path) {
  const std::vector<std::string> paths = absl::StrSplit(f.paths, ',');
  return absl::c_linear_search(paths, path);
}

// `pts` has one point per kvstrata path (same sizes, distinct keys: each path's PUTs store
// new pages) and the last for Redis.
absl::Status RunPoint(const Flags& f, const Store& s, const Redis* redis,
                      const std::vector<Point>& pts, std::vector<Figures>& out,
                      absl::Status& redis_error) {
  const Point& pt = pts.back();
  for (Op op : {Op::kPut, Op::kGet}) {  // PUT first: it stores the pages GET reads
    Figures x{.label = pt.Label(), .op = op};
    ASSIGN_OR_RETURN(x.perftest,
                     Perftest(f, op == Op::kGet ? "ucp_get" : "ucp_put_bw", pt.page_bytes));
    for (size_t i = 0; i < std::size(kKvstrataPaths); ++i) {
      if (!Selected(f, kKvstrataPaths[i])) continue;
      ASSIGN_OR_RETURN(std::optional<OpStats> st,
                       MeasureKvstrataPath(kKvstrataPaths[i], f, s, op, pts[i]));
      if (st) x.paths.emplace_back(kKvstrataPaths[i], *st);
    }
    if (redis != nullptr) {
      absl::StatusOr<OpStats> st = MeasureRedis(f, *redis, op, pt);
      if (st.ok()) x.redis = *st;
      if (!st.ok() && redis_error.ok()) redis_error = st.status();
    }
    std::fprintf(stderr, "store bench: %s %s done\r", OpName(op), x.label.c_str());
    out.push_back(std::move(x));
  }
  return absl::OkStatus();
}

// The python row: kvstrata.Client.batch_get_into of a chain of --pages 2.56 MB pages per
// call, from bench/python_client_bench.py against the same store (its own pages), beside
// the C++ client's ucx-chain GET of the same size at 1 client.
absl::StatusOr<double> MeasurePython(const Flags& f, const Store& s) {
  const std::string out = f.dir + "/python.json";
  cluster::testing::ChildProcess py;
  RETURN_IF_ERROR(
      py.Spawn({"/usr/bin/python3", f.python_bench, "--python-only", "--blocks=1",
                "--addr=" + s.address, StrCat("--token=", kToken), StrCat("--pages=", f.pages),
                StrCat("--rounds=", std::max<int64_t>(f.rounds, 4)), "--json=" + out},
               f.dir + "/python.log", {"PYTHONPATH=" + f.python_path}));
  ASSIGN_OR_RETURN(int status, py.Stop(/*signal=*/0, absl::Minutes(10)));  // 0: just wait
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(StrCat("the python row failed: ", py.LogTail()));
  }
  std::ifstream in(out);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("python_gb_per_s_mean") ||
      !j["python_gb_per_s_mean"].is_number()) {
    return absl::InternalError(StrCat("no python_gb_per_s_mean in ", out));
  }
  return j["python_gb_per_s_mean"].get<double>();
}

absl::Status WritePlot(const Flags& f, const std::vector<Figures>& figs) {
  Plot p{.title = "kvstrata store vs Redis 7, loopback (bars: GB/s, log scale)",
         .x_label = "operation, page size x clients",
         .y_label = "throughput (GB/s, 1 GB = 1e9 B)",
         .log_y = true,
         .bars = true};
  std::map<std::string, Series> by;
  for (size_t i = 0; i < figs.size(); ++i) {
    p.categories.push_back(StrCat(OpName(figs[i].op), " ", figs[i].label));
    for (const auto& [path, s] : figs[i].paths) {
      by[StrCat("kvstrata ", path)].points.push_back({double(i), s.gbps});
    }
    if (figs[i].redis) by["redis (hiredis)"].points.push_back({double(i), figs[i].redis->gbps});
    by["ucx_perftest (shm)"].points.push_back({double(i), figs[i].perftest});
  }
  for (auto& [label, s] : by) {
    s.label = label;
    p.series.push_back(std::move(s));
  }
  return WritePlotSvg(f.svg, p);
}

absl::Status Run(const Flags& f) {
  ASSIGN_OR_RETURN(std::vector<int64_t> layers, ParseList(f.layers, "layers"));
  for (absl::string_view p : absl::StrSplit(f.paths, ',')) {
    if (!absl::c_linear_search(kKvstrataPaths, p)) {
      return absl::InvalidArgumentError(
          StrCat("--paths: '", p, "' is not one of ucx, ucx-chain, grpc"));
    }
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> clients, ParseList(f.clients, "clients"));
  if (f.pages < 1 || f.rounds < 1) return absl::InvalidArgumentError("need pages, rounds >= 1");
  if (access(f.perftest.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(StrCat(f.perftest, " not found (Debian ucx-utils)"));
  }
  uint64_t total = 0;  // every page the store will hold
  for (int64_t l : layers) {
    for (int64_t c : clients)
      total += c * f.pages * (kTokens * 656ull * l + 8192) * std::size(kKvstrataPaths);
  }
  if (!f.python_bench.empty()) total += f.pages * (kTokens * 656ull * 61 + 8192);
  Store store;
  RETURN_IF_ERROR(Annotate(StartStore(f, total, store), "starting the store node"));
  Redis redis;
  absl::Status redis_error = Annotate(StartRedis(f, redis), "starting redis-server");
  std::vector<Figures> figs;
  std::optional<UcxGetStages> stages;
  uint64_t salt = 1;
  for (int64_t l : layers) {
    for (int64_t c : clients) {
      std::vector<Point> pts;
      for (size_t i = 0; i <= std::size(kKvstrataPaths); ++i) {
        pts.push_back(MakePoint(static_cast<uint32_t>(l), static_cast<int>(c), f.pages, salt++));
      }
      RETURN_IF_ERROR(
          RunPoint(f, store, redis_error.ok() ? &redis : nullptr, pts, figs, redis_error));
      if (l == 61 && c == 1 && Selected(f, "ucx")) {  // the ucx path's pages, stored by its PUT
        ASSIGN_OR_RETURN(stages, MeasureUcxGetStages(f, store, pts[0].chains[0]));
      }
    }
  }
  std::optional<absl::StatusOr<double>> python;
  if (!f.python_bench.empty()) python = MeasurePython(f, store);
  std::fprintf(stderr, "%60s\r", "");
  (void)store.process.Stop(SIGTERM, absl::Seconds(10));
  (void)redis.process.Stop(SIGTERM, absl::Seconds(10));
  BenchReport r("store");
  for (const Figures& x : figs) AddRows(x, r);
  if (stages) AddStageRows(*stages, figs, r);
  if (python) {
    RETURN_IF_ERROR(python->status());
    AddPythonRow(**python, figs, r);
  }
  r.Note("method",
         "one page per request; GB/s = all clients' bytes / wall time; p50/p99 per "
         "request; loopback, store and Redis on this machine");
  r.Note("limit",
         "ucx_perftest ucp_get (GET) / ucp_put_bw (PUT) at the page size, "
         "UCX_TLS=posix,cma,self, two processes, same run");
  r.Note("goal", "grpc fallback >= 1x redis (issue #15 item 6)");
  r.Note("pages", StrCat(f.pages, " per client; GET: ", f.rounds, " rounds"));
  if (!redis_error.ok()) r.Note("redis", std::string(redis_error.message()));
  r.Print();
  RETURN_IF_ERROR(r.WriteJson(f.json));
  if (!f.svg.empty()) RETURN_IF_ERROR(WritePlot(f, figs));
  return redis_error;  // the kvstrata rows are printed either way
}

int RunStoreBench(int argc, char** argv) {
  Flags f;
  FlagSet flags("kvstrata bench store");
  flags.String("json", &f.json, "write the report as JSON to FILE");
  flags.String("svg", &f.svg, "write a bar plot of the throughputs as SVG to FILE");
  flags.String("layers", &f.layers, "page sizes as layers of 64 tokens (4: 168 KB, 61: 2.56 MB)");
  flags.String("clients", &f.clients, "client threads per point, comma-separated");
  flags.Int("pages", &f.pages, "pages per client and point (PUT requests)");
  flags.Int("rounds", &f.rounds, "timed GET passes over each client's pages");
  flags.String("paths", &f.paths, "kvstrata's paths to measure (ucx, ucx-chain, grpc)");
  flags.String("redis-server", &f.redis_server, "path of redis-server (Redis 7)");
  flags.String("perftest", &f.perftest, "path of ucx_perftest");
  flags.String("python-bench", &f.python_bench,
               "path of bench/python_client_bench.py: adds the python row (empty: none)");
  flags.String("python-path", &f.python_path,
               "directory of the built kvstrata Python package (PYTHONPATH of the python row)");
  return RunSuite(flags, argc, argv, [&]() -> absl::Status {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvstrata-store-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) return ErrnoToStatus(errno, "creating a temp dir");
    f.dir = tmpl;
    absl::Status s = Run(f);
    std::error_code ec;
    std::filesystem::remove_all(f.dir, ec);
    return s;
  });
}

}  // namespace

KV_REGISTER_BENCH(store, "store node GET/PUT of KV pages vs Redis 7 and ucx_perftest, same run",
                  RunStoreBench);

}  // namespace kv::bench::store
