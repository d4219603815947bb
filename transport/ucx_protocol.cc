// UCX engine: memory registration and the data protocols (RMA; tag rendezvous writes and
// reads, and the target side of both). Runs on the engine thread only.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "transport/ucx_engine.h"

namespace kv::transport {

namespace {
struct Entry {
  uint64_t region = 0, offset = 0, length = 0, seq = 0;
};

std::string EncodeReq(Ctrl type, uint32_t sender, uint64_t token, const std::vector<Entry>& es) {
  std::string m(1, static_cast<char>(type));
  PutU32(&m, sender);
  PutU64(&m, token);
  PutU32(&m, static_cast<uint32_t>(es.size()));
  for (const Entry& e : es) {
    PutU64(&m, e.region);
    PutU64(&m, e.offset);
    PutU64(&m, e.length);
    PutU64(&m, e.seq);
  }
  return m;
}

bool DecodeReq(std::string_view body, uint64_t* token, std::vector<Entry>* es) {
  size_t p = 0;
  uint32_t n = 0;
  if (!GetU64(body, &p, token) || !GetU32(body, &p, &n)) return false;
  if ((body.size() - p) / 32 < n) return false;
  es->resize(n);
  for (Entry& e : *es) {
    GetU64(body, &p, &e.region);
    GetU64(body, &p, &e.offset);
    GetU64(body, &p, &e.length);
    GetU64(body, &p, &e.seq);
  }
  return true;
}

void RemoveReq(std::vector<UcxTransport::Engine::Req*>& v, UcxTransport::Engine::Req* r) {
  auto it = std::find(v.begin(), v.end(), r);
  if (it != v.end()) v.erase(it);
}
}  // namespace

absl::StatusOr<RegisteredRegion> UcxTransport::Engine::RegisterOnThread(void* base, size_t length,
                                                                        MemoryKind kind) {
  if (kind == MemoryKind::kDevice && !device_memory_) {
    return absl::UnimplementedError(
        "this UCX build has no CUDA support; device memory cannot be registered");
  }
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  mp.address = base;
  mp.length = length;
  mp.memory_type = kind == MemoryKind::kDevice ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
  ucp_mem_h memh = nullptr;
  RETURN_IF_ERROR(UcsToStatus(ucp_mem_map(context_, &mp, &memh), "ucp_mem_map"));
  void* rkey = nullptr;
  size_t rkey_len = 0;
  ucs_status_t s = ucp_rkey_pack(context_, memh, &rkey, &rkey_len);
  if (s != UCS_OK) {
    ucp_mem_unmap(context_, memh);
    return UcsToStatus(s, "ucp_rkey_pack");
  }
  RegionId id = table_.AddRegion(base, length, kind, memh);
  RemoteKey key{.backend = BackendKind::kUcx,
                .kind = kind,
                .region = id,
                .base = reinterpret_cast<uint64_t>(base),
                .length = length,
                .blob = std::string(static_cast<char*>(rkey), rkey_len)};
  ucp_rkey_buffer_release(rkey);
  return RegisteredRegion{id, PackRemoteKey(key)};
}

absl::Status UcxTransport::Engine::DeregisterOnThread(RegionId id) {
  ASSIGN_OR_RETURN(LocalRegion r, table_.RemoveRegion(id));
  return UcsToStatus(ucp_mem_unmap(context_, static_cast<ucp_mem_h>(r.backend)), "ucp_mem_unmap");
}

absl::StatusOr<RemoteRegionId> UcxTransport::Engine::ImportOnThread(PeerId peer,
                                                                    std::string_view packed) {
  ASSIGN_OR_RETURN(RemoteKey key, UnpackRemoteKey(packed, BackendKind::kUcx));
  if (FindPeer(peer) == nullptr)
    return absl::NotFoundError(absl::StrCat("peer ", peer, " unknown"));
  RemoteRegionId id = next_remote_++;
  {
    absl::MutexLock l(&meta_mu_);
    remote_meta_[id] = RemoteMeta{peer, key.length};
  }
  remotes_[id] = Remote{peer, std::move(key), nullptr};
  return id;
}

absl::StatusOr<UcxOptions::Protocol> UcxTransport::Engine::ProtocolOnThread(PeerId peer) {
  Peer* p = FindPeer(peer);
  if (p == nullptr) return absl::NotFoundError(absl::StrCat("peer ", peer, " unknown"));
  return p->protocol;
}

absl::Status UcxTransport::Engine::PrepareCheck(const TransferBatch& batch) {
  if (batch.ops.empty()) return absl::InvalidArgumentError("transfer batch has no ops");
  absl::MutexLock l(&meta_mu_);
  if (!live_peers_.contains(batch.peer)) {
    return absl::NotFoundError(absl::StrCat("peer ", batch.peer, " unknown"));
  }
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    const TransferOp& op = batch.ops[i];
    RETURN_IF_ERROR(Annotate(table_.CheckRange(op.local, op.local_offset, op.length).status(),
                             absl::StrCat("op ", i)));
    auto it = remote_meta_.find(op.remote);
    if (it == remote_meta_.end() || it->second.peer != batch.peer) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, ": remote region ", op.remote,
                                                     " is not imported from peer ", batch.peer));
    }
    uint64_t len = it->second.length;
    if (op.remote_offset > len || op.length > len - op.remote_offset) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, ": remote range [", op.remote_offset,
                                                     ", +", op.length, ") is outside the ", len,
                                                     "-byte remote region"));
    }
  }
  return absl::OkStatus();
}

