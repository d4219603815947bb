// HandoffWriter: writes a sequence's state into a decode session's HandoffDestination
// (transport/handoff.h) with one-sided transport writes, piece by piece as it becomes final,
// and reports one XXH3-64 per slot of what it sent.
//
// Every piece is first copied into a staging region laid out exactly like the destination
// (0xFF where nothing is written), then posted; so the checksums describe the bytes the
// receiver should hold, whatever the transport did. Finish() waits for every transfer
// (`step_timeout` each, never past the deadline) and returns the checksums; any failure is an
// error, and the receiver then computes the prompt itself. Staging memory that the transport
// keeps quarantined after a failure is buried in the graveyard.
//
// Where each piece goes is the model's business (model::ServingSequence::LayerHandoffPieces):
// the writer only bounds-checks slots and offsets.
//
// Thread-safety: one writer per request, used from one thread. Not owned: transport,
// graveyard and clock, which must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "transport/handoff.h"
#include "transport/transport.h"

namespace kv::prefill {

class HandoffWriter {
 public:
  // Connects to the destination's endpoint and imports its region. InvalidArgument when the
  // destination's slots are not `slots` × `slot_bytes`; the transport's errors otherwise
  // (Unavailable / DeadlineExceeded for an unreachable peer).
  static absl::StatusOr<std::unique_ptr<HandoffWriter>> Open(
      transport::Transport* transport, transport::RegionGraveyard* graveyard, Clock* clock,
      const transport::HandoffDestination& target, int64_t slots, uint64_t slot_bytes,
      absl::Duration step_timeout, absl::Time deadline);
  ~HandoffWriter();

  // One piece: bytes [offset, offset + bytes.size()) of `slot`.
  struct Piece {
    int64_t slot = 0;
    uint64_t offset = 0;
    std::span<const uint8_t> bytes;
  };
  // Sends the pieces as one transfer. InvalidArgument for a piece out of bounds (nothing
  // sent); the transport's errors (a failed post ends the handoff: Finish() then fails too).
  absl::Status Send(std::span<const Piece> pieces);
  absl::Status Send(int64_t slot, uint64_t offset, std::span<const uint8_t> bytes) {
    const Piece p{slot, offset, bytes};
    return Send(std::span<const Piece>(&p, 1));
  }
  // Waits for every transfer and returns each slot's XXH3-64 as sent; the first error
  // otherwise. Call once.
  absl::StatusOr<std::vector<uint64_t>> Finish();
  uint64_t bytes_sent() const { return bytes_sent_; }

 private:
  HandoffWriter() = default;
  absl::Time StepDeadline() const;
  // Releases every transfer and the staging registration; returns `status`.
  absl::Status Close(absl::Status status);

  transport::Transport* transport_ = nullptr;
  transport::RegionGraveyard* graveyard_ = nullptr;
  Clock* clock_ = nullptr;
  absl::Duration step_timeout_;
  absl::Time deadline_;
  int64_t slots_ = 0;
  uint64_t slot_bytes_ = 0;
  transport::PeerId peer_ = 0;
  transport::RemoteRegionId remote_ = 0;
  std::shared_ptr<std::vector<uint8_t>> staging_;
  std::optional<transport::RegisteredRegion> local_;
  std::vector<transport::TransferId> transfers_;
  absl::Status error_;
  uint64_t bytes_sent_ = 0;
  bool closed_ = false;
};

}  // namespace kv::prefill
