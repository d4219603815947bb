#include "transport/transfer_table.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "core/status_macros.h"

namespace kv::transport {

std::string_view TransferStateName(TransferState s) {
  switch (s) {
    case TransferState::kPrepared:
      return "prepared";
    case TransferState::kInProgress:
      return "in_progress";
    case TransferState::kDone:
      return "done";
    case TransferState::kFailed:
      return "failed";
    case TransferState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

std::string_view RegionStateName(RegionState s) {
  switch (s) {
    case RegionState::kIdle:
      return "idle";
    case RegionState::kInUse:
      return "in_use";
    case RegionState::kQuarantined:
      return "quarantined";
  }
  return "unknown";
}

namespace {
bool IsTerminal(TransferState s) {
  return s == TransferState::kDone || s == TransferState::kFailed || s == TransferState::kCancelled;
}
RegionState StateOfEntry(int in_use, int quarantined) {
  if (quarantined > 0) return RegionState::kQuarantined;
  if (in_use > 0) return RegionState::kInUse;
  return RegionState::kIdle;
}
}  // namespace

RegionId TransferTable::AddRegion(void* base, uint64_t length, MemoryKind kind, void* backend) {
  absl::MutexLock l(&mu_);
  RegionId id = next_region_++;
  regions_[id] = RegionEntry{LocalRegion{id, static_cast<char*>(base), length, kind, backend}};
  return id;
}

absl::StatusOr<LocalRegion> TransferTable::RemoveRegion(RegionId id) {
  absl::MutexLock l(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return absl::NotFoundError(absl::StrCat("region ", id, " unknown"));
  RegionState s = StateOfEntry(it->second.in_use, it->second.quarantined);
  if (s != RegionState::kIdle) {
    return absl::FailedPreconditionError(absl::StrCat(
        "region ", id, " is ", std::string(RegionStateName(s)),
        "; it cannot be deregistered until its transfers are proven quiescent or the peer is "
        "torn down (poisoning contract)"));
  }
  LocalRegion r = it->second.region;
  regions_.erase(it);
  return r;
}

absl::StatusOr<LocalRegion> TransferTable::GetRegion(RegionId id) const {
  absl::MutexLock l(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return absl::NotFoundError(absl::StrCat("region ", id, " unknown"));
  return it->second.region;
}

absl::StatusOr<RegionState> TransferTable::StateOf(RegionId id) const {
  absl::MutexLock l(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return absl::NotFoundError(absl::StrCat("region ", id, " unknown"));
  return StateOfEntry(it->second.in_use, it->second.quarantined);
}

absl::Status TransferTable::AcquireInbound(RegionId id) {
  absl::MutexLock l(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return absl::NotFoundError(absl::StrCat("region ", id, " unknown"));
  it->second.in_use++;
  return absl::OkStatus();
}

void TransferTable::ReleaseInbound(RegionId id, bool quarantine_until_teardown, PeerId peer) {
  absl::MutexLock l(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return;
  it->second.in_use--;
  if (quarantine_until_teardown) {
    it->second.quarantined++;
    inbound_quarantine_[peer].push_back(id);
  }
  changed_.SignalAll();
}

std::vector<LocalRegion> TransferTable::AllRegions() const {
  absl::MutexLock l(&mu_);
  std::vector<LocalRegion> out;
  for (const auto& [id, r] : regions_) out.push_back(r.region);
  return out;
}

absl::StatusOr<LocalRegion> TransferTable::CheckRange(RegionId id, uint64_t offset,
                                                      uint64_t length) const {
  ASSIGN_OR_RETURN(LocalRegion r, GetRegion(id));
  if (length == 0 || offset > r.length || length > r.length - offset) {
    return absl::InvalidArgumentError(absl::StrCat("range [", offset, ", +", length,
                                                   ") is outside region ", id, " of ", r.length,
                                                   " bytes (or empty)"));
  }
  return r;
}

TransferId TransferTable::AddTransfer(const TransferBatch& batch) {
  absl::MutexLock l(&mu_);
  TransferId id = next_transfer_++;
  TransferEntry& t = transfers_[id];
  t.batch = batch;
  return id;
}

absl::StatusOr<TransferTable::TransferEntry*> TransferTable::Find(TransferId id) {
  auto it = transfers_.find(id);
  if (it == transfers_.end() || it->second.released) {
    return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown or released"));
  }
  return &it->second;
}

void TransferTable::AdjustRegions(const TransferEntry& t, int in_use_delta, int quarantine_delta) {
  for (const TransferOp& op : t.batch.ops) {
    auto it = regions_.find(op.local);
    if (it == regions_.end()) continue;
    it->second.in_use += in_use_delta;
    it->second.quarantined += quarantine_delta;
  }
}

absl::Status TransferTable::Post(TransferId id, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("transfer deadline must be finite (every wait is bounded)");
  }
  absl::MutexLock l(&mu_);
  ASSIGN_OR_RETURN(TransferEntry * t, Find(id));
  if (t->status.state != TransferState::kPrepared) {
    return absl::FailedPreconditionError(
        absl::StrCat("transfer ", id, " is ", std::string(TransferStateName(t->status.state)),
                     ", not prepared"));
  }
  for (const TransferOp& op : t->batch.ops) {
    if (!regions_.contains(op.local)) {
      return absl::NotFoundError(absl::StrCat("region ", op.local, " was deregistered"));
    }
  }
  t->status.state = TransferState::kInProgress;
  t->deadline = deadline;
  t->ops_outstanding = static_cast<int>(t->batch.ops.size());
  AdjustRegions(*t, +1, 0);
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<TransferBatch> TransferTable::GetBatch(TransferId id) const {
  absl::MutexLock l(&mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return absl::NotFoundError(absl::StrCat("transfer ", id));
  return it->second.batch;
}

absl::StatusOr<TransferStatus> TransferTable::Poll(TransferId id) const {
  absl::MutexLock l(&mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end() || it->second.released) {
    return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown or released"));
  }
  return it->second.status;
}

absl::Status TransferTable::Wait(TransferId id, absl::Time deadline) {
  absl::MutexLock l(&mu_);
  while (true) {
    ASSIGN_OR_RETURN(TransferEntry * t, Find(id));
    if (t->status.state == TransferState::kPrepared) {
      return absl::FailedPreconditionError(absl::StrCat("transfer ", id, " was never posted"));
    }
    if (IsTerminal(t->status.state)) return t->status.error;
    absl::Time now = clock_->Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("transfer ", id, " still in progress at the wait deadline"));
    }
    // Sliced so that a FakeClock advanced by another thread is noticed.
    changed_.WaitWithTimeout(&mu_, std::min(deadline - now, absl::Milliseconds(20)));
  }
}

void TransferTable::MaybeLift(TransferId id, TransferEntry& t) {
  if (t.quarantine_held && t.policy == LiftPolicy::kOnQuiescence && t.ops_outstanding <= 0) {
    AdjustRegions(t, 0, -1);
    t.quarantine_held = false;
    log::Debug("transport_quarantine_lifted", "transfer", id, "why", "quiescent");
  }
  if (t.released && !t.quarantine_held && IsTerminal(t.status.state)) transfers_.erase(id);
}

void TransferTable::OpDone(TransferId id) {
  absl::MutexLock l(&mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return;
  it->second.ops_outstanding--;
  MaybeLift(id, it->second);
  changed_.SignalAll();
}

bool TransferTable::FinishLocked(TransferId id, TransferEntry& t, const absl::Status& error,
                                 LiftPolicy policy) {
  if (t.status.state != TransferState::kInProgress) return false;
  AdjustRegions(t, -1, 0);
  if (error.ok()) {
    t.status.state = TransferState::kDone;
  } else {
    t.status.state = absl::IsCancelled(error) ? TransferState::kCancelled : TransferState::kFailed;
    t.status.error = error;
    t.policy = policy;
    t.quarantine_held = true;
    AdjustRegions(t, 0, +1);
    log::Warn("transport_transfer_failed", "transfer", id, "peer", t.batch.peer, "error",
              std::string(error.message()), "lift",
              policy == LiftPolicy::kOnQuiescence ? "on_quiescence" : "on_teardown");
  }
  changed_.SignalAll();
  return true;
}

bool TransferTable::Finish(TransferId id, const absl::Status& error, LiftPolicy policy) {
  absl::MutexLock l(&mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return false;
  bool changed = FinishLocked(id, it->second, error, policy);
  MaybeLift(id, it->second);
  return changed;
}

absl::Status TransferTable::Release(TransferId id) {
  absl::MutexLock l(&mu_);
  ASSIGN_OR_RETURN(TransferEntry * t, Find(id));
  if (t->status.state == TransferState::kInProgress) {
    FinishLocked(id, *t, absl::CancelledError("transfer released while in progress"),
                 LiftPolicy::kOnQuiescence);
  }
  if (t->status.state == TransferState::kPrepared) t->status.state = TransferState::kCancelled;
  t->released = true;
  MaybeLift(id, *t);
  return absl::OkStatus();
}

std::vector<TransferId> TransferTable::ExpireOverdue() {
  absl::MutexLock l(&mu_);
  absl::Time now = clock_->Now();
  std::vector<TransferId> expired;
  for (auto& [id, t] : transfers_) {
    if (t.status.state == TransferState::kInProgress && now >= t.deadline) expired.push_back(id);
  }
  for (TransferId id : expired) {
    TransferEntry& t = transfers_[id];
    FinishLocked(id, t,
                 MarkRetryable(absl::DeadlineExceededError(absl::StrCat(
                     "transfer ", id, " to peer ", t.batch.peer, " missed its deadline"))),
                 LiftPolicy::kOnQuiescence);
  }
  return expired;
}

absl::Time TransferTable::NextDeadline() const {
  absl::MutexLock l(&mu_);
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [id, t] : transfers_) {
    if (t.status.state == TransferState::kInProgress) next = std::min(next, t.deadline);
  }
  return next;
}

std::vector<TransferId> TransferTable::PeerTornDown(PeerId peer, const absl::Status& why) {
  absl::MutexLock l(&mu_);
  std::vector<TransferId> failed;
  std::vector<TransferId> to_lift;
  for (auto& [id, t] : transfers_) {
    if (t.batch.peer != peer) continue;
    if (FinishLocked(id, t, why, LiftPolicy::kOnTeardown)) failed.push_back(id);
    if (t.quarantine_held) to_lift.push_back(id);
  }
  for (TransferId id : to_lift) {
    TransferEntry& t = transfers_[id];
    AdjustRegions(t, 0, -1);
    t.quarantine_held = false;
    MaybeLift(id, t);
  }
  auto q = inbound_quarantine_.find(peer);
  if (q != inbound_quarantine_.end()) {
    for (RegionId r : q->second) {
      auto it = regions_.find(r);
      if (it != regions_.end()) it->second.quarantined--;
    }
    inbound_quarantine_.erase(q);
  }
  changed_.SignalAll();
  return failed;
}

std::vector<TransferId> TransferTable::InProgressFor(PeerId peer) const {
  absl::MutexLock l(&mu_);
  std::vector<TransferId> ids;
  for (const auto& [id, t] : transfers_) {
    if (t.batch.peer == peer && t.status.state == TransferState::kInProgress) ids.push_back(id);
  }
  return ids;
}

}  // namespace kv::transport
