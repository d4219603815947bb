// PageStoreService + PageStoreClient over a real gRPC server on loopback and a real
// TieredStore (host slab tier + nvme tier on RocksDB in a temp dir), with a FakeClock for
// leases.
#include "cluster/page_store_service.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>

#include <atomic>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/create_channel.h>

#include "cluster/grpc_server.h"
#include "cluster/grpc_status.h"
#include "cluster/page_store_client.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/page_format.h"
#include "kvstore/slab_tier.h"
#include "kvstore/test_pages.h"

namespace kv::cluster {
namespace {

namespace pb = ::kvstrata::v1;
using testing::TestPage;

constexpr uint32_t kTokens = 64;
constexpr uint32_t kLayers = 2;

// A chain of `n` mla-fp8-656 pages keyed under `ns` (tenant or shared).
std::vector<TestPage> Chain(uint64_t seed, const KeyNamespace& ns, size_t n,
                            std::optional<BlockKey> parent = std::nullopt) {
  std::mt19937_64 rng(seed);
  KeyParams params;
  params.model_fingerprint = Sha256Of("kvstrata test model");
  params.layout_id = "mla-fp8-656";
  params.page_tokens = kTokens;
  params.ns = ns;
  std::vector<uint32_t> ids(n * kTokens);
  for (auto& id : ids) id = static_cast<uint32_t>(rng() % 50000);
  std::vector<BlockKey> keys = *DeriveBlockKeys(params, ids, parent);
  std::vector<TestPage> out;
  BlockKey prev = parent.value_or(BlockKey::Zero());
  for (size_t i = 0; i < n; ++i) {
    PageSpec spec{LayoutId::kMlaFp8_656, keys[i], prev, kTokens, 0, kLayers};
    std::vector<uint8_t> kv(*KvSectionBytes(spec));
    for (auto& b : kv) b = static_cast<uint8_t>(rng());
    TestPage p;
    p.bytes = *EncodePage(spec, kv);
    p.meta.key = keys[i];
    p.meta.parent = prev;
    p.meta.ns = ns.ToString();
    p.meta.layout = "mla-fp8-656";
    p.meta.size = p.bytes.size();
    out.push_back(std::move(p));
    prev = keys[i];
  }
  return out;
}

KeyNamespace Tenant(const std::string& t) { return *KeyNamespace::Tenant(t); }

std::vector<BlockKey> Keys(const std::vector<TestPage>& chain) { return testing::KeysOf(chain); }

std::string KeyBytes(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

std::string Str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

pb::WriteOptions Options(bool shared = false) {
  pb::WriteOptions o;
  o.mutable_key_space()->set_model_fingerprint(KeyBytes(BlockKey{Sha256Of("kvstrata test model")}));
  o.mutable_key_space()->set_layout("mla-fp8-656");
  o.mutable_key_space()->set_page_tokens(kTokens);
  o.set_shared_namespace(shared);
  return o;
}

pb::PageChunk Chunk(const BlockKey& key, const std::string& data, uint64_t offset, uint64_t total,
                    bool last) {
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
std::vector<pb::PageChunk> Chunks(const TestPage& p, size_t size) {
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

  PageStoreClient Client(const std::string& token) {
    return PageStoreClient(channel_, token, absl::Seconds(20));
  }
  // Writes whole pages with the client; returns the outcomes.
  std::vector<pb::WriteOutcome> Write(const std::string& token, const std::vector<TestPage>& pages,
                                      bool shared = false, uint32_t chunk = 1u << 20) {
    std::vector<PageStoreClient::PageToWrite> in;
    for (const auto& p : pages) in.push_back({p.meta.key, p.bytes});
    auto r = Client(token).WritePages(Options(shared), in, chunk);
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

TEST_F(PageStoreTest, WriteLookupPinReadRoundTrip) {
  auto chain = Chain(1, Tenant("acme"), 3);
  // 10000-byte chunks: every page (~84 KB) travels in several chunks.
  EXPECT_EQ(Write("tok-a", chain, false, 10000),
            std::vector<pb::WriteOutcome>(3, pb::WRITE_OUTCOME_STORED));
  PageStoreClient a = Client("tok-a");
  auto keys = Keys(chain);
  auto longer = keys;
  longer.push_back(Chain(2, Tenant("acme"), 1, keys.back())[0].meta.key);
  auto look = a.Lookup(longer);
  ASSERT_TRUE(look.ok()) << look.status();
  EXPECT_EQ(look->prefix_blocks(), 3u);
  EXPECT_EQ(look->node_id(), "store-t");
  ASSERT_EQ(look->blocks_size(), 3);
  for (int i = 0; i < 3; ++i) {
    const auto& b = look->blocks(i);
    EXPECT_EQ(b.key(), KeyBytes(keys[i]));
    EXPECT_EQ(b.tier(), pb::TIER_HOST);
    EXPECT_EQ(b.page_bytes(), chain[i].bytes.size());
    EXPECT_EQ(b.token_count(), kTokens);
    EXPECT_EQ(b.layers().begin(), 0u);
    EXPECT_EQ(b.layers().end(), kLayers);
    EXPECT_FALSE(b.has_resume());
  }
  auto pin = a.Pin(longer, absl::Seconds(20));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->lease_id.size(), 32u);
  EXPECT_EQ(pin->pinned, keys);
  EXPECT_EQ(pin->missing, std::vector<BlockKey>{longer.back()});
  EXPECT_EQ(pin->deadline, clock_.Now() + absl::Seconds(20));
  EXPECT_EQ(service_->live_leases(), 1u);
  auto read = a.ReadPages(keys, pin->lease_id, 4096);  // 4 KiB chunks: ~21 per page
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*read)[i].key, keys[i]);
    ASSERT_TRUE((*read)[i].page.ok()) << (*read)[i].page.status();
    EXPECT_EQ(*(*read)[i].page, Str(chain[i].bytes));
  }
  auto released = a.Unpin(pin->lease_id);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(*released, 3u);
  EXPECT_EQ(service_->live_leases(), 0u);
  EXPECT_EQ(store_->Stats().active_leases, 0u);
  // Pages are write-once.
  EXPECT_EQ(Write("tok-a", {chain[0]}),
            std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_ALREADY_PRESENT});
  uint64_t total = 0;
  for (const auto& p : chain) total += p.bytes.size();
  EXPECT_EQ(metrics_.GetCounter("kvstrata_pagestore_bytes_written_total", "")->Value(), total);
  EXPECT_EQ(metrics_.GetCounter("kvstrata_pagestore_bytes_read_total", "")->Value(), total);
  EXPECT_EQ(metrics_
                .GetCounter("kvstrata_pagestore_requests_total", "",
                            {{"rpc", "ReadPages"}, {"code", "OK"}})
                ->Value(),
            1);
}

TEST_F(PageStoreTest, CorruptedChunkAndPageAreRejectedAndCounted) {
  auto chain = Chain(3, Tenant("acme"), 3);
  // Page 0: one chunk whose XXH3 does not match its data. Page 1: a bit flipped in the KV
  // section with a correct chunk XXH3 (caught by the page checksums). Page 2: good.
  std::vector<pb::WritePagesRequest> msgs{Msg(Options())};
  auto c0 = Chunks(chain[0], 16384);
  c0[2].set_data_xxh3(c0[2].data_xxh3() ^ 1);
  for (const auto& c : c0) msgs.push_back(Msg(c));
  TestPage flipped = chain[1];
  flipped.bytes[flipped.bytes.size() - 100] ^= 0x10;
  for (const auto& c : Chunks(flipped, 16384)) msgs.push_back(Msg(c));
  for (const auto& c : Chunks(chain[2], 16384)) msgs.push_back(Msg(c));
  auto [st, resp] = RawWrite("tok-a", msgs);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(resp.results_size(), 3);
  EXPECT_EQ(resp.results(0).outcome(), pb::WRITE_OUTCOME_REJECTED);
  EXPECT_EQ(resp.results(0).error().reason(), "CHUNK_CHECKSUM_MISMATCH");
  EXPECT_EQ(resp.results(0).error().code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_EQ(resp.results(0).error().key(), KeyBytes(chain[0].meta.key));
  EXPECT_EQ(resp.results(1).outcome(), pb::WRITE_OUTCOME_REJECTED);
  EXPECT_EQ(resp.results(1).error().reason(), "PAGE_CHECKSUM_MISMATCH");
  // Page 2's parent (page 1) was rejected, so it cannot be sealed either.
  EXPECT_EQ(resp.results(2).outcome(), pb::WRITE_OUTCOME_REJECTED);
  EXPECT_EQ(resp.results(2).error().reason(), "PARENT_MISSING");
  EXPECT_EQ(Rejected("chunk_checksum_mismatch"), 1);
  EXPECT_EQ(Rejected("page_checksum_mismatch"), 1);
  uint64_t sent = 0;
  for (size_t i = 1; i < msgs.size(); ++i) sent += msgs[i].chunk().data().size();
  EXPECT_EQ(resp.bytes_received(), sent);
  auto look = Client("tok-a").Lookup(Keys(chain));
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 0u);
  // The good pages of a stream are stored even after a bad one.
  std::vector<TestPage> mixed{flipped, chain[0]};
  EXPECT_EQ(Write("tok-a", mixed),
            (std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_REJECTED, pb::WRITE_OUTCOME_STORED}));
  EXPECT_EQ(Rejected("page_checksum_mismatch"), 2);
}

