#include "prefill/handoff_writer.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::prefill {

absl::StatusOr<std::unique_ptr<HandoffWriter>> HandoffWriter::Open(
    transport::Transport* transport, transport::RegionGraveyard* graveyard, Clock* clock,
    const transport::HandoffDestination& target, int64_t slots, uint64_t slot_bytes,
    absl::Duration step_timeout, absl::Time deadline) {
  if (transport == nullptr || graveyard == nullptr || clock == nullptr) {
    return absl::FailedPreconditionError("handoff writer: no transport, graveyard or clock");
  }
  if (!target.valid() || target.slots != slots || target.slot_bytes != slot_bytes) {
    return absl::InvalidArgumentError(StrCat("handoff target has ", target.slots, " slots of ",
                                             target.slot_bytes, " bytes; the prompt needs ", slots,
                                             " of ", slot_bytes));
  }
  std::unique_ptr<HandoffWriter> w(new HandoffWriter());
  w->transport_ = transport;
  w->graveyard_ = graveyard;
  w->clock_ = clock;
  w->step_timeout_ = step_timeout;
  w->deadline_ = deadline;
  w->slots_ = slots;
  w->slot_bytes_ = slot_bytes;
  ASSIGN_OR_RETURN(w->peer_, transport->Connect(target.endpoint, w->StepDeadline()));
  ASSIGN_OR_RETURN(w->remote_, transport->ImportRemoteRegion(w->peer_, target.region_key));
  w->staging_ =
      std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(slots) * slot_bytes, 0xFF);
  ASSIGN_OR_RETURN(w->local_, transport->Register(w->staging_->data(), w->staging_->size(),
                                                  transport::MemoryKind::kHost));
  return w;
}

HandoffWriter::~HandoffWriter() {
  if (!closed_) (void)Close(absl::CancelledError("handoff abandoned"));
}

absl::Time HandoffWriter::StepDeadline() const {
  return std::min(deadline_, clock_->Now() + step_timeout_);
}

absl::Status HandoffWriter::Send(std::span<const Piece> pieces) {
  if (closed_) return absl::FailedPreconditionError("handoff writer: already finished");
  RETURN_IF_ERROR(error_);
  for (const Piece& p : pieces) {
    if (p.slot < 0 || p.slot >= slots_ || p.offset > slot_bytes_ ||
        p.bytes.size() > slot_bytes_ - p.offset) {
      return absl::InvalidArgumentError(StrCat("handoff: bytes [", p.offset, ", +", p.bytes.size(),
                                               ") of slot ", p.slot, " are outside ", slots_,
                                               " slots of ", slot_bytes_));
    }
  }
  transport::TransferBatch batch{.peer = peer_, .kind = transport::OpKind::kWrite};
  uint64_t bytes = 0;
  for (const Piece& p : pieces) {
    if (p.bytes.empty()) continue;
    const uint64_t at = static_cast<uint64_t>(p.slot) * slot_bytes_ + p.offset;
    std::memcpy(staging_->data() + at, p.bytes.data(), p.bytes.size());
    batch.ops.push_back({.local = local_->id,
                         .local_offset = at,
                         .remote = remote_,
                         .remote_offset = at,
                         .length = p.bytes.size()});
    bytes += p.bytes.size();
  }
  if (batch.ops.empty()) return absl::OkStatus();
  absl::StatusOr<transport::TransferId> id = transport_->Prepare(batch);
  if (id.ok()) {
    transfers_.push_back(*id);
    error_ = transport_->Post(*id, StepDeadline());
  } else {
    error_ = id.status();
  }
  if (error_.ok()) bytes_sent_ += bytes;
  return error_;
}

absl::Status HandoffWriter::Close(absl::Status status) {
  closed_ = true;
  for (transport::TransferId id : transfers_) {
    if (status.ok()) status = transport_->Wait(id, StepDeadline());
    (void)transport_->Release(id);  // cancels what is still running after a failure
  }
  transfers_.clear();
  if (local_ && !transport_->Deregister(local_->id).ok()) graveyard_->Bury(staging_);
  local_.reset();
  return status;
}

absl::StatusOr<std::vector<uint64_t>> HandoffWriter::Finish() {
  RETURN_IF_ERROR(Close(error_));
  std::vector<uint64_t> sums;
  for (int64_t s = 0; s < slots_; ++s) {
    sums.push_back(Xxh3_64(staging_->data() + s * slot_bytes_, slot_bytes_));
  }
  return sums;
}

}  // namespace kv::prefill
