// EtcdMembership: cluster membership kept in etcd through its v3 gRPC API (KV, Lease, Watch;
// the message subset is in proto/etcd/).
//
// Layout in etcd: one key per node, `<prefix><node_id>`, whose value is the node's serialized
// kvstrata.v1.NodeInfo, attached to a lease of `ttl` owned by that node.
//   - Register(): grants the lease, puts the key, and starts a keep-alive thread that renews
//     the lease every ttl/3. If the lease is found expired (etcd was unreachable longer than
//     the TTL), it is granted again and the key re-put.
//   - A background watch thread reads the prefix (Range), then watches it from the next
//     revision. A node that stops renewing (crashed, or Close() without revoke) disappears
//     from everyone's view when etcd expires its lease: within the TTL (plus etcd's expiry
//     check interval, 0.5 s).
//   - When etcd is unreachable the view keeps the last known members and is marked stale;
//     the thread retries every `retry_interval` and a successful re-read clears the flag.
//   - Close() stops both threads and, with revoke_on_close, revokes the lease so the node
//     leaves at once.
// Bad records under the prefix (a value that is not a NodeInfo, or whose node_id does not
// match its key) are logged and ignored.
//
// Time: leases are etcd's (server wall time); retry sleeps use real time. The injected clock
// only stamps MembershipView::updated_at.
//
// Thread-safety: as Membership. Owns its gRPC channel and threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "cluster/membership.h"
#include "proto/etcd/etcdserverpb/rpc.grpc.pb.h"

namespace kv::cluster {

struct EtcdMembershipOptions {
  // etcd client endpoint, "HOST:PORT" ("http://" prefix accepted). Required.
  std::string endpoint;
  // Key prefix of member records. Must be non-empty.
  std::string prefix = "/kvstrata/members/";
  // Lease TTL, whole seconds >= 1 (etcd raises very small TTLs to its minimum, ~2 s).
  absl::Duration ttl = absl::Seconds(10);
  // Deadline of each unary etcd call.
  absl::Duration rpc_timeout = absl::Seconds(3);
  // Wait between reconnection attempts while etcd is unreachable.
  absl::Duration retry_interval = absl::Milliseconds(250);
  // Revoke the lease on Close(), so this node leaves the view at once. When false the node
  // leaves only when the lease expires (what a crash looks like to the others).
  bool revoke_on_close = true;
  // Stamps MembershipView::updated_at. Not owned; must outlive the membership.
  Clock* clock = Clock::Real();
};

class EtcdMembership final : public MembershipBase {
 public:
  // Connects, reads the current members and starts watching. INVALID_ARGUMENT for bad
  // options; UNAVAILABLE (retryable) when etcd cannot be reached within rpc_timeout.
  static absl::StatusOr<std::unique_ptr<EtcdMembership>> Start(EtcdMembershipOptions options);

  ~EtcdMembership() override;

  // Puts this node's record under a fresh lease (or the current one, when already
  // registered) and keeps it alive until Close(). INVALID_ARGUMENT for an empty node_id or
  // one containing '/'; UNAVAILABLE (retryable) when etcd cannot be reached;
  // FAILED_PRECONDITION after Close().
  absl::Status Register(const kvstrata::v1::NodeInfo& self) override;

  void Close() override;
  std::string_view source() const override { return "etcd"; }

  // The lease id of this node's registration, 0 when not registered.
  int64_t lease_id();

 private:
  explicit EtcdMembership(EtcdMembershipOptions options);

  absl::StatusOr<int64_t> ReadAll();  // Range over the prefix; returns the store revision
  void WatchLoop(int64_t start_revision);
  absl::Status WatchFrom(int64_t* next_revision);
  void HandleEvents(const etcdserverpb::WatchResponse& response, int64_t* next_revision);
  void KeepAliveLoop();
  absl::Status KeepAliveStream(int64_t lease);
  absl::Status GrantAndPut(const kvstrata::v1::NodeInfo& self);
  absl::StatusOr<int64_t> Grant();
  absl::Status Put(const kvstrata::v1::NodeInfo& self, int64_t lease);
  void Revoke(int64_t lease);
  // Sleeps for d unless Close() starts; returns false when closing.
  bool SleepUnlessClosing(absl::Duration d);
  // Registers `ctx` as the active streaming context of a thread so Close() can cancel it.
  // Returns false (and registers nothing) when closing.
  bool TrackContext(grpc::ClientContext** slot, grpc::ClientContext* ctx);
  void UntrackContext(grpc::ClientContext** slot);
  void SetDeadline(grpc::ClientContext* ctx) const;

  const EtcdMembershipOptions options_;
  const std::string range_end_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch_;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease_;

  kv::Mutex mu_;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<kvstrata::v1::NodeInfo> self_ ABSL_GUARDED_BY(mu_);
  int64_t lease_id_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::ClientContext* watch_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  grpc::ClientContext* keepalive_ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Serialises Register() with the keep-alive thread's re-registration.
  kv::Mutex register_mu_ ABSL_ACQUIRED_BEFORE(mu_);

  std::thread watch_thread_;
  std::thread keepalive_thread_;  // started by the first successful Register()
  kv::Mutex threads_mu_;          // guards starting/joining the threads
};

// The etcd range end that selects every key starting with `prefix` (the prefix with its last
// byte incremented, dropping trailing 0xff bytes); "\0" for an all-0xff prefix.
std::string EtcdPrefixEnd(const std::string& prefix);

}  // namespace kv::cluster
