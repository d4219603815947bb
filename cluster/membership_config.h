// Choosing and opening the membership source from configuration (flags or config-file keys):
//
//   --etcd=HOST:PORT          use etcd (leases + watch); empty (default) uses a static list
//   --members=SPEC            the static list, StaticMembership::ParseSpec syntax
//   --etcd-prefix=/kvstrata/members/   key prefix of member records in etcd
//   --member-ttl=10s          etcd lease TTL: how long a dead node stays listed at most
//
// Thread-safety: MembershipConfig is a plain value; OpenMembership is safe to call
// concurrently. The returned Membership is owned by the caller.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/membership.h"
#include "core/clock.h"
#include "core/config.h"

namespace kv::cluster {

struct MembershipConfig {
  // etcd client endpoint; empty selects the static list.
  std::string etcd;
  // Static member list (StaticMembership::ParseSpec syntax); must be empty with etcd.
  std::string members;
  // Key prefix of member records in etcd.
  std::string etcd_prefix = "/kvstrata/members/";
  // Lease TTL of this node's etcd registration.
  absl::Duration member_ttl = absl::Seconds(10);

  // Binds the fields above as flags (and config keys) etcd, members, etcd-prefix, member-ttl.
  // The config must outlive `flags`.
  void Bind(FlagSet* flags);
};

// Opens the configured membership. INVALID_ARGUMENT when both etcd and members are set, or
// for a bad spec/option; UNAVAILABLE (retryable) when etcd cannot be reached.
absl::StatusOr<std::unique_ptr<Membership>> OpenMembership(const MembershipConfig& config,
                                                           Clock* clock = Clock::Real());

}  // namespace kv::cluster
