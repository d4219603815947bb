// Membership: which nodes are in the cluster right now (DESIGN.md "Cluster" / Membership).
//
// A Membership gives a view of the live members (each a kvstrata.v1.NodeInfo, the record a
// node registers about itself), lets a node register itself, and calls watchers when the view
// changes. Two implementations:
//   - StaticMembership: a fixed list from config (the default). Never stale.
//   - EtcdMembership: etcd v3 (cluster/etcd_membership.h). Nodes register under a key prefix
//     with a lease (TTL) that they keep alive; everyone watches the prefix. A node that dies
//     leaves the view when its lease expires. When etcd is unreachable the last known view
//     stays in use and is reported as stale.
//
// Thread-safety: every method is safe to call concurrently. Watch callbacks run on an
// internal thread (or, for StaticMembership, on the thread that caused the change), one at a
// time, and must not block for long or call Register(), Unwatch() or Close() (Members() is
// fine). Views are returned by value:
// the caller owns them.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/mutex.h"
#include "proto/kvstrata/v1/common.pb.h"

namespace kv::cluster {

// A snapshot of the membership.
struct MembershipView {
  // Live members, sorted by node_id.
  std::vector<kvstrata::v1::NodeInfo> members;
  // True when the source (etcd) is unreachable and `members` is the last known list.
  bool stale = false;
  // When the source last confirmed the list (InfinitePast before the first confirmation).
  absl::Time updated_at = absl::InfinitePast();
};

class Membership {
 public:
  using WatchCallback = std::function<void(const MembershipView&)>;

  virtual ~Membership() = default;

  // The current view. Never fails; may be empty (no member known yet) or stale.
  virtual MembershipView Members() = 0;

  // Calls `callback` with the new view after every change of the member list or of the
  // stale flag. Returns an id for Unwatch().
  virtual uint64_t Watch(WatchCallback callback) = 0;
  // Stops calls to the callback with that id; once it returns, the callback is not running
  // and will not run again. Unknown ids are ignored. Must not be called from a callback.
  virtual void Unwatch(uint64_t id) = 0;

  // Registers (or updates) this node's record. INVALID_ARGUMENT for an empty node_id;
  // UNAVAILABLE (retryable) when the source cannot be reached (nothing is registered then).
  virtual absl::Status Register(const kvstrata::v1::NodeInfo& self) = 0;

  // Stops background work and withdraws this node's registration where the implementation
  // supports it. Idempotent; the destructor calls it. Members() still answers afterwards
  // with the last view.
  virtual void Close() = 0;

  // "static" or "etcd".
  virtual std::string_view source() const = 0;
};

// The shared state and watcher plumbing of both implementations.
class MembershipBase : public Membership {
 public:
  explicit MembershipBase(Clock* clock) : clock_(clock) {}
  MembershipView Members() override;
  uint64_t Watch(WatchCallback callback) override;
  void Unwatch(uint64_t id) override;

 protected:
  // Replaces the whole member list (a fresh read from the source) and clears `stale`.
  void ReplaceAll(std::vector<kvstrata::v1::NodeInfo> members);
  // Applies incremental changes: upserts (by node_id) and removals.
  void Apply(std::vector<kvstrata::v1::NodeInfo> upserts, std::vector<std::string> removals);
  // Marks the view stale (source unreachable) or fresh.
  void SetStale(bool stale);

 private:
  // Delivers the newest view to every watcher unless it was delivered already. Called without
  // mu_ held; lock order is notify_mu_ before mu_.
  void Notify();
  MembershipView ViewLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  Clock* const clock_;
  // Serialises callbacks, and lets Unwatch wait for a running one.
  kv::Mutex notify_mu_;
  uint64_t delivered_version_ ABSL_GUARDED_BY(notify_mu_) = 0;
  mutable kv::Mutex mu_ ABSL_ACQUIRED_AFTER(notify_mu_);
  std::map<std::string, kvstrata::v1::NodeInfo> members_ ABSL_GUARDED_BY(mu_);
  bool stale_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time updated_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<uint64_t, std::shared_ptr<WatchCallback>> watchers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_watch_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;  // bumped on every visible change
};

// A fixed member list. Register() adds or replaces this node's record in the local list only.
class StaticMembership final : public MembershipBase {
 public:
  // INVALID_ARGUMENT when a member has an empty node_id or two share one.
  static absl::StatusOr<std::unique_ptr<StaticMembership>> Create(
      std::vector<kvstrata::v1::NodeInfo> members, Clock* clock = Clock::Real());

  // Parses a config list: comma-separated `ID=HOST:PORT@ROLE[+ROLE...]`, where ROLE is
  // router, prefill, decode, store or all; for example
  //   "r1=10.0.0.1:7000@router,s1=10.0.0.2:7000@store+prefill".
  // Whitespace around entries is ignored. INVALID_ARGUMENT naming the bad entry otherwise.
  static absl::StatusOr<std::vector<kvstrata::v1::NodeInfo>> ParseSpec(std::string_view spec);

  absl::Status Register(const kvstrata::v1::NodeInfo& self) override;
  void Close() override {}
  std::string_view source() const override { return "static"; }

 private:
  using MembershipBase::MembershipBase;
};

// Parses a role name (router|prefill|decode|store|all) into roles; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::vector<kvstrata::v1::Role>> ParseRole(std::string_view name);

}  // namespace kv::cluster
