#include "kvstore/tiered_store.h"

#include <algorithm>

#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv {

absl::Status VerifyPage(std::span<const uint8_t> page, const PageMeta& meta) {
  absl::StatusOr<PageView> view = DecodePage(page);
  if (!view.ok()) {
    return absl::DataLossError(StrCat("page ", meta.key.Hex(), ": ", view.status().message()));
  }
  const PageHeader& h = view->header();
  if (h.key != meta.header_key()) {
    return absl::DataLossError(StrCat("page stored as ", meta.key.Hex(), " names key ", h.key.Hex(),
                                      ", not ", meta.header_key().Hex()));
  }
  if (h.parent != meta.header_parent()) {
    return absl::DataLossError(StrCat("page ", meta.key.Hex(), ": parent ", h.parent.Hex(),
                                      " != expected ", meta.header_parent().Hex()));
  }
  if (h.layout.name != meta.layout) {
    return absl::DataLossError(
        StrCat("page ", meta.key.Hex(), ": layout ", h.layout.name, " != expected ", meta.layout));
  }
  if (page.size() != meta.size) {
    return absl::DataLossError(
        StrCat("page ", meta.key.Hex(), ": ", page.size(), " bytes != expected ", meta.size));
  }
  return absl::OkStatus();
}

TieredStore::TieredStore(TieredStoreOptions options,
                         std::array<std::unique_ptr<Tier>, kNumTiers> tiers)
    : options_(std::move(options)), tiers_(std::move(tiers)), index_(options_.leaf_first) {
  index_.SetResidencyListener(options_.residency_listener);
  MetricsRegistry* reg = options_.metrics;
  metrics_ = std::make_unique<Metrics>();
  for (int t = 0; t < kNumTiers; ++t) {
    Labels l = {{"tier", std::string(TierName(static_cast<TierKind>(t)))}};
    auto c = [&](std::string_view name, std::string_view help) {
      return reg->GetCounter(name, help, l);
    };
    metrics_->hits[t] = c("kvstrata_store_hits_total", "Looked-up blocks resident in a tier");
    metrics_->misses[t] = c("kvstrata_store_misses_total", "Looked-up blocks not in a tier");
    metrics_->reads[t] = c("kvstrata_store_reads_total", "Pages served from a tier");
    metrics_->read_bytes[t] = c("kvstrata_store_read_bytes_total", "Page bytes served");
    metrics_->evictions[t] = c("kvstrata_store_evictions_total", "Copies evicted by pressure");
    metrics_->demotions[t] = c("kvstrata_store_demotions_total", "Copies demoted into a tier");
    metrics_->promotions[t] = c("kvstrata_store_promotions_total", "Copies promoted on a hit");
    metrics_->quarantined[t] =
        c("kvstrata_store_quarantined_total", "Page copies that failed verification");
    metrics_->bytes[t] = reg->GetGauge("kvstrata_store_bytes", "Bytes held by a tier", l);
    metrics_->write_errors[t] =
        c("kvstrata_store_tier_write_errors_total", "Media errors of a tier's writes and seals");
    metrics_->healthy[t] = reg->GetGauge("kvstrata_store_tier_healthy",
                                         "1 while a tier takes writes, 0 while it is failing", l);
    metrics_->healthy[t]->Set(Present(t) ? 1 : 0);
  }
  metrics_->poisoned = reg->GetCounter("kvstrata_store_poisoned_leases_total",
                                       "Leases that expired while pages were lent");
  metrics_->expired =
      reg->GetCounter("kvstrata_store_expired_leases_total", "Leases released by their deadline");
  metrics_->resume_strips = reg->GetCounter("kvstrata_store_resume_strips_total",
                                            "Pages whose v4 resume section the store stripped");
  metrics_->resume_bytes_freed = reg->GetCounter("kvstrata_store_resume_bytes_freed_total",
                                                 "Tier bytes freed by stripping resume sections");
  metrics_->persisted = reg->GetCounter("kvstrata_store_persisted_pages_total",
                                        "Pages written back to the nvme tier (durability)");
  metrics_->recovered = reg->GetGauge("kvstrata_store_recovered_pages",
                                      "Pages recovered from the nvme tier when the store opened");
  metrics_->lookup_seconds = reg->GetHistogram(
      "kvstrata_store_lookup_seconds", "Longest-prefix lookup latency", Histogram::LatencyBounds());
  if (options_.background_threads > 0) {
    threads_ = std::make_unique<ThreadPool>(options_.background_threads);
  }
}