TEST_F(PageStoreTest, UnknownLayoutKeySpaceAndOversizeAreRejected) {
  auto chain = Chain(4, Tenant("acme"), 1);
  TestPage unknown = chain[0];
  unknown.bytes[10] = 99;  // layout code
  ASSERT_TRUE(ResealPage(unknown.bytes).ok());
  TestPage zero = chain[0];
  zero.bytes[10] = 0;  // no layout has code 0
  ASSERT_TRUE(ResealPage(zero.bytes).ok());
  std::vector<pb::WritePagesRequest> msgs{Msg(Options())};
  for (const auto* p : {&unknown, &zero}) {
    for (const auto& c : Chunks(*p, 1 << 20)) msgs.push_back(Msg(c));
  }
  // 64 MiB + 1 announced: rejected at its first chunk, the rest is not buffered.
  const BlockKey big = Chain(5, Tenant("acme"), 1)[0].meta.key;
  const uint64_t total = (64ull << 20) + 1;
  msgs.push_back(Msg(Chunk(big, std::string(1000, 'x'), 0, total, false)));
  msgs.push_back(Msg(Chunk(big, std::string(1000, 'y'), 1000, total, true)));
  auto [st, resp] = RawWrite("tok-a", msgs);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(resp.results_size(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(resp.results(i).outcome(), pb::WRITE_OUTCOME_REJECTED);
  EXPECT_EQ(resp.results(0).error().reason(), "UNKNOWN_LAYOUT");
  EXPECT_EQ(resp.results(1).error().reason(), "UNKNOWN_LAYOUT");
  EXPECT_EQ(resp.results(2).error().reason(), "PAGE_TOO_LARGE");
  EXPECT_EQ(Rejected("unknown_layout"), 2);
  EXPECT_EQ(Rejected("page_too_large"), 1);
  // Key space: the stream says 32 tokens per page, the page has 64.
  pb::WriteOptions o = Options();
  o.mutable_key_space()->set_page_tokens(32);
  std::vector<PageStoreClient::PageToWrite> in{{chain[0].meta.key, chain[0].bytes}};
  auto r = Client("tok-a").WritePages(o, in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].outcome, pb::WRITE_OUTCOME_REJECTED);
  EXPECT_EQ(GetErrorInfo((*r)[0].error)->reason(), "KEY_SPACE_MISMATCH");
  // A page whose header names another key than its chunks.
  auto other = Chain(6, Tenant("acme"), 1);
  in = {{other[0].meta.key, chain[0].bytes}};
  r = Client("tok-a").WritePages(Options(), in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(GetErrorInfo((*r)[0].error)->reason(), "KEY_MISMATCH");
  // Nothing of the above is visible.
  auto look = Client("tok-a").Lookup({&chain[0].meta.key, 1});
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 0u);
}

TEST_F(PageStoreTest, ProtocolViolationsEndTheStream) {
  auto chain = Chain(7, Tenant("acme"), 2);
  auto c0 = Chunks(chain[0], 16384);
  auto c1 = Chunks(chain[1], 16384);
  // No WriteOptions first.
  auto [s1, r1] = RawWrite("tok-a", {Msg(c0[0])});
  EXPECT_TRUE(absl::IsInvalidArgument(s1)) << s1;
  // A chunk of another page before `last`.
  auto [s2, r2] = RawWrite("tok-a", {Msg(Options()), Msg(c0[0]), Msg(c1[0])});
  EXPECT_TRUE(absl::IsInvalidArgument(s2)) << s2;
  // An offset out of order.
  auto [s3, r3] = RawWrite("tok-a", {Msg(Options()), Msg(c0[0]), Msg(c0[2])});
  EXPECT_TRUE(absl::IsInvalidArgument(s3)) << s3;
  // A malformed key.
  pb::PageChunk bad = c0[0];
  bad.set_key("short");
  auto [s4, r4] = RawWrite("tok-a", {Msg(Options()), Msg(bad)});
  EXPECT_TRUE(absl::IsInvalidArgument(s4)) << s4;
  // A stream that ends in the middle of a page: that page is rejected, the call is OK.
  auto [s5, r5] = RawWrite("tok-a", {Msg(Options()), Msg(c0[0])});
  ASSERT_TRUE(s5.ok()) << s5;
  ASSERT_EQ(r5.results_size(), 1);
  EXPECT_EQ(r5.results(0).error().reason(), "PAGE_TRUNCATED");
}

TEST_F(PageStoreTest, TenantsAreIsolatedAndSharedPagesVisibleToAll) {
  auto a_chain = Chain(8, Tenant("acme"), 2);
  auto shared = Chain(9, KeyNamespace::Shared(), 2);
  ASSERT_EQ(Write("tok-a", a_chain), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  ASSERT_EQ(Write("tok-a", shared, /*shared=*/true),
            std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  // acme continues the shared prefix with its own page.
  auto a_tail = Chain(10, Tenant("acme"), 1, shared.back().meta.key);
  ASSERT_EQ(Write("tok-a", a_tail), std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_STORED});

  PageStoreClient b = Client("tok-b");
  // globex sees nothing of acme's, exactly like a miss.
  auto look = b.Lookup(Keys(a_chain));
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 0u);
  auto pin = b.Pin(Keys(a_chain));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_TRUE(pin->pinned.empty());
  EXPECT_EQ(pin->missing, Keys(a_chain));
  EXPECT_TRUE(pin->lease_id.empty());
  const BlockKey absent = Chain(11, Tenant("globex"), 1)[0].meta.key;
  std::vector<BlockKey> probe{a_chain[0].meta.key, absent};
  auto read = b.ReadPages(probe);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(absl::IsNotFound((*read)[0].page.status())) << (*read)[0].page.status();
  ASSERT_TRUE(absl::IsNotFound((*read)[1].page.status()));
  // Same message shape for a foreign page and an absent one.
  EXPECT_EQ((*read)[0].page.status().message().substr(70),
            (*read)[1].page.status().message().substr(70));
  // Shared pages are visible to both; acme's tail after the shared prefix only to acme.
  std::vector<BlockKey> conv = Keys(shared);
  conv.push_back(a_tail[0].meta.key);
  look = b.Lookup(conv);
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 2u);
  look = Client("tok-a").Lookup(conv);
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 3u);
  auto got = ReadOne("tok-b", shared[1].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Str(shared[1].bytes));

  // globex cannot write into acme's namespace: not its exact page (the key is acme's) ...
  auto w = Write("tok-b", {a_chain[0]});
  EXPECT_EQ(w, std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_REJECTED});
  // ... nor a page continuing acme's chain, in its own or the shared namespace.
  auto b_after_a = Chain(12, Tenant("globex"), 1, a_chain.back().meta.key);
  EXPECT_EQ(Write("tok-b", b_after_a), std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_REJECTED});
  auto s_after_a = Chain(13, KeyNamespace::Shared(), 1, a_chain.back().meta.key);
  EXPECT_EQ(Write("tok-a", s_after_a, true),
            std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_REJECTED});
  EXPECT_EQ(Rejected("namespace_conflict"), 1);
  EXPECT_EQ(Rejected("parent_missing"), 2);
  // acme's page is untouched.
  got = ReadOne("tok-a", a_chain[0].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Str(a_chain[0].bytes));
  // A lease is its tenant's: globex cannot use or release acme's.
  auto a_pin = Client("tok-a").Pin(Keys(a_chain));
  ASSERT_TRUE(a_pin.ok());
  auto rel = b.Unpin(a_pin->lease_id);
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, 0u);
  EXPECT_EQ(service_->live_leases(), 1u);
  auto stolen = b.ReadPages(Keys(shared), a_pin->lease_id);
  EXPECT_TRUE(absl::IsNotFound(stolen.status())) << stolen.status();
}