void UcxTransport::Engine::StartOnThread(TransferId id, const TransferBatch& batch) {
  absl::StatusOr<TransferStatus> now = table_.Poll(id);
  if (!now.ok() || now->state != TransferState::kInProgress) {
    // Expired, failed by a teardown, or expired and released, before the engine got to it.
    for (size_t i = 0; i < batch.ops.size(); ++i) table_.OpDone(id);  // nothing was posted
    return;
  }
  Peer* peer = FindPeer(batch.peer);
  if (peer == nullptr || peer->failed || peer->closing) {
    absl::Status st = peer != nullptr && peer->failed
                          ? peer->fail_status
                          : MarkRetryable(absl::UnavailableError(
                                absl::StrCat("peer ", batch.peer, " is gone or closing")));
    table_.Finish(id, st, LiftPolicy::kOnQuiescence);
    for (size_t i = 0; i < batch.ops.size(); ++i) table_.OpDone(id);  // nothing was posted
    return;
  }
  Xfer& x = xfers_[id];
  x.peer = batch.peer;
  x.kind = batch.kind;
  x.pending = static_cast<int>(batch.ops.size());
  if (peer->protocol == UcxOptions::Protocol::kRma) {
    PostRma(id, batch, *peer);
  } else if (batch.kind == OpKind::kWrite) {
    PostTagWrite(id, batch, *peer);
  } else {
    PostTagRead(id, batch, *peer);
  }
}

absl::StatusOr<ucp_rkey_h> UcxTransport::Engine::RkeyFor(RemoteRegionId id, Peer& peer) {
  Remote& r = remotes_[id];
  if (r.rkey == nullptr) {
    RETURN_IF_ERROR(
        UcsToStatus(ucp_ep_rkey_unpack(peer.ep, r.key.blob.data(), &r.rkey), "ucp_ep_rkey_unpack"));
  }
  return r.rkey;
}

void UcxTransport::Engine::PostRma(TransferId id, const TransferBatch& batch, Peer& peer) {
  std::vector<ucp_rkey_h> rkeys;
  for (const TransferOp& op : batch.ops) {
    absl::StatusOr<ucp_rkey_h> rk = RkeyFor(op.remote, peer);
    if (!rk.ok()) {
      table_.Finish(id, rk.status(), LiftPolicy::kOnQuiescence);
      for (size_t i = 0; i < batch.ops.size(); ++i) table_.OpDone(id);
      xfers_.erase(id);
      return;
    }
    rkeys.push_back(*rk);
  }
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    const TransferOp& op = batch.ops[i];
    char* local = table_.GetRegion(op.local)->base + op.local_offset;
    uint64_t remote = remotes_[op.remote].key.base + op.remote_offset;
    Req* r = new Req{this, Req::Kind::kXferOp, id};
    ucp_request_param_t p = Param(r, nullptr);
    Submit(r, batch.kind == OpKind::kWrite
                  ? ucp_put_nbx(peer.ep, local, op.length, remote, rkeys[i], &p)
                  : ucp_get_nbx(peer.ep, local, op.length, remote, rkeys[i], &p));
  }
  // Remote completion of every put: the flush. The transfer is done when it completes.
  Req* f = new Req{this, Req::Kind::kXferFlush, id};
  ucp_request_param_t p = Param(f, nullptr);
  Submit(f, ucp_ep_flush_nbx(peer.ep, &p));
}

void UcxTransport::Engine::PostTagWrite(TransferId id, const TransferBatch& batch, Peer& peer) {
  std::vector<Entry> es;
  for (const TransferOp& op : batch.ops) {
    es.push_back({remotes_[op.remote].key.region, op.remote_offset, op.length, next_seq_++});
  }
  SendCtrl(peer, EncodeReq(Ctrl::kWriteReq, peer.id_at_peer, id, es));
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    const TransferOp& op = batch.ops[i];
    char* local = table_.GetRegion(op.local)->base + op.local_offset;
    Req* r = new Req{this, Req::Kind::kXferOp, id};
    ucp_request_param_t p = Param(r, nullptr);
    Submit(r, ucp_tag_send_nbx(peer.ep, local, op.length,
                               MakeTag(TagKind::kWriteData, peer.id_at_peer, es[i].seq), &p));
  }
}

