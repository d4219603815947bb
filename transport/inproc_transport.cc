#include "transport/inproc_transport.h"

#include <atomic>
#include <cstring>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "transport/remote_key.h"
#include "transport/transfer_table.h"

namespace kv::transport {

struct InProcFabric::Endpoint {
  explicit Endpoint(Clock* c) : clock(c), table(c) {}

  struct Remote {
    PeerId peer;
    RemoteKey key;
  };

  std::string address;
  Clock* const clock;
  TransferTable table;
  // Readers: copies into this endpoint's memory. Writer: teardown.
  absl::Mutex alive_mu;
  bool alive ABSL_GUARDED_BY(alive_mu) = true;
  // Held by the worker across one op, so teardown waits for the copy in flight.
  absl::Mutex exec_mu;

  absl::Mutex mu;
  absl::CondVar cv;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::deque<TransferId> queue ABSL_GUARDED_BY(mu);
  uint64_t next_peer ABSL_GUARDED_BY(mu) = 1;
  absl::flat_hash_map<PeerId, std::shared_ptr<Endpoint>> peers ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, PeerId> peer_by_address ABSL_GUARDED_BY(mu);
  uint64_t next_remote ABSL_GUARDED_BY(mu) = 1;
  absl::flat_hash_map<RemoteRegionId, Remote> remotes ABSL_GUARDED_BY(mu);
  std::deque<TaggedMessage> mailbox ABSL_GUARDED_BY(mu);

  // Adds `other` as a peer (idempotent) and returns its id here.
  PeerId AddPeer(const std::shared_ptr<Endpoint>& other) {
    absl::MutexLock l(&mu);
    auto it = peer_by_address.find(other->address);
    if (it != peer_by_address.end()) return it->second;
    PeerId id = next_peer++;
    peers[id] = other;
    peer_by_address[other->address] = id;
    return id;
  }
  // Forgets a peer and fails/lifts everything that involved it.
  void DropPeer(PeerId id, const absl::Status& why) {
    {
      absl::MutexLock l(&mu);
      auto it = peers.find(id);
      if (it == peers.end()) return;
      peer_by_address.erase(it->second->address);
      peers.erase(it);
    }
    absl::MutexLock exec(&exec_mu);  // no copy of this peer's transfer is in flight now
    table.PeerTornDown(id, why);
  }
};

namespace {
uint64_t NextFabricId() {
  static std::atomic<uint64_t> next{1};
  return next++;
}
}  // namespace

InProcFabric::InProcFabric() : id_(NextFabricId()) {}

std::string InProcFabric::NextAddress() {
  absl::MutexLock l(&mu_);
  return absl::StrCat("inproc:", id_, ":", next_++);
}
void InProcFabric::Attach(const std::string& address, std::weak_ptr<Endpoint> ep) {
  absl::MutexLock l(&mu_);
  endpoints_[address] = std::move(ep);
}
void InProcFabric::Detach(const std::string& address) {
  absl::MutexLock l(&mu_);
  endpoints_.erase(address);
}
std::shared_ptr<InProcFabric::Endpoint> InProcFabric::Find(std::string_view address) {
  absl::MutexLock l(&mu_);
  auto it = endpoints_.find(std::string(address));
  return it == endpoints_.end() ? nullptr : it->second.lock();
}

InProcTransport::InProcTransport(InProcFabric* fabric, Clock* clock)
    : fabric_(fabric), self_(std::make_shared<Endpoint>(clock ? clock : Clock::Real())) {
  self_->address = fabric_->NextAddress();
  fabric_->Attach(self_->address, self_);
  worker_ = std::thread([this] { WorkerLoop(); });
}

InProcTransport::~InProcTransport() {
  fabric_->Detach(self_->address);
  {
    absl::MutexLock l(&self_->mu);
    self_->stopping = true;
    self_->cv.SignalAll();
  }
  worker_.join();
  {
    absl::MutexLock l(&self_->alive_mu);  // waits for peers' copies into our memory
    self_->alive = false;
  }
  absl::flat_hash_map<PeerId, std::shared_ptr<Endpoint>> peers;
  {
    absl::MutexLock l(&self_->mu);
    peers.swap(self_->peers);
    self_->peer_by_address.clear();
  }
  absl::Status gone = MarkRetryable(absl::UnavailableError("in-process peer was destroyed"));
  for (auto& [id, peer] : peers) {
    PeerId back = 0;
    {
      absl::MutexLock l(&peer->mu);
      auto it = peer->peer_by_address.find(self_->address);
      if (it != peer->peer_by_address.end()) back = it->second;
    }
    if (back != 0) peer->DropPeer(back, gone);
  }
}

Capabilities InProcTransport::capabilities() const {
  return Capabilities{
      .device_memory = false, .one_sided = true, .tagged_messages = true, .name = "inproc"};
}

std::string InProcTransport::address() const { return self_->address; }

absl::StatusOr<RegisteredRegion> InProcTransport::Register(void* base, size_t length,
                                                           MemoryKind kind) {
  if (base == nullptr || length == 0) {
    return absl::InvalidArgumentError("Register needs a non-null base and a non-zero length");
  }
  if (kind == MemoryKind::kDevice) {
    return absl::UnimplementedError("the in-process transport cannot register device memory");
  }
  RegionId id = self_->table.AddRegion(base, length, kind, nullptr);
  RemoteKey key{.backend = BackendKind::kInProc,
                .kind = kind,
                .region = id,
                .base = reinterpret_cast<uint64_t>(base),
                .length = length};
  return RegisteredRegion{id, PackRemoteKey(key)};
}

absl::Status InProcTransport::Deregister(RegionId id) {
  return self_->table.RemoveRegion(id).status();
}

absl::StatusOr<RegionState> InProcTransport::GetRegionState(RegionId id) const {
  return self_->table.StateOf(id);
}

absl::StatusOr<PeerId> InProcTransport::Connect(std::string_view address, absl::Time deadline) {
  if (!address.starts_with("inproc:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an in-process address: '", std::string(address.substr(0, 64)), "'"));
  }
  std::shared_ptr<Endpoint> other = fabric_->Find(address);
  if (other == nullptr) {
    return MarkRetryable(
        absl::UnavailableError(absl::StrCat("no in-process endpoint at ", std::string(address))));
  }
  if (other == self_) return absl::InvalidArgumentError("cannot connect an endpoint to itself");
  PeerId id = self_->AddPeer(other);
  other->AddPeer(self_);
  return id;
}

absl::Status InProcTransport::Disconnect(PeerId peer) {
  {
    absl::MutexLock l(&self_->mu);
    if (!self_->peers.contains(peer)) {
      return absl::NotFoundError(absl::StrCat("peer ", peer, " unknown"));
    }
  }
  self_->DropPeer(peer, MarkRetryable(absl::UnavailableError("peer disconnected")));
  return absl::OkStatus();
}

absl::StatusOr<RemoteRegionId> InProcTransport::ImportRemoteRegion(PeerId peer,
                                                                   std::string_view packed) {
  ASSIGN_OR_RETURN(RemoteKey key, UnpackRemoteKey(packed, BackendKind::kInProc));
  absl::MutexLock l(&self_->mu);
  if (!self_->peers.contains(peer)) {
    return absl::NotFoundError(absl::StrCat("peer ", peer, " unknown"));
  }
  RemoteRegionId id = self_->next_remote++;
  self_->remotes[id] = Endpoint::Remote{peer, std::move(key)};
  return id;
}

absl::StatusOr<TransferId> InProcTransport::Prepare(const TransferBatch& batch) {
  if (batch.ops.empty()) return absl::InvalidArgumentError("transfer batch has no ops");
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    const TransferOp& op = batch.ops[i];
    RETURN_IF_ERROR(Annotate(self_->table.CheckRange(op.local, op.local_offset, op.length).status(),
                             absl::StrCat("op ", i)));
    absl::MutexLock l(&self_->mu);
    if (!self_->peers.contains(batch.peer)) {
      return absl::NotFoundError(absl::StrCat("peer ", batch.peer, " unknown"));
    }
    auto it = self_->remotes.find(op.remote);
    if (it == self_->remotes.end() || it->second.peer != batch.peer) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, ": remote region ", op.remote,
                                                     " is not imported from peer ", batch.peer));
    }
    const RemoteKey& k = it->second.key;
    if (op.remote_offset > k.length || op.length > k.length - op.remote_offset) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, ": remote range [", op.remote_offset,
                                                     ", +", op.length, ") is outside the ",
                                                     k.length, "-byte remote region"));
    }
  }
  return self_->table.AddTransfer(batch);
}

absl::Status InProcTransport::Post(TransferId id, absl::Time deadline) {
  RETURN_IF_ERROR(self_->table.Post(id, deadline));
  absl::MutexLock l(&self_->mu);
  self_->queue.push_back(id);
  self_->cv.Signal();
  return absl::OkStatus();
}

absl::StatusOr<TransferStatus> InProcTransport::Poll(TransferId id) {
  return self_->table.Poll(id);
}
absl::Status InProcTransport::Wait(TransferId id, absl::Time deadline) {
  return self_->table.Wait(id, deadline);
}
absl::Status InProcTransport::Cancel(TransferId id) {
  RETURN_IF_ERROR(self_->table.Poll(id).status());
  self_->table.Finish(id, absl::CancelledError(absl::StrCat("transfer ", id, " cancelled")),
                      LiftPolicy::kOnQuiescence);
  return absl::OkStatus();
}
absl::Status InProcTransport::Release(TransferId id) { return self_->table.Release(id); }

void InProcTransport::WorkerLoop() {
  while (true) {
    TransferId id = 0;
    {
      absl::MutexLock l(&self_->mu);
      if (self_->queue.empty() && !self_->stopping) {
        self_->cv.WaitWithTimeout(&self_->mu, absl::Milliseconds(10));
      }
      if (self_->stopping) break;
      if (!self_->queue.empty()) {
        id = self_->queue.front();
        self_->queue.pop_front();
      }
    }
    self_->table.ExpireOverdue();
    if (id != 0) Execute(id);
  }
  // Whatever is still queued never started: quiescent by construction.
  absl::MutexLock l(&self_->mu);
  for (TransferId id : self_->queue) {
    self_->table.Finish(id, absl::CancelledError("transport shut down"), LiftPolicy::kOnTeardown);
  }
}

void InProcTransport::Execute(TransferId id) {
  absl::StatusOr<TransferBatch> batch = self_->table.GetBatch(id);
  if (!batch.ok()) return;
  size_t done = 0;
  absl::Status st;
  for (; done < batch->ops.size(); ++done) {
    absl::StatusOr<TransferStatus> s = self_->table.Poll(id);
    if (!s.ok() || s->state != TransferState::kInProgress) break;
    const TransferOp& op = batch->ops[done];
    std::shared_ptr<Endpoint> peer;
    Endpoint::Remote remote;
    {
      absl::MutexLock l(&self_->mu);
      auto p = self_->peers.find(batch->peer);
      auto r = self_->remotes.find(op.remote);
      if (p == self_->peers.end() || r == self_->remotes.end()) {
        st = MarkRetryable(absl::UnavailableError("peer disconnected"));
        break;
      }
      peer = p->second;
      remote = r->second;
    }
    absl::StatusOr<LocalRegion> local = self_->table.GetRegion(op.local);
    if (!local.ok()) {
      st = local.status();
      break;
    }
    absl::MutexLock exec(&self_->exec_mu);
    absl::ReaderMutexLock alive(&peer->alive_mu);
    if (!peer->alive) {
      st = MarkRetryable(absl::UnavailableError("in-process peer was destroyed"));
      break;
    }
    st = peer->table.AcquireInbound(remote.key.region);
    if (!st.ok()) {
      st = Annotate(st, "remote region was deregistered by its owner");
      break;
    }
    char* l = local->base + op.local_offset;
    char* r = reinterpret_cast<char*>(remote.key.base) + op.remote_offset;
    if (batch->kind == OpKind::kWrite) {
      std::memcpy(r, l, op.length);
    } else {
      std::memcpy(l, r, op.length);
    }
    peer->table.ReleaseInbound(remote.key.region, false, 0);
    self_->table.OpDone(id);
  }
  if (done == batch->ops.size()) {
    self_->table.Finish(id, absl::OkStatus(), LiftPolicy::kOnQuiescence);
    return;
  }
  if (!st.ok()) self_->table.Finish(id, st, LiftPolicy::kOnQuiescence);
  // Ops that never ran are quiescent.
  for (; done < batch->ops.size(); ++done) self_->table.OpDone(id);
}

absl::Status InProcTransport::SendTagged(PeerId peer, uint32_t tag, std::string_view payload,
                                         absl::Time deadline) {
  if (payload.size() > kMaxTaggedMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("tagged payload of ", payload.size(),
                                                   " bytes exceeds ", kMaxTaggedMessageBytes));
  }
  if (self_->clock->Now() >= deadline) {
    return absl::DeadlineExceededError("tagged send deadline already passed");
  }
  std::shared_ptr<Endpoint> other;
  {
    absl::MutexLock l(&self_->mu);
    auto it = self_->peers.find(peer);
    if (it == self_->peers.end()) {
      return absl::NotFoundError(absl::StrCat("peer ", peer, " unknown"));
    }
    other = it->second;
  }
  absl::MutexLock l(&other->mu);
  auto back = other->peer_by_address.find(self_->address);
  other->mailbox.push_back(TaggedMessage{back == other->peer_by_address.end() ? 0 : back->second,
                                         tag, std::string(payload)});
  other->cv.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<TaggedMessage> InProcTransport::ReceiveTagged(uint32_t tag, absl::Time deadline) {
  absl::MutexLock l(&self_->mu);
  while (true) {
    for (auto it = self_->mailbox.begin(); it != self_->mailbox.end(); ++it) {
      if (it->tag == tag) {
        TaggedMessage m = std::move(*it);
        self_->mailbox.erase(it);
        return m;
      }
    }
    absl::Time now = self_->clock->Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no tagged message with tag ", tag, " before the deadline"));
    }
    self_->cv.WaitWithTimeout(&self_->mu, std::min(deadline - now, absl::Milliseconds(20)));
  }
}

}  // namespace kv::transport
