// `kvstrata bench tiers`: the tiers of the page store against the limits of their media.
//
//   - host tier (SlabTier over pinned host memory): put / get GB/s of 168 KB and 2.6 MB
//     pages, next to a memcpy of the same pages between the same-sized buffers (goal 0.8);
//   - nvme tier (segment files + RocksDB index): write (every page written and sealed, i.e.
//     durable and indexed, seals --nvme-seal-window-mb behind the writes; and, at 168 KB,
//     one page at a time) and read (ReadMany after a reopen, into a page-aligned buffer) GB/s
//     of the same pages, next to a raw O_DIRECT sequential write (then fdatasync) / read of a
//     file of the same size in the same directory (goal read 0.7, write 0.6);
//   - nvme restart: time from opening a full tier (--restart-gb of real 168 KB pages, index
//     page cache dropped) to the first verified hit served by the store, next to rereading
//     every page at O_DIRECT speed; then reclaim: erase a random 80% of the pages, disk
//     freed (as du counts it), bytes written per byte freed (/proc/self/io) next to what
//     compaction would copy, time per page next to a hole punched in a plain file;
//   - lookup: p50 / p99 of the longest-prefix lookup of a 1M-token chain (15,625 keys),
//     next to a naive walk that probes every key in order.
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/page_format.h"
#include "kvstore/prefix_index.h"
#include "kvstore/slab_tier.h"
#include "kvstore/tiered_store.h"

namespace kv::bench {
namespace {

struct Flags {
  std::string json;
  std::string dir;
  int64_t host_mb = 256;
  int64_t nvme_mb = 256;
  int64_t reps = 3;
  std::string rows = "host,nvme,lookup";
  int64_t read_parallelism = NvmeTierOptions().read_parallelism;
  int64_t seal_window_mb = 64;
  double restart_gb = 10;
};

struct Pages {
  std::vector<PageMeta> metas;
  std::vector<uint8_t> data;  // n pages back to back
  size_t size = 0;
  std::string_view page(size_t i) const {
    return {reinterpret_cast<const char*>(data.data()) + i * size, size};
  }
};

Pages MakePages(size_t n, size_t size, uint64_t seed) {
  Pages p;
  p.size = size;
  p.data.resize(n * size);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < p.data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&p.data[i], &v, std::min<size_t>(8, p.data.size() - i));
  }
  for (size_t i = 0; i < n; ++i) {
    PageMeta m;
    m.key.bytes = Sha256Of(StrCat("bench-page/", seed, "/", i));
    m.ns = "tenant:bench";
    m.layout = "mla-fp8-656";
    m.size = size;
    p.metas.push_back(m);
  }
  return p;
}

template <typename Fn>
absl::StatusOr<double> MedianSeconds(int reps, Fn fn) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    double t0 = NowSeconds();
    RETURN_IF_ERROR(fn(r));
    t.push_back(NowSeconds() - t0);
  }
  return Median(t);
}

absl::Status HostRows(const Flags& f, size_t size, BenchReport& rep) {
  uint64_t region = static_cast<uint64_t>(f.host_mb) << 20;
  ASSIGN_OR_RETURN(auto mem, AllocateHostRegion(region));
  bool pinned = mem->pinned();
  ASSIGN_OR_RETURN(auto tier, SlabTier::Create(std::move(mem), {TierKind::kHost, 16ull << 20}));
  size_t n = static_cast<size_t>(tier->capacity_bytes() * 9 / 10 / tier->Footprint(size));
  Pages pages = MakePages(n, size, size);
  std::vector<uint8_t> dst(n * size, 1);
  double bytes = static_cast<double>(n * size);
  std::string label = size < (1 << 20) ? "168KB" : "2.6MB";
  // memcpy of the same pages into a same-sized buffer: the limit.
  ASSIGN_OR_RETURN(double t_mem, MedianSeconds(f.reps, [&](int) {
                     for (size_t i = 0; i < n; ++i)
                       std::memcpy(&dst[i * size], pages.page(i).data(), size);
                     return absl::OkStatus();
                   }));
  ASSIGN_OR_RETURN(double t_put, MedianSeconds(f.reps, [&](int r) -> absl::Status {
                     if (r > 0) {
                       for (const auto& m : pages.metas) RETURN_IF_ERROR(tier->Erase(m.key));
                     }
                     for (size_t i = 0; i < n; ++i)
                       RETURN_IF_ERROR(tier->Write(pages.metas[i], pages.page(i)));
                     return absl::OkStatus();
                   }));
  ASSIGN_OR_RETURN(double t_get, MedianSeconds(f.reps, [&](int) -> absl::Status {
                     for (size_t i = 0; i < n; ++i) {
                       ASSIGN_OR_RETURN(
                           size_t got,
                           tier->Read(pages.metas[i].key, std::span(dst).subspan(i * size, size)));
                       if (got != size) return absl::InternalError("short read");
                     }
                     return absl::OkStatus();
                   }));
  if (std::memcmp(dst.data(), pages.data.data(), dst.size()) != 0) {
    return absl::InternalError("host tier returned different bytes");
  }
  double mem_gbps = bytes / t_mem / 1e9;
  std::map<std::string, std::string> params = {{"pages", std::to_string(n)},
                                               {"pinned", pinned ? "yes" : "no (mlock failed)"}};
  rep.Add({.name = "host put " + label,
           .value = bytes / t_put / 1e9,
           .unit = "GB/s",
           .limit_name = "memcpy",
           .limit = mem_gbps,
           .params = params});
  rep.Add({.name = "host get " + label,
           .value = bytes / t_get / 1e9,
           .unit = "GB/s",
           .limit_name = "memcpy",
           .limit = mem_gbps,
           .params = params});
  return absl::OkStatus();
}

