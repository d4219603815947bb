// StagingArea: staging space for two-phase page writes over RMA (DESIGN.md "Pages": publishing
// is write, then seal). A writer reserves space for a run of pages under a staging lease,
// puts each encoded page's bytes into its slot with the transport, then seals: every slot is
// admitted by PageStore::Admit (all of its admission rules: checksums, key, key space,
// parent chaining, namespace, quota), in order, and the lease's space is released. Staged
// bytes are never visible: nothing is indexed before Seal(), so an abort or a writer that
// dies in between leaves no page, and the space comes back when the lease expires.
//
// The space is one host MemoryRegion (kvstore/slab_tier.h AllocateHostRegion) owned by the
// area, which the store node registers with its transport once; slots are 4 KiB-aligned
// ranges of it, allocated first-fit. Leases are random 128-bit hex ids owned by the caller
// that reserved them (another tenant's lease is unknown), with deadlines read from the
// injected clock and clamped to options.max_lease; expired leases are reaped on every call,
// which returns their space. Reclaimed space may still receive a late put from a writer whose
// lease expired; that can only spoil a later writer's staged bytes, which its Seal() then
// rejects by checksum, so wrong bytes are never published.
//
// Thread-safety: every method is safe for concurrent use; Seal() admits outside the lock (its
// lease is taken out of the table first, so reaping or aborting cannot free it meanwhile).
// Ownership: the area owns its memory, which must outlive any transport registration of it.
// Results are values owned by the caller.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/mutex.h"
#include "kvstore/page_store.h"
#include "kvstore/slab_tier.h"

namespace kv {

struct StagingOptions {
  uint64_t bytes = 64ull << 20;  // staging memory; rounded up to 4 KiB
  Clock* clock = nullptr;        // nullptr: Clock::Real(); must be the PageStore's clock
  absl::Duration default_lease = absl::Seconds(30);
  absl::Duration max_lease = absl::Minutes(5);
  uint64_t max_page_bytes = 64ull << 20;  // larger pages are refused at Reserve()
  size_t max_pages = 4096;                // per reservation
};

// One page to stage and, after Reserve(), where its bytes go.
struct StagedSlot {
  BlockKey key;
  uint64_t size = 0;    // encoded page bytes
  uint64_t offset = 0;  // byte offset in the area's memory (set by Reserve)
};

struct StagingLease {
  std::string lease_id;
  absl::Time deadline;
  std::vector<StagedSlot> slots;  // request order
};

// One staged page's verdict (StagingArea::Seal).
struct StagedAdmit {
  StagedSlot slot;
  AdmitResult result;
};

class StagingArea {
 public:
  // Allocates the staging memory. InvalidArgument for zero bytes; the allocator's errors.
  static absl::StatusOr<std::unique_ptr<StagingArea>> Create(StagingOptions options);
  StagingArea(const StagingArea&) = delete;
  StagingArea& operator=(const StagingArea&) = delete;

  // Reserves a slot per page (key and size set by the caller) for `lease` (nullopt: the
  // default; clamped to max_lease). All or nothing. InvalidArgument for no pages, too many, a
  // zero size, a page over max_page_bytes or a non-positive lease; ResourceExhausted
  // (retryable) when the free space cannot hold them now.
  absl::StatusOr<StagingLease> Reserve(const PageStoreCaller& c, std::vector<StagedSlot> pages,
                                       std::optional<absl::Duration> lease);
  // Admits each staged page through `pages` in slot order with `o` (resume_roles[i], when
  // present, overrides o.resume_role for page i) and releases the lease. One result per slot.
  // NotFound (kLeaseNotFound) for a lease unknown to `c` or expired: nothing is admitted.
  absl::StatusOr<std::vector<StagedAdmit>> Seal(PageStore& pages, const PageStoreCaller& c,
                                                std::string_view lease_id, const AdmitOptions& o,
                                                std::span<const PageRole> resume_roles = {});
  // Releases a lease without admitting anything; returns its slots (0 when unknown to `c`).
  uint32_t Abort(const PageStoreCaller& c, std::string_view lease_id);

  // The staging memory, for registration with a transport.
  uint8_t* base() { return region_->host_base(); }
  uint64_t capacity() const { return capacity_; }
  // Bytes held by live leases (after reaping expired ones), and their number.
  uint64_t used_bytes();
  size_t live_leases();

 private:
  struct Lease {
    std::string owner;  // PageStoreCaller::lease_owner(); "" for trusted callers
    absl::Time deadline;
    std::vector<StagedSlot> slots;
  };
  StagingArea(std::unique_ptr<MemoryRegion> region, uint64_t capacity, StagingOptions options);

  // First-fit allocation of `bytes` (4 KiB-aligned); nullopt when nothing fits.
  std::optional<uint64_t> AllocateLocked(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeLocked(uint64_t offset, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLocked(const Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReapLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes and returns the lease `id` when it is live and `c`'s.
  std::optional<Lease> TakeLocked(const PageStoreCaller& c, std::string_view id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<MemoryRegion> region_;
  const uint64_t capacity_;
  const StagingOptions options_;
  Clock* const clock_;

  kv::Mutex mu_;
  std::map<uint64_t, uint64_t> free_ ABSL_GUARDED_BY(mu_);  // offset -> length, coalesced
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<absl::Time, std::string>> deadlines_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv
