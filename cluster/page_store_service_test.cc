// PageStoreService + PageStoreClient over a real gRPC server on loopback and a real
// TieredStore: writes (chunking, checksums, admission reasons), reads (streams, error chunks,
// cancellation), protocol violations and authentication. Tenancy and leases over the wire are
// in page_store_service_lease_test.cc; the policy itself is tested in kvstore/page_store_test.cc.
#include "cluster/page_store_service.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cluster/page_store_service_testing.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::cluster {
namespace {

using namespace pagestore_testing;  // NOLINT: test helpers

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
  EXPECT_EQ(metrics_.GetCounter("kvstrata_pagestore_written_bytes_total", "")->Value(), total);
  EXPECT_EQ(metrics_.GetCounter("kvstrata_pagestore_read_bytes_total", "")->Value(), total);
  EXPECT_EQ(metrics_
                .GetCounter("kvstrata_pagestore_requests_total", "",
                            {{"rpc", "ReadPages"}, {"code", "OK"}})
                ->Value(),
            1);
}

// A page under `key` (naming `key` and `parent`) with valid checksums and KV bytes from `seed`:
// what another tenant may write under a key it computed for someone else.
std::vector<uint8_t> ForeignPage(const BlockKey& key, const BlockKey& parent, uint64_t seed) {
  PageSpec spec{.key = key, .parent = parent, .token_count = kTokens, .layer_count = kLayers};
  std::vector<uint8_t> kv(*KvSectionBytes(spec));
  for (uint8_t& b : kv) b = static_cast<uint8_t>(seed = seed * 6364136223846793005u + 1);
  return *EncodePage(spec, kv);
}

// `text` with each key, in hex or as raw bytes, replaced by "<key>".
std::string WithoutKeys(std::string text, std::span<const BlockKey> keys) {
  for (const BlockKey& k : keys) {
    for (const std::string& form : {k.Hex(), KeyBytes(k)}) {
      for (size_t at = text.find(form); at != std::string::npos; at = text.find(form)) {
        text.replace(at, form.size(), "<key>");
      }
    }
  }
  return text;
}

// A status as the client received it, whole (code, message, every payload such as the
// ErrorInfo with its reason), with the keys replaced.
std::string Shape(const absl::Status& s, std::span<const BlockKey> keys) {
  std::string out = StrCat(static_cast<int>(s.code()), "|", s.message());
  s.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
    out += StrCat("|", std::string(url), "=", std::string(payload));
  });
  return WithoutKeys(out, keys);
}