TEST_F(PageStoreTest, UnauthenticatedCallsAreRejected) {
  auto chain = Chain(14, Tenant("acme"), 1);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_STORED});
  for (const std::string token : {"", "wrong"}) {
    PageStoreClient c = Client(token);
    auto keys = Keys(chain);
    EXPECT_TRUE(absl::IsUnauthenticated(c.Lookup(keys).status()));
    EXPECT_TRUE(absl::IsUnauthenticated(c.Pin(keys).status()));
    EXPECT_TRUE(absl::IsUnauthenticated(c.Unpin("x").status()));
    EXPECT_TRUE(absl::IsUnauthenticated(c.ReadPages(keys).status()));
    std::vector<PageStoreClient::PageToWrite> in{{chain[0].meta.key, chain[0].bytes}};
    EXPECT_TRUE(absl::IsUnauthenticated(c.WritePages(Options(), in).status()));
    EXPECT_TRUE(absl::IsUnauthenticated(c.GetTransportInfo().status()));
  }
}

TEST_F(PageStoreTest, ExpiredLeaseFailsCleanly) {
  auto chain = Chain(15, Tenant("acme"), 2);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  PageStoreClient a = Client("tok-a");
  auto pin = a.Pin(Keys(chain), absl::Seconds(5));
  ASSERT_TRUE(pin.ok()) << pin.status();
  // Extending works while the lease is live.
  clock_.Advance(absl::Seconds(4));
  auto ext = a.Pin({}, absl::Seconds(5), pin->lease_id);
  ASSERT_TRUE(ext.ok()) << ext.status();
  EXPECT_EQ(ext->lease_id, pin->lease_id);
  EXPECT_EQ(ext->deadline, clock_.Now() + absl::Seconds(5));
  clock_.Advance(absl::Seconds(4));  // past the first deadline, before the extended one
  auto read = a.ReadPages(Keys(chain), pin->lease_id);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE((*read)[1].page.ok()) << (*read)[1].page.status();
  clock_.Advance(absl::Seconds(2));  // expired
  read = a.ReadPages(Keys(chain), pin->lease_id);
  EXPECT_TRUE(absl::IsNotFound(read.status())) << read.status();
  EXPECT_TRUE(absl::IsNotFound(a.Pin(Keys(chain), absl::Seconds(5), pin->lease_id).status()));
  auto rel = a.Unpin(pin->lease_id);
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, 0u);
  EXPECT_EQ(service_->live_leases(), 0u);
  EXPECT_EQ(store_->Stats().active_leases, 0u);
  EXPECT_EQ(metrics_.GetGauge("kvstrata_pagestore_leases", "")->Value(), 0);
  // The pages are still there without a lease.
  auto again = a.ReadPages(Keys(chain));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*(*again)[0].page, Str(chain[0].bytes));
}

