// The PageStore's RMA data path (issue #15) between two real processes on loopback: this test
// (the client: PageRmaClient over its own UcxTransport) and a `kvstrata serve --role=store`
// process (its host tier slab and staging area registered with UCX). Every case runs over
// UCX TCP and over shared memory (UCX_TLS in both processes). Checked:
//   - many pages written two-phase (reserve, UCX put, seal) and read back (pin, one batch of
//     UCX gets into the caller's registered buffer, verify in place, unpin) equal the
//     originals, also with four concurrent clients, and the result says UCX moved them;
//     the lease is confirmed by one RMA read of its beacon, not an RPC;
//   - a lease expiring during a get (the completion is delayed past it) is an error in time,
//     and so is a lease released before its beacon is read;
//   - a store SIGKILLed mid-get (between pin and get, and while a get is in flight) and mid-put
//     is an error within the deadline, never a hang, the error says the buffer is not valid,
//     and the restarted store shows no half-written page;
//   - a page corrupted in the store's memory (a put into its region between pin and get) is
//     caught by the reader's verification: that page is a miss, the others are served;
//   - pages a router pinned and the store lent are read by another client (the worker) from
//     that answer without pinning again, confirmed by the beacon and never released by it;
//   - the worker's pool (GrpcPagePool) reads lent pages into its registered buffer and hands
//     out views that keep the buffer theirs until dropped;
//   - Warm reads a batch from the store's host tier over a connection the caller shares;
//   - tenant isolation: another tenant's pin lends nothing and its read is all misses;
//   - with no UCX endpoint reachable (a client without a transport) the gRPC fallback serves
//     the same bytes and says so.
// Usage: page_store_rma_test KVSTRATA_BINARY
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/membership.h"
#include "cluster/page_pool.h"
#include "cluster/page_store_client.h"
#include "cluster/page_store_rma.h"
#include "cluster/testing/child_process.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/test_pages.h"
#include "tests/integration/binary_test_main.h"
#include "transport/fault_transport.h"
#include "transport/ucx_transport.h"

namespace kv {
namespace {

namespace fs = std::filesystem;
namespace pb = ::kvstrata::v1;
using cluster::PagePath;
using cluster::PageRmaClient;
using cluster::PageStoreClient;
using cluster::RegisteredBuffer;
using cluster::RmaPageToWrite;
using cluster::testing::ChildProcess;
using kv::PoolPages;
using testing::TestPage;

constexpr uint32_t kTokens = 64;
constexpr uint32_t kLayers = 8;  // 336 KB pages

struct TlsCase {
  const char* name;
  const char* tls;
  const char* devices;  // nullptr: UCX_NET_DEVICES unset
};

// A registered buffer of the client's transport.
struct Buffer {
  Buffer(transport::Transport* t, size_t bytes) : mem(bytes), transport(t) {
    auto r = t->Register(mem.data(), mem.size(), transport::MemoryKind::kHost);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) region = r->id;
  }
  ~Buffer() {
    if (region != 0) (void)transport->Deregister(region);  // refused while quarantined
  }
  RegisteredBuffer view() { return {region, mem}; }
  std::vector<uint8_t> mem;
  transport::Transport* transport;
  transport::RegionId region = 0;
};

class PageStoreRmaTest : public ::testing::TestWithParam<TlsCase> {
 protected:
  void SetUp() override {
    setenv("UCX_TLS", GetParam().tls, 1);
    if (GetParam().devices != nullptr) {
      setenv("UCX_NET_DEVICES", GetParam().devices, 1);
    } else {
      unsetenv("UCX_NET_DEVICES");
    }
    const char* tmp = std::getenv("KVSTRATA_TEST_TMPDIR");
    work_ = (fs::path(tmp ? tmp : "/tmp") / StrCat("rma-test-", getpid(), "-", GetParam().name))
                .string();
    fs::remove_all(work_);
    fs::create_directories(work_);
    std::ofstream(work_ + "/tokens.yaml") << "tok-acme: acme\ntok-globex: globex\n";
    std::ofstream(work_ + "/service-token") << "svc-rma-test\n";
    absl::Status init = InitTinyModel(work_ + "/model", work_ + "/model-init.log");
    ASSERT_TRUE(init.ok()) << init;
    StartStore();
    auto t = transport::UcxTransport::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    transport_ = *std::move(t);
  }
  void TearDown() override {
    store_.reset();
    if (std::getenv("KVSTRATA_KEEP_TEST_TMP") == nullptr) fs::remove_all(work_);
  }

