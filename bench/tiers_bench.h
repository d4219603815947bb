// Shared by the `kvstrata bench tiers` files: tiers_bench.cc (host, nvme, lookup rows) and
// tiers_restart_bench.cc (nvme restart and reclaim rows).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "bench/bench_util.h"
#include "core/status_macros.h"
#include "kvstore/nvme_tier.h"

namespace kv::bench::tiers {

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

// Raw O_DIRECT sequential write (with fdatasync) and read of `total` bytes in `chunk` pieces.
absl::Status RawDirect(const std::string& path, size_t chunk, size_t total, double* write_s,
                       double* read_s);

NvmeTierOptions TierOptions(const Flags& f, const std::string& path, uint64_t capacity);

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

// The nvme restart (time to the first hit of a full tier) and reclaim rows.
absl::Status RestartRows(const Flags& f, BenchReport& rep);

}  // namespace kv::bench::tiers
