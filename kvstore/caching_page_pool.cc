#include "kvstore/caching_page_pool.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {

CachingPagePool::CachingPagePool(PagePool* remote, TieredStore* local,
                                 CachingPagePoolOptions options)
    : remote_(remote), options_(std::move(options)) {
  if (local != nullptr) {
    local_ = std::make_unique<LocalPagePool>(local, PageStoreOptions{.node_id = options_.node_id});
  }
  MetricsRegistry* reg = options_.metrics ? options_.metrics : &MetricsRegistry::Default();
  hits_ = reg->GetCounter("kvstrata_worker_local_cache_hits_total",
                          "Pages a worker read from its own local tier (no network)");
  misses_ = reg->GetCounter("kvstrata_worker_local_cache_misses_total",
                            "Pages a worker asked of the remote pool after its local tier");
}

absl::StatusOr<PoolPrefix> CachingPagePool::Lookup(std::span<const BlockKey> chain,
                                                   const std::string& tenant) {
  return remote_->Lookup(chain, tenant);
}

absl::StatusOr<std::string> CachingPagePool::Pin(const std::string& address,
                                                 std::span<const BlockKey> keys,
                                                 absl::Duration lease, const std::string& tenant,
                                                 int64_t* pinned, std::string* lent) {
  return remote_->Pin(address, keys, lease, tenant, pinned, lent);
}

void CachingPagePool::Unpin(const std::string& address, const std::string& lease_id,
                            const std::string& tenant) {
  remote_->Unpin(address, lease_id, tenant);
}

std::vector<std::vector<uint8_t>> CachingPagePool::ReadLocal(const PageStoreCaller& caller,
                                                             std::span<const BlockKey> keys,
                                                             absl::Time deadline) {
  std::vector<std::vector<uint8_t>> out;
  Clock* clock = local_->store().clock();
  for (const BlockKey& key : keys) {
    if (clock->Now() > deadline) break;
    // Absent, another tenant's, or failed verification (then quarantined): the rest is remote.
    absl::StatusOr<std::vector<uint8_t>> page = local_->page_store().Read(caller, key);
    if (!page.ok()) break;
    out.push_back(*std::move(page));
  }
  return out;
}

void CachingPagePool::Keep(const PageStoreCaller& caller, std::span<const BlockKey> keys,
                           std::span<const std::span<const uint8_t>> pages) {
  const AdmitOptions admit{.layout = options_.layout, .page_tokens = options_.page_tokens};
  for (size_t i = 0; i < pages.size(); ++i) {
    const AdmitResult r = local_->page_store().Admit(caller, keys[i], pages[i], admit);
    if (r.outcome == AdmitOutcome::kRejected) {
      // Not an error of the read: the page was served; the local tier is only a cache (a
      // full tier, or a key held locally under another namespace).
      log::Debug("local_cache_keep_skipped", "key", keys[i].Hex(), "reason",
                 ReasonName(ReasonOf(r.error)));
      break;  // its children could not chain from it
    }
  }
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> CachingPagePool::Read(
    const std::string& address, std::span<const BlockKey> keys, const std::string& lease_id,
    const std::string& tenant, absl::Time deadline, std::string* path, const std::string& lent) {
  ASSIGN_OR_RETURN(PoolPages view, ReadView(address, keys, lease_id, tenant, deadline, path, lent));
  return view.Copy();
}

absl::StatusOr<PoolPages> CachingPagePool::ReadView(const std::string& address,
                                                    std::span<const BlockKey> keys,
                                                    const std::string& lease_id,
                                                    const std::string& tenant, absl::Time deadline,
                                                    std::string* path, const std::string& lent) {
  absl::StatusOr<PageStoreCaller> caller = absl::UnavailableError("no local tier");
  if (local_ != nullptr) {
    caller = PageStoreCaller::Tenant(tenant);
  }
  if (!caller.ok()) return remote_->ReadView(address, keys, lease_id, tenant, deadline, path, lent);

  auto local =
      std::make_shared<std::vector<std::vector<uint8_t>>>(ReadLocal(*caller, keys, deadline));
  const size_t hits = local->size();
  hits_->Inc(static_cast<double>(hits));
  PoolPages out{.pages = {local->begin(), local->end()}};
  if (hits == keys.size()) {
    if (path != nullptr) *path = "local";
    out.hold = std::move(local);
    return out;
  }
  misses_->Inc(static_cast<double>(keys.size() - hits));
  const std::span<const BlockKey> rest = keys.subspan(hits);
  std::string remote_path;
  absl::StatusOr<PoolPages> remote =
      remote_->ReadView(address, rest, lease_id, tenant, deadline, &remote_path, lent);
  if (!remote.ok()) {
    if (hits == 0) return remote.status();
    log::Warn("pool_read_failed_after_local_hits", "local_pages", hits, "error",
              remote.status().ToString());
    if (path != nullptr) *path = "local";
    out.hold = std::move(local);
    return out;
  }
  Keep(*caller, rest, remote->pages);
  out.pages.insert(out.pages.end(), remote->pages.begin(), remote->pages.end());
  out.hold = std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
      std::move(local), std::move(remote->hold));
  if (path != nullptr) *path = hits == 0 ? remote_path : StrCat("local+", remote_path);
  return out;
}

absl::StatusOr<int64_t> CachingPagePool::Publish(const BlockKey& root,
                                                 std::span<const PoolPage> pages,
                                                 const PoolWriteOptions& options,
                                                 const std::string& tenant) {
  absl::StatusOr<int64_t> stored = remote_->Publish(root, pages, options, tenant);
  if (!stored.ok() || *stored <= 0 || local_ == nullptr) return stored;
  // The local copy is the caller's own (its authenticated tenant, never options.tenant alone).
  if (!PageStoreCaller::Tenant(tenant).ok()) return stored;
  PoolWriteOptions local = options;
  local.tenant = tenant;
  const size_t n = std::min(pages.size(), static_cast<size_t>(*stored));
  absl::StatusOr<int64_t> kept = local_->Publish(root, pages.first(n), local, tenant);
  if (!kept.ok()) log::Debug("local_cache_publish_skipped", "error", kept.status().ToString());
  return stored;
}

}  // namespace kv
