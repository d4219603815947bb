#include "cluster/embedded_server.h"

#include <algorithm>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {

absl::Status ValidateEmbeddedServerOptions(const EmbeddedServerOptions& o) {
  RETURN_IF_ERROR(ValidateNodeOptions(o.node));
  RETURN_IF_ERROR(ListenHost(o.listen).status());
  if (o.metrics_port < -1 || o.metrics_port > 65535) {
    return absl::InvalidArgumentError(
        StrCat("metrics-port must be -1 (off), 0 (any) or a port, got ", o.metrics_port));
  }
  if (o.worker_threads < 1 || o.worker_threads > 256) {
    return absl::InvalidArgumentError("worker-threads must be in 1..256");
  }
  RETURN_IF_ERROR(LoadTenantAuth(o.tokens_file, o.service_token_file).status());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(EmbeddedServerOptions o) {
  RETURN_IF_ERROR(ValidateEmbeddedServerOptions(o));
  ASSIGN_OR_RETURN(TenantAuth auth, LoadTenantAuth(o.tokens_file, o.service_token_file));
  std::unique_ptr<EmbeddedServer> s(new EmbeddedServer());
  s->requires_token_ = auth.requires_token();
  s->shutdown_flush_ = o.shutdown_flush;
  ClusterServiceOptions so;
  so.node_id = o.node_id.empty() ? "local" : o.node_id;
  so.worker_threads = o.worker_threads;
  so.max_request_time = o.max_request_time;
  so.metrics = o.node.metrics;
  EmbeddedClusterOptions co = o.cluster;
  co.node = o.node;
  co.node_id = so.node_id;
  co.max_request_time = o.max_request_time;
  co.decode_threads = std::max(co.decode_threads, o.worker_threads);
  ASSIGN_OR_RETURN(s->cluster_, EmbeddedCluster::Open(std::move(co)));
  s->page_store_ = std::make_unique<PageStoreService>(
      &s->cluster_->store(), auth,
      PageStoreServiceOptions{
          .node_id = so.node_id, .clock = o.node.clock, .metrics = o.node.metrics});
  s->service_ = std::make_unique<ClusterService>(&s->cluster_->router(), std::move(auth), so);
  GrpcServerOptions go;
  go.address = o.listen;
  go.services = {s->service_.get(), s->page_store_.get()};
  go.health_service_names = {kvstrata::v1::Cluster::service_full_name(),
                             kvstrata::v1::PageStore::service_full_name()};
  go.stream_window_bytes = 16 << 20;  // WritePages: a page per window, not 64 KiB
  go.shutdown_grace = o.shutdown_grace;
  ASSIGN_OR_RETURN(s->grpc_, GrpcServer::Start(go));
  s->service_->SetAdvertisedAddress(s->grpc_->address());
  ReportTierHealth(s->cluster_->store(), *s->grpc_);
  if (o.metrics_port >= 0) {
    ASSIGN_OR_RETURN(std::string host, ListenHost(o.listen));
    MetricsRegistry* reg = o.node.metrics ? o.node.metrics : &MetricsRegistry::Default();
    TieredStore* store = &s->cluster_->store();
    ASSIGN_OR_RETURN(s->metrics_,
                     MetricsHttpServer::Start(reg, host, static_cast<int>(o.metrics_port), {},
                                              [store] { return TierHealthDetail(*store); }));
  }
  log::Info("serve_started", "role", "all", "address", s->grpc_->address(), "metrics_port",
            s->metrics_port(), "model", s->cluster_->model_dir(), "layout",
            s->cluster_->model().layout().name, "data_dir", o.node.data_dir, "tenants",
            s->requires_token_ ? "tokens file" : "built-in tenant default");
  return s;
}

void EmbeddedServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (grpc_) grpc_->Shutdown();  // bounded: grace, then in-flight calls are cancelled
  service_.reset();              // drains the Generate workers
  page_store_.reset();           // its leases end before the store goes
  if (metrics_) metrics_->Stop();
  if (cluster_) {
    cluster_->WaitIdle();
    FlushStoreForShutdown(cluster_->store(), shutdown_flush_);
    StopTierHealthReport(cluster_->store());
  }
  log::Info("serve_stopped", "role", "all");
}

EmbeddedServer::~EmbeddedServer() {
  Shutdown();
  cluster_.reset();
}

}  // namespace kv::cluster
