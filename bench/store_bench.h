// Shared by the `kvstrata bench store` files: store_bench.cc (the run, the gRPC and Redis
// paths, ucx_perftest) and store_ucx_bench.cc (kvstrata over UCX).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "cluster/testing/child_process.h"
#include "kvstore/test_pages.h"
#include "proto/kvstrata/v1/page_store.pb.h"

namespace kv::bench::store {

using Page = kv::testing::TestPage;

inline constexpr char kTenant[] = "bench";
inline constexpr char kToken[] = "tok-bench";
inline constexpr uint32_t kTokens = 64;

struct Flags {
  std::string json, svg;
  std::string layers = "4,61";
  std::string clients = "1,4";
  int64_t pages = 12;  // per client and page size
  int64_t rounds = 4;  // timed GET passes over each client's pages
  std::string redis_server = "/usr/bin/redis-server";
  std::string perftest = "/usr/bin/ucx_perftest";
  // bench/python_client_bench.py and the directory holding the built kvstrata Python
  // package: the python row (issue #17); empty script: no python row.
  std::string python_bench;
  std::string python_path = "build/client/python";
  std::string dir;  // scratch directory (made and removed by the run)
  // kvstrata's paths to measure, comma-separated (ucx, ucx-chain, grpc): one path alone is
  // what a profiler is pointed at.
  std::string paths = "ucx,ucx-chain,grpc";
};

enum class Op { kGet, kPut };
inline const char* OpName(Op op) { return op == Op::kGet ? "GET" : "PUT"; }

// One (page size, clients) point: one chain of pages per client.
struct Point {
  uint32_t layers = 0;
  size_t page_bytes = 0;
  std::vector<std::vector<Page>> chains;
  std::string Label() const {
    return absl::StrCat(page_bytes < (1u << 20) ? absl::StrCat(page_bytes / 1000, " KB")
                                                : absl::StrCat(page_bytes / 10000 / 100.0, " MB"),
                        " x", chains.size());
  }
};

struct OpStats {
  double gbps = 0, p50_us = 0, p99_us = 0;
};

// Runs `fn(client, &latencies_us, &bytes)` on `n` threads started together. Throughput is
// every client's bytes over the wall time from the start to the last client's end.
using ClientFn = std::function<absl::Status(int, std::vector<double>*, uint64_t*)>;
absl::StatusOr<OpStats> RunClients(int n, const ClientFn& fn);

// The store node under test (a child process) and its gRPC address.
struct Store {
  cluster::testing::ChildProcess process;
  std::string address;
};

// The key space of the bench's pages.
kvstrata::v1::WriteOptions StoreWriteOptions();

// kvstrata over UCX (cluster::PageRmaClient): each client its own UCX transport and one
// registered buffer holding its chain. PUT: reserve + put + seal per page; GET: pin + get +
// in-place verification + unpin per page; with `whole_chain`, one request moves a client's
// whole chain (one pin, one batch of gets, one unpin; one staging lease, one batch of puts, one
// seal), as a worker loads or publishes a prefix. Fails if a call falls back to gRPC.
absl::StatusOr<OpStats> MeasureUcx(const Flags& f, const Store& s, Op op, const Point& pt,
                                   bool whole_chain);

// Where one page's UCX GET goes (medians over --rounds passes of `chain`, one page per
// request, one client), GetPinned's steps taken one at a time: the PinBlocks RPC (gRPC), the
// one-sided get, the lease's confirmation (a beacon read) and release (UnpinBlocks sent by a
// thread), the in-place verification; in microseconds.
struct UcxGetStages {
  double pin_us = 0, get_us = 0, release_us = 0, verify_us = 0;
};
absl::StatusOr<UcxGetStages> MeasureUcxGetStages(const Flags& f, const Store& s,
                                                 const std::vector<Page>& chain);

}  // namespace kv::bench::store