  void StartStore() {
    store_ = std::make_unique<ChildProcess>();
    std::vector<std::string> env = {std::string("UCX_TLS=") + GetParam().tls};
    if (GetParam().devices != nullptr)
      env.push_back(std::string("UCX_NET_DEVICES=") + GetParam().devices);
    ASSERT_TRUE(
        store_
            ->Spawn({g_binary, "serve", "--role=store", "--node-id=store-0", "--listen=127.0.0.1:0",
                     "--metrics-port=-1", "--model-dir=" + work_ + "/model",
                     "--tokens-file=" + work_ + "/tokens.yaml",
                     "--service-token-file=" + work_ + "/service-token",
                     "--data-dir=" + work_ + "/store", "--device-mib=0", "--host-mib=256",
                     "--nvme-mib=256"},
                    work_ + "/store.log", env)
            .ok());
    absl::StatusOr<std::string> line =
        store_->WaitForLine("serve_started", absl::Seconds(60), starts_++);
    ASSERT_TRUE(line.ok()) << line.status();
    std::smatch m;
    ASSERT_TRUE(std::regex_search(*line, m, std::regex("address=([0-9.:]+)"))) << *line;
    address_ = m[1];
  }

  std::unique_ptr<PageStoreClient> Rpc(const std::string& token) {
    auto c = PageStoreClient::Connect(address_, token, absl::Seconds(5));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  static pb::WriteOptions Mla() {
    pb::WriteOptions o;
    o.mutable_key_space()->set_layout("mla-fp8-656");
    o.mutable_key_space()->set_page_tokens(kTokens);
    return o;
  }
  static std::vector<TestPage> Chain(uint64_t seed, const std::string& tenant, size_t n) {
    return testing::MakeChain(seed, *KeyNamespace::Tenant(tenant), n, kTokens, kLayers);
  }
  // Copies `chain` into `buf` back to back and writes it with `client`.
  static absl::StatusOr<cluster::RmaWriteResult> Write(PageRmaClient& client, Buffer& buf,
                                                       const std::vector<TestPage>& chain) {
    std::vector<RmaPageToWrite> pages;
    uint64_t off = 0;
    for (const TestPage& p : chain) {
      std::memcpy(buf.mem.data() + off, p.bytes.data(), p.bytes.size());
      pages.push_back({p.meta.key, off, p.bytes.size()});
      off += p.bytes.size();
    }
    return client.WritePagesFrom(Mla(), pages, buf.view(), absl::Now() + absl::Seconds(20));
  }
  static size_t Bytes(const std::vector<TestPage>& chain) {
    size_t n = 0;
    for (const TestPage& p : chain) n += p.bytes.size();
    return n;
  }
  // Every page of `chain` read into `buf` equals the original.
  static void ExpectRead(const cluster::RmaReadResult& r, Buffer& buf,
                         const std::vector<TestPage>& chain) {
    ASSERT_EQ(r.pages.size(), chain.size());
    for (size_t i = 0; i < chain.size(); ++i) {
      ASSERT_TRUE(r.pages[i].ok()) << i << ": " << r.pages[i].status();
      ASSERT_EQ(r.pages[i]->size, chain[i].bytes.size());
      EXPECT_EQ(std::memcmp(buf.mem.data() + r.pages[i]->offset, chain[i].bytes.data(),
                            chain[i].bytes.size()),
                0)
          << "page " << i;
    }
  }

  std::string work_, address_;
  std::unique_ptr<ChildProcess> store_;
  size_t starts_ = 0;
  std::unique_ptr<transport::Transport> transport_;
};

TEST_P(PageStoreRmaTest, WritesAndReadsManyPagesOverUcx) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient client(rpc.get(), transport_.get());
  const auto chain = Chain(1, "acme", 24);
  Buffer src(transport_.get(), Bytes(chain));
  auto w = Write(client, src, chain);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->path, PagePath::kUcx);
  ASSERT_EQ(w->results.size(), chain.size());
  for (const auto& r : w->results) EXPECT_EQ(r.outcome, pb::WRITE_OUTCOME_STORED) << r.error;
  Buffer dst(transport_.get(), Bytes(chain) + 4096);
  auto r =
      client.ReadPagesInto(testing::KeysOf(chain), dst.view(), absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->path, PagePath::kUcx);
  EXPECT_TRUE(r->beacon_confirmed) << "the lease is confirmed by one RMA read, not an RPC";
  ExpectRead(*r, dst, chain);
  // Asking again for a longer chain: the extra keys are misses, the rest is served.
  std::vector<BlockKey> more = testing::KeysOf(chain);
  more.push_back(Chain(2, "acme", 1)[0].meta.key);
  r = client.ReadPagesInto(more, dst.view(), absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prefix(), chain.size());
  EXPECT_TRUE(absl::IsNotFound(r->pages.back().status()));
}

