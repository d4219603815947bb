#include "transport/fault_transport.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"

namespace kv::transport {

std::string_view FaultName(Fault f) {
  switch (f) {
    case Fault::kNone:
      return "none";
    case Fault::kDrop:
      return "drop";
    case Fault::kDelay:
      return "delay";
    case Fault::kStall:
      return "stall";
    case Fault::kCorrupt:
      return "corrupt";
  }
  return "unknown";
}

namespace {
bool Terminal(TransferState s) {
  return s == TransferState::kDone || s == TransferState::kFailed || s == TransferState::kCancelled;
}
}  // namespace

FaultInjectingTransport::FaultInjectingTransport(Transport* target, FaultConfig config,
                                                 Clock* clock)
    : TransportWrapper(target), config_(config), clock_(clock ? clock : Clock::Real()) {}

FaultInjectingTransport::~FaultInjectingTransport() {
  absl::MutexLock l(&mu_);
  for (auto& [id, x] : xfers_) {
    if (x.bounce_region != 0) orphan_bounces_.emplace_back(x.bounce_region, std::move(x.bounce));
  }
  for (auto& [region, mem] : orphan_bounces_) {
    if (!target()->Deregister(region).ok()) {
      // Still quarantined below us: the poisoning contract forbids freeing it.
      log::Warn("transport_bounce_leaked", "region", region);
      (void)mem.release();
    }
  }
}

double FaultInjectingTransport::Uniform(uint64_t n, uint64_t salt) const {
  uint64_t in[3] = {config_.seed, n, salt};
  return static_cast<double>(Xxh3_64(in, sizeof(in)) >> 11) * 0x1.0p-53;
}

Fault FaultInjectingTransport::DecideFault(uint64_t n) const {
  if (Uniform(n, 1) < config_.drop) return Fault::kDrop;
  if (Uniform(n, 2) < config_.stall) return Fault::kStall;
  if (Uniform(n, 3) < config_.corrupt) return Fault::kCorrupt;
  if (Uniform(n, 4) < config_.delay) return Fault::kDelay;
  return Fault::kNone;
}

FaultStats FaultInjectingTransport::stats() const {
  absl::MutexLock l(&mu_);
  return stats_;
}

Capabilities FaultInjectingTransport::capabilities() const {
  Capabilities c = target()->capabilities();
  c.name = absl::StrCat("fault(", c.name, ")");
  return c;
}

absl::StatusOr<RegisteredRegion> FaultInjectingTransport::Register(void* base, size_t length,
                                                                   MemoryKind kind) {
  ASSIGN_OR_RETURN(RegisteredRegion r, target()->Register(base, length, kind));
  absl::MutexLock l(&mu_);
  region_base_[r.id] = static_cast<char*>(base);
  return r;
}

absl::StatusOr<PeerId> FaultInjectingTransport::Connect(std::string_view address,
                                                        absl::Time deadline) {
  {
    absl::MutexLock l(&mu_);
    uint64_t n = connects_++;
    if (Uniform(n, 5) < config_.fail_connect) {
      stats_.connects_failed++;
      return MarkRetryable(absl::UnavailableError(absl::StrCat(
          "connect to ", std::string(address.substr(0, 64)), " refused (injected fault)")));
    }
  }
  return target()->Connect(address, deadline);
}

absl::StatusOr<TransferId> FaultInjectingTransport::Prepare(const TransferBatch& batch) {
  ASSIGN_OR_RETURN(TransferId inner, target()->Prepare(batch));
  absl::MutexLock l(&mu_);
  TransferId id = next_id_++;
  Xfer& x = xfers_[id];
  x.batch = batch;
  x.inner = inner;
  return id;
}

absl::Status FaultInjectingTransport::Post(TransferId id, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("transfer deadline must be finite (every wait is bounded)");
  }
  absl::MutexLock l(&mu_);
  auto it = xfers_.find(id);
  if (it == xfers_.end()) return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown"));
  Xfer& x = it->second;
  if (x.posted) return absl::FailedPreconditionError(absl::StrCat("transfer ", id, " posted"));
  uint64_t n = posts_++;
  x.fault = DecideFault(n);
  x.deadline = deadline;
  x.posted = true;
  stats_.posted++;
  switch (x.fault) {
    case Fault::kNone:
    case Fault::kDelay:
      if (x.fault == Fault::kDelay) stats_.delayed++;
      return target()->Post(x.inner, deadline);
    case Fault::kDrop:
      stats_.dropped++;
      (void)target()->Release(x.inner);  // prepared, never posted: nothing to quiesce
      x.inner = 0;
      return absl::OkStatus();
    case Fault::kStall: {
      stats_.stalled++;
      (void)target()->Release(x.inner);
      x.inner = 0;
      TransferBatch half = x.batch;
      half.ops.resize(x.batch.ops.size() / 2);
      if (half.ops.empty()) return absl::OkStatus();
      ASSIGN_OR_RETURN(x.inner, target()->Prepare(half));
      return target()->Post(x.inner, deadline);
    }
    case Fault::kCorrupt:
      stats_.corrupted++;
      return PostCorrupt(x, n, deadline);
  }
  return absl::InternalError("unreachable fault kind");
}

