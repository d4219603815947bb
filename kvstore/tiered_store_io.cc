// TieredStore: reads, publishing, placement (eviction, demotion, promotion, write-back) and
// quarantine. The lease/lookup half is in tiered_store.cc.
#include <algorithm>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "kvstore/resume_policy.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {
constexpr int kMaxEvictionsPerWrite = 1 << 20;
uint8_t Bit(int t) { return static_cast<uint8_t>(1u << t); }
// A verified page's geometry (unknown if its header does not decode: a test's verifier).
PageGeometry GeometryOf(std::span<const uint8_t> page) {
  absl::StatusOr<PageHeader> h = DecodePageHeader(page);
  if (!h.ok()) return {};
  return {h->token_count, h->first_layer, h->layer_count};
}
}  // namespace

int TieredStore::ServingTierLocked(const IndexEntry& e, bool lendable) const {
  auto d = doomed_.find(e.key);
  uint8_t doomed = d == doomed_.end() ? 0 : d->second;
  for (int t = 0; t < kNumTiers; ++t) {
    if (!Present(t) || !e.resident(static_cast<TierKind>(t)) || (doomed & Bit(t))) continue;
    if (lendable && t == static_cast<int>(TierKind::kNvme)) continue;
    return t;
  }
  return -1;
}

bool TieredStore::DeadLocked(const BlockKey& key) const {
  auto it = doomed_.find(key);
  if (it == doomed_.end()) return false;
  const IndexEntry* e = index_.Find(key);
  return e == nullptr || (e->residency & ~it->second) == 0;
}

// A doomed key holds one extra index pin (the quarantine pin) until its bad copies are
// reclaimed, so it is never offered as an eviction victim or demoted meanwhile.
void TieredStore::QuarantineLocked(const BlockKey& key, int t, const absl::Status& why) {
  auto doom = [&](const BlockKey& k, uint8_t bits) {
    auto [it, inserted] = doomed_.try_emplace(k, 0);
    if (inserted) (void)index_.Pin(k);
    it->second |= bits;
  };
  auto d = doomed_.find(key);
  if (d != doomed_.end() && (d->second & Bit(t))) return;
  doom(key, Bit(t));
  ++stats_.tiers[t].quarantined;
  metrics_->quarantined[t]->Inc();
  log::Warn("page_quarantined", "key", key.Hex(), "tier", TierName(static_cast<TierKind>(t)),
            "reason", why.ToString());
  if (DeadLocked(key)) {
    // No good copy is left: the block and everything cached below it become unreachable.
    for (const BlockKey& c : index_.Descendants(key)) doom(c, index_.Find(c)->residency);
  }
}

void TieredStore::ReclaimDoomedLocked() {
  bool progress = true;
  while (progress && !doomed_.empty()) {
    progress = false;
    for (auto it = doomed_.begin(); it != doomed_.end();) {
      auto cur = it++;
      const BlockKey key = cur->first;
      const IndexEntry* e = index_.Find(key);
      if (e == nullptr) {
        doomed_.erase(cur);
        continue;
      }
      if (e->pins > 1) continue;  // someone besides the quarantine pin still reads it
      (void)index_.Unpin(key);
      for (int t = 0; t < kNumTiers && e != nullptr; ++t) {
        if (!(cur->second & Bit(t)) || !e->resident(static_cast<TierKind>(t))) continue;
        std::string ns = e->ns;
        uint64_t size = e->size;
        if (!index_.RemoveResidency(key, static_cast<TierKind>(t)).ok()) continue;
        (void)tiers_[t]->Erase(key);
        Charge(ns, t, -static_cast<int64_t>(tiers_[t]->Footprint(size)));
        cur->second &= static_cast<uint8_t>(~Bit(t));
        progress = true;
        e = index_.Find(key);
      }
      if (e == nullptr || (cur->second & e->residency) == 0) {
        doomed_.erase(cur);
      } else {
        (void)index_.Pin(key);  // children still hold it: keep it out of eviction
      }
    }
  }
}

