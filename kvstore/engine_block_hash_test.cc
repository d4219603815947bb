#include "kvstore/engine_block_hash.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_key.h"

namespace kv {
namespace {

using ::testing::HasSubstr;

// Vectors computed with Python: hashlib.sha256(cbor2.dumps(x, canonical=True)) (cbor2 5.4.6),
// x = (NONE_HASH, (23, 24, 255, 256, 65535, 65536, 2**32, 0), extra_keys), seed "0".
constexpr char kNoneHash0[] = "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e";
constexpr char kBlock0Preimage[] =
    "8358204e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e8817181818ff190100"
    "19ffff1a000100001b000000010000000000f6";
constexpr char kBlock0Hash[] = "440c60a0f5cadbe11977133061744123c33fd490fc3c8047143bd925a68e3d3c";
constexpr char kBlock1Hash[] = "2279cbef4d7606abf2f08138df810d9f4e66154de824f4f4c633353a814bdacf";
// extra_keys = ("my-lora", ("img", 3), "salt")
constexpr char kBlock0ExtrasPreimage[] =
    "8358204e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e8817181818ff190100"
    "19ffff1a000100001b00000001000000000083676d792d6c6f72618263696d67036473616c74";

const std::vector<int64_t> kBoundary = {23, 24, 255, 256, 65535, 65536, int64_t{1} << 32, 0};

std::vector<int64_t> TwoBlocks() {
  std::vector<int64_t> t = kBoundary;
  for (int64_t i = 1; i <= 8; ++i) t.push_back(i);
  t.push_back(99);  // a partial trailing block: no hash
  return t;
}

EngineHashParams Params8() {
  EngineHashParams p;
  p.seed = "0";
  p.block_size = 8;
  return p;
}

std::string Hex(const std::string& s) { return ToHex(s.data(), s.size()); }

TEST(EngineBlockHash, NoneHashIsSha256OfTheSeedAsCborText) {
  auto h = EngineNoneHash("0");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(ToHex(*h), kNoneHash0);
  EXPECT_NE(ToHex(*EngineNoneHash("1")), kNoneHash0);
}

TEST(EngineBlockHash, MatchesCbor2VectorsAtIntegerWidthBoundaries) {
  const std::vector<int64_t> t = TwoBlocks();
  auto pre = EngineBlockPreimage(Params8(), t, {}, 0);
  ASSERT_TRUE(pre.ok()) << pre.status();
  EXPECT_EQ(Hex(*pre), kBlock0Preimage);
  auto hashes = EngineBlockHashes(Params8(), t);
  ASSERT_TRUE(hashes.ok()) << hashes.status();
  ASSERT_EQ(hashes->size(), 2u);  // the 17th token is a partial block
  EXPECT_EQ(ToHex((*hashes)[0]), kBlock0Hash);
  EXPECT_EQ(ToHex((*hashes)[1]), kBlock1Hash);
}

TEST(EngineBlockHash, ExtraKeysInVllmOrder) {
  EngineHashExtras x;
  x.lora_name = "my-lora";
  x.cache_salt = "salt";
  x.mm_items.push_back({"img", 3, 2});
  auto pre = EngineBlockPreimage(Params8(), kBoundary, x, 0);
  ASSERT_TRUE(pre.ok()) << pre.status();
  EXPECT_EQ(Hex(*pre), kBlock0ExtrasPreimage);
}

TEST(EngineBlockHash, SaltOnlyOnTheFirstBlockAndMmOffsetsRelative) {
  EngineHashExtras x;
  x.cache_salt = "s";
  x.mm_items.push_back({"a", 6, 4});  // spans blocks 0 and 1: offsets 6 and -2
  const std::vector<int64_t> t = TwoBlocks();
  auto p1 = EngineBlockPreimage(Params8(), t, x, 1);
  ASSERT_TRUE(p1.ok()) << p1.status();
  // ... 0x81 [ 0x82 "a" -2 ]: one extra key, no salt.
  EXPECT_THAT(Hex(*p1), ::testing::EndsWith("8182616121"));
  auto p0 = EngineBlockPreimage(Params8(), t, x, 0);
  ASSERT_TRUE(p0.ok());
  EXPECT_THAT(Hex(*p0), ::testing::EndsWith("82826161066173"));  // [("a", 6), "s"]
}

TEST(EngineBlockHash, ContinuingAChainEqualsHashingTheWholePrompt) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < 40; ++i) t.push_back(i * 7919);
  EngineHashExtras x;
  x.mm_items.push_back({"m", 12, 10});
  auto all = EngineBlockHashes(Params8(), t, x);
  ASSERT_TRUE(all.ok());
  EngineHashParams p = Params8();
  p.start_token = 16;
  p.parent = (*all)[1];
  auto tail = EngineBlockHashes(p, std::span<const int64_t>(t).subspan(16), x);
  ASSERT_TRUE(tail.ok()) << tail.status();
  EXPECT_EQ(*tail, std::vector<Digest256>(all->begin() + 2, all->end()));
}