absl::Status FaultInjectingTransport::PostCorrupt(Xfer& x, uint64_t n, absl::Time deadline) {
  if (x.batch.kind == OpKind::kRead) return target()->Post(x.inner, deadline);
  // Writes: send one op from a bounce copy with one byte flipped; the source stays intact.
  size_t k = static_cast<size_t>(Uniform(n, 6) * x.batch.ops.size());
  TransferOp& op = x.batch.ops[k];
  auto base = region_base_.find(op.local);
  if (base == region_base_.end()) return target()->Post(x.inner, deadline);
  x.bounce = std::make_unique<char[]>(op.length);
  std::memcpy(x.bounce.get(), base->second + op.local_offset, op.length);
  x.bounce[static_cast<size_t>(Uniform(n, 7) * op.length)] ^= 0x5a;
  ASSIGN_OR_RETURN(RegisteredRegion r,
                   target()->Register(x.bounce.get(), op.length, MemoryKind::kHost));
  x.bounce_region = r.id;
  TransferBatch corrupted = x.batch;
  corrupted.ops[k].local = r.id;
  corrupted.ops[k].local_offset = 0;
  (void)target()->Release(x.inner);
  ASSIGN_OR_RETURN(x.inner, target()->Prepare(corrupted));
  return target()->Post(x.inner, deadline);
}

void FaultInjectingTransport::CorruptLanded(Xfer& x) {
  uint64_t n = x.inner * 0x9e3779b97f4a7c15ull;
  size_t k = static_cast<size_t>(Uniform(n, 6) * x.batch.ops.size());
  const TransferOp& op = x.batch.ops[k];
  auto base = region_base_.find(op.local);
  if (base == region_base_.end()) return;
  base->second[op.local_offset + static_cast<size_t>(Uniform(n, 7) * op.length)] ^= 0x5a;
}

absl::StatusOr<TransferStatus> FaultInjectingTransport::PollLocked(Xfer& x) {
  if (x.has_forced) return x.forced;
  if (!x.posted) return TransferStatus{TransferState::kPrepared, absl::OkStatus()};
  absl::Time now = clock_->Now();
  auto overdue = [&]() {
    x.forced = TransferStatus{
        TransferState::kFailed,
        MarkRetryable(absl::DeadlineExceededError(absl::StrCat(
            "transfer to peer ", x.batch.peer, " missed its deadline (no completion arrived)")))};
    x.has_forced = true;
    return x.forced;
  };
  if (x.fault == Fault::kDrop || x.fault == Fault::kStall) {
    if (now >= x.deadline) return overdue();
    return TransferStatus{TransferState::kInProgress, absl::OkStatus()};
  }
  ASSIGN_OR_RETURN(TransferStatus s, target()->Poll(x.inner));
  if (!Terminal(s.state)) return s;
  if (x.fault == Fault::kDelay) {
    if (x.inner_done_at == absl::InfiniteFuture()) x.inner_done_at = now;
    if (now < x.inner_done_at + config_.delay_by) {
      if (now >= x.deadline) return overdue();
      return TransferStatus{TransferState::kInProgress, absl::OkStatus()};
    }
  }
  if (x.fault == Fault::kCorrupt && x.batch.kind == OpKind::kRead &&
      s.state == TransferState::kDone) {
    CorruptLanded(x);
  }
  x.forced = s;
  x.has_forced = true;
  return s;
}

absl::StatusOr<TransferStatus> FaultInjectingTransport::Poll(TransferId id) {
  absl::MutexLock l(&mu_);
  auto it = xfers_.find(id);
  if (it == xfers_.end()) return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown"));
  return PollLocked(it->second);
}

absl::Status FaultInjectingTransport::Wait(TransferId id, absl::Time deadline) {
  while (true) {
    TransferId inner = 0;
    {
      absl::MutexLock l(&mu_);
      auto it = xfers_.find(id);
      if (it == xfers_.end()) {
        return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown"));
      }
      ASSIGN_OR_RETURN(TransferStatus s, PollLocked(it->second));
      if (s.state == TransferState::kPrepared) {
        return absl::FailedPreconditionError(absl::StrCat("transfer ", id, " never posted"));
      }
      if (Terminal(s.state)) return s.error;
      if (it->second.fault == Fault::kNone || it->second.fault == Fault::kCorrupt) {
        inner = it->second.inner;
      }
    }
    if (clock_->Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("transfer ", id, " still in progress at the wait deadline"));
    }
    if (inner != 0) {
      // Let the wrapped transport block; re-poll above to apply read corruption.
      absl::Status st = target()->Wait(inner, deadline);
      if (absl::IsDeadlineExceeded(st) && clock_->Now() >= deadline) continue;
    } else {
      absl::SleepFor(absl::Milliseconds(1));
    }
  }
}

absl::Status FaultInjectingTransport::Cancel(TransferId id) {
  absl::MutexLock l(&mu_);
  auto it = xfers_.find(id);
  if (it == xfers_.end()) return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown"));
  Xfer& x = it->second;
  if (!x.posted || x.has_forced) return absl::OkStatus();
  if (x.inner != 0) RETURN_IF_ERROR(target()->Cancel(x.inner));
  x.forced = TransferStatus{TransferState::kCancelled,
                            absl::CancelledError(absl::StrCat("transfer ", id, " cancelled"))};
  x.has_forced = true;
  return absl::OkStatus();
}

absl::Status FaultInjectingTransport::Release(TransferId id) {
  absl::MutexLock l(&mu_);
  auto it = xfers_.find(id);
  if (it == xfers_.end()) return absl::NotFoundError(absl::StrCat("transfer ", id, " unknown"));
  Xfer& x = it->second;
  if (x.inner != 0) (void)target()->Release(x.inner);
  if (x.bounce_region != 0) {
    if (target()->Deregister(x.bounce_region).ok()) {
      x.bounce.reset();
    } else {
      orphan_bounces_.emplace_back(x.bounce_region, std::move(x.bounce));
    }
  }
  xfers_.erase(it);
  return absl::OkStatus();
}

}  // namespace kv::transport
