// Transport: moving bytes between processes (prefill -> decode KV handoff, page-store reads).
//
// A Transport is one endpoint of a fabric (a UCX worker, an NCCL rank, an in-process fake). It
// registers local memory, connects to peers from their address blobs, and runs batches of
// one-sided writes/reads between a local registered region and a peer's registered region,
// plus small tagged control messages. Every backend follows one lifecycle, modelled on NIXL's
// prepare -> post -> poll -> release:
//
//   Prepare(batch) ---> kPrepared --Post(deadline)--> kInProgress --+--> kDone
//                                                                    +--> kFailed    (error)
//                                                                    +--> kCancelled (Cancel)
//   Release(id) from any state. Releasing a kInProgress transfer cancels it first.
//
// "In progress" is a state, not an error: Poll() returns it; Wait() returns DeadlineExceeded
// when the *wait* deadline passes and leaves the transfer running.
//
// Deadline semantics. Every transfer carries a deadline given at Post(); Post rejects an
// infinite one. When it passes before completion the backend fails the transfer with
// DeadlineExceeded (retryable). A dead peer, a lost completion or a stalled link therefore
// ends as an error status by the deadline, never as a hang. Wait()'s own deadline only bounds
// the wait. Connect() and tagged messages take a deadline too. Deadlines are read through the
// injected kv::Clock of the backend.
//
// Poisoning contract. While a transfer is kInProgress its local regions are "in use". When it
// fails or is cancelled, its regions become "quarantined": the backend may still touch them
// (a put still in a NIC queue, a receive still posted). A quarantined region is never handed
// back for reuse: Deregister() refuses it with FailedPrecondition. The quarantine lifts only
// when the backend proves every operation of the transfer quiescent (each one reported its
// completion, e.g. a cancelled receive completed as cancelled), or when the endpoint to that
// peer has been torn down (Disconnect() or destruction of the Transport). A transfer that failed
// because of the peer or the link stays quarantined until teardown, since only then is
// quiescence known. Release() is not proof of quiescence. Callers must also not free or
// rewrite the memory of a region whose state is not kIdle.
//
// Thread safety: every method of every backend is safe for concurrent use. Ownership: the
// caller owns registered memory and must keep it alive until Deregister() succeeds or the
// Transport is destroyed. Handles (RegionId, PeerId, TransferId) are plain values owned by
// nobody; a stale handle yields NotFound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kv::transport {

using RegionId = uint64_t;
using PeerId = uint64_t;
using TransferId = uint64_t;
using RemoteRegionId = uint64_t;

enum class MemoryKind : uint8_t { kHost = 0, kDevice = 1 };
enum class OpKind : uint8_t { kWrite = 0, kRead = 1 };

// What a backend can do. Callers branch on this, never on the backend's type.
struct Capabilities {
  bool device_memory = false;  // Register(kDevice) works
  bool one_sided = false;      // Prepare() of writes/reads works (else only tagged messages)
  bool tagged_messages = false;
  std::string name;  // "ucx", "inproc", "nccl", "fault(ucx)"
};

// A region registered with this transport. `packed_key` is the blob a peer imports with
// ImportRemoteRegion() to target this region; it carries base, length and backend data, and
// is meaningful only to the same backend kind.
struct RegisteredRegion {
  RegionId id = 0;
  std::string packed_key;
};

// One operation of a batch: `length` bytes between local [local_offset, +length) and remote
// [remote_offset, +length). kWrite copies local -> remote, kRead remote -> local.
struct TransferOp {
  RegionId local = 0;
  uint64_t local_offset = 0;
  RemoteRegionId remote = 0;
  uint64_t remote_offset = 0;
  uint64_t length = 0;
};

struct TransferBatch {
  PeerId peer = 0;
  OpKind kind = OpKind::kWrite;
  std::vector<TransferOp> ops;
};

enum class TransferState : uint8_t { kPrepared, kInProgress, kDone, kFailed, kCancelled };
std::string_view TransferStateName(TransferState s);

// Poll() result: the state and, for kFailed/kCancelled, the error.
struct TransferStatus {
  TransferState state = TransferState::kPrepared;
  absl::Status error;  // OK unless kFailed / kCancelled
};

// A region's reuse state under the poisoning contract.
enum class RegionState : uint8_t { kIdle, kInUse, kQuarantined };
std::string_view RegionStateName(RegionState s);

struct TaggedMessage {
  PeerId from = 0;  // the sender as this transport knows it (0 if not connected back)
  uint32_t tag = 0;
  std::string payload;
};

// Largest tagged control message, in bytes. Larger payloads are InvalidArgument.
inline constexpr size_t kMaxTaggedMessageBytes = 1 << 20;

class Transport {
 public:
  virtual ~Transport() = default;

  virtual Capabilities capabilities() const = 0;

  // This endpoint's address blob, which a peer passes to Connect(). Stable for the
  // Transport's life.
  virtual std::string address() const = 0;

  // Registers [base, base+length). Returns InvalidArgument for a null base or zero length,
  // Unimplemented for kDevice on a backend without device memory, an internal error from the
  // backend otherwise.
  virtual absl::StatusOr<RegisteredRegion> Register(void* base, size_t length, MemoryKind kind) = 0;
  // Returns NotFound for an unknown id, FailedPrecondition naming the state when the region is
  // in use or quarantined (the registration is kept; retry after the quarantine lifts).
  virtual absl::Status Deregister(RegionId id) = 0;
  // NotFound for an unknown id.
  virtual absl::StatusOr<RegionState> GetRegionState(RegionId id) const = 0;

