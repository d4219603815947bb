#include "cluster/embedded_cluster.h"

#include <utility>

#include "cluster/inproc_worker_client.h"
#include "cluster/worker_convert.h"
#include "core/status_macros.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

absl::StatusOr<std::unique_ptr<EmbeddedCluster>> EmbeddedCluster::Open(
    EmbeddedClusterOptions options) {
  const NodeOptions& n = options.node;
  RETURN_IF_ERROR(ValidateNodeOptions(n));
  if (options.decode_threads < 1 || options.prefill_chunk < 1 ||
      options.resume_checkpoint_pages < 0) {
    return absl::InvalidArgumentError(
        "embedded cluster: decode_threads and prefill_chunk must be >= 1, "
        "resume_checkpoint_pages >= 0");
  }
  std::unique_ptr<EmbeddedCluster> c(new EmbeddedCluster());
  c->options_ = options;
  ASSIGN_OR_RETURN(c->model_dir_, EnsureModelDir(n));
  ASSIGN_OR_RETURN(c->model_, model::LoadServingModel(c->model_dir_, n.kv_layout, n.max_context,
                                                      n.compute_threads));
  RETURN_IF_ERROR(c->model_.serving->SetKeyChain(n.key_chain, n.engine_hash_seed));
  ASSIGN_OR_RETURN(c->store_, OpenStore(n));
  const model::ServingModel& m = *c->model_.serving;
  c->pool_ = std::make_unique<LocalPagePool>(
      c->store_.get(), PageStoreOptions{.node_id = options.node_id, .clock = n.clock});
  c->fabric_ = std::make_unique<transport::InProcFabric>();
  c->prefill_transport_ = std::make_unique<transport::InProcTransport>(c->fabric_.get(), n.clock);
  c->decode_transport_ = std::make_unique<transport::InProcTransport>(c->fabric_.get(), n.clock);
  c->prefill_ctx_ = prefill::PrefillContext{
      .model = &m,
      .pool = c->pool_.get(),
      .transport = c->prefill_transport_.get(),
      .graveyard = &c->graveyard_,
      .clock = n.clock,
      .options = {.prefill_chunk = options.prefill_chunk,
                  .resume_checkpoint_pages = options.resume_checkpoint_pages}};
  c->decode_ctx_ = decode::DecodeContext{
      .model = &m,
      .pool = c->pool_.get(),
      .transport = c->decode_transport_.get(),
      .graveyard = &c->graveyard_,
      .clock = n.clock,
      .options = {.node_id = options.node_id,
                  .prefill_chunk = options.prefill_chunk,
                  .resume_checkpoint_pages = options.resume_checkpoint_pages}};
  ASSIGN_OR_RETURN(c->prefill_, prefill::PrefillWorker::Create(&c->prefill_ctx_));
  c->decode_threads_ = std::make_unique<ThreadPool>(options.decode_threads);
  c->workers_ = NewInProcWorkerClient(c->prefill_.get(), &c->decode_ctx_, c->decode_threads_.get());

  const KeyParams kp = m.key_params();
  pb::NodeInfo self;
  self.set_node_id(options.node_id);
  self.set_grpc_address(options.address);
  for (pb::Role r : {pb::ROLE_ROUTER, pb::ROLE_PREFILL, pb::ROLE_DECODE, pb::ROLE_STORE}) {
    self.add_roles(r);
  }
  self.add_transports()->set_kind(pb::TRANSPORT_KIND_INPROC);
  *self.add_key_spaces() = ToKeySpace(kp);
  ASSIGN_OR_RETURN(c->membership_,
                   StaticMembership::Create({self}, n.clock != nullptr ? n.clock : Clock::Real()));
  RouterOptions ro{.key_params = kp,
                   .page_bytes = m.page_bytes(),
                   .vocab_size = m.config().vocab_size,
                   .max_context = m.max_context(),
                   .prefill_handoff = m.handoff_layout(m.page_tokens()).slots > 0,
                   .pages_have_resume = m.pages_have_resume(),
                   .lease = options.lease,
                   .max_request_time = options.max_request_time,
                   .default_retention = options.default_retention,
                   .max_retention = options.max_retention,
                   .cost = options.cost,
                   .local_store = c->store_.get(),
                   .local_node_id = options.node_id,
                   .clock = n.clock,
                   .metrics = n.metrics};
  std::shared_ptr<WorkerClient> workers = c->workers_;
  c->router_ = std::make_unique<RouterBackend>(
      c->membership_.get(), c->pool_.get(), [workers](const pb::NodeInfo&) { return workers; },
      std::move(ro));
  return c;
}

EmbeddedCluster::~EmbeddedCluster() {
  router_.reset();
  membership_.reset();
  workers_.reset();
  decode_threads_.reset();  // turns in flight end first
  prefill_.reset();         // drains write-back into the store
  prefill_transport_.reset();
  decode_transport_.reset();
  fabric_.reset();
  pool_.reset();
  store_.reset();
  model_.serving.reset();  // the serving view first, then the runtime it points into
}

absl::StatusOr<GenerateResult> EmbeddedCluster::Generate(const GenerateRequest& req) {
  Route route;
  return router_->Generate(req, &route);
}

void EmbeddedCluster::WaitIdle() {
  prefill_->WaitIdle();
  store_->WaitIdle();  // the store's own write-backs pin their pages while they copy them
}

}  // namespace kv::cluster
