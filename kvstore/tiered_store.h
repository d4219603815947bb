// TieredStore: prefix-addressed pages over device → host → nvme tiers (DESIGN.md "Tiers").
//
// The store owns up to three tiers (any may be absent) and a PrefixIndex of the sealed
// pages they hold. Its contract:
//   - Publishing is two-phase. Write() stores a verified page in the fastest tier, invisible;
//     Seal() makes it visible. Seal fails if the page's parent is not cached, so the index
//     stays prefix-closed. Unsealed writes are dropped after `pending_timeout`.
//   - Lookup(chain) returns the longest cached prefix of a key chain (binary search), the
//     fastest tier holding each block and what the index knows of it (namespace, layout,
//     size, geometry); Describe(key) returns the latter for one block.
//   - Pin(keys, deadline) returns a lease handle; pinned pages are never evicted. The lease
//     ends at Unpin() or when the injected clock passes its deadline, so a crashed client
//     never leaks a pin. Read() copies a pinned page into the caller's buffer; an internal
//     read reference keeps the page in place for the whole copy even if the lease expires
//     meanwhile, and the copy is verified before it is returned. Lend() hands out a view
//     into host-addressable tier memory instead; a lease with outstanding loans that
//     expires is *poisoned*, not released: its pages stay pinned until Unpin() (the
//     transport's poisoning contract), and a metric counts it.
//   - Every read verifies the page (header and section checksums, key, parent, layout).
//     A mismatch is a miss: that copy is quarantined (dropped once no one reads it, and
//     counted in kvstrata_store_quarantined_total); if it was the last copy, the block and
//     every cached descendant become invisible and are dropped. Wrong bytes are never served.
//   - Placement: new pages land in the fastest tier. Write-back copies each sealed device
//     page to host (async on a background thread). A full tier evicts leaf-first LRU victims
//     (PrefixIndex), demoting them one tier down when that tier exists, else dropping them.
//     A hit served from nvme is promoted to host. Each behaviour is an option.
//   - Resume sections (v4-fp8-584, kvstore/resume_policy.h): each indexed page records its
//     PageRole and the bytes stripping its resume section would free. DropResume() strips
//     chosen pages; a full tier first strips resume sections of its pages in
//     ResumeStripPriority order (never shared-prefix ends) and only then evicts. A strip
//     rewrites every resident copy (same key, smaller size); demotion never strips.
//   - Quotas cap each namespace's bytes per tier; a namespace over quota evicts its own
//     pages first and never another tenant's.
//   - Restart: Open() rebuilds the index from the nvme tier's sealed pages (orphans whose
//     parent is missing are dropped); device and host start empty. The count is
//     StoreStats::recovered_pages and the gauge kvstrata_store_recovered_pages.
//   - Durability (docs/serving.md "Durability"): with persist_to_nvme, every page sealed
//     above the nvme tier is also written to nvme by the background threads, in seal order
//     (parents first), as soon as a thread reaches it; Flush(deadline) writes whatever is
//     still missing, parents first, within a deadline (the node's SIGTERM path). The nvme
//     copy is an ordinary second copy: lookups still serve the fastest tier.
//   - Tier health: a tier whose Write/Seal fails with a media error (anything but "no room",
//     "exists", a bad argument, out of range or a precondition) tier_failure_threshold times
//     in a row is *failing*: new pages, demotions and write-back bypass it (the next tier
//     down takes new pages; with none left, Write() is Unavailable), TierHealth() says why,
//     the gauge kvstrata_store_tier_healthy{tier} is 0 and the health listener is told.
//     Every tier_retry_interval one write is let through as a probe; a success makes the
//     tier healthy again. Reads of pages already in a failing tier still go to it (a failed
//     read is a miss, as always).
//
// Thread-safety: every method is safe for concurrent use. One mutex guards the index and the
// bookkeeping; page copies for Read()/Lend() and write-back reads run outside it.
// Ownership: the store owns its tiers; tier(kind) pointers live as long as the store. Lent
// views are valid until Unpin() of the handle that lent them.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "kvstore/prefix_index.h"
#include "kvstore/tier.h"

