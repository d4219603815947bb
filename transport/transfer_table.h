// TransferTable: the bookkeeping every backend shares. It owns the registered-region table,
// the transfer state machine of transport.h and the poisoning contract, so that backends only
// move bytes and report completions.
//
// A backend calls, in order: AddTransfer() on Prepare; Post() when it hands the ops to the
// wire; OpDone() once per op as each reports completion (success or not); Finish() to make
// the transfer terminal (OK -> kDone, error -> kFailed/kCancelled); PeerTornDown() when an
// endpoint is closed. Quarantine bookkeeping follows from those calls:
//   - a transfer that ends kDone frees its regions at once;
//   - a transfer that ends in error with LiftPolicy::kOnQuiescence keeps its regions
//     quarantined until every op has called OpDone();
//   - with LiftPolicy::kOnTeardown they stay quarantined until PeerTornDown(peer).
// A released transfer whose quarantine has not lifted stays in the table, invisible to
// callers (NotFound), until it lifts.
//
// Thread-safe (one internal mutex). Returned values are copies.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "transport/transport.h"

namespace kv::transport {

enum class LiftPolicy { kOnQuiescence, kOnTeardown };

struct LocalRegion {
  RegionId id = 0;
  char* base = nullptr;
  uint64_t length = 0;
  MemoryKind kind = MemoryKind::kHost;
  void* backend = nullptr;  // backend data (e.g. a ucp_mem_h); owned by the backend
};

class TransferTable {
 public:
  explicit TransferTable(Clock* clock) : clock_(clock) {}

  // ---- regions ----
  RegionId AddRegion(void* base, uint64_t length, MemoryKind kind, void* backend);
  // Removes an idle region and returns it (so the backend can free its data). NotFound,
  // or FailedPrecondition naming the state.
  absl::StatusOr<LocalRegion> RemoveRegion(RegionId id);
  absl::StatusOr<LocalRegion> GetRegion(RegionId id) const;
  absl::StatusOr<RegionState> StateOf(RegionId id) const;
  // Marks an externally driven use (e.g. an inbound write landing in a region) so the
  // region cannot be deregistered meanwhile. NotFound for unknown ids.
  absl::Status AcquireInbound(RegionId id);
  void ReleaseInbound(RegionId id, bool quarantine_until_teardown, PeerId peer);
  // Every registered region (for teardown of backend registrations).
  std::vector<LocalRegion> AllRegions() const;
  // Checks that [offset, offset+length) lies inside region `id`; InvalidArgument otherwise.
  absl::StatusOr<LocalRegion> CheckRange(RegionId id, uint64_t offset, uint64_t length) const;

  // ---- transfers ----
  TransferId AddTransfer(const TransferBatch& batch);
  // kPrepared -> kInProgress. Regions become in use. Errors as Transport::Post.
  absl::Status Post(TransferId id, absl::Time deadline);
  absl::StatusOr<TransferBatch> GetBatch(TransferId id) const;
  absl::StatusOr<TransferStatus> Poll(TransferId id) const;
  absl::Status Wait(TransferId id, absl::Time deadline);
  // One op of `id` reported completion. Lifts a pending quiescence quarantine at the last op.
  void OpDone(TransferId id);
  // Makes an in-progress transfer terminal. Returns false if it was already terminal (the
  // first outcome wins). `error` OK -> kDone; Cancelled -> kCancelled; else kFailed.
  bool Finish(TransferId id, const absl::Status& error, LiftPolicy policy);
  absl::Status Release(TransferId id);
  // Fails every in-progress transfer whose deadline passed (DeadlineExceeded, quiescence
  // lift) and returns their ids, so the backend can cancel their ops.
  std::vector<TransferId> ExpireOverdue();
  // Earliest deadline among in-progress transfers (InfiniteFuture if none).
  absl::Time NextDeadline() const;
  // Fails the peer's in-progress transfers with `why` (Unavailable) and lifts every
  // quarantine held for the peer. Returns the ids failed.
  std::vector<TransferId> PeerTornDown(PeerId peer, const absl::Status& why);
  // In-progress transfers to `peer` (for error propagation by the backend).
  std::vector<TransferId> InProgressFor(PeerId peer) const;

  Clock* clock() const { return clock_; }

 private:
  struct RegionEntry {
    LocalRegion region;
    int in_use = 0;
    int quarantined = 0;
  };
  struct TransferEntry {
    TransferBatch batch;
    TransferStatus status;
    absl::Time deadline = absl::InfiniteFuture();
    int ops_outstanding = 0;
    bool quarantine_held = false;
    LiftPolicy policy = LiftPolicy::kOnQuiescence;
    bool released = false;
  };
  void AdjustRegions(const TransferEntry& t, int in_use_delta, int quarantine_delta)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeLift(TransferId id, TransferEntry& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool FinishLocked(TransferId id, TransferEntry& t, const absl::Status& error, LiftPolicy policy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<TransferEntry*> Find(TransferId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  uint64_t next_region_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_transfer_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<RegionId, RegionEntry> regions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TransferId, TransferEntry> transfers_ ABSL_GUARDED_BY(mu_);
  // Inbound quarantines held until a peer's teardown: peer -> regions.
  absl::flat_hash_map<PeerId, std::vector<RegionId>> inbound_quarantine_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv::transport