// Raw O_DIRECT sequential write (with fdatasync) and read of `total` bytes in `chunk` pieces.
absl::Status RawDirect(const std::string& path, size_t chunk, size_t total, double* write_s,
                       double* read_s) {
  size_t aligned = (chunk + 4095) / 4096 * 4096;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, aligned) != 0) return absl::ResourceExhaustedError("memalign");
  std::unique_ptr<void, decltype(&std::free)> hold(buf, &std::free);
  std::memset(buf, 0x5a, aligned);
  size_t chunks = total / chunk;
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_DIRECT, 0644);
  if (fd < 0) return ErrnoToStatus(errno, StrCat("open O_DIRECT ", path));
  double t0 = NowSeconds();
  for (size_t i = 0; i < chunks; ++i) {
    if (write(fd, buf, aligned) != static_cast<ssize_t>(aligned)) {
      close(fd);
      return ErrnoToStatus(errno, "O_DIRECT write");
    }
  }
  fdatasync(fd);
  *write_s = (NowSeconds() - t0) * static_cast<double>(chunk) / static_cast<double>(aligned);
  close(fd);
  fd = open(path.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) return ErrnoToStatus(errno, StrCat("open O_DIRECT ", path));
  t0 = NowSeconds();
  for (size_t i = 0; i < chunks; ++i) {
    if (read(fd, buf, aligned) != static_cast<ssize_t>(aligned)) {
      close(fd);
      return ErrnoToStatus(errno, "O_DIRECT read");
    }
  }
  *read_s = (NowSeconds() - t0) * static_cast<double>(chunk) / static_cast<double>(aligned);
  close(fd);
  std::filesystem::remove(path);
  return absl::OkStatus();
}

NvmeTierOptions TierOptions(const Flags& f, const std::string& path, uint64_t capacity) {
  NvmeTierOptions o;
  o.path = path;
  o.capacity_bytes = capacity;
  o.read_parallelism = static_cast<int>(f.read_parallelism);
  return o;
}

// Writes pages [0, n) and seals each, `window` pages behind the writes (window 1: write,
// seal, write, seal...). Every page is durable and indexed when it returns.
// Write() copies the page, so `page(i)` may reuse one buffer.
template <typename PageFn, typename KeyFn>
absl::Status WriteSealed(NvmeTier* tier, size_t n, size_t window, PageFn page, KeyFn key) {
  for (size_t i = 0; i < n + window; ++i) {
    if (i < n) {
      auto [meta, bytes] = page(i);
      RETURN_IF_ERROR(tier->Write(meta, bytes));
    }
    if (i + 1 >= window && i + 1 - window < n) RETURN_IF_ERROR(tier->Seal(key(i + 1 - window)));
  }
  return absl::OkStatus();
}

// A page-aligned buffer, as a registered transport region is.
struct AlignedBuf {
  explicit AlignedBuf(size_t n) : size(n) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, n) != 0) std::abort();
    data = static_cast<uint8_t*>(p);
    std::memset(data, 1, n);
  }
  ~AlignedBuf() { std::free(data); }
  uint8_t* data;
  size_t size;
};

