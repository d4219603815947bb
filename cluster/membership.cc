#include "cluster/membership.h"

#include <set>
#include <utility>

#include <google/protobuf/util/message_differencer.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {
namespace {

using kvstrata::v1::NodeInfo;
using kvstrata::v1::Role;

bool SameNode(const NodeInfo& a, const NodeInfo& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

absl::Status CheckIds(const std::vector<NodeInfo>& members) {
  std::set<std::string> seen;
  for (const NodeInfo& m : members) {
    if (m.node_id().empty()) return absl::InvalidArgumentError("membership: empty node_id");
    if (!seen.insert(m.node_id()).second) {
      return absl::InvalidArgumentError(
          kv::StrCat("membership: node_id '", m.node_id(), "' listed twice"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<NodeInfo> ParseEntry(std::string_view entry) {
  const size_t eq = entry.find('=');
  const size_t at = entry.rfind('@');
  if (eq == std::string_view::npos || at == std::string_view::npos || at < eq || eq == 0 ||
      at == eq + 1 || at + 1 == entry.size()) {
    return absl::InvalidArgumentError(
        kv::StrCat("membership spec entry '", entry, "' is not ID=HOST:PORT@ROLE[+ROLE...]"));
  }
  NodeInfo node;
  node.set_node_id(std::string(entry.substr(0, eq)));
  const std::string_view address = entry.substr(eq + 1, at - eq - 1);
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        kv::StrCat("membership spec entry '", entry, "': address is not HOST:PORT"));
  }
  node.set_grpc_address(std::string(address));
  std::set<int> roles;
  for (absl::string_view name : absl::StrSplit(kv::ToAbsl(entry.substr(at + 1)), '+')) {
    auto parsed = ParseRole(kv::FromAbsl(name));
    if (!parsed.ok()) return kv::Annotate(parsed.status(), kv::StrCat("entry '", entry, "'"));
    roles.insert(parsed->begin(), parsed->end());
  }
  for (int r : roles) node.add_roles(static_cast<Role>(r));
  return node;
}

}  // namespace

absl::StatusOr<std::vector<Role>> ParseRole(std::string_view name) {
  if (name == "router") return std::vector<Role>{kvstrata::v1::ROLE_ROUTER};
  if (name == "prefill") return std::vector<Role>{kvstrata::v1::ROLE_PREFILL};
  if (name == "decode") return std::vector<Role>{kvstrata::v1::ROLE_DECODE};
  if (name == "store") return std::vector<Role>{kvstrata::v1::ROLE_STORE};
  if (name == "all") {
    return std::vector<Role>{kvstrata::v1::ROLE_ROUTER, kvstrata::v1::ROLE_PREFILL,
                             kvstrata::v1::ROLE_DECODE, kvstrata::v1::ROLE_STORE};
  }
  return absl::InvalidArgumentError(
      kv::StrCat("unknown role '", name, "' (expected router, prefill, decode, store or all)"));
}

// ---- MembershipBase -------------------------------------------------------------------------

MembershipView MembershipBase::ViewLocked() const {
  MembershipView view;
  view.members.reserve(members_.size());
  for (const auto& [id, node] : members_) view.members.push_back(node);
  view.stale = stale_;
  view.updated_at = updated_at_;
  return view;
}

MembershipView MembershipBase::Members() {
  kv::ReaderMutexLock lock(&mu_);
  return ViewLocked();
}

uint64_t MembershipBase::Watch(WatchCallback callback) {
  kv::MutexLock lock(&mu_);
  const uint64_t id = next_watch_id_++;
  watchers_[id] = std::make_shared<WatchCallback>(std::move(callback));
  return id;
}

void MembershipBase::Unwatch(uint64_t id) {
  {
    kv::MutexLock lock(&mu_);
    watchers_.erase(id);
  }
  // A callback that copied the watcher list before the erase finishes before this returns.
  kv::MutexLock wait(&notify_mu_);
}

void MembershipBase::ReplaceAll(std::vector<NodeInfo> members) {
  {
    kv::MutexLock lock(&mu_);
    std::map<std::string, NodeInfo> fresh;
    for (NodeInfo& m : members) {
      std::string id = m.node_id();
      fresh[id] = std::move(m);
    }
    bool changed = stale_ || fresh.size() != members_.size();
    for (auto it = fresh.begin(); !changed && it != fresh.end(); ++it) {
      auto old = members_.find(it->first);
      changed = old == members_.end() || !SameNode(old->second, it->second);
    }
    members_ = std::move(fresh);
    stale_ = false;
    updated_at_ = clock_->Now();
    if (changed) ++version_;
  }
  Notify();
}

void MembershipBase::Apply(std::vector<NodeInfo> upserts, std::vector<std::string> removals) {
  {
    kv::MutexLock lock(&mu_);
    bool changed = false;
    for (NodeInfo& m : upserts) {
      auto it = members_.find(m.node_id());
      if (it != members_.end() && SameNode(it->second, m)) continue;
      std::string id = m.node_id();
      members_[id] = std::move(m);
      changed = true;
    }
    for (const std::string& id : removals) changed = members_.erase(id) > 0 || changed;
    updated_at_ = clock_->Now();
    if (changed) ++version_;
  }
  Notify();
}

void MembershipBase::SetStale(bool stale) {
  {
    kv::MutexLock lock(&mu_);
    if (stale_ == stale) return;
    stale_ = stale;
    ++version_;
  }
  Notify();
}

void MembershipBase::Notify() {
  kv::MutexLock serial(&notify_mu_);
  MembershipView view;
  std::vector<std::shared_ptr<WatchCallback>> callbacks;
  {
    kv::ReaderMutexLock lock(&mu_);
    if (version_ == delivered_version_) return;
    delivered_version_ = version_;
    view = ViewLocked();
    for (const auto& [id, cb] : watchers_) callbacks.push_back(cb);
  }
  for (const auto& cb : callbacks) (*cb)(view);
}

// ---- StaticMembership -----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<StaticMembership>> StaticMembership::Create(
    std::vector<NodeInfo> members, Clock* clock) {
  RETURN_IF_ERROR(CheckIds(members));
  std::unique_ptr<StaticMembership> m(new StaticMembership(clock));
  m->ReplaceAll(std::move(members));
  return m;
}

absl::StatusOr<std::vector<NodeInfo>> StaticMembership::ParseSpec(std::string_view spec) {
  std::vector<NodeInfo> nodes;
  for (absl::string_view raw : absl::StrSplit(kv::ToAbsl(spec), ',')) {
    std::string_view entry = kv::FromAbsl(absl::StripAsciiWhitespace(raw));
    if (entry.empty()) continue;
    ASSIGN_OR_RETURN(NodeInfo node, ParseEntry(entry));
    nodes.push_back(std::move(node));
  }
  RETURN_IF_ERROR(CheckIds(nodes));
  return nodes;
}

absl::Status StaticMembership::Register(const NodeInfo& self) {
  if (self.node_id().empty()) {
    return absl::InvalidArgumentError("membership: cannot register a node with an empty node_id");
  }
  Apply({self}, {});
  return absl::OkStatus();
}

}  // namespace kv::cluster