TieredStore::~TieredStore() {
  persist_stop_ = true;  // queued write-backs are dropped; Flush() is the way to keep them
  if (threads_) threads_->Shutdown();
}

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(
    TieredStoreOptions options, std::array<std::unique_ptr<Tier>, kNumTiers> tiers) {
  bool any = false;
  for (int t = 0; t < kNumTiers; ++t) {
    if (tiers[t] == nullptr) continue;
    any = true;
    if (static_cast<int>(tiers[t]->kind()) != t) {
      return absl::InvalidArgumentError(StrCat("tier slot ", TierName(static_cast<TierKind>(t)),
                                               " holds a ", TierName(tiers[t]->kind()), " tier"));
    }
  }
  if (!any) return absl::InvalidArgumentError("a tiered store needs at least one tier");
  for (const auto& [ns, q] : options.quotas) {
    if (ns.empty()) return absl::InvalidArgumentError("quota for an empty namespace");
  }
  if (options.clock == nullptr) options.clock = Clock::Real();
  if (options.metrics == nullptr) options.metrics = &MetricsRegistry::Default();
  if (!options.verify) options.verify = VerifyPage;
  std::unique_ptr<TieredStore> s(new TieredStore(std::move(options), std::move(tiers)));
  RETURN_IF_ERROR(s->Recover());
  return s;
}

int TieredStore::LowerTier(int t) const {
  for (int l = t + 1; l < kNumTiers; ++l) {
    if (Present(l) && !health_[l].failing) return l;
  }
  return -1;
}

PageMeta TieredStore::MetaOf(const IndexEntry& e) const {
  PageMeta m;
  m.key = e.key;
  m.parent = e.parent;
  m.ns = e.ns;
  m.layout = e.layout;
  m.size = e.size;
  m.sealed = true;
  m.last_access = e.last_access;
  m.resume_role = e.resume_role;
  m.resume_bytes = e.resume_bytes;
  m.geometry = e.geometry;
  m.engine_hash = e.engine_hash;
  m.page_key = e.page_key;
  m.page_parent = e.page_parent;
  return m;
}

void TieredStore::Charge(const std::string& ns, int t, int64_t bytes) {
  auto& u = usage_[ns];
  u[t] += bytes;
  metrics_->bytes[t]->Set(static_cast<double>(tiers_[t]->used_bytes()));
}

// Rebuilds the index from the slowest persistent tier's sealed pages, parents first.
absl::Status TieredStore::Recover() {
  if (!Present(static_cast<int>(TierKind::kNvme))) return absl::OkStatus();
  Tier* nvme = tiers_[static_cast<int>(TierKind::kNvme)].get();
  ASSIGN_OR_RETURN(std::vector<PageMeta> metas, nvme->List());
  absl::flat_hash_map<BlockKey, std::vector<size_t>> children;
  std::vector<size_t> frontier;
  for (size_t i = 0; i < metas.size(); ++i) {
    if (metas[i].parent.IsZero()) {
      frontier.push_back(i);
    } else {
      children[metas[i].parent].push_back(i);
    }
  }
  MutexLock l(&mu_);
  size_t inserted = 0;
  while (!frontier.empty()) {
    size_t i = frontier.back();
    frontier.pop_back();
    const PageMeta& m = metas[i];
    RETURN_IF_ERROR(index_.Insert(m, TierKind::kNvme, m.last_access, absl::ZeroDuration()));
    Charge(m.ns, static_cast<int>(TierKind::kNvme), static_cast<int64_t>(nvme->Footprint(m.size)));
    ++inserted;
    auto it = children.find(m.key);
    if (it != children.end()) {
      frontier.insert(frontier.end(), it->second.begin(), it->second.end());
      children.erase(it);
    }
  }
  size_t orphans = 0;
  for (const auto& [parent, idxs] : children) {
    for (size_t i : idxs) {
      if (index_.Contains(metas[i].key)) continue;
      (void)nvme->Erase(metas[i].key);  // its prefix is gone; it can never be reached
      ++orphans;
    }
  }
  stats_.recovered_pages = inserted;
  metrics_->recovered->Set(static_cast<double>(inserted));
  log::Info("tiered_store_recovered", "pages", inserted, "orphans_dropped", orphans);
  return absl::OkStatus();
}

void TieredStore::ReapLocked(absl::Time now) {
  while (!lease_deadlines_.empty() && lease_deadlines_.begin()->first <= now) {
    PinHandle h = lease_deadlines_.begin()->second;
    lease_deadlines_.erase(lease_deadlines_.begin());
    auto it = leases_.find(h);
    if (it == leases_.end()) continue;
    if (it->second.loans > 0) {
      // Lent memory may still be in use by a transfer: keep it pinned until Unpin().
      it->second.poisoned = true;
      ++stats_.poisoned_leases;
      metrics_->poisoned->Inc();
      log::Warn("lease_expired_with_loans", "handle", h, "loans", it->second.loans);
      continue;
    }
    (void)ReleaseLeaseLocked(it->second);
    leases_.erase(it);
    ++stats_.expired_leases;
    metrics_->expired->Inc();
  }
  for (auto it = pending_.begin(); it != pending_.end();) {
    auto cur = it++;
    if (cur->second.deadline > now || cur->second.sealing) continue;
    int t = static_cast<int>(cur->second.tier);
    (void)tiers_[t]->Erase(cur->first);
    Charge(cur->second.meta.ns, t,
           -static_cast<int64_t>(tiers_[t]->Footprint(cur->second.meta.size)));
    log::Warn("pending_write_timed_out", "key", cur->first.Hex());
    pending_.erase(cur);
  }
}

