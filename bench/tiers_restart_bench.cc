// `kvstrata bench tiers`, nvme restart and reclaim rows: a full tier of real 168 KB pages
// (64 tokens x 4 layers), reopened with its index's page cache dropped, to the first verified
// hit; then 80% of its pages erased and the space reclaimed by hole punching.
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <random>

#include "bench/tiers_bench.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "kvstore/tiered_store.h"

namespace kv::bench::tiers {
namespace {

struct RestartSet {
  size_t chains = 0;
  static constexpr size_t kChain = 64;  // pages per chain: a 4,096-token conversation
  std::vector<uint8_t> kv;
  uint64_t page_bytes = 0;
  BlockKey Key(size_t c, size_t j) const {
    BlockKey k;
    k.bytes = Sha256Of(StrCat("restart/", c, "/", j));
    return k;
  }
  PageSpec Spec(size_t c, size_t j) const {
    return {LayoutId::kMlaFp8_656, Key(c, j), j == 0 ? BlockKey::Zero() : Key(c, j - 1), 64, 0, 4};
  }
};

// Drops the page cache of every file under `dir` (the index; segments bypass it anyway), so
// the restart reads the index from disk as after a reboot. Needs no privileges.
void DropCache(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file(ec)) continue;
    int fd = open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

// Bytes this process has caused to be written to storage so far (/proc/self/io
// write_bytes, every thread); -1 when the kernel does not report it.
int64_t ProcessWriteBytes() {
  std::ifstream in("/proc/self/io");
  std::string k;
  int64_t v = 0;
  while (in >> k >> v) {
    if (k == "write_bytes:") return v;
  }
  return -1;
}

// The filesystem's own cost of the same reclaim: a preallocated file of n records of `rec`
// bytes, and one PUNCH_HOLE each over the first `holes` records of `order` (a sample: on a
// filesystem mounted with -o discard a punch takes milliseconds). Returns seconds per hole.
absl::StatusOr<double> RawPunchSecondsPerHole(const std::string& path, uint64_t rec, size_t n,
                                              const std::vector<size_t>& order, size_t holes) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0644);
  if (fd < 0) return ErrnoToStatus(errno, StrCat("open ", path));
  absl::Status st;
  double t = 0;
  if (fallocate(fd, 0, 0, static_cast<off_t>(n * rec)) != 0) {
    st = ErrnoToStatus(errno, "fallocate");
  } else {
    double t0 = NowSeconds();
    for (size_t k = 0; k < holes && st.ok(); ++k) {
      if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(order[k] * rec), static_cast<off_t>(rec)) != 0) {
        st = ErrnoToStatus(errno, "punch hole");
      }
    }
    t = NowSeconds() - t0;
  }
  close(fd);
  std::filesystem::remove(path);
  RETURN_IF_ERROR(st);
  return t / static_cast<double>(std::max<size_t>(holes, 1));
}

