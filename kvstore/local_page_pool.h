// LocalPagePool: the PagePool (kvstore/page_pool.h) of one process's TieredStore, for the
// embedded `serve --role=all` node and for tests: the same calls the gRPC pool makes to store
// nodes, answered in-process by a PageStore (kvstore/page_store.h), so pages are admitted and
// leased by the same rules as on a store node. It has one home (its node id), and trusts its caller
// (the Cluster service authenticated it): a lookup or pin acts for the tenant it names
// (PageStoreCaller::TrustedFor: that tenant's namespace and the shared one; none: shared only), a
// read reads the copies its lease pinned, and a publish names its tenant (PoolWriteOptions.tenant)
// and is admitted for that tenant, or as a shared write.
//
// Pins are PageStore leases; a lease that expires before Read makes that read fail (a miss for
// the reader, never stale bytes). Publish admits each page in chain order; a page already
// cached counts as stored (its retention is refreshed with a retention hint), and one another
// request is publishing at the same time is waited for so that its children can seal.
//
// Thread-safety: safe for concurrent use. Not owned: the store (and options.clock), which must
// outlive the pool.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvstore/page_pool.h"
#include "kvstore/page_store.h"
#include "kvstore/tiered_store.h"

namespace kv {

class LocalPagePool final : public PagePool {
 public:
  // `options.node_id` names the pool's one home (its node_id and address).
  explicit LocalPagePool(TieredStore* store, PageStoreOptions options = {.node_id = "local"});

  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& tenant) override;
  absl::StatusOr<std::string> Pin(const std::string& address, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& tenant, int64_t* pinned,
                                  std::string* lent = nullptr) override;
  void Unpin(const std::string& address, const std::string& lease_id,
             const std::string& tenant) override;
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(
      const std::string& address, std::span<const BlockKey> keys, const std::string& lease_id,
      const std::string& tenant, absl::Time deadline, std::string* path = nullptr,
      const std::string& lent = {}) override;
  absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                  const PoolWriteOptions& options,
                                  const std::string& tenant) override;

  TieredStore& store() { return pages_.store(); }
  PageStore& page_store() { return pages_; }

 private:
  const std::string node_id_;
  Clock* const clock_;
  PageStore pages_;
};

}  // namespace kv
