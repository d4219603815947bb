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
#include "bench/tiers_bench.h"
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

namespace kv::bench::tiers {
namespace {

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

}  // namespace

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

namespace {

// Reads pages [0, n) in batches of 16 into a page-aligned buffer; returns the seconds spent
// in ReadMany. The bytes are compared outside the timed calls.
absl::StatusOr<double> TimedBatchReads(NvmeTier& tier, const Pages& pages, size_t n, size_t size) {
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
    ASSIGN_OR_RETURN(auto res, tier.ReadMany(keys, spans));
    t += NowSeconds() - t0;
    for (size_t j = 0; j < m; ++j) {
      if (!res[j].ok()) return res[j].status();
      if (std::memcmp(spans[j].data(), pages.page(i + j).data(), size) != 0) {
        return absl::InternalError("nvme tier returned different bytes");
      }
    }
  }
  return t;
}

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
    ASSIGN_OR_RETURN(const double t, TimedBatchReads(*tier, pages, n, size));
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
}  // namespace kv::bench::tiers

KV_REGISTER_BENCH(tiers, "host/nvme tier GB/s vs memcpy/O_DIRECT, 1M-token lookup",
                  kv::bench::tiers::RunTiersBench);
