// TieredStore: durability (write-back of pages to the nvme tier, Flush) and tier health.
// The contract is in tiered_store.h ("Durability", "Tier health").
#include <algorithm>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {
constexpr int kNvme = static_cast<int>(TierKind::kNvme);

// A failure that says the medium is in trouble, not that this one write could not go there.
// NotFound counts: a Write or Seal of a page just written never means "absent" (a deleted
// segment directory does: ENOENT).
bool IsMediaError(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kOk:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return false;
    default:
      return true;
  }
}
}  // namespace

bool TieredStore::WritableLocked(int t) {
  if (!Present(t)) return false;
  Health& h = health_[t];
  if (!h.failing) return true;
  const absl::Time now = Now();
  if (now < h.retry_at) return false;
  h.retry_at = now + options_.tier_retry_interval;  // one probe per interval
  log::Info("tier_probe", "tier", TierName(static_cast<TierKind>(t)));
  return true;
}

absl::Status TieredStore::HealthStatusLocked(int t) const {
  const Health& h = health_[t];
  if (!Present(t) || !h.failing) return absl::OkStatus();
  return MarkRetryable(absl::UnavailableError(
      StrCat(TierName(static_cast<TierKind>(t)), " tier failing: ", h.errors_in_a_row,
             " write errors in a row; pages bypass it (last error: ", h.last.ToString(), ")")));
}

void TieredStore::NoteTierResultLocked(int t, const absl::Status& st) {
  Health& h = health_[t];
  const std::string_view name = TierName(static_cast<TierKind>(t));
  if (st.ok()) {
    h.errors_in_a_row = 0;
    if (!h.failing) return;
    h.failing = false;
    metrics_->healthy[t]->Set(1);
    log::Info("tier_healthy", "tier", name);
    if (health_listener_) health_listener_(static_cast<TierKind>(t), absl::OkStatus());
    return;
  }
  if (!IsMediaError(st)) return;
  ++h.errors_in_a_row;
  h.last = st;
  ++stats_.tiers[t].write_errors;
  metrics_->write_errors[t]->Inc();
  if (h.failing || h.errors_in_a_row < options_.tier_failure_threshold) return;
  h.failing = true;
  h.retry_at = Now() + options_.tier_retry_interval;
  metrics_->healthy[t]->Set(0);
  log::Error("tier_failing", "tier", name, "errors_in_a_row", h.errors_in_a_row, "last_error",
             st.ToString(), "effect", "new pages, demotions and write-back bypass this tier");
  if (health_listener_) health_listener_(static_cast<TierKind>(t), HealthStatusLocked(t));
}

absl::Status TieredStore::TierHealth(TierKind kind) {
  MutexLock l(&mu_);
  return HealthStatusLocked(static_cast<int>(kind));
}

void TieredStore::SetTierHealthListener(TierHealthListener listener) {
  MutexLock l(&mu_);
  health_listener_ = std::move(listener);
  if (!health_listener_) return;
  for (int t = 0; t < kNumTiers; ++t) {
    if (Present(t)) health_listener_(static_cast<TierKind>(t), HealthStatusLocked(t));
  }
}

void TieredStore::SchedulePersist(const BlockKey& key) {
  auto run = [this, key] {
    if (persist_stop_) return;
    absl::Status st = Persist(key);
    if (!st.ok()) log::Debug("persist_skipped", "key", key.Hex(), "reason", st.ToString());
  };
  if (threads_ == nullptr || !threads_->Schedule(run)) run();
}

