// CachingPagePool: a worker's local host tier as a cache in front of the page pool (DESIGN.md
// "local first, then the homes"; issue #15 item 5). A PagePool decorator over the remote pool
// (cluster/page_pool.h's GrpcPagePool on a worker; any PagePool in tests) and a TieredStore of
// this process, reached through a PageStore so that local pages are admitted, namespaced and
// verified by the same rules as on a store node (kvstore/page_store.h):
//
//   Lookup, Pin, Unpin  go to the remote pool unchanged (the router pins on the homes).
//   Read                serves the longest prefix of `keys` held locally and visible to the
//                       caller's tenant (each page verified; a corrupt one is quarantined by
//                       the store and becomes a miss), without network; reads the rest from
//                       the remote pool under the caller's lease; then admits the remote pages
//                       into the local tier under the caller's tenant namespace.
//   Publish             writes through to the remote pool, then keeps the pages the remote
//                       pool stored, under the namespace the write names (shared or the
//                       caller's tenant).
//
// Tenancy. Every call names the tenant it acts for (`tenant`, authenticated by the caller: on a
// worker, the tenant the Worker service identified the call as): a page cached for
// tenant A is never served to tenant B unless it was kept in the shared namespace. A remote
// read does not say which namespace a page came from, so a page read from the pool is kept
// under the reader's tenant namespace even when it is shared on the homes: other tenants then
// read it from the pool (docs/design-notes.md item 17). A call whose tenant is not a valid
// tenant name bypasses the local tier.
//
// Read's `*path` is "local" when every page came from the local tier, the remote pool's path
// ("ucx", "grpc", "inproc") when none did, and "local+<remote path>" for a mixed read. Local
// hits and misses are counted in pages: kvstrata_worker_local_cache_hits_total and
// kvstrata_worker_local_cache_misses_total (a miss is a page asked of the remote pool).
//
// Without a local store (nullptr, e.g. a capacity of 0) the pool forwards every call.
//
// Thread-safety: safe for concurrent use. Not owned: the remote pool, the store and the
// metrics registry, which must outlive the pool. Results are values owned by the caller.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/metrics.h"
#include "kvstore/local_page_pool.h"
#include "kvstore/page_pool.h"
#include "kvstore/page_store.h"
#include "kvstore/tiered_store.h"

namespace kv {

struct CachingPagePoolOptions {
  // The key space of the pages read and kept (what admission checks them against).
  std::string layout;
  uint32_t page_tokens = 0;  // 0: not checked
  std::string node_id = "worker-local";
  MetricsRegistry* metrics = nullptr;  // nullptr: MetricsRegistry::Default()
};

class CachingPagePool final : public PagePool {
 public:
  // `local` may be nullptr (no local tier: every call is forwarded to `remote`).
  CachingPagePool(PagePool* remote, TieredStore* local, CachingPagePoolOptions options);

  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& tenant) override;
  absl::StatusOr<std::string> Pin(const std::string& address, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& tenant, int64_t* pinned,
                                  std::string* lent = nullptr) override;
  void Unpin(const std::string& address, const std::string& lease_id,
             const std::string& tenant) override;
  // See the file comment. On a remote error after a local prefix, that prefix is returned
  // (the verified prefix, path "local"); with nothing local, the remote error.
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(
      const std::string& address, std::span<const BlockKey> keys, const std::string& lease_id,
      const std::string& tenant, absl::Time deadline, std::string* path = nullptr,
      const std::string& lent = {}) override;
  absl::StatusOr<PoolPages> ReadView(const std::string& address, std::span<const BlockKey> keys,
                                     const std::string& lease_id, const std::string& tenant,
                                     absl::Time deadline, std::string* path = nullptr,
                                     const std::string& lent = {}) override;
  absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                  const PoolWriteOptions& options,
                                  const std::string& tenant) override;

 private:
  // The local tier's verified prefix of `keys` visible to `caller`, read by `deadline`.
  std::vector<std::vector<uint8_t>> ReadLocal(const PageStoreCaller& caller,
                                              std::span<const BlockKey> keys, absl::Time deadline);
  // Admits remote `pages` (keys[i] for pages[i]) into the local tier as `caller`'s.
  void Keep(const PageStoreCaller& caller, std::span<const BlockKey> keys,
            std::span<const std::span<const uint8_t>> pages);

  PagePool* const remote_;
  const CachingPagePoolOptions options_;
  std::unique_ptr<LocalPagePool> local_;  // nullptr without a local tier
  Counter* hits_;
  Counter* misses_;
};

}  // namespace kv
