// Test support for the PageStore service's tests (page_store_service_test.cc,
// page_store_service_lease_test.cc, page_store_client_test.cc): page chains, write options and
// chunks, and a fixture serving a PageStoreService over a real gRPC server on loopback and a
// real TieredStore (host slab tier + nvme tier on RocksDB in a temp dir), with a FakeClock for
// leases. Not part of any library.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>

#include "cluster/grpc_server.h"
#include "cluster/grpc_status.h"
#include "cluster/page_store_client.h"
#include "cluster/page_store_service.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/page_format.h"
#include "kvstore/slab_tier.h"
#include "kvstore/test_pages.h"

namespace kv::cluster::pagestore_testing {

namespace pb = ::kvstrata::v1;
using testing::TestPage;

constexpr uint32_t kTokens = 64;
// The node credential of the fixture's service (cluster/tenants.h).
inline constexpr char kServiceToken[] = "svc-node";
constexpr uint32_t kLayers = 2;

// A chain of `n` mla-fp8-656 pages keyed under `ns` (tenant or shared).
inline std::vector<TestPage> Chain(uint64_t seed, const KeyNamespace& ns, size_t n,
                                   std::optional<BlockKey> parent = std::nullopt) {
  return testing::MakeChain(seed, ns, n, kTokens, kLayers, parent);
}

inline KeyNamespace Tenant(const std::string& t) { return *KeyNamespace::Tenant(t); }

inline std::vector<BlockKey> Keys(const std::vector<TestPage>& chain) {
  return testing::KeysOf(chain);
}

inline std::string KeyBytes(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

inline std::string Str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

inline pb::WriteOptions Options(bool shared = false) {
  pb::WriteOptions o;
  o.mutable_key_space()->set_model_fingerprint(KeyBytes(BlockKey{Sha256Of("kvstrata test model")}));
  o.mutable_key_space()->set_layout("mla-fp8-656");
  o.mutable_key_space()->set_page_tokens(kTokens);
  o.set_shared_namespace(shared);
  return o;
}

inline pb::PageChunk Chunk(const BlockKey& key, const std::string& data, uint64_t offset,
                           uint64_t total, bool last) {
  pb::PageChunk c;
  c.set_key(KeyBytes(key));
  c.set_offset(offset);
  c.set_data(data);
  c.set_data_xxh3(Xxh3_64(data.data(), data.size()));
  c.set_total_bytes(total);
  c.set_last(last);
  return c;
}

// The chunks of a whole page, `size` bytes each.
inline std::vector<pb::PageChunk> Chunks(const TestPage& p, size_t size) {
  std::vector<pb::PageChunk> out;
  const std::string b = Str(p.bytes);
  for (size_t off = 0; off < b.size(); off += size) {
    const size_t n = std::min(size, b.size() - off);
    out.push_back(Chunk(p.meta.key, b.substr(off, n), off, b.size(), off + n == b.size()));
  }
  return out;
}

class PageStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("pagestore");
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    auto host = AllocateHostRegion(8 << 20);
    ASSERT_TRUE(host.ok()) << host.status();
    auto slab = SlabTier::Create(*std::move(host), {TierKind::kHost, 256 << 10});
    ASSERT_TRUE(slab.ok()) << slab.status();
    tiers[1] = *std::move(slab);
    auto nv = NvmeTier::Open({.path = dir_ + "/nvme", .capacity_bytes = 64 << 20});
    ASSERT_TRUE(nv.ok()) << nv.status();
    tiers[2] = *std::move(nv);
    TieredStoreOptions so;
    so.clock = &clock_;
    so.metrics = &metrics_;
    so.background_threads = 0;
    auto store = TieredStore::Open(so, std::move(tiers));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    StartService();
  }
  void StartService() {
    auto auth = TenantAuth::Parse("tok-a: acme\ntok-b: globex\n", "test");
    ASSERT_TRUE(auth.ok()) << auth.status();
    ASSERT_TRUE(auth->SetServiceToken(kServiceToken).ok());
    PageStoreServiceOptions o;
    o.node_id = "store-t";
    o.clock = &clock_;
    o.metrics = &metrics_;
    o.max_leases_per_tenant = 4;
    service_ = std::make_unique<PageStoreService>(store_.get(), *auth, o);
    GrpcServerOptions go;
    go.services = {service_.get()};
    go.health_service_names = {pb::PageStore::service_full_name()};
    go.shutdown_grace = absl::Seconds(2);
    auto server = GrpcServer::Start(go);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = pb::PageStore::NewStub(channel_);
  }
  void StopService() {
    server_->Shutdown();
    server_.reset();
    service_.reset();
  }
  void TearDown() override {
    if (server_) StopService();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A client with `token`; with `acting_tenant`, sent as `x-kvstrata-tenant`.
  PageStoreClient Client(const std::string& token, const std::string& acting_tenant = "") {
    return PageStoreClient(channel_, token, absl::Seconds(20), acting_tenant);
  }
  // The node credential acting for `tenant`.
  PageStoreClient Node(const std::string& tenant) { return Client(kServiceToken, tenant); }
  // Writes whole pages with the client; returns the outcomes.
  std::vector<pb::WriteOutcome> Write(const std::string& token, const std::vector<TestPage>& pages,
                                      bool shared = false, uint32_t chunk = 1u << 20) {
    PageStoreClient c = Client(token);
    return WriteWith(c, pages, shared, chunk);
  }
  // Write as the node credential acting for `tenant` (shared writes need it).
  std::vector<pb::WriteOutcome> NodeWrite(const std::string& tenant,
                                          const std::vector<TestPage>& pages, bool shared) {
    PageStoreClient c = Node(tenant);
    return WriteWith(c, pages, shared, 1u << 20);
  }
  std::vector<pb::WriteOutcome> WriteWith(PageStoreClient& c, const std::vector<TestPage>& pages,
                                          bool shared, uint32_t chunk) {
    std::vector<PageStoreClient::PageToWrite> in;
    for (const auto& p : pages) in.push_back({p.meta.key, p.bytes});
    auto r = c.WritePages(Options(shared), in, chunk);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<pb::WriteOutcome> out;
    if (!r.ok()) return out;
    for (const auto& w : *r) out.push_back(w.outcome);
    return out;
  }
  // A raw WritePages stream of `msgs` with `token`.
  std::pair<absl::Status, pb::WritePagesResponse> RawWrite(
      const std::string& token, const std::vector<pb::WritePagesRequest>& msgs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    pb::WritePagesResponse resp;
    auto w = stub_->WritePages(&ctx, &resp);
    for (const auto& m : msgs) {
      if (!w->Write(m)) break;
    }
    w->WritesDone();
    return {FromGrpcStatus(w->Finish()), resp};
  }
  static pb::WritePagesRequest Msg(const pb::PageChunk& c) {
    pb::WritePagesRequest m;
    *m.mutable_chunk() = c;
    return m;
  }
  static pb::WritePagesRequest Msg(const pb::WriteOptions& o) {
    pb::WritePagesRequest m;
    *m.mutable_options() = o;
    return m;
  }
  double Rejected(const std::string& reason) {
    return metrics_.GetCounter("kvstrata_pagestore_pages_rejected_total", "", {{"reason", reason}})
        ->Value();
  }
  // Reads one page as `token`; the page's status.
  absl::StatusOr<std::string> ReadOne(const std::string& token, const BlockKey& key) {
    auto r = Client(token).ReadPages({&key, 1});
    if (!r.ok()) return r.status();
    return (*r)[0].page;
  }

  std::string dir_;
  FakeClock clock_;
  MetricsRegistry metrics_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<PageStoreService> service_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::PageStore::Stub> stub_;
};

}  // namespace kv::cluster::pagestore_testing
