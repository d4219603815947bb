#include "kvstore/local_page_pool.h"

#include <charconv>
#include <utility>

#include "absl/time/clock.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv {

namespace {

absl::StatusOr<TieredStore::PinHandle> ParseLease(const std::string& id) {
  TieredStore::PinHandle h = 0;
  const auto [end, ec] = std::from_chars(id.data(), id.data() + id.size(), h);
  if (ec != std::errc() || end != id.data() + id.size()) {
    return absl::InvalidArgumentError(StrCat("local pool: bad lease id '", id, "'"));
  }
  return h;
}

}  // namespace

LocalPagePool::LocalPagePool(TieredStore* store, uint64_t max_page_bytes, Clock* clock,
                             std::string node_id)
    : store_(store), max_page_bytes_(max_page_bytes), clock_(clock), node_id_(std::move(node_id)) {}

absl::StatusOr<PoolPrefix> LocalPagePool::Lookup(std::span<const BlockKey> chain,
                                                 const std::string&) {
  if (chain.empty()) return absl::InvalidArgumentError("pool lookup: empty chain");
  TieredStore::LookupResult r = store_->Lookup(chain);
  PoolPrefix p;
  if (r.matched == 0) return p;
  p.node_id = node_id_;
  p.address = node_id_;
  p.tiers = std::move(r.tiers);
  p.has_resume = std::move(r.has_resume);
  return p;
}

absl::StatusOr<std::string> LocalPagePool::Pin(const std::string&, std::span<const BlockKey> keys,
                                               absl::Duration lease, const std::string&,
                                               int64_t* pinned) {
  const TieredStore::LookupResult r = store_->Lookup(keys);
  if (r.matched == 0) return absl::NotFoundError("local pool: no key of the run is cached");
  ASSIGN_OR_RETURN(TieredStore::PinHandle h,
                   store_->Pin(keys.first(r.matched), clock()->Now() + lease));
  *pinned = static_cast<int64_t>(r.matched);
  return StrCat(h);
}

void LocalPagePool::Unpin(const std::string&, const std::string& lease_id, const std::string&) {
  if (lease_id.empty()) return;
  absl::StatusOr<TieredStore::PinHandle> h = ParseLease(lease_id);
  absl::Status s = h.ok() ? store_->Unpin(*h) : h.status();
  if (!s.ok()) log::Info("pool_unpin_failed", "lease", lease_id, "error", s.ToString());
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> LocalPagePool::Read(
    const std::string&, std::span<const BlockKey> keys, const std::string& lease_id,
    const std::string&, absl::Time deadline) {
  ASSIGN_OR_RETURN(TieredStore::PinHandle h, ParseLease(lease_id));
  std::vector<std::vector<uint8_t>> out;
  for (const BlockKey& key : keys) {
    if (clock()->Now() > deadline) break;  // what was read is the verified prefix
    std::vector<uint8_t> buf(max_page_bytes_);
    absl::StatusOr<size_t> n = store_->Read(h, key, buf);
    if (absl::IsOutOfRange(n.status())) {  // a page larger than expected
      buf.resize(4 * buf.size() + (64u << 10));
      n = store_->Read(h, key, buf);
    }
    if (!n.ok()) {
      log::Warn("pool_page_unreadable", "key", key.Hex(), "error", n.status().ToString());
      break;
    }
    buf.resize(*n);
    out.push_back(std::move(buf));
  }
  return out;
}

bool LocalPagePool::AwaitSealed(const BlockKey& key) {
  // Another request is publishing the same page (AlreadyExists while it is pending): its Seal
  // follows its Write at once, so wait a little for it rather than let our children fail to
  // seal for want of a parent. Bounded; the clock is real time here on purpose (the other
  // writer runs in real time).
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  const BlockKey one[1] = {key};
  while (store_->Lookup(one).matched == 0) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

absl::StatusOr<int64_t> LocalPagePool::Publish(const BlockKey&, std::span<const PoolPage> pages,
                                               const PoolWriteOptions& options,
                                               const std::string&) {
  std::string ns;
  if (options.shared_namespace) {
    ns = KeyNamespace::Shared().ToString();
  } else {
    ASSIGN_OR_RETURN(KeyNamespace t, KeyNamespace::Tenant(options.tenant));
    ns = t.ToString();
  }
  std::optional<absl::Duration> retention;
  if (options.retention > absl::ZeroDuration()) retention = options.retention;
  int64_t stored = 0;
  std::vector<BlockKey> keys;
  for (const PoolPage& p : pages) {
    ASSIGN_OR_RETURN(PageHeader h, DecodePageHeader(p.bytes));
    if (h.key != p.key) return absl::InvalidArgumentError("pool publish: page key mismatch");
    PageMeta meta{.key = p.key,
                  .parent = h.parent,
                  .ns = ns,
                  .layout = options.key_space.layout_id,
                  .size = p.bytes.size(),
                  .resume_role = p.resume_role};
    absl::Status s = store_->Publish(meta, p.bytes, retention);
    if (absl::IsAlreadyExists(s) && !AwaitSealed(p.key)) {
      s = absl::UnavailableError("another writer's copy of the page did not seal in time");
    }
    if (!s.ok() && !absl::IsAlreadyExists(s)) {
      log::Warn("publish_failed", "key", p.key.Hex(), "error", s.ToString());
      break;  // children of a missing page could not be sealed anyway
    }
    keys.push_back(p.key);
    ++stored;
  }
  if (retention && !keys.empty()) store_->Retain(keys, *retention);
  return stored;
}

}  // namespace kv
