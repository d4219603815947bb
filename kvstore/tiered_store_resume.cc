// TieredStore: keeping or dropping v4 resume sections (kvstore/resume_policy.h, issue #7).
// DropResume() strips on request; MakeRoomLocked() calls StripForPressureLocked() before it
// evicts anything. The rest of the store is in tiered_store.cc and tiered_store_io.cc.
#include <algorithm>
#include <tuple>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "kvstore/resume_policy.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {
uint8_t Bit(int t) { return static_cast<uint8_t>(1u << t); }

// Calls fn(t) for each tier t whose bit is set in `mask`, fastest first.
template <typename Fn>
void EachTier(uint8_t mask, Fn fn) {
  for (int t = 0; t < kNumTiers; ++t) {
    if (mask & Bit(t)) fn(t);
  }
}
}  // namespace

absl::StatusOr<uint64_t> TieredStore::DropResume(std::span<const BlockKey> keys) {
  MutexLock l(&mu_);
  ReapLocked(Now());
  uint64_t freed = 0;
  for (const BlockKey& k : keys) {
    ASSIGN_OR_RETURN(uint64_t f, StripResumeLocked(k));
    freed += f;
  }
  return freed;
}

// Every copy is read and verified before any is rewritten, so a bad copy is quarantined
// (and the strip skipped) while the entry still has one size. The rewrite of a copy is
// Erase + Write + Seal because a tier refuses a second write of a present key; when the
// stripped copy does not fit (a slab tier whose smaller size class is full) the original
// goes back into the slot just freed. Copies that end up at the old size while another
// copy was stripped are dropped, so the entry keeps one size.
absl::StatusOr<uint64_t> TieredStore::StripResumeLocked(const BlockKey& key) {
  const IndexEntry* e = index_.Find(key);
  if (e == nullptr || e->pins > 0 || e->resume_bytes == 0 || doomed_.contains(key)) return 0;
  StripWork w{.meta = MetaOf(*e), .resident = e->residency};
  if (!ReadStripCopiesLocked(key, w)) return 0;
  if (w.new_size == w.meta.size) {
    // No resume section after all (an unknown size resolved, or a layout without one).
    RETURN_IF_ERROR(index_.SetSize(key, w.meta.size, 0));
    return 0;
  }
  RewriteStrippedLocked(key, w);
  return SettleStripLocked(key, w);
}

// Reads, verifies and strips every copy. False when the strip is skipped: a copy failed
// verification (quarantined) or its tier failed transiently.
bool TieredStore::ReadStripCopiesLocked(const BlockKey& key, StripWork& w) {
  bool bad = false, transient = false;
  EachTier(w.resident, [&](int t) {
    if (bad || transient) return;
    w.copies[t].resize(w.meta.size);
    absl::StatusOr<size_t> n = tiers_[t]->Read(key, w.copies[t]);
    absl::Status st =
        n.ok() ? options_.verify(std::span(w.copies[t]).first(*n), w.meta) : n.status();
    if (st.ok()) return;
    if (IsRetryable(st) && !absl::IsDataLoss(st)) {
      log::Debug("resume_strip_skipped", "key", key.Hex(), "reason", st.ToString());
      transient = true;
      return;
    }
    QuarantineLocked(key, t, st);
    bad = true;
  });
  if (bad) ReclaimDoomedLocked();
  if (bad || transient) return false;

  w.new_size = w.meta.size;
  absl::Status strip_st;
  EachTier(w.resident, [&](int t) {
    absl::StatusOr<std::vector<uint8_t>> s = StripResumeSection(w.copies[t]);
    if (!s.ok()) {
      strip_st = s.status();
      return;
    }
    w.stripped[t] = *std::move(s);
    w.new_size = w.stripped[t].size();
  });
  if (!strip_st.ok()) w.new_size = w.meta.size;
  return true;
}