absl::Status TieredStore::CopyIntoTierLocked(int t, const PageMeta& meta,
                                             std::span<const uint8_t> bytes) {
  if (doomed_.contains(meta.key)) {
    return absl::FailedPreconditionError(StrCat(meta.key.Hex(), " is quarantined"));
  }
  // Pin the key while room is made, so the cascade of demotions cannot evict it below us.
  RETURN_IF_ERROR(index_.Pin(meta.key));
  absl::Status st = MakeRoomLocked(t, meta.ns, meta.size);
  if (st.ok() && doomed_.contains(meta.key)) {  // an ancestor was quarantined meanwhile
    st = absl::FailedPreconditionError(StrCat(meta.key.Hex(), " was quarantined"));
  }
  std::string_view sv(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (st.ok()) {
    st = tiers_[t]->Write(meta, sv);
    if (st.ok()) {
      st = tiers_[t]->Seal(meta.key);
      if (!st.ok()) (void)tiers_[t]->Erase(meta.key);
    }
    NoteTierResultLocked(t, st);
  }
  if (st.ok()) {
    st = index_.AddResidency(meta.key, static_cast<TierKind>(t));
    Charge(meta.ns, t, static_cast<int64_t>(tiers_[t]->Footprint(meta.size)));
    stats_.tiers[t].write_bytes += meta.size;
  }
  (void)index_.Unpin(meta.key);
  return st;
}

absl::Status TieredStore::MakeRoomLocked(int t, const std::string& ns, uint64_t size) {
  Tier* tier = tiers_[t].get();
  uint64_t fp = tier->Footprint(size);
  if (fp == 0) {
    return absl::InvalidArgumentError(
        StrCat("page of ", size, " bytes can never fit the ", TierName(tier->kind()), " tier"));
  }
  uint64_t quota = 0;
  auto q = options_.quotas.find(ns);
  if (q != options_.quotas.end()) quota = q->second[t];
  if (quota > 0 && fp > quota) {
    return absl::ResourceExhaustedError(StrCat("page of ", fp, " bytes exceeds ", ns, "'s ",
                                               TierName(tier->kind()), " quota of ", quota));
  }
  auto quota_ok_now = [&] {
    return quota == 0 || usage_[ns][t] + static_cast<int64_t>(fp) <= static_cast<int64_t>(quota);
  };
  auto has_room = [&] { return quota_ok_now() && tier->HasRoom(size); };
  if (options_.strip_resume_on_pressure && !index_.ResumeKeys().empty() && !has_room()) {
    // Resume sections go before any page (resume_policy.h): strip, then evict if still full.
    ASSIGN_OR_RETURN(bool room,
                     StripForPressureLocked(t, quota_ok_now() ? nullptr : &ns, has_room));
    if (room) return absl::OkStatus();
  }
  bool can_demote = options_.demote_on_pressure && LowerTier(t) >= 0;
  for (int i = 0; i < kMaxEvictionsPerWrite; ++i) {
    bool quota_ok = quota_ok_now();
    if (quota_ok && tier->HasRoom(size)) return absl::OkStatus();
    std::optional<BlockKey> victim =
        index_.PickVictim(static_cast<TierKind>(t), quota_ok ? nullptr : &ns, can_demote);
    if (!victim) {
      return MarkRetryable(absl::ResourceExhaustedError(
          StrCat(TierName(tier->kind()), " tier: no evictable page", quota_ok ? "" : " in ",
                 quota_ok ? "" : ns, " (all pinned or prefixes of pinned pages)")));
    }
    RETURN_IF_ERROR(EvictLocked(t, *victim));
  }
  return absl::InternalError("eviction did not converge");
}

absl::Status TieredStore::EvictLocked(int t, const BlockKey& key) {
  const IndexEntry* e = index_.Find(key);
  if (e == nullptr) return absl::NotFoundError(StrCat("evict: ", key.Hex(), " not cached"));
  PageMeta meta = MetaOf(*e);
  int lower = LowerTier(t);
  bool only_copy = e->residency_count() == 1;
  bool has_children = e->child_count > 0;
  if (options_.demote_on_pressure && lower >= 0 && !e->resident(static_cast<TierKind>(lower))) {
    std::vector<uint8_t> buf(meta.size);
    absl::StatusOr<size_t> n = tiers_[t]->Read(key, buf);
    absl::Status st = n.ok() ? options_.verify(std::span(buf).first(*n), meta) : n.status();
    if (!st.ok() && !(IsRetryable(st) && !absl::IsDataLoss(st))) {
      // A bad copy is never demoted: quarantine it, which frees it (and, if it was the
      // last copy, its descendants) as soon as nobody reads them.
      QuarantineLocked(key, t, st);
      ReclaimDoomedLocked();
      return absl::OkStatus();
    }
    if (st.ok()) st = CopyIntoTierLocked(lower, meta, buf);
    if (st.ok()) {
      ++stats_.tiers[lower].demotions_in;
      metrics_->demotions[lower]->Inc();
    } else if (only_copy && has_children) {
      return st;
    }
  }
  if (doomed_.contains(key)) {
    // Making room below quarantined an ancestor: the quarantine frees this page.
    ReclaimDoomedLocked();
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(index_.RemoveResidency(key, static_cast<TierKind>(t)));
  (void)tiers_[t]->Erase(key);
  Charge(meta.ns, t, -static_cast<int64_t>(tiers_[t]->Footprint(meta.size)));
  ++stats_.tiers[t].evictions;
  metrics_->evictions[t]->Inc();
  return absl::OkStatus();
}

absl::StatusOr<size_t> TieredStore::Read(PinHandle handle, const BlockKey& key,
                                         std::span<uint8_t> dst) {
  PageMeta meta;
  {
    MutexLock l(&mu_);
    ReapLocked(Now());
    auto it = leases_.find(handle);
    if (it == leases_.end() || it->second.poisoned) {
      return absl::NotFoundError(StrCat("lease ", handle, " is unknown or expired"));
    }
    const auto& keys = it->second.keys;
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      return absl::NotFoundError(StrCat("lease ", handle, " does not cover ", key.Hex()));
    }
    const IndexEntry* e = index_.Find(key);
    if (e == nullptr || DeadLocked(key)) {
      return absl::NotFoundError(StrCat(key.Hex(), " failed verification (quarantined)"));
    }
    meta = MetaOf(*e);
    if (dst.size() < meta.size) {
      return absl::OutOfRangeError(
          StrCat("buffer of ", dst.size(), " bytes < page of ", meta.size));
    }
    RETURN_IF_ERROR(index_.Pin(key));  // the read reference; outlives the lease if need be
  }
  for (int attempt = 0; attempt < kNumTiers; ++attempt) {
    int t;
    {
      MutexLock l(&mu_);
      t = ServingTierLocked(*index_.Find(key), false);
      if (t < 0) break;
    }
    absl::StatusOr<size_t> n = tiers_[t]->Read(key, dst);
    absl::Status st = n.ok() ? options_.verify(dst.first(*n), meta) : n.status();
    MutexLock l(&mu_);
    if (st.ok()) {
      (void)index_.Unpin(key);
      ++stats_.tiers[t].reads;
      stats_.tiers[t].read_bytes += *n;
      metrics_->reads[t]->Inc();
      metrics_->read_bytes[t]->Inc(static_cast<double>(*n));
      index_.Touch(key, Now());
      int host = static_cast<int>(TierKind::kHost);
      const IndexEntry* e = index_.Find(key);
      if (e != nullptr && !e->geometry.known()) index_.SetGeometry(key, GeometryOf(dst.first(*n)));
      if (options_.promote_on_hit && t == static_cast<int>(TierKind::kNvme) && Present(host) &&
          e != nullptr && !e->resident(TierKind::kHost) &&
          CopyIntoTierLocked(host, meta, dst.first(*n)).ok()) {
        ++stats_.tiers[host].promotions_in;
        metrics_->promotions[host]->Inc();
      }
      ReclaimDoomedLocked();
      return *n;
    }
    if (IsRetryable(st) && !absl::IsDataLoss(st)) {
      (void)index_.Unpin(key);
      return st;  // transient media error: not the page's fault
    }
    QuarantineLocked(key, t, st);
  }
  MutexLock l(&mu_);
  (void)index_.Unpin(key);
  ReclaimDoomedLocked();
  return absl::NotFoundError(StrCat(key.Hex(), " failed verification (quarantined)"));
}

absl::StatusOr<TieredStore::Loan> TieredStore::Lend(PinHandle handle, const BlockKey& key) {
  MutexLock l(&mu_);
  ReapLocked(Now());
  auto it = leases_.find(handle);
  if (it == leases_.end() || it->second.poisoned) {
    return absl::NotFoundError(StrCat("lease ", handle, " is unknown or expired"));
  }
  const auto& keys = it->second.keys;
  if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
    return absl::NotFoundError(StrCat("lease ", handle, " does not cover ", key.Hex()));
  }
  for (int attempt = 0; attempt < kNumTiers; ++attempt) {
    const IndexEntry* e = index_.Find(key);
    if (e == nullptr || DeadLocked(key)) break;
    int t = ServingTierLocked(*e, true);
    if (t < 0) {
      return absl::UnimplementedError(StrCat(key.Hex(), " is not in lendable memory; use Read"));
    }
    PageMeta meta = MetaOf(*e);
    absl::StatusOr<std::span<const uint8_t>> view = tiers_[t]->Lend(key);
    if (absl::IsUnimplemented(view.status())) return view.status();
    // Verified under the lock: the bytes cannot move while we check them.
    absl::Status st = view.ok() ? options_.verify(*view, meta) : view.status();
    if (st.ok()) {
      ++it->second.loans;
      ++stats_.tiers[t].reads;
      stats_.tiers[t].read_bytes += view->size();
      metrics_->reads[t]->Inc();
      index_.Touch(key, Now());
      return Loan{*view, static_cast<TierKind>(t)};
    }
    QuarantineLocked(key, t, st);
  }
  return absl::NotFoundError(StrCat(key.Hex(), " failed verification (quarantined)"));
}