TEST(EngineBlockHash, RefusesBadInputByName) {
  std::vector<int64_t> t = kBoundary;
  t[5] = -1;
  auto h = EngineBlockHashes(Params8(), t);
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(h.status().message(), HasSubstr("index 5 is -1"));

  EngineHashExtras x;
  x.prompt_embed_hashes.resize(2);
  EXPECT_THAT(EngineBlockHashes(Params8(), kBoundary, x).status().message(),
              HasSubstr("2 prompt-embedding hashes for 1 full blocks"));
  EngineHashExtras overlap;
  overlap.mm_items = {{"a", 0, 4}, {"b", 2, 4}};
  EXPECT_THAT(EngineBlockHashes(Params8(), kBoundary, overlap).status().message(),
              HasSubstr("multimodal item 1"));
  EngineHashParams cont = Params8();
  cont.start_token = 8;
  EXPECT_THAT(EngineBlockHashes(cont, kBoundary).status().message(), HasSubstr("parent"));
  EngineHashParams bad_seed = Params8();
  bad_seed.seed = "\xc3(";
  EXPECT_THAT(EngineBlockHashes(bad_seed, kBoundary).status().message(), HasSubstr("UTF-8"));
}

KeyParams EngineKeyParams() {
  KeyParams p;
  p.model_fingerprint = Sha256Of("model");
  p.layout_id = "gqa-bf16";
  p.page_tokens = 8;
  p.ns = *KeyNamespace::Tenant("acme");
  p.chain = KeyChain::kVllmSha256Cbor;
  p.engine_hash_seed = "0";
  return p;
}

TEST(EngineChainKeys, BindModelLayoutAndNamespace) {
  const KeyParams p = EngineKeyParams();
  auto engine = EngineBlockHashes(Params8(), TwoBlocks());
  ASSERT_TRUE(engine.ok());
  auto keys = DeriveBlockKeysFromEngineHashes(p, *engine);
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 2u);
  KeyParams other = p;
  other.ns = KeyNamespace::Shared();
  EXPECT_NE((*DeriveBlockKeysFromEngineHashes(other, *engine))[0], (*keys)[0]);
  other = p;
  other.model_fingerprint = Sha256Of("other model");
  EXPECT_NE((*DeriveBlockKeysFromEngineHashes(other, *engine))[0], (*keys)[0]);
  other = p;
  other.layout_id = "gqa-fp8";
  EXPECT_NE((*DeriveBlockKeysFromEngineHashes(other, *engine))[0], (*keys)[0]);
  // The key chains over its parent key: the preimage ends with F(key(0)) ‖ F(engine(1)).
  auto pre = EngineChainKeyPreimage(p, (*keys)[0], (*engine)[1]);
  ASSERT_TRUE(pre.ok());
  EXPECT_EQ(Sha256Of(*pre), (*keys)[1].bytes);
  EXPECT_THAT(*pre, HasSubstr("kvstrata/block/vllm-sha256-cbor/v1"));
}

TEST(EngineChainKeys, TokensThroughKeyParamsEqualEngineHashes) {
  // Generate's path (DeriveBlockKeys / DeriveRequestKeys on a vllm-sha256-cbor key space)
  // gives the same keys as an engine that sends its own hashes.
  const KeyParams p = EngineKeyParams();
  std::vector<int64_t> wide = TwoBlocks();
  wide[6] = 7;  // DeriveBlockKeys takes u32 tokens
  std::vector<uint32_t> narrow(wide.begin(), wide.end());
  auto engine = EngineBlockHashes(Params8(), wide);
  ASSERT_TRUE(engine.ok());
  auto from_engine = DeriveBlockKeysFromEngineHashes(p, *engine);
  auto from_tokens = DeriveBlockKeys(p, narrow);
  ASSERT_TRUE(from_tokens.ok()) << from_tokens.status();
  EXPECT_EQ(*from_tokens, *from_engine);
  KeyParams plain = p;
  plain.chain = KeyChain::kTokens;
  EXPECT_NE(*DeriveBlockKeys(plain, narrow), *from_engine);

  std::vector<int32_t> prompt(wide.begin(), wide.end());
  std::vector<std::string> ns;
  auto req = DeriveRequestKeys(p, prompt, "acme", /*shared_tokens=*/8, &ns);
  ASSERT_TRUE(req.ok()) << req.status();
  KeyParams shared = p;
  shared.ns = KeyNamespace::Shared();
  auto first = DeriveBlockKeysFromEngineHashes(shared, std::span(*engine).first(1));
  auto second = DeriveBlockKeysFromEngineHashes(p, std::span(*engine).subspan(1), (*first)[0]);
  EXPECT_EQ(*req, (std::vector<BlockKey>{(*first)[0], (*second)[0]}));
  EXPECT_EQ(ns, (std::vector<std::string>{"shared", "tenant:acme"}));

  EXPECT_THAT(DeriveBlockKeys(p, narrow, BlockKey::Zero()).status().message(),
              HasSubstr("DeriveBlockKeysFromEngineHashes"));
  EXPECT_EQ(*ParseKeyChain(KeyChainName(KeyChain::kVllmSha256Cbor)), KeyChain::kVllmSha256Cbor);
  EXPECT_FALSE(ParseKeyChain("sha256").ok());
}

}  // namespace
}  // namespace kv
