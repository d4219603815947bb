// The embedded serving path (router -> prefill worker -> in-process handoff -> decode
// session, page pool over the node's store) over the real tiny-v3 model and the real tiered
// store (device + host slab tiers, nvme on RocksDB in a temp dir). These are the former
// prefill::Engine tests, moved with the code and keeping their assertions.
#include "cluster/embedded_cluster.h"
#include "model/test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "kvstore/engine_block_hash.h"
#include "kvstore/page_store.h"
#include "model/generate.h"
#include "model/tokenizer.h"

namespace kv::cluster {
namespace {

std::vector<int32_t> Text(const std::string& s) {
  return model::ByteTokenizer::Encode(s, /*add_bos=*/false, /*parse_specials=*/true);
}

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

class EmbeddedClusterTest : public ::testing::Test {
 protected:
  void Open(const std::string& layout) {
    dir_ = model::testing::FreshTempDir("engine");
    NodeOptions o;
    o.data_dir = dir_;
    o.kv_layout = layout;
    o.device_bytes = 8ull << 20;
    o.host_bytes = 16ull << 20;
    o.nvme_bytes = 1ull << 30;
    o.slab_bytes = 1ull << 20;
    o.metrics = &metrics_;
    o.key_chain = key_chain_;
    o.engine_hash_seed = engine_hash_seed_;
    auto node = EmbeddedCluster::Open({.node = o});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
  }
  void TearDown() override {
    node_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  GenerateRequest Req(std::vector<int32_t> prompt, const std::string& tenant = "acme") {
    GenerateRequest r;
    r.prompt = std::move(prompt);
    r.tenant = tenant;
    r.max_tokens = 24;
    r.ignore_eos = true;
    r.session_id = "s1";
    return r;
  }
  GenerateResult Gen(const GenerateRequest& r) {
    auto res = node_->Generate(r);
    EXPECT_TRUE(res.ok()) << res.status();
    node_->WaitIdle();  // write-back published before the next request
    return res.ok() ? *res : GenerateResult{};
  }

  MetricsRegistry metrics_;
  KeyChain key_chain_ = KeyChain::kTokens;
  std::string engine_hash_seed_;
  std::string dir_;
  // Cached blocks of `prompt` for `tenant` (the router's Lookup).
  int64_t CachedBlocks(const std::vector<int32_t>& prompt, const std::string& tenant,
                       int64_t shared) {
    kvstrata::v1::LookupResponse r;
    EXPECT_TRUE(node_->router().Lookup(prompt, tenant, shared, false, &r).ok());
    return r.cached_blocks();
  }

  std::unique_ptr<EmbeddedCluster> node_;
};

const std::string kSystem =
    "<|system|>You are a careful agent. Use the tools below; answer briefly.<|tools|>"
    "search(query: string) -> list of documents; fetch(url: string) -> text;";

TEST_F(EmbeddedClusterTest, WarmEqualsColdBf16AndMatchesLocalGenerate) {
  Open("mla-bf16-1152");
  std::vector<int32_t> prompt = Text(Repeat(kSystem, 2) + "<|user|>find the report");
  ASSERT_GT(prompt.size(), 200u);
  GenerateRequest r = Req(prompt);
  r.policy = CachePolicy::kBypass;
  GenerateResult cold = Gen(r);
  EXPECT_EQ(cold.stats.cached_tokens, 0);
  EXPECT_EQ(cold.stats.published_pages, 0);
  EXPECT_EQ(cold.stats.queued_pages, 0);
  EXPECT_EQ(node_->store().Stats().indexed_pages, 0u);

  model::GenerateRequest local;
  local.prompt = prompt;
  local.max_tokens = r.max_tokens;
  local.layout = kernels::KvLayout::kMlaBf16_1152;
  auto ref = model::GenerateLocal(*node_->transformer(), local);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(cold.tokens, ref->tokens);

  r.policy = CachePolicy::kAuto;
  GenerateResult first = Gen(r);  // populates the cache
  EXPECT_EQ(first.tokens, cold.tokens);
  EXPECT_GT(first.stats.published_pages + first.stats.queued_pages, 0);
  GenerateResult warm = Gen(r);
  EXPECT_EQ(warm.tokens, cold.tokens);
  const int64_t full = static_cast<int64_t>(prompt.size()) / 64 * 64;
  EXPECT_EQ(warm.stats.cached_tokens, full);
  EXPECT_EQ(warm.stats.recomputed_tokens, static_cast<int64_t>(prompt.size()) - full);
  EXPECT_EQ(warm.stats.cost.decision, CacheDecision::kLoad);
  ASSERT_FALSE(warm.stats.tier_hits.empty());
  int64_t hit_tokens = 0;
  for (const TierHit& h : warm.stats.tier_hits) hit_tokens += h.tokens;
  EXPECT_EQ(hit_tokens, full);
  EXPECT_GT(warm.stats.bytes_loaded, 0u);

  // A forced recompute reads nothing and still matches.
  r.policy = CachePolicy::kForceRecompute;
  GenerateResult forced = Gen(r);
  EXPECT_EQ(forced.stats.cached_tokens, 0);
  EXPECT_EQ(forced.tokens, cold.tokens);
}

TEST_F(EmbeddedClusterTest, WarmEqualsColdFp8) {
  Open("mla-fp8-656");
  std::vector<int32_t> prompt = Text(Repeat(kSystem, 2) + "<|user|>hello");
  GenerateRequest r = Req(prompt);
  GenerateResult cold = Gen(r);
  GenerateResult warm = Gen(r);
  EXPECT_GT(warm.stats.cached_tokens, 0);
  EXPECT_EQ(warm.tokens, cold.tokens);
}

TEST_F(EmbeddedClusterTest, SecondTurnHitsTheWholeFirstTurn) {
  Open("mla-fp8-656");
  std::vector<int32_t> turn1 = Text(kSystem + "<|user|>what is in the news today?<|assistant|>");
  GenerateRequest r = Req(turn1);
  r.max_tokens = 70;  // output crosses a page boundary
  GenerateResult a = Gen(r);
  ASSERT_EQ(a.tokens.size(), 70u);
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), a.tokens.begin(), a.tokens.end());
  const int64_t whole = static_cast<int64_t>(turn2.size()) / 64 * 64;
  std::vector<int32_t> tool = Text("<|tool|><|result|>3 documents found<|assistant|>");
  turn2.insert(turn2.end(), tool.begin(), tool.end());
  r.prompt = turn2;
  r.max_tokens = 8;
  GenerateResult b = Gen(r);
  EXPECT_GE(b.stats.cached_tokens, whole);
  EXPECT_GT(b.stats.cached_tokens, static_cast<int64_t>(turn1.size()) / 64 * 64);
}

TEST_F(EmbeddedClusterTest, SecondSessionHitsTheSharedSystemPrompt) {
  Open("mla-fp8-656");
  std::vector<int32_t> s = Text(Repeat(kSystem, 2));
  std::vector<int32_t> p1 = s, p2 = s;
  for (int32_t t : Text("<|user|>first agent")) p1.push_back(t);
  for (int32_t t : Text("<|user|>second agent, other question")) p2.push_back(t);
  GenerateRequest r1 = Req(p1), r2 = Req(p2);
  r2.session_id = "s2";
  Gen(r1);
  GenerateResult b = Gen(r2);
  EXPECT_EQ(b.stats.cached_tokens, static_cast<int64_t>(s.size()) / 64 * 64);
}

TEST_F(EmbeddedClusterTest, TenantsAreIsolatedExceptThroughShared) {
  Open("mla-fp8-656");
  std::vector<int32_t> s = Text(Repeat(kSystem, 2));
  std::vector<int32_t> p = s;
  for (int32_t t : Text("<|user|>same question")) p.push_back(t);
  Gen(Req(p, "tenant-a"));
  GenerateResult b = Gen(Req(p, "tenant-b"));
  EXPECT_EQ(b.stats.cached_tokens, 0) << "tenant B hit tenant A's pages";

  // Tenant A opts the system prompt into `shared`; B opting in too hits only that prefix.
  GenerateRequest ra = Req(p, "tenant-a");
  ra.shared_prefix_tokens = static_cast<int64_t>(s.size());
  Gen(ra);
  GenerateRequest rb = Req(p, "tenant-b");
  rb.shared_prefix_tokens = static_cast<int64_t>(s.size());
  GenerateResult hb = Gen(rb);
  EXPECT_EQ(hb.stats.cached_tokens, static_cast<int64_t>(s.size()) / 64 * 64);
  // A third tenant that does not opt in sees nothing; opting in it sees the shared prefix.
  EXPECT_EQ(CachedBlocks(p, "tenant-c", 0), 0);
  EXPECT_EQ(CachedBlocks(p, "tenant-c", static_cast<int64_t>(s.size())),
            static_cast<int64_t>(s.size()) / 64);
}

// With the vllm-sha256-cbor key chain, an engine that hashes its own blocks
// (--prefix-caching-hash-algo sha256_cbor, same PYTHONHASHSEED and block size) derives the
// keys of the pages Generate published: the same prompt has the same pages either way.
TEST_F(EmbeddedClusterTest, EngineHashChainNamesThePagesGeneratePublished) {
  key_chain_ = KeyChain::kVllmSha256Cbor;
  engine_hash_seed_ = "1234";
  Open("mla-fp8-656");
  std::vector<int32_t> p = Text(Repeat(kSystem, 2) + "<|user|>engine-keyed");
  const GenerateResult cold = Gen(Req(p));
  const int64_t blocks = static_cast<int64_t>(p.size()) / 64;
  ASSERT_GE(blocks, 2);

  const std::vector<int64_t> tokens(p.begin(), p.end());
  auto hashes = EngineBlockHashes({.seed = "1234", .block_size = 64}, tokens);
  ASSERT_TRUE(hashes.ok()) << hashes.status();
  KeyParams kp = node_->model().key_params();
  kp.ns = *KeyNamespace::Tenant("acme");
  auto keys = DeriveBlockKeysFromEngineHashes(kp, *hashes);
  ASSERT_TRUE(keys.ok()) << keys.status();
  const std::string acme = kp.ns.ToString();  // the store indexes acme's copies by StorageKey
  EXPECT_EQ(node_->store().Lookup(StorageKeys(acme, *keys)).matched, static_cast<size_t>(blocks));
  // The token chain names other pages; another seed names none of these.
  kp.chain = KeyChain::kTokens;
  kp.engine_hash_seed.clear();
  auto token_keys = DeriveBlockKeys(kp, std::vector<uint32_t>(p.begin(), p.end()));
  ASSERT_TRUE(token_keys.ok());
  EXPECT_EQ(node_->store().Lookup(StorageKeys(acme, *token_keys)).matched, 0u);
  auto other = EngineBlockHashes({.seed = "4321", .block_size = 64}, tokens);
  kp.chain = KeyChain::kVllmSha256Cbor;
  EXPECT_EQ(node_->store()
                .Lookup(StorageKeys(acme, *DeriveBlockKeysFromEngineHashes(kp, *other)))
                .matched,
            0u);

  // And Generate hits them: the warm run loads every block and emits the same tokens.
  GenerateRequest warm = Req(p);
  warm.session_id = "s2";
  const GenerateResult hit = Gen(warm);
  EXPECT_EQ(hit.stats.cached_tokens, blocks * 64);
  EXPECT_EQ(hit.tokens, cold.tokens);
}

TEST(EmbeddedClusterOptionsTest, EngineHashChainNeedsTheEnginesSeed) {
  NodeOptions o;
  o.data_dir = "/nonexistent";
  o.key_chain = KeyChain::kVllmSha256Cbor;
  absl::Status s = ValidateNodeOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("PYTHONHASHSEED"), std::string::npos) << s;
  o.engine_hash_seed = "0";
  EXPECT_TRUE(ValidateNodeOptions(o).ok());
  o.key_chain = KeyChain::kTokens;
  EXPECT_EQ(ValidateNodeOptions(o).code(), absl::StatusCode::kInvalidArgument)
      << "a seed without the engine chain is a configuration mistake";
}

