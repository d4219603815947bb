// `kvstrata bench store`, the "ucx" path: kvstrata over UCX through cluster::PageRmaClient,
// the way a worker reads and writes pool pages (issue #15). Each client thread has its own
// PageStoreClient (the control calls), its own UCX transport, and one registered buffer that
// holds its chain back to back, as a worker's local tier would. Per request (one page; in the
// "ucx-chain" rows, the client's whole chain of --pages pages):
//   - PUT: ReserveStaging, one UCX put of the page from the buffer, SealStaged (the store
//     verifies the checksums, the parent and the namespace, and indexes the page);
//   - GET: PinBlocks, one UCX get into the buffer, the page verified in place (checksums and
//     key), UnpinBlocks.
// A call that falls back to gRPC fails the measurement: this row is the UCX path or nothing.
#include <algorithm>
#include <cstring>
#include <memory>

#include "bench/bench_util.h"
#include "bench/store_bench.h"
#include "cluster/page_store_client.h"
#include "cluster/page_store_rma.h"
#include "core/status_macros.h"
#include "transport/ucx_transport.h"

namespace kv::bench::store {
namespace {

using absl::StrCat;

// One client: its connections and its registered buffer (the chain, back to back).
struct UcxClient {
  std::unique_ptr<cluster::PageStoreClient> rpc;
  std::unique_ptr<transport::Transport> transport;
  std::vector<uint8_t> mem;
  transport::RegionId region = 0;
  std::unique_ptr<cluster::PageRmaClient> rma;  // destroyed before the transport
  std::vector<uint64_t> offsets;                // of each page of the chain in `mem`

