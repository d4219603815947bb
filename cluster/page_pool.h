// The gRPC PagePool (kvstore/page_pool.h): the store-capable nodes of the membership, each a
// PageStore service (cluster/page_store_service.h), reached with PageStoreClient.
//
// Placement (DESIGN.md "Cluster" / Placement, sharpened in docs/design-notes.md): the homes
// of a page are the R rendezvous winners (cluster/placement.h) for the *first* key of its
// chain, not for the page's own key. A store's index is prefix-closed (a page is sealed only
// after its parent, eviction is leaf-first), so a chain must live whole on its homes; homing
// by the chain's root keeps every conversation and every shared prompt on the same R nodes,
// so one LookupBlocks per home answers a request's whole prefix.
//
// Calls carry the node credential (options.service_token as `authorization: Bearer`) and the
// tenant they act for (`x-kvstrata-tenant` metadata, the tenant the router or worker
// authenticated; cluster/tenants.h), so the store enforces tenant isolation itself.
//
// Thread-safety: safe for concurrent use. Results are values owned by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/membership.h"
#include "core/clock.h"
#include "kvstore/block_key.h"
#include "kvstore/page_pool.h"
#include "transport/transport.h"

namespace kv::cluster {

using kv::CachedRun;
using kv::PagePool;
using kv::PoolPage;
using kv::PoolPrefix;
using kv::PoolWriteOptions;

struct GrpcPagePoolOptions {
  int replication = 1;  // R homes per chain
  // The cluster's node credential (cluster/tenants.h); empty: none (a cluster without tokens).
  std::string service_token;
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration write_timeout = absl::Seconds(60);
  Clock* clock = nullptr;  // the clock callers' deadlines are on; null: Clock::Real()
  // The caller's transport (a worker's UCX transport; not owned, must outlive the pool).
  // When set, Read moves page bytes with RMA gets from the store's registered memory
  // (cluster/page_store_rma.h) and uses gRPC ReadPages only when UCX cannot reach the store
  // or the store lends no region. Null: gRPC only.
  transport::Transport* transport = nullptr;
};

// The PagePool over gRPC PageStore services of the live store-capable members.
absl::StatusOr<std::unique_ptr<PagePool>> NewGrpcPagePool(Membership* membership,
                                                          GrpcPagePoolOptions options);

}  // namespace kv::cluster
