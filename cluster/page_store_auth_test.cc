// PageStoreService and the node credential (issue #18 item 1; docs/serving.md "Security
// model"): a tenant token keeps its own namespace and may read shared pages, but a write in the
// shared namespace and GetNodeStats need the node credential, which acts for the tenant named
// in `x-kvstrata-tenant`; a tenant token cannot borrow that header.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cluster/page_store_service_testing.h"

namespace kv::cluster {
namespace {

using namespace pagestore_testing;  // NOLINT: test helpers

// The poisoning write of issue #18: a tenant reads the shared keys, then writes pages under
// them in the shared namespace with valid checksums but other bytes.
TEST_F(PageStoreTest, TenantTokenCannotWriteTheSharedNamespace) {
  auto shared = Chain(40, KeyNamespace::Shared(), 2);
  ASSERT_EQ(NodeWrite("acme", shared, /*shared=*/true),
            std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  // globex may read the shared keys and pages...
  PageStoreClient b = Client("tok-b");
  auto look = b.Lookup(Keys(shared));
  ASSERT_TRUE(look.ok()) << look.status();
  EXPECT_EQ(look->prefix_blocks(), 2u);
  EXPECT_EQ(*ReadOne("tok-b", shared[1].meta.key), Str(shared[1].bytes));
  // ... but not write there.
  auto foreign = Chain(41, KeyNamespace::Shared(), 2);
  std::vector<PageStoreClient::PageToWrite> in;
  for (const auto& p : foreign) in.push_back({p.meta.key, p.bytes});
  auto w = b.WritePages(Options(/*shared=*/true), in);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kPermissionDenied) << w.status();
  EXPECT_NE(w.status().message().find("need a node credential"), std::string_view::npos);
  auto gone = Client("tok-a").Lookup(Keys(foreign));
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(gone->prefix_blocks(), 0u) << "a tenant token stored shared pages";
  // The staged (RMA) write is held to the same rule, before anything else is checked.
  pb::SealStagedRequest seal;
  seal.set_lease_id("any");
  *seal.mutable_options() = Options(/*shared=*/true);
  EXPECT_EQ(b.SealStaged(seal).status().code(), absl::StatusCode::kPermissionDenied);
  // A tenant's own namespace stays writable with its token (engines use it).
  EXPECT_EQ(Write("tok-b", Chain(42, Tenant("globex"), 1)),
            std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_STORED});
}

TEST_F(PageStoreTest, NodeCredentialActsForTheNamedTenantOnly) {
  auto a_chain = Chain(43, Tenant("acme"), 2);
  auto b_chain = Chain(44, Tenant("globex"), 1);
  ASSERT_EQ(Write("tok-a", a_chain), std::vector<pb::WriteOutcome>(2, pb::WRITE_OUTCOME_STORED));
  ASSERT_EQ(Write("tok-b", b_chain), std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_STORED});
  PageStoreClient as_acme = Node("acme");
  auto mine = as_acme.Lookup(Keys(a_chain));
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(mine->prefix_blocks(), 2u);
  auto theirs = as_acme.Lookup(Keys(b_chain));
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_EQ(theirs->prefix_blocks(), 0u) << "the node credential for acme saw globex's page";
  auto read = as_acme.ReadPages(Keys(b_chain));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE((*read)[0].page.ok());
  // Without a tenant header the node credential is refused.
  EXPECT_EQ(Client(kServiceToken).Lookup(Keys(a_chain)).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(PageStoreTest, TenantTokenWithAForgedTenantHeaderIsRefused) {
  auto a_chain = Chain(45, Tenant("acme"), 1);
  ASSERT_EQ(Write("tok-a", a_chain), std::vector<pb::WriteOutcome>{pb::WRITE_OUTCOME_STORED});
  PageStoreClient forged = Client("tok-b", "acme");
  EXPECT_EQ(forged.Lookup(Keys(a_chain)).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(forged.ReadPages(Keys(a_chain)).status().code(), absl::StatusCode::kPermissionDenied);
  std::vector<PageStoreClient::PageToWrite> in{{a_chain[0].meta.key, a_chain[0].bytes}};
  EXPECT_EQ(forged.WritePages(Options(/*shared=*/true), in).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(PageStoreTest, GetNodeStatsNeedsTheNodeCredential) {
  auto stats = [&](const std::string& token, const std::string& tenant) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    AddNodeCredential(&ctx, token, tenant);
    pb::NodeStats out;
    return FromGrpcStatus(stub_->GetNodeStats(&ctx, pb::GetNodeStatsRequest(), &out));
  };
  EXPECT_EQ(stats("tok-a", "").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(stats(kServiceToken, "acme").ok());
}

}  // namespace
}  // namespace kv::cluster
