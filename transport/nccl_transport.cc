#include "transport/nccl_transport.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "core/status_macros.h"

namespace kv::transport {

namespace {

absl::Status NcclToStatus(ncclResult_t r, std::string_view what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  std::string msg = absl::StrCat(std::string(what), ": ", ncclGetErrorString(r));
  if (r == ncclInvalidArgument || r == ncclInvalidUsage) return absl::InvalidArgumentError(msg);
  if (r == ncclRemoteError || r == ncclSystemError) {
    return MarkRetryable(absl::UnavailableError(msg));
  }
  return absl::InternalError(msg);
}

absl::Status CudaToStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(std::string(what), ": ", cudaGetErrorString(e)));
}

}  // namespace

struct NcclChannel::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  bool aborted = false;
  absl::Status abort_status;
  uint64_t next_ticket = 1;
  struct Ticket {
    cudaEvent_t done = nullptr;
    TransferStatus status{TransferState::kInProgress, absl::OkStatus()};
  };
  std::map<uint64_t, Ticket> tickets;

  // Polls the communicator's asynchronous state until it leaves ncclInProgress or `deadline`.
  absl::Status Settle(absl::Time deadline, std::string_view what) {
    while (true) {
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm, &state);
      if (r != ncclSuccess) return NcclToStatus(r, what);
      if (state != ncclInProgress) return NcclToStatus(state, what);
      if (absl::Now() >= deadline) {
        return MarkRetryable(absl::DeadlineExceededError(
            absl::StrCat(std::string(what), ": NCCL still in progress at the deadline")));
      }
      absl::SleepFor(absl::Microseconds(50));
    }
  }
};

absl::StatusOr<std::string> NcclChannel::NewUniqueId() {
  ncclUniqueId id;
  RETURN_IF_ERROR(NcclToStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, NCCL_UNIQUE_ID_BYTES);
}

absl::StatusOr<std::unique_ptr<NcclChannel>> NcclChannel::Create(std::string_view unique_id,
                                                                 int nranks, int rank, int device,
                                                                 absl::Time deadline) {
  if (unique_id.size() != NCCL_UNIQUE_ID_BYTES) {
    return absl::InvalidArgumentError(absl::StrCat("an ncclUniqueId has ", NCCL_UNIQUE_ID_BYTES,
                                                   " bytes, got ", unique_id.size()));
  }
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", nranks, " is invalid"));
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return absl::UnavailableError("no CUDA device: the NCCL transport needs a GPU");
  }
  if (device < 0 || device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("device ", device, " of ", devices));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  RETURN_IF_ERROR(CudaToStatus(cudaSetDevice(device), "cudaSetDevice"));
  RETURN_IF_ERROR(CudaToStatus(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                               "cudaStreamCreate"));
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), NCCL_UNIQUE_ID_BYTES);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a missing rank cannot hang us: we poll with a deadline
  absl::Status st = NcclToStatus(ncclCommInitRankConfig(&impl->comm, nranks, id, rank, &config),
                                 "ncclCommInitRankConfig");
  if (st.ok()) st = impl->Settle(deadline, "communicator bootstrap");
  if (!st.ok()) {
    if (impl->comm) ncclCommAbort(impl->comm);
    cudaStreamDestroy(impl->stream);
    return st;
  }
  return std::unique_ptr<NcclChannel>(new NcclChannel(std::move(impl), rank, nranks));
}

NcclChannel::NcclChannel(std::unique_ptr<Impl> impl, int rank, int nranks)
    : impl_(std::move(impl)), rank_(rank), nranks_(nranks) {}

NcclChannel::~NcclChannel() {
  cudaSetDevice(impl_->device);
  if (!impl_->aborted) {
    // Bounded drain, then a clean destroy; abort if the peers never drain.
    absl::Time limit = absl::Now() + absl::Seconds(5);
    while (cudaStreamQuery(impl_->stream) == cudaErrorNotReady && absl::Now() < limit) {
      absl::SleepFor(absl::Microseconds(100));
    }
    if (cudaStreamQuery(impl_->stream) == cudaSuccess) {
      ncclCommDestroy(impl_->comm);
    } else {
      ncclCommAbort(impl_->comm);
    }
  }
  for (auto& [t, ticket] : impl_->tickets) cudaEventDestroy(ticket.done);
  cudaStreamDestroy(impl_->stream);
}

Capabilities NcclChannel::capabilities() const {
  return Capabilities{
      .device_memory = true, .one_sided = false, .tagged_messages = false, .name = "nccl"};
}

