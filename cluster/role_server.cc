#include "cluster/role_server.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "cluster/cluster_service.h"
#include "cluster/grpc_server.h"
#include "cluster/grpc_status.h"
#include "cluster/page_pool.h"
#include "cluster/page_store_client.h"
#include "cluster/page_store_service.h"
#include "cluster/proto_convert.h"
#include "cluster/router.h"
#include "cluster/tenants.h"
#include "cluster/worker_convert.h"
#include "cluster/worker_service.h"
#include "core/http_server.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/caching_page_pool.h"
#include "kvstore/page_format.h"
#include "kvstore/slab_tier.h"
#include "kvstore/staging_area.h"
#include "model/config.h"
#include "model/serving_model.h"
#include "model/weights.h"
#include "transport/ucx_transport.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

// Members in destruction order: the gRPC server first (no more calls), then the services,
// then what they use.
struct RoleServer::State {
  std::unique_ptr<Membership> membership;
  std::unique_ptr<TieredStore> local_cache;  // a worker's local tier (under `pool`)
  std::unique_ptr<PagePool> remote_pool;     // the pool `pool` caches, when it does
  std::unique_ptr<PagePool> pool;
  std::unique_ptr<KvEventPublisher> kv_events;  // outlives `store`, whose listener it is
  std::unique_ptr<TieredStore> store;
  std::unique_ptr<StagingArea> staging;   // registered with `transport`: outlives it
  std::unique_ptr<LeaseBeacons> beacons;  // likewise
  model::LoadedModel model;
  transport::RegionGraveyard graveyard;  // outlives the transport (transport/handoff.h)
  std::unique_ptr<transport::Transport> transport;
  std::unique_ptr<RouterBackend> router;
  std::unique_ptr<ClusterService> cluster;
  std::unique_ptr<WorkerService> worker;
  std::unique_ptr<PageStoreService> page_store;
  std::unique_ptr<GrpcServer> grpc;
  std::unique_ptr<MetricsHttpServer> metrics;
  bool shut_down = false;
  absl::Duration shutdown_flush = kShutdownFlushBudget;
};

absl::Status ValidateRoleServerOptions(const RoleServerOptions& o) {
  if (o.role != "router" && o.role != "prefill" && o.role != "decode" && o.role != "store") {
    return absl::InvalidArgumentError(
        StrCat("role must be router, prefill, decode or store here; got '", o.role, "'"));
  }
  RETURN_IF_ERROR(ListenHost(o.listen).status());
  if (!o.advertise.empty()) RETURN_IF_ERROR(ListenHost(o.advertise).status());
  if (o.metrics_port < -1 || o.metrics_port > 65535) {
    return absl::InvalidArgumentError(
        StrCat("metrics-port must be -1 (off), 0 (any) or a port, got ", o.metrics_port));
  }
  if (o.worker_threads < 1 || o.worker_threads > 256) {
    return absl::InvalidArgumentError("worker-threads must be in 1..256");
  }
  if (o.local_cache_mib < 0 || o.local_cache_mib > (1 << 20)) {
    return absl::InvalidArgumentError(
        StrCat("local-cache-mib must be in 0..1048576, got ", o.local_cache_mib));
  }
  if (o.replication < 1 || o.replication > 16) {
    return absl::InvalidArgumentError(StrCat("replication must be in 1..16, got ", o.replication));
  }
  if (o.membership.etcd.empty() && o.membership.members.empty() && o.role != "store") {
    return absl::InvalidArgumentError(
        StrCat("--role=", o.role, " needs its peers: set --etcd=HOST:PORT or --members=LIST"));
  }
  if (!o.membership.etcd.empty() && !o.membership.members.empty()) {
    return absl::InvalidArgumentError("set either --etcd or --members, not both");
  }
  if (!o.membership.members.empty()) {
    RETURN_IF_ERROR(StaticMembership::ParseSpec(o.membership.members).status());
  }
  if (!o.membership.etcd.empty()) {
    RETURN_IF_ERROR(ListenHost(o.membership.etcd).status());
    // An etcd lease TTL is whole seconds; 0 or less fails at the first grant.
    if (o.membership.member_ttl < absl::Seconds(1) || o.membership.member_ttl > absl::Hours(1)) {
      return absl::InvalidArgumentError(
          StrCat("member-ttl must be 1s..1h (an etcd lease TTL), got ",
                 absl::FormatDuration(o.membership.member_ttl)));
    }
  }
  if (o.role == "store") RETURN_IF_ERROR(ValidateNodeOptions(o.node));
  if (o.kv_events.has_value()) {
    if (o.role != "store") {
      return absl::InvalidArgumentError(
          StrCat("KV events (--kv-events-endpoint) are published by --role=store nodes; got ",
                 "--role=", o.role));
    }
    RETURN_IF_ERROR(ValidateKvEventsOptions(*o.kv_events));
  }
  if (o.node.data_dir.empty()) return absl::InvalidArgumentError("data-dir is required");
  if (!o.node.kv_layout.empty()) {
    absl::StatusOr<LayoutInfo> layout = LookupLayout(std::string_view(o.node.kv_layout));
    if (!layout.ok() || !layout->supported) {
      return absl::InvalidArgumentError(StrCat("unknown KV layout '", o.node.kv_layout, "'"));
    }
  }
  if (!o.tokens_file.empty() && o.service_token_file.empty()) {
    return absl::InvalidArgumentError(
        StrCat("--role=", o.role,
               " with a tokens file needs a service token (--service-token-file): "
               "the nodes of a cluster call each other with it for tenants"));
  }
  RETURN_IF_ERROR(LoadTenantAuth(o.tokens_file, o.service_token_file).status());
  return absl::OkStatus();
}

