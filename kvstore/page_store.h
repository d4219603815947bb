// PageStore: the page store's policy over a TieredStore (DESIGN.md "Trust"): tenancy, leases
// and publish admission, in plain C++. The gRPC PageStoreService (cluster/
// page_store_service.h) authenticates its callers and asks this class; the in-process
// LocalPagePool (kvstore/local_page_pool.h) looks up, pins, reads and admits as a trusted
// caller acting for the request's tenant, so the embedded node admits and leases pages by the
// same rules as a store node.
//
// Tenancy. A caller is a tenant, or trusted (PageStoreCaller): acting for one tenant
// (TrustedFor) or for none (Trusted). A page belongs to the namespace it was admitted under
// and is indexed, in the TieredStore, by a storage key derived from that namespace and its
// key (StorageKey()); the page bytes keep the key the writer named, which the store checks
// on every read (PageMeta::page_key). So every namespace has its own copy of a key: a tenant
// sees its own namespace's copies and the shared one's, and nothing else exists for it. A
// key another tenant holds behaves exactly like a key nobody holds, in every call: Lookup
// stops there, Pin leaves it unpinned, Read fails with the miss error (NotFound, reason
// kNotCached, "block <key> is not cached on <node_id>"), and Admit stores the writer's page
// as its own copy (kStored; then visible to the writer only) and leaves the other copy
// untouched. No tenant can shadow, evict by name, or keep out another tenant's page by
// writing its key first (issue #18 item 3; docs/design-notes.md item 26). Where a tenant and
// the shared namespace both hold a key, the tenant sees its own copy. What a tenant can still
// observe is shared capacity: pages of all namespaces compete for the same tiers (quotas
// bound that per namespace), and timing.
//
// Admission. Admit() fully verifies a page (at most options.max_page_bytes, page_format
// checksums, a known layout, the header naming the key it is written under, layout and
// page_tokens matching the writer's key space) and publishes it (TieredStore Write + Seal)
// under the caller's tenant namespace, or the shared one when asked. A key the same namespace
// already holds (or is admitting) is kAlreadyPresent, and a retention hint refreshes that
// copy's retention; an admission of the same copy by another caller at the same moment is
// waited for (at most 2 s of real time), so that the caller's next page finds its parent
// sealed. The parent must be cached in a namespace the page may chain from (a tenant page
// continues its own tenant's chain, else a shared one; a shared page only a shared chain);
// otherwise kParentMissing, exactly like a missing parent. The page header holds no
// namespace and no model fingerprint, and a key cannot be checked against its namespace
// without its tokens: a tenant may store pages under any key, but only ever in its own
// namespace, so a wrong key harms nobody else.
//
// Leases. Pin() pins the longest visible cached prefix under a lease: a random 128-bit hex id
// owned by the caller, mapped to TieredStore pin handles, its deadline clamped to
// options.max_lease. Pinning into an existing lease extends it. Another tenant's lease is
// treated as unknown. An unknown or expired lease is NotFound (kLeaseNotFound) for Pin, Read
// and CheckLease; Unpin of one releases 0. Each tenant holds at most max_leases_per_tenant
// live leases (ResourceExhausted, retryable, kTooManyLeases); trusted callers are not
// limited. Lease time is read from the TieredStore's clock.
//
// Errors are absl::Status; those a caller reports with a reason carry a PageStoreReason
// (ReasonOf()).
//
// Thread-safety: every method is safe for concurrent use. The store and the clock are not
// owned and must outlive the PageStore; its destructor releases every lease's pins. Results
// are values owned by the caller.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "kvstore/lease_beacons.h"
#include "kvstore/page_format.h"
#include "kvstore/tiered_store.h"