absl::Status TieredStore::Write(const PageMeta& meta, std::span<const uint8_t> page,
                                std::optional<absl::Duration> retention) {
  if (meta.ns.empty()) return absl::InvalidArgumentError("Write: page has no namespace");
  if (meta.size != page.size()) {
    return absl::InvalidArgumentError(
        StrCat("Write: meta size ", meta.size, " != ", page.size(), " page bytes"));
  }
  RETURN_IF_ERROR(options_.verify(page, meta));
  // The stripped size comes from the header and section table alone (no second checksum
  // pass, no copy); the page was just verified.
  uint64_t resume_bytes = 0;
  if (absl::StatusOr<uint64_t> rb = ResumeSectionBytes(page); rb.ok()) resume_bytes = *rb;
  const PageGeometry geometry = GeometryOf(page);
  MutexLock l(&mu_);
  absl::Time now = Now();
  ReapLocked(now);
  if (index_.Contains(meta.key) || pending_.contains(meta.key)) {
    return absl::AlreadyExistsError(StrCat("page ", meta.key.Hex(), " already stored"));
  }
  int t = 0;
  while (t < kNumTiers && !WritableLocked(t)) ++t;
  if (t == kNumTiers) {
    int last = kNumTiers - 1;
    while (!Present(last)) --last;
    return MarkRetryable(absl::UnavailableError(
        StrCat("Write: no tier takes pages now: ", HealthStatusLocked(last).message())));
  }
  RETURN_IF_ERROR(MakeRoomLocked(t, meta.ns, meta.size));
  PageMeta m = meta;
  m.sealed = false;
  m.last_access = now;
  m.resume_bytes = resume_bytes;
  m.geometry = geometry;
  absl::Status written = tiers_[t]->Write(
      m, std::string_view(reinterpret_cast<const char*>(page.data()), page.size()));
  NoteTierResultLocked(t, written);
  RETURN_IF_ERROR(written);
  Charge(m.ns, t, static_cast<int64_t>(tiers_[t]->Footprint(m.size)));
  stats_.tiers[t].write_bytes += m.size;
  pending_[m.key] = Pending{m, static_cast<TierKind>(t), now + options_.pending_timeout,
                            retention.value_or(options_.default_retention)};
  return absl::OkStatus();
}

