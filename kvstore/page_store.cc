#include "kvstore/page_store.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/cord.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {

namespace {

constexpr std::string_view kReasonUrl = "type.kvstrata.dev/page-store-reason";
// How long a read without a lease (or a geometry probe) keeps its private pin at most.
constexpr absl::Duration kPrivatePin = absl::Seconds(30);
// How long an admission waits for another caller's admission of the same key. Real time: the
// other writer runs in real time, whatever clock the leases use.
constexpr absl::Duration kAwaitAdmission = absl::Seconds(2);

const std::string& SharedNs() {
  static const std::string* ns = new std::string(KeyNamespace::Shared().ToString());
  return *ns;
}

AdmitResult Rejected(absl::Status why, PageStoreReason reason) {
  return {AdmitOutcome::kRejected, WithReason(std::move(why), reason)};
}

absl::Status LeaseGone(std::string_view id) {
  return WithReason(absl::NotFoundError(StrCat("lease '", id, "' is unknown or expired")),
                    PageStoreReason::kLeaseNotFound);
}

// Why a page failed DecodePage: checksums, an unknown layout, or anything else.
AdmitResult Undecodable(std::span<const uint8_t> page, absl::Status why) {
  if (absl::IsDataLoss(why))
    return Rejected(std::move(why), PageStoreReason::kPageChecksumMismatch);
  uint16_t code = 0;
  if (page.size() >= 12) std::memcpy(&code, page.data() + 10, 2);
  absl::StatusOr<LayoutInfo> layout = LookupLayout(code);
  const bool unknown = !layout.ok() || !layout->supported;
  return Rejected(std::move(why),
                  unknown ? PageStoreReason::kUnknownLayout : PageStoreReason::kMalformedPage);
}

}  // namespace

absl::Status WithReason(absl::Status s, PageStoreReason reason) {
  if (!s.ok())
    s.SetPayload(ToAbsl(kReasonUrl), absl::Cord(std::string(1, static_cast<char>(reason))));
  return s;
}

std::string NewLeaseId() {
  std::random_device rd;  // the kernel's CSPRNG on Linux
  std::string raw(16, '\0');
  for (size_t i = 0; i < raw.size(); i += 4) {
    const uint32_t v = rd();
    std::memcpy(raw.data() + i, &v, 4);
  }
  return ToHex(raw.data(), raw.size());
}

std::string_view ReasonName(PageStoreReason reason) {
  switch (reason) {
    case PageStoreReason::kNone:
      return "";
    case PageStoreReason::kNotCached:
      return "NOT_CACHED";
    case PageStoreReason::kLeaseNotFound:
      return "LEASE_NOT_FOUND";
    case PageStoreReason::kTooManyLeases:
      return "TOO_MANY_LEASES";
    case PageStoreReason::kPageTooLarge:
      return "PAGE_TOO_LARGE";
    case PageStoreReason::kMalformedPage:
      return "MALFORMED_PAGE";
    case PageStoreReason::kUnknownLayout:
      return "UNKNOWN_LAYOUT";
    case PageStoreReason::kPageChecksumMismatch:
      return "PAGE_CHECKSUM_MISMATCH";
    case PageStoreReason::kKeyMismatch:
      return "KEY_MISMATCH";
    case PageStoreReason::kKeySpaceMismatch:
      return "KEY_SPACE_MISMATCH";
    case PageStoreReason::kParentMissing:
      return "PARENT_MISSING";
    case PageStoreReason::kStoreFull:
      return "STORE_FULL";
    case PageStoreReason::kStoreError:
      return "STORE_ERROR";
  }
  return "";
}

PageStoreReason ReasonOf(const absl::Status& status) {
  const auto p = status.GetPayload(ToAbsl(kReasonUrl));
  if (!p.has_value() || p->size() != 1) return PageStoreReason::kNone;
  const auto r = static_cast<uint8_t>((*p)[0]);
  if (r > static_cast<uint8_t>(PageStoreReason::kStoreError)) return PageStoreReason::kNone;
  return static_cast<PageStoreReason>(r);
}

absl::StatusOr<PageStoreCaller> PageStoreCaller::Tenant(std::string_view tenant) {
  ASSIGN_OR_RETURN(PageStoreCaller c, TrustedFor(tenant));
  c.trusted_ = false;
  return c;
}