namespace kv {

// Checks a page against its metadata: decodes it (all checksums), then compares key,
// parent, layout and size. DataLoss naming the mismatch otherwise.
absl::Status VerifyPage(std::span<const uint8_t> page, const PageMeta& meta);

using PageVerifier = std::function<absl::Status(std::span<const uint8_t>, const PageMeta&)>;

struct TieredStoreOptions {
  Clock* clock = nullptr;                // nullptr: Clock::Real()
  MetricsRegistry* metrics = nullptr;    // nullptr: MetricsRegistry::Default()
  bool write_back = true;                // copy sealed device pages to host
  bool demote_on_pressure = true;        // evicted pages move one tier down
  bool promote_on_hit = true;            // nvme hits are copied into host
  bool leaf_first = true;                // false: plain LRU order (children still pin parents)
  bool strip_resume_on_pressure = true;  // a full tier strips resume sections before evicting
  int background_threads = 1;            // write-back workers; 0 runs write-back inline
  absl::Duration pending_timeout = absl::Seconds(60);
  absl::Duration max_lease = absl::Minutes(10);
  absl::Duration default_retention = absl::ZeroDuration();
  // namespace (KeyNamespace::ToString()) -> byte quota per tier; 0 means no quota.
  std::map<std::string, std::array<uint64_t, kNumTiers>> quotas;
  PageVerifier verify;  // empty: VerifyPage
  // Told of every residency change of the index (also those Open() makes recovering the
  // nvme tier), under the store's lock: it must not block (kvstore/kv_events.h queues).
  ResidencyListener residency_listener;
  // Write every page sealed above the nvme tier to nvme too, in the background (above).
  // Serving nodes turn it on (cluster/node.h OpenStore); off, nvme holds only demoted pages.
  bool persist_to_nvme = false;
  int tier_failure_threshold = 3;  // media errors in a row that make a tier failing
  absl::Duration tier_retry_interval = absl::Seconds(30);  // a failing tier's probe period
};

// Told when a tier becomes failing (a non-OK status saying why) or healthy again (OK).
using TierHealthListener = std::function<void(TierKind, const absl::Status&)>;

struct TierStats {
  bool present = false;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t pages = 0;   // sealed pages resident
  uint64_t hits = 0;    // looked-up blocks resident in this tier
  uint64_t misses = 0;  // looked-up blocks not resident in this tier
  uint64_t reads = 0;   // pages served from this tier
  uint64_t read_bytes = 0;
  uint64_t evictions = 0;      // copies removed from this tier by pressure
  uint64_t demotions_in = 0;   // copies moved here from the tier above
  uint64_t promotions_in = 0;  // copies moved here on a hit below
  uint64_t write_bytes = 0;    // bytes written into this tier (any cause)
  uint64_t quarantined = 0;
  bool failing = false;       // see "Tier health" above
  uint64_t write_errors = 0;  // media errors of Write/Seal
};

struct StoreStats {
  std::array<TierStats, kNumTiers> tiers;
  uint64_t indexed_pages = 0;
  uint64_t pending_pages = 0;
  uint64_t active_leases = 0;
  uint64_t poisoned_leases = 0;
  uint64_t expired_leases = 0;
  uint64_t resume_strips = 0;       // pages whose resume section was stripped (any cause)
  uint64_t resume_bytes_freed = 0;  // tier bytes those strips freed, summed over copies
  uint64_t recovered_pages = 0;     // pages Open() recovered from the nvme tier
  uint64_t persisted_pages = 0;     // pages written back to nvme (durability)
};

// What Flush() did.
struct FlushResult {
  uint64_t persisted = 0;  // pages it wrote to nvme
  uint64_t remaining = 0;  // pages still only above nvme when it returned
};

class TieredStore {
 public:
  using PinHandle = uint64_t;
  // What the index knows of one cached block.
  struct BlockInfo {
    std::string ns;         // KeyNamespace::ToString() of the namespace it was written under
    std::string layout;     // "mla-fp8-656"
    uint64_t size = 0;      // encoded page bytes
    PageGeometry geometry;  // unknown for pages recovered from nvme until first read
  };
  struct LookupResult {
    size_t matched = 0;           // blocks of the chain cached, from the start
    std::vector<TierKind> tiers;  // fastest tier of each matched block
    // Per matched block: its page carries a resume section (v4-fp8-584), or may (a page
    // recovered from an old nvme record whose size is not known yet).
    std::vector<bool> has_resume;
    std::vector<BlockInfo> blocks;  // per matched block
  };
  struct Loan {
    std::span<const uint8_t> bytes;
    TierKind tier;
  };

