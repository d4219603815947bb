#include "cluster/membership_config.h"

#include <utility>

#include "cluster/etcd_membership.h"
#include "core/status_macros.h"

namespace kv::cluster {

void MembershipConfig::Bind(FlagSet* flags) {
  flags->String("etcd", &etcd, "etcd client endpoint HOST:PORT; empty uses --members");
  flags->String("members", &members,
                "static member list: ID=HOST:PORT@ROLE[+ROLE],... (without --etcd)");
  flags->String("etcd-prefix", &etcd_prefix, "etcd key prefix of member records");
  flags->Duration("member-ttl", &member_ttl,
                  "etcd lease TTL: a dead node leaves the member list within it");
}

absl::StatusOr<std::unique_ptr<Membership>> OpenMembership(const MembershipConfig& config,
                                                           Clock* clock) {
  if (!config.etcd.empty() && !config.members.empty()) {
    return absl::InvalidArgumentError(
        "membership: set either --etcd or --members, not both (etcd discovers members itself)");
  }
  if (config.etcd.empty()) {
    ASSIGN_OR_RETURN(auto nodes, StaticMembership::ParseSpec(config.members));
    ASSIGN_OR_RETURN(auto membership, StaticMembership::Create(std::move(nodes), clock));
    return std::unique_ptr<Membership>(std::move(membership));
  }
  EtcdMembershipOptions options;
  options.endpoint = config.etcd;
  options.prefix = config.etcd_prefix;
  options.ttl = config.member_ttl;
  options.clock = clock;
  ASSIGN_OR_RETURN(auto membership, EtcdMembership::Start(std::move(options)));
  return std::unique_ptr<Membership>(std::move(membership));
}

}  // namespace kv::cluster
