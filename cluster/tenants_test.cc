#include "cluster/tenants.h"

#include <gtest/gtest.h>

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
