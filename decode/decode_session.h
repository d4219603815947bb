// DecodeSession: the decode side of one request, as a library (no gRPC): it offers a handoff
// destination, imports the KV a prefill worker writes into it (or, when that fails, computes
// the prompt itself from the pinned cached run), and runs the one turn loop every serving
// mode shares: sample, stop, append, publish (DESIGN.md "One request, end to end").
//
// States and transitions (one session per request; the owner drives it from one thread,
// except Cancel):
//
//   kNew --Start()--> kHandoffReady --OnPrefillResult()--> kPrefilled --Run()--> kDone
//     |                  |                                     ^
//     |                  +--Cancel()----> kCancelled --Run()---+  (finish kCancelled, no tokens)
//     +--Start() error --> kFailed (Run() returns the error)
//
//   Start()            registers a destination for the prompt's first n - 1 tokens (the
//                      model's HandoffLayout) with the transport, poisoned with 0xFF so that a
//                      byte nobody wrote never passes for KV; none when the model has no
//                      handoff, there is no transport, or the prompt is one token.
//   OnPrefillResult()  the prefill worker's report, forwarded by the router. The KV is
//                      imported only when kv_tokens == n - 1 and every slot's XXH3-64 matches
//                      what the worker wrote ("verified"); otherwise ("rejected" / none) the
//                      session computes the prompt itself in Run(). Never wrong bytes.
//   Cancel()           thread-safe, any state: Run() stops before its next step and finishes
//                      with kCancelled (tokens so far are kept).
//   Run()              computes what the sequence lacks (the last prompt token after a
//                      handoff; the whole prompt, from the cached run, otherwise), samples the
//                      first token from the last prompt position's logits, then decodes until
//                      max_tokens, a stop token, EOS, cancellation or the deadline; streams each
//                      token through `on_token` (returning false cancels); at the end of the
//                      turn publishes the conversation's full pages the pool does not hold
//                      (after a verified V4 handoff, only those past the prompt's full pages,
//                      which the prefill worker publishes: the handoff carries the resume
//                      state of the prompt's end, not of the page ends inside it).
//
// The session owns its sampler: every token of the request is drawn here, so no other process
// draws from its random stream. The handoff destination's memory is released when the session
// is destroyed; a region the transport still holds quarantined is buried in the context's
// graveyard instead (transport/handoff.h).
//
// Time comes from the context's clock: the request's deadline, the step deadline of each wait
// on another process (handoff_timeout), and the reported durations.
//
// Thread-safety: not thread-safe, except Cancel(). The context (model, pool, transport, clock,
// graveyard) is not owned and must outlive the session.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "kvstore/block_key.h"
#include "kvstore/page_pool.h"
#include "model/sampling.h"
#include "model/serving_model.h"
#include "transport/handoff.h"
#include "transport/transport.h"