absl::StatusOr<PageStoreCaller> PageStoreCaller::TrustedFor(std::string_view tenant) {
  ASSIGN_OR_RETURN(KeyNamespace ns, KeyNamespace::Tenant(tenant));
  PageStoreCaller c;
  c.tenant_ = std::string(tenant);
  c.ns_ = ns.ToString();
  return c;
}

const std::string& PageStoreCaller::lease_owner() const {
  static const std::string* none = new std::string();
  return trusted_ ? *none : tenant_;
}

bool PageStoreCaller::CanRead(std::string_view ns) const {
  return ns == SharedNs() || (!ns_.empty() && ns == ns_);
}

BlockKey StorageKey(std::string_view ns, const BlockKey& key) {
  if (key.IsZero()) return key;
  Sha256 h;
  auto framed = [&h](std::string_view field) {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t{field.size()} >> (8 * i));
    h.Update(len, sizeof(len));
    h.Update(field);
  };
  framed("kvstrata/store-key/v1");
  framed(ns);
  framed({reinterpret_cast<const char*>(key.bytes.data()), key.bytes.size()});
  return BlockKey{h.Final()};
}

PageStore::PageStore(TieredStore* store, PageStoreOptions options)
    : store_(store),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : store->clock()) {
  if (options_.metrics != nullptr) {
    leases_gauge_ =
        options_.metrics->GetGauge("kvstrata_pagestore_leases", "Live PageStore pin leases");
    // Expired leases leave the gauge at every scrape, not only at the next Pin.
    collect_hook_ = options_.metrics->AddCollectHook([this] {
      MutexLock l(&mu_);
      ReapLeasesLocked(clock_->Now());
    });
  }
}

PageStore::~PageStore() {
  if (collect_hook_ != 0) options_.metrics->RemoveCollectHook(collect_hook_);  // before mu_
  kv::MutexLock l(&mu_);
  for (auto& [id, lease] : leases_) {
    LowerBeaconLocked(lease);
    for (const LeasePins& p : lease.pins) store_->Unpin(p.handle).IgnoreError();
  }
  if (leases_gauge_ != nullptr) leases_gauge_->Set(0);
}

absl::Status PageStore::Miss(const BlockKey& key) const {
  return WithReason(
      absl::NotFoundError(StrCat("block ", key.Hex(), " is not cached on ", options_.node_id)),
      PageStoreReason::kNotCached);
}

// ---- Lookup -----------------------------------------------------------------------------------

std::vector<BlockKey> PageStore::ResolveChain(const PageStoreCaller& c,
                                              std::span<const BlockKey> chain) {
  std::vector<BlockKey> out(chain.size());
  size_t i = 0;
  for (; i < chain.size(); ++i) {
    if (!c.ns().empty() && store_->Describe(StorageKey(c.ns(), chain[i])).has_value()) break;
    out[i] = StorageKey(SharedNs(), chain[i]);
    if (!store_->Describe(out[i]).has_value()) break;
  }
  if (c.ns().empty()) {
    for (; i < chain.size(); ++i) out[i] = StorageKey(SharedNs(), chain[i]);
  } else {
    for (; i < chain.size(); ++i) out[i] = StorageKey(c.ns(), chain[i]);
  }
  return out;
}

std::vector<BlockKey> StorageKeys(std::string_view ns, std::span<const BlockKey> keys) {
  std::vector<BlockKey> out;
  out.reserve(keys.size());
  for (const BlockKey& k : keys) out.push_back(StorageKey(ns, k));
  return out;
}

std::optional<BlockKey> VisibleStorageKey(TieredStore& store, std::string_view ns,
                                          const BlockKey& key) {
  for (std::string_view n : {ns, std::string_view(SharedNs())}) {
    if (n.empty()) continue;
    const BlockKey s = StorageKey(n, key);
    if (store.Describe(s).has_value()) return s;
  }
  return std::nullopt;
}

std::optional<BlockKey> PageStore::Resolve(const PageStoreCaller& c, const BlockKey& key) {
  return VisibleStorageKey(*store_, c.ns(), key);
}