// Erases a random 80% of the restart tier's pages and measures what reclaim frees (as du
// counts it), moves (nothing: holes are punched) and how fast, next to the rate pages arrive
// at O_DIRECT write speed. A compaction of the touched segments would move their live bytes.
absl::Status ReclaimRows(const Flags& f, const std::string& dir, uint64_t capacity,
                         const RestartSet& set, size_t n, double raw_w_gbps, BenchReport& rep) {
  ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, dir, capacity)));
  tier->WaitReclaimIdle();
  ASSIGN_OR_RETURN(uint64_t du_before, tier->DiskUsage());
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(7);
  std::shuffle(order.begin(), order.end(), rng);
  const size_t erase = n * 8 / 10;
  const uint64_t rec = tier->Footprint(set.page_bytes);
  const int64_t written0 = ProcessWriteBytes();
  double t0 = NowSeconds();
  for (size_t k = 0; k < erase; ++k) {
    size_t i = order[k];
    RETURN_IF_ERROR(tier->Erase(set.Key(i / RestartSet::kChain, i % RestartSet::kChain)));
  }
  double t_erase = NowSeconds() - t0;
  tier->WaitReclaimIdle();
  double t = NowSeconds() - t0;
  ASSIGN_OR_RETURN(uint64_t du_after, tier->DiskUsage());
  // Everything erase and reclaim wrote: the index's deletions (WAL, flushes) and any page
  // bytes moved. Hole punches and segment deletions write no data.
  const int64_t written1 = ProcessWriteBytes();
  NvmeTierStats st = tier->Stats();
  const double freed = static_cast<double>(du_before - du_after);
  // Live bytes a compaction would copy: every segment lost pages, so all that is left.
  const double live = static_cast<double>(n - erase) * static_cast<double>(rec);
  std::map<std::string, std::string> params = {
      {"pages_erased", std::to_string(erase)},
      {"erase_calls_s", std::to_string(t_erase)},
      {"record_bytes_erased", std::to_string(erase * rec)},
      {"disk_before", std::to_string(du_before)},
      {"disk_after", std::to_string(du_after)},
      {"bytes_moved_by_reclaim", std::to_string(st.reclaim_moved_bytes)},
      {"bytes_written_during_erase_and_reclaim", std::to_string(written1 - written0)},
      {"moved_per_freed", std::to_string(static_cast<double>(st.reclaim_moved_bytes) / freed)},
      {"compaction_would_move_per_freed", std::to_string(live / freed)}};
  if (written0 >= 0 && written1 >= written0) {
    // The write amplification: bytes written while reclaiming per byte freed.
    rep.Add({.name = "nvme reclaim 80%: bytes written per byte freed",
             .value = static_cast<double>(written1 - written0) / freed,
             .unit = "x",
             .limit_name = "compaction (live bytes copied per byte freed)",
             .limit = live / freed,
             .lower_is_better = true,
             .params = params});
  }
  rep.Add({.name = "nvme reclaim 80%: disk freed per record byte erased",
           .value = freed / static_cast<double>(erase * rec),
           .unit = "x",
           .params = params});
  params["compaction_copy_s_at_O_DIRECT_write"] = std::to_string(live / (raw_w_gbps * 1e9));
  params["erase_and_reclaim_s"] = std::to_string(t);
  const size_t holes = std::min<size_t>(erase, 4096);
  ASSIGN_OR_RETURN(double raw_hole_s,
                   RawPunchSecondsPerHole(f.dir + "/raw-punch", rec, n, order, holes));
  params["raw_punch_sample_holes"] = std::to_string(holes);
  rep.Add({.name = "nvme reclaim 80%: erase + reclaim time per page erased",
           .value = t / static_cast<double>(erase) * 1e3,
           .unit = "ms",
           .limit_name = "one hole punched in a plain file",
           .limit = raw_hole_s * 1e3,
           .lower_is_better = true,
           .params = params});
  // Reclaim keeps a full tier writable if it frees space at least as fast as pages arrive.
  rep.Add({.name = "nvme reclaim 80%: disk freed per second (erase + hole punches)",
           .value = freed / t / 1e9,
           .unit = "GB/s",
           .limit_name = "O_DIRECT write",
           .limit = raw_w_gbps,
           .params = params});
  tier.reset();
  std::filesystem::remove_all(dir);
  return absl::OkStatus();
}

// The restart set: as many 64-page chains as --restart-gb asks and the disk holds.
absl::StatusOr<RestartSet> MakeRestartSet(const Flags& f) {
  RestartSet set;
  PageSpec spec0 = set.Spec(0, 0);
  ASSIGN_OR_RETURN(set.page_bytes, EncodedPageBytes(spec0));
  ASSIGN_OR_RETURN(uint64_t kv_bytes, KvSectionBytes(spec0));
  set.kv.resize(kv_bytes);
  std::mt19937_64 rng(99);
  for (auto& b : set.kv) b = static_cast<uint8_t>(rng());
  uint64_t want = static_cast<uint64_t>(f.restart_gb * (1ull << 30));
  struct statvfs vfs {};
  if (statvfs(f.dir.c_str(), &vfs) == 0) {
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    want = std::min<uint64_t>(want,
                              free_bytes > (2ull << 30) ? (free_bytes - (2ull << 30)) * 8 / 10 : 0);
  }
  set.chains = std::max<size_t>(1, want / (set.page_bytes * RestartSet::kChain));
  return set;
}

