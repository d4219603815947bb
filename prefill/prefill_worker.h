// PrefillWorker: the prefill side of a request, as a library (no gRPC): load the cached prefix
// a router pinned, compute the rest of the prompt but its last token, and write that state
// into the decode session's destination (transport/handoff.h) while it computes: the cached
// prefix's records as soon as they are loaded, then each layer's fresh records as soon as the
// forward has written them (HandoffWriter below), so the transfer overlaps compute, then what
// completes the handoff (V4: the resume state at the prompt's end). Where each piece goes is
// the model's (model::ServingSequence::LayerHandoffPieces / FinalHandoffPieces: MLA KvCache
// blocks; V4 per-layer entries and indexer keys, then the resume slot). The decode session
// computes the prompt's last token itself and samples every token of the request.
//
// The worker answers with one XXH3-64 per destination slot, taken from its own copy of what
// it sent, so the receiver accepts the KV only if every byte arrived intact. Afterwards the
// prompt's new full pages are published to the page pool on the worker's write-back thread,
// off the critical path.
//
// Every wait on another process (connecting, one transfer, one pool read) is bounded by
// `handoff_timeout` from its start and by the request's deadline; time comes from the
// injected clock. Transport regions of a failed transfer stay quarantined
// (transport/transport.h); their memory goes to the graveyard.
//
// Thread-safety: Run() may be called concurrently (each call has its own sequence). The
// context (model, pool, transport, clock, graveyard) is not owned and must outlive the worker.
// The destructor waits for queued write-backs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/thread_pool.h"
#include "kvstore/block_key.h"
#include "kvstore/page_pool.h"
#include "model/serving_model.h"
#include "transport/handoff.h"
#include "transport/transport.h"

namespace kv::prefill {

struct PrefillWorkerOptions {
  int64_t prefill_chunk = 256;
  int64_t resume_checkpoint_pages = 4;
  absl::Duration handoff_timeout = absl::Seconds(30);
};

struct PrefillContext {
  const model::ServingModel* model = nullptr;
  PagePool* pool = nullptr;                         // null: no cache loads, no publishing
  transport::Transport* transport = nullptr;        // required
  transport::RegionGraveyard* graveyard = nullptr;  // required
  Clock* clock = nullptr;                           // null: Clock::Real()
  PrefillWorkerOptions options;
  // Called on the write-back thread once a request's queued pages went to the pool: how many
  // it stored (or already held) and how many it did not take (a refused page ends the
  // chain). Null: not reported. This, not PrefillDone::queued_pages, is what was published.
  std::function<void(int64_t stored, int64_t not_stored)> on_write_back;
};

// One request, as the prefill side needs it. The tenant is authenticated by the caller.
struct PrefillRequest {
  std::string request_id;
  std::vector<int32_t> prompt;  // the whole prompt (its last token is not computed here)
  std::string tenant;
  int64_t shared_prefix_tokens = 0;
  std::optional<CachedRun> cached;  // pinned run of the chain's first blocks
  transport::HandoffDestination target;
  std::string session_id;
  absl::Duration retention = absl::ZeroDuration();
  bool skip_publish = false;
  // When set, returns true once the caller gave up; checked with the deadline after every
  // layer of every chunk, so the compute stops within one layer's work (Cancelled).
  std::function<bool()> cancelled;
};

struct PrefillProgress {
  int layers_done = 0;
  int layers_total = 0;
  uint64_t bytes_sent = 0;
};

struct PrefillDone {
  int64_t kv_tokens = 0;  // tokens written into the destination (prompt - 1)
  std::vector<uint64_t> slot_xxh3;
  int64_t cached_tokens = 0;
  int64_t recomputed_tokens = 0;
  uint64_t bytes_loaded = 0;  // page bytes read from the pool and used
  uint64_t bytes_sent = 0;    // bytes written to the decode worker
  std::string transport;
  std::string pool_transport;  // the pool read's data path (PagePool::Read); "" for none
  absl::Duration load_time, compute_time;
  // Handoff time not overlapped with compute: opening the destination, sending the loaded
  // prefix and the final pieces (V4: the resume state), and waiting for the last transfers.
  absl::Duration handoff_time;
  // Pages queued for the asynchronous write-back when the answer was sent: not yet stored
  // (PrefillContext::on_write_back reports what the pool took).
  int64_t queued_pages = 0;
};

class HandoffWriter;

class PrefillWorker {
 public:
  // FailedPrecondition for a context without model, transport or graveyard.
  static absl::StatusOr<std::unique_ptr<PrefillWorker>> Create(const PrefillContext* ctx);
  ~PrefillWorker();

  // Runs one prefill into `req.target`, reporting progress once per layer of the last
  // chunk. InvalidArgument for a bad request or a target that does not fit the prompt (its
  // HandoffLayout); FailedPrecondition for a model without a handoff; Unavailable /
  // DeadlineExceeded when the destination cannot be reached or written in time.
  absl::StatusOr<PrefillDone> Run(const PrefillRequest& req, absl::Time deadline,
                                  const std::function<void(const PrefillProgress&)>& progress);
  // Blocks until queued write-backs are published.
  void WaitIdle();

 private:
  explicit PrefillWorker(const PrefillContext* ctx);
  Clock* clock() const { return ctx_->clock != nullptr ? ctx_->clock : Clock::Real(); }
  // Run's steps: the request's checks; the cached run loaded into `seq` (returns the blocks
  // loaded); every layer's state handed through `writer`, computing the rest of the prompt;
  // the write-back of the new full pages.
  absl::Status Validate(const PrefillRequest& req) const;
  int64_t LoadCached(const PrefillRequest& req, std::span<const BlockKey> keys, int64_t handed,
                     absl::Time deadline, model::ServingSequence* seq, PrefillDone& done);
  absl::Status HandOff(const PrefillRequest& req, int64_t start_pos, int64_t handed,
                       absl::Time deadline, model::ServingSequence* seq, HandoffWriter& writer,
                       const std::function<void(const PrefillProgress&)>& progress,
                       PrefillDone& done);
  void ScheduleWriteBack(const PrefillRequest& req, const KeyParams& params,
                         std::vector<BlockKey> keys, std::vector<std::string> ns, int64_t loaded,
                         int64_t handed, const model::ServingSequence& seq, PrefillDone& done);

  const PrefillContext* const ctx_;
  std::unique_ptr<ThreadPool> write_back_;
};

}  // namespace kv::prefill
