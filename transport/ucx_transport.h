// UcxTransport: the Transport over UCX's UCP layer (RMA put/get with packed rkeys, and tag
// messages). It works over whatever transports UCX selects: shared memory (posix, sysv),
// CMA and TCP here; RDMA where present. Device memory is registered when the UCX build
// supports CUDA (capabilities().device_memory says so).
//
// Engine. One UCP worker per transport, driven by one progress thread. Every UCX call runs
// on that thread; API calls that need UCX (Register, Connect, Cancel, ...) enqueue a command
// and wait, bounded, for its result. Post checks and moves the transfer to kInProgress on the
// caller's thread and queues the UCX posting without waiting for it (commands run in order);
// Prepare, Poll, Wait and Release of a finished transfer do not hop. A queued command wakes
// the thread only when it sleeps. The thread busy-polls only while traffic flows (UcxOptions::spin
// after the last progress, yielding the core on every idle round so that a loaded machine
// runs the threads it waits for); otherwise it arms the worker (ucp_worker_arm) and sleeps in epoll
// on the worker's event fd plus a wake-up eventfd, so an idle transport burns no core. The sleep is
// capped at 1 ms while requests are in flight (UCX 1.13's shared-memory transports did not
// always signal the fd for completions) and 5 ms when idle. The thread also enforces
// transfer deadlines, so a lost completion becomes DeadlineExceeded on time.
//
// Connecting. Connect(address) creates an endpoint from the peer's worker address and sends a
// HELLO carrying ours; the peer creates the reverse endpoint and answers HELLO_ACK. Both
// sides then know each other (peer ids, tag ids). Endpoints use UCP_ERR_HANDLING_MODE_PEER:
// a peer that dies fails its in-flight transfers with Unavailable within UCX's detection
// time (TCP reset: at once; keepalive otherwise, UCX_KEEPALIVE_INTERVAL, set to 1 s unless
// the environment says otherwise) and at the latest at each transfer's deadline.
//
// Write/read protocols (chosen per peer; UcxOptions::protocol):
//   - kRma: ucp_put_nbx / ucp_get_nbx into the peer's region with its unpacked rkey, then
//     ucp_ep_flush_nbx; the transfer is done when the flush completes (remote completion).
//   - kTag (rendezvous over tag matching): for a write the initiator sends WRITE_REQ (region,
//     offset, length and a sequence number per op) and then each op's bytes as a tag message
//     whose tag encodes (data kind, initiator id, sequence). The target's engine posts a
//     receive for each op directly into its registered region; UCX's rendezvous protocol
//     then moves large messages zero-copy into place (small ones are eager). When every
//     receive has landed the target answers WRITE_ACK; the write is done when the ack arrived
//     and every local send completed. A read pre-posts receives locally, sends READ_REQ, and
//     the target answers with tag sends from its region (or READ_NACK naming the error).
//   - kAuto: kRma only when the endpoint has a zero-copy put lane (RDMA, CMA, xpmem,
//     cuda_ipc), read from ucp_ep_print_info. Otherwise kTag: over TCP UCX 1.13 emulates
//     put/get over active messages (~0.2 GB/s vs ~4 GB/s for tag messages), and over posix
//     shared memory with caller-allocated memory put is a bounce-buffer copy while tag
//     rendezvous moves the bytes zero-copy through CMA. `kvstrata bench transport` prints
//     both protocols per fabric so the choice can be checked.
//
// KVSTRATA_UCX_PROTOCOL=auto|rma|tag (environment) overrides a kAuto protocol of every
// transport the process creates (Create() refuses another value); it is how a protocol is
// forced for one node or one benchmark without a flag in every command.
// Knobs that matter (environment, read by UCX): UCX_TLS (e.g. "tcp", "posix,cma,self",
// "sm,self"), UCX_NET_DEVICES (e.g. "lo" for loopback TCP), UCX_RNDV_THRESH (eager vs
// rendezvous), UCX_KEEPALIVE_INTERVAL (dead-peer detection), UCX_TCP_* (socket buffers).
// Set by Create() unless the environment already sets them: UCX_POSIX_ERROR_HANDLING=y,
// UCX_SYSV_ERROR_HANDLING=y and UCX_CMA_MEMORY_INVALIDATE=y. Without the last, UCX 1.13
// drops the CMA lane from endpoints with peer error handling, and shared-memory rendezvous
// copies twice through the posix FIFO (0.15 GB/s vs 3-4 GB/s measured at 2.6 MB).
//
// Poisoning contract (transport.h): puts and tag sends cannot be cancelled in UCX, so a
// cancelled or timed-out write keeps its region quarantined until every request has
// completed; a peer failure keeps it quarantined until Disconnect() (ucp_ep_close_nbx with
// UCP_EP_CLOSE_FLAG_FORCE, bounded by UcxOptions::close_timeout) or destruction. Inbound
// receives posted for a dead or disconnected peer are cancelled, and the target's region
// stays in use until the cancellation completes.
//
// Thread-safe. Create() returns an owned transport; destroying it force-closes every
// endpoint (bounded) and the worker. Registered memory must outlive Deregister() or the
// transport.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "transport/transport.h"