void UcxTransport::Engine::PostTagRead(TransferId id, const TransferBatch& batch, Peer& peer) {
  Xfer& x = xfers_[id];
  x.sealed = true;  // a read is done when every receive has landed
  std::vector<Entry> es;
  for (const TransferOp& op : batch.ops) {
    es.push_back({remotes_[op.remote].key.region, op.remote_offset, op.length, next_seq_++});
  }
  std::vector<Req*> reqs;
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    Req* r = new Req{this, Req::Kind::kXferOp, id};
    x.recvs.push_back(r);
    reqs.push_back(r);
  }
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    const TransferOp& op = batch.ops[i];
    char* local = table_.GetRegion(op.local)->base + op.local_offset;
    ucp_request_param_t p = Param(reqs[i], reqs[i]);
    Submit(reqs[i], ucp_tag_recv_nbx(worker_, local, op.length,
                                     MakeTag(TagKind::kReadData, 0, es[i].seq), kFullMask, &p));
  }
  SendCtrl(peer, EncodeReq(Ctrl::kReadReq, peer.id_at_peer, id, es));
}

void UcxTransport::Engine::MaybeSeal(TransferId id) {
  auto it = xfers_.find(id);
  if (it == xfers_.end()) return;
  Xfer& x = it->second;
  if (x.pending > 0) return;
  if (x.sealed) table_.Finish(id, absl::OkStatus(), LiftPolicy::kOnQuiescence);
  absl::StatusOr<TransferStatus> s = table_.Poll(id);
  bool terminal = !s.ok() || (s->state != TransferState::kInProgress);
  if (terminal) xfers_.erase(it);
}

void UcxTransport::Engine::OnXferReq(Req* r, absl::Status st) {
  auto it = xfers_.find(r->id);
  if (r->kind == Req::Kind::kXferOp) table_.OpDone(r->id);
  if (it == xfers_.end()) return;
  Xfer& x = it->second;
  if (r->kind == Req::Kind::kXferOp) {
    x.pending--;
    RemoveReq(x.recvs, r);
  } else if (st.ok()) {
    x.sealed = true;  // the flush completed
  }
  if (!st.ok() && !absl::IsCancelled(st)) {
    // A request failed in UCX: the endpoint is broken; only teardown proves quiescence.
    table_.Finish(r->id, Annotate(st, absl::StrCat("transfer to peer ", x.peer)),
                  LiftPolicy::kOnTeardown);
    CancelRecvs(x.recvs);
  }
  MaybeSeal(r->id);
}

void UcxTransport::Engine::CancelRecvs(std::vector<Req*>& recvs) {
  for (Req* r : recvs) {
    if (r->handle != nullptr) ucp_request_cancel(worker_, r->handle);
  }
}

void UcxTransport::Engine::HandleWriteAck(std::string_view body, bool nack) {
  size_t p = 0;
  uint64_t token = 0;
  if (!GetU64(body, &p, &token)) return;
  bool ok = false;
  if (!nack && p < body.size()) ok = body[p++] != 0;
  std::string why(body.substr(std::min(p, body.size())));
  auto it = xfers_.find(token);
  if (it == xfers_.end()) return;  // cancelled or expired earlier
  if (ok) {
    it->second.sealed = true;
  } else {
    table_.Finish(token,
                  absl::FailedPreconditionError(absl::StrCat("peer rejected the transfer: ", why)),
                  LiftPolicy::kOnQuiescence);
    CancelRecvs(it->second.recvs);
  }
  MaybeSeal(token);
}

