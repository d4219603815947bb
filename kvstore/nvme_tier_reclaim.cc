// NvmeTier: space reclaim (hole punches, segment trims and deletions on a background thread)
// and disk usage. See nvme_tier.h "Space".
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <tuple>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/nvme_tier_internal.h"

namespace kv {

namespace fs = std::filesystem;

void NvmeTier::RetireSegmentLocked(const std::shared_ptr<Segment>& seg) {
  seg->retired = true;
  segments_.erase(seg->id);
  Enqueue({ReclaimTask::Kind::kDelete, seg});
}

void NvmeTier::Enqueue(ReclaimTask task) {
  MutexLock l(&reclaim_mu_);
  reclaim_queue_.push_back(std::move(task));
  reclaim_cv_.SignalAll();
}

bool NvmeTier::WaitReclaimIdle(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock l(&reclaim_mu_);
  while (!reclaim_queue_.empty() || reclaim_busy_) {
    if (absl::Now() >= deadline) return false;
    reclaim_cv_.WaitWithDeadline(&reclaim_mu_, deadline);
  }
  return true;
}

void NvmeTier::ReclaimLoop() {
  bool dirty = true;  // reclaim work done since the last disk-usage refresh
  for (;;) {
    std::vector<ReclaimTask> batch;
    {
      MutexLock l(&reclaim_mu_);
      if (reclaim_queue_.empty() && !reclaim_stop_) {
        reclaim_cv_.WaitWithTimeout(&reclaim_mu_,
                                    dirty ? absl::ZeroDuration() : options_.disk_usage_refresh);
      }
      if (reclaim_queue_.empty() && reclaim_stop_) return;
      batch.assign(std::make_move_iterator(reclaim_queue_.begin()),
                   std::make_move_iterator(reclaim_queue_.end()));
      reclaim_queue_.clear();
      reclaim_busy_ = true;
    }
    if (!batch.empty()) {
      for (const ReclaimTask& t : Coalesce(std::move(batch))) RunReclaim(t);
      dirty = true;
    } else {
      (void)DiskUsage();  // periodic refresh, or the first after a burst of reclaim work
      dirty = false;
    }
    MutexLock l(&reclaim_mu_);
    reclaim_busy_ = false;
    reclaim_cv_.SignalAll();
  }
}

// Each hole punch costs a filesystem transaction (and a discard, on a filesystem mounted
// with -o discard), so the holes of records erased together that touch are punched as one;
// nothing is punched in a segment about to be deleted. Deletions and trims keep their order.
std::vector<NvmeTier::ReclaimTask> NvmeTier::Coalesce(std::vector<ReclaimTask> batch) {
  std::set<const Segment*> deleted;
  for (const ReclaimTask& t : batch) {
    if (t.kind == ReclaimTask::Kind::kDelete) deleted.insert(t.seg.get());
  }
  std::vector<ReclaimTask> punches, rest;
  for (ReclaimTask& t : batch) {
    bool punch = t.kind == ReclaimTask::Kind::kPunch || t.kind == ReclaimTask::Kind::kPunchIfData;
    if (punch && deleted.contains(t.seg.get())) continue;
    (t.kind == ReclaimTask::Kind::kPunch ? punches : rest).push_back(std::move(t));
  }
  std::sort(punches.begin(), punches.end(), [](const ReclaimTask& a, const ReclaimTask& b) {
    return std::tie(a.seg, a.offset) < std::tie(b.seg, b.offset);
  });
  std::vector<ReclaimTask> out;
  for (ReclaimTask& t : punches) {
    if (!out.empty() && out.back().seg == t.seg && out.back().offset + out.back().len == t.offset) {
      out.back().len += t.len;
    } else {
      out.push_back(std::move(t));
    }
  }
  for (ReclaimTask& t : rest) out.push_back(std::move(t));
  return out;
}

void NvmeTier::RunReclaim(const ReclaimTask& t) {
  Segment& seg = *t.seg;
  absl::Status st;
  uint64_t freed = 0;
  switch (t.kind) {
    case ReclaimTask::Kind::kPunchIfData: {
      // Skip ranges that hold no data already (punched before an earlier restart).
      off_t data = ::lseek(seg.fd, static_cast<off_t>(t.offset), SEEK_DATA);
      if (data < 0 || static_cast<uint64_t>(data) >= t.offset + t.len) break;
      [[fallthrough]];
    }
    case ReclaimTask::Kind::kPunch:
      st = io_->PunchHole(seg.fd, t.offset, t.len);
      if (st.ok()) freed = t.len;
      break;
    case ReclaimTask::Kind::kTrim: {
      uint64_t before = 0;
      {
        MutexLock l(&mu_);
        before = seg.file_bytes;
      }
      if (::ftruncate(seg.fd, static_cast<off_t>(t.offset)) != 0) {
        st = ErrnoToStatus(errno, "truncate segment");
        break;
      }
      MutexLock l(&mu_);
      seg.file_bytes = t.offset;
      freed = before > t.offset ? before - t.offset : 0;
      break;
    }
    case ReclaimTask::Kind::kDelete: {
      struct stat sb {};
      if (::fstat(seg.fd, &sb) == 0) freed = static_cast<uint64_t>(sb.st_blocks) * 512;
      if (::unlink(seg.path.c_str()) != 0 && errno != ENOENT) {
        st = ErrnoToStatus(errno, StrCat("delete segment ", seg.path));
        freed = 0;
      }
      break;
    }
  }
  if (!st.ok()) {
    log::Warn("nvme_reclaim_failed", "segment", seg.path, "reason", st.ToString());
    return;
  }
  if (freed > 0) {
    reclaimed_counter_->Inc(static_cast<double>(freed));
    MutexLock l(&mu_);
    stats_.reclaimed_bytes += freed;
  }
}

absl::StatusOr<uint64_t> NvmeTier::DiskUsage() {
  // du -s counts the allocated blocks of the directory itself and everything below it.
  uint64_t total = 0;
  std::error_code ec;
  auto add = [&](const fs::path& p) {
    struct stat sb {};
    if (::lstat(p.c_str(), &sb) == 0) total += static_cast<uint64_t>(sb.st_blocks) * 512;
  };
  add(options_.path);
  for (auto it = fs::recursive_directory_iterator(
           options_.path, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    add(it->path());  // a file RocksDB deletes meanwhile simply does not count
  }
  if (ec) return ErrnoToStatus(ec.value(), StrCat("disk usage of ", options_.path));
  disk_gauge_->Set(static_cast<double>(total));
  MutexLock l(&mu_);
  stats_.disk_bytes = total;
  return total;
}

}  // namespace kv