std::vector<VisibleBlock> PageStore::Lookup(const PageStoreCaller& c,
                                            std::span<const BlockKey> chain,
                                            const PageLookupOptions& o) {
  std::vector<BlockKey> storage;
  return LookupResolved(c, chain, o, &storage);
}

std::vector<VisibleBlock> PageStore::LookupResolved(const PageStoreCaller& c,
                                                    std::span<const BlockKey> chain,
                                                    const PageLookupOptions& o,
                                                    std::vector<BlockKey>* storage) {
  *storage = ResolveChain(c, chain);
  TieredStore::LookupResult r = store_->Lookup(*storage);
  std::vector<VisibleBlock> out;
  out.reserve(r.matched);
  for (size_t i = 0; i < r.matched; ++i) {
    TieredStore::BlockInfo& b = r.blocks[i];
    if (!c.CanRead(b.ns)) break;  // not expected: a storage key names its namespace
    if (!o.tiers.empty() &&
        std::find(o.tiers.begin(), o.tiers.end(), r.tiers[i]) == o.tiers.end()) {
      break;
    }
    if (o.geometry && !b.geometry.known()) {
      absl::StatusOr<PageGeometry> g = LearnGeometry((*storage)[i], b.size);
      if (!g.ok()) break;  // gone meanwhile, or unreadable: a miss
      b.geometry = *g;
    }
    out.push_back(
        {r.tiers[i], std::move(b.ns), std::move(b.layout), b.size, b.geometry, r.has_resume[i]});
  }
  return out;
}

absl::StatusOr<PageGeometry> PageStore::LearnGeometry(const BlockKey& key, uint64_t size) {
  ASSIGN_OR_RETURN(TieredStore::PinHandle h, store_->Pin({&key, 1}, clock_->Now() + kPrivatePin));
  std::vector<uint8_t> buf(size);
  absl::StatusOr<size_t> n = store_->Read(h, key, buf);  // teaches the index the geometry
  store_->Unpin(h).IgnoreError();  // a pin that already expired needs no release
  RETURN_IF_ERROR(n.status());
  ASSIGN_OR_RETURN(PageHeader hdr, DecodePageHeader(std::span(buf).first(*n)));
  return PageGeometry{hdr.token_count, hdr.first_layer, hdr.layer_count};
}

// ---- leases -----------------------------------------------------------------------------------

absl::Status PageStore::TooManyLeases() const {
  return MarkRetryable(WithReason(
      absl::ResourceExhaustedError(StrCat("tenant holds ", options_.max_leases_per_tenant,
                                          " leases already; unpin some or wait")),
      PageStoreReason::kTooManyLeases));
}

void PageStore::LowerBeaconLocked(Lease& lease) {
  if (!lease.beacon.has_value()) return;
  options_.beacons->Lower(*lease.beacon);  // before any pin drops (lease_beacons.h)
  lease.beacon.reset();
}

void PageStore::ReleaseLeaseLocked(Lease& lease) {
  LowerBeaconLocked(lease);
  // NotFound: the store's pins already expired on the same clock; nothing to release.
  for (const LeasePins& p : lease.pins) store_->Unpin(p.handle).IgnoreError();
  lease.pins.clear();
  if (lease.owner.empty()) return;  // trusted leases are not counted
  if (--leases_per_tenant_[lease.owner] <= 0) leases_per_tenant_.erase(lease.owner);
}

void PageStore::EraseLeaseLocked(const std::string& id) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return;
  lease_deadlines_.erase({it->second.deadline, id});
  leases_.erase(it);
  if (leases_gauge_ != nullptr) leases_gauge_->Set(static_cast<double>(leases_.size()));
}

void PageStore::ReapLeasesLocked(absl::Time now) {
  while (!lease_deadlines_.empty() && lease_deadlines_.begin()->first <= now) {
    const std::string id = lease_deadlines_.begin()->second;
    lease_deadlines_.erase(lease_deadlines_.begin());
    auto it = leases_.find(id);
    if (it == leases_.end()) continue;
    ReleaseLeaseLocked(it->second);
    leases_.erase(it);
  }
  if (leases_gauge_ != nullptr) leases_gauge_->Set(static_cast<double>(leases_.size()));
}