absl::Status NvmeRows(const Flags& f, size_t size, BenchReport& rep) {
  size_t total = static_cast<size_t>(f.nvme_mb) << 20;
  size_t n = total / size;
  Pages pages = MakePages(n, size, size + 7);
  double bytes = static_cast<double>(n * size);
  std::string label = size < (1 << 20) ? "168KB" : "2.6MB";
  std::string db = f.dir + "/db-" + label;
  std::filesystem::remove_all(db);
  double raw_w = 0, raw_r = 0;
  RETURN_IF_ERROR(RawDirect(f.dir + "/raw-" + label, size, n * size, &raw_w, &raw_r));
  size_t window = std::max<size_t>(1, (static_cast<size_t>(f.seal_window_mb) << 20) / size);
  auto page = [&](size_t i) { return std::make_pair(pages.metas[i], pages.page(i)); };
  auto key = [&](size_t i) { return pages.metas[i].key; };
  double t_write = 0;
  uint64_t syncs = 0;
  {
    ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, db, 2 * total)));
    double t0 = NowSeconds();
    RETURN_IF_ERROR(WriteSealed(tier.get(), n, window, page, key));
    t_write = NowSeconds() - t0;
    syncs = tier->Stats().syncs;
  }
  std::map<std::string, std::string> params = {
      {"pages", std::to_string(n)},
      {"dir", f.dir},
      {"read_parallelism", std::to_string(f.read_parallelism)}};
  auto wp = params;
  wp["seal_window_pages"] = std::to_string(window);
  wp["fdatasyncs"] = std::to_string(syncs);
  rep.Add({.name = "nvme write " + label,
           .value = bytes / t_write / 1e9,
           .unit = "GB/s",
           .limit_name = "O_DIRECT write",
           .limit = bytes / raw_w / 1e9,
           .params = wp});
  {
    // Reopened (a restart), read in batches of 16 into a page-aligned buffer; the bytes are
    // compared outside the timed calls.
    ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, db, 2 * total)));
    constexpr size_t kBatch = 16;
    AlignedBuf dst(kBatch * ((size + 4095) / 4096 * 4096));
    size_t stride = dst.size / kBatch;
    double t = 0;
    for (size_t i = 0; i < n; i += kBatch) {
      size_t m = std::min(kBatch, n - i);
      std::vector<BlockKey> keys;
      std::vector<std::span<uint8_t>> spans;
      for (size_t j = 0; j < m; ++j) {
        keys.push_back(pages.metas[i + j].key);
        spans.emplace_back(dst.data + j * stride, size);
      }
      double t0 = NowSeconds();
      ASSIGN_OR_RETURN(auto res, tier->ReadMany(keys, spans));
      t += NowSeconds() - t0;
      for (size_t j = 0; j < m; ++j) {
        if (!res[j].ok()) return res[j].status();
        if (std::memcmp(spans[j].data(), pages.page(i + j).data(), size) != 0) {
          return absl::InternalError("nvme tier returned different bytes");
        }
      }
    }
    auto p = params;
    p["reads"] = "O_DIRECT via io_uring into a page-aligned buffer, batches of 16, verified";
    rep.Add({.name = "nvme read " + label,
             .value = bytes / t / 1e9,
             .unit = "GB/s",
             .limit_name = "O_DIRECT read",
             .limit = bytes / raw_r / 1e9,
             .params = p});
  }
  std::filesystem::remove_all(db);
  if (size < (1 << 20)) {
    // Publishing one page at a time (write, then seal): each seal waits for its own
    // fdatasync, so this measures the sync latency, not the bandwidth.
    size_t m = std::min<size_t>(n, 256);
    ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, db, 2 * total)));
    double t0 = NowSeconds();
    RETURN_IF_ERROR(WriteSealed(tier.get(), m, 1, page, key));
    double t = NowSeconds() - t0;
    auto p = params;
    p["pages"] = std::to_string(m);
    p["fdatasyncs"] = std::to_string(tier->Stats().syncs);
    p["ms_per_page"] = std::to_string(t / static_cast<double>(m) * 1e3);
    rep.Add({.name = "nvme write " + label + " seal each page",
             .value = static_cast<double>(m * size) / t / 1e9,
             .unit = "GB/s",
             .limit_name = "O_DIRECT write",
             .limit = bytes / raw_w / 1e9,
             .params = p});
    tier.reset();
    std::filesystem::remove_all(db);
  }
  return absl::OkStatus();
}

// ---- restart and reclaim: a full tier of real 168 KB pages (64 tokens x 4 layers) ----

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