RoleServer::RoleServer() : s_(std::make_unique<State>()) {}
RoleServer::~RoleServer() { Shutdown(); }

const std::string& RoleServer::address() const { return s_->grpc->address(); }
int RoleServer::metrics_port() const { return s_->metrics ? s_->metrics->port() : -1; }

void RoleServer::Shutdown() {
  if (s_->shut_down) return;
  s_->shut_down = true;
  if (s_->membership) s_->membership->Close();  // leave the ring first
  if (s_->grpc) s_->grpc->Shutdown();
  if (s_->worker) s_->worker->WaitIdle();  // queued publishes
  if (s_->store) {
    FlushStoreForShutdown(*s_->store, s_->shutdown_flush);
    StopTierHealthReport(*s_->store);
  }
  s_->metrics.reset();
  s_->grpc.reset();
  s_->cluster.reset();
  s_->worker.reset();
  s_->page_store.reset();
  s_->router.reset();
  // The pool reads with the transport (registered buffers, RMA clients): it goes first.
  s_->pool.reset();
  s_->remote_pool.reset();
  s_->local_cache.reset();
  s_->transport.reset();
  s_->store.reset();
  s_->staging.reset();
  s_->beacons.reset();
  s_->model = model::LoadedModel();  // the serving view and the runtime
  s_->membership.reset();
  log::Info("serve_stopped");
}

