// UCX engine: endpoints, the HELLO handshake, teardown, and control-message dispatch.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "transport/ucx_engine.h"

namespace kv::transport {

namespace {

void ErrCallback(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* a = static_cast<ErrArg*>(arg);
  a->engine->OnPeerError(a->peer, status);
}

struct ParsedAddress {
  uint64_t instance = 0;
  std::string worker;
};

absl::StatusOr<ParsedAddress> ParseAddress(std::string_view blob) {
  if (blob.size() < 4 + 8 + 4 + 8 || std::memcmp(blob.data(), "KVUA", 4) != 0) {
    return absl::InvalidArgumentError("not a kvstrata UCX address (bad size or magic)");
  }
  size_t body = blob.size() - 8, pos = body;
  uint64_t sum = 0;
  GetU64(blob, &pos, &sum);
  if (sum != Xxh3_64(blob.data(), body)) {
    return absl::InvalidArgumentError("UCX address checksum mismatch (truncated or corrupted)");
  }
  ParsedAddress a;
  pos = 4;
  uint32_t len = 0;
  GetU64(blob, &pos, &a.instance);
  GetU32(blob, &pos, &len);
  if (body - pos != len) return absl::InvalidArgumentError("UCX address length mismatch");
  a.worker.assign(blob.data() + pos, len);
  return a;
}

std::string CtrlHeader(Ctrl type, uint32_t sender_id) {
  std::string m(1, static_cast<char>(type));
  PutU32(&m, sender_id);
  return m;
}

}  // namespace

std::string_view ProtocolName(UcxOptions::Protocol p) {
  switch (p) {
    case UcxOptions::Protocol::kAuto:
      return "auto";
    case UcxOptions::Protocol::kRma:
      return "rma";
    case UcxOptions::Protocol::kTag:
      return "tag";
  }
  return "unknown";
}

UcxOptions::Protocol UcxTransport::Engine::PickProtocol(ucp_ep_h ep) const {
  char* text = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&text, &len);
  if (f == nullptr) return UcxOptions::Protocol::kTag;
  ucp_ep_print_info(ep, f);
  fclose(f);
  std::string info(text, len);
  free(text);
  // UCX lists a "put[N]" line per RMA lane with its protocols. RMA pays off only with a
  // zero-copy put lane (RDMA, CMA, xpmem, cuda_ipc). Without one, put is emulated over active
  // messages (TCP in 1.13: ~0.2 GB/s) or done as bounce-buffer copies (posix with memory the
  // caller allocated); tag rendezvous then moves the bytes zero-copy and was measured faster
  // (docs/benchmarks.md, `kvstrata bench transport`).
  bool rma_native = false;
  size_t pos = 0;
  while ((pos = info.find("put[", pos)) != std::string::npos) {
    size_t eol = info.find('\n', pos);
    std::string put_line = info.substr(pos, eol == std::string::npos ? eol : eol - pos);
    int lane = std::atoi(info.c_str() + pos + 4);
    size_t at = info.find(absl::StrCat("lane[", lane, "]:"));
    if (at != std::string::npos && put_line.find("zcopy") != std::string::npos) {
      std::string line = info.substr(at, info.find('\n', at) - at);
      if (line.find("tcp/") == std::string::npos) rma_native = true;
    }
    pos += 4;
  }
  log::Debug("ucx_ep_info", "rma_native", rma_native, "info", info);
  return rma_native ? UcxOptions::Protocol::kRma : UcxOptions::Protocol::kTag;
}

UcxTransport::Engine::Peer* UcxTransport::Engine::FindPeer(PeerId id) {
  auto it = peers_.find(id);
  return it == peers_.end() ? nullptr : &it->second;
}

absl::StatusOr<PeerId> UcxTransport::Engine::EnsurePeer(uint64_t instance,
                                                        std::string_view worker_address) {
  auto known = peer_by_instance_.find(instance);
  if (known != peer_by_instance_.end()) {
    Peer* p = FindPeer(known->second);
    if (p != nullptr && !p->failed && !p->closing) return known->second;
  }
  PeerId id = next_peer_++;
  Peer peer;
  peer.id = id;
  peer.instance = instance;
  peer.err_arg = new ErrArg{this, id};
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = ErrCallback;
  ep.err_handler.arg = peer.err_arg;
  ucs_status_t s = ucp_ep_create(worker_, &ep, &peer.ep);
  if (s != UCS_OK) {
    delete peer.err_arg;
    return Annotate(UcsToStatus(s, "ucp_ep_create"), "connect");
  }
  peer.protocol =
      options_.protocol == UcxOptions::Protocol::kAuto ? PickProtocol(peer.ep) : options_.protocol;
  log::Info("ucx_peer_connected", "peer", id, "protocol", std::string(ProtocolName(peer.protocol)));
  peers_[id] = std::move(peer);
  peer_by_instance_[instance] = id;
  absl::MutexLock l(&meta_mu_);
  live_peers_[id] = true;
  return id;
}

