// PageStoreService over the wire: tenant isolation, leases (extension, expiry, mid-stream
// expiry, partial unpin, the per-tenant bound) and concurrent tenants, as a client sees them.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "cluster/page_store_service_testing.h"

namespace kv::cluster {
namespace {

using namespace pagestore_testing;  // NOLINT: test helpers

TEST_F(PageStoreTest, TenantsAreIsolatedAndSharedPagesVisibleToAll) {
  auto a_chain = Chain(8, Tenant("acme"), 2);
  auto shared = Chain(9, KeyNamespace::Shared(), 2);
  ASSERT_EQ(Write("tok-a", a_chain), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  ASSERT_EQ(NodeWrite("acme", shared, /*shared=*/true),
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

  // globex cannot write into acme's namespace: a write of acme's exact page stores globex's
  // own copy (page_store_service_test: AKeyAnotherTenantHoldsIsAMissOverTheWire) ...
  auto w = Write("tok-b", {a_chain[0]});
  EXPECT_EQ(w, std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_STORED});
  // ... nor a page continuing acme's chain, in its own or the shared namespace.
  auto b_after_a = Chain(12, Tenant("globex"), 1, a_chain.back().meta.key);
  EXPECT_EQ(Write("tok-b", b_after_a), std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_REJECTED});
  auto s_after_a = Chain(13, KeyNamespace::Shared(), 1, a_chain.back().meta.key);
  EXPECT_EQ(NodeWrite("acme", s_after_a, true),
            std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_REJECTED});
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

}  // namespace
}  // namespace kv::cluster