namespace kv::transport {

struct UcxOptions {
  enum class Protocol { kAuto, kRma, kTag };
  Protocol protocol = Protocol::kAuto;
  // Upper bound on a forced endpoint close (Disconnect, destruction).
  absl::Duration close_timeout = absl::Seconds(2);
  // Bound on an engine command (register, import, ...) that should take microseconds.
  absl::Duration command_timeout = absl::Seconds(10);
  // Keep polling for this long after the last progress before sleeping on the event fd.
  // Longer: lower latency under bursty traffic, more CPU. Zero-length idle never spins.
  absl::Duration spin = absl::Microseconds(300);
  Clock* clock = nullptr;  // not owned; null: Clock::Real()
};
std::string_view ProtocolName(UcxOptions::Protocol p);
// "auto", "rma" or "tag" (ProtocolName's names); InvalidArgument naming the value otherwise.
absl::StatusOr<UcxOptions::Protocol> ParseProtocol(std::string_view name);

class UcxTransport : public Transport {
 public:
  // Creates the UCP context, worker and progress thread. Returns Unavailable when UCX cannot
  // initialise (no usable transport for UCX_TLS), Internal for other UCX errors.
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(UcxOptions options = {});
  ~UcxTransport() override;

  // The protocol writes/reads to `peer` use (kRma or kTag). NotFound for an unknown peer.
  absl::StatusOr<UcxOptions::Protocol> PeerProtocol(PeerId peer) const;

  Capabilities capabilities() const override;
  std::string address() const override;
  absl::StatusOr<RegisteredRegion> Register(void* base, size_t length, MemoryKind kind) override;
  absl::Status Deregister(RegionId id) override;
  absl::StatusOr<RegionState> GetRegionState(RegionId id) const override;
  absl::StatusOr<PeerId> Connect(std::string_view address, absl::Time deadline) override;
  absl::Status Disconnect(PeerId peer) override;
  absl::StatusOr<RemoteRegionId> ImportRemoteRegion(PeerId peer,
                                                    std::string_view packed_key) override;
  absl::StatusOr<TransferId> Prepare(const TransferBatch& batch) override;
  absl::Status Post(TransferId id, absl::Time deadline) override;
  absl::StatusOr<TransferStatus> Poll(TransferId id) override;
  absl::Status Wait(TransferId id, absl::Time deadline) override;
  absl::Status Cancel(TransferId id) override;
  absl::Status Release(TransferId id) override;
  absl::Status SendTagged(PeerId peer, uint32_t tag, std::string_view payload,
                          absl::Time deadline) override;
  absl::StatusOr<TaggedMessage> ReceiveTagged(uint32_t tag, absl::Time deadline) override;

  class Engine;  // ucx_engine.h

 private:
  explicit UcxTransport(std::unique_ptr<Engine> engine);
  std::unique_ptr<Engine> engine_;
};

}  // namespace kv::transport