absl::Status TieredStore::ReleaseLeaseLocked(Lease& lease) {
  for (const BlockKey& k : lease.keys) (void)index_.Unpin(k);
  lease.keys.clear();
  ReclaimDoomedLocked();
  return absl::OkStatus();
}

TieredStore::LookupResult TieredStore::Lookup(std::span<const BlockKey> chain) {
  absl::Time start = absl::Now();  // latency metric only; never used for logic
  LookupResult r;
  {
    MutexLock l(&mu_);
    ReapLocked(Now());
    r.matched = index_.LongestPrefix(chain);
    r.tiers.reserve(r.matched);
    r.blocks.reserve(r.matched);
    std::array<uint64_t, kNumTiers> hits{};
    for (size_t i = 0; i < r.matched; ++i) {  // one probe per matched block
      if (!doomed_.empty() && DeadLocked(chain[i])) {
        r.matched = i;
        break;
      }
      const IndexEntry* e = index_.Find(chain[i]);
      r.tiers.push_back(static_cast<TierKind>(ServingTierLocked(*e, false)));
      r.has_resume.push_back(e->resume_bytes != 0);
      r.blocks.push_back({e->ns, e->layout, e->size, e->geometry});
      for (int t = 0; t < kNumTiers; ++t) hits[t] += (e->residency >> t) & 1u;
    }
    for (int t = 0; t < kNumTiers; ++t) {
      if (!Present(t)) continue;
      stats_.tiers[t].hits += hits[t];
      stats_.tiers[t].misses += chain.size() - hits[t];
      metrics_->hits[t]->Inc(static_cast<double>(hits[t]));
      metrics_->misses[t]->Inc(static_cast<double>(chain.size() - hits[t]));
    }
  }
  metrics_->lookup_seconds->Observe(absl::ToDoubleSeconds(absl::Now() - start));
  return r;
}

std::optional<TieredStore::BlockInfo> TieredStore::Describe(const BlockKey& key) {
  MutexLock l(&mu_);
  const IndexEntry* e = index_.Find(key);
  if (e == nullptr || DeadLocked(key)) return std::nullopt;
  return BlockInfo{e->ns, e->layout, e->size, e->geometry};
}

absl::StatusOr<TieredStore::PinHandle> TieredStore::Pin(std::span<const BlockKey> keys,
                                                        absl::Time deadline) {
  if (keys.empty()) return absl::InvalidArgumentError("Pin: no keys");
  MutexLock l(&mu_);
  absl::Time now = Now();
  ReapLocked(now);
  if (deadline <= now) {
    return absl::InvalidArgumentError(
        StrCat("Pin: deadline ", absl::FormatTime(deadline), " is not in the future"));
  }
  deadline = std::min(deadline, now + options_.max_lease);
  for (const BlockKey& k : keys) {
    if (!index_.Contains(k) || DeadLocked(k)) {
      return absl::NotFoundError(StrCat("Pin: block ", k.Hex(), " is not cached"));
    }
  }
  for (const BlockKey& k : keys) {
    RETURN_IF_ERROR(index_.Pin(k));
    index_.Touch(k, now);
  }
  PinHandle h = next_handle_++;
  leases_[h] = Lease{std::vector<BlockKey>(keys.begin(), keys.end()), deadline, 0, false};
  lease_deadlines_.insert({deadline, h});
  return h;
}

absl::Status TieredStore::Renew(PinHandle handle, absl::Time deadline) {
  MutexLock l(&mu_);
  absl::Time now = Now();
  ReapLocked(now);
  auto it = leases_.find(handle);
  if (it == leases_.end() || it->second.poisoned) {
    return absl::NotFoundError(StrCat("lease ", handle, " is unknown or expired"));
  }
  if (deadline <= now) return absl::InvalidArgumentError("Renew: deadline is not in the future");
  lease_deadlines_.erase({it->second.deadline, handle});
  it->second.deadline = std::min(deadline, now + options_.max_lease);
  lease_deadlines_.insert({it->second.deadline, handle});
  return absl::OkStatus();
}

absl::Status TieredStore::Unpin(PinHandle handle) {
  MutexLock l(&mu_);
  ReapLocked(Now());
  auto it = leases_.find(handle);
  if (it == leases_.end()) {
    return absl::NotFoundError(StrCat("lease ", handle, " is unknown or expired"));
  }
  lease_deadlines_.erase({it->second.deadline, handle});
  RETURN_IF_ERROR(ReleaseLeaseLocked(it->second));
  leases_.erase(it);
  return absl::OkStatus();
}

}  // namespace kv