namespace kv {

// Why a call or a page was refused, for callers that report a reason (the gRPC service's
// ErrorInfo.reason is ReasonName()).
enum class PageStoreReason : uint8_t {
  kNone = 0,
  kNotCached,      // the block is absent or invisible to the caller
  kLeaseNotFound,  // the lease is unknown, another tenant's, or expired
  kTooManyLeases,  // the tenant holds max_leases_per_tenant live leases
  // Admission.
  kPageTooLarge,          // the page exceeds options.max_page_bytes
  kMalformedPage,         // the page does not decode
  kUnknownLayout,         // its layout code is unknown or reserved
  kPageChecksumMismatch,  // a header or section checksum fails
  kKeyMismatch,           // its header names another key
  kKeySpaceMismatch,      // its layout or token count is not the writer's key space's
  kParentMissing,         // the parent is absent or in a namespace the page may not chain from
  kStoreFull,             // no room can be made (pins, quotas); retryable
  kStoreError,            // the store failed otherwise (Unavailable, retryable: a concurrent
                          // admission of the key did not finish in time)
};
// "NOT_CACHED", "LEASE_NOT_FOUND", ..., "" for kNone.
std::string_view ReasonName(PageStoreReason reason);
// The reason attached to `status` by a PageStore; kNone when there is none.
PageStoreReason ReasonOf(const absl::Status& status);
// `status` with `reason` attached (what ReasonOf() reads back); OK stays OK.
absl::Status WithReason(absl::Status status, PageStoreReason reason);
// A fresh random 128-bit lease id, hex.
std::string NewLeaseId();

// Who is calling. Copyable value.
class PageStoreCaller {
 public:
  // A tenant: sees its namespace and the shared one, owns its leases, writes under its
  // namespace. InvalidArgument for a name KeyNamespace::Tenant refuses.
  static absl::StatusOr<PageStoreCaller> Tenant(std::string_view tenant);
  // A trusted in-process caller acting for `tenant` (an in-process pool whose caller
  // authenticated the tenant): sees and writes what the tenant does, and holds unlimited
  // leases, shared by every trusted caller. InvalidArgument as Tenant().
  static absl::StatusOr<PageStoreCaller> TrustedFor(std::string_view tenant);
  // A trusted in-process caller acting for no tenant: sees and writes only the shared
  // namespace, and holds unlimited leases.
  static PageStoreCaller Trusted() { return PageStoreCaller(); }

  bool trusted() const { return trusted_; }
  const std::string& tenant() const { return tenant_; }  // empty for Trusted()
  const std::string& ns() const { return ns_; }          // KeyNamespace::ToString(); "" none
  // Who owns the caller's leases: the tenant, or "" for every trusted caller.
  const std::string& lease_owner() const;
  // Whether a page under namespace `ns` is visible to this caller.
  bool CanRead(std::string_view ns) const;

 private:
  PageStoreCaller() = default;
  bool trusted_ = true;
  std::string tenant_, ns_;
};

// The key a PageStore indexes `key` by in namespace `ns` (KeyNamespace::ToString()):
// SHA-256 of F("kvstrata/store-key/v1") F(ns) F(key), F framing as in block_key.h; the zero
// key stays zero. Distinct (namespace, key) pairs never share a storage key, so a key one
// namespace holds is invisible to, and cannot be taken by, another.
BlockKey StorageKey(std::string_view ns, const BlockKey& key);
// StorageKey of each of `keys`.
std::vector<BlockKey> StorageKeys(std::string_view ns, std::span<const BlockKey> keys);
// The storage key of the copy of `key` in `store` that a caller of namespace `ns` sees (its
// own copy first, then the shared one; `ns` empty: the shared one only), or nullopt. For
// tools and tests that reach the TieredStore itself.
std::optional<BlockKey> VisibleStorageKey(TieredStore& store, std::string_view ns,
                                          const BlockKey& key);

struct PageStoreOptions {
  std::string node_id = "store-0";  // named in miss messages
  // nullptr: the store's (TieredStore::clock()); when set it must be the store's clock.
  Clock* clock = nullptr;
  MetricsRegistry* metrics = nullptr;     // kvstrata_pagestore_leases gauge; nullptr: none
  uint64_t max_page_bytes = 64ull << 20;  // larger pages are refused (kPageTooLarge); 0: any
  absl::Duration default_lease = absl::Seconds(30);
  absl::Duration max_lease = absl::Minutes(5);
  int max_leases_per_tenant = 1024;
  // Beacons for lent leases (LeaseBeacon(); kvstore/lease_beacons.h). Not owned; must outlive
  // the PageStore. nullptr: leases have no beacons.
  LeaseBeacons* beacons = nullptr;
};

// One block of a visible prefix.
struct VisibleBlock {
  TierKind tier = TierKind::kHost;  // the fastest tier holding it
  std::string ns;                   // namespace it was admitted under
  std::string layout;
  uint64_t size = 0;  // encoded page bytes
  PageGeometry geometry;
  bool has_resume = false;  // the page carries a resume section (V4), current after strips
};

struct PageLookupOptions {
  // Stop at the first block whose fastest tier is not listed; empty: any tier.
  std::vector<TierKind> tiers;
  // A block whose geometry the index does not know yet (a page recovered from nvme) is read
  // once to learn it (the store then remembers it); a block that cannot be read ends the
  // prefix. false: such blocks are returned with an unknown geometry.
  bool geometry = true;
};

struct PinResult {
  std::string lease_id;         // empty when nothing was pinned and no lease was given
  absl::Time deadline;          // the lease's deadline, when lease_id is set
  std::vector<TierKind> tiers;  // fastest tier of each pinned key: keys[0, tiers.size())
};

// A pinned page lent in place (PageStore::Lend).
struct LentPage {
  std::span<const uint8_t> bytes;  // verified when lent; in the tier's own memory
  TierKind tier = TierKind::kHost;
};

struct AdmitOptions {
  std::string layout;                         // the writer's key space: layout name ("mla-fp8-656")
  uint32_t page_tokens = 0;                   // its tokens per page; 0: not checked
  bool shared_namespace = false;              // admit under the shared namespace, not the caller's
  std::optional<absl::Duration> retention;    // TieredStore retention hint
  PageRole resume_role = PageRole::kTurnEnd;  // why a V4 page kept its resume section
  // The block's hash as the writing engine knows it (PageMeta::engine_hash); empty: none.
  // Kept only when this admission stores the page (not for a key already present).
  std::string engine_block_hash;
};
// The longest engine block hash a writer may attach (a SHA-256 digest is 32 bytes).
inline constexpr size_t kMaxEngineBlockHashBytes = 64;

enum class AdmitOutcome { kStored, kAlreadyPresent, kRejected };
struct AdmitResult {
  AdmitOutcome outcome = AdmitOutcome::kRejected;
  // kRejected: why, with its reason (ReasonOf; kNone only for a trusted caller's tenant
  // write, a misuse). OK otherwise.
  absl::Status error;
};

class PageStore {
 public:
  // `store` and options.clock are not owned and must outlive the PageStore.
  PageStore(TieredStore* store, PageStoreOptions options);
  ~PageStore();
  PageStore(const PageStore&) = delete;
  PageStore& operator=(const PageStore&) = delete;