TEST_P(PageStoreRmaTest, ConcurrentClients) {
  constexpr int kClients = 4;
  std::vector<std::vector<TestPage>> chains;
  for (int i = 0; i < kClients; ++i) chains.push_back(Chain(10 + i, "acme", 8));
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kClients);
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto rpc = Rpc("tok-acme");
      PageRmaClient client(rpc.get(), transport_.get());
      Buffer src(transport_.get(), Bytes(chains[i]));
      auto w = Write(client, src, chains[i]);
      if (!w.ok() || w->path != PagePath::kUcx) {
        failures[i] = "write: " + w.status().ToString();
        return;
      }
      for (int round = 0; round < 3; ++round) {
        const auto& want = chains[(i + round) % kClients];
        Buffer dst(transport_.get(), Bytes(want));
        absl::StatusOr<cluster::RmaReadResult> r;
        for (int attempt = 0; attempt < 50; ++attempt) {  // another client may still write it
          r = client.ReadPagesInto(testing::KeysOf(want), dst.view(),
                                   absl::Now() + absl::Seconds(20));
          if (!r.ok() || r->prefix() == want.size()) break;
          absl::SleepFor(absl::Milliseconds(100));
        }
        if (!r.ok() || r->path != PagePath::kUcx || r->prefix() != want.size()) {
          failures[i] = "read: " + r.status().ToString();
          return;
        }
        for (size_t p = 0; p < want.size(); ++p) {
          if (std::memcmp(dst.mem.data() + r->pages[p]->offset, want[p].bytes.data(),
                          want[p].bytes.size()) != 0) {
            failures[i] = StrCat("page ", p, " of chain ", (i + round) % kClients, " differs");
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(failures[i], "") << "client " << i;
}

TEST_P(PageStoreRmaTest, PageCorruptedInStoreMemoryIsAMiss) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient client(rpc.get(), transport_.get());
  const auto chain = Chain(20, "acme", 4);
  Buffer src(transport_.get(), Bytes(chain));
  ASSERT_TRUE(Write(client, src, chain).ok());
  const std::vector<BlockKey> keys = testing::KeysOf(chain);
  auto pinned = client.PinForRead(keys, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_EQ(pinned->pages.size(), 4u);
  ASSERT_TRUE(pinned->rma());
  // Flip one byte of page 2 in the store's memory, through its registered region.
  const auto& victim = pinned->pages[2];
  Buffer poke(transport_.get(), 1);
  poke.mem[0] = static_cast<uint8_t>(chain[2].bytes[victim.size / 2] ^ 0xff);
  auto id = transport_->Prepare(
      {pinned->peer,
       transport::OpKind::kWrite,
       {{poke.region, 0, victim.remote, victim.remote_offset + victim.size / 2, 1}}});
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(transport_->Post(*id, absl::Now() + absl::Seconds(10)).ok());
  ASSERT_TRUE(transport_->Wait(*id, absl::Now() + absl::Seconds(12)).ok());
  ASSERT_TRUE(transport_->Release(*id).ok());
  Buffer dst(transport_.get(), Bytes(chain));
  auto r = client.GetPinned(*pinned, keys, dst.view(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->pages.size(), 4u);
  EXPECT_TRUE(r->pages[0].ok());
  EXPECT_TRUE(r->pages[1].ok());
  EXPECT_TRUE(absl::IsDataLoss(r->pages[2].status())) << r->pages[2].status();
  EXPECT_TRUE(r->pages[3].ok());
  EXPECT_EQ(r->prefix(), 2u);
}

TEST_P(PageStoreRmaTest, LeaseExpiringDuringAGetIsAnError) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient writer(rpc.get(), transport_.get());
  const auto chain = Chain(30, "acme", 6);
  Buffer src(transport_.get(), Bytes(chain));
  ASSERT_TRUE(Write(writer, src, chain).ok());
  // Completions reach the reader 3 s late; its lease is 500 ms.
  transport::FaultInjectingTransport slow(transport_.get(),
                                          {.delay = 1.0, .delay_by = absl::Seconds(3)});
  PageRmaClient reader(rpc.get(), &slow, {.lease = absl::Milliseconds(500)});
  Buffer dst(transport_.get(), Bytes(chain));
  const absl::Time start = absl::Now();
  auto r = reader.ReadPagesInto(testing::KeysOf(chain), dst.view(), start + absl::Seconds(20));
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status()) || absl::IsAborted(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("not valid"), std::string::npos) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(6));
}

