// `kvstrata serve`: runs a kvstrata node.
//
//   kvstrata serve --role=all|router|prefill|decode|store [--config=FILE] [flags...]
//
// Every flag is also a key of the YAML config file. --role=all (the embedded default) runs
// everything in one process: the Cluster gRPC service with health and reflection, the
// engine over the model (the seeded tiny-v3 model is created in DATA_DIR/model-tiny-v3 on
// first start when --model-dir is empty), device and host tiers in memory and the nvme tier
// under DATA_DIR/nvme, and /metrics + /healthz over HTTP. The other roles are one part each
// of a distributed cluster (cluster/role_server.h): the router (Cluster API, the only client
// entry point), prefill and decode workers (Worker API, KV handoff over UCX) and store nodes
// (PageStore API, host + nvme tiers). They find each other through --members (a static list)
// or --etcd (leases + watch). Without --tokens-file every call is the built-in tenant
// "default" (no token needed); with it, each call needs `authorization: Bearer <token>` from
// the file (cluster/tenants.h); every role of a cluster uses the same file. The nodes of a
// cluster call each other with the node credential, --service-token-file (one token line;
// the same file on every node; required by the distributed roles with a tokens file). Who may
// call what: docs/serving.md "Security model".
//
// With --tls-cert-file, --tls-key-file and --tls-ca-file every gRPC server and channel of the
// node (etcd's excepted) is mutual TLS against that CA (cluster/transport_security.h); SIGHUP
// reloads the three files.
//
// --check-config validates the flags/config and exits 0 (valid) or 1 (the message says what
// is wrong) without starting anything. SIGINT/SIGTERM shut the node down within the gRPC
// shutdown grace (5 s) plus the time to finish the current token.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "cluster/embedded_server.h"
#include "cluster/membership_config.h"
#include "cluster/role_server.h"
#include "cluster/transport_security.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/kv_events.h"
#include "model/config.h"

