// `kvstrata bench tiers`: the tiers of the page store against the limits of their media.
//
//   - host tier (SlabTier over pinned host memory): put / get GB/s of 168 KB and 2.6 MB
//     pages, next to a memcpy of the same pages between the same-sized buffers (goal 0.8);
//   - nvme tier (RocksDB + BlobDB): write (write + seal + flush) and read (MultiGet, direct
//     and buffered) GB/s of the same pages, next to a raw O_DIRECT sequential write / read of
//     a file of the same size in the same directory (goal read 0.7, write 0.6);
//   - lookup: p50 / p99 of the longest-prefix lookup of a 1M-token chain (15,625 keys),
//     next to a naive walk that probes every key in order.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
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
  bool direct_flush = NvmeTierOptions().use_direct_io_for_flush;
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

NvmeTierOptions TierOptions(const Flags& f, const std::string& path, uint64_t capacity,
                            bool direct_reads) {
  NvmeTierOptions o;
  o.path = path;
  o.capacity_bytes = capacity;
  o.use_direct_reads = direct_reads;
  o.use_direct_io_for_flush = f.direct_flush;
  o.read_parallelism = static_cast<int>(f.read_parallelism);
  return o;
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
  double t_write = 0, t_puts = 0;
  {
    ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, db, 2 * total, false)));
    double t0 = NowSeconds();
    for (size_t i = 0; i < n; ++i) {
      RETURN_IF_ERROR(tier->Write(pages.metas[i], pages.page(i)));
      RETURN_IF_ERROR(tier->Seal(pages.metas[i].key));
    }
    t_puts = NowSeconds() - t0;
    RETURN_IF_ERROR(tier->Flush());
    t_write = NowSeconds() - t0;
  }
  std::map<std::string, std::string> params = {
      {"pages", std::to_string(n)},
      {"dir", f.dir},
      {"read_parallelism", std::to_string(f.read_parallelism)},
      {"direct_flush", f.direct_flush ? "yes" : "no"}};
  auto wp = params;
  wp["puts_s"] = std::to_string(t_puts);  // write + seal of every page, before the flush
  wp["flush_s"] = std::to_string(t_write - t_puts);
  rep.Add({.name = "nvme write " + label,
           .value = bytes / t_write / 1e9,
           .unit = "GB/s",
           .limit_name = "O_DIRECT write",
           .limit = bytes / raw_w / 1e9,
           .params = wp});
  for (bool direct : {true, false}) {
    ASSIGN_OR_RETURN(auto tier, NvmeTier::Open(TierOptions(f, db, 2 * total, direct)));
    std::vector<uint8_t> dst(16 * size);
    constexpr size_t kBatch = 16;
    double t0 = NowSeconds();
    for (size_t i = 0; i < n; i += kBatch) {
      size_t m = std::min(kBatch, n - i);
      std::vector<BlockKey> keys;
      std::vector<std::span<uint8_t>> spans;
      for (size_t j = 0; j < m; ++j) {
        keys.push_back(pages.metas[i + j].key);
        spans.push_back(std::span(dst).subspan(j * size, size));
      }
      ASSIGN_OR_RETURN(auto res, tier->ReadMany(keys, spans));
      for (size_t j = 0; j < m; ++j) {
        if (!res[j].ok()) return res[j].status();
        if (std::memcmp(spans[j].data(), pages.page(i + j).data(), size) != 0) {
          return absl::InternalError("nvme tier returned different bytes");
        }
      }
    }
    double t = NowSeconds() - t0;
    auto p = params;
    p["reads"] = direct ? "use_direct_reads (page cache bypassed)" : "buffered (page cache)";
    rep.Add({.name = StrCat("nvme read ", label, direct ? " direct" : " buffered"),
             .value = bytes / t / 1e9,
             .unit = "GB/s",
             .limit_name = "O_DIRECT read",
             .limit = bytes / raw_r / 1e9,
             .params = p});
  }
  std::filesystem::remove_all(db);
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
            "nvme tier: concurrent MultiGets per ReadMany batch (1: one sequential MultiGet)");
  flags.Bool("nvme-direct-flush", &f.direct_flush,
             "nvme tier: O_DIRECT for flush/compaction writes (blob and table files)");
  absl::Status st = flags.Parse(argc, argv);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (st.ok() && (f.host_mb < 64 || f.nvme_mb < 16 || f.reps < 1 || f.read_parallelism < 1 ||
                  f.read_parallelism > 64)) {
    st = absl::InvalidArgumentError(
        "need --host-mb >= 64, --nvme-mb >= 16, --reps >= 1, 1 <= --nvme-read-parallelism <= 64");
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
  if (st.ok() && lookup_rows) st = LookupRows(rep);
  if (!f.dir.empty()) std::filesystem::remove_all(f.dir, ec);
  if (!st.ok()) {
    std::fprintf(stderr, "bench tiers: %s\n", st.ToString().c_str());
    return 1;
  }
  rep.Note("goals", "host >= 0.8 of memcpy; nvme read >= 0.7, write >= 0.6 of O_DIRECT");
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
