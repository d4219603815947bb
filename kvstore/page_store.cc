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
    case PageStoreReason::kNamespaceConflict:
      return "NAMESPACE_CONFLICT";
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
  ASSIGN_OR_RETURN(KeyNamespace ns, KeyNamespace::Tenant(tenant));
  PageStoreCaller c;
  c.tenant_ = std::string(tenant);
  c.ns_ = ns.ToString();
  return c;
}

bool PageStoreCaller::CanRead(std::string_view ns) const {
  return trusted() || ns == ns_ || ns == SharedNs();
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

std::vector<VisibleBlock> PageStore::Lookup(const PageStoreCaller& c,
                                            std::span<const BlockKey> chain,
                                            const PageLookupOptions& o) {
  TieredStore::LookupResult r = store_->Lookup(chain);
  std::vector<VisibleBlock> out;
  out.reserve(r.matched);
  for (size_t i = 0; i < r.matched; ++i) {
    TieredStore::BlockInfo& b = r.blocks[i];
    if (!c.CanRead(b.ns)) break;
    if (!o.tiers.empty() &&
        std::find(o.tiers.begin(), o.tiers.end(), r.tiers[i]) == o.tiers.end()) {
      break;
    }
    if (o.geometry && !b.geometry.known()) {
      absl::StatusOr<PageGeometry> g = LearnGeometry(chain[i], b.size);
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
  if (it == leases_.end() || it->second.owner != c.tenant()) return nullptr;
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

absl::StatusOr<TieredStore::PinHandle> PageStore::LeaseHandle(const PageStoreCaller& c,
                                                              std::string_view id,
                                                              const BlockKey& key) {
  kv::MutexLock l(&mu_);
  const Lease* lease = FindLeaseLocked(c, id);
  if (lease == nullptr) return LeaseGone(id);
  for (const LeasePins& p : lease->pins) {
    if (std::find(p.keys.begin(), p.keys.end(), key) != p.keys.end()) return p.handle;
  }
  return TieredStore::PinHandle{0};
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
  TieredStore::PinHandle handle = 0;
  for (int attempt = 0; !keys.empty(); ++attempt) {
    tiers.clear();
    for (const VisibleBlock& b : Lookup(c, keys, {.geometry = false})) tiers.push_back(b.tier);
    if (tiers.empty()) break;
    absl::StatusOr<TieredStore::PinHandle> h = store_->Pin(keys.first(tiers.size()), deadline);
    if (h.ok()) {
      handle = *h;
      break;
    }
    if (!absl::IsNotFound(h.status()) || attempt == 3) return h.status();
  }
  ASSIGN_OR_RETURN(PinResult r,
                   AddToLease(c, lease_id, deadline, handle, keys.first(tiers.size())));
  r.tiers = std::move(tiers);  // empty unless something was pinned
  return r;
}

absl::StatusOr<PinResult> PageStore::AddToLease(const PageStoreCaller& c, std::string_view id,
                                                absl::Time deadline, TieredStore::PinHandle handle,
                                                std::span<const BlockKey> pinned) {
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
    lease->owner = c.tenant();
    if (!c.trusted()) ++leases_per_tenant_[c.tenant()];
  }
  if (lease != nullptr) {
    lease->deadline = deadline;
    lease_deadlines_.insert({deadline, lease_id});
    if (handle != 0) lease->pins.push_back({handle, {pinned.begin(), pinned.end()}});
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
    std::vector<BlockKey> rest;
    for (const BlockKey& k : p.keys) {
      if (!drop.contains(k)) rest.push_back(k);
    }
    if (rest.size() == p.keys.size()) {
      kept.push_back(std::move(p));
      continue;
    }
    if (!rest.empty()) {
      // Pin the rest under a new handle before dropping the old one, so they stay pinned.
      absl::StatusOr<TieredStore::PinHandle> h = store_->Pin(rest, lease.deadline);
      if (!h.ok()) {
        log::Warn("pagestore_repin_failed", "error", h.status().ToString());
        kept.push_back(std::move(p));
        continue;
      }
      kept.push_back({*h, rest});
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
  const std::optional<TieredStore::BlockInfo> info = store_->Describe(key);
  if (!info.has_value() || !c.CanRead(info->ns)) return Miss(key);
  TieredStore::PinHandle h = 0;
  if (!lease_id.empty()) {
    ASSIGN_OR_RETURN(h, LeaseHandle(c, lease_id, key));
  }
  const bool own_pin = h == 0;
  if (own_pin) {
    absl::StatusOr<TieredStore::PinHandle> p = store_->Pin({&key, 1}, clock_->Now() + kPrivatePin);
    if (absl::IsNotFound(p.status())) return Miss(key);
    RETURN_IF_ERROR(p.status());
    h = *p;
  }
  std::vector<uint8_t> bytes(info->size);
  absl::StatusOr<size_t> n = store_->Read(h, key, bytes);
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
    ASSIGN_OR_RETURN(TieredStore::PinHandle h, LeaseHandle(c, lease_id, key));
    if (h == 0) {
      return absl::InvalidArgumentError(
          StrCat("lease '", lease_id, "' does not pin block ", key.Hex()));
    }
    absl::StatusOr<TieredStore::Loan> loan = store_->Lend(h, key);
    if (absl::IsUnimplemented(loan.status())) {
      // Held only in nvme: a verified read promotes it into host, where it can be lent.
      const std::optional<TieredStore::BlockInfo> info = store_->Describe(key);
      if (!info.has_value()) break;
      std::vector<uint8_t> buf(info->size);
      if (!store_->Read(h, key, buf).ok()) break;
      loan = store_->Lend(h, key);
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
  if (c.trusted() && !o.shared_namespace) {
    return Rejected(
        absl::InvalidArgumentError(
            "a trusted caller admits only shared pages; admit a tenant's as the tenant"),
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
  if (!h.parent.IsZero()) {
    const std::optional<TieredStore::BlockInfo> p = store_->Describe(h.parent);
    const bool may_chain =
        p.has_value() && (p->ns == SharedNs() || (p->ns == c.ns() && ns == c.ns()));
    if (!may_chain) {
      return Rejected(absl::FailedPreconditionError(StrCat("parent block ", h.parent.Hex(),
                                                           " is not cached on ", options_.node_id)),
                      PageStoreReason::kParentMissing);
    }
  }
  return Publish(c, ns, h, page, o);
}

std::optional<std::string> PageStore::HolderLocked(const PageStoreCaller& c, const std::string& ns,
                                                   const BlockKey& key, bool* timed_out) {
  *timed_out = false;
  const absl::Time give_up = absl::Now() + kAwaitAdmission;
  for (auto it = admitting_.find(key); it != admitting_.end(); it = admitting_.find(key)) {
    if (it->second != ns && !c.CanRead(it->second)) return it->second;  // a conflict: no wait
    auto done = [&]() { return !admitting_.contains(key); };
    if (!mu_.AwaitWithDeadline(Condition(&done), give_up)) {
      *timed_out = true;
      return admitting_.contains(key) ? std::optional(admitting_[key]) : std::nullopt;
    }
  }
  std::optional<TieredStore::BlockInfo> info = store_->Describe(key);
  if (!info.has_value()) return std::nullopt;
  return std::move(info->ns);
}

AdmitResult PageStore::Publish(const PageStoreCaller& c, const std::string& ns, const PageHeader& h,
                               std::span<const uint8_t> page, const AdmitOptions& o) {
  const BlockKey& key = h.key;
  auto held = [&](const std::string& holder) -> AdmitResult {
    if (holder != ns && !c.CanRead(holder)) {
      return Rejected(absl::FailedPreconditionError(
                          "this key is held under another namespace; keys must be derived in "
                          "the caller's namespace (or shared)"),
                      PageStoreReason::kNamespaceConflict);
    }
    if (o.retention.has_value()) store_->Retain({&key, 1}, *o.retention);
    return {AdmitOutcome::kAlreadyPresent, {}};
  };
  {
    kv::MutexLock l(&mu_);
    bool timed_out = false;
    std::optional<std::string> holder = HolderLocked(c, ns, key, &timed_out);
    if (timed_out) {
      return Rejected(MarkRetryable(absl::UnavailableError(
                          "another writer's admission of this key did not finish in time")),
                      PageStoreReason::kStoreError);
    }
    if (holder.has_value()) return held(*holder);
    admitting_[key] = ns;
  }
  const PageMeta meta{.key = key,
                      .parent = h.parent,
                      .ns = ns,
                      .layout = std::string(h.layout.name),
                      .size = page.size(),
                      .resume_role = o.resume_role,
                      .engine_hash = o.engine_block_hash};
  absl::Status s = store_->Publish(meta, page, o.retention);
  {
    kv::MutexLock l(&mu_);
    admitting_.erase(key);
  }
  if (s.ok()) return {AdmitOutcome::kStored, {}};
  if (absl::IsAlreadyExists(s)) {  // a writer outside this PageStore got there first
    std::optional<TieredStore::BlockInfo> info = store_->Describe(key);
    if (info.has_value()) return held(info->ns);
    return Rejected(absl::FailedPreconditionError("this key is held under another namespace"),
                    PageStoreReason::kNamespaceConflict);
  }
  if (absl::IsResourceExhausted(s)) return Rejected(s, PageStoreReason::kStoreFull);
  if (absl::IsFailedPrecondition(s)) return Rejected(s, PageStoreReason::kParentMissing);
  if (absl::IsDataLoss(s)) return Rejected(s, PageStoreReason::kPageChecksumMismatch);
  log::Warn("pagestore_publish_failed", "key", key.Hex(), "error", s.ToString());
  return Rejected(s, PageStoreReason::kStoreError);
}

}  // namespace kv
