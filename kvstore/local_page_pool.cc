#include "kvstore/local_page_pool.h"

#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {

LocalPagePool::LocalPagePool(TieredStore* store, PageStoreOptions options)
    : node_id_(options.node_id),
      clock_(options.clock != nullptr ? options.clock : store->clock()),
      pages_(store, std::move(options)) {}

namespace {

// The trusted caller acting for `tenant` (for no tenant when empty).
absl::StatusOr<PageStoreCaller> ActingFor(const std::string& tenant) {
  if (tenant.empty()) return PageStoreCaller::Trusted();
  return PageStoreCaller::TrustedFor(tenant);
}

}  // namespace

absl::StatusOr<PoolPrefix> LocalPagePool::Lookup(std::span<const BlockKey> chain,
                                                 const std::string& tenant) {
  if (chain.empty()) return absl::InvalidArgumentError("pool lookup: empty chain");
  ASSIGN_OR_RETURN(PageStoreCaller caller, ActingFor(tenant));
  const std::vector<VisibleBlock> blocks = pages_.Lookup(caller, chain, {.geometry = false});
  PoolPrefix p;
  if (blocks.empty()) return p;
  p.node_id = node_id_;
  p.address = node_id_;
  for (const VisibleBlock& b : blocks) {
    p.tiers.push_back(b.tier);
    p.has_resume.push_back(b.has_resume);
  }
  return p;
}

absl::StatusOr<std::string> LocalPagePool::Pin(const std::string&, std::span<const BlockKey> keys,
                                               absl::Duration lease, const std::string& tenant,
                                               int64_t* pinned, std::string* lent) {
  if (lent != nullptr) lent->clear();  // in-process reads need no lending
  ASSIGN_OR_RETURN(PageStoreCaller caller, ActingFor(tenant));
  ASSIGN_OR_RETURN(PinResult r, pages_.Pin(caller, keys, lease));
  if (r.lease_id.empty()) return absl::NotFoundError("local pool: no key of the run is cached");
  *pinned = static_cast<int64_t>(r.tiers.size());
  return std::move(r.lease_id);
}

void LocalPagePool::Unpin(const std::string&, const std::string& lease_id, const std::string&) {
  if (lease_id.empty()) return;
  if (pages_.Unpin(PageStoreCaller::Trusted(), lease_id) == 0) {
    log::Info("pool_unpin_failed", "lease", lease_id, "error", "unknown or expired lease");
  }
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> LocalPagePool::Read(
    const std::string&, std::span<const BlockKey> keys, const std::string& lease_id,
    const std::string&, absl::Time deadline, std::string* path, const std::string&) {
  if (path != nullptr) *path = "inproc";
  std::vector<std::vector<uint8_t>> out;
  for (const BlockKey& key : keys) {
    if (clock_->Now() > deadline) break;  // what was read is the verified prefix
    // The copy the lease pinned (for the tenant it was pinned for).
    absl::StatusOr<std::vector<uint8_t>> page =
        pages_.Read(PageStoreCaller::Trusted(), key, lease_id);
    if (!page.ok()) {
      log::Warn("pool_page_unreadable", "key", key.Hex(), "error", page.status().ToString());
      break;
    }
    out.push_back(*std::move(page));
  }
  return out;
}

absl::StatusOr<int64_t> LocalPagePool::Publish(const BlockKey&, std::span<const PoolPage> pages,
                                               const PoolWriteOptions& options,
                                               const std::string&) {
  // A tenant's pages are admitted for that tenant; shared ones for the tenant that wrote them
  // (the same parent rules as a store node applies), or for no tenant without one.
  PageStoreCaller caller = PageStoreCaller::Trusted();
  if (!options.tenant.empty() || !options.shared_namespace) {
    ASSIGN_OR_RETURN(caller, PageStoreCaller::TrustedFor(options.tenant));
  }
  AdmitOptions admit{.layout = options.key_space.layout_id,
                     .page_tokens = options.key_space.page_tokens,
                     .shared_namespace = options.shared_namespace};
  if (options.retention > absl::ZeroDuration()) admit.retention = options.retention;
  int64_t stored = 0;
  for (const PoolPage& p : pages) {
    admit.resume_role = p.resume_role;
    const AdmitResult r = pages_.Admit(caller, p.key, p.bytes, admit);
    if (r.outcome == AdmitOutcome::kRejected) {
      log::Warn("publish_failed", "key", p.key.Hex(), "reason", ReasonName(ReasonOf(r.error)),
                "error", r.error.ToString());
      break;  // children of a missing page could not be sealed anyway
    }
    ++stored;
  }
  return stored;
}

}  // namespace kv