// The beacon is the lease's proof of life: a lease released between the pin and the end of
// the get (here before it starts) makes the read an error, though every byte may be intact.
TEST_P(PageStoreRmaTest, LeaseReleasedBeforeItsBeaconIsReadIsAnError) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient client(rpc.get(), transport_.get());
  const auto chain = Chain(35, "acme", 4);
  Buffer src(transport_.get(), Bytes(chain));
  ASSERT_TRUE(Write(client, src, chain).ok());
  const std::vector<BlockKey> keys = testing::KeysOf(chain);
  auto pinned = client.PinForRead(keys, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_NE(pinned->beacon, 0u) << "the store answers a beacon with its regions";
  auto released = rpc->Unpin(pinned->lease_id);
  ASSERT_TRUE(released.ok() && *released == keys.size()) << released.status();
  Buffer dst(transport_.get(), Bytes(chain));
  auto r = client.GetPinned(*pinned, keys, dst.view(), absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(absl::IsAborted(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("not valid"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("beacon"), std::string::npos) << r.status();
}

// A router pins and passes the store's answer on; the worker reads the lent pages without a
// PinBlocks of its own, confirms the lease by its beacon and leaves it to its owner. Once the
// owner releases it, the same lent answer reads nothing.
TEST_P(PageStoreRmaTest, LentPagesAreReadWithoutPinningAndLeftToTheOwner) {
  const auto chain = Chain(37, "acme", 5);
  Buffer src(transport_.get(), Bytes(chain));
  auto acme = Rpc("tok-acme");
  PageRmaClient acme_writer(acme.get(), transport_.get());
  ASSERT_TRUE(Write(acme_writer, src, chain).ok());
  const std::vector<BlockKey> keys = testing::KeysOf(chain);
  pb::PinBlocksRequest req;  // as the router's pool pins: promote_to TIER_HOST
  for (const BlockKey& k : keys) req.add_keys(std::string(k.bytes.begin(), k.bytes.end()));
  req.set_promote_to(pb::TIER_HOST);
  auto lent = acme->PinBlocks(req);
  ASSERT_TRUE(lent.ok()) << lent.status();
  ASSERT_EQ(lent->pinned_size(), 5);
  // The worker: its own connection and PageRmaClient.
  auto worker_rpc = Rpc("tok-acme");
  PageRmaClient worker(worker_rpc.get(), transport_.get());
  auto borrowed = worker.Borrow(*lent, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(borrowed.ok()) << borrowed.status();
  EXPECT_TRUE(borrowed->borrowed);
  Buffer dst(transport_.get(), Bytes(chain));
  auto r = worker.GetPinned(*borrowed, keys, dst.view(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->path, PagePath::kUcx);
  EXPECT_TRUE(r->beacon_confirmed);
  ExpectRead(*r, dst, chain);
  // Reading left the lease alone: its owner releases all five pins.
  absl::SleepFor(absl::Milliseconds(200));  // an unpin sent by mistake would have landed
  auto released = acme->Unpin(lent->lease_id());
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(*released, keys.size());
  // The lease is gone: the lent answer is now an error, though the bytes may be intact.
  borrowed = worker.Borrow(*lent, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(borrowed.ok()) << borrowed.status();
  r = worker.GetPinned(*borrowed, keys, dst.view(), absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(absl::IsAborted(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("beacon"), std::string::npos) << r.status();
  // An answer without its beacon cannot be borrowed.
  pb::PinBlocksResponse no_beacon = *lent;
  no_beacon.clear_beacon();
  EXPECT_TRUE(absl::IsFailedPrecondition(
      worker.Borrow(no_beacon, absl::Now() + absl::Seconds(10)).status()));
}

// The worker's pool (GrpcPagePool) over the same store: the router's Pin lends, ReadView
// reads the lent pages into a registered buffer of the pool and returns views into it; the
// buffer stays the caller's while it holds the views (a second read meanwhile uses another),
// and a lent answer that does not parse only costs the worker its own pin.
TEST_P(PageStoreRmaTest, PoolViewsOfLentPagesHoldTheirBuffer) {
  auto acme = Rpc("tok-acme");
  PageRmaClient writer(acme.get(), transport_.get());
  const auto one = Chain(38, "acme", 6), two = Chain(39, "acme", 6);
  Buffer src(transport_.get(), Bytes(one));
  ASSERT_TRUE(Write(writer, src, one).ok());
  ASSERT_TRUE(Write(writer, src, two).ok());
  pb::NodeInfo store;
  store.set_node_id("store-0");
  store.set_grpc_address(address_);
  store.add_roles(pb::ROLE_STORE);
  auto members = cluster::StaticMembership::Create({store});
  ASSERT_TRUE(members.ok()) << members.status();
  auto pool = cluster::NewGrpcPagePool(
      members->get(), {.service_token = "svc-rma-test", .transport = transport_.get()});
  ASSERT_TRUE(pool.ok()) << pool.status();
  const absl::Time by = absl::Now() + absl::Seconds(20);
  const auto read = [&](const std::vector<TestPage>& chain, const std::string& lent,
                        std::string* path) {
    return (*pool)->ReadView(address_, testing::KeysOf(chain), "", "acme", by, path, lent);
  };
  const auto same = [](const PoolPages& v, const std::vector<TestPage>& chain) {
    if (v.size() != chain.size()) return false;
    for (size_t i = 0; i < chain.size(); ++i) {
      if (!std::equal(v.pages[i].begin(), v.pages[i].end(), chain[i].bytes.begin(),
                      chain[i].bytes.end())) {
        return false;
      }
    }
    return true;
  };
  int64_t pinned = 0;
  std::string lent;
  auto lease =
      (*pool)->Pin(address_, testing::KeysOf(one), absl::Seconds(10), "acme", &pinned, &lent);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(pinned, 6);
  ASSERT_FALSE(lent.empty()) << "the store lends a pin made for a worker";
  std::string path;
  auto first = read(one, lent, &path);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(path, "ucx");
  EXPECT_TRUE(same(*first, one));
  auto second = read(two, "not a PinBlocksResponse", &path);  // its own pin
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(path, "ucx");
  EXPECT_TRUE(same(*second, two));
  EXPECT_TRUE(same(*first, one)) << "the second read reused the buffer the first still holds";
  *first = PoolPages{};                 // the buffer goes back to the pool ...
  auto third = read(one, lent, &path);  // ... and serves the next read
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(same(*third, one));
  (*pool)->Unpin(address_, *lease, "acme");
}

// Warm: one batch of gets from the store's host tier through a connection the caller shares
// (PageRmaOptions::connect, as the pool shares one endpoint per store among tenants).
TEST_P(PageStoreRmaTest, WarmUsesTheSharedConnection) {
  auto rpc = Rpc("tok-acme");
  int connects = 0;
  transport::PeerId shared = 0;
  PageRmaClient client(
      rpc.get(), transport_.get(),
      {.connect = [&](const std::string& ucx, absl::Time by) -> absl::StatusOr<transport::PeerId> {
        ++connects;
        if (shared == 0) {
          ASSIGN_OR_RETURN(shared, transport_->Connect(ucx, by));
        }
        return shared;
      }});
  Buffer buf(transport_.get(), 1 << 20);
  ASSERT_TRUE(client.Warm(buf.view(), 16, absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(connects, 1);
  auto peer = client.Peer(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(*peer, shared);
  EXPECT_EQ(connects, 1) << "the connection is kept";
  EXPECT_TRUE(absl::IsInvalidArgument(client.Warm(buf.view(), 0, absl::Now())));
  // A second client of another tenant reads over the same endpoint.
  auto globex = Rpc("tok-globex");
  PageRmaClient other(globex.get(), transport_.get(),
                      {.connect = [&](const std::string&, absl::Time) { return shared; }});
  EXPECT_TRUE(other.Warm(buf.view(), 4, absl::Now() + absl::Seconds(10)).ok());
}

TEST_P(PageStoreRmaTest, StoreKilledMidGetIsAnErrorInTime) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient client(rpc.get(), transport_.get());
  const auto chain = Chain(40, "acme", 16);
  Buffer src(transport_.get(), Bytes(chain));
  ASSERT_TRUE(Write(client, src, chain).ok());
  const std::vector<BlockKey> keys = testing::KeysOf(chain);
  auto pinned = client.PinForRead(keys, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  store_->Kill();
  Buffer dst(transport_.get(), Bytes(chain));
  const absl::Time start = absl::Now();
  auto r = client.GetPinned(*pinned, keys, dst.view(), start + absl::Seconds(5));
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not valid"), std::string::npos) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5 + 2 + 6));  // deadline, wait grace, unpin RPC
  // The restarted store holds only whole pages: none, or those its background write-back
  // had persisted to nvme before the kill (#18 durability; more of them on a loaded machine),
  // each equal to what was written.
  StartStore();
  auto rpc2 = Rpc("tok-acme");
  auto l = rpc2->Lookup(keys);
  ASSERT_TRUE(l.ok()) << l.status();
  const size_t kept = l->prefix_blocks();
  if (kept > 0) {
    auto read = rpc2->ReadPages(std::span(keys).first(kept));
    ASSERT_TRUE(read.ok()) << read.status();
    ASSERT_EQ(read->size(), kept);
    for (size_t i = 0; i < kept; ++i) {
      ASSERT_TRUE((*read)[i].page.ok()) << i << ": " << (*read)[i].page.status();
      const std::string& got = *(*read)[i].page;
      EXPECT_TRUE(got.size() == chain[i].bytes.size() &&
                  std::memcmp(got.data(), chain[i].bytes.data(), got.size()) == 0)
          << "page " << i << " survived the kill changed";
    }
  }
}

TEST_P(PageStoreRmaTest, StoreKilledWhileAGetIsInFlightIsAnErrorInTime) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient writer(rpc.get(), transport_.get());
  const auto chain = Chain(45, "acme", 16);
  Buffer src(transport_.get(), Bytes(chain));
  ASSERT_TRUE(Write(writer, src, chain).ok());
  // The get's completion is reported 2 s late; the store dies 300 ms into it, so the lease
  // cannot be confirmed and the bytes must not be used, even though they may all have landed.
  transport::FaultInjectingTransport slow(transport_.get(),
                                          {.delay = 1.0, .delay_by = absl::Seconds(2)});
  PageRmaClient reader(rpc.get(), &slow);
  Buffer dst(transport_.get(), Bytes(chain));
  const absl::Time start = absl::Now();
  std::thread killer([&] {
    absl::SleepFor(absl::Milliseconds(300));
    store_->Kill();
  });
  auto r = reader.ReadPagesInto(testing::KeysOf(chain), dst.view(), start + absl::Seconds(10));
  killer.join();
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not valid"), std::string::npos) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10 + 2 + 6));  // deadline, wait grace, unpin RPC
}

TEST_P(PageStoreRmaTest, StoreKilledMidPutLeavesNoPage) {
  auto rpc = Rpc("tok-acme");
  const auto chain = Chain(50, "acme", 16);
  // The put's completion is reported 2 s late; the store dies 300 ms into it.
  transport::FaultInjectingTransport slow(transport_.get(),
                                          {.delay = 1.0, .delay_by = absl::Seconds(2)});
  PageRmaClient client(rpc.get(), &slow);
  Buffer src(transport_.get(), Bytes(chain));
  const absl::Time start = absl::Now();
  std::thread killer([&] {
    absl::SleepFor(absl::Milliseconds(300));
    store_->Kill();
  });
  auto w = Write(client, src, chain);
  killer.join();
  EXPECT_FALSE(w.ok()) << "the write cannot have been sealed by a dead store";
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  StartStore();
  auto rpc2 = Rpc("tok-acme");
  auto l = rpc2->Lookup(testing::KeysOf(chain));
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->prefix_blocks(), 0u);
}

TEST_P(PageStoreRmaTest, AnotherTenantsPinLendsNothing) {
  auto acme = Rpc("tok-acme");
  PageRmaClient writer(acme.get(), transport_.get());
  const auto chain = Chain(60, "acme", 4);
  Buffer src(transport_.get(), Bytes(chain));
  ASSERT_TRUE(Write(writer, src, chain).ok());
  auto globex = Rpc("tok-globex");
  pb::PinBlocksRequest req;
  for (const TestPage& p : chain)
    req.add_keys(std::string(p.meta.key.bytes.begin(), p.meta.key.bytes.end()));
  req.set_promote_to(pb::TIER_HOST);
  auto raw = globex->PinBlocks(req);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->pinned_size(), 0);
  EXPECT_EQ(raw->missing_size(), 4);
  PageRmaClient reader(globex.get(), transport_.get());
  Buffer dst(transport_.get(), Bytes(chain));
  auto r =
      reader.ReadPagesInto(testing::KeysOf(chain), dst.view(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prefix(), 0u);
  for (const auto& p : r->pages) EXPECT_TRUE(absl::IsNotFound(p.status())) << p.status();
}

TEST_P(PageStoreRmaTest, WithoutUcxTheGrpcFallbackServesTheSameBytes) {
  auto rpc = Rpc("tok-acme");
  PageRmaClient grpc_only(rpc.get(), nullptr);
  const auto chain = Chain(70, "acme", 5);
  Buffer src(transport_.get(), Bytes(chain));
  auto w = Write(grpc_only, src, chain);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->path, PagePath::kGrpc);
  PageRmaClient client(rpc.get(), transport_.get());
  Buffer a(transport_.get(), Bytes(chain)), b(transport_.get(), Bytes(chain));
  auto over_grpc =
      grpc_only.ReadPagesInto(testing::KeysOf(chain), a.view(), absl::Now() + absl::Seconds(10));
  auto over_ucx =
      client.ReadPagesInto(testing::KeysOf(chain), b.view(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(over_grpc.ok()) << over_grpc.status();
  ASSERT_TRUE(over_ucx.ok()) << over_ucx.status();
  EXPECT_EQ(over_grpc->path, PagePath::kGrpc);
  EXPECT_EQ(over_ucx->path, PagePath::kUcx);
  ExpectRead(*over_grpc, a, chain);
  ExpectRead(*over_ucx, b, chain);
}

INSTANTIATE_TEST_SUITE_P(Tls, PageStoreRmaTest,
                         ::testing::Values(TlsCase{"tcp", "tcp", "lo"},
                                           TlsCase{"shm", "posix,cma,self", nullptr}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace kv
