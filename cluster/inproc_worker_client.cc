#include "cluster/inproc_worker_client.h"

#include <deque>
#include <utility>

#include "core/mutex.h"
#include "core/status_macros.h"

namespace kv::cluster {
namespace {

// Runs one DecodeSession: Ready/SendPrefillResult on the caller's thread, the turn loop on a
// pool thread that queues tokens for Next().
class InProcDecodeCall final : public DecodeCall {
 public:
  InProcDecodeCall(std::unique_ptr<decode::DecodeSession> session, ThreadPool* threads)
      : session_(std::move(session)), threads_(threads) {}
  ~InProcDecodeCall() override {
    session_->Cancel();
    StartRun();  // so that a call abandoned before its prefill result still ends
    kv::MutexLock l(&mu_);
    auto over = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; };
    mu_.Await(kv::Condition(&over));
  }

  absl::StatusOr<transport::HandoffDestination> Ready() override { return session_->Start(); }
  absl::Status SendPrefillResult(const decode::PrefillResult& result) override {
    RETURN_IF_ERROR(session_->OnPrefillResult(result));
    StartRun();
    return absl::OkStatus();
  }
  void Cancel() override { session_->Cancel(); }
  absl::StatusOr<DecodeEvent> Next() override {
    StartRun();
    kv::MutexLock l(&mu_);
    auto ready = [this]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !tokens_.empty() || finished_; };
    mu_.Await(kv::Condition(&ready));
    if (!tokens_.empty()) {
      DecodeEvent e{.token = tokens_.front()};
      tokens_.pop_front();
      return e;
    }
    if (!outcome_.ok()) return outcome_.status();
    if (delivered_) return absl::FailedPreconditionError("decode call: already done");
    delivered_ = true;
    decode::DecodeOutcome done = *outcome_;
    done.tokens.clear();
    return DecodeEvent{.done = std::move(done)};
  }

 private:
  void StartRun() {
    {
      kv::MutexLock l(&mu_);
      if (started_) return;
      started_ = true;
    }
    auto body = [this] {
      absl::StatusOr<decode::DecodeOutcome> out = session_->Run([this](int32_t tok) {
        kv::MutexLock l(&mu_);
        tokens_.push_back(tok);
        return true;
      });
      kv::MutexLock l(&mu_);
      outcome_ = std::move(out);
      finished_ = true;
    };
    if (!threads_->Schedule(body)) body();  // shutting down: run it here
  }

  std::unique_ptr<decode::DecodeSession> session_;
  ThreadPool* const threads_;
  kv::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool delivered_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<int32_t> tokens_ ABSL_GUARDED_BY(mu_);
  absl::StatusOr<decode::DecodeOutcome> outcome_ ABSL_GUARDED_BY(mu_) =
      absl::InternalError("not run");
};

class InProcWorkerClient final : public WorkerClient {
 public:
  InProcWorkerClient(prefill::PrefillWorker* prefill, const decode::DecodeContext* decode,
                     ThreadPool* threads)
      : prefill_(prefill), decode_(decode), threads_(threads) {}

  absl::StatusOr<std::unique_ptr<DecodeCall>> StartDecode(const decode::DecodeRequest& request,
                                                          absl::Time deadline) override {
    ASSIGN_OR_RETURN(std::unique_ptr<decode::DecodeSession> s,
                     decode::DecodeSession::Create(decode_, request, deadline));
    return std::unique_ptr<DecodeCall>(new InProcDecodeCall(std::move(s), threads_));
  }
  absl::StatusOr<prefill::PrefillDone> Prefill(const prefill::PrefillRequest& request,
                                               absl::Time deadline) override {
    if (prefill_ == nullptr) return absl::UnavailableError("this node has no prefill worker");
    return prefill_->Run(request, deadline, nullptr);
  }

 private:
  prefill::PrefillWorker* const prefill_;
  const decode::DecodeContext* const decode_;
  ThreadPool* const threads_;
};

}  // namespace

std::unique_ptr<WorkerClient> NewInProcWorkerClient(prefill::PrefillWorker* prefill,
                                                    const decode::DecodeContext* decode,
                                                    ThreadPool* decode_threads) {
  return std::make_unique<InProcWorkerClient>(prefill, decode, decode_threads);
}

}  // namespace kv::cluster