absl::Status RestartRows(const Flags& f, BenchReport& rep) {
  constexpr size_t kSize = 168 << 10;
  double raw_w = 0, raw_r = 0;
  RETURN_IF_ERROR(
      RawDirect(f.dir + "/raw-restart", kSize, (256 << 20) / kSize * kSize, &raw_w, &raw_r));
  double raw_w_gbps = static_cast<double>((256 << 20) / kSize * kSize) / raw_w / 1e9;
  double raw_r_gbps = static_cast<double>((256 << 20) / kSize * kSize) / raw_r / 1e9;
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
  const size_t n = set.chains * RestartSet::kChain;
  const std::string dir = f.dir + "/restart";
  std::filesystem::remove_all(dir);
  std::vector<uint8_t> out(set.page_bytes);
  auto page = [&](size_t i) {
    PageSpec spec = set.Spec(i / RestartSet::kChain, i % RestartSet::kChain);
    if (!EncodePageInto(spec, set.kv, out).ok()) std::abort();
    PageMeta m{spec.key, spec.parent, "tenant:bench", "mla-fp8-656", set.page_bytes};
    return std::make_pair(m,
                          std::string_view(reinterpret_cast<const char*>(out.data()), out.size()));
  };
  const uint64_t capacity = n * (set.page_bytes + 8192);
  double t_fill = 0;
  {
    ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, dir, capacity)));
    double t0 = NowSeconds();
    auto key = [&](size_t i) { return set.Key(i / RestartSet::kChain, i % RestartSet::kChain); };
    RETURN_IF_ERROR(WriteSealed(tier.get(), n, 256, page, key));
    t_fill = NowSeconds() - t0;
  }
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

absl::Status LookupRows(BenchReport& rep) {
  constexpr size_t kTokens = 1000000, kBlock = 64, kKeys = kTokens / kBlock;
  std::vector<BlockKey> chain(kKeys);
  PageSpec spec{LayoutId::kMlaFp8_656, BlockKey::Zero(), BlockKey::Zero(), 1, 0, 1};
  ASSIGN_OR_RETURN(uint64_t page_bytes, EncodedPageBytes(spec));
  ASSIGN_OR_RETURN(uint64_t kv_bytes, KvSectionBytes(spec));
  std::vector<uint8_t> kv(kv_bytes, 0x33), page(page_bytes);
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  tiers[1] = std::make_unique<MemTier>(TierKind::kHost, (kKeys + 10) * page_bytes);
  MetricsRegistry reg;
  ASSIGN_OR_RETURN(auto store,
                   TieredStore::Open({.metrics = &reg, .background_threads = 0}, std::move(tiers)));
  PrefixIndex index;
  BlockKey parent;
  for (size_t i = 0; i < kKeys; ++i) {
    chain[i].bytes = Sha256Of(StrCat("lookup-chain/", i));
    spec.key = chain[i];
    spec.parent = parent;
    RETURN_IF_ERROR(EncodePageInto(spec, kv, page));
    PageMeta m{chain[i], parent, "tenant:bench", "mla-fp8-656", page_bytes};
    RETURN_IF_ERROR(store->Publish(m, page));
    RETURN_IF_ERROR(index.Insert(m, TierKind::kHost, absl::UnixEpoch(), {}));
    parent = chain[i];
  }
  // Half the chain cached is the interesting case: the answer is in the middle.
  std::vector<BlockKey> query = chain;
  for (size_t i = kKeys / 2; i < kKeys; ++i) query[i].bytes = Sha256Of(StrCat("miss/", i));
  std::vector<double> bin, naive, full;
  volatile size_t sink = 0;
  for (int r = 0; r < 2000; ++r) {
    double t0 = NowSeconds();
    sink = index.LongestPrefix(query);
    bin.push_back((NowSeconds() - t0) * 1e6);
    t0 = NowSeconds();
    size_t m = 0;
    while (m < query.size() && index.Contains(query[m])) ++m;
    sink = m;
    naive.push_back((NowSeconds() - t0) * 1e6);
  }
  for (int r = 0; r < 200; ++r) {
    double t0 = NowSeconds();
    sink = store->Lookup(query).matched;
    full.push_back((NowSeconds() - t0) * 1e6);
  }
  (void)sink;
  std::map<std::string, std::string> params = {{"keys", std::to_string(kKeys)},
                                               {"cached", std::to_string(kKeys / 2)}};
  for (double p : {50.0, 99.0}) {
    std::string q = p == 50.0 ? "p50" : "p99";
    rep.Add({.name = "index longest-prefix 1M tokens " + q,
             .value = Percentile(bin, p),
             .unit = "us",
             .limit_name = "naive walk",
             .limit = Percentile(naive, p),
             .lower_is_better = true,
             .params = params});
    rep.Add({.name = "store Lookup (with tiers) 1M tokens " + q,
             .value = Percentile(full, p),
             .unit = "us",
             .limit_name = "naive walk",
             .limit = Percentile(naive, p),
             .lower_is_better = true,
             .params = params});
  }
  return absl::OkStatus();
}

