#include "cluster/tenants.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "cluster/proto_convert.h"

namespace kv::cluster {
namespace {

TEST(TenantAuthTest, MapsBearerTokensToTenants) {
  auto a = TenantAuth::Parse("tok-a: acme\ntok-b: globex\n", "test");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->requires_token());
  EXPECT_EQ(a->num_tokens(), 2u);
  EXPECT_EQ(*a->Authenticate("Bearer tok-a"), "acme");
  EXPECT_EQ(*a->Authenticate("Bearer tok-b"), "globex");
  EXPECT_EQ(a->Authenticate(std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a->Authenticate("Bearer nope").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a->Authenticate("tok-a").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a->Authenticate("Basic tok-a").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a->Authenticate("Bearer ").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(TenantAuthTest, SingleTenantAcceptsEveryCall) {
  TenantAuth a = TenantAuth::SingleTenant("default");
  EXPECT_FALSE(a.requires_token());
  EXPECT_EQ(*a.Authenticate(std::nullopt), "default");
  EXPECT_EQ(*a.Authenticate("Bearer whatever"), "default");
}

TEST(TenantAuthTest, BadFilesAreClearErrors) {
  EXPECT_EQ(TenantAuth::Parse("[a, b]", "f").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TenantAuth::Parse("a: [1]", "f").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TenantAuth::Parse("{", "f").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TenantAuth::Parse("{}", "f").status().code(), absl::StatusCode::kInvalidArgument);
  auto dup = TenantAuth::Parse("a: x\na: y\n", "f");
  EXPECT_FALSE(dup.ok());
  EXPECT_EQ(TenantAuth::Parse("tok: ''", "f").status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = TenantAuth::LoadFile("/nonexistent/tokens.yaml");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find("/nonexistent/tokens.yaml"),
            std::string::npos);
}

TEST(TenantAuthTest, NodeCredentialActsForTheTenantHeader) {
  auto a = TenantAuth::Parse("tok-a: acme\ntok-b: globex\n", "test");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->SetServiceToken("svc").ok());
  auto node = a->Identify("Bearer svc", "globex");
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ(node->tenant, "globex");
  EXPECT_TRUE(node->node);
  auto tenant = a->Identify("Bearer tok-a", std::nullopt);
  ASSERT_TRUE(tenant.ok()) << tenant.status();
  EXPECT_EQ(tenant->tenant, "acme");
  EXPECT_FALSE(tenant->node);
  // The tenant header is honoured only with the node credential.
  EXPECT_EQ(a->Identify("Bearer tok-a", "globex").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a->Identify("Bearer tok-a", "acme").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a->Identify(std::nullopt, "acme").status().code(), absl::StatusCode::kUnauthenticated);
  // The node credential must name a valid tenant.
  EXPECT_EQ(a->Identify("Bearer svc", std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a->Identify("Bearer svc", "").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a->Identify("Bearer svc", std::string(300, 'x')).status().code(),
            absl::StatusCode::kUnauthenticated);
  // The service token is not a tenant token.
  EXPECT_EQ(a->Authenticate("Bearer svc").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_FALSE(a->SetServiceToken("tok-a").ok());
  EXPECT_FALSE(a->SetServiceToken("").ok());
}

TEST(TenantAuthTest, WithoutTokensFileEveryCallerIsANode) {
  TenantAuth a = TenantAuth::SingleTenant("default");
  auto id = a.Identify(std::nullopt, std::nullopt);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->tenant, "default");
  EXPECT_TRUE(id->node);
  EXPECT_TRUE(a.Identify(std::nullopt, "default").ok());
  EXPECT_EQ(a.Identify(std::nullopt, "acme").status().code(), absl::StatusCode::kPermissionDenied);
}

TEST(TenantAuthTest, ServiceTokenFiles) {
  const std::string dir = ::testing::TempDir();
  const std::string good = dir + "/svc-good", empty = dir + "/svc-empty",
                    spaced = dir + "/svc-spaced", clash = dir + "/tokens-clash.yaml";
  std::ofstream(good) << "  s3rvice-t0ken  \n";
  std::ofstream(empty) << "\n";
  std::ofstream(spaced) << "two words\n";
  std::ofstream(clash) << "s3rvice-t0ken: acme\n";
  auto token = LoadServiceToken(good);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "s3rvice-t0ken");
  EXPECT_EQ(LoadServiceToken(empty).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(LoadServiceToken(empty).status().message().find(empty), std::string_view::npos);
  EXPECT_EQ(LoadServiceToken(spaced).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadServiceToken(dir + "/none").status().code(), absl::StatusCode::kNotFound);
  auto auth = LoadTenantAuth("", good);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(auth->has_service_token());
  EXPECT_FALSE(LoadTenantAuth(clash, good).ok());  // a tenant token cannot be the node's
}

TEST(Utf8AssemblerTest, HoldsBackIncompleteAndReplacesInvalid) {
  Utf8Assembler u;
  EXPECT_EQ(u.Add('h'), "h");
  EXPECT_EQ(u.Add(0xC3), "");  // first byte of "é"
  EXPECT_EQ(u.Add(0xA9), "\xC3\xA9");
  EXPECT_EQ(u.Add(0xFF), "\xEF\xBF\xBD");  // never valid
  EXPECT_EQ(u.Add(0xE2), "");
  EXPECT_EQ(u.Add('x'), "\xEF\xBF\xBDx");  // broken sequence, then x
  EXPECT_EQ(u.Add(0xF0), "");
  EXPECT_EQ(u.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(u.Add(257), "<|eos|>");
}

}  // namespace
}  // namespace kv::cluster