  // The longest prefix of `chain` that is cached and visible to `c` (and passes `o`), one
  // entry per block in chain order. Never fails: an empty result is a miss.
  std::vector<VisibleBlock> Lookup(const PageStoreCaller& c, std::span<const BlockKey> chain,
                                   const PageLookupOptions& o = {});

  // Pins the longest visible cached prefix of `keys` for `lease` (nullopt: default_lease;
  // clamped to max_lease) under a new lease, or under `lease_id` when given, whose deadline
  // then becomes the later of the two. A new lease is made only when something is pinned.
  // InvalidArgument for a non-positive lease, or no keys and no lease id; NotFound
  // (kLeaseNotFound) for a lease id unknown to `c`; ResourceExhausted (kTooManyLeases); the
  // store's errors.
  absl::StatusOr<PinResult> Pin(const PageStoreCaller& c, std::span<const BlockKey> keys,
                                std::optional<absl::Duration> lease,
                                std::string_view lease_id = {});
  // Releases `keys` of the lease (all of them when empty; the lease ends once it pins
  // nothing) and returns how many were released: 0 for a lease unknown to `c` or expired.
  uint32_t Unpin(const PageStoreCaller& c, std::string_view lease_id,
                 std::span<const BlockKey> keys = {});
  // OK when `lease_id` is a live lease of `c`; NotFound (kLeaseNotFound) otherwise.
  absl::Status CheckLease(const PageStoreCaller& c, std::string_view lease_id);

  // The verified bytes of `key`, read under `lease_id` when it covers the key (the copy the
  // lease pinned), else under a short private pin (the copy `c` sees now). NotFound (kNotCached)
  // when absent or invisible to `c`; NotFound (kLeaseNotFound) when `lease_id` is given and
  // unknown, foreign or expired (also when it expires during the read); the store's other errors.
  absl::StatusOr<std::vector<uint8_t>> Read(const PageStoreCaller& c, const BlockKey& key,
                                            std::string_view lease_id = {});

  // Lends the pages of `keys` that `lease_id` pins, in place, for one-sided (RMA) reads of
  // the tier memory: one entry per key of the longest prefix that could be lent, in order. A
  // page held only where it cannot be lent (nvme) is read once first, which promotes it into
  // the host tier under the pin (TieredStore promote_on_hit), then lent; a page that fails
  // verification ends the prefix (it is quarantined, a miss). Each view stays valid while the
  // lease lives. When the lease expires or is released the pins go with it and the memory
  // may be reused, so a reader must confirm the lease is still live after its transfer
  // (Unpin() > 0) before it trusts the bytes. NotFound (kLeaseNotFound) for a lease unknown
  // to `c` or expired; InvalidArgument for a key the lease does not pin; the store's errors.
  absl::StatusOr<std::vector<LentPage>> Lend(const PageStoreCaller& c, std::string_view lease_id,
                                             std::span<const BlockKey> keys);
  // The beacon of `lease_id` (raised on the first call, then the same one), through which a
  // reader confirms with one RMA read that the lease was still live after its transfer
  // (kvstore/lease_beacons.h). It is lowered before the lease's pins are dropped: at Unpin
  // (also of some keys), expiry and destruction. nullopt when the store has no beacons or none
  // is free. NotFound (kLeaseNotFound) for a lease unknown to `c` or expired.
  absl::StatusOr<std::optional<Beacon>> LeaseBeacon(const PageStoreCaller& c,
                                                    std::string_view lease_id);

