// NcclChannel: page batches between GPUs over NCCL point-to-point (grouped ncclSend/ncclRecv).
//
// NCCL is two-sided: the sender posts ncclSend and the receiver a matching ncclRecv, in the
// same order. So this backend does not implement the one-sided Transport interface
// (capabilities: device_memory = true, one_sided = false); the prefill -> decode handoff
// uses it once both sides agreed on the page list over the control plane (or a tagged
// message of another transport).
//
// Bootstrap. One side calls NewUniqueId() and hands the 128-byte blob to every rank through
// the control plane; each rank then calls Create(id, nranks, rank, device, deadline). The
// communicator is initialised in NCCL's non-blocking mode, so a rank that never shows up
// makes Create() return DeadlineExceeded instead of hanging (the half-built communicator is
// aborted).
//
// Lifecycle (as transport.h): PostBatch() enqueues one ncclGroupStart/End of every send and
// receive of the batch on the channel's stream and returns a ticket (kInProgress); Poll()
// turns it kDone once the stream passed it (a CUDA event), or kFailed on an asynchronous
// NCCL error; Wait() blocks with a deadline. On a deadline, NCCL has no way to cancel one
// operation: Wait() aborts the whole communicator (ncclCommAbort), which ends every
// in-flight kernel, then synchronises the stream (bounded) to prove quiescence. Every ticket
// still in flight becomes kFailed and the channel is unusable (FailedPrecondition) from then
// on.
//
// Poisoning contract: device buffers of an in-flight or failed ticket must not be reused
// until Poll() says kDone, or, after a failure, until Quiescent() returns true (the stream
// drained after the abort). The caller owns all device memory.
//
// Not thread-safe: one thread drives a channel (NCCL communicators are not thread-safe).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/transport.h"

namespace kv::transport {

struct DevicePage {
  void* data = nullptr;  // device pointer
  size_t bytes = 0;
};

class NcclChannel {
 public:
  // A fresh ncclUniqueId as 128 bytes. Internal error if NCCL cannot create one.
  static absl::StatusOr<std::string> NewUniqueId();
  // Joins the communicator `unique_id` as `rank` of `nranks` on CUDA `device`. Returns
  // InvalidArgument for a malformed id or rank, Unavailable when no CUDA device exists,
  // DeadlineExceeded when the other ranks do not join by `deadline`.
  static absl::StatusOr<std::unique_ptr<NcclChannel>> Create(std::string_view unique_id, int nranks,
                                                             int rank, int device,
                                                             absl::Time deadline);
  ~NcclChannel();

  Capabilities capabilities() const;
  int rank() const { return rank_; }
  int nranks() const { return nranks_; }

  // Sends `send` pages to rank `peer` and receives `recv` pages from it (either may be empty)
  // as one NCCL group. The peer must post the mirror batch. Returns a ticket.
  // InvalidArgument for a bad peer, null pointers or empty pages; FailedPrecondition after
  // an abort.
  absl::StatusOr<uint64_t> PostBatch(int peer, const std::vector<DevicePage>& send,
                                     const std::vector<DevicePage>& recv);
  // kInProgress, kDone or kFailed (with the error). NotFound for an unknown ticket.
  absl::StatusOr<TransferStatus> Poll(uint64_t ticket);
  // OK when done; the error when failed; DeadlineExceeded after aborting the communicator
  // when still in flight at `deadline`.
  absl::Status Wait(uint64_t ticket, absl::Time deadline);
  // Forgets a finished ticket. FailedPrecondition while in flight; NotFound if unknown.
  absl::Status Release(uint64_t ticket);
  // True when no NCCL work of this channel can still touch device memory.
  bool Quiescent();

 private:
  struct Impl;
  NcclChannel(std::unique_ptr<Impl> impl, int rank, int nranks);
  absl::Status Abort(const absl::Status& why);

  std::unique_ptr<Impl> impl_;
  int rank_;
  int nranks_;
};

}  // namespace kv::transport