absl::StatusOr<uint64_t> NcclChannel::PostBatch(int peer, const std::vector<DevicePage>& send,
                                                const std::vector<DevicePage>& recv) {
  if (impl_->aborted) {
    return absl::FailedPreconditionError(
        absl::StrCat("NCCL channel was aborted: ", impl_->abort_status.message()));
  }
  if (peer < 0 || peer >= nranks_) {
    return absl::InvalidArgumentError(absl::StrCat("peer rank ", peer, " of ", nranks_));
  }
  for (const auto* pages : {&send, &recv}) {
    for (const DevicePage& p : *pages) {
      if (p.data == nullptr || p.bytes == 0) {
        return absl::InvalidArgumentError("a device page has a null pointer or zero bytes");
      }
    }
  }
  if (send.empty() && recv.empty()) return absl::InvalidArgumentError("empty NCCL batch");
  cudaSetDevice(impl_->device);
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  RETURN_IF_ERROR(NcclToStatus(ncclGroupStart(), "ncclGroupStart"));
  for (const DevicePage& p : send) {
    RETURN_IF_ERROR(NcclToStatus(
        ncclSend(p.data, p.bytes, ncclUint8, peer, impl_->comm, impl_->stream), "ncclSend"));
  }
  for (const DevicePage& p : recv) {
    RETURN_IF_ERROR(NcclToStatus(
        ncclRecv(p.data, p.bytes, ncclUint8, peer, impl_->comm, impl_->stream), "ncclRecv"));
  }
  RETURN_IF_ERROR(NcclToStatus(ncclGroupEnd(), "ncclGroupEnd"));
  // Non-blocking communicators may still be enqueueing; bounded.
  absl::Status st = impl_->Settle(deadline, "ncclGroupEnd");
  if (!st.ok()) {
    RETURN_IF_ERROR(Abort(st));
    return st;
  }
  Impl::Ticket ticket;
  RETURN_IF_ERROR(CudaToStatus(cudaEventCreateWithFlags(&ticket.done, cudaEventDisableTiming),
                               "cudaEventCreate"));
  RETURN_IF_ERROR(CudaToStatus(cudaEventRecord(ticket.done, impl_->stream), "cudaEventRecord"));
  uint64_t id = impl_->next_ticket++;
  impl_->tickets[id] = ticket;
  return id;
}

absl::StatusOr<TransferStatus> NcclChannel::Poll(uint64_t ticket) {
  auto it = impl_->tickets.find(ticket);
  if (it == impl_->tickets.end()) {
    return absl::NotFoundError(absl::StrCat("NCCL ticket ", ticket, " unknown"));
  }
  TransferStatus& s = it->second.status;
  if (s.state != TransferState::kInProgress) return s;
  cudaError_t e = cudaEventQuery(it->second.done);
  if (e == cudaSuccess) {
    s.state = TransferState::kDone;
  } else if (e != cudaErrorNotReady) {
    s = {TransferState::kFailed, CudaToStatus(e, "NCCL batch")};
  } else {
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(impl_->comm, &state);
    if (state != ncclSuccess && state != ncclInProgress) {
      absl::Status err = NcclToStatus(state, "NCCL asynchronous error");
      (void)Abort(err);
    }
  }
  return s;
}

absl::Status NcclChannel::Wait(uint64_t ticket, absl::Time deadline) {
  while (true) {
    ASSIGN_OR_RETURN(TransferStatus s, Poll(ticket));
    if (s.state != TransferState::kInProgress) return s.error;
    if (absl::Now() >= deadline) {
      absl::Status st = MarkRetryable(absl::DeadlineExceededError(absl::StrCat(
          "NCCL batch ", ticket, " missed its deadline; the communicator was aborted")));
      RETURN_IF_ERROR(Abort(st));
      return st;
    }
    absl::SleepFor(absl::Microseconds(50));
  }
}

absl::Status NcclChannel::Abort(const absl::Status& why) {
  if (impl_->aborted) return absl::OkStatus();
  log::Warn("nccl_channel_abort", "rank", rank_, "why", std::string(why.message()));
  impl_->aborted = true;
  impl_->abort_status = why;
  ncclCommAbort(impl_->comm);
  for (auto& [t, ticket] : impl_->tickets) {
    if (ticket.status.state == TransferState::kInProgress) {
      ticket.status = {TransferState::kFailed, why};
    }
  }
  return absl::OkStatus();
}

bool NcclChannel::Quiescent() {
  cudaSetDevice(impl_->device);
  return cudaStreamQuery(impl_->stream) == cudaSuccess;
}

absl::Status NcclChannel::Release(uint64_t ticket) {
  auto it = impl_->tickets.find(ticket);
  if (it == impl_->tickets.end()) {
    return absl::NotFoundError(absl::StrCat("NCCL ticket ", ticket, " unknown"));
  }
  if (it->second.status.state == TransferState::kInProgress) {
    return absl::FailedPreconditionError("NCCL ticket still in flight");
  }
  cudaEventDestroy(it->second.done);
  impl_->tickets.erase(it);
  return absl::OkStatus();
}

}  // namespace kv::transport
