// Internal to the UCX backend: the engine behind UcxTransport (see ucx_transport.h for the
// design). Everything below `// ---- engine-thread state ----` is touched only by the
// progress thread; API threads reach it through Run(), which executes a closure there and
// waits for it (bounded by UcxOptions::command_timeout). The TransferTable and the mailbox
// are shared and carry their own locks.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "transport/remote_key.h"
#include "transport/transfer_table.h"
#include "transport/ucx_transport.h"

namespace kv::transport {

// Maps a UCX status to an absl status with `what` and ucs_status_string in the message.
absl::Status UcsToStatus(ucs_status_t s, std::string_view what);

// 64-bit tag layout: kind (4 bits) | id (20 bits) | sequence or user tag (40 bits).
enum class TagKind : uint64_t { kCtrl = 1, kWriteData = 2, kReadData = 3, kUser = 4 };
inline ucp_tag_t MakeTag(TagKind kind, uint64_t id, uint64_t seq) {
  return (static_cast<uint64_t>(kind) << 60) | ((id & 0xfffff) << 40) | (seq & 0xffffffffffull);
}
inline constexpr ucp_tag_t kKindMask = 0xfull << 60;
inline constexpr ucp_tag_t kFullMask = ~0ull;

// Control message types (first byte of a kCtrl message).
enum class Ctrl : uint8_t {
  kHello = 1,
  kHelloAck = 2,
  kWriteReq = 3,
  kWriteAck = 4,
  kReadReq = 5,
  kReadNack = 6
};

struct ErrArg;  // the err_handler argument of one endpoint (below)

class UcxTransport::Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const UcxOptions& options);
  ~Engine();

  // Runs `fn` on the engine thread and returns its status; DeadlineExceeded if it did not
  // run within command_timeout (it may still run later; closures capture by value).
  absl::Status Run(std::function<absl::Status()> fn);
  // Queues `fn` for the engine thread and returns at once (commands run in queue order).
  void Enqueue(std::function<void()> fn);

  TransferTable& table() { return table_; }
  Clock* clock() const { return clock_; }
  const UcxOptions& options() const { return options_; }
  const std::string& address() const { return address_; }
  bool device_memory() const { return device_memory_; }

  // ---- called on the engine thread (through Run) ----
  absl::StatusOr<RegisteredRegion> RegisterOnThread(void* base, size_t length, MemoryKind kind);
  absl::Status DeregisterOnThread(RegionId id);
  // Starts a connect; `waiter` is completed with the PeerId when HELLO_ACK arrives.
  struct Waiter {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);
    uint64_t value ABSL_GUARDED_BY(mu) = 0;
    void Complete(absl::Status s, uint64_t v = 0);
    // Waits until done or `deadline` (clock time); DeadlineExceeded on timeout.
    absl::StatusOr<uint64_t> Await(Clock* clock, absl::Time deadline);
  };
  absl::Status ConnectOnThread(std::string_view address, std::shared_ptr<Waiter> waiter);
  absl::Status DisconnectOnThread(PeerId peer, std::shared_ptr<Waiter> waiter);
  absl::StatusOr<RemoteRegionId> ImportOnThread(PeerId peer, std::string_view packed);
  // Validates a batch (any thread).
  absl::Status PrepareCheck(const TransferBatch& batch);
  // Hands the ops of `id`, already kInProgress in the table (the caller's Post moved it
  // there), to UCX. A transfer that became terminal before this ran (deadline, teardown) or
  // whose peer is gone posts nothing and reports every op done, so its quarantine lifts.
  void StartOnThread(TransferId id, const TransferBatch& batch);
  absl::Status CancelOnThread(TransferId id, const absl::Status& why);
  absl::Status SendUserOnThread(PeerId peer, uint32_t tag, std::string payload,
                                std::shared_ptr<Waiter> waiter);
  absl::StatusOr<UcxOptions::Protocol> ProtocolOnThread(PeerId peer);

  // Mailbox of received user-tagged messages (any thread).
  absl::StatusOr<TaggedMessage> TakeUserMessage(uint32_t tag, absl::Time deadline);

  // Completion of a UCX request (engine thread, from callbacks).
  struct Req;
  void OnReqDone(Req* r, ucs_status_t status);
  void OnPeerError(PeerId peer, ucs_status_t status);

 private:
  struct Peer {
    PeerId id = 0;
    ucp_ep_h ep = nullptr;
    uint64_t instance = 0;
    uint32_t id_at_peer = 0;  // what the peer calls us; goes into our tags to it
    bool failed = false;
    bool closing = false;
    absl::Status fail_status;
    UcxOptions::Protocol protocol = UcxOptions::Protocol::kTag;
    ErrArg* err_arg = nullptr;
    std::vector<std::shared_ptr<Waiter>> close_waiters;
  };
  struct Remote {
    PeerId peer = 0;
    RemoteKey key;
    ucp_rkey_h rkey = nullptr;
  };
  struct Xfer {
    PeerId peer = 0;
    OpKind kind = OpKind::kWrite;
    int pending = 0;          // UCX requests that count as ops
    bool sealed = false;      // flush done (rma) / ack received (tag write) / n.a. (read)
    std::vector<Req*> recvs;  // cancellable receives (tag reads)
  };
  struct Inbound {
    PeerId peer = 0;
    uint64_t token = 0;
    int pending = 0;
    bool is_write = true;
    absl::Status error;
    std::vector<Req*> recvs;
  };

  explicit Engine(const UcxOptions& options);
  absl::Status Init();
  void Loop();
  bool RunCommands();
  bool ProbeIncoming();
  void Wake();
  void ExpireDeadlines();

  // Peers and control messages (ucx_peers.cc).
  absl::StatusOr<PeerId> EnsurePeer(uint64_t instance, std::string_view worker_address);
  Peer* FindPeer(PeerId id);
  void SendCtrl(Peer& peer, std::string msg);
  void HandleCtrl(std::string_view msg);
  void CloseEndpoint(Peer& peer);
  void FinishTeardown(PeerId id);

  // Transfers (ucx_protocol.cc).
  // Request parameters with our callbacks; `recv` non-null selects the receive callback.
  ucp_request_param_t Param(Req* r, void* recv);
  // Takes a UCX request (or immediate status) for `r`: completes it inline when immediate.
  void Submit(Req* r, ucs_status_ptr_t p);
  void PostRma(TransferId id, const TransferBatch& batch, Peer& peer);
  void PostTagWrite(TransferId id, const TransferBatch& batch, Peer& peer);
  void PostTagRead(TransferId id, const TransferBatch& batch, Peer& peer);
  void MaybeSeal(TransferId id);
  void OnXferReq(Req* r, absl::Status st);
  void OnInboundReq(Req* r, absl::Status st);
  void HandleWriteReq(Peer& peer, std::string_view body);
  void HandleReadReq(Peer& peer, std::string_view body);
  void HandleWriteAck(std::string_view body, bool nack);
  void CancelRecvs(std::vector<Req*>& recvs);
  absl::StatusOr<ucp_rkey_h> RkeyFor(RemoteRegionId id, Peer& peer);
  UcxOptions::Protocol PickProtocol(ucp_ep_h ep) const;

  const UcxOptions options_;
  Clock* const clock_;
  TransferTable table_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  uint64_t instance_ = 0;
  bool device_memory_ = false;
  int epoll_fd_ = -1, wake_fd_ = -1, worker_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  // True while the engine thread sleeps (or is about to) in epoll_wait: only then does a
  // queued command need the wake-up eventfd write.
  std::atomic<bool> sleeping_{false};

  absl::Mutex cmd_mu_;
  std::deque<std::function<void()>> cmds_ ABSL_GUARDED_BY(cmd_mu_);

  // What Prepare() validates against, readable without a hop to the engine thread.
  struct RemoteMeta {
    PeerId peer = 0;
    uint64_t length = 0;
  };
  absl::Mutex meta_mu_;
  absl::flat_hash_map<RemoteRegionId, RemoteMeta> remote_meta_ ABSL_GUARDED_BY(meta_mu_);
  absl::flat_hash_map<PeerId, bool> live_peers_ ABSL_GUARDED_BY(meta_mu_);

  absl::Mutex mail_mu_;
  absl::CondVar mail_cv_;
  std::deque<TaggedMessage> mailbox_ ABSL_GUARDED_BY(mail_mu_);

  // ---- engine-thread state ----
  uint64_t next_peer_ = 1, next_remote_ = 1, next_seq_ = 1, next_inbound_ = 1;
  absl::flat_hash_map<PeerId, Peer> peers_;
  absl::flat_hash_map<uint64_t, PeerId> peer_by_instance_;
  absl::flat_hash_map<RemoteRegionId, Remote> remotes_;
  absl::flat_hash_map<TransferId, Xfer> xfers_;
  absl::flat_hash_map<uint64_t, Inbound> inbound_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Waiter>> connects_;  // nonce -> waiter
  absl::flat_hash_map<uint64_t, PeerId> connect_peer_;               // nonce -> peer
  int live_reqs_ = 0;
};

// A UCX request's context: what it belongs to. Owned by the engine from posting until its
// completion callback.
struct UcxTransport::Engine::Req {
  enum class Kind {
    kXferOp,
    kXferFlush,
    kInboundRecv,
    kInboundSend,
    kCtrlSend,
    kCtrlRecv,
    kUserSend,
    kUserRecv,
    kClose
  };
  Engine* engine = nullptr;
  Kind kind = Kind::kCtrlSend;
  uint64_t id = 0;      // TransferId, inbound id or PeerId
  RegionId region = 0;  // inbound: region held in use
  ucp_tag_t tag = 0;
  void* handle = nullptr;  // the UCX request, for cancellation
  bool completed = false;
  std::string buffer;  // owned payload (control/user messages)
  std::shared_ptr<Waiter> waiter;
};

struct ErrArg {
  UcxTransport::Engine* engine;
  PeerId peer;
};

}  // namespace kv::transport
