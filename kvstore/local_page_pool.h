// LocalPagePool: the PagePool (kvstore/page_pool.h) of one process's TieredStore, for the
// embedded `serve --role=all` node and for tests: the same calls the gRPC pool makes to store
// nodes, answered in-process. It has one home ("local"), trusts its caller's tenant (the
// Cluster service authenticated it), and keys pages in the namespace the publisher names
// (PoolWriteOptions: shared, or the tenant's).
//
// Pins are TieredStore leases, named by their handle; a lease that expires before Read makes
// that read fail (a miss for the reader, never stale bytes). Publish writes each page in chain
// order (Write + Seal); a page already cached counts as stored, and one another request is
// publishing at the same time is waited for (at most 2 s) so that its children can seal; with
// a retention hint the published chain's retention is refreshed.
//
// Thread-safety: safe for concurrent use (the TieredStore is). Not owned: the store and the
// clock, which must outlive the pool.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/clock.h"
#include "kvstore/page_pool.h"
#include "kvstore/tiered_store.h"

namespace kv {

class LocalPagePool final : public PagePool {
 public:
  // `max_page_bytes`: the largest page a Read may return (larger ones are read with a grown
  // buffer). `clock` null: Clock::Real().
  LocalPagePool(TieredStore* store, uint64_t max_page_bytes, Clock* clock = nullptr,
                std::string node_id = "local");

  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& authorization) override;
  absl::StatusOr<std::string> Pin(const std::string& address, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& authorization,
                                  int64_t* pinned) override;
  void Unpin(const std::string& address, const std::string& lease_id,
             const std::string& authorization) override;
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(const std::string& address,
                                                         std::span<const BlockKey> keys,
                                                         const std::string& lease_id,
                                                         const std::string& authorization,
                                                         absl::Time deadline) override;
  absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                  const PoolWriteOptions& options,
                                  const std::string& authorization) override;

  TieredStore& store() { return *store_; }

 private:
  Clock* clock() const { return clock_ != nullptr ? clock_ : Clock::Real(); }
  // True once `key` is sealed (indexed), waiting boundedly for another writer's Seal.
  bool AwaitSealed(const BlockKey& key);

  TieredStore* const store_;
  const uint64_t max_page_bytes_;
  Clock* const clock_;
  const std::string node_id_;
};

}  // namespace kv