namespace kv::decode {

enum class FinishReason { kLength, kEos, kStopToken, kCancelled };
std::string_view FinishReasonName(FinishReason r);

struct DecodeOptions {
  std::string node_id = "decode";
  int64_t prefill_chunk = 256;
  // V4 pages: a resume section every Nth page of a chain (kvstore/resume_policy.h).
  int64_t resume_checkpoint_pages = 4;
  // Bounds each wait on another process (one page-pool read), from when it starts.
  absl::Duration handoff_timeout = absl::Seconds(30);
};

// What a session works with; shared by the sessions of a worker, not owned.
struct DecodeContext {
  const model::ServingModel* model = nullptr;
  PagePool* pool = nullptr;                         // null: no cache loads, no publishing
  transport::Transport* transport = nullptr;        // null: no handoff destination
  transport::RegionGraveyard* graveyard = nullptr;  // required with a transport
  Clock* clock = nullptr;                           // null: Clock::Real()
  DecodeOptions options;
};

// One request, as the decode side needs it. The tenant is authenticated by the caller.
struct DecodeRequest {
  std::string request_id;
  std::vector<int32_t> prompt;  // non-empty, ids in the vocabulary
  std::string tenant;           // non-empty
  int64_t shared_prefix_tokens = 0;
  model::SamplingParams sampling;
  int64_t max_tokens = 0;  // > 0
  std::vector<int32_t> stop_tokens;
  bool ignore_eos = false;
  std::string session_id;
  absl::Duration retention = absl::ZeroDuration();  // hint for published pages; zero: none
  bool skip_publish = false;                        // a cache-bypass request
  // The pinned cached run (blocks from 0) to load when the session computes the prompt.
  std::optional<CachedRun> cached;
  // When set, returns true once the caller gave up: like Cancel(), checked after every layer
  // of the prompt's compute and after every token.
  std::function<bool()> cancelled;
};

// The prefill worker's report, forwarded by the router.
struct PrefillResult {
  int64_t kv_tokens = 0;            // tokens written into the destination; 0: no handoff
  std::vector<uint64_t> slot_xxh3;  // per destination slot, as written
  std::string prefill_node_id;
};

enum class HandoffVerdict { kNone, kVerified, kRejected };

struct DecodeOutcome {
  FinishReason finish = FinishReason::kLength;
  std::vector<int32_t> tokens;
  HandoffVerdict handoff = HandoffVerdict::kNone;
  // When the session computed the prompt itself (no verified handoff):
  int64_t cached_tokens = 0;  // loaded from the cached run
  int64_t recomputed_tokens = 0;
  uint64_t bytes_loaded = 0;   // page bytes of the loaded blocks
  uint64_t bytes_read = 0;     // all page bytes read from the pool (also unusable ones)
  std::string pool_transport;  // the pool read's data path (PagePool::Read); "" for none
  absl::Duration load_time, compute_time;
  absl::Duration decode_time;  // from the first token to the last
  int64_t published_pages = 0;
};

class DecodeSession {
 public:
  // InvalidArgument / OutOfRange for a bad request (named), FailedPrecondition for a bad
  // context.
  static absl::StatusOr<std::unique_ptr<DecodeSession>> Create(const DecodeContext* ctx,
                                                               DecodeRequest request,
                                                               absl::Time deadline);
  ~DecodeSession();
  DecodeSession(const DecodeSession&) = delete;
  DecodeSession& operator=(const DecodeSession&) = delete;

  // kNew -> kHandoffReady. The destination (valid() false when none is offered).
  absl::StatusOr<transport::HandoffDestination> Start();
  // kHandoffReady -> kPrefilled. Errors only for a call in the wrong state; a bad report is
  // a rejected handoff, not an error.
  absl::Status OnPrefillResult(const PrefillResult& result);
  void Cancel();
  // Cancel() was called or the request's `cancelled` says the caller gave up.
  bool Cancelled() const;
  // kPrefilled or kCancelled -> kDone. The model's errors; DeadlineExceeded is not an error
  // but a kCancelled finish.
  absl::StatusOr<DecodeOutcome> Run(const std::function<bool(int32_t)>& on_token);

  const DecodeRequest& request() const { return req_; }

 private:
  enum class State { kNew, kHandoffReady, kPrefilled, kCancelled, kDone };
  DecodeSession(const DecodeContext* ctx, DecodeRequest request, absl::Time deadline);

  Clock* clock() const { return ctx_->clock != nullptr ? ctx_->clock : Clock::Real(); }
  // Releases the destination registration (burying quarantined memory).
  void ReleaseDestination();
  // Local prefill: loads the pinned cached run into seq_ (verified, up to the last page a
  // sequence can continue from), then computes the rest. Returns the last prompt logits.
  absl::StatusOr<std::vector<float>> ComputePrompt(DecodeOutcome* out);
  // Loads up to `usable` blocks of the cached run into seq_; returns blocks loaded.
  int64_t LoadCached(int64_t usable, DecodeOutcome* out);
  // End of turn: publishes the conversation's full pages the pool does not hold yet.
  absl::StatusOr<int64_t> PublishTurn(const std::vector<int32_t>& out_tokens);

  const DecodeContext* const ctx_;
  const DecodeRequest req_;
  const absl::Time deadline_;
  KeyParams params_;
  State state_ = State::kNew;
  std::atomic<bool> cancelled_{false};
  std::unique_ptr<model::ServingSequence> seq_;
  HandoffVerdict verdict_ = HandoffVerdict::kNone;
  // The handoff destination: memory, its registration, and its layout.
  std::shared_ptr<std::vector<uint8_t>> buffer_;
  std::optional<transport::RegisteredRegion> region_;
  model::HandoffLayout layout_;
};

}  // namespace kv::decode