bool TieredStore::ParentCachedLocked(const PageMeta& meta) const {
  return meta.parent.IsZero() || (index_.Contains(meta.parent) && !DeadLocked(meta.parent));
}

absl::Status TieredStore::Seal(const BlockKey& key) {
  Pending p;
  {
    MutexLock l(&mu_);
    ReapLocked(Now());
    auto it = pending_.find(key);
    if (it == pending_.end()) {
      return absl::NotFoundError(StrCat("Seal: no pending write of ", key.Hex()));
    }
    if (it->second.sealing) {
      return absl::FailedPreconditionError(StrCat("Seal: ", key.Hex(), " is being sealed"));
    }
    p = it->second;
    if (!ParentCachedLocked(p.meta)) {
      pending_.erase(it);
      const int t = static_cast<int>(p.tier);
      (void)tiers_[t]->Erase(key);
      Charge(p.meta.ns, t, -static_cast<int64_t>(tiers_[t]->Footprint(p.meta.size)));
      return absl::FailedPreconditionError(
          StrCat("Seal: parent ", p.meta.parent.Hex(), " of ", key.Hex(), " is no longer cached"));
    }
    it->second.sealing = true;
  }
  // The tier's seal may wait for the medium (nvme: fdatasync); nothing else waits for it.
  // The pending entry, marked sealing, keeps the key, its charge and its tier copy meanwhile.
  const int t = static_cast<int>(p.tier);
  absl::Status st = tiers_[t]->Seal(key);
  bool write_back = false, persist = false;
  {
    MutexLock l(&mu_);
    NoteTierResultLocked(t, st);
    absl::Time now = Now();
    if (st.ok() && !ParentCachedLocked(p.meta)) {  // evicted while the tier sealed
      st = absl::FailedPreconditionError(
          StrCat("Seal: parent ", p.meta.parent.Hex(), " of ", key.Hex(), " is no longer cached"));
    }
    if (st.ok()) st = index_.Insert(p.meta, p.tier, now, p.retention);
    pending_.erase(key);
    if (!st.ok()) {
      (void)tiers_[t]->Erase(key);
      Charge(p.meta.ns, t, -static_cast<int64_t>(tiers_[t]->Footprint(p.meta.size)));
      return st;
    }
    write_back = options_.write_back && p.tier == TierKind::kDevice &&
                 Present(static_cast<int>(TierKind::kHost));
    persist = options_.persist_to_nvme && p.tier != TierKind::kNvme &&
              Present(static_cast<int>(TierKind::kNvme));
  }
  if (write_back) {
    if (threads_ == nullptr || !threads_->Schedule([this, key] { WriteBack(key); })) WriteBack(key);
  }
  if (persist) SchedulePersist(key);
  return absl::OkStatus();
}

