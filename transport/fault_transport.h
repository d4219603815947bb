// FaultInjectingTransport: a TransportWrapper that breaks transfers the way real fabrics do,
// deterministically from a seed, so that every failure path of a caller can be tested.
//
// Faults (each decided per posted transfer, or per Connect attempt, from hash(seed, n)):
//   - drop:    the batch is never sent and its completion never arrives (a lost notification,
//              TRT-LLM#17665). The caller sees DeadlineExceeded at the transfer's deadline.
//   - delay:   the batch runs, but its completion is reported `delay_by` later. The caller sees
//              success, or DeadlineExceeded if the delay crosses the deadline.
//   - stall:   only the first half of the ops run, then the transfer hangs. The caller sees
//              DeadlineExceeded; the receiver holds partial data (its checksums fail).
//   - corrupt: one byte of one op is flipped in flight (through a bounce buffer for writes, in
//              the landed data for reads). The transport cannot know: the caller sees success
//              and only end-to-end checksums catch it; that is what the tests prove.
//   - fail_connect: Connect() returns Unavailable (retryable).
// The decision for the n-th Post() is the same in every run with the same seed and config,
// whatever the timing. Only one fault applies per transfer (drop, stall, corrupt, delay are
// tried in that order).
//
// Thread-safe. The wrapped transport is not owned and must outlive the wrapper. Bounce
// regions are owned by the wrapper and freed on Release() or destruction.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "core/clock.h"
#include "transport/transport.h"

namespace kv::transport {

struct FaultConfig {
  uint64_t seed = 1;
  double drop = 0;
  double delay = 0;
  absl::Duration delay_by = absl::Milliseconds(50);
  double stall = 0;
  double corrupt = 0;
  double fail_connect = 0;
};

enum class Fault : uint8_t { kNone, kDrop, kDelay, kStall, kCorrupt };
std::string_view FaultName(Fault f);

struct FaultStats {
  uint64_t posted = 0, dropped = 0, delayed = 0, stalled = 0, corrupted = 0;
  uint64_t connects_failed = 0;
};

class FaultInjectingTransport : public TransportWrapper {
 public:
  FaultInjectingTransport(Transport* target, FaultConfig config, Clock* clock = nullptr);
  ~FaultInjectingTransport() override;

  // The fault the n-th Post() (0-based) gets under this config. Pure.
  Fault DecideFault(uint64_t n) const;
  FaultStats stats() const;

  Capabilities capabilities() const override;
  absl::StatusOr<RegisteredRegion> Register(void* base, size_t length, MemoryKind kind) override;
  absl::StatusOr<PeerId> Connect(std::string_view address, absl::Time deadline) override;
  absl::StatusOr<TransferId> Prepare(const TransferBatch& batch) override;
  absl::Status Post(TransferId id, absl::Time deadline) override;
  absl::StatusOr<TransferStatus> Poll(TransferId id) override;
  absl::Status Wait(TransferId id, absl::Time deadline) override;
  absl::Status Cancel(TransferId id) override;
  absl::Status Release(TransferId id) override;

 private:
  struct Xfer {
    TransferBatch batch;
    TransferId inner = 0;  // 0 when nothing was posted below (drop)
    Fault fault = Fault::kNone;
    bool posted = false;
    absl::Time deadline;
    absl::Time inner_done_at = absl::InfiniteFuture();
    TransferStatus forced;  // terminal state decided by the wrapper (drop/stall/cancel)
    bool has_forced = false;
    std::unique_ptr<char[]> bounce;
    RegionId bounce_region = 0;
  };
  double Uniform(uint64_t n, uint64_t salt) const;
  absl::StatusOr<TransferStatus> PollLocked(Xfer& x) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PostCorrupt(Xfer& x, uint64_t n, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CorruptLanded(Xfer& x) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const FaultConfig config_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  uint64_t posts_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t connects_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  FaultStats stats_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TransferId, Xfer> xfers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<RegionId, char*> region_base_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<RegionId, std::unique_ptr<char[]>>> orphan_bounces_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv::transport