PageStore::Lease* PageStore::FindLeaseLocked(const PageStoreCaller& c, std::string_view id) {
  ReapLeasesLocked(clock_->Now());
  auto it = leases_.find(ToAbsl(id));
  if (it == leases_.end() || it->second.owner != c.lease_owner()) return nullptr;
  return &it->second;
}

size_t PageStore::live_leases() {
  kv::MutexLock l(&mu_);
  ReapLeasesLocked(clock_->Now());
  return leases_.size();
}

absl::Status PageStore::CheckLease(const PageStoreCaller& c, std::string_view lease_id) {
  kv::MutexLock l(&mu_);
  return FindLeaseLocked(c, lease_id) != nullptr ? absl::OkStatus() : LeaseGone(lease_id);
}

absl::StatusOr<PageStore::LeasedKey> PageStore::LeaseHandle(const PageStoreCaller& c,
                                                            std::string_view id,
                                                            const BlockKey& key) {
  kv::MutexLock l(&mu_);
  const Lease* lease = FindLeaseLocked(c, id);
  if (lease == nullptr) return LeaseGone(id);
  for (const LeasePins& p : lease->pins) {
    auto it = std::find(p.keys.begin(), p.keys.end(), key);
    if (it != p.keys.end()) return LeasedKey{p.handle, p.storage[it - p.keys.begin()]};
  }
  return LeasedKey{};
}

absl::StatusOr<PinResult> PageStore::Pin(const PageStoreCaller& c, std::span<const BlockKey> keys,
                                         std::optional<absl::Duration> lease,
                                         std::string_view lease_id) {
  if (keys.empty() && lease_id.empty()) {
    return absl::InvalidArgumentError("Pin needs keys, or a lease id to extend");
  }
  absl::Duration len = lease.value_or(options_.default_lease);
  if (len <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease must be a positive duration (or unset)");
  }
  const absl::Time deadline = clock_->Now() + std::min(len, options_.max_lease);
  {
    kv::MutexLock l(&mu_);
    if (!lease_id.empty()) {
      if (FindLeaseLocked(c, lease_id) == nullptr) return LeaseGone(lease_id);
    } else if (!c.trusted() && leases_per_tenant_[c.tenant()] >= options_.max_leases_per_tenant) {
      return TooManyLeases();
    }
  }
  // Pin the visible prefix. A page evicted between the lookup and the pin makes the pin fail
  // (all or nothing); look up again, a bounded number of times.
  std::vector<TierKind> tiers;
  std::vector<BlockKey> storage;
  TieredStore::PinHandle handle = 0;
  for (int attempt = 0; !keys.empty(); ++attempt) {
    tiers.clear();
    for (const VisibleBlock& b : LookupResolved(c, keys, {.geometry = false}, &storage)) {
      tiers.push_back(b.tier);
    }
    if (tiers.empty()) break;
    absl::StatusOr<TieredStore::PinHandle> h =
        store_->Pin(std::span(storage).first(tiers.size()), deadline);
    if (h.ok()) {
      handle = *h;
      break;
    }
    if (!absl::IsNotFound(h.status()) || attempt == 3) return h.status();
  }
  ASSIGN_OR_RETURN(PinResult r, AddToLease(c, lease_id, deadline, handle, keys.first(tiers.size()),
                                           std::span(storage).first(tiers.size())));
  r.tiers = std::move(tiers);  // empty unless something was pinned
  return r;
}

