// UcxTransport's API: validation of arguments, then a hop onto the engine thread.
#include "transport/ucx_transport.h"

#include <cstdlib>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "transport/ucx_engine.h"

namespace kv::transport {

namespace {
// Runs `fn` on the engine thread and returns its value.
template <typename T, typename Fn>
absl::StatusOr<T> Call(UcxTransport::Engine* e, Fn fn) {
  auto out = std::make_shared<absl::StatusOr<T>>(absl::InternalError("engine command not run"));
  RETURN_IF_ERROR(e->Run([out, fn]() mutable {
    *out = fn();
    return absl::OkStatus();
  }));
  return *out;
}
}  // namespace

absl::StatusOr<UcxOptions::Protocol> ParseProtocol(std::string_view name) {
  for (UcxOptions::Protocol p :
       {UcxOptions::Protocol::kAuto, UcxOptions::Protocol::kRma, UcxOptions::Protocol::kTag}) {
    if (ProtocolName(p) == name) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown UCX protocol \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\" (KVSTRATA_UCX_PROTOCOL): auto, rma or tag"));
}

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(UcxOptions options) {
  if (const char* env = std::getenv("KVSTRATA_UCX_PROTOCOL");
      env != nullptr && *env != '\0' && options.protocol == UcxOptions::Protocol::kAuto) {
    ASSIGN_OR_RETURN(options.protocol, ParseProtocol(env));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  return std::unique_ptr<UcxTransport>(new UcxTransport(std::move(engine)));
}

UcxTransport::UcxTransport(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {}
UcxTransport::~UcxTransport() = default;

Capabilities UcxTransport::capabilities() const {
  return Capabilities{.device_memory = engine_->device_memory(),
                      .one_sided = true,
                      .tagged_messages = true,
                      .name = "ucx"};
}

std::string UcxTransport::address() const { return engine_->address(); }

absl::StatusOr<UcxOptions::Protocol> UcxTransport::PeerProtocol(PeerId peer) const {
  Engine* e = engine_.get();
  return Call<UcxOptions::Protocol>(e, [e, peer] { return e->ProtocolOnThread(peer); });
}

absl::StatusOr<RegisteredRegion> UcxTransport::Register(void* base, size_t length,
                                                        MemoryKind kind) {
  if (base == nullptr || length == 0) {
    return absl::InvalidArgumentError("Register needs a non-null base and a non-zero length");
  }
  Engine* e = engine_.get();
  return Call<RegisteredRegion>(e, [=] { return e->RegisterOnThread(base, length, kind); });
}

absl::Status UcxTransport::Deregister(RegionId id) {
  Engine* e = engine_.get();
  return e->Run([e, id] { return e->DeregisterOnThread(id); });
}

absl::StatusOr<RegionState> UcxTransport::GetRegionState(RegionId id) const {
  return engine_->table().StateOf(id);
}

absl::StatusOr<PeerId> UcxTransport::Connect(std::string_view address, absl::Time deadline) {
  Engine* e = engine_.get();
  auto waiter = std::make_shared<Engine::Waiter>();
  RETURN_IF_ERROR(
      e->Run([e, a = std::string(address), waiter] { return e->ConnectOnThread(a, waiter); }));
  absl::StatusOr<uint64_t> id = waiter->Await(e->clock(), deadline);
  if (absl::IsDeadlineExceeded(id.status())) {
    return MarkRetryable(absl::DeadlineExceededError(
        "peer did not answer the connection handshake before the deadline"));
  }
  return id;
}

absl::Status UcxTransport::Disconnect(PeerId peer) {
  Engine* e = engine_.get();
  auto waiter = std::make_shared<Engine::Waiter>();
  RETURN_IF_ERROR(e->Run([e, peer, waiter] { return e->DisconnectOnThread(peer, waiter); }));
  absl::StatusOr<uint64_t> r =
      waiter->Await(Clock::Real(), absl::Now() + e->options().close_timeout);
  if (!r.ok()) {
    return absl::DeadlineExceededError(
        absl::StrCat("closing the endpoint to peer ", peer,
                     " did not complete; its transfers' regions stay quarantined until it does"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RemoteRegionId> UcxTransport::ImportRemoteRegion(PeerId peer,
                                                                std::string_view packed_key) {
  Engine* e = engine_.get();
  return Call<RemoteRegionId>(
      e, [e, peer, k = std::string(packed_key)] { return e->ImportOnThread(peer, k); });
}

absl::StatusOr<TransferId> UcxTransport::Prepare(const TransferBatch& batch) {
  RETURN_IF_ERROR(engine_->PrepareCheck(batch));
  return engine_->table().AddTransfer(batch);
}

absl::Status UcxTransport::Post(TransferId id, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("transfer deadline must be finite (every wait is bounded)");
  }
  // The state change and its checks happen here, under the table's lock; the UCX posting is
  // queued for the engine thread without waiting for it (one wake-up at most, no round
  // trip). Failures from then on (peer gone, UCX errors) end the transfer kFailed, as Poll
  // and Wait report; commands run in order, so a later Cancel or Release finds it posted.
  Engine* e = engine_.get();
  ASSIGN_OR_RETURN(TransferBatch batch, e->table().GetBatch(id));
  RETURN_IF_ERROR(e->table().Post(id, deadline));
  e->Enqueue([e, id, batch = std::move(batch)] { e->StartOnThread(id, batch); });
  return absl::OkStatus();
}

absl::StatusOr<TransferStatus> UcxTransport::Poll(TransferId id) {
  return engine_->table().Poll(id);
}

absl::Status UcxTransport::Wait(TransferId id, absl::Time deadline) {
  return engine_->table().Wait(id, deadline);
}

absl::Status UcxTransport::Cancel(TransferId id) {
  Engine* e = engine_.get();
  return e->Run([e, id] {
    return e->CancelOnThread(id, absl::CancelledError(absl::StrCat("transfer ", id, " cancelled")));
  });
}

absl::Status UcxTransport::Release(TransferId id) {
  Engine* e = engine_.get();
  absl::StatusOr<TransferStatus> s = e->table().Poll(id);
  if (s.ok() && s->state != TransferState::kInProgress) {
    return e->table().Release(id);  // terminal or never posted: no UCX work to stop
  }
  return e->Run([e, id] {
    absl::StatusOr<TransferStatus> s = e->table().Poll(id);
    if (s.ok() && s->state == TransferState::kInProgress) {
      RETURN_IF_ERROR(e->CancelOnThread(id, absl::CancelledError("transfer released")));
    }
    return e->table().Release(id);
  });
}

absl::Status UcxTransport::SendTagged(PeerId peer, uint32_t tag, std::string_view payload,
                                      absl::Time deadline) {
  if (payload.size() > kMaxTaggedMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("tagged payload of ", payload.size(),
                                                   " bytes exceeds ", kMaxTaggedMessageBytes));
  }
  Engine* e = engine_.get();
  auto waiter = std::make_shared<Engine::Waiter>();
  RETURN_IF_ERROR(e->Run([e, peer, tag, p = std::string(payload), waiter]() mutable {
    return e->SendUserOnThread(peer, tag, std::move(p), waiter);
  }));
  return waiter->Await(e->clock(), deadline).status();
}

absl::StatusOr<TaggedMessage> UcxTransport::ReceiveTagged(uint32_t tag, absl::Time deadline) {
  return engine_->TakeUserMessage(tag, deadline);
}

}  // namespace kv::transport