absl::Status UcxTransport::Engine::ConnectOnThread(std::string_view address,
                                                   std::shared_ptr<Waiter> waiter) {
  ASSIGN_OR_RETURN(ParsedAddress a, ParseAddress(address));
  if (a.instance == instance_) {
    return absl::InvalidArgumentError("cannot connect a UCX transport to itself");
  }
  ASSIGN_OR_RETURN(PeerId id, EnsurePeer(a.instance, a.worker));
  Peer& peer = peers_[id];
  if (peer.id_at_peer != 0) {
    waiter->Complete(absl::OkStatus(), id);
    return absl::OkStatus();
  }
  uint64_t nonce = (uint64_t{std::random_device{}()} << 32) | next_seq_++;
  connects_[nonce] = waiter;
  connect_peer_[nonce] = id;
  std::string m = CtrlHeader(Ctrl::kHello, 0);
  PutU64(&m, instance_);
  PutU64(&m, nonce);
  PutU32(&m, static_cast<uint32_t>(id));
  m += address_;
  SendCtrl(peer, std::move(m));
  return absl::OkStatus();
}

void UcxTransport::Engine::SendCtrl(Peer& peer, std::string msg) {
  Req* r = new Req{this, Req::Kind::kCtrlSend, peer.id};
  r->buffer = std::move(msg);
  ucp_request_param_t p = Param(r, nullptr);
  Submit(r, ucp_tag_send_nbx(peer.ep, r->buffer.data(), r->buffer.size(),
                             MakeTag(TagKind::kCtrl, 0, 0), &p));
}

void UcxTransport::Engine::HandleCtrl(std::string_view msg) {
  size_t pos = 1;
  uint32_t sender = 0;
  if (msg.empty() || !GetU32(msg, &pos, &sender)) return;
  Ctrl type = static_cast<Ctrl>(msg[0]);
  std::string_view body = msg.substr(pos);
  if (type == Ctrl::kHello) {
    size_t p = 0;
    uint64_t instance = 0, nonce = 0;
    uint32_t their_id_for_me = 0;
    if (!GetU64(body, &p, &instance) || !GetU64(body, &p, &nonce) ||
        !GetU32(body, &p, &their_id_for_me)) {
      return;
    }
    absl::StatusOr<ParsedAddress> a = ParseAddress(body.substr(p));
    if (!a.ok()) return;
    absl::StatusOr<PeerId> id = EnsurePeer(instance, a->worker);
    if (!id.ok()) {
      log::Warn("ucx_hello_rejected", "error", std::string(id.status().message()));
      return;
    }
    Peer& peer = peers_[*id];
    peer.id_at_peer = their_id_for_me;
    std::string ack = CtrlHeader(Ctrl::kHelloAck, peer.id_at_peer);
    PutU64(&ack, nonce);
    PutU32(&ack, static_cast<uint32_t>(*id));
    SendCtrl(peer, std::move(ack));
    return;
  }
  if (type == Ctrl::kHelloAck) {
    size_t p = 0;
    uint64_t nonce = 0;
    uint32_t my_id_there = 0;
    if (!GetU64(body, &p, &nonce) || !GetU32(body, &p, &my_id_there)) return;
    auto w = connects_.find(nonce);
    auto pid = connect_peer_.find(nonce);
    if (w == connects_.end() || pid == connect_peer_.end()) return;
    if (Peer* peer = FindPeer(pid->second)) {
      peer->id_at_peer = my_id_there;
      w->second->Complete(absl::OkStatus(), peer->id);
    }
    connects_.erase(w);
    connect_peer_.erase(pid);
    return;
  }
  Peer* peer = FindPeer(sender);
  if (peer == nullptr) {
    log::Warn("ucx_ctrl_from_unknown_peer", "sender", sender, "type", static_cast<int>(type));
    return;
  }
  switch (type) {
    case Ctrl::kWriteReq:
      HandleWriteReq(*peer, body);
      break;
    case Ctrl::kReadReq:
      HandleReadReq(*peer, body);
      break;
    case Ctrl::kWriteAck:
      HandleWriteAck(body, false);
      break;
    case Ctrl::kReadNack:
      HandleWriteAck(body, true);
      break;
    default:
      log::Warn("ucx_ctrl_unknown_type", "type", static_cast<int>(type));
  }
}