namespace kv::cmd {
namespace {

struct ServeFlags {
  std::string role = "all";
  std::string listen = "127.0.0.1:7070";
  int64_t metrics_port = 9090;
  std::string model_dir;
  std::string kv_layout;  // empty: the model's FP8 layout
  std::string key_chain = "tokens";
  std::string engine_hash_seed;
  std::string data_dir;
  int64_t device_mib = 64;
  int64_t host_mib = 256;
  int64_t nvme_mib = 4096;
  std::string tokens_file;
  std::string service_token_file;
  int64_t worker_threads = 2;
  int64_t compute_threads = 0;
  std::string node_id;
  std::string advertise;
  int64_t replication = 1;
  int64_t local_cache_mib = 256;
  int64_t shutdown_flush_seconds = 20;  // cluster::kShutdownFlushBudget
  std::string transport = "ucx";
  cluster::MembershipConfig membership;
  cluster::TlsFiles tls;  // all three or none (cluster/transport_security.h)
  bool check_config = false;
  // KV events (store role; kvstore/kv_events.h, docs/serving.md "KV events").
  std::string kv_events_endpoint;  // empty: off
  std::string kv_events_replay_endpoint;
  std::string kv_events_topic;
  std::string kv_events_encoding = "array";
  std::string kv_events_hash_format = "int";
  int64_t kv_events_buffer_steps = 10000;
  int64_t kv_events_queue = 100000;
  int64_t kv_events_interval_ms = 10;
  int64_t kv_events_dp_rank = -1;  // -1: nil
};

// The KV events options the --kv-events-* flags name; nullopt when --kv-events-endpoint is
// empty (off) and no other --kv-events-* flag asks for events.
absl::StatusOr<std::optional<KvEventsOptions>> ToKvEventsOptions(const ServeFlags& f) {
  if (f.kv_events_endpoint.empty()) {
    if (!f.kv_events_replay_endpoint.empty() || !f.kv_events_topic.empty()) {
      return absl::InvalidArgumentError(
          "--kv-events-replay-endpoint/--kv-events-topic need --kv-events-endpoint");
    }
    return std::nullopt;
  }
  KvEventsOptions e;
  e.endpoint = f.kv_events_endpoint;
  e.replay_endpoint = f.kv_events_replay_endpoint;
  e.topic = f.kv_events_topic;
  ASSIGN_OR_RETURN(e.encoding, ParseKvEventEncoding(f.kv_events_encoding));
  ASSIGN_OR_RETURN(e.hash_format, ParseKvEventHashFormat(f.kv_events_hash_format));
  for (auto [name, v] : {std::pair{"kv-events-buffer-steps", f.kv_events_buffer_steps},
                         std::pair{"kv-events-queue", f.kv_events_queue},
                         std::pair{"kv-events-interval-ms", f.kv_events_interval_ms}}) {
    if (v < 1 || v > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(StrCat("--", name, " must be in 1..2^24, got ", v));
    }
  }
  e.buffer_steps = static_cast<size_t>(f.kv_events_buffer_steps);
  e.queue_capacity = static_cast<size_t>(f.kv_events_queue);
  e.batch_interval = absl::Milliseconds(f.kv_events_interval_ms);
  if (f.kv_events_dp_rank < -1) {
    return absl::InvalidArgumentError(
        StrCat("--kv-events-dp-rank must be >= 0 (or -1: nil), got ", f.kv_events_dp_rank));
  }
  if (f.kv_events_dp_rank >= 0) e.data_parallel_rank = f.kv_events_dp_rank;
  RETURN_IF_ERROR(ValidateKvEventsOptions(e));
  return e;
}

std::string DefaultDataDir() { return StrCat("/tmp/kvstrata-", ::getuid()); }

// The node options every role shares (model, layout, data dir, tier sizes), checked.
absl::StatusOr<cluster::NodeOptions> ToNodeOptions(const ServeFlags& f) {
  for (auto [name, v] : {std::pair{"device-mib", f.device_mib}, std::pair{"host-mib", f.host_mib},
                         std::pair{"nvme-mib", f.nvme_mib}}) {
    if (v < 0 || v > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(StrCat("--", name, " must be in 0..2^30, got ", v));
    }
  }
  if (f.compute_threads < 0 || f.compute_threads > 1024) {
    return absl::InvalidArgumentError(
        StrCat("--compute-threads must be in 0..1024 (0: one per core), got ", f.compute_threads));
  }
  if (f.shutdown_flush_seconds < 0 || f.shutdown_flush_seconds > 3600) {
    return absl::InvalidArgumentError(
        StrCat("--shutdown-flush-seconds must be in 0..3600, got ", f.shutdown_flush_seconds));
  }
  cluster::NodeOptions n;
  n.model_dir = f.model_dir;
  n.compute_threads = static_cast<int>(f.compute_threads);
  n.kv_layout = f.kv_layout;
  absl::StatusOr<KeyChain> chain = ParseKeyChain(f.key_chain);
  if (!chain.ok())
    return absl::InvalidArgumentError(StrCat("--key-chain: ", chain.status().message()));
  n.key_chain = *chain;
  n.engine_hash_seed = f.engine_hash_seed;
  n.data_dir = f.data_dir.empty() ? DefaultDataDir() : f.data_dir;
  n.device_bytes = static_cast<uint64_t>(f.device_mib) << 20;
  n.host_bytes = static_cast<uint64_t>(f.host_mib) << 20;
  n.nvme_bytes = static_cast<uint64_t>(f.nvme_mib) << 20;
  return n;
}

// A model directory given explicitly must hold a model this runtime serves (MLA or V4).
absl::Status CheckModelDir(const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(model::ModelConfig c, model::LoadModelConfig(StrCat(dir, "/config.json")));
  return model::ValidateForAnyRuntime(c);
}

// A node that listens on every interface with no tokens file serves any client that reaches
// it (as the default tenant). Allowed — a private network, a sidecar — but said out loud.
std::optional<std::string> OpenListenerWarning(const ServeFlags& f) {
  const size_t colon = f.listen.rfind(':');
  const std::string host = colon == std::string::npos ? f.listen : f.listen.substr(0, colon);
  if (!f.tokens_file.empty() || (host != "0.0.0.0" && host != "[::]" && !host.empty())) {
    return std::nullopt;
  }
  return StrCat("warning: --listen=", f.listen,
                " accepts connections on every interface and no --tokens-file is set: any "
                "client that reaches this node is served as the default tenant");
}

absl::StatusOr<cluster::EmbeddedServerOptions> ToOptions(const ServeFlags& f) {
  if (f.role != "all") {
    return absl::InvalidArgumentError(
        StrCat("--role must be all, router, prefill, decode or store; got '", f.role, "'"));
  }
  if (!f.membership.etcd.empty() || !f.membership.members.empty()) {
    return absl::InvalidArgumentError(
        "--role=all is a whole cluster in one process; --etcd/--members are for the other roles");
  }
  if (!f.kv_events_endpoint.empty()) {
    return absl::InvalidArgumentError("--kv-events-endpoint is for --role=store nodes");
  }
  cluster::EmbeddedServerOptions o;
  o.listen = f.listen;
  o.metrics_port = f.metrics_port;
  o.tokens_file = f.tokens_file;
  o.service_token_file = f.service_token_file;
  o.node_id = f.node_id;
  o.worker_threads = static_cast<int>(std::clamp<int64_t>(f.worker_threads, 0, 1 << 10));
  ASSIGN_OR_RETURN(o.node, ToNodeOptions(f));
  o.shutdown_flush = absl::Seconds(f.shutdown_flush_seconds);
  RETURN_IF_ERROR(cluster::ValidateEmbeddedServerOptions(o));
  RETURN_IF_ERROR(CheckModelDir(o.node.model_dir));
  return o;
}

absl::StatusOr<cluster::RoleServerOptions> ToRoleOptions(const ServeFlags& f) {
  if (f.transport != "ucx") {
    return absl::InvalidArgumentError(
        StrCat("--transport must be ucx (the prefill->decode handoff); got '", f.transport, "'"));
  }
  cluster::RoleServerOptions o;
  o.role = f.role;
  o.listen = f.listen;
  o.advertise = f.advertise;
  o.node_id = f.node_id;
  o.metrics_port = f.metrics_port;
  o.tokens_file = f.tokens_file;
  o.service_token_file = f.service_token_file;
  o.worker_threads = static_cast<int>(std::clamp<int64_t>(f.worker_threads, 0, 1 << 10));
  o.replication = static_cast<int>(std::clamp<int64_t>(f.replication, 0, 1 << 10));
  o.local_cache_mib = f.local_cache_mib;
  o.membership = f.membership;
  ASSIGN_OR_RETURN(o.kv_events, ToKvEventsOptions(f));
  ASSIGN_OR_RETURN(o.node, ToNodeOptions(f));
  o.shutdown_flush = absl::Seconds(f.shutdown_flush_seconds);
  // A store has no compute memory to cache in: its device tier is off.
  if (f.role == "store") o.node.device_bytes = 0;
  RETURN_IF_ERROR(cluster::ValidateRoleServerOptions(o));
  RETURN_IF_ERROR(CheckModelDir(o.node.model_dir));
  return o;
}

// Blocks SIGINT/SIGTERM/SIGHUP in every thread (gRPC's included, created after this) and
// returns the set to sigwait() on.
sigset_t BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// SIGHUP: reloads the TLS files (a bad set is refused; the old certificates stay in use).
void ReloadOnHangup() {
  std::shared_ptr<cluster::TransportSecurity> security = cluster::ProcessTransportSecurity();
  if (!security->tls()) {
    log::Info("serve_sighup", "reload", "nothing to reload (no tls-* files)");
    return;
  }
  const absl::Status s = security->Reload();
  if (!s.ok()) log::Error("tls_reload_failed", "error", s.ToString(), "kept", "the old files");
}

// Blocks until SIGINT or SIGTERM (of `set`, BlockShutdownSignals) arrives; every SIGHUP before
// that reloads the TLS files.
void WaitForShutdownSignal(const sigset_t& set) {
  int sig = 0;
  while (true) {
    sigwait(&set, &sig);
    log::Info("serve_signal", "signal", sig);
    if (sig != SIGHUP) return;
    ReloadOnHangup();
  }
}

// Makes the tls-* files the process's transport security (every gRPC server and channel of
// this node; etcd's excepted), reloadable on SIGHUP.
absl::Status UseTls(const ServeFlags& f) {
  ASSIGN_OR_RETURN(auto security, cluster::UseProcessTls(f.tls, /*reloadable=*/true));
  if (security->tls()) {
    log::Info("serve_tls", "cert", f.tls.cert_file, "ca", f.tls.ca_file, "client_certs",
              "required");
  }
  return absl::OkStatus();
}

// After shutdown: the TLS copies' private directory is removed (the process's security held
// the last reference).
void DropTls() { cluster::SetProcessTransportSecurity(nullptr); }

absl::Status ServeRole(const cluster::RoleServerOptions& o, const ServeFlags& f) {
  sigset_t set = BlockShutdownSignals();
  RETURN_IF_ERROR(UseTls(f));
  ASSIGN_OR_RETURN(auto server, cluster::RoleServer::Start(o));
  std::printf("kvstrata serve --role=%s listening on %s (advertised %s, metrics on port %d)\n",
              o.role.c_str(), server->address().c_str(), server->advertised().c_str(),
              server->metrics_port());
  std::fflush(stdout);
  WaitForShutdownSignal(set);
  server->Shutdown();
  DropTls();
  return absl::OkStatus();
}

absl::Status Serve(const cluster::EmbeddedServerOptions& o, const ServeFlags& f) {
  sigset_t set = BlockShutdownSignals();
  RETURN_IF_ERROR(UseTls(f));
  ASSIGN_OR_RETURN(auto server, cluster::EmbeddedServer::Start(o));
  std::printf("kvstrata serve --role=all listening on %s (metrics on port %d); %s\n",
              server->address().c_str(), server->metrics_port(),
              server->requires_token() ? "bearer tokens required"
                                       : "no tokens file: every call is tenant \"default\"");
  std::fflush(stdout);
  WaitForShutdownSignal(set);
  server->Shutdown();
  DropTls();
  return absl::OkStatus();
}

// The KV-event flags of a store (kvstore/kv_events.h; docs/serving.md "KV events").
void BindKvEventFlags(FlagSet& flags, ServeFlags& f) {
  flags.String("kv-events-endpoint", &f.kv_events_endpoint,
               "store: publish KV events (vLLM wire format) on a ZMQ PUB socket bound here, "
               "tcp://HOST:PORT or ipc://PATH; empty: off");
  flags.String("kv-events-replay-endpoint", &f.kv_events_replay_endpoint,
               "store: ZMQ ROUTER socket answering replay requests; empty: none");
  flags.String("kv-events-topic", &f.kv_events_topic, "store: topic frame of KV event messages");
  flags.String("kv-events-encoding", &f.kv_events_encoding,
               "store: array (tagged arrays, older vLLM) or map ({\"type\": ...}, since mid-2026)");
  flags.String("kv-events-hash-format", &f.kv_events_hash_format,
               "store: int (low 64 bits of each hash, vLLM's default) or bytes");
  flags.Int("kv-events-buffer-steps", &f.kv_events_buffer_steps,
            "store: event batches kept for replay");
  flags.Int("kv-events-queue", &f.kv_events_queue,
            "store: events waiting to be sent; more are dropped (counted)");
  flags.Int("kv-events-interval-ms", &f.kv_events_interval_ms,
            "store: how often queued events are sent as one batch");
  flags.Int("kv-events-dp-rank", &f.kv_events_dp_rank,
            "store: data_parallel_rank of every batch (-1: nil)");
}

// Every flag of `kvstrata serve`, bound to `f`.
void BindServeFlags(FlagSet& flags, ServeFlags& f) {
  flags.String("role", &f.role, "all | router | prefill | decode | store");
  flags.String("listen", &f.listen, "gRPC listen address HOST:PORT (port 0: any free port)");
  flags.Int("metrics-port", &f.metrics_port, "HTTP port of /metrics and /healthz (-1: off)");
  flags.String("model-dir", &f.model_dir,
               "model directory; empty: the seeded tiny-v3 model in DATA_DIR/model-tiny-v3");
  flags.String("kv-layout", &f.kv_layout,
               "KV page layout: mla-fp8-656 (default) or mla-bf16-1152; v4-fp8-584 (default) "
               "for a DeepSeek-V4 model");
  flags.String("key-chain", &f.key_chain,
               "what block keys chain over: tokens, or vllm-sha256-cbor (vLLM's block hashes, "
               "so engines run with --prefix-caching-hash-algo sha256_cbor name the same pages)");
  flags.String("engine-hash-seed", &f.engine_hash_seed,
               "with --key-chain=vllm-sha256-cbor: the engines' PYTHONHASHSEED");
  flags.String("data-dir", &f.data_dir, "data directory (nvme tier); default /tmp/kvstrata-UID");
  flags.Int("device-mib", &f.device_mib, "device tier capacity in MiB (0: no device tier)");
  flags.Int("host-mib", &f.host_mib, "host tier capacity in MiB (0: no host tier)");
  flags.Int("nvme-mib", &f.nvme_mib, "nvme tier capacity in MiB (0: no nvme tier)");
  flags.String("tokens-file", &f.tokens_file,
               "YAML map of bearer token -> tenant; empty: built-in tenant \"default\"");
  flags.String("service-token-file", &f.service_token_file,
               "file holding the cluster's node credential (one token line; the same on every "
               "node); required by router/prefill/decode/store with --tokens-file");
  flags.Int("worker-threads", &f.worker_threads, "Generate requests served concurrently");
  flags.Int("compute-threads", &f.compute_threads,
            "threads one request's forward may use (0: one per core; same bytes at any count)");
  flags.String("node-id", &f.node_id,
               "node id in stats, ListNodes and the membership (default: local / the address)");
  flags.String("advertise", &f.advertise,
               "HOST:PORT other nodes reach this one at (default: the bound listen address)");
  flags.Int("replication", &f.replication, "home nodes per page chain in the page pool (R)");
  flags.Int("local-cache-mib", &f.local_cache_mib,
            "prefill/decode: host tier caching pool pages in the worker, MiB (0: off)");
  flags.Int("shutdown-flush-seconds", &f.shutdown_flush_seconds,
            "on SIGTERM, after the 5 s drain: seconds to write RAM-only pages to nvme "
            "(keep 5 + this below the pod's terminationGracePeriodSeconds)");
  flags.String("transport", &f.transport,
               "prefill->decode KV handoff transport: ucx (honours UCX_TLS, UCX_NET_DEVICES)");
  f.membership.Bind(&flags);
  cluster::BindTlsFlags(&flags, &f.tls, "this node's");
  BindKvEventFlags(flags, f);
}

int RunServe(int argc, char** argv) {
  ServeFlags f;
  FlagSet flags("kvstrata serve");
  BindServeFlags(flags, f);
  flags.Bool("check-config", &f.check_config, "validate the config and exit 0 (ok) or 1");
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata serve: %s\n", std::string(s.message()).c_str());
    // The config is parsed before the command line, so look for --check-config directly.
    bool check = f.check_config;
    for (int i = 1; i < argc; ++i) check = check || std::string_view(argv[i]) == "--check-config";
    return check ? 1 : 2;
  }
  const bool all = f.role == "all";
  std::optional<absl::StatusOr<cluster::EmbeddedServerOptions>> o;
  std::optional<absl::StatusOr<cluster::RoleServerOptions>> ro;
  if (all) {
    o = ToOptions(f);
  } else {
    ro = ToRoleOptions(f);
  }
  absl::Status valid = all ? o->status() : ro->status();
  if (valid.ok()) valid = cluster::ValidateTlsFiles(f.tls);
  if (const std::optional<std::string> w = OpenListenerWarning(f); w && valid.ok()) {
    std::fprintf(stderr, "%s\n", w->c_str());
  }
  if (f.check_config) {
    if (!valid.ok()) {
      std::fprintf(stderr, "config invalid: %s\n", std::string(valid.message()).c_str());
      return 1;
    }
    std::printf("config ok: role %s\n", f.role.c_str());
    return 0;
  }
  if (!valid.ok()) {
    std::fprintf(stderr, "kvstrata serve: %s: %s\n", absl::StatusCodeToString(valid.code()).c_str(),
                 std::string(valid.message()).c_str());
    return 2;
  }
  s = all ? Serve(**o, f) : ServeRole(**ro, f);
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata serve: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

KV_REGISTER_COMMAND(serve,
                    "run a node: --role=all (everything in one process) or one role of a cluster",
                    RunServe);

}  // namespace kv::cmd
