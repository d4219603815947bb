// WorkerClient: how the router (cluster/router.h) reaches one prefill/decode worker, so the
// same routing code serves the distributed roles (GrpcWorkerClient: the kvstrata.v1.Worker
// service of another process) and the embedded `--role=all` node (InProcWorkerClient: the
// prefill::PrefillWorker and decode::DecodeSession libraries of this process, moving KV over
// the in-process transport). Tests substitute fakes.
//
// A DecodeCall is one Decode conversation, a state machine driven by the router:
//   Ready() -> SendPrefillResult() (or Cancel()) -> Next()... until an event with `done`.
// Cancel() is allowed at any time and from any thread; the worker then finishes early
// (FinishReason::kCancelled) and Next() still ends with a done event.
//
// Requests carry the authenticated tenant: in-process workers use it; the gRPC client sends it
// as `x-kvstrata-tenant` with the node credential (cluster/tenants.h), and the remote worker acts
// for it.
//
// Thread-safety: WorkerClient methods are safe to call concurrently; a DecodeCall is used by
// one thread, except Cancel().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "decode/decode_session.h"
#include "prefill/prefill_worker.h"
#include "transport/handoff.h"

namespace kv::cluster {

struct DecodeEvent {
  std::optional<int32_t> token;               // the next generated token
  std::optional<decode::DecodeOutcome> done;  // the end of the turn (its `tokens` empty)
};

class DecodeCall {
 public:
  virtual ~DecodeCall() = default;
  // The worker's handoff destination (valid() false: it computes the prompt itself).
  // Unavailable when the worker did not accept the request.
  virtual absl::StatusOr<transport::HandoffDestination> Ready() = 0;
  virtual absl::Status SendPrefillResult(const decode::PrefillResult& result) = 0;
  virtual void Cancel() = 0;
  // The next token or the final outcome. Unavailable when the worker failed mid-turn.
  virtual absl::StatusOr<DecodeEvent> Next() = 0;
};

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;
  virtual absl::StatusOr<std::unique_ptr<DecodeCall>> StartDecode(
      const decode::DecodeRequest& request, absl::Time deadline) = 0;
  // Runs one prefill to its end. Unavailable / DeadlineExceeded when the worker or its handoff
  // failed: the router then lets the decode worker compute the prompt.
  virtual absl::StatusOr<prefill::PrefillDone> Prefill(const prefill::PrefillRequest& request,
                                                       absl::Time deadline) = 0;
};

}  // namespace kv::cluster