void UcxTransport::Engine::OnPeerError(PeerId id, ucs_status_t status) {
  Peer* peer = FindPeer(id);
  if (peer == nullptr || peer->failed) return;
  peer->failed = true;
  peer->fail_status = Annotate(UcsToStatus(status, "endpoint failed"), absl::StrCat("peer ", id));
  if (!IsRetryable(peer->fail_status)) {
    peer->fail_status = MarkRetryable(absl::UnavailableError(peer->fail_status.message()));
  }
  log::Warn("ucx_peer_failed", "peer", id, "error", std::string(peer->fail_status.message()));
  for (TransferId t : table_.InProgressFor(id)) {
    table_.Finish(t, peer->fail_status, LiftPolicy::kOnTeardown);
    auto x = xfers_.find(t);
    if (x != xfers_.end()) CancelRecvs(x->second.recvs);
  }
  for (auto& [iid, in] : inbound_) {
    if (in.peer == id) CancelRecvs(in.recvs);
  }
  for (auto& [nonce, pid] : connect_peer_) {
    if (pid != id) continue;
    auto w = connects_.find(nonce);
    if (w != connects_.end()) w->second->Complete(peer->fail_status);
  }
}

absl::Status UcxTransport::Engine::DisconnectOnThread(PeerId id, std::shared_ptr<Waiter> waiter) {
  Peer* peer = FindPeer(id);
  if (peer == nullptr) return absl::NotFoundError(absl::StrCat("peer ", id, " unknown"));
  peer->close_waiters.push_back(std::move(waiter));
  if (!peer->closing) CloseEndpoint(*peer);
  return absl::OkStatus();
}

void UcxTransport::Engine::CloseEndpoint(Peer& peer) {
  peer.closing = true;
  Req* r = new Req{this, Req::Kind::kClose, peer.id};
  ucp_request_param_t p = Param(r, nullptr);
  p.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  Submit(r, ucp_ep_close_nbx(peer.ep, &p));
}

void UcxTransport::Engine::FinishTeardown(PeerId id) {
  Peer* peer = FindPeer(id);
  if (peer == nullptr) return;
  {
    absl::MutexLock l(&meta_mu_);
    live_peers_.erase(id);
    for (auto it = remote_meta_.begin(); it != remote_meta_.end();) {
      if (it->second.peer == id) {
        remote_meta_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (auto it = remotes_.begin(); it != remotes_.end();) {
    if (it->second.peer == id) {
      if (it->second.rkey) ucp_rkey_destroy(it->second.rkey);
      remotes_.erase(it++);
    } else {
      ++it;
    }
  }
  for (auto& [xid, x] : xfers_) {
    if (x.peer == id) CancelRecvs(x.recvs);
  }
  for (auto& [iid, in] : inbound_) {
    if (in.peer == id) CancelRecvs(in.recvs);
  }
  table_.PeerTornDown(
      id, MarkRetryable(absl::UnavailableError(absl::StrCat("peer ", id, " disconnected"))));
  for (auto& w : peer->close_waiters) w->Complete(absl::OkStatus());
  auto inst = peer_by_instance_.find(peer->instance);
  if (inst != peer_by_instance_.end() && inst->second == id) peer_by_instance_.erase(inst);
  for (auto it = connect_peer_.begin(); it != connect_peer_.end();) {
    if (it->second == id) {
      auto w = connects_.find(it->first);
      if (w != connects_.end()) {
        w->second->Complete(MarkRetryable(absl::UnavailableError("peer disconnected")));
        connects_.erase(w);
      }
      connect_peer_.erase(it++);
    } else {
      ++it;
    }
  }
  delete peer->err_arg;
  log::Info("ucx_peer_torn_down", "peer", id);
  peers_.erase(id);
}

}  // namespace kv::transport