  // tiers[t] must be null or a tier of kind t. Rebuilds the index from the nvme tier.
  // InvalidArgument for a tier in the wrong slot or no tier at all; the nvme tier's errors.
  static absl::StatusOr<std::unique_ptr<TieredStore>> Open(
      TieredStoreOptions options, std::array<std::unique_ptr<Tier>, kNumTiers> tiers);
  ~TieredStore();

  // Longest cached prefix of `chain`. Never fails; an empty result is a miss.
  LookupResult Lookup(std::span<const BlockKey> chain);
  // What the index knows of `key`; nullopt when it is not cached. Unlike Lookup it counts no
  // hit or miss and refreshes nothing.
  std::optional<BlockInfo> Describe(const BlockKey& key);

  // Pins every key until `deadline` (capped at now + max_lease). All or nothing: NotFound
  // naming the first key that is not cached; InvalidArgument if the deadline has passed or
  // `keys` is empty.
  absl::StatusOr<PinHandle> Pin(std::span<const BlockKey> keys, absl::Time deadline);
  // Extends a live lease. NotFound if unknown or expired.
  absl::Status Renew(PinHandle handle, absl::Time deadline);
  // Ends a lease (also a poisoned one). NotFound if unknown or already expired.
  absl::Status Unpin(PinHandle handle);

  // Copies `key` (which the lease must cover) into `dst`; returns its size (and records the
  // page's geometry in the index if it was unknown). NotFound for an
  // unknown/expired lease, a key outside it, or a page that failed verification (a miss;
  // the copy is quarantined); OutOfRange if `dst` is too small.
  absl::StatusOr<size_t> Read(PinHandle handle, const BlockKey& key, std::span<uint8_t> dst);
  // A verified view of `key` in host-addressable memory (device on the CPU backend, or
  // host), valid until Unpin(handle). Unimplemented if the page lives only where it cannot
  // be lent (nvme, CUDA device memory): use Read. Other errors as Read.
  absl::StatusOr<Loan> Lend(PinHandle handle, const BlockKey& key);

  // Phase one of publishing: verifies `page` against `meta` and stores it unsealed in the
  // fastest tier. DataLoss if the page does not verify; AlreadyExists if the key is cached
  // or pending; ResourceExhausted (retryable) if no room can be made (pinned or quota).
  absl::Status Write(const PageMeta& meta, std::span<const uint8_t> page,
                     std::optional<absl::Duration> retention = std::nullopt);
  // Phase two: makes a written page visible. NotFound if there is no pending write (or it
  // timed out); FailedPrecondition if its parent is no longer cached (the write is dropped)
  // or another Seal() of the key is running. The tier's own seal (for nvme: waiting for the
  // bytes to be durable) runs without the store's lock, so lookups and reads go on meanwhile;
  // a parent evicted in that window fails the seal as above.
  absl::Status Seal(const BlockKey& key);
  // Write + Seal.
  absl::Status Publish(const PageMeta& meta, std::span<const uint8_t> page,
                       std::optional<absl::Duration> retention = std::nullopt);
  // Drops a pending write. NotFound if none; FailedPrecondition while it is being sealed.
  absl::Status Abort(const BlockKey& key);