absl::Status TieredStore::Publish(const PageMeta& meta, std::span<const uint8_t> page,
                                  std::optional<absl::Duration> retention) {
  RETURN_IF_ERROR(Write(meta, page, retention));
  return Seal(meta.key);
}

absl::Status TieredStore::Abort(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = pending_.find(key);
  if (it == pending_.end()) {
    return absl::NotFoundError(StrCat("Abort: no pending write of ", key.Hex()));
  }
  if (it->second.sealing) {
    return absl::FailedPreconditionError(StrCat("Abort: ", key.Hex(), " is being sealed"));
  }
  int t = static_cast<int>(it->second.tier);
  (void)tiers_[t]->Erase(key);
  Charge(it->second.meta.ns, t, -static_cast<int64_t>(tiers_[t]->Footprint(it->second.meta.size)));
  pending_.erase(it);
  return absl::OkStatus();
}

void TieredStore::WriteBack(const BlockKey& key) {
  PageMeta meta;
  {
    MutexLock l(&mu_);
    const IndexEntry* e = index_.Find(key);
    if (e == nullptr || !e->resident(TierKind::kDevice) || e->resident(TierKind::kHost) ||
        doomed_.contains(key)) {
      return;
    }
    meta = MetaOf(*e);
    if (!index_.Pin(key).ok()) return;
  }
  std::vector<uint8_t> buf(meta.size);
  absl::StatusOr<size_t> n = tiers_[static_cast<int>(TierKind::kDevice)]->Read(key, buf);
  MutexLock l(&mu_);
  (void)index_.Unpin(key);
  const IndexEntry* e = index_.Find(key);
  if (n.ok() && e != nullptr && !e->resident(TierKind::kHost)) {
    absl::Status st = CopyIntoTierLocked(static_cast<int>(TierKind::kHost), meta, buf);
    if (!st.ok()) log::Debug("write_back_skipped", "key", key.Hex(), "reason", st.ToString());
  }
  ReclaimDoomedLocked();
}

size_t TieredStore::Retain(std::span<const BlockKey> keys, absl::Duration ttl) {
  MutexLock l(&mu_);
  absl::Time now = Now();
  size_t n = 0;
  for (const BlockKey& k : keys) {
    if (!index_.Contains(k)) continue;
    index_.SetRetention(k, ttl, now);
    ++n;
  }
  return n;
}