void UcxTransport::Engine::HandleWriteReq(Peer& peer, std::string_view body) {
  uint64_t token = 0;
  std::vector<Entry> es;
  if (!DecodeReq(body, &token, &es)) {
    log::Warn("ucx_bad_write_req", "peer", peer.id);
    return;
  }
  uint64_t iid = next_inbound_++;
  Inbound& in = inbound_[iid];
  in.peer = peer.id;
  in.token = token;
  in.pending = static_cast<int>(es.size());
  std::vector<Req*> reqs;
  std::vector<char*> dsts;
  for (const Entry& e : es) {
    Req* r = new Req{this, Req::Kind::kInboundRecv, iid};
    absl::StatusOr<LocalRegion> region = table_.CheckRange(e.region, e.offset, e.length);
    if (region.ok() && table_.AcquireInbound(e.region).ok()) {
      r->region = e.region;
      dsts.push_back(region->base + e.offset);
    } else {
      // Consume the message so it does not linger as unexpected; a small buffer suffices
      // (UCX completes it as truncated), so a hostile length cannot make us allocate.
      if (in.error.ok()) {
        in.error = region.ok() ? absl::NotFoundError("region gone") : region.status();
      }
      r->buffer.resize(std::min<uint64_t>(e.length, 4096));
      dsts.push_back(r->buffer.data());
    }
    in.recvs.push_back(r);
    reqs.push_back(r);
  }
  for (size_t i = 0; i < es.size(); ++i) {
    ucp_request_param_t p = Param(reqs[i], reqs[i]);
    size_t len = reqs[i]->region != 0 ? es[i].length : reqs[i]->buffer.size();
    Submit(reqs[i],
           ucp_tag_recv_nbx(worker_, dsts[i], len, MakeTag(TagKind::kWriteData, peer.id, es[i].seq),
                            kFullMask, &p));
  }
}

void UcxTransport::Engine::HandleReadReq(Peer& peer, std::string_view body) {
  uint64_t token = 0;
  std::vector<Entry> es;
  if (!DecodeReq(body, &token, &es)) return;
  std::vector<char*> srcs;
  for (const Entry& e : es) {
    absl::StatusOr<LocalRegion> region = table_.CheckRange(e.region, e.offset, e.length);
    if (!region.ok()) {
      std::string nack(1, static_cast<char>(Ctrl::kReadNack));
      PutU32(&nack, peer.id_at_peer);
      PutU64(&nack, token);
      nack += std::string(region.status().message());
      SendCtrl(peer, std::move(nack));
      return;
    }
    srcs.push_back(region->base + e.offset);
  }
  for (size_t i = 0; i < es.size(); ++i) {
    if (!table_.AcquireInbound(es[i].region).ok()) continue;
    Req* r = new Req{this, Req::Kind::kInboundSend, 0};
    r->region = es[i].region;
    ucp_request_param_t p = Param(r, nullptr);
    Submit(r, ucp_tag_send_nbx(peer.ep, srcs[i], es[i].length,
                               MakeTag(TagKind::kReadData, 0, es[i].seq), &p));
  }
}

void UcxTransport::Engine::OnInboundReq(Req* r, absl::Status st) {
  // The request completed (landed, failed or was cancelled): UCX is done with the memory.
  if (r->region != 0) table_.ReleaseInbound(r->region, false, 0);
  if (r->kind != Req::Kind::kInboundRecv) return;
  auto it = inbound_.find(r->id);
  if (it == inbound_.end()) return;
  Inbound& in = it->second;
  RemoveReq(in.recvs, r);
  in.pending--;
  if (!st.ok() && in.error.ok()) in.error = st;
  if (in.pending > 0) return;
  Peer* peer = FindPeer(in.peer);
  if (peer != nullptr && !peer->failed && !peer->closing) {
    std::string ack(1, static_cast<char>(Ctrl::kWriteAck));
    PutU32(&ack, peer->id_at_peer);
    PutU64(&ack, in.token);
    ack.push_back(in.error.ok() ? 1 : 0);
    ack += std::string(in.error.message());
    SendCtrl(*peer, std::move(ack));
  }
  inbound_.erase(it);
}

absl::Status UcxTransport::Engine::CancelOnThread(TransferId id, const absl::Status& why) {
  RETURN_IF_ERROR(table_.Poll(id).status());
  table_.Finish(id, why, LiftPolicy::kOnQuiescence);
  auto it = xfers_.find(id);
  if (it != xfers_.end()) {
    CancelRecvs(it->second.recvs);
    MaybeSeal(id);
  }
  return absl::OkStatus();
}

absl::Status UcxTransport::Engine::SendUserOnThread(PeerId id, uint32_t tag, std::string payload,
                                                    std::shared_ptr<Waiter> waiter) {
  Peer* peer = FindPeer(id);
  if (peer == nullptr) return absl::NotFoundError(absl::StrCat("peer ", id, " unknown"));
  if (peer->failed) return peer->fail_status;
  Req* r = new Req{this, Req::Kind::kUserSend, id};
  r->buffer = std::move(payload);
  r->waiter = std::move(waiter);
  ucp_request_param_t p = Param(r, nullptr);
  Submit(r, ucp_tag_send_nbx(peer->ep, r->buffer.data(), r->buffer.size(),
                             MakeTag(TagKind::kUser, peer->id_at_peer, tag), &p));
  return absl::OkStatus();
}

}  // namespace kv::transport