// Replaces each copy by its stripped bytes; a copy whose rewrite fails goes back as it was
// (kept) or is lost.
void TieredStore::RewriteStrippedLocked(const BlockKey& key, StripWork& w) {
  PageMeta nm = w.meta;
  nm.size = w.new_size;
  nm.resume_bytes = 0;
  auto write_sealed = [&](int t, const PageMeta& m, const std::vector<uint8_t>& bytes) {
    absl::Status st = tiers_[t]->Write(
        m, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (st.ok()) {
      st = tiers_[t]->Seal(key);
      if (!st.ok()) (void)tiers_[t]->Erase(key);
    }
    return st;
  };
  EachTier(w.resident, [&](int t) {
    absl::Status st = tiers_[t]->Erase(key);
    if (!st.ok()) {  // the old copy is still there, untouched
      w.kept |= Bit(t);
      w.why = st;
      return;
    }
    st = write_sealed(t, nm, w.stripped[t]);
    if (st.ok()) {
      w.ok_tiers |= Bit(t);
      return;
    }
    w.why = st;
    if (write_sealed(t, w.meta, w.copies[t]).ok()) {
      w.kept |= Bit(t);
    } else {
      w.lost |= Bit(t);
    }
  });
  if (!w.why.ok()) {
    log::Warn("resume_strip_partial", "key", key.Hex(), "stripped", int{w.ok_tiers}, "kept",
              int{w.kept}, "lost", int{w.lost}, "reason", w.why.ToString());
  }
}

// Drops copies left at the old size, charges the freed bytes and records the new size.
// Returns the bytes freed.
absl::StatusOr<uint64_t> TieredStore::SettleStripLocked(const BlockKey& key, const StripWork& w) {
  const PageMeta& meta = w.meta;
  const uint8_t good = w.ok_tiers != 0 ? w.ok_tiers : w.kept;
  if (good == 0) {
    // Every copy was lost mid-rewrite: as if each had failed verification.
    EachTier(w.lost, [&](int t) { QuarantineLocked(key, t, w.why); });
    ReclaimDoomedLocked();
    return 0;
  }
  absl::Status drop_st;
  EachTier(w.resident & ~good, [&](int t) {
    absl::Status st = index_.RemoveResidency(key, static_cast<TierKind>(t));
    if (!st.ok()) {
      drop_st = st;
      return;
    }
    (void)tiers_[t]->Erase(key);
    Charge(meta.ns, t, -static_cast<int64_t>(tiers_[t]->Footprint(meta.size)));
    ++stats_.tiers[t].evictions;
    metrics_->evictions[t]->Inc();
  });
  if (!drop_st.ok()) return absl::InternalError(StrCat("resume strip: ", drop_st.message()));
  if (w.ok_tiers == 0) return 0;

  uint64_t freed = 0;
  EachTier(w.ok_tiers, [&](int t) {
    const uint64_t before = tiers_[t]->Footprint(meta.size),
                   after = tiers_[t]->Footprint(w.new_size);
    Charge(meta.ns, t, static_cast<int64_t>(after) - static_cast<int64_t>(before));
    freed += before - after;
    stats_.tiers[t].write_bytes += w.new_size;
  });
  RETURN_IF_ERROR(index_.SetSize(key, w.new_size, 0));
  ++stats_.resume_strips;
  stats_.resume_bytes_freed += freed;
  metrics_->resume_strips->Inc();
  metrics_->resume_bytes_freed->Inc(static_cast<double>(freed));
  return freed;
}

// Candidates come from the index's set of keys with a resume section, so the cost is in
// the number of such pages (turn ends, checkpoints), not the index size.
absl::StatusOr<bool> TieredStore::StripForPressureLocked(int t, const std::string* ns,
                                                         const std::function<bool()>& has_room) {
  struct Candidate {
    int priority;
    int64_t score;
    BlockKey key;
    bool operator<(const Candidate& o) const {
      return std::tie(priority, score, key) < std::tie(o.priority, o.score, o.key);
    }
  };
  const absl::Time now = Now();
  std::vector<Candidate> cands;
  for (const BlockKey& k : index_.ResumeKeys()) {
    const IndexEntry* e = index_.Find(k);
    if (e == nullptr || !e->resident(static_cast<TierKind>(t)) || e->pins > 0) continue;
    if (ns != nullptr && e->ns != *ns) continue;
    const absl::Time score = e->last_access + e->retention;
    const ResumeFacts f{e->resume_role, now < score, /*under_pressure=*/true};
    if (DecideResumeSection(f) != ResumeDecision::kStrip) continue;  // shared-prefix ends
    cands.push_back({ResumeStripPriority(f), absl::ToUnixNanos(score), k});
  }
  std::sort(cands.begin(), cands.end());
  for (const Candidate& c : cands) {
    if (has_room()) return true;
    ASSIGN_OR_RETURN(uint64_t freed, StripResumeLocked(c.key));
    (void)freed;
  }
  return has_room();
}

}  // namespace kv