absl::StatusOr<PinResult> PageStore::AddToLease(const PageStoreCaller& c, std::string_view id,
                                                absl::Time deadline, TieredStore::PinHandle handle,
                                                std::span<const BlockKey> pinned,
                                                std::span<const BlockKey> storage) {
  kv::MutexLock l(&mu_);
  PinResult r;
  std::string lease_id(id);
  Lease* lease = nullptr;
  if (!lease_id.empty()) {
    lease = FindLeaseLocked(c, lease_id);
    if (lease == nullptr) {  // released or expired meanwhile
      if (handle != 0) store_->Unpin(handle).IgnoreError();
      return LeaseGone(lease_id);
    }
    deadline = std::max(deadline, lease->deadline);
    lease_deadlines_.erase({lease->deadline, lease_id});
    // Renew every earlier pin; one the store already dropped no longer pins anything.
    std::erase_if(lease->pins,
                  [&](const LeasePins& p) { return !store_->Renew(p.handle, deadline).ok(); });
  } else if (handle != 0) {
    if (!c.trusted() && leases_per_tenant_[c.tenant()] >= options_.max_leases_per_tenant) {
      store_->Unpin(handle).IgnoreError();  // raced another pin
      return TooManyLeases();
    }
    lease_id = NewLeaseId();
    lease = &leases_[lease_id];
    lease->owner = c.lease_owner();
    if (!c.trusted()) ++leases_per_tenant_[c.tenant()];
  }
  if (lease != nullptr) {
    lease->deadline = deadline;
    lease_deadlines_.insert({deadline, lease_id});
    if (handle != 0) {
      lease->pins.push_back(
          {handle, {pinned.begin(), pinned.end()}, {storage.begin(), storage.end()}});
    }
    r.lease_id = std::move(lease_id);
    r.deadline = deadline;
  }
  if (leases_gauge_ != nullptr) leases_gauge_->Set(static_cast<double>(leases_.size()));
  return r;
}

uint32_t PageStore::Unpin(const PageStoreCaller& c, std::string_view lease_id,
                          std::span<const BlockKey> keys) {
  kv::MutexLock l(&mu_);
  Lease* lease = FindLeaseLocked(c, lease_id);
  if (lease == nullptr) return 0;  // it expires on its own
  uint32_t released = 0;
  if (keys.empty()) {
    for (const LeasePins& p : lease->pins) released += static_cast<uint32_t>(p.keys.size());
    ReleaseLeaseLocked(*lease);
  } else {
    released = UnpinSomeLocked(*lease, keys);
    if (!lease->pins.empty()) return released;
    ReleaseLeaseLocked(*lease);
  }
  EraseLeaseLocked(std::string(lease_id));
  return released;
}

uint32_t PageStore::UnpinSomeLocked(Lease& lease, std::span<const BlockKey> keys) {
  // A beacon vouches for every page the lease lent; once some may be reused it vouches for none.
  LowerBeaconLocked(lease);
  const absl::flat_hash_set<BlockKey> drop(keys.begin(), keys.end());
  uint32_t released = 0;
  std::vector<LeasePins> kept;
  for (LeasePins& p : lease.pins) {
    std::vector<BlockKey> rest, rest_storage;
    for (size_t i = 0; i < p.keys.size(); ++i) {
      if (drop.contains(p.keys[i])) continue;
      rest.push_back(p.keys[i]);
      rest_storage.push_back(p.storage[i]);
    }
    if (rest.size() == p.keys.size()) {
      kept.push_back(std::move(p));
      continue;
    }
    if (!rest.empty()) {
      // Pin the rest under a new handle before dropping the old one, so they stay pinned.
      absl::StatusOr<TieredStore::PinHandle> h = store_->Pin(rest_storage, lease.deadline);
      if (!h.ok()) {
        log::Warn("pagestore_repin_failed", "error", h.status().ToString());
        kept.push_back(std::move(p));
        continue;
      }
      kept.push_back({*h, rest, rest_storage});
    }
    released += static_cast<uint32_t>(p.keys.size() - rest.size());
    store_->Unpin(p.handle).IgnoreError();
  }
  lease.pins = std::move(kept);
  return released;
}

// ---- Read -------------------------------------------------------------------------------------

absl::StatusOr<std::vector<uint8_t>> PageStore::Read(const PageStoreCaller& c, const BlockKey& key,
                                                     std::string_view lease_id) {
  // The copy the lease pinned, else the one `c` sees now.
  LeasedKey leased;
  if (!lease_id.empty()) {
    ASSIGN_OR_RETURN(leased, LeaseHandle(c, lease_id, key));
  }
  std::optional<BlockKey> skey =
      leased.handle != 0 ? std::optional(leased.storage) : Resolve(c, key);
  if (!skey.has_value()) return Miss(key);
  // A copy the caller's own lease pinned was visible to whoever pinned it (for a trusted
  // caller, another trusted caller acting for its tenant).
  const std::optional<TieredStore::BlockInfo> info = store_->Describe(*skey);
  if (!info.has_value() || (leased.handle == 0 && !c.CanRead(info->ns))) return Miss(key);
  TieredStore::PinHandle h = leased.handle;
  const bool own_pin = h == 0;
  if (own_pin) {
    absl::StatusOr<TieredStore::PinHandle> p =
        store_->Pin({&*skey, 1}, clock_->Now() + kPrivatePin);
    if (absl::IsNotFound(p.status())) return Miss(key);
    RETURN_IF_ERROR(p.status());
    h = *p;
  }
  std::vector<uint8_t> bytes(info->size);
  absl::StatusOr<size_t> n = store_->Read(h, *skey, bytes);
  if (own_pin) store_->Unpin(h).IgnoreError();
  if (!n.ok()) {
    if (!absl::IsNotFound(n.status())) return n.status();
    // The lease may have expired between LeaseHandle() and Read().
    if (!own_pin) RETURN_IF_ERROR(LeaseHandle(c, lease_id, key).status());
    return Miss(key);
  }
  bytes.resize(*n);
  return bytes;
}

absl::StatusOr<std::vector<LentPage>> PageStore::Lend(const PageStoreCaller& c,
                                                      std::string_view lease_id,
                                                      std::span<const BlockKey> keys) {
  std::vector<LentPage> out;
  for (const BlockKey& key : keys) {
    ASSIGN_OR_RETURN(LeasedKey leased, LeaseHandle(c, lease_id, key));
    const TieredStore::PinHandle h = leased.handle;
    if (h == 0) {
      return absl::InvalidArgumentError(
          StrCat("lease '", lease_id, "' does not pin block ", key.Hex()));
    }
    absl::StatusOr<TieredStore::Loan> loan = store_->Lend(h, leased.storage);
    if (absl::IsUnimplemented(loan.status())) {
      // Held only in nvme: a verified read promotes it into host, where it can be lent.
      const std::optional<TieredStore::BlockInfo> info = store_->Describe(leased.storage);
      if (!info.has_value()) break;
      std::vector<uint8_t> buf(info->size);
      if (!store_->Read(h, leased.storage, buf).ok()) break;
      loan = store_->Lend(h, leased.storage);
    }
    if (!loan.ok()) {
      // The lease may have expired meanwhile (an error); otherwise the page is a miss.
      RETURN_IF_ERROR(LeaseHandle(c, lease_id, key).status());
      if (absl::IsNotFound(loan.status()) || absl::IsUnimplemented(loan.status())) break;
      return loan.status();
    }
    out.push_back({loan->bytes, loan->tier});
  }
  return out;
}

absl::StatusOr<std::optional<Beacon>> PageStore::LeaseBeacon(const PageStoreCaller& c,
                                                             std::string_view lease_id) {
  kv::MutexLock l(&mu_);
  Lease* lease = FindLeaseLocked(c, lease_id);
  if (lease == nullptr) return LeaseGone(lease_id);
  if (!lease->beacon.has_value() && options_.beacons != nullptr) {
    lease->beacon = options_.beacons->Raise();
  }
  return lease->beacon;
}

// ---- Admit ------------------------------------------------------------------------------------

AdmitResult PageStore::Admit(const PageStoreCaller& c, const BlockKey& key,
                             std::span<const uint8_t> page, const AdmitOptions& o) {
  if (c.ns().empty() && !o.shared_namespace) {
    return Rejected(
        absl::InvalidArgumentError("a trusted caller acting for no tenant admits "
                                   "only shared pages; admit a tenant's for the tenant"),
        PageStoreReason::kNone);
  }
  if (options_.max_page_bytes != 0 && page.size() > options_.max_page_bytes) {
    return Rejected(
        absl::InvalidArgumentError(StrCat("page of ", page.size(), " bytes exceeds the limit of ",
                                          options_.max_page_bytes)),
        PageStoreReason::kPageTooLarge);
  }
  if (o.engine_block_hash.size() > kMaxEngineBlockHashBytes) {
    return Rejected(absl::InvalidArgumentError(
                        StrCat("engine block hash of ", o.engine_block_hash.size(),
                               " bytes exceeds the limit of ", kMaxEngineBlockHashBytes)),
                    PageStoreReason::kMalformedPage);
  }
  absl::StatusOr<PageView> view = DecodePage(page);
  if (!view.ok()) return Undecodable(page, view.status());
  const PageHeader& h = view->header();
  if (h.key != key) {
    return Rejected(absl::InvalidArgumentError(StrCat("the page header's key is ", h.key.Hex())),
                    PageStoreReason::kKeyMismatch);
  }
  if (h.layout.name != o.layout || (o.page_tokens != 0 && h.token_count != o.page_tokens)) {
    return Rejected(
        absl::InvalidArgumentError(StrCat("page is ", h.layout.name, " with ", h.token_count,
                                          " tokens; the stream's key space is ", o.layout, " with ",
                                          o.page_tokens, " tokens per page")),
        PageStoreReason::kKeySpaceMismatch);
  }
  const std::string& ns = o.shared_namespace ? SharedNs() : c.ns();
  // The parent's copy this page chains from: the page's own namespace's, else (for a tenant
  // page) the shared one's. A shared page never continues a tenant's chain.
  BlockKey sparent = BlockKey::Zero();
  if (!h.parent.IsZero()) {
    bool found = false;
    for (const std::string* pns : {&ns, &SharedNs()}) {
      sparent = StorageKey(*pns, h.parent);
      if ((found = store_->Describe(sparent).has_value())) break;
    }
    if (!found) {
      return Rejected(absl::FailedPreconditionError(StrCat("parent block ", h.parent.Hex(),
                                                           " is not cached on ", options_.node_id)),
                      PageStoreReason::kParentMissing);
    }
  }
  return Publish(ns, sparent, h, page, o);
}

bool PageStore::HeldLocked(const BlockKey& skey, bool* timed_out) {
  *timed_out = false;
  if (admitting_.contains(skey)) {
    auto done = [&]() { return !admitting_.contains(skey); };
    if (!mu_.AwaitWithDeadline(Condition(&done), absl::Now() + kAwaitAdmission)) {
      *timed_out = true;
      return false;
    }
  }
  return store_->Describe(skey).has_value();
}

AdmitResult PageStore::Publish(const std::string& ns, const BlockKey& sparent, const PageHeader& h,
                               std::span<const uint8_t> page, const AdmitOptions& o) {
  // Each namespace's copy of a key is its own page: a copy is only ever "already present" to
  // a writer of the same namespace, whoever else holds the key.
  const BlockKey skey = StorageKey(ns, h.key);
  auto present = [&]() -> AdmitResult {
    if (o.retention.has_value()) store_->Retain({&skey, 1}, *o.retention);
    return {AdmitOutcome::kAlreadyPresent, {}};
  };
  {
    kv::MutexLock l(&mu_);
    bool timed_out = false;
    const bool held = HeldLocked(skey, &timed_out);
    if (timed_out) {
      return Rejected(MarkRetryable(absl::UnavailableError(
                          "another writer's admission of this key did not finish in time")),
                      PageStoreReason::kStoreError);
    }
    if (held) return present();
    admitting_.insert(skey);
  }
  const PageMeta meta{.key = skey,
                      .parent = sparent,
                      .ns = ns,
                      .layout = std::string(h.layout.name),
                      .size = page.size(),
                      .resume_role = o.resume_role,
                      .engine_hash = o.engine_block_hash,
                      .page_key = h.key,
                      .page_parent = h.parent};
  absl::Status s = store_->Publish(meta, page, o.retention);
  {
    kv::MutexLock l(&mu_);
    admitting_.erase(skey);
  }
  if (s.ok()) return {AdmitOutcome::kStored, {}};
  // A writer outside this PageStore (another PageStore over the same store) got there first.
  if (absl::IsAlreadyExists(s)) return present();
  if (absl::IsResourceExhausted(s)) return Rejected(s, PageStoreReason::kStoreFull);
  if (absl::IsFailedPrecondition(s)) return Rejected(s, PageStoreReason::kParentMissing);
  if (absl::IsDataLoss(s)) return Rejected(s, PageStoreReason::kPageChecksumMismatch);
  log::Warn("pagestore_publish_failed", "key", h.key.Hex(), "error", s.ToString());
  return Rejected(s, PageStoreReason::kStoreError);
}

}  // namespace kv