  // Session retention: gives `keys` (those cached) a soft priority of `ttl` beyond their
  // last access, refreshed now. Returns how many keys were cached.
  size_t Retain(std::span<const BlockKey> keys, absl::Duration ttl);
  // Strips the resume section of each cached, unpinned key whose page has one: every
  // resident copy is replaced by StripResumeSection(copy), same key, smaller size, and the
  // index and per-namespace charges follow. Returns the tier bytes freed, summed over all
  // copies (one copy in a tier without size classes: exactly the entry's resume bytes; the
  // nvme tier frees whole 4 KiB blocks). Skipped without error: keys not cached, pinned
  // (leases, in-flight reads, quarantine), without a resume section, or whose copy failed
  // verification (that copy is quarantined as Read does) or could not be read. If a tier
  // cannot take the stripped copy, the original goes back; the entry keeps one
  // size, so once some tier holds the stripped copy, tiers left with the original drop it
  // (counted as evictions), and a copy lost in between is handled as a quarantined one.
  // Crash safety: an nvme copy is erased before its stripped copy is written, so a crash
  // in between loses that page (a miss; Open() drops its orphaned descendants). Errors:
  // Internal if the index refuses a bookkeeping step (a bug).
  absl::StatusOr<uint64_t> DropResume(std::span<const BlockKey> keys);

  // Evicts (demoting where enabled) until `bytes` are freed in `tier` or nothing more is
  // evictable. Returns the bytes freed. InvalidArgument if the tier is absent.
  absl::StatusOr<uint64_t> Evict(TierKind tier, uint64_t bytes);

  StoreStats Stats();
  // The index's invariants plus the store's: usage per namespace matches residency, quotas
  // hold, every indexed copy exists in its tier. Internal naming the first violation. With
  // persist_to_nvme, call it after WaitIdle(): an nvme copy being written is in the tier
  // before the index.
  absl::Status CheckInvariants();
  // Blocks until queued write-backs have finished.
  void WaitIdle();

  // Writes every indexed page that has no nvme copy to the nvme tier, parents first, until
  // done or the store's clock passes `deadline`; waits (until the deadline) for background
  // write-backs in flight. Returns what it did; pages it could not write (deadline, a
  // failing tier, no room, a page being quarantined) count as remaining. After a Flush that
  // ran out of time, background write-backs still queued are dropped (the process is
  // stopping). FailedPrecondition without an nvme tier.
  absl::StatusOr<FlushResult> Flush(absl::Time deadline);
  // OK while `kind` is healthy (or absent); Unavailable saying why while it is failing.
  absl::Status TierHealth(TierKind kind);
  // Installs the health listener and calls it at once for each present tier's current
  // state. It runs under the store's lock: it must not block or call into the store.
  void SetTierHealthListener(TierHealthListener listener);
  Tier* tier(TierKind kind) { return tiers_[static_cast<int>(kind)].get(); }
  // The clock leases, TTLs and pending timeouts are read from (options.clock or Clock::Real()).
  Clock* clock() const { return options_.clock; }

 private:
  struct Pending {
    PageMeta meta;
    TierKind tier;
    absl::Time deadline;
    absl::Duration retention;
    bool sealing = false;  // the tier's Seal() is running (outside mu_): not reaped or aborted
  };
  struct Lease {
    std::vector<BlockKey> keys;
    absl::Time deadline;
    int loans = 0;
    bool poisoned = false;
  };
  struct Metrics {
    std::array<Counter*, kNumTiers> hits, misses, reads, read_bytes, evictions, demotions,
        promotions, quarantined;
    std::array<Gauge*, kNumTiers> bytes;
    Counter* poisoned;
    Counter* expired;
    Counter* resume_strips;
    Counter* resume_bytes_freed;
    Histogram* lookup_seconds;
    std::array<Gauge*, kNumTiers> healthy;
    std::array<Counter*, kNumTiers> write_errors;
    Counter* persisted;
    Gauge* recovered;
  };

  TieredStore(TieredStoreOptions options, std::array<std::unique_ptr<Tier>, kNumTiers> tiers);
  absl::Status Recover();
  absl::Time Now() { return options_.clock->Now(); }
  bool Present(int t) const { return tiers_[t] != nullptr; }
  // Next present tier below t that is not failing, or -1.
  int LowerTier(int t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // All of the following run with mu_ held.
  void ReapLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MakeRoomLocked(int t, const std::string& ns, uint64_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EvictLocked(int t, const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Strips one page's resume section in every tier (DropResume); returns bytes freed, 0 if
  // skipped. tiered_store_resume.cc.
  absl::StatusOr<uint64_t> StripResumeLocked(const BlockKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // StripResumeLocked's three steps: read and verify every copy, rewrite each stripped, then
  // settle the index, residency and accounting on what the rewrite left.
  struct StripWork {
    PageMeta meta;
    uint8_t resident = 0;
    std::array<std::vector<uint8_t>, kNumTiers> copies, stripped;
    uint64_t new_size = 0;
    uint8_t ok_tiers = 0, kept = 0, lost = 0;  // after the rewrite, one bit per tier
    absl::Status why;                          // the last rewrite failure
  };
  bool ReadStripCopiesLocked(const BlockKey& key, StripWork& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RewriteStrippedLocked(const BlockKey& key, StripWork& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> SettleStripLocked(const BlockKey& key, const StripWork& w)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pressure stripping in tier t (namespace `ns` only when non-null) until `has_room` says
  // so or no candidate is left. Returns whether `has_room` holds at the end.
  absl::StatusOr<bool> StripForPressureLocked(int t, const std::string* ns,
                                              const std::function<bool()>& has_room)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CopyIntoTierLocked(int t, const PageMeta& meta, std::span<const uint8_t> bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int ServingTierLocked(const IndexEntry& e, bool lendable) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool DeadLocked(const BlockKey& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The page's parent is zero, or cached and not quarantined.
  bool ParentCachedLocked(const PageMeta& meta) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void QuarantineLocked(const BlockKey& key, int t, const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReclaimDoomedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReleaseLeaseLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PageMeta MetaOf(const IndexEntry& e) const;
  void Charge(const std::string& ns, int t, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::StatusOr<size_t> ReadVerified(const BlockKey& key, std::span<uint8_t> dst, bool* promoted);
  void WriteBack(const BlockKey& key);

  // Durability and tier health (tiered_store_durability.cc).
  struct Health {
    int errors_in_a_row = 0;
    bool failing = false;
    absl::Time retry_at;
    absl::Status last;
  };
  // The page's nvme copy: OK once it has one; an error saying why it has none.
  absl::Status Persist(const BlockKey& key);
  void SchedulePersist(const BlockKey& key);
  // The tier may take a write now: present and healthy, or failing with a probe due (which
  // this call uses up).
  bool WritableLocked(int t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records the outcome of a tier Write/Seal for the tier's health.
  void NoteTierResultLocked(int t, const absl::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HealthStatusLocked(int t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TieredStoreOptions options_;
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers_;
  std::unique_ptr<Metrics> metrics_;
  mutable Mutex mu_;
  PrefixIndex index_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, Pending> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<PinHandle, Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<absl::Time, PinHandle>> lease_deadlines_ ABSL_GUARDED_BY(mu_);
  PinHandle next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  // Quarantined copies: key -> tier bitmask. A key whose every copy is doomed is dead.
  absl::flat_hash_map<BlockKey, uint8_t> doomed_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::array<int64_t, kNumTiers>> usage_ ABSL_GUARDED_BY(mu_);
  StoreStats stats_ ABSL_GUARDED_BY(mu_);
  std::array<Health, kNumTiers> health_ ABSL_GUARDED_BY(mu_);
  TierHealthListener health_listener_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<BlockKey> persisting_ ABSL_GUARDED_BY(mu_);  // nvme copies being written
  CondVar persist_cv_;                                             // persisting_ shrank
  std::atomic<bool> persist_stop_{false};  // a Flush ran out of time: drop queued write-backs
  std::unique_ptr<ThreadPool> threads_;    // last member: destroyed (joined) first
};

}  // namespace kv
