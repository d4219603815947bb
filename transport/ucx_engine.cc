// The UCX engine: setup, the progress loop, commands, peers and control messages. The data
// protocols live in ucx_protocol.cc.
#include "transport/ucx_engine.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"

namespace kv::transport {

namespace {

constexpr char kAddrMagic[4] = {'K', 'V', 'U', 'A'};

uint64_t RandomU64() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
}

}  // namespace

absl::Status UcsToStatus(ucs_status_t s, std::string_view what) {
  if (s == UCS_OK) return absl::OkStatus();
  std::string msg = absl::StrCat(std::string(what), ": ", ucs_status_string(s));
  switch (s) {
    case UCS_ERR_CANCELED:
      return absl::CancelledError(msg);
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_IO_ERROR:
      return MarkRetryable(absl::UnavailableError(msg));
    case UCS_ERR_TIMED_OUT:
      return MarkRetryable(absl::DeadlineExceededError(msg));
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
      return MarkRetryable(absl::ResourceExhaustedError(msg));
    case UCS_ERR_UNSUPPORTED:
      return absl::UnimplementedError(msg);
    case UCS_ERR_INVALID_PARAM:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

void UcxTransport::Engine::Waiter::Complete(absl::Status s, uint64_t v) {
  absl::MutexLock l(&mu);
  if (done) return;
  done = true;
  status = std::move(s);
  value = v;
}

absl::StatusOr<uint64_t> UcxTransport::Engine::Waiter::Await(Clock* clock, absl::Time deadline) {
  absl::MutexLock l(&mu);
  while (!done) {
    absl::Time now = clock->Now();
    if (now >= deadline) return absl::DeadlineExceededError("no answer before the deadline");
    // Sliced so a FakeClock advanced elsewhere is noticed.
    mu.AwaitWithTimeout(absl::Condition(&done), std::min(deadline - now, absl::Milliseconds(20)));
  }
  if (!status.ok()) return status;
  return value;
}

UcxTransport::Engine::Engine(const UcxOptions& options)
    : options_(options), clock_(options.clock ? options.clock : Clock::Real()), table_(clock_) {}

absl::StatusOr<std::unique_ptr<UcxTransport::Engine>> UcxTransport::Engine::Create(
    const UcxOptions& options) {
  std::unique_ptr<Engine> e(new Engine(options));
  RETURN_IF_ERROR(e->Init());
  Engine* raw = e.get();
  e->thread_ = std::thread([raw] { raw->Loop(); });
  return e;
}

absl::Status UcxTransport::Engine::Init() {
  // Shared-memory transports detect a dead peer only with error handling on; without it UCX
  // 1.13 refuses them for UCP_ERR_HANDLING_MODE_PEER endpoints. These are transport-level
  // settings that ucp_config_modify cannot reach, so they go through the environment
  // (without overriding an explicit setting).
  setenv("UCX_POSIX_ERROR_HANDLING", "y", 0);
  setenv("UCX_SYSV_ERROR_HANDLING", "y", 0);
  // Likewise CMA: with error handling on, UCX 1.13 admits a zero-copy (rma_bw) lane only when
  // its memory domain can invalidate registrations, which CMA's does only when asked. Without
  // it the shared-memory endpoint has no CMA lane at all: tag rendezvous falls back to copying
  // through the posix FIFO twice, and put is emulated (measured 0.15-0.8 GB/s vs 3-10 GB/s).
  setenv("UCX_CMA_MEMORY_INVALIDATE", "y", 0);
  ucp_config_t* cfg = nullptr;
  RETURN_IF_ERROR(UcsToStatus(ucp_config_read(nullptr, nullptr, &cfg), "ucp_config_read"));
  if (std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    (void)ucp_config_modify(cfg, "KEEPALIVE_INTERVAL", "1s");
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  ucs_status_t s = ucp_init(&params, cfg, &context_);
  ucp_config_release(cfg);
  if (s != UCS_OK) {
    return MarkRetryable(absl::UnavailableError(
        absl::StrCat("ucp_init failed (check UCX_TLS / UCX_NET_DEVICES): ", ucs_status_string(s))));
  }
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(context_, &attr) == UCS_OK) {
    device_memory_ = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  }
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  RETURN_IF_ERROR(UcsToStatus(ucp_worker_create(context_, &wp, &worker_), "ucp_worker_create"));
  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  RETURN_IF_ERROR(
      UcsToStatus(ucp_worker_get_address(worker_, &addr, &addr_len), "ucp_worker_get_address"));
  instance_ = RandomU64();
  address_.assign(kAddrMagic, 4);
  PutU64(&address_, instance_);
  PutU32(&address_, static_cast<uint32_t>(addr_len));
  address_.append(reinterpret_cast<const char*>(addr), addr_len);
  PutU64(&address_, Xxh3_64(address_.data(), address_.size()));
  ucp_worker_release_address(worker_, addr);

  RETURN_IF_ERROR(UcsToStatus(ucp_worker_get_efd(worker_, &worker_fd_), "ucp_worker_get_efd"));
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return ErrnoToStatus(errno, "epoll/eventfd");
  for (int fd : {worker_fd_, wake_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return ErrnoToStatus(errno, "epoll_ctl");
  }
  return absl::OkStatus();
}

UcxTransport::Engine::~Engine() {
  if (thread_.joinable()) {
    // Bounded teardown: force-close every endpoint, wait for the closes, stop the thread.
    (void)Run([this] {
      std::vector<PeerId> ids;
      for (auto& [id, peer] : peers_) ids.push_back(id);
      for (PeerId id : ids) {  // a close may complete inline and erase the peer
        Peer* peer = FindPeer(id);
        if (peer != nullptr && !peer->closing) CloseEndpoint(*peer);
      }
      return absl::OkStatus();
    });
    absl::Time limit = absl::Now() + options_.close_timeout;
    while (absl::Now() < limit) {
      auto empty = std::make_shared<bool>(false);
      (void)Run([this, empty] {
        *empty = peers_.empty();
        return absl::OkStatus();
      });
      if (*empty) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    stop_ = true;
    Wake();
    thread_.join();
  }
  for (auto& [id, r] : remotes_) {
    if (r.rkey) ucp_rkey_destroy(r.rkey);
  }
  for (auto& [id, peer] : peers_) {
    if (!peer.closing) log::Warn("ucx_endpoint_not_closed", "peer", id);
  }
  if (worker_) ucp_worker_destroy(worker_);
  // The worker is gone, so nothing touches the caller's memory any more: unmap what is left.
  for (const LocalRegion& r : table_.AllRegions()) {
    if (r.backend) ucp_mem_unmap(context_, static_cast<ucp_mem_h>(r.backend));
  }
  if (context_) ucp_cleanup(context_);
  for (auto& [id, peer] : peers_) delete peer.err_arg;
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void UcxTransport::Engine::Wake() {
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

void UcxTransport::Engine::Enqueue(std::function<void()> fn) {
  {
    absl::MutexLock l(&cmd_mu_);
    cmds_.push_back(std::move(fn));
  }
  // Pairs with Loop(): it sets sleeping_ and then re-checks the queue before it sleeps, so
  // either it sees this command or this sees it sleeping (both are sequentially consistent).
  if (sleeping_.load()) Wake();
}

absl::Status UcxTransport::Engine::Run(std::function<absl::Status()> fn) {
  auto w = std::make_shared<Waiter>();
  Enqueue([w, fn = std::move(fn)] { w->Complete(fn()); });
  absl::StatusOr<uint64_t> r = w->Await(Clock::Real(), absl::Now() + options_.command_timeout);
  if (absl::IsDeadlineExceeded(r.status())) {
    return absl::DeadlineExceededError("UCX engine did not run the command in time");
  }
  return r.status();
}

bool UcxTransport::Engine::RunCommands() {
  std::deque<std::function<void()>> cmds;
  {
    absl::MutexLock l(&cmd_mu_);
    cmds.swap(cmds_);
  }
  for (auto& c : cmds) c();
  return !cmds.empty();
}

void UcxTransport::Engine::Loop() {
  using Steady = std::chrono::steady_clock;
  auto last_activity = Steady::now();
  auto last_expiry = last_activity;
  const auto spin = std::chrono::nanoseconds(absl::ToInt64Nanoseconds(options_.spin));
  while (!stop_) {
    bool active = RunCommands();
    for (int i = 0; i < 64 && ucp_worker_progress(worker_) != 0; ++i) active = true;
    active |= ProbeIncoming();
    auto now = Steady::now();
    if (now - last_expiry >= std::chrono::milliseconds(1)) {  // O(transfers): not every spin
      ExpireDeadlines();
      last_expiry = now;
    }
    if (active) {
      last_activity = now;
      continue;
    }
    // Spin briefly after traffic (latency), then sleep on the event fds (no idle core burn).
    // Each idle spin yields the core: on a busy machine the peer's and the caller's threads,
    // whose progress this one waits for, run instead of this one burning the time slice
    // (measured on 2 loaded cores: 2-page shm handoff ~750 us with a plain spin).
    if (now - last_activity < spin) {
      std::this_thread::yield();
      continue;
    }
    sleeping_.store(true);
    bool queued = false;
    {
      absl::MutexLock l(&cmd_mu_);
      queued = !cmds_.empty();
    }
    if (queued || ucp_worker_arm(worker_) == UCS_ERR_BUSY) {
      sleeping_.store(false);
      continue;
    }
    // With requests in flight, sleep at most 1 ms: in UCX 1.13 the shared-memory transports
    // did not always signal the event fd for completions (measured: a 2-page handoff took
    // ~540 us with long sleeps, ~70 us with 1 ms ones). Idle, wake every 5 ms at most.
    absl::Duration until = table_.NextDeadline() - clock_->Now();
    int64_t cap = live_reqs_ > 0 ? 1 : 5;
    int timeout_ms =
        static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(until) + 1, 1, cap));
    epoll_event evs[4];
    (void)epoll_wait(epoll_fd_, evs, 4, timeout_ms);
    sleeping_.store(false);
    uint64_t drained;
    while (read(wake_fd_, &drained, sizeof(drained)) > 0) {
    }
  }
}

void UcxTransport::Engine::ExpireDeadlines() {
  for (TransferId id : table_.ExpireOverdue()) {
    auto it = xfers_.find(id);
    if (it != xfers_.end()) CancelRecvs(it->second.recvs);
  }
}

namespace {
void SendCb(void* request, ucs_status_t status, void* user_data) {
  auto* r = static_cast<UcxTransport::Engine::Req*>(user_data);
  r->engine->OnReqDone(r, status);
  ucp_request_free(request);
}
void RecvCb(void* request, ucs_status_t status, const ucp_tag_recv_info_t*, void* user_data) {
  auto* r = static_cast<UcxTransport::Engine::Req*>(user_data);
  r->engine->OnReqDone(r, status);
  ucp_request_free(request);
}
}  // namespace

ucp_request_param_t UcxTransport::Engine::Param(Req* r, void* recv) {
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  if (recv != nullptr) {
    p.cb.recv = RecvCb;
  } else {
    p.cb.send = SendCb;
  }
  p.user_data = r;
  return p;
}

void UcxTransport::Engine::Submit(Req* r, ucs_status_ptr_t p) {
  if (UCS_PTR_IS_ERR(p)) {
    OnReqDone(r, UCS_PTR_STATUS(p));
  } else if (p == nullptr) {
    OnReqDone(r, UCS_OK);
  } else {
    r->handle = p;
    live_reqs_++;
  }
}

bool UcxTransport::Engine::ProbeIncoming() {
  bool any = false;
  for (TagKind kind : {TagKind::kCtrl, TagKind::kUser}) {
    for (int i = 0; i < 16; ++i) {
      ucp_tag_recv_info_t info{};
      ucp_tag_message_h msg = ucp_tag_probe_nb(worker_, MakeTag(kind, 0, 0), kKindMask, 1, &info);
      if (msg == nullptr) break;
      any = true;
      Req* r = new Req{this, kind == TagKind::kCtrl ? Req::Kind::kCtrlRecv : Req::Kind::kUserRecv};
      r->tag = info.sender_tag;
      r->buffer.resize(info.length);
      ucp_request_param_t p = Param(r, r);
      Submit(r, ucp_tag_msg_recv_nbx(worker_, r->buffer.data(), info.length, msg, &p));
    }
  }
  return any;
}

void UcxTransport::Engine::OnReqDone(Req* r, ucs_status_t status) {
  if (r->handle != nullptr) live_reqs_--;
  r->handle = nullptr;
  absl::Status st = UcsToStatus(status, "UCX request");
  switch (r->kind) {
    case Req::Kind::kXferOp:
    case Req::Kind::kXferFlush:
      OnXferReq(r, st);
      break;
    case Req::Kind::kInboundRecv:
    case Req::Kind::kInboundSend:
      OnInboundReq(r, st);
      break;
    case Req::Kind::kCtrlSend:
      if (!st.ok()) log::Debug("ucx_ctrl_send_failed", "error", std::string(st.message()));
      break;
    case Req::Kind::kCtrlRecv:
      if (st.ok()) HandleCtrl(r->buffer);
      break;
    case Req::Kind::kUserSend:
      r->waiter->Complete(st);
      break;
    case Req::Kind::kUserRecv:
      if (st.ok() && r->buffer.size() <= kMaxTaggedMessageBytes) {
        absl::MutexLock l(&mail_mu_);
        mailbox_.push_back(TaggedMessage{(r->tag >> 40) & 0xfffff,
                                         static_cast<uint32_t>(r->tag & 0xffffffffu),
                                         std::move(r->buffer)});
        mail_cv_.SignalAll();
      } else if (st.ok()) {
        log::Warn("ucx_oversized_tagged_message_dropped", "bytes", r->buffer.size());
      }
      break;
    case Req::Kind::kClose:
      FinishTeardown(r->id);
      break;
  }
  delete r;
}

absl::StatusOr<TaggedMessage> UcxTransport::Engine::TakeUserMessage(uint32_t tag,
                                                                    absl::Time deadline) {
  absl::MutexLock l(&mail_mu_);
  while (true) {
    for (auto it = mailbox_.begin(); it != mailbox_.end(); ++it) {
      if (it->tag == tag) {
        TaggedMessage m = std::move(*it);
        mailbox_.erase(it);
        return m;
      }
    }
    absl::Time now = clock_->Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no tagged message with tag ", tag, " before the deadline"));
    }
    mail_cv_.WaitWithTimeout(&mail_mu_, std::min(deadline - now, absl::Milliseconds(20)));
  }
}

}  // namespace kv::transport
