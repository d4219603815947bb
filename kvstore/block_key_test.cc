#include "kvstore/block_key.h"

#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kv {
namespace {

using ::testing::HasSubstr;

nlohmann::json LoadVectors() {
  std::ifstream in("testdata/block_key_vectors.json");
  EXPECT_TRUE(in.good()) << "cannot open testdata/block_key_vectors.json (run from kvstore/)";
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

Digest256 DigestFromHex(const std::string& hex) {
  auto k = BlockKey::FromHex(hex);
  EXPECT_TRUE(k.ok()) << k.status();
  return k.ok() ? k->bytes : Digest256{};
}

KeyParams ParamsFromJson(const nlohmann::json& v) {
  KeyParams p;
  p.model_fingerprint = DigestFromHex(v["model_fingerprint"]);
  p.layout_id = v["layout"];
  p.page_tokens = v["page_tokens"];
  auto ns = KeyNamespace::Parse(v["namespace"].get<std::string>());
  EXPECT_TRUE(ns.ok()) << ns.status();
  if (ns.ok()) p.ns = *ns;
  return p;
}

TEST(BlockKeyVectors, MatchIndependentImplementation) {
  nlohmann::json doc = LoadVectors();
  ASSERT_TRUE(doc.contains("vectors"));
  ASSERT_GE(doc["vectors"].size(), 9u);
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    KeyParams p = ParamsFromJson(v);
    std::vector<uint32_t> tokens = v["tokens"].get<std::vector<uint32_t>>();
    std::optional<BlockKey> parent;
    if (!v["parent"].is_null()) parent = BlockKey{DigestFromHex(v["parent"])};
    auto keys = DeriveBlockKeys(p, tokens, parent);
    ASSERT_TRUE(keys.ok()) << keys.status();
    std::vector<std::string> got;
    for (const auto& k : *keys) got.push_back(k.Hex());
    EXPECT_EQ(got, v["keys"].get<std::vector<std::string>>());
    EXPECT_FALSE(got.empty());
    if (v.contains("block0_preimage")) {
      auto pre = BlockKeyPreimage(p, BlockKey::Zero(), std::span(tokens).first(p.page_tokens));
      ASSERT_TRUE(pre.ok()) << pre.status();
      EXPECT_EQ(ToHex(pre->data(), pre->size()), v["block0_preimage"].get<std::string>());
      EXPECT_EQ(Sha256Of(*pre), (*keys)[0].bytes);
    }
  }
}

class BlockKeyProperties : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    std::mt19937 rng(seed_);
    std::uniform_int_distribution<uint32_t> dist(0, UINT32_MAX);
    tokens_.resize(5 * 64 + 17);
    for (auto& t : tokens_) t = dist(rng);
    params_.model_fingerprint = Sha256Of("model");
    params_.layout_id = "mla-fp8-656";
    params_.page_tokens = 64;
    params_.ns = *KeyNamespace::Tenant("acme");
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "random seed was %u\n", seed_);
  }
  std::vector<BlockKey> Keys(const KeyParams& p) {
    auto k = DeriveBlockKeys(p, tokens_);
    EXPECT_TRUE(k.ok()) << k.status();
    return k.ok() ? *k : std::vector<BlockKey>{};
  }
  // Every key of `a` differs from every key of `b`.
  void ExpectDisjoint(const std::vector<BlockKey>& a, const std::vector<BlockKey>& b) {
    ASSERT_FALSE(a.empty());
    absl::flat_hash_set<BlockKey> set(a.begin(), a.end());
    for (const auto& k : b) EXPECT_FALSE(set.contains(k)) << "seed " << seed_;
  }
  uint32_t seed_;
  std::vector<uint32_t> tokens_;
  KeyParams params_;
};

TEST_F(BlockKeyProperties, OneKeyPerFullBlockAndPartialBlockIgnored) {
  std::vector<BlockKey> all = Keys(params_);
  ASSERT_EQ(all.size(), 5u) << "seed " << seed_;
  // Dropping the 17-token partial block changes nothing.
  auto trimmed = DeriveBlockKeys(params_, std::span(tokens_).first(5 * 64));
  ASSERT_TRUE(trimmed.ok());
  EXPECT_EQ(*trimmed, all);
  // A prefix's keys are the first keys of the whole.
  auto prefix = DeriveBlockKeys(params_, std::span(tokens_).first(2 * 64 + 5));
  ASSERT_TRUE(prefix.ok());
  ASSERT_EQ(prefix->size(), 2u);
  EXPECT_EQ((*prefix)[0], all[0]);
  EXPECT_EQ((*prefix)[1], all[1]);
  // Fewer tokens than a block: no keys.
  auto none = DeriveBlockKeys(params_, std::span(tokens_).first(63));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(BlockKeyProperties, ContinuingAChainMatchesTheWholeChain) {
  std::vector<BlockKey> all = Keys(params_);
  auto rest = DeriveBlockKeys(params_, std::span(tokens_).subspan(2 * 64), all[1]);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->size(), 3u);
  EXPECT_TRUE(std::equal(rest->begin(), rest->end(), all.begin() + 2)) << "seed " << seed_;
  // Same tokens under a different parent: all keys differ.
  auto other = DeriveBlockKeys(params_, std::span(tokens_).subspan(2 * 64), all[0]);
  ASSERT_TRUE(other.ok());
  ExpectDisjoint(*rest, *other);
}