absl::StatusOr<uint64_t> TieredStore::Evict(TierKind tier, uint64_t bytes) {
  int t = static_cast<int>(tier);
  if (!Present(t)) {
    return absl::InvalidArgumentError(StrCat("no ", TierName(tier), " tier"));
  }
  MutexLock l(&mu_);
  ReapLocked(Now());
  bool can_demote = options_.demote_on_pressure && LowerTier(t) >= 0;
  uint64_t freed = 0;
  while (freed < bytes) {
    std::optional<BlockKey> v = index_.PickVictim(tier, nullptr, can_demote);
    if (!v) break;
    uint64_t fp = tiers_[t]->Footprint(index_.Find(*v)->size);
    absl::Status st = EvictLocked(t, *v);
    // The oldest victim is the only copy of a parent and the tier below has no room for it
    // (full of pinned pages, or its quota): nothing more is evictable now.
    if (absl::IsResourceExhausted(st)) break;
    RETURN_IF_ERROR(st);
    freed += fp;
  }
  return freed;
}

StoreStats TieredStore::Stats() {
  MutexLock l(&mu_);
  ReapLocked(Now());
  StoreStats s = stats_;
  for (int t = 0; t < kNumTiers; ++t) {
    s.tiers[t].present = Present(t);
    if (!Present(t)) continue;
    s.tiers[t].capacity_bytes = tiers_[t]->capacity_bytes();
    s.tiers[t].used_bytes = tiers_[t]->used_bytes();
    s.tiers[t].pages = index_.KeysIn(static_cast<TierKind>(t)).size();
    s.tiers[t].failing = health_[t].failing;
  }
  s.indexed_pages = index_.size();
  s.pending_pages = pending_.size();
  s.active_leases = leases_.size();
  return s;
}

absl::Status TieredStore::CheckInvariants() {
  MutexLock l(&mu_);
  RETURN_IF_ERROR(index_.CheckInvariants());
  std::map<std::string, std::array<int64_t, kNumTiers>> want;
  for (int t = 0; t < kNumTiers; ++t) {
    if (!Present(t)) continue;
    std::vector<BlockKey> keys = index_.KeysIn(static_cast<TierKind>(t));
    for (const BlockKey& k : keys) {
      const IndexEntry* e = index_.Find(k);
      want[e->ns][t] += static_cast<int64_t>(tiers_[t]->Footprint(e->size));
    }
    ASSIGN_OR_RETURN(std::vector<PageMeta> listed, tiers_[t]->List());
    if (listed.size() != keys.size()) {
      return absl::InternalError(StrCat(TierName(static_cast<TierKind>(t)), " tier lists ",
                                        listed.size(), " sealed pages, index has ", keys.size()));
    }
    for (const PageMeta& m : listed) {
      const IndexEntry* e = index_.Find(m.key);
      if (e == nullptr || !e->resident(static_cast<TierKind>(t))) {
        return absl::InternalError(StrCat(m.key.Hex(), " in ", TierName(static_cast<TierKind>(t)),
                                          " but not indexed there"));
      }
    }
  }
  for (const auto& [k, p] : pending_) {
    int t = static_cast<int>(p.tier);
    want[p.meta.ns][t] += static_cast<int64_t>(tiers_[t]->Footprint(p.meta.size));
  }
  for (const auto& [ns, u] : usage_) {
    for (int t = 0; t < kNumTiers; ++t) {
      int64_t w = want.contains(ns) ? want[ns][t] : 0;
      if (u[t] != w) {
        return absl::InternalError(
            StrCat("usage of ", ns, " in tier ", t, " is ", u[t], ", pages add up to ", w));
      }
      auto q = options_.quotas.find(ns);
      if (q != options_.quotas.end() && q->second[t] > 0 &&
          u[t] > static_cast<int64_t>(q->second[t])) {
        return absl::InternalError(
            StrCat(ns, " over its tier ", t, " quota: ", u[t], " > ", q->second[t]));
      }
    }
  }
  return absl::OkStatus();
}

void TieredStore::WaitIdle() {
  if (threads_) threads_->WaitIdle();
}

}  // namespace kv