// Reads the page from its fastest copy and writes it to nvme. The nvme write and its seal
// (an fdatasync) run without the store's lock; the index pin keeps the source copy in place
// and the key out of eviction meanwhile, and persisting_ keeps a second Persist of the key out.
absl::Status TieredStore::Persist(const BlockKey& key) {
  PageMeta meta;
  int src = -1;
  {
    MutexLock l(&mu_);
    const IndexEntry* e = index_.Find(key);
    if (e == nullptr) return absl::NotFoundError("not cached any more");
    if (e->resident(TierKind::kNvme)) return absl::OkStatus();
    if (doomed_.contains(key)) return absl::FailedPreconditionError("quarantined");
    if (persisting_.contains(key)) return absl::AlreadyExistsError("being written");
    if (!WritableLocked(kNvme)) return HealthStatusLocked(kNvme);
    src = ServingTierLocked(*e, false);
    if (src < 0 || src == kNvme) return absl::FailedPreconditionError("no copy to read");
    meta = MetaOf(*e);
    RETURN_IF_ERROR(index_.Pin(key));
    absl::Status room = MakeRoomLocked(kNvme, meta.ns, meta.size);
    if (!room.ok()) {
      (void)index_.Unpin(key);
      return room;
    }
    persisting_.insert(key);
  }
  std::vector<uint8_t> buf(meta.size);
  absl::StatusOr<size_t> n = tiers_[src]->Read(key, buf);
  absl::Status st = n.ok() ? options_.verify(std::span(buf).first(*n), meta) : n.status();
  absl::Status tier_st = absl::OkStatus();  // the nvme tier's own result, for its health
  if (st.ok()) {
    tier_st = tiers_[kNvme]->Write(
        meta, std::string_view(reinterpret_cast<const char*>(buf.data()), meta.size));
    if (tier_st.ok()) {
      tier_st = tiers_[kNvme]->Seal(key);
      if (!tier_st.ok()) (void)tiers_[kNvme]->Erase(key);
    }
    st = tier_st;
  }
  MutexLock l(&mu_);
  persisting_.erase(key);
  persist_cv_.SignalAll();
  (void)index_.Unpin(key);
  NoteTierResultLocked(kNvme, tier_st);
  const IndexEntry* e = index_.Find(key);
  if (st.ok() && (e == nullptr || doomed_.contains(key))) {
    (void)tiers_[kNvme]->Erase(key);  // dropped or quarantined while we wrote it
    st = absl::FailedPreconditionError("dropped while it was written");
  } else if (st.ok()) {
    st = index_.AddResidency(key, TierKind::kNvme);
    Charge(meta.ns, kNvme, static_cast<int64_t>(tiers_[kNvme]->Footprint(meta.size)));
    stats_.tiers[kNvme].write_bytes += meta.size;
    ++stats_.persisted_pages;
    metrics_->persisted->Inc();
  }
  ReclaimDoomedLocked();
  return st;
}

absl::StatusOr<FlushResult> TieredStore::Flush(absl::Time deadline) {
  if (!Present(kNvme)) return absl::FailedPreconditionError("Flush: no nvme tier");
  std::vector<BlockKey> todo;
  {
    MutexLock l(&mu_);
    // Parents first: a page whose parent has no nvme copy would be an orphan after a restart.
    absl::flat_hash_map<BlockKey, int> depth;
    absl::flat_hash_set<BlockKey> queued;  // a page in device and host is written once
    // Iterative (chains can be thousands of pages long): climb to a known depth or a root,
    // then number the path back down.
    auto depth_of = [&](const BlockKey& start) {
      std::vector<BlockKey> path;
      int d = -1;
      for (BlockKey k = start;;) {
        if (auto it = depth.find(k); it != depth.end()) {
          d = it->second;
          break;
        }
        path.push_back(k);
        const IndexEntry* e = index_.Find(k);
        if (e == nullptr || e->parent.IsZero()) break;
        k = e->parent;
      }
      for (auto it = path.rbegin(); it != path.rend(); ++it) depth[*it] = ++d;
    };
    for (int t = 0; t < kNvme; ++t) {
      if (!Present(t)) continue;
      for (const BlockKey& k : index_.KeysIn(static_cast<TierKind>(t))) {
        if (!index_.Find(k)->resident(TierKind::kNvme) && queued.insert(k).second) {
          depth_of(k);
          todo.push_back(k);
        }
      }
    }
    std::stable_sort(todo.begin(), todo.end(),
                     [&](const BlockKey& a, const BlockKey& b) { return depth[a] < depth[b]; });
  }
  FlushResult r;
  for (const BlockKey& k : todo) {
    if (Now() >= deadline) break;
    absl::Status st = Persist(k);
    if (st.ok()) ++r.persisted;  // (or the background thread had just written it)
    if (!st.ok() && absl::IsUnavailable(st)) break;  // the tier is failing: nothing more will go
  }
  MutexLock l(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return persisting_.empty(); };
  while (!idle() && Now() < deadline) {
    persist_cv_.WaitWithTimeout(&mu_, absl::Milliseconds(20));
  }
  absl::flat_hash_set<BlockKey> left;
  for (int t = 0; t < kNvme; ++t) {
    if (!Present(t)) continue;
    for (const BlockKey& k : index_.KeysIn(static_cast<TierKind>(t))) {
      if (!index_.Find(k)->resident(TierKind::kNvme)) left.insert(k);
    }
  }
  r.remaining = left.size();
  if (r.remaining > 0) persist_stop_ = true;
  log::Info("store_flushed", "persisted", r.persisted, "remaining", r.remaining);
  return r;
}

}  // namespace kv