int RunTiersBench(int argc, char** argv) {
  Flags f;
  FlagSet flags("kvstrata bench tiers");
  flags.String("json", &f.json, "write the report as JSON to FILE");
  flags.String("dir", &f.dir,
               "directory for the nvme tier and the raw O_DIRECT file "
               "(default: a fresh one under /tmp)");
  flags.Int("host-mb", &f.host_mb, "host tier size in MiB");
  flags.Int("nvme-mb", &f.nvme_mb, "bytes written to the nvme tier per page size, MiB");
  flags.Int("reps", &f.reps, "repetitions of the host measurements (median)");
  flags.String("rows", &f.rows, "comma-separated row groups to run: host, nvme, lookup");
  flags.Int("nvme-read-parallelism", &f.read_parallelism,
            "nvme tier: reads in flight per ReadMany batch");
  flags.Int("nvme-seal-window-mb", &f.seal_window_mb,
            "nvme write rows: pages are sealed this many MiB behind the writes");
  flags.Double("restart-gb", &f.restart_gb,
               "nvme restart/reclaim rows: GiB of 168 KB pages in the tier (capped by free "
               "disk; 0 skips them)");
  absl::Status st = flags.Parse(argc, argv);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (st.ok() && (f.host_mb < 64 || f.nvme_mb < 16 || f.reps < 1 || f.read_parallelism < 1 ||
                  f.read_parallelism > 64 || f.seal_window_mb < 0 || f.restart_gb < 0)) {
    st = absl::InvalidArgumentError(
        "need --host-mb >= 64, --nvme-mb >= 16, --reps >= 1, 1 <= --nvme-read-parallelism <= 64, "
        "--nvme-seal-window-mb >= 0, --restart-gb >= 0");
  }
  bool host_rows = false, nvme_rows = false, lookup_rows = false;
  for (absl::string_view r : absl::StrSplit(f.rows, ',')) {
    if (r == "host") {
      host_rows = true;
    } else if (r == "nvme") {
      nvme_rows = true;
    } else if (r == "lookup") {
      lookup_rows = true;
    } else if (st.ok()) {
      st = absl::InvalidArgumentError(
          StrCat("--rows: unknown row group '", std::string(r), "' (host, nvme, lookup)"));
    }
  }
  if (st.ok() && f.dir.empty()) f.dir = StrCat("/tmp/kvstrata-bench-tiers-", getpid());
  std::error_code ec;
  if (st.ok() && !std::filesystem::create_directories(f.dir, ec) && ec) {
    st = absl::InvalidArgumentError(StrCat("--dir ", f.dir, ": ", ec.message()));
  }
  BenchReport rep("tiers");
  for (size_t size : {size_t{168} << 10, size_t{2600000}}) {
    if (st.ok() && host_rows) st = HostRows(f, size, rep);
    if (st.ok() && nvme_rows) st = NvmeRows(f, size, rep);
  }
  if (st.ok() && nvme_rows && f.restart_gb > 0) st = RestartRows(f, rep);
  if (st.ok() && lookup_rows) st = LookupRows(rep);
  if (!f.dir.empty()) std::filesystem::remove_all(f.dir, ec);
  if (!st.ok()) {
    std::fprintf(stderr, "bench tiers: %s\n", st.ToString().c_str());
    return 1;
  }
  rep.Note("goals",
           "host >= 0.8 of memcpy; nvme read >= 0.7, write >= 0.6 of O_DIRECT; nvme restart to "
           "the first hit <= 2 s with 10 GiB in the tier");
  rep.Print();
  st = rep.WriteJson(f.json);
  if (!st.ok()) {
    std::fprintf(stderr, "bench tiers: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(tiers, "host/nvme tier GB/s vs memcpy/O_DIRECT, 1M-token lookup",
                  kv::bench::RunTiersBench);