// Writes and seals every page of `set` into a fresh tier at `dir`; returns the seconds taken.
absl::StatusOr<double> FillTier(const Flags& f, const std::string& dir, uint64_t capacity,
                                const RestartSet& set) {
  const size_t n = set.chains * RestartSet::kChain;
  std::filesystem::remove_all(dir);
  std::vector<uint8_t> out(set.page_bytes);
  auto page = [&](size_t i) {
    PageSpec spec = set.Spec(i / RestartSet::kChain, i % RestartSet::kChain);
    if (!EncodePageInto(spec, set.kv, out).ok()) std::abort();
    PageMeta m{spec.key, spec.parent, "tenant:bench", "mla-fp8-656", set.page_bytes};
    return std::make_pair(m,
                          std::string_view(reinterpret_cast<const char*>(out.data()), out.size()));
  };
  ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, dir, capacity)));
  double t0 = NowSeconds();
  auto key = [&](size_t i) { return set.Key(i / RestartSet::kChain, i % RestartSet::kChain); };
  RETURN_IF_ERROR(WriteSealed(tier.get(), n, 256, page, key));
  return NowSeconds() - t0;
}

}  // namespace

absl::Status RestartRows(const Flags& f, BenchReport& rep) {
  constexpr size_t kSize = 168 << 10;
  double raw_w = 0, raw_r = 0;
  RETURN_IF_ERROR(
      RawDirect(f.dir + "/raw-restart", kSize, (256 << 20) / kSize * kSize, &raw_w, &raw_r));
  double raw_w_gbps = static_cast<double>((256 << 20) / kSize * kSize) / raw_w / 1e9;
  double raw_r_gbps = static_cast<double>((256 << 20) / kSize * kSize) / raw_r / 1e9;
  ASSIGN_OR_RETURN(RestartSet set, MakeRestartSet(f));
  const size_t n = set.chains * RestartSet::kChain;
  const std::string dir = f.dir + "/restart";
  const uint64_t capacity = n * (set.page_bytes + 8192);
  ASSIGN_OR_RETURN(const double t_fill, FillTier(f, dir, capacity, set));
  DropCache(dir);
  // Restart: open the tier and the store on it, look the first chain up, read its first page
  // (verified by the tier and the store) into a page-aligned buffer.
  MetricsRegistry reg;
  double t0 = NowSeconds();
  ASSIGN_OR_RETURN(auto nv, NvmeTier::Open(TierOptions(f, dir, capacity)));
  double t_tier = NowSeconds();
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  tiers[2] = std::move(nv);
  ASSIGN_OR_RETURN(
      auto store,
      TieredStore::Open({.metrics = &reg, .promote_on_hit = false, .background_threads = 0},
                        std::move(tiers)));
  double t_store = NowSeconds();
  std::vector<BlockKey> chain;
  for (size_t j = 0; j < RestartSet::kChain; ++j) chain.push_back(set.Key(0, j));
  size_t matched = store->Lookup(chain).matched;
  ASSIGN_OR_RETURN(auto h, store->Pin({&chain[0], 1}, absl::Now() + absl::Seconds(30)));
  AlignedBuf dst((set.page_bytes + 4095) / 4096 * 4096);
  ASSIGN_OR_RETURN(size_t got, store->Read(h, chain[0], {dst.data, dst.size}));
  double t_hit = NowSeconds();
  if (matched != RestartSet::kChain || got != set.page_bytes) {
    return absl::InternalError("restart: the first chain is not served whole");
  }
  RETURN_IF_ERROR(store->Unpin(h));
  double tier_bytes = static_cast<double>(n * set.page_bytes);
  std::map<std::string, std::string> params = {
      {"pages", std::to_string(n)},
      {"tier_GiB", std::to_string(tier_bytes / (1ull << 30))},
      {"asked_GiB", std::to_string(f.restart_gb)},
      {"tier_open_s", std::to_string(t_tier - t0)},
      {"store_open_s", std::to_string(t_store - t_tier)},
      {"lookup_pin_read_s", std::to_string(t_hit - t_store)},
      {"fill_GBps", std::to_string(tier_bytes / t_fill / 1e9)},
      {"index_cache", "dropped (posix_fadvise DONTNEED) before the restart"}};
  rep.Add({.name = "nvme restart: time to first hit",
           .value = t_hit - t0,
           .unit = "s",
           .limit_name = "reread every page at O_DIRECT read speed",
           .limit = tier_bytes / (raw_r_gbps * 1e9),
           .lower_is_better = true,
           .params = params});
  store.reset();
  return ReclaimRows(f, dir, capacity, set, n, raw_w_gbps, rep);
}

}  // namespace kv::bench::tiers