  // Verifies `page`, written as `key`, and publishes it under `c`'s namespace or the shared
  // one (see "Admission" above). Never fails as a call: the verdict is in the result.
  AdmitResult Admit(const PageStoreCaller& c, const BlockKey& key, std::span<const uint8_t> page,
                    const AdmitOptions& o);

  // Live (unexpired) leases, all callers.
  size_t live_leases();

  TieredStore& store() { return *store_; }

 private:
  struct LeasePins {
    TieredStore::PinHandle handle;
    std::vector<BlockKey> keys;     // as the caller named them
    std::vector<BlockKey> storage;  // the storage keys of the copies pinned, one per key
  };
  // A key of a lease: the handle pinning it (0: the lease does not) and its storage key.
  struct LeasedKey {
    TieredStore::PinHandle handle = 0;
    BlockKey storage;
  };
  struct Lease {
    std::string owner;  // PageStoreCaller::lease_owner(); "" for trusted callers
    absl::Time deadline;
    std::vector<LeasePins> pins;
    std::optional<Beacon> beacon;  // raised by LeaseBeacon(); lowered before pins drop
  };

  absl::Status Miss(const BlockKey& key) const;
  // The storage keys of the copies of `chain` visible to `c`: the shared copies up to the
  // first block of which `c`'s tenant holds a copy (or the shared namespace none), the
  // tenant's from there on (a tenant chain may continue a shared one, never the reverse).
  std::vector<BlockKey> ResolveChain(const PageStoreCaller& c, std::span<const BlockKey> chain);
  // The storage key of the copy of `key` visible to `c`, the tenant's first; nullopt if none.
  std::optional<BlockKey> Resolve(const PageStoreCaller& c, const BlockKey& key);
  // Lookup, also returning the storage key of each block (`storage`, the whole chain's).
  std::vector<VisibleBlock> LookupResolved(const PageStoreCaller& c,
                                           std::span<const BlockKey> chain,
                                           const PageLookupOptions& o,
                                           std::vector<BlockKey>* storage);
  absl::StatusOr<PageGeometry> LearnGeometry(const BlockKey& key, uint64_t size);
  // The lease `id` if it is live and `c`'s; nullptr otherwise.
  Lease* FindLeaseLocked(const PageStoreCaller& c, std::string_view id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The lease's handle covering `key` (0 when it does not cover it) and the key's storage key.
  // NotFound (kLeaseNotFound) for an unknown, foreign or expired lease.
  absl::StatusOr<LeasedKey> LeaseHandle(const PageStoreCaller& c, std::string_view id,
                                        const BlockKey& key);
  // Records a pin (handle may be 0: nothing pinned) of `pinned` (storage keys `storage`)
  // into the lease `id` or a new one.
  absl::StatusOr<PinResult> AddToLease(const PageStoreCaller& c, std::string_view id,
                                       absl::Time deadline, TieredStore::PinHandle handle,
                                       std::span<const BlockKey> pinned,
                                       std::span<const BlockKey> storage);
  uint32_t UnpinSomeLocked(Lease& lease, std::span<const BlockKey> keys)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReapLeasesLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLeaseLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LowerBeaconLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLeaseLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status TooManyLeases() const;
  // Whether the storage key `skey` is cached, after waiting (bounded) for another caller's
  // admission of it to finish; *timed_out when that did not finish in time.
  bool HeldLocked(const BlockKey& skey, bool* timed_out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  AdmitResult Publish(const std::string& ns, const BlockKey& sparent, const PageHeader& h,
                      std::span<const uint8_t> page, const AdmitOptions& o);

  TieredStore* const store_;
  const PageStoreOptions options_;
  Clock* const clock_;
  Gauge* leases_gauge_ = nullptr;
  int collect_hook_ = 0;  // options_.metrics's hook that reaps expired leases at each scrape

  kv::Mutex mu_;
  absl::flat_hash_map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<absl::Time, std::string>> lease_deadlines_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> leases_per_tenant_ ABSL_GUARDED_BY(mu_);
  // Storage keys being admitted (between the check that the key is absent and the end of
  // their publish), so that concurrent writers of one copy wait for each other.
  absl::flat_hash_set<BlockKey> admitting_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv
