#include "kvstore/staging_area.h"

#include <algorithm>
#include <utility>

#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {
namespace {

constexpr uint64_t kAlign = 4096;
uint64_t RoundUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

absl::Status StagingLeaseGone(std::string_view id) {
  return WithReason(absl::NotFoundError(StrCat("staging lease '", id, "' is unknown or expired")),
                    PageStoreReason::kLeaseNotFound);
}

}  // namespace

absl::StatusOr<std::unique_ptr<StagingArea>> StagingArea::Create(StagingOptions options) {
  if (options.bytes == 0) return absl::InvalidArgumentError("staging area of 0 bytes");
  const uint64_t capacity = RoundUp(options.bytes);
  ASSIGN_OR_RETURN(std::unique_ptr<MemoryRegion> region, AllocateHostRegion(capacity));
  if (region->host_base() == nullptr) {
    return absl::InternalError("staging memory is not host-addressable");
  }
  return std::unique_ptr<StagingArea>(new StagingArea(std::move(region), capacity, options));
}

StagingArea::StagingArea(std::unique_ptr<MemoryRegion> region, uint64_t capacity,
                         StagingOptions options)
    : region_(std::move(region)),
      capacity_(capacity),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()) {
  kv::MutexLock l(&mu_);
  free_[0] = capacity_;
}

std::optional<uint64_t> StagingArea::AllocateLocked(uint64_t bytes) {
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < bytes) continue;
    const uint64_t offset = it->first;
    const uint64_t rest = it->second - bytes;
    free_.erase(it);
    if (rest > 0) free_[offset + bytes] = rest;
    used_ += bytes;
    return offset;
  }
  return std::nullopt;
}

void StagingArea::FreeLocked(uint64_t offset, uint64_t bytes) {
  used_ -= bytes;
  auto [it, inserted] = free_.emplace(offset, bytes);
  auto next = std::next(it);
  if (next != free_.end() && it->first + it->second == next->first) {
    it->second += next->second;
    free_.erase(next);
  }
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == it->first) {
      prev->second += it->second;
      free_.erase(it);
    }
  }
}

void StagingArea::ReleaseLocked(const Lease& lease) {
  for (const StagedSlot& s : lease.slots) FreeLocked(s.offset, RoundUp(s.size));
}

void StagingArea::ReapLocked(absl::Time now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const std::string id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = leases_.find(id);
    if (it == leases_.end()) continue;
    ReleaseLocked(it->second);
    leases_.erase(it);
  }
}

std::optional<StagingArea::Lease> StagingArea::TakeLocked(const PageStoreCaller& c,
                                                          std::string_view id) {
  ReapLocked(clock_->Now());
  auto it = leases_.find(std::string(id));
  if (it == leases_.end() || it->second.owner != c.lease_owner()) return std::nullopt;
  Lease lease = std::move(it->second);
  deadlines_.erase({lease.deadline, it->first});
  leases_.erase(it);
  return lease;
}

absl::StatusOr<StagingLease> StagingArea::Reserve(const PageStoreCaller& c,
                                                  std::vector<StagedSlot> pages,
                                                  std::optional<absl::Duration> lease) {
  if (pages.empty()) return absl::InvalidArgumentError("nothing to stage");
  if (pages.size() > options_.max_pages) {
    return absl::InvalidArgumentError(
        StrCat(pages.size(), " pages to stage; at most ", options_.max_pages, " per lease"));
  }
  const absl::Duration len = lease.value_or(options_.default_lease);
  if (len <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("staging lease must be a positive duration (or unset)");
  }
  for (const StagedSlot& p : pages) {
    if (p.size == 0 || (options_.max_page_bytes != 0 && p.size > options_.max_page_bytes)) {
      return absl::InvalidArgumentError(StrCat("page ", p.key.Hex(), " of ", p.size,
                                               " bytes: sizes must be in 1..",
                                               options_.max_page_bytes));
    }
  }
  kv::MutexLock l(&mu_);
  const absl::Time now = clock_->Now();
  ReapLocked(now);
  for (size_t i = 0; i < pages.size(); ++i) {
    std::optional<uint64_t> off = AllocateLocked(RoundUp(pages[i].size));
    if (!off.has_value()) {
      for (size_t j = 0; j < i; ++j) FreeLocked(pages[j].offset, RoundUp(pages[j].size));
      return MarkRetryable(absl::ResourceExhaustedError(
          StrCat("staging space is full (", used_, " of ", capacity_,
                 " bytes staged); retry later or write with WritePages")));
    }
    pages[i].offset = *off;
  }
  StagingLease out{NewLeaseId(), now + std::min(len, options_.max_lease), pages};
  leases_[out.lease_id] = Lease{c.lease_owner(), out.deadline, std::move(pages)};
  deadlines_.insert({out.deadline, out.lease_id});
  return out;
}

absl::StatusOr<std::vector<StagedAdmit>> StagingArea::Seal(PageStore& pages,
                                                           const PageStoreCaller& c,
                                                           std::string_view lease_id,
                                                           const AdmitOptions& o,
                                                           std::span<const PageRole> resume_roles) {
  std::optional<Lease> lease;
  {
    kv::MutexLock l(&mu_);
    lease = TakeLocked(c, lease_id);
  }
  if (!lease.has_value()) return StagingLeaseGone(lease_id);
  std::vector<StagedAdmit> results;
  results.reserve(lease->slots.size());
  for (size_t i = 0; i < lease->slots.size(); ++i) {
    const StagedSlot& s = lease->slots[i];
    AdmitOptions oi = o;
    if (i < resume_roles.size()) oi.resume_role = resume_roles[i];
    results.push_back({s, pages.Admit(c, s.key, {region_->host_base() + s.offset, s.size}, oi)});
  }
  kv::MutexLock l(&mu_);
  ReleaseLocked(*lease);
  return results;
}

uint32_t StagingArea::Abort(const PageStoreCaller& c, std::string_view lease_id) {
  kv::MutexLock l(&mu_);
  std::optional<Lease> lease = TakeLocked(c, lease_id);
  if (!lease.has_value()) return 0;
  ReleaseLocked(*lease);
  return static_cast<uint32_t>(lease->slots.size());
}

uint64_t StagingArea::used_bytes() {
  kv::MutexLock l(&mu_);
  ReapLocked(clock_->Now());
  return used_;
}

size_t StagingArea::live_leases() {
  kv::MutexLock l(&mu_);
  ReapLocked(clock_->Now());
  return leases_.size();
}

}  // namespace kv
