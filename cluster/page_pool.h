// PagePool: the cluster's pooled page cache as seen by a router or worker: the store-capable
// nodes of the membership, each a PageStore (cluster/page_store_service.h), reached with
// PageStoreClient.
//
// Placement (DESIGN.md "Cluster" / Placement, sharpened in docs/design-notes.md): the homes
// of a page are the R rendezvous winners (cluster/placement.h) for the *first* key of its
// chain, not for the page's own key. A store's index is prefix-closed (a page is sealed only
// after its parent, eviction is leaf-first), so a chain must live whole on its homes; homing
// by the chain's root keeps every conversation and every shared prompt on the same R nodes,
// so one LookupBlocks per home answers a request's whole prefix.
//
// Calls carry the caller's `authorization` metadata (the end user's bearer token, forwarded
// by the router and the workers), so the store enforces tenant isolation itself.
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
#include "kvstore/block_key.h"
#include "kvstore/tier.h"
#include "proto/kvstrata/v1/common.pb.h"

namespace kv::cluster {

// The longest cached prefix of a chain on its best home.
struct PoolPrefix {
  std::string node_id;           // empty when no home holds any block (or there is no home)
  std::string grpc_address;      // of node_id
  std::vector<TierKind> tiers;   // tier of each cached block, in chain order
  std::vector<bool> has_resume;  // each cached block's page carries a resume section (V4)
  int64_t blocks() const { return static_cast<int64_t>(tiers.size()); }
};

// A page to publish: the encoded page and its index metadata.
struct PoolPage {
  BlockKey key;
  std::vector<uint8_t> bytes;                 // EncodePage output
  PageRole resume_role = PageRole::kTurnEnd;  // why a V4 page kept its resume section
};

struct PoolWriteOptions {
  kvstrata::v1::KeySpace key_space;
  bool shared_namespace = false;  // the pages are keyed in the shared namespace
  std::string session_id;
  absl::Duration retention = absl::ZeroDuration();  // zero: no hint
};

class PagePool {
 public:
  virtual ~PagePool() = default;

  // The home nodes of a chain whose first key is `root` (best first), from the current
  // membership. Empty when no store-capable node is live.
  virtual std::vector<kvstrata::v1::NodeInfo> Homes(const BlockKey& root) = 0;
  // The longest prefix of `chain` (keys in order, chain[0] its root) present on one of its
  // homes. Never an error for missing keys; a home that does not answer is skipped (its
  // error is logged). InvalidArgument for an empty chain.
  virtual absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                            const std::string& authorization) = 0;
  // Pins `keys` on `grpc_address` for `lease` and returns the lease id; the pinned prefix
  // length in `*pinned`. Errors of the store (Unavailable when it is down).
  virtual absl::StatusOr<std::string> Pin(const std::string& grpc_address,
                                          std::span<const BlockKey> keys, absl::Duration lease,
                                          const std::string& authorization, int64_t* pinned) = 0;
  // Releases a lease; errors are logged, not returned (leases expire on their own).
  virtual void Unpin(const std::string& grpc_address, const std::string& lease_id,
                     const std::string& authorization) = 0;
  // Reads the pages of `keys` (in order) from `grpc_address`, each verified (chunk and page
  // checksums, key). Stops at the first page that fails: the result holds the verified
  // prefix (possibly empty). Unavailable/DeadlineExceeded when the store cannot be read.
  virtual absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(const std::string& grpc_address,
                                                                 std::span<const BlockKey> keys,
                                                                 const std::string& lease_id,
                                                                 const std::string& authorization,
                                                                 absl::Time deadline) = 0;
  // Writes `pages` (one chain segment, in chain order, `root` the chain's first key) to every
  // home of the chain. Returns pages stored or already present on at least one home.
  virtual absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                          const PoolWriteOptions& options,
                                          const std::string& authorization) = 0;
};

struct GrpcPagePoolOptions {
  int replication = 1;  // R homes per chain
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration write_timeout = absl::Seconds(60);
};

// The PagePool over gRPC PageStore services of the live store-capable members.
absl::StatusOr<std::unique_ptr<PagePool>> NewGrpcPagePool(Membership* membership,
                                                          GrpcPagePoolOptions options);

}  // namespace kv::cluster