// Issue #18 item 3 over the wire: for a key tenant A holds, tenant B's LookupBlocks,
// PinBlocks, ReadPages and WritePages answer exactly what they answer for a key nobody holds
// (compared whole, message and reason included); B's write is stored as B's own page, and
// writing first under A's root key keeps nothing of A's out of the cache.
TEST_F(PageStoreTest, AKeyAnotherTenantHoldsIsAMissOverTheWire) {
  const std::vector<TestPage> a = Chain(60, Tenant("acme"), 2);
  ASSERT_EQ(Write("tok-a", a), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  const std::vector<BlockKey> held = Keys(a), never = Keys(Chain(61, Tenant("acme"), 2));
  const std::vector<BlockKey> all = {held[0], held[1], never[0], never[1]};
  PageStoreClient b = Client("tok-b");

  auto look_held = b.Lookup(held);
  auto look_never = b.Lookup(never);
  ASSERT_TRUE(look_held.ok() && look_never.ok());
  EXPECT_EQ(look_held->prefix_blocks(), 0u);
  EXPECT_EQ(WithoutKeys(look_held->SerializeAsString(), all),
            WithoutKeys(look_never->SerializeAsString(), all));
  auto pin_held = b.Pin(held);
  auto pin_never = b.Pin(never);
  ASSERT_TRUE(pin_held.ok() && pin_never.ok());
  EXPECT_EQ(pin_held->lease_id, pin_never->lease_id);
  EXPECT_TRUE(pin_held->pinned.empty() && pin_never->pinned.empty());
  EXPECT_EQ(pin_held->missing, held);
  EXPECT_EQ(pin_never->missing, never);
  auto read_held = b.ReadPages(held);
  auto read_never = b.ReadPages(never);
  ASSERT_TRUE(read_held.ok() && read_never.ok());
  ASSERT_EQ(read_held->size(), read_never->size());
  for (size_t i = 0; i < read_held->size(); ++i) {
    const absl::Status h = (*read_held)[i].page.status(), n = (*read_never)[i].page.status();
    EXPECT_TRUE(absl::IsNotFound(h)) << h;
    EXPECT_NE(Shape(h, all).find("NOT_CACHED"), std::string::npos) << Shape(h, all);
    EXPECT_EQ(Shape(h, all), Shape(n, all));
  }

  // B writes its own bytes under A's keys and under a key nobody holds: the same answers.
  const std::vector<uint8_t> b0 = ForeignPage(held[0], BlockKey::Zero(), 62);
  const std::vector<uint8_t> b1 = ForeignPage(held[1], held[0], 63);
  const std::vector<uint8_t> n0 = ForeignPage(never[0], BlockKey::Zero(), 64);
  const std::vector<PageStoreClient::PageToWrite> pages = {
      {held[0], b0}, {never[0], n0}, {held[1], b1}};
  auto wrote = b.WritePages(Options(), pages);
  ASSERT_TRUE(wrote.ok()) << wrote.status();
  ASSERT_EQ(wrote->size(), 3u);
  for (const PageStoreClient::WriteResult& r : *wrote) {
    EXPECT_EQ(r.outcome, pb::WRITE_OUTCOME_STORED) << r.key.Hex() << " " << r.error;
    EXPECT_TRUE(r.error.ok()) << r.error;
  }
  // Each tenant reads its own bytes.
  EXPECT_EQ(ReadOne("tok-b", held[0]).value_or("<not read>"), Str(b0));
  EXPECT_EQ(ReadOne("tok-b", held[1]).value_or("<not read>"), Str(b1));
  EXPECT_EQ(ReadOne("tok-a", held[0]).value_or("<not read>"), Str(a[0].bytes));
  EXPECT_EQ(ReadOne("tok-a", held[1]).value_or("<not read>"), Str(a[1].bytes));
  auto look = Client("tok-a").Lookup(held);
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->prefix_blocks(), 2u);

  // Cache denial: B writes first under the root key of a prompt A has not sent yet.
  const std::vector<TestPage> c = Chain(65, Tenant("acme"), 3);
  const std::vector<uint8_t> squat = ForeignPage(c[0].meta.key, BlockKey::Zero(), 66);
  const std::vector<PageStoreClient::PageToWrite> first = {{c[0].meta.key, squat}};
  wrote = b.WritePages(Options(), first);
  ASSERT_TRUE(wrote.ok());
  EXPECT_EQ((*wrote)[0].outcome, pb::WRITE_OUTCOME_STORED);
  EXPECT_EQ(Write("tok-a", c), std::vector<pb::WriteOutcome>(3, pb::WRITE_OUTCOME_STORED));
  auto pin = Client("tok-a").Pin(Keys(c));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->pinned, Keys(c));
  auto read = Client("tok-a").ReadPages(Keys(c), pin->lease_id);
  ASSERT_TRUE(read.ok()) << read.status();
  for (size_t i = 0; i < c.size(); ++i) {
    ASSERT_TRUE((*read)[i].page.ok()) << (*read)[i].page.status();
    EXPECT_EQ(*(*read)[i].page, Str(c[i].bytes));
  }
  EXPECT_EQ(ReadOne("tok-b", c[0].meta.key).value_or("<not read>"), Str(squat));
  EXPECT_EQ(Rejected("namespace_conflict"), 0);
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
                           [&](const PageMeta& m) { return m.header_key() == chain[i].meta.key; });
    ASSERT_NE(it, metas->end());
    EXPECT_EQ(it->key, StorageKey("tenant:acme", chain[i].meta.key));  // acme's copy
    EXPECT_EQ(it->resume_role, roles[i]) << "page " << i << ": " << PageRoleName(it->resume_role);
  }
}

}  // namespace
}  // namespace kv::cluster
