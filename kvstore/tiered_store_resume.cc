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
  const PageMeta meta = MetaOf(*e);
  const uint8_t resident = e->residency;
  auto each = [&](uint8_t mask, auto fn) {
    for (int t = 0; t < kNumTiers; ++t) {
      if (mask & Bit(t)) fn(t);
    }
  };

  std::array<std::vector<uint8_t>, kNumTiers> copies;
  bool bad = false, transient = false;
  each(resident, [&](int t) {
    if (bad || transient) return;
    copies[t].resize(meta.size);
    absl::StatusOr<size_t> n = tiers_[t]->Read(key, copies[t]);
    absl::Status st = n.ok() ? options_.verify(std::span(copies[t]).first(*n), meta) : n.status();
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
  if (bad || transient) return 0;

  std::array<std::vector<uint8_t>, kNumTiers> stripped;
  uint64_t new_size = meta.size;
  absl::Status strip_st;
  each(resident, [&](int t) {
    absl::StatusOr<std::vector<uint8_t>> s = StripResumeSection(copies[t]);
    if (!s.ok()) {
      strip_st = s.status();
      return;
    }
    stripped[t] = *std::move(s);
    new_size = stripped[t].size();
  });
  if (!strip_st.ok() || new_size == meta.size) {
    // No resume section after all (an unknown size resolved, or a layout without one).
    RETURN_IF_ERROR(index_.SetSize(key, meta.size, 0));
    return 0;
  }

  PageMeta nm = meta;
  nm.size = new_size;
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
  uint8_t ok_tiers = 0, kept = 0, lost = 0;
  absl::Status why;
  each(resident, [&](int t) {
    absl::Status st = tiers_[t]->Erase(key);
    if (!st.ok()) {  // the old copy is still there, untouched
      kept |= Bit(t);
      why = st;
      return;
    }
    st = write_sealed(t, nm, stripped[t]);
    if (st.ok()) {
      ok_tiers |= Bit(t);
      return;
    }
    why = st;
    if (write_sealed(t, meta, copies[t]).ok()) {
      kept |= Bit(t);
    } else {
      lost |= Bit(t);
    }
  });
  if (!why.ok()) {
    log::Warn("resume_strip_partial", "key", key.Hex(), "stripped", int{ok_tiers}, "kept",
              int{kept}, "lost", int{lost}, "reason", why.ToString());
  }

  const uint8_t good = ok_tiers != 0 ? ok_tiers : kept;
  if (good == 0) {
    // Every copy was lost mid-rewrite: as if each had failed verification.
    each(lost, [&](int t) { QuarantineLocked(key, t, why); });
    ReclaimDoomedLocked();
    return 0;
  }
  absl::Status drop_st;
  each(resident & ~good, [&](int t) {
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
  if (ok_tiers == 0) return 0;

  uint64_t freed = 0;
  each(ok_tiers, [&](int t) {
    const uint64_t before = tiers_[t]->Footprint(meta.size), after = tiers_[t]->Footprint(new_size);
    Charge(meta.ns, t, static_cast<int64_t>(after) - static_cast<int64_t>(before));
    freed += before - after;
    stats_.tiers[t].write_bytes += new_size;
  });
  RETURN_IF_ERROR(index_.SetSize(key, new_size, 0));
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