  // Connects to the peer whose address() is `address`; both sides then know each other.
  // Returns InvalidArgument for a malformed blob, Unavailable (retryable) when the peer
  // cannot be reached, DeadlineExceeded when it does not answer by `deadline`. Connecting
  // twice to the same peer returns the same PeerId.
  virtual absl::StatusOr<PeerId> Connect(std::string_view address, absl::Time deadline) = 0;
  // Tears down the endpoint (bounded; a dead peer cannot block it past an internal limit).
  // In-flight transfers to the peer fail with Unavailable; quarantines held by them lift.
  // NotFound for an unknown peer.
  virtual absl::Status Disconnect(PeerId peer) = 0;

  // Imports a peer's packed region key for use in TransferOps to that peer. Returns
  // InvalidArgument for a malformed key or one of another backend, NotFound for an unknown
  // peer.
  virtual absl::StatusOr<RemoteRegionId> ImportRemoteRegion(PeerId peer,
                                                            std::string_view packed_key) = 0;

  // Validates a batch (regions exist, ranges in bounds, remote regions belong to the peer)
  // and returns a kPrepared transfer. Nothing moves yet. InvalidArgument names the bad op;
  // NotFound for an unknown peer/region; Unimplemented if !capabilities().one_sided.
  virtual absl::StatusOr<TransferId> Prepare(const TransferBatch& batch) = 0;
  // Starts a kPrepared transfer. InvalidArgument for an infinite deadline, FailedPrecondition
  // if it is not kPrepared, NotFound for an unknown id.
  virtual absl::Status Post(TransferId id, absl::Time deadline) = 0;
  // Non-blocking state query. NotFound for an unknown id.
  virtual absl::StatusOr<TransferStatus> Poll(TransferId id) = 0;
  // Blocks until the transfer is terminal or `deadline`. Returns OK on kDone, the transfer's
  // error on kFailed/kCancelled, DeadlineExceeded if still in progress at `deadline` (the
  // transfer keeps running), FailedPrecondition if never posted, NotFound for unknown ids.
  virtual absl::Status Wait(TransferId id, absl::Time deadline) = 0;
  // Cancels an in-progress transfer: it becomes kCancelled (Cancelled error) and its regions
  // are quarantined until quiescence is proven. No-op on terminal transfers. NotFound for an
  // unknown id.
  virtual absl::Status Cancel(TransferId id) = 0;
  // Forgets the handle (cancelling first if in progress). NotFound for an unknown id.
  virtual absl::Status Release(TransferId id) = 0;

  // Sends a small control message. OK once the peer's transport holds it. InvalidArgument for
  // an oversized payload, NotFound for an unknown peer, DeadlineExceeded/Unavailable
  // otherwise.
  virtual absl::Status SendTagged(PeerId peer, uint32_t tag, std::string_view payload,
                                  absl::Time deadline) = 0;
  // Receives the oldest message carrying `tag` from any peer. DeadlineExceeded when none
  // arrives by `deadline`.
  virtual absl::StatusOr<TaggedMessage> ReceiveTagged(uint32_t tag, absl::Time deadline) = 0;
};

// Forwards every call to `target` (not owned; must outlive the wrapper). Fault injectors and
// instrumentation derive from it and override only what they change.
class TransportWrapper : public Transport {
 public:
  explicit TransportWrapper(Transport* target) : target_(target) {}

  Capabilities capabilities() const override { return target_->capabilities(); }
  std::string address() const override { return target_->address(); }
  absl::StatusOr<RegisteredRegion> Register(void* base, size_t length, MemoryKind kind) override {
    return target_->Register(base, length, kind);
  }
  absl::Status Deregister(RegionId id) override { return target_->Deregister(id); }
  absl::StatusOr<RegionState> GetRegionState(RegionId id) const override {
    return target_->GetRegionState(id);
  }
  absl::StatusOr<PeerId> Connect(std::string_view address, absl::Time deadline) override {
    return target_->Connect(address, deadline);
  }
  absl::Status Disconnect(PeerId peer) override { return target_->Disconnect(peer); }
  absl::StatusOr<RemoteRegionId> ImportRemoteRegion(PeerId peer,
                                                    std::string_view packed_key) override {
    return target_->ImportRemoteRegion(peer, packed_key);
  }
  absl::StatusOr<TransferId> Prepare(const TransferBatch& batch) override {
    return target_->Prepare(batch);
  }
  absl::Status Post(TransferId id, absl::Time deadline) override {
    return target_->Post(id, deadline);
  }
  absl::StatusOr<TransferStatus> Poll(TransferId id) override { return target_->Poll(id); }
  absl::Status Wait(TransferId id, absl::Time deadline) override {
    return target_->Wait(id, deadline);
  }
  absl::Status Cancel(TransferId id) override { return target_->Cancel(id); }
  absl::Status Release(TransferId id) override { return target_->Release(id); }
  absl::Status SendTagged(PeerId peer, uint32_t tag, std::string_view payload,
                          absl::Time deadline) override {
    return target_->SendTagged(peer, tag, payload, deadline);
  }
  absl::StatusOr<TaggedMessage> ReceiveTagged(uint32_t tag, absl::Time deadline) override {
    return target_->ReceiveTagged(tag, deadline);
  }

 protected:
  Transport* target() const { return target_; }

 private:
  Transport* target_;
};

}  // namespace kv::transport