TEST_F(EmbeddedClusterTest, BadRequestsAreClearErrors) {
  Open("mla-fp8-656");
  GenerateRequest r = Req({});
  auto e = node_->Generate(r);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(e.status().message()).find("empty"), std::string::npos);
  r = Req({1, 2, 100000});
  e = node_->Generate(r);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(e.status().message()).find("vocabulary"), std::string::npos);
  r = Req({1, 2, 3});
  r.max_tokens = 0;
  EXPECT_EQ(node_->Generate(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req({1, 2, 3});
  r.tenant = "";
  EXPECT_EQ(node_->Generate(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req({1, 2, 3});
  r.session_id = "has space";
  EXPECT_EQ(node_->Generate(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req({1, 2, 3});
  r.max_tokens = node_->model().max_context();
  EXPECT_EQ(node_->Generate(r).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(node_->router().Counters().requests_failed, 6u);
}

TEST_F(EmbeddedClusterTest, CancelStopsEarlyAndKeepsTokens) {
  Open("mla-fp8-656");
  GenerateRequest r = Req(Text(kSystem));
  int seen = 0;
  r.on_token = [&](int32_t) { return ++seen < 3; };
  GenerateResult g = Gen(r);
  EXPECT_EQ(g.finish, FinishReason::kCancelled);
  EXPECT_EQ(g.tokens.size(), 3u);
}

// Issue #18 item 2: a request abandoned during its prompt (deadline passed, or the caller
// gave up) stops the prompt's compute within a bound, on the prefill worker and the decode
// session alike, and the node is idle again right after.
TEST_F(EmbeddedClusterTest, DeadlineOrCancelDuringThePromptStopsTheCompute) {
  Open("mla-fp8-656");
  std::vector<int32_t> prompt(3000);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 31 + 7) % 250);
  constexpr absl::Duration kBound = absl::Milliseconds(300);
  {
    GenerateRequest r = Req(prompt);
    r.deadline = absl::Now() + absl::Milliseconds(150);
    auto g = node_->Generate(r);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->finish, FinishReason::kCancelled);
    EXPECT_TRUE(g->tokens.empty());
    node_->WaitIdle();
    EXPECT_LT(absl::Now() - r.deadline, kBound);
  }
  {
    prompt[0] = 1;  // not the prompt above: nothing of it is cached
    GenerateRequest r = Req(prompt);
    std::atomic<bool> gave_up{false};
    std::atomic<int64_t> at{0};
    r.cancelled = [&] { return gave_up.load(); };
    std::thread canceller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      at = absl::ToUnixMicros(absl::Now());
      gave_up = true;
    });
    auto g = node_->Generate(r);
    node_->WaitIdle();
    const absl::Time end = absl::Now();
    canceller.join();
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->finish, FinishReason::kCancelled);
    EXPECT_TRUE(g->tokens.empty());
    EXPECT_LT(end - absl::FromUnixMicros(at), kBound);
  }
  // The node serves the next request as before.
  GenerateResult g = Gen(Req(Text(kSystem)));
  EXPECT_EQ(g.tokens.size(), 24u);
}

TEST_F(EmbeddedClusterTest, PagesDemotedToNvmeServeExactTokens) {
  Open("mla-bf16-1152");
  std::vector<int32_t> prompt = Text(Repeat(kSystem, 2));
  GenerateRequest r = Req(prompt);
  GenerateResult cold = Gen(r);
  // Demote everything from device and host into nvme; the nvme path serves the same tokens.
  ASSERT_TRUE(node_->store().Evict(TierKind::kDevice, 1ull << 30).ok());
  ASSERT_TRUE(node_->store().Evict(TierKind::kHost, 1ull << 30).ok());
  GenerateResult warm = Gen(r);
  EXPECT_EQ(warm.tokens, cold.tokens);
  ASSERT_FALSE(warm.stats.tier_hits.empty());
  EXPECT_EQ(warm.stats.tier_hits.back().tier, TierKind::kNvme);
}

}  // namespace
}  // namespace kv::cluster