TEST_F(PageStoreTest, LeaseExpiringMidStreamFailsTheRemainingPagesCleanly) {
  auto chain = Chain(23, Tenant("acme"), 4);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>(4, pb::WRITE_OUTCOME_STORED));
  auto pin = Client("tok-a").Pin(Keys(chain), absl::Seconds(5));
  ASSERT_TRUE(pin.ok()) << pin.status();
  constexpr int kPages = 200;  // ~17 MB: far more than flow control lets the server run ahead
  pb::ReadPagesRequest rr;
  for (int i = 0; i < kPages; ++i) rr.add_pages()->set_key(KeyBytes(chain[i % 4].meta.key));
  rr.set_lease_id(pin->lease_id);
  rr.set_max_chunk_bytes(4096);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer tok-a");
  auto reader = stub_->ReadPages(&ctx, rr);
  std::vector<std::string> bytes(kPages);
  std::vector<int> code(kPages, -1);
  pb::PageChunk c;
  bool first = true;
  while (reader->Read(&c)) {
    if (first) clock_.Advance(absl::Seconds(6));  // the lease expires under the stream
    first = false;
    ASSERT_LT(c.page_index(), static_cast<uint32_t>(kPages));
    if (c.has_error()) {
      code[c.page_index()] = c.error().code();
    } else {
      bytes[c.page_index()] += c.data();
      if (c.last()) code[c.page_index()] = 0;
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  // Every page is whole and right, or NOT_FOUND; never partial or wrong bytes.
  for (int i = 0; i < kPages; ++i) {
    if (code[i] == 0) {
      EXPECT_EQ(bytes[i], Str(chain[i % 4].bytes)) << i;
    } else {
      EXPECT_EQ(code[i], static_cast<int>(absl::StatusCode::kNotFound)) << i;
    }
  }
  EXPECT_EQ(code.front(), 0);
  EXPECT_EQ(code.back(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(service_->live_leases(), 0u);
  EXPECT_EQ(store_->Stats().active_leases, 0u);
}

TEST_F(PageStoreTest, LeasesUnpinPartlyAndAreBoundedPerTenant) {
  auto chain = Chain(16, Tenant("acme"), 3);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>(3, pb::WRITE_OUTCOME_STORED));
  PageStoreClient a = Client("tok-a");
  auto rel = a.Unpin("0123456789abcdef0123456789abcdef");
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, 0u);
  auto pin = a.Pin(Keys(chain));
  ASSERT_TRUE(pin.ok());
  rel = a.Unpin(pin->lease_id, {&chain[2].meta.key, 1});
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, 1u);
  EXPECT_EQ(store_->Stats().active_leases, 1u);
  rel = a.Unpin(pin->lease_id);
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, 2u);
  // max_leases_per_tenant = 4 in this fixture.
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto p = a.Pin({&chain[0].meta.key, 1});
    ASSERT_TRUE(p.ok()) << p.status();
    ids.push_back(p->lease_id);
  }
  auto fifth = a.Pin({&chain[0].meta.key, 1});
  EXPECT_TRUE(absl::IsResourceExhausted(fifth.status())) << fifth.status();
  EXPECT_TRUE(IsRetryable(fifth.status()));
  ASSERT_TRUE(a.Unpin(ids[0]).ok());
  EXPECT_TRUE(a.Pin({&chain[0].meta.key, 1}).ok());
}

