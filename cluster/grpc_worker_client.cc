#include "cluster/grpc_worker_client.h"

#include <utility>

#include <grpcpp/client_context.h>

#include "cluster/grpc_status.h"
#include "cluster/tenants.h"
#include "cluster/worker_convert.h"
#include "core/mutex.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "proto/kvstrata/v1/worker.grpc.pb.h"

namespace kv::cluster {
namespace {

namespace pb = ::kvstrata::v1;

// Sets the call's deadline (`deadline` on `clock`, which gRPC needs as wall time) and the node
// credential acting for the request's tenant.
void PrepareCall(grpc::ClientContext* ctx, const std::string& service_token,
                 const std::string& tenant, Clock* clock, absl::Time deadline) {
  ctx->set_deadline(absl::ToChronoTime(ToWallTime(clock, deadline)));
  AddNodeCredential(ctx, service_token, tenant);
}

class GrpcDecodeCall final : public DecodeCall {
 public:
  explicit GrpcDecodeCall(std::string node_id) : node_id_(std::move(node_id)) {}
  absl::Status Open(pb::Worker::Stub* stub, const decode::DecodeRequest& r, const KeyParams& kp,
                    const std::string& service_token, Clock* clock, absl::Time deadline) {
    PrepareCall(&ctx_, service_token, r.tenant, clock, deadline);
    stream_ = stub->Decode(&ctx_);
    pb::DecodeClientMessage m;
    ToProto(r, kp, m.mutable_start());
    if (!stream_->Write(m)) return Broken();
    return absl::OkStatus();
  }
  absl::StatusOr<transport::HandoffDestination> Ready() override {
    pb::DecodeResponse dr;
    if (!stream_->Read(&dr) || !dr.has_ready()) {
      absl::Status s = Broken();
      return MarkRetryable(absl::UnavailableError(
          StrCat("decode worker ", node_id_,
                 " did not accept the request: ", s.ok() ? "no HandoffReady" : s.ToString())));
    }
    return FromProto(dr.ready(), node_id_);
  }
  absl::Status SendPrefillResult(const decode::PrefillResult& result) override {
    pb::DecodeClientMessage m;
    ToProto(result, m.mutable_prefill_result());
    kv::MutexLock l(&mu_);
    if (!stream_->Write(m)) return Broken();
    return absl::OkStatus();
  }
  void Cancel() override {
    kv::MutexLock l(&mu_);
    if (cancel_sent_) return;
    cancel_sent_ = true;
    pb::DecodeClientMessage c;
    c.mutable_cancel()->set_reason("cancelled by the client");
    stream_->Write(c);
  }
  absl::StatusOr<DecodeEvent> Next() override {
    while (true) {
      if (!pending_.empty()) {
        DecodeEvent e{.token = pending_.front()};
        pending_.erase(pending_.begin());
        return e;
      }
      pb::DecodeResponse dr;
      if (!stream_->Read(&dr)) break;
      if (dr.has_tokens()) {
        for (uint32_t id : dr.tokens().token_ids()) pending_.push_back(static_cast<int32_t>(id));
      } else if (dr.has_done()) {
        done_ = FromProto(dr.done());
      }
    }
    {
      kv::MutexLock l(&mu_);
      stream_->WritesDone();
    }
    absl::Status s = FromGrpcStatus(stream_->Finish());
    if (!s.ok() || !done_) {
      return MarkRetryable(absl::UnavailableError(
          StrCat("decode worker ", node_id_,
                 " failed: ", s.ok() ? "stream ended without DecodeDone" : s.ToString())));
    }
    return DecodeEvent{.done = *std::move(done_)};
  }

 private:
  absl::Status Broken() { return FromGrpcStatus(stream_->Finish()); }

  const std::string node_id_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::DecodeClientMessage, pb::DecodeResponse>> stream_;
  kv::Mutex mu_;  // writes: the request thread and Cancel() from a callback
  bool cancel_sent_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int32_t> pending_;
  std::optional<decode::DecodeOutcome> done_;
};

class GrpcWorkerClient final : public WorkerClient {
 public:
  GrpcWorkerClient(std::shared_ptr<grpc::Channel> channel, KeyParams kp, std::string node_id,
                   std::string service_token, Clock* clock)
      : stub_(pb::Worker::NewStub(std::move(channel))),
        kp_(std::move(kp)),
        node_id_(std::move(node_id)),
        service_token_(std::move(service_token)),
        clock_(clock != nullptr ? clock : Clock::Real()) {}

  absl::StatusOr<std::unique_ptr<DecodeCall>> StartDecode(const decode::DecodeRequest& request,
                                                          absl::Time deadline) override {
    auto call = std::make_unique<GrpcDecodeCall>(node_id_);
    if (absl::Status s = call->Open(stub_.get(), request, kp_, service_token_, clock_, deadline);
        !s.ok())
      return s;
    return std::unique_ptr<DecodeCall>(std::move(call));
  }

  absl::StatusOr<prefill::PrefillDone> Prefill(const prefill::PrefillRequest& request,
                                               absl::Time deadline) override {
    pb::PrefillRequest p;
    ToProto(request, kp_, &p);
    grpc::ClientContext ctx;
    PrepareCall(&ctx, service_token_, request.tenant, clock_, deadline);
    auto stream = stub_->Prefill(&ctx, p);
    pb::PrefillResponse pr;
    std::optional<pb::PrefillDone> done;
    while (stream->Read(&pr)) {
      if (pr.has_done()) done = pr.done();
    }
    absl::Status s = FromGrpcStatus(stream->Finish());
    if (!s.ok()) return s;
    if (!done) return absl::InternalError("prefill stream ended without PrefillDone");
    return FromProto(*done);
  }

 private:
  std::unique_ptr<pb::Worker::Stub> stub_;
  const KeyParams kp_;
  const std::string node_id_;
  const std::string service_token_;
  Clock* const clock_;
};

}  // namespace

std::unique_ptr<WorkerClient> NewGrpcWorkerClient(std::shared_ptr<grpc::Channel> channel,
                                                  KeyParams key_params, std::string node_id,
                                                  std::string service_token, Clock* clock) {
  return std::make_unique<GrpcWorkerClient>(std::move(channel), std::move(key_params),
                                            std::move(node_id), std::move(service_token), clock);
}

}  // namespace kv::cluster
