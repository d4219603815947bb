// PagePool: the cluster's pooled page cache as a worker or router sees it, independent of how
// it is reached: `LocalPagePool` (kvstore/local_page_pool.h) over this process's PageStore,
// or cluster/page_pool.h's gRPC implementation over the store nodes of the membership.
//
// A pool is addressed by chain: the homes of a chain are chosen from its first key (so a
// chain lives whole on its homes, docs/design-notes.md item 8); `Lookup` finds the longest
// cached prefix on the best home and names that home's `address`, which `Pin`, `Read` and
// `Unpin` then use. Calls name the tenant they act for (`tenant`: the end user's tenant, which
// the router or worker authenticated); a remote pool sends it with the cluster's node
// credential (cluster/tenants.h), and the store then acts as that tenant. An in-process pool
// trusts its caller.
//
// Thread-safety: implementations are safe for concurrent use. Results are values owned by
// the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/block_key.h"
#include "kvstore/resume_policy.h"
#include "kvstore/tier.h"

namespace kv {

// The longest cached prefix of a chain on its best home.
struct PoolPrefix {
  std::string node_id;           // empty when no home holds any block (or there is no home)
  std::string address;           // where Pin / Read / Unpin reach node_id
  std::vector<TierKind> tiers;   // tier of each cached block, in chain order
  std::vector<bool> has_resume;  // each cached block's page carries a resume section (V4)
  int64_t blocks() const { return static_cast<int64_t>(tiers.size()); }
};

// A run of cached blocks, pinned by a router, that a worker loads: the chain's first
// `keys.size()` blocks on `address` under `lease_id`.
struct CachedRun {
  std::string node_id;
  std::string address;
  std::vector<BlockKey> keys;
  std::string lease_id;
  // What the store lent with the router's pin: where the pinned pages lie in its registered
  // memory and the lease's beacon (a remote pool's own encoding, opaque here). A worker's pool
  // reads those pages one-sided without pinning again; empty: it pins them itself.
  std::string lent;
};

// A page to publish: the encoded page and its index metadata.
struct PoolPage {
  BlockKey key;
  std::vector<uint8_t> bytes;                 // EncodePage output
  PageRole resume_role = PageRole::kTurnEnd;  // why a V4 page kept its resume section
};

struct PoolWriteOptions {
  KeyParams key_space;            // fingerprint, layout, page tokens (its `ns` is unused)
  bool shared_namespace = false;  // the pages are keyed in the shared namespace
  // The authenticated tenant the pages belong to when not shared. An in-process pool
  // records it; a remote store takes the tenant the call acts for instead.
  std::string tenant;
  std::string session_id;
  absl::Duration retention = absl::ZeroDuration();  // zero: no hint
};

// The pages of a ReadView, in key order: views into memory the pool lends to the caller
// until the last copy of `hold` is destroyed (a registered read buffer goes back to the pool
// then; so they must not outlive the pool). Reads without the copy out of that memory that
// Read makes.
struct PoolPages {
  std::vector<std::span<const uint8_t>> pages;
  std::shared_ptr<const void> hold;
  size_t size() const { return pages.size(); }
  std::vector<std::vector<uint8_t>> Copy() const;  // the pages as owned vectors (Read's)
};

class PagePool {
 public:
  virtual ~PagePool() = default;

  // The longest prefix of `chain` (keys in order, chain[0] its root) present on one of its
  // homes. Never an error for missing keys; a home that does not answer is skipped (its
  // error is logged). InvalidArgument for an empty chain.
  virtual absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                            const std::string& tenant) = 0;
  // Pins the longest present prefix of `keys` on `address` for `lease` and returns the lease
  // id; that prefix's length in `*pinned`. When `lent` is given, a pool that can lends the
  // pinned pages' memory too (CachedRun::lent; cleared when it does not). Errors of the store
  // (Unavailable when it is down).
  virtual absl::StatusOr<std::string> Pin(const std::string& address,
                                          std::span<const BlockKey> keys, absl::Duration lease,
                                          const std::string& tenant, int64_t* pinned,
                                          std::string* lent = nullptr) = 0;
  // Releases a lease; errors are logged, not returned (leases expire on their own).
  virtual void Unpin(const std::string& address, const std::string& lease_id,
                     const std::string& tenant) = 0;
  // Reads the pages of `keys` (in order) from `address` under `lease_id`, each verified
  // (checksums, key). Stops at the first page that fails: the result holds the verified
  // prefix (possibly empty). Unavailable/DeadlineExceeded when the store cannot be read by
  // `deadline`. On success `*path`, when given, names the data path that moved the bytes:
  // "ucx" (RMA from the store's registered memory), "grpc" (the ReadPages fallback) or
  // "inproc" (this process's own store). `lent` is the run's CachedRun::lent (empty: none):
  // a pool that can reads the lent pages without pinning them again.
  virtual absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(
      const std::string& address, std::span<const BlockKey> keys, const std::string& lease_id,
      const std::string& tenant, absl::Time deadline, std::string* path = nullptr,
      const std::string& lent = {}) = 0;
  // Read, as views (PoolPages): the same pages, checks and errors. The default holds Read's
  // vectors; a pool that reads into memory of its own lends that memory instead.
  virtual absl::StatusOr<PoolPages> ReadView(const std::string& address,
                                             std::span<const BlockKey> keys,
                                             const std::string& lease_id, const std::string& tenant,
                                             absl::Time deadline, std::string* path = nullptr,
                                             const std::string& lent = {});
  // Writes `pages` (one chain segment, in chain order, `root` the chain's first key) to every
  // home of the chain. Returns pages stored or already present on at least one home.
  virtual absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                          const PoolWriteOptions& options,
                                          const std::string& tenant) = 0;
};

// Publishes `pages` (chain blocks from, from + 1, ... of the chain `keys`, whose namespaces
// are ns[from], ns[from + 1], ... as KeyNamespace::ToString()) to `pool`: the shared prefix
// and the tenant's pages as separate writes (a write names one namespace), in chain order so
// every parent is stored before its child. `options.shared_namespace` is set per write.
// Returns the pages stored or already present; stops at the first failed write (logged).
int64_t PublishChain(PagePool& pool, std::span<const BlockKey> keys,
                     std::span<const std::string> ns, int64_t from, std::span<const PoolPage> pages,
                     PoolWriteOptions options, const std::string& tenant);

}  // namespace kv