namespace {

// Registers `bytes` with the store's transport for RMA.
absl::StatusOr<RegisteredMemory> RegisterMemory(transport::Transport& t, pb::Tier tier,
                                                uint8_t* base, uint64_t length) {
  ASSIGN_OR_RETURN(transport::RegisteredRegion r,
                   t.Register(base, length, transport::MemoryKind::kHost));
  return RegisteredMemory{.tier = tier, .base = base, .length = length, .packed_key = r.packed_key};
}

// The store's RMA data path (issue #15): a UCX transport, the host-addressable tier slabs and
// a staging area registered with it once. Without UCX the store serves gRPC only.
absl::Status StartStoreRma(const RoleServerOptions& o, RoleServer::State& s,
                           PageStoreServiceOptions& po, pb::NodeInfo& self) {
  ASSIGN_OR_RETURN(s.transport, transport::UcxTransport::Create({.clock = o.node.clock}));
  for (TierKind k : {TierKind::kDevice, TierKind::kHost}) {
    auto* slab = dynamic_cast<SlabTier*>(s.store->tier(k));
    if (slab == nullptr || slab->region()->host_base() == nullptr) continue;
    ASSIGN_OR_RETURN(RegisteredMemory m,
                     RegisterMemory(*s.transport, ToProto(k), slab->region()->host_base(),
                                    slab->capacity_bytes()));
    po.tier_memory.push_back(std::move(m));
  }
  const uint64_t staging = std::max<uint64_t>(o.node.host_bytes / 2, 16ull << 20);
  ASSIGN_OR_RETURN(s.staging, StagingArea::Create({.bytes = staging,
                                                   .clock = o.node.clock,
                                                   .max_page_bytes = po.max_page_bytes}));
  ASSIGN_OR_RETURN(po.staging_memory, RegisterMemory(*s.transport, pb::TIER_HOST, s.staging->base(),
                                                     s.staging->capacity()));
  po.staging = s.staging.get();
  // A beacon per lent lease: as many as the tenants' lease limits allow on a busy node.
  ASSIGN_OR_RETURN(s.beacons, LeaseBeacons::Create(64 * 1024));
  const std::span<uint8_t> words = s.beacons->memory();
  ASSIGN_OR_RETURN(po.beacon_memory,
                   RegisterMemory(*s.transport, pb::TIER_HOST, words.data(), words.size()));
  po.beacons = s.beacons.get();
  const std::string address = s.transport->address();
  po.transport_info = [address](pb::GetTransportInfoResponse* r) {
    pb::TransportEndpoint* e = r->add_endpoints();
    e->set_kind(pb::TRANSPORT_KIND_UCX);
    e->set_address(address);
    return absl::OkStatus();
  };
  pb::TransportEndpoint* e = self.add_transports();
  e->set_kind(pb::TRANSPORT_KIND_UCX);
  e->set_address(address);
  return absl::OkStatus();
}

// The store role: a PageStore service over this node's tiers.
absl::Status StartStore(const RoleServerOptions& o, const TenantAuth& auth, RoleServer::State& s,
                        pb::NodeInfo& self, GrpcServerOptions& go) {
  self.add_roles(pb::ROLE_STORE);
  NodeOptions n = o.node;
  if (o.kv_events.has_value()) {
    KvEventsOptions eo = *o.kv_events;
    if (eo.metrics == nullptr) eo.metrics = o.node.metrics;
    ASSIGN_OR_RETURN(s.kv_events, KvEventPublisher::Start(std::move(eo)));
    // The store starts with nothing in memory: subscribers drop what they knew of this node;
    // opening the store then stores every recovered nvme page again.
    s.kv_events->Publish(KvEvent{.kind = KvEventKind::kAllBlocksCleared});
    n.residency_listener = s.kv_events->Listener();
  }
  ASSIGN_OR_RETURN(s.store, OpenStore(n));
  PageStoreServiceOptions po;
  po.node_id = o.node_id;
  po.clock = o.node.clock;
  po.metrics = o.node.metrics;
  if (absl::Status rma = StartStoreRma(o, s, po, self); !rma.ok()) {
    log::Warn("store_rma_unavailable", "error", rma.ToString(), "fallback", "grpc");
    po = PageStoreServiceOptions{
        .node_id = o.node_id, .clock = o.node.clock, .metrics = o.node.metrics};
    s.transport.reset();
    s.staging.reset();
    s.beacons.reset();
  }
  s.page_store = std::make_unique<PageStoreService>(s.store.get(), auth, po);
  go.services = {s.page_store.get()};
  go.health_service_names = {pb::PageStore::service_full_name()};
  go.stream_window_bytes = 16 << 20;  // WritePages: a page per window, not 64 KiB
  StoreStats ss = s.store->Stats();
  for (int t = 0; t < kNumTiers; ++t) {
    if (!ss.tiers[t].present) continue;
    pb::TierCapacity* c = self.add_tiers();
    c->set_tier(ToProto(static_cast<TierKind>(t)));
    c->set_capacity_bytes(ss.tiers[t].capacity_bytes);
  }
  return absl::OkStatus();
}

// GetStats(all_nodes): a member's own NodeStats from its PageStore (store nodes) or Worker
// service's GetNodeStats, with the node credential acting for the caller's tenant, over a
// channel kept per address.
auto NodeStatsOverGrpc(std::string service_token) {
  struct Channels {
    kv::Mutex mu;
    std::map<std::string, std::shared_ptr<grpc::Channel>> by_address ABSL_GUARDED_BY(mu);
  };
  auto channels = std::make_shared<Channels>();
  return [channels, service_token](const pb::NodeInfo& node, const std::string& tenant,
                                   absl::Time deadline) -> absl::StatusOr<pb::NodeStats> {
    std::shared_ptr<grpc::Channel> channel;
    {
      kv::MutexLock l(&channels->mu);
      std::shared_ptr<grpc::Channel>& c = channels->by_address[node.grpc_address()];
      if (c == nullptr) c = PageStoreChannel(node.grpc_address());
      channel = c;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    AddNodeCredential(&ctx, service_token, tenant);
    pb::NodeStats stats;
    grpc::Status s;
    if (HasRole(node, pb::ROLE_STORE)) {
      s = pb::PageStore::NewStub(channel)->GetNodeStats(&ctx, pb::GetNodeStatsRequest(), &stats);
    } else if (HasRole(node, pb::ROLE_PREFILL) || HasRole(node, pb::ROLE_DECODE)) {
      s = pb::Worker::NewStub(channel)->GetNodeStats(&ctx, pb::GetNodeStatsRequest(), &stats);
    } else {
      return absl::UnimplementedError("a node without a store or worker role serves no stats");
    }
    RETURN_IF_ERROR(FromGrpcStatus(s));
    return stats;
  };
}

// The router role: the Cluster service over a RouterBackend that drives the members' workers
// over gRPC.
absl::Status StartRouter(const RoleServerOptions& o, const TenantAuth& auth,
                         const model::ModelConfig& config, const KeyParams& kp,
                         RoleServer::State& s, pb::NodeInfo& self, GrpcServerOptions& go) {
  self.add_roles(pb::ROLE_ROUTER);
  RouterOptions ro;
  ro.key_params = kp;
  ro.vocab_size = config.vocab_size;
  ro.max_context = o.node.max_context > 0
                       ? o.node.max_context
                       : std::min<int64_t>(config.max_position_embeddings, 32768);
  ro.prefill_handoff = true;  // MLA and V4 prompts both go through prefill workers
  ro.pages_have_resume = config.IsV4();
  ro.clock = o.node.clock;
  ro.metrics = o.node.metrics;
  ro.node_stats = NodeStatsOverGrpc(auth.service_token());
  ASSIGN_OR_RETURN(ro.page_bytes, model::PublishedPageBytes(config, kp.layout_id));
  s.router = std::make_unique<RouterBackend>(
      s.membership.get(), s.pool.get(), GrpcWorkerClients(kp, auth.service_token(), o.node.clock),
      ro);
  ClusterServiceOptions co;
  co.node_id = o.node_id;
  co.worker_threads = std::max(o.worker_threads, 4);  // requests wait on workers, not CPU
  co.metrics = o.node.metrics;
  co.clock = o.node.clock;
  s.cluster = std::make_unique<ClusterService>(s.router.get(), auth, co);
  go.services = {s.cluster.get()};
  go.health_service_names = {pb::Cluster::service_full_name()};
  return absl::OkStatus();
}

// A worker's local tier (issue #15 item 5): a host-only TieredStore of o.local_cache_mib in
// front of the remote pool; the caller's tenant is what the Worker service authenticated.
absl::Status StartLocalCache(const RoleServerOptions& o, const std::string& layout_name,
                             RoleServer::State& s) {
  if (o.local_cache_mib == 0) return absl::OkStatus();
  NodeOptions lo = o.node;
  lo.device_bytes = 0;
  lo.nvme_bytes = 0;
  lo.host_bytes = static_cast<uint64_t>(o.local_cache_mib) << 20;
  ASSIGN_OR_RETURN(s.local_cache, OpenStore(lo));
  const LayoutInfo info = *LookupLayout(std::string_view(layout_name));
  CachingPagePoolOptions co;
  co.layout = std::string(info.name);
  co.page_tokens = info.default_page_tokens;
  co.node_id = StrCat(o.node_id, "/local");
  co.metrics = o.node.metrics;
  s.remote_pool = std::move(s.pool);
  s.pool = std::make_unique<CachingPagePool>(s.remote_pool.get(), s.local_cache.get(), co);
  return absl::OkStatus();
}

// The prefill or decode role: the Worker service over this node's model and a UCX transport.
absl::Status StartWorker(const RoleServerOptions& o, const TenantAuth& auth,
                         const std::string& model_dir, const std::string& layout_name,
                         RoleServer::State& s, pb::NodeInfo& self, GrpcServerOptions& go) {
  self.add_roles(o.role == "prefill" ? pb::ROLE_PREFILL : pb::ROLE_DECODE);
  ASSIGN_OR_RETURN(s.model, model::LoadServingModel(model_dir, layout_name, o.node.max_context,
                                                    o.node.compute_threads));
  RETURN_IF_ERROR(s.model.serving->SetKeyChain(o.node.key_chain, o.node.engine_hash_seed));
  pb::TransportEndpoint* e = self.add_transports();
  e->set_kind(pb::TRANSPORT_KIND_UCX);
  e->set_address(s.transport->address());
  RETURN_IF_ERROR(StartLocalCache(o, layout_name, s));
  WorkerServiceOptions wo;
  wo.node_id = o.node_id;
  wo.prefill = o.role == "prefill";
  wo.decode = o.role == "decode";
  wo.worker_threads = o.worker_threads;
  wo.handoff_timeout = o.handoff_timeout;
  wo.metrics = o.node.metrics;
  wo.clock = o.node.clock;
  s.worker = std::make_unique<WorkerService>(s.model.serving.get(), s.transport.get(), &s.graveyard,
                                             s.pool.get(), auth, wo);
  go.services = {s.worker.get()};
  go.health_service_names = {pb::Worker::service_full_name()};
  return absl::OkStatus();
}

// The model roles: the key space this node serves (registered in the membership), then the
// router or the worker.
absl::Status StartModelRole(const RoleServerOptions& o, const TenantAuth& auth,
                            const std::string& model_dir, RoleServer::State& s, pb::NodeInfo& self,
                            GrpcServerOptions& go) {
  ASSIGN_OR_RETURN(model::ModelConfig config,
                   model::LoadModelConfig(StrCat(model_dir, "/config.json")));
  RETURN_IF_ERROR(model::ValidateForAnyRuntime(config));
  ASSIGN_OR_RETURN(std::string layout_name, model::ServingLayoutName(config, o.node.kv_layout));
  ASSIGN_OR_RETURN(Digest256 fingerprint, model::ModelFingerprint(model_dir));
  const LayoutInfo info = *LookupLayout(std::string_view(layout_name));
  KeyParams kp;
  kp.model_fingerprint = fingerprint;
  kp.layout_id = std::string(info.name);
  kp.page_tokens = info.default_page_tokens;
  kp.chain = o.node.key_chain;
  kp.engine_hash_seed = o.node.engine_hash_seed;
  *self.add_key_spaces() = ToKeySpace(kp);
  if (o.role == "router") return StartRouter(o, auth, config, kp, s, self, go);
  return StartWorker(o, auth, model_dir, layout_name, s, self, go);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RoleServer>> RoleServer::Start(RoleServerOptions o) {
  RETURN_IF_ERROR(ValidateRoleServerOptions(o));
  ASSIGN_OR_RETURN(TenantAuth auth, LoadTenantAuth(o.tokens_file, o.service_token_file));
  if (o.node_id.empty()) o.node_id = !o.advertise.empty() ? o.advertise : o.listen;
  std::unique_ptr<RoleServer> server(new RoleServer());
  State& s = *server->s_;
  s.shutdown_flush = o.shutdown_flush;
  Clock* clock = o.node.clock != nullptr ? o.node.clock : Clock::Real();
  ASSIGN_OR_RETURN(s.membership, OpenMembership(o.membership, clock));
  // Workers' transport: the prefill->decode handoff, and RMA reads of the pool's pages.
  if (o.role == "prefill" || o.role == "decode") {
    ASSIGN_OR_RETURN(s.transport, transport::UcxTransport::Create({.clock = o.node.clock}));
  }
  ASSIGN_OR_RETURN(s.pool,
                   NewGrpcPagePool(s.membership.get(), {.replication = o.replication,
                                                        .service_token = auth.service_token(),
                                                        .clock = clock,
                                                        .transport = s.transport.get()}));

  pb::NodeInfo self;
  GrpcServerOptions go;
  go.address = o.listen;
  go.shutdown_grace = o.shutdown_grace;
  ASSIGN_OR_RETURN(std::string model_dir, EnsureModelDir(o.node));
  if (o.role == "store") {
    RETURN_IF_ERROR(StartStore(o, auth, s, self, go));
  } else {
    RETURN_IF_ERROR(StartModelRole(o, auth, model_dir, s, self, go));
  }
  ASSIGN_OR_RETURN(s.grpc, GrpcServer::Start(go));
  std::string advertised = o.advertise;
  if (advertised.empty()) {
    advertised = s.grpc->address();
    if (advertised.rfind("0.0.0.0:", 0) == 0) advertised = "127.0.0.1" + advertised.substr(7);
  }
  server->advertised_ = advertised;
  if (s.cluster) s.cluster->SetAdvertisedAddress(advertised);
  MetricsHttpServer::DegradedFn degraded;
  if (s.store) {
    ReportTierHealth(*s.store, *s.grpc);
    degraded = [store = s.store.get()] { return TierHealthDetail(*store); };
  }
  if (o.metrics_port >= 0) {
    ASSIGN_OR_RETURN(std::string host, ListenHost(o.listen));
    MetricsRegistry* reg = o.node.metrics ? o.node.metrics : &MetricsRegistry::Default();
    ASSIGN_OR_RETURN(s.metrics,
                     MetricsHttpServer::Start(reg, host, static_cast<int>(o.metrics_port), {},
                                              std::move(degraded)));
  }
  self.set_node_id(o.node_id);
  self.set_grpc_address(advertised);
  self.set_version("0.1.0");
  RETURN_IF_ERROR(Annotate(s.membership->Register(self), "registering in the membership"));
  log::Info("serve_started", "role", o.role, "node_id", o.node_id, "address", advertised,
            "membership", s.membership->source(), "metrics_port", server->metrics_port());
  return server;
}

}  // namespace kv::cluster