TEST_F(PageStoreTest, MalformedKeysAreInvalidArgument) {
  pb::LookupBlocksRequest lr;
  lr.add_keys(std::string(31, 'k'));
  grpc::ClientContext c1;
  c1.AddMetadata("authorization", "Bearer tok-a");
  pb::LookupBlocksResponse lresp;
  EXPECT_EQ(stub_->LookupBlocks(&c1, lr, &lresp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  pb::PinBlocksRequest pr;
  pr.add_keys(std::string(33, 'k'));
  grpc::ClientContext c2;
  c2.AddMetadata("authorization", "Bearer tok-a");
  pb::PinBlocksResponse presp;
  EXPECT_EQ(stub_->PinBlocks(&c2, pr, &presp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  pb::ReadPagesRequest rr;
  rr.add_pages()->set_key("");
  grpc::ClientContext c3;
  c3.AddMetadata("authorization", "Bearer tok-a");
  auto reader = stub_->ReadPages(&c3, rr);
  pb::PageChunk chunk;
  EXPECT_FALSE(reader->Read(&chunk));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(PageStoreTest, MissingPageGivesAnErrorChunkAndTheStreamContinues) {
  auto chain = Chain(17, Tenant("acme"), 2);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  const BlockKey absent = Chain(18, Tenant("acme"), 1)[0].meta.key;
  std::vector<BlockKey> keys{chain[0].meta.key, absent, chain[1].meta.key};
  auto read = Client("tok-a").ReadPages(keys);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 3u);
  EXPECT_EQ(*(*read)[0].page, Str(chain[0].bytes));
  EXPECT_TRUE(absl::IsNotFound((*read)[1].page.status())) << (*read)[1].page.status();
  auto info = GetErrorInfo((*read)[1].page.status());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->node_id(), "store-t");
  EXPECT_EQ(info->key(), KeyBytes(absent));
  EXPECT_EQ(*(*read)[2].page, Str(chain[1].bytes));
  // A layer range other than the page's own is not implemented: an error chunk, too.
  pb::ReadPagesRequest rr;
  rr.add_pages()->set_key(KeyBytes(chain[0].meta.key));
  rr.mutable_pages(0)->mutable_layers()->set_begin(1);
  rr.mutable_pages(0)->mutable_layers()->set_end(2);
  rr.add_pages()->set_key(KeyBytes(chain[1].meta.key));
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer tok-a");
  auto reader = stub_->ReadPages(&ctx, rr);
  pb::PageChunk c;
  ASSERT_TRUE(reader->Read(&c));
  EXPECT_EQ(c.error().code(), static_cast<int>(absl::StatusCode::kUnimplemented));
  EXPECT_TRUE(c.last());
  ASSERT_TRUE(reader->Read(&c));
  EXPECT_EQ(c.page_index(), 1u);
  EXPECT_FALSE(c.has_error());
  EXPECT_FALSE(c.page_header().empty());
  while (reader->Read(&c)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(PageStoreTest, NewServiceOverTheSameStoreSeesEarlierPages) {
  auto chain = Chain(19, Tenant("acme"), 2);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  StopService();
  StartService();  // the directory is rebuilt from the tiers' sealed pages
  auto look = Client("tok-a").Lookup(Keys(chain));
  ASSERT_TRUE(look.ok()) << look.status();
  EXPECT_EQ(look->prefix_blocks(), 2u);
  EXPECT_EQ(look->blocks(1).token_count(), kTokens);
  look = Client("tok-b").Lookup(Keys(chain));
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 0u);
  auto got = ReadOne("tok-a", chain[1].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Str(chain[1].bytes));
}

TEST_F(PageStoreTest, TransportInfo) {
  auto info = Client("tok-b").GetTransportInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->node_id(), "store-t");
  EXPECT_EQ(info->max_transfer_bytes(), 64ull << 20);
  EXPECT_EQ(info->endpoints_size(), 0);
  EXPECT_EQ(info->regions_size(), 0);
}

TEST_F(PageStoreTest, CancelledReadReleasesEverything) {
  auto chain = Chain(21, Tenant("acme"), 4);
  ASSERT_EQ(Write("tok-a", chain), std::vector<pb::WriteOutcome>(4, pb::WRITE_OUTCOME_STORED));
  pb::ReadPagesRequest rr;
  for (int i = 0; i < 50; ++i) rr.add_pages()->set_key(KeyBytes(chain[i % 4].meta.key));
  rr.set_max_chunk_bytes(4096);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer tok-a");
  auto reader = stub_->ReadPages(&ctx, rr);
  pb::PageChunk c;
  ASSERT_TRUE(reader->Read(&c));
  ctx.TryCancel();
  while (reader->Read(&c)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The service still serves, and no private pin of the cancelled stream is left behind.
  auto got = ReadOne("tok-a", chain[3].meta.key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Str(chain[3].bytes));
  EXPECT_EQ(store_->Stats().active_leases, 0u);
}

TEST_F(PageStoreTest, ConcurrentWritersAndReaders) {
  constexpr int kThreads = 4;
  std::vector<std::vector<TestPage>> chains;
  for (int t = 0; t < kThreads; ++t) {
    chains.push_back(Chain(100 + t, Tenant(t % 2 ? "acme" : "globex"), 5));
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string token = t % 2 ? "tok-a" : "tok-b";
      for (int round = 0; round < 3; ++round) {
        auto w = Write(token, chains[t], false, 8192);
        for (auto o : w) {
          if (o != (round == 0 ? pb::WRITE_OUTCOME_STORED : pb::WRITE_OUTCOME_ALREADY_PRESENT)) {
            ++failures;
          }
        }
        PageStoreClient c = Client(token);
        auto pin = c.Pin(Keys(chains[t]));
        if (!pin.ok() || pin->pinned.size() != 5) {
          ++failures;
          continue;
        }
        auto r = c.ReadPages(Keys(chains[t]), pin->lease_id, 8192);
        for (size_t i = 0; r.ok() && i < r->size(); ++i) {
          if (!(*r)[i].page.ok() || *(*r)[i].page != Str(chains[t][i].bytes)) ++failures;
        }
        if (!r.ok()) ++failures;
        // The other tenant's chain stays invisible.
        auto other = c.Lookup(Keys(chains[(t + 1) % kThreads]));
        if (!other.ok() || other->prefix_blocks() != 0) ++failures;
        auto rel = c.Unpin(pin->lease_id);
        if (!rel.ok() || *rel != 5) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(service_->live_leases(), 0u);
  EXPECT_EQ(store_->Stats().active_leases, 0u);
  EXPECT_TRUE(store_->CheckInvariants().ok());
}

// A PageStore that serves chosen bytes for ReadPages, to check that the client refuses pages
// damaged in transit (fault injection on the wire, not a stand-in for the service).
class WireFaultStore final : public pb::PageStore::Service {
 public:
  enum class Fault { kNone, kChunkChecksum, kFlippedByte, kOtherPage };
  struct Served {
    std::string bytes;
    Fault fault;
  };
  std::vector<Served> pages;

  grpc::Status ReadPages(grpc::ServerContext*, const pb::ReadPagesRequest* req,
                         grpc::ServerWriter<pb::PageChunk>* out) override {
    for (int i = 0; i < req->pages_size(); ++i) {
      std::string b = pages[i].bytes;
      if (pages[i].fault == Fault::kFlippedByte) b[b.size() / 2] ^= 0x01;
      for (size_t off = 0; off < b.size(); off += 4096) {
        const size_t n = std::min<size_t>(4096, b.size() - off);
        pb::PageChunk c;
        c.set_key(req->pages(i).key());
        c.set_page_index(i);
        if (off == 0) c.set_page_header(b.substr(0, PageHeaderBytes(1)));
        c.set_offset(off);
        c.set_data(b.substr(off, n));
        c.set_data_xxh3(Xxh3_64(b.data() + off, n));
        if (pages[i].fault == Fault::kChunkChecksum && off > 0) c.set_data_xxh3(1);
        c.set_total_bytes(b.size());
        c.set_last(off + n == b.size());
        out->Write(c);
      }
    }
    return grpc::Status::OK;
  }
};

TEST(PageStoreClientTest, PagesDamagedInTransitAreErrorsNeverBytes) {
  auto chain = Chain(22, Tenant("acme"), 4);
  WireFaultStore svc;
  using F = WireFaultStore::Fault;
  svc.pages = {{Str(chain[0].bytes), F::kNone},
               {Str(chain[1].bytes), F::kChunkChecksum},
               {Str(chain[2].bytes), F::kFlippedByte},
               {Str(chain[0].bytes), F::kOtherPage}};  // page 0's bytes asked as page 3
  GrpcServerOptions go;
  go.services = {&svc};
  go.shutdown_grace = absl::Seconds(1);
  auto server = GrpcServer::Start(go);
  ASSERT_TRUE(server.ok()) << server.status();
  PageStoreClient c(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()),
                    "tok-a", absl::Seconds(20));
  auto r = c.ReadPages(Keys(chain));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 4u);
  ASSERT_TRUE((*r)[0].page.ok()) << (*r)[0].page.status();
  EXPECT_EQ(*(*r)[0].page, Str(chain[0].bytes));
  for (int i = 1; i < 4; ++i) {
    EXPECT_TRUE(absl::IsDataLoss((*r)[i].page.status())) << i << ": " << (*r)[i].page.status();
  }
  (*server)->Shutdown();
}

// A loopback TCP port that accepts connections and never answers, or (listen = false) is
// bound but refuses every connection: nothing else can take the port while the object lives,
// so "absent" stays absent even with other tests opening ports at the same time.
class SilentListener {
 public:
  explicit SilentListener(bool listen = true) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    if (listen) ::listen(fd_, 16);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~SilentListener() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(PageStoreClientTest, DeadlinesBoundCallsToStalledOrAbsentServers) {
  auto keys = Keys(Chain(20, Tenant("acme"), 1));
  SilentListener stalled;
  SilentListener absent(/*listen=*/false);  // bound, not listening: connections are refused
  for (int port : {stalled.port(), absent.port()}) {
    auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    PageStoreClient c(ch, "tok-a", absl::Milliseconds(500));
    const absl::Time start = absl::Now();
    auto look = c.Lookup(keys);
    auto read = c.ReadPages(keys);
    const absl::Duration took = absl::Now() - start;
    for (const absl::Status& s : {look.status(), read.status()}) {
      EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s)) << s;
      EXPECT_TRUE(IsRetryable(s)) << s;
    }
    EXPECT_LT(took, absl::Seconds(5)) << "port " << port;
  }
}

// A V4 page's resume role crosses WritePages and lands in the store's page metadata (the
// nvme tier persists it), so the store's pressure policy sees what the publisher decided.
TEST_F(PageStoreTest, WritePagesCarriesTheResumeRoleToTheStore) {
  const std::vector<TestPage> chain = testing::MakeV4Chain(11, "acme", {3000, 3000, 3000});
  const PageRole roles[] = {PageRole::kCheckpoint, PageRole::kSharedPrefixEnd, PageRole::kInterior};
  pb::WriteOptions o = Options();
  o.mutable_key_space()->set_layout("v4-fp8-584");
  o.mutable_key_space()->set_page_tokens(256);
  std::vector<PageStoreClient::PageToWrite> in;
  for (size_t i = 0; i < chain.size(); ++i) {
    in.push_back({chain[i].meta.key, chain[i].bytes, roles[i]});
  }
  auto r = Client("tok-a").WritePages(o, in, 1u << 20);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& w : *r) EXPECT_EQ(w.outcome, pb::WRITE_OUTCOME_STORED);
  // Demote every page to the nvme tier, which persists the metadata, and read it back.
  ASSERT_TRUE(store_->Evict(TierKind::kHost, 1ull << 30).ok());
  auto metas = store_->tier(TierKind::kNvme)->List();
  ASSERT_TRUE(metas.ok()) << metas.status();
  ASSERT_EQ(metas->size(), chain.size());
  for (size_t i = 0; i < chain.size(); ++i) {
    auto it = std::find_if(metas->begin(), metas->end(),
                           [&](const PageMeta& m) { return m.key == chain[i].meta.key; });
    ASSERT_NE(it, metas->end());
    EXPECT_EQ(it->resume_role, roles[i]) << "page " << i << ": " << PageRoleName(it->resume_role);
  }
}

}  // namespace
}  // namespace kv::cluster