  ~UcxClient() {
    rma.reset();
    if (region != 0) (void)transport->Deregister(region);
  }
  cluster::RegisteredBuffer buffer() { return {region, mem}; }
};

absl::StatusOr<std::unique_ptr<UcxClient>> NewUcxClient(const Store& s,
                                                        const std::vector<Page>& chain) {
  auto c = std::make_unique<UcxClient>();
  ASSIGN_OR_RETURN(c->rpc, cluster::PageStoreClient::Connect(s.address, kToken, absl::Seconds(60)));
  ASSIGN_OR_RETURN(c->transport, transport::UcxTransport::Create());
  uint64_t total = 0;
  for (const Page& p : chain) {
    c->offsets.push_back(total);
    total += p.bytes.size();
  }
  c->mem.resize(total);
  for (size_t i = 0; i < chain.size(); ++i) {
    std::memcpy(c->mem.data() + c->offsets[i], chain[i].bytes.data(), chain[i].bytes.size());
  }
  ASSIGN_OR_RETURN(
      transport::RegisteredRegion r,
      c->transport->Register(c->mem.data(), c->mem.size(), transport::MemoryKind::kHost));
  c->region = r.id;
  c->rma = std::make_unique<cluster::PageRmaClient>(c->rpc.get(), c->transport.get());
  return c;
}

// Writes chain[first, first + count) from the buffer in one request.
absl::Status UcxPut(UcxClient& c, const std::vector<Page>& chain, size_t first, size_t count) {
  std::vector<cluster::RmaPageToWrite> w;
  for (size_t i = first; i < first + count; ++i) {
    w.push_back({.key = chain[i].meta.key, .offset = c.offsets[i], .size = chain[i].bytes.size()});
  }
  ASSIGN_OR_RETURN(
      cluster::RmaWriteResult r,
      c.rma->WritePagesFrom(StoreWriteOptions(), w, c.buffer(), absl::Now() + absl::Seconds(30)));
  if (r.path != cluster::PagePath::kUcx) return absl::UnavailableError("the put fell back to gRPC");
  if (r.results.size() != count) return absl::InternalError("WritePagesFrom: a result per page");
  for (const auto& res : r.results) {
    if (res.outcome != kvstrata::v1::WRITE_OUTCOME_STORED) {
      return absl::InternalError(StrCat("page not stored: ", res.error.ToString()));
    }
  }
  return absl::OkStatus();
}

// Reads chain[first, first + count) in one request; the pages land back to back from the
// start of the buffer (a GET overwrites the chain there; the check pass compares it), each
// verified in place by the client.
absl::Status UcxGet(UcxClient& c, const std::vector<Page>& chain, size_t first, size_t count,
                    bool check) {
  std::vector<BlockKey> keys;
  for (size_t i = first; i < first + count; ++i) keys.push_back(chain[i].meta.key);
  ASSIGN_OR_RETURN(cluster::RmaReadResult r,
                   c.rma->ReadPagesInto(keys, c.buffer(), absl::Now() + absl::Seconds(30)));
  if (r.path != cluster::PagePath::kUcx) return absl::UnavailableError("the get fell back to gRPC");
  if (r.pages.size() != count) return absl::InternalError("ReadPagesInto: a result per key");
  for (size_t k = 0; k < count; ++k) {
    RETURN_IF_ERROR(r.pages[k].status());
    const Page& p = chain[first + k];
    if (r.pages[k]->size != p.bytes.size() ||
        (check &&
         std::memcmp(c.mem.data() + r.pages[k]->offset, p.bytes.data(), p.bytes.size()) != 0)) {
      return absl::DataLossError("the store returned other bytes");
    }
  }
  return absl::OkStatus();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

absl::StatusOr<UcxGetStages> MeasureUcxGetStages(const Flags& f, const Store& s,
                                                 const std::vector<Page>& chain) {
  ASSIGN_OR_RETURN(auto c, NewUcxClient(s, chain));
  std::vector<double> pin, get, release, verify;
  // GetPinned's steps, one at a time and timed: the get, the lease's confirmation and
  // release, the in-place verification.
  for (int round = 0; round < f.rounds + 1; ++round) {  // the first round warms up
    for (const Page& p : chain) {
      const BlockKey key = p.meta.key;
      const absl::Time deadline = absl::Now() + absl::Seconds(30);
      const double t0 = NowSeconds();
      ASSIGN_OR_RETURN(cluster::PinnedPages pinned, c->rma->PinForRead({&key, 1}, deadline));
      const double t1 = NowSeconds();
      if (pinned.pages.size() != 1 || pinned.pages[0].remote == 0) {
        return absl::InternalError("the store lent no region");
      }
      const cluster::PinnedPages::Page& lent = pinned.pages[0];
      RETURN_IF_ERROR(c->rma->Transfer(pinned.peer, transport::OpKind::kRead,
                                       {{c->region, 0, lent.remote, lent.remote_offset, lent.size}},
                                       deadline));
      const double t2 = NowSeconds();
      bool by_beacon = false;
      RETURN_IF_ERROR(c->rma->ConfirmAndRelease(pinned, deadline, &by_beacon));
      const double t3 = NowSeconds();
      RETURN_IF_ERROR(
          cluster::VerifyPageInPlace(std::span<const uint8_t>(c->mem.data(), lent.size), key));
      const double t4 = NowSeconds();
      if (round == 0) continue;
      pin.push_back((t1 - t0) * 1e6);
      get.push_back((t2 - t1) * 1e6);
      release.push_back((t3 - t2) * 1e6);
      verify.push_back((t4 - t3) * 1e6);
    }
  }
  return UcxGetStages{.pin_us = Median(pin),
                      .get_us = Median(get),
                      .release_us = Median(release),
                      .verify_us = Median(verify)};
}

absl::StatusOr<OpStats> MeasureUcx(const Flags& f, const Store& s, Op op, const Point& pt,
                                   bool whole_chain) {
  const int n = static_cast<int>(pt.chains.size());
  std::vector<std::unique_ptr<UcxClient>> clients;
  for (int i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(auto c, NewUcxClient(s, pt.chains[i]));
    clients.push_back(std::move(c));
  }
  if (op == Op::kGet) {  // the untimed pass that checks every byte
    for (int i = 0; i < n; ++i) {
      RETURN_IF_ERROR(UcxGet(*clients[i], pt.chains[i], 0, pt.chains[i].size(), true));
    }
  }
  const int rounds = op == Op::kGet ? static_cast<int>(f.rounds) : 1;
  return RunClients(n, [&](int i, std::vector<double>* lat, uint64_t* bytes) -> absl::Status {
    const std::vector<Page>& chain = pt.chains[i];
    const size_t step = whole_chain ? chain.size() : 1;
    for (int round = 0; round < rounds; ++round) {
      for (size_t j = 0; j < chain.size(); j += step) {
        const double t0 = NowSeconds();
        RETURN_IF_ERROR(op == Op::kPut ? UcxPut(*clients[i], chain, j, step)
                                       : UcxGet(*clients[i], chain, j, step, false));
        lat->push_back((NowSeconds() - t0) * 1e6);
        for (size_t k = j; k < j + step; ++k) *bytes += chain[k].bytes.size();
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace kv::bench::store