TEST_F(BlockKeyProperties, EveryParameterSeparatesKeys) {
  std::vector<BlockKey> base = Keys(params_);
  KeyParams p = params_;
  p.ns = KeyNamespace::Shared();
  std::vector<BlockKey> shared = Keys(p);
  ExpectDisjoint(base, shared);
  p.ns = *KeyNamespace::Tenant("shared");  // a tenant called "shared" is not `shared`
  ExpectDisjoint(shared, Keys(p));
  ExpectDisjoint(base, Keys(p));
  p.ns = *KeyNamespace::Tenant("globex");
  ExpectDisjoint(base, Keys(p));
  p = params_;
  p.model_fingerprint[31] ^= 1;
  ExpectDisjoint(base, Keys(p));
  p = params_;
  p.layout_id = "mla-bf16-1152";
  ExpectDisjoint(base, Keys(p));
  p = params_;
  p.page_tokens = 32;
  ExpectDisjoint(base, Keys(p));
  // Changing one token changes that block's key and every later one, not earlier ones.
  std::vector<uint32_t> t = tokens_;
  t[3 * 64 + 7] ^= 0x10000;
  auto changed = DeriveBlockKeys(params_, t);
  ASSERT_TRUE(changed.ok());
  EXPECT_EQ((*changed)[2], base[2]);
  EXPECT_NE((*changed)[3], base[3]) << "seed " << seed_;
  EXPECT_NE((*changed)[4], base[4]) << "seed " << seed_;
}

TEST(BlockKey, InvalidParamsAreRejected) {
  KeyParams p;
  p.layout_id = "mla-fp8-656";
  p.page_tokens = 64;
  std::vector<uint32_t> t(64, 7);
  // An unset namespace is refused, never silently treated as shared.
  EXPECT_FALSE(p.ns.is_set());
  EXPECT_THAT(DeriveBlockKeys(p, t).status().ToString(), HasSubstr("namespace is not set"));
  p.ns = *KeyNamespace::Tenant("acme");
  p.page_tokens = 0;
  auto s = DeriveBlockKeys(p, t).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.ToString(), HasSubstr("page_tokens"));
  p.page_tokens = kMaxKeyPageTokens + 1;
  EXPECT_THAT(DeriveBlockKeys(p, t).status().ToString(), HasSubstr("page_tokens"));
  p.page_tokens = 64;
  p.layout_id = "";
  EXPECT_THAT(DeriveBlockKeys(p, t).status().ToString(), HasSubstr("layout id"));
  p.layout_id = std::string(kMaxLayoutIdBytes + 1, 'x');
  EXPECT_THAT(DeriveBlockKeys(p, t).status().ToString(), HasSubstr("layout id"));
  EXPECT_THAT(BlockKeyPreimage(p, BlockKey::Zero(), t).status().ToString(), HasSubstr("layout id"));
}

TEST(BlockKey, NamespaceParsing) {
  EXPECT_TRUE(KeyNamespace::Parse("shared")->is_shared());
  auto named = KeyNamespace::Parse("tenant:shared");
  ASSERT_TRUE(named.ok());
  EXPECT_FALSE(named->is_shared());
  EXPECT_EQ(named->tenant(), "shared");
  EXPECT_EQ(named->Encoded(), "t:shared");
  EXPECT_EQ(KeyNamespace::Shared().Encoded(), "s:");
  EXPECT_EQ(KeyNamespace::Parse("acme")->ToString(), "tenant:acme");
  EXPECT_EQ(*KeyNamespace::Parse(KeyNamespace::Parse("acme")->ToString()),
            *KeyNamespace::Tenant("acme"));
  EXPECT_EQ(KeyNamespace::Parse("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(KeyNamespace::Parse("tenant:").status().ToString(), HasSubstr("empty"));
  EXPECT_THAT(
      KeyNamespace::Tenant(std::string(KeyNamespace::kMaxTenantBytes + 1, 'a')).status().ToString(),
      HasSubstr("limit"));
}

TEST(BlockKey, TokenIdsMustFitU32) {
  std::vector<int64_t> ok = {0, 1, int64_t{1} << 24, int64_t{UINT32_MAX}};
  auto ids = ToTokenIds(ok);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ((*ids)[3], UINT32_MAX);
  std::vector<int64_t> too_big = {5, int64_t{1} << 32};
  EXPECT_THAT(ToTokenIds(too_big).status().ToString(), HasSubstr("index 1"));
  std::vector<int64_t> negative = {-1};
  EXPECT_THAT(ToTokenIds(negative).status().ToString(), HasSubstr("index 0 is -1"));
}

TEST(BlockKey, HexRoundTripAndErrors) {
  BlockKey k{Sha256Of("x")};
  auto back = BlockKey::FromHex(k.Hex());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, k);
  EXPECT_FALSE(k.IsZero());
  EXPECT_TRUE(BlockKey::Zero().IsZero());
  EXPECT_THAT(BlockKey::FromHex("abcd").status().ToString(), HasSubstr("64 hex"));
  EXPECT_THAT(BlockKey::FromHex(std::string(64, 'g')).status().ToString(), HasSubstr("not hex"));
}

}  // namespace
}  // namespace kv
