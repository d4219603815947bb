// The embedded serving path (the former prefill::Engine tests, moved with the code and keeping
// their assertions) over the real tiny-v4 model (DeepSeek-V4 hybrid attention, v4-fp8-584 pages
// of 256 tokens with resume sections) and the real tiered store: the same request path as
// the MLA models, with prefix reuse that resumes only from pages that carry a resume
// section (kvstore/resume_policy.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cluster/embedded_cluster.h"
#include "kvstore/page_format.h"
#include "kvstore/page_store.h"
#include "model/config.h"
#include "model/test_util.h"
#include "model/tokenizer.h"
#include "model/v4_generate.h"
#include "model/weights.h"

namespace kv::cluster {
namespace {

std::vector<int32_t> Text(const std::string& s) {
  return model::ByteTokenizer::Encode(s, /*add_bos=*/false, /*parse_specials=*/true);
}

// n distinct-looking tokens of text.
std::vector<int32_t> Tokens(const std::string& seed, size_t n) {
  std::string s;
  for (int i = 0; s.size() < n; ++i) s += seed + " #" + std::to_string(i) + "; ";
  std::vector<int32_t> t = Text(s);
  t.resize(n);
  return t;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class EmbeddedClusterV4Test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = model::testing::FreshTempDir("engine-v4");
    auto config = model::PresetConfig("tiny-v4");
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE(model::WriteRandomModel(*config, 7, dir_ + "/model").ok());
  }
  void Open(int64_t resume_checkpoint_pages = 4) {
    NodeOptions o;
    o.data_dir = dir_;
    o.model_dir = dir_ + "/model";
    o.device_bytes = 16ull << 20;
    o.host_bytes = 32ull << 20;
    o.nvme_bytes = 1ull << 30;
    o.slab_bytes = 1ull << 20;
    o.metrics = &metrics_;
    auto node =
        EmbeddedCluster::Open({.node = o, .resume_checkpoint_pages = resume_checkpoint_pages});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
    ASSERT_NE(node_->v4_model(), nullptr);
  }
  void TearDown() override {
    node_.reset();
    std::filesystem::remove_all(dir_);
  }
  GenerateRequest Req(std::vector<int32_t> prompt, const std::string& session = "s1") {
    GenerateRequest r;
    r.prompt = std::move(prompt);
    r.tenant = "acme";
    r.max_tokens = 12;
    r.ignore_eos = true;
    r.session_id = session;
    return r;
  }
  GenerateResult Gen(const GenerateRequest& r) {
    auto res = node_->Generate(r);
    EXPECT_TRUE(res.ok()) << res.status();
    node_->WaitIdle();
    return res.ok() ? *res : GenerateResult{};
  }
  // What the model generates with no cache at all (model/v4_generate.h, FP8 records).
  std::vector<int32_t> Local(const GenerateRequest& r) {
    model::GenerateRequest local;
    local.prompt = r.prompt;
    local.max_tokens = r.max_tokens;
    local.sampling = r.sampling;
    auto ref = model::GenerateLocalV4(*node_->v4_model(), local, model::V4CacheFormat::kFp8);
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? ref->tokens : std::vector<int32_t>{};
  }
  // Whether the cached page of `key` carries a resume section.
  // The store's key of acme's view of `key` (kvstore/page_store.h StorageKey).
  BlockKey Stored(const BlockKey& key) {
    std::optional<BlockKey> s = VisibleStorageKey(node_->store(), "tenant:acme", key);
    EXPECT_TRUE(s.has_value()) << key.Hex() << " is not cached";
    return s.value_or(key);
  }
  std::vector<BlockKey> Stored(const std::vector<BlockKey>& keys) {
    std::vector<BlockKey> out;
    for (const BlockKey& k : keys) out.push_back(Stored(k));
    return out;
  }
  bool HasResume(const BlockKey& client_key) {
    TieredStore& store = node_->store();
    const BlockKey key = Stored(client_key);
    auto pin = store.Pin(std::span<const BlockKey>(&key, 1), absl::Now() + absl::Seconds(10));
    EXPECT_TRUE(pin.ok()) << pin.status();
    if (!pin.ok()) return false;
    std::vector<uint8_t> buf(node_->model().page_bytes());
    auto n = store.Read(*pin, key, buf);
    EXPECT_TRUE(n.ok()) << n.status();
    (void)store.Unpin(*pin);
    if (!n.ok()) return false;
    auto view = DecodePage(std::span<const uint8_t>(buf.data(), *n));
    EXPECT_TRUE(view.ok()) << view.status();
    return view.ok() && view->has_resume();
  }
  kvstrata::v1::LookupResponse Look(const std::vector<int32_t>& tokens, int64_t shared = 0) {
    kvstrata::v1::LookupResponse r;
    absl::Status s = node_->router().Lookup(tokens, "acme", shared, true, &r);
    EXPECT_TRUE(s.ok()) << s;
    return r;
  }
  std::vector<BlockKey> Keys(const std::vector<int32_t>& tokens, int64_t shared = 0) {
    std::vector<BlockKey> keys;
    const kvstrata::v1::LookupResponse r = Look(tokens, shared);
    for (const std::string& k : r.keys()) {
      BlockKey key;
      std::memcpy(key.bytes.data(), k.data(), std::min<size_t>(32, k.size()));
      keys.push_back(key);
    }
    return keys;
  }

  MetricsRegistry metrics_;
  std::string dir_;
  std::unique_ptr<EmbeddedCluster> node_;
};

TEST_F(EmbeddedClusterV4Test, ServesV4PagesWarmEqualsColdAndLocal) {
  Open();
  EXPECT_EQ(node_->model().page_tokens(), 256);
  EXPECT_EQ(node_->model().layout().name, "v4-fp8-584");
  EXPECT_EQ(Look(Tokens("x", 300)).key_space().layout(), "v4-fp8-584");
  const std::vector<int32_t> prompt = Tokens("system: plan the trip", 700);  // 2 full pages
  GenerateRequest r = Req(prompt);
  const std::vector<int32_t> ref = Local(r);
  ASSERT_EQ(ref.size(), 12u);

  GenerateResult cold = Gen(r);
  EXPECT_EQ(cold.tokens, ref);
  EXPECT_EQ(cold.stats.cached_tokens, 0);
  EXPECT_EQ(cold.stats.published_pages + cold.stats.queued_pages, 2);
  const std::vector<BlockKey> keys = Keys(prompt);
  ASSERT_EQ(keys.size(), 2u);
  // Page 0 is interior (no resume section), page 1 ends the prompt (kept).
  EXPECT_FALSE(HasResume(keys[0]));
  EXPECT_TRUE(HasResume(keys[1]));

  GenerateResult warm = Gen(Req(prompt, "s2"));  // another session, same prompt
  EXPECT_EQ(warm.tokens, ref);
  EXPECT_EQ(warm.stats.cached_tokens, 512);
  EXPECT_EQ(warm.stats.recomputed_tokens, 700 - 512);
  EXPECT_GT(warm.stats.bytes_loaded, 0u);
}

TEST_F(EmbeddedClusterV4Test, PromptOfWholePagesResumesFromThePageBeforeItsLast) {
  // A repeat of a 512-token prompt can load only (512 - 1) / 256 = 1 page (one prompt token
  // is always computed), so page 0 must carry a resume section although the prompt ends
  // after page 1.
  Open(/*resume_checkpoint_pages=*/0);
  GenerateRequest r = Req(Tokens("two whole pages", 512));
  const std::vector<int32_t> ref = Local(r);
  EXPECT_EQ(Gen(r).tokens, ref);
  const std::vector<BlockKey> keys = Keys(r.prompt);
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_TRUE(HasResume(keys[0]));
  EXPECT_TRUE(HasResume(keys[1]));
  GenerateResult again = Gen(Req(r.prompt, "s2"));
  EXPECT_EQ(again.tokens, ref);
  EXPECT_EQ(again.stats.cached_tokens, 256);
}

TEST_F(EmbeddedClusterV4Test, NextTurnResumesFromTheTurnEnd) {
  Open();
  GenerateRequest t1 = Req(Tokens("turn one", 500));
  t1.max_tokens = 40;  // 540 tokens: the turn ends inside page 2
  GenerateResult r1 = Gen(t1);
  EXPECT_EQ(r1.tokens, Local(t1));
  // Turn 2 = turn 1's conversation + a new user message.
  std::vector<int32_t> convo = Concat(t1.prompt, r1.tokens);
  GenerateRequest t2 = Req(Concat(convo, Tokens("user: and the hotel?", 300)));
  GenerateResult r2 = Gen(t2);
  EXPECT_EQ(r2.tokens, Local(t2));
  EXPECT_EQ(r2.stats.cached_tokens, 512);  // the conversation's two full pages
  // Turn 3 extends turn 2 and resumes from turn 2's end (page 3 of 840+12 tokens).
  GenerateRequest t3 = Req(Concat(Concat(t2.prompt, r2.tokens), Tokens("user: thanks", 40)));
  GenerateResult r3 = Gen(t3);
  EXPECT_EQ(r3.tokens, Local(t3));
  EXPECT_EQ(r3.stats.cached_tokens, 768);
}

TEST_F(EmbeddedClusterV4Test, SharedPrefixReusedAcrossSessionsFromItsResumeSection) {
  Open();
  const std::vector<int32_t> system = Tokens("system: you are a travel agent", 512);
  GenerateRequest a = Req(Concat(system, Tokens("user A: flights to Oslo", 300)), "session-a");
  a.shared_prefix_tokens = 512;
  GenerateResult ra = Gen(a);
  EXPECT_EQ(ra.tokens, Local(a));
  const std::vector<BlockKey> keys = Keys(a.prompt, 512);
  ASSERT_EQ(keys.size(), 3u);
  EXPECT_FALSE(HasResume(keys[0]));
  EXPECT_TRUE(HasResume(keys[1]));  // the shared-prefix end
  EXPECT_TRUE(HasResume(keys[2]));  // the prompt end

  GenerateRequest b = Req(Concat(system, Tokens("user B: trains to Bergen", 200)), "session-b");
  b.shared_prefix_tokens = 512;
  GenerateResult rb = Gen(b);
  EXPECT_EQ(rb.tokens, Local(b));
  EXPECT_EQ(rb.stats.cached_tokens, 512);
}

TEST_F(EmbeddedClusterV4Test, BranchMidChainResumesFromTheLastCheckpointAndStaysExact) {
  Open(/*resume_checkpoint_pages=*/2);
  // Session A: 5 full pages. Resume sections: page 1 (checkpoint), 3 (checkpoint), 4 (end).
  const std::vector<int32_t> common = Tokens("shared history", 768);  // pages 0..2
  GenerateRequest a = Req(Concat(common, Tokens("A goes on", 600)), "a");
  Gen(a);
  const std::vector<BlockKey> keys = Keys(a.prompt);
  ASSERT_EQ(keys.size(), 5u);
  EXPECT_FALSE(HasResume(keys[0]));
  EXPECT_TRUE(HasResume(keys[1]));
  EXPECT_FALSE(HasResume(keys[2]));
  EXPECT_TRUE(HasResume(keys[3]));
  EXPECT_TRUE(HasResume(keys[4]));

  // Session B shares pages 0..2 with A: 3 pages are cached, page 2 has no resume section, so
  // B resumes after page 1 and recomputes page 2 (byte-identical, already stored).
  GenerateRequest b = Req(Concat(common, Tokens("B branches off", 300)), "b");
  const kvstrata::v1::LookupResponse look = Look(b.prompt);
  EXPECT_EQ(look.cached_blocks(), 3u);
  // The plan counts only what can be continued from: 2 pages, not the 3 cached.
  EXPECT_EQ(look.cost().decision(), kvstrata::v1::CACHE_DECISION_LOAD) << look.cost().reason();
  EXPECT_EQ(look.cost().load_tokens(), 2u * 256);
  GenerateResult rb = Gen(b);
  EXPECT_EQ(rb.stats.cost.load_blocks, 2);
  EXPECT_EQ(rb.tokens, Local(b));
  EXPECT_EQ(rb.stats.cached_tokens, 512);
}

TEST_F(EmbeddedClusterV4Test, StrippedResumeSectionsFallBackToRecomputeNeverWrongTokens) {
  Open(/*resume_checkpoint_pages=*/0);
  GenerateRequest r = Req(Tokens("context to be stripped", 800));  // 3 full pages
  const std::vector<int32_t> ref = Local(r);
  EXPECT_EQ(Gen(r).tokens, ref);
  const std::vector<BlockKey> keys = Keys(r.prompt);
  ASSERT_EQ(keys.size(), 3u);
  ASSERT_TRUE(HasResume(keys[2]));
  // The store drops the only resume section (what pressure does first): the pages still
  // serve as history, but no request can continue from them, so it computes the prompt.
  auto freed = node_->store().DropResume(Stored(keys));
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_GT(*freed, 0u);
  EXPECT_FALSE(HasResume(keys[2]));
  const kvstrata::v1::LookupResponse look = Look(r.prompt);
  EXPECT_EQ(look.cached_blocks(), 3u);
  EXPECT_EQ(look.cost().load_tokens(), 0u);  // nothing to continue from: nothing planned
  GenerateResult again = Gen(Req(r.prompt, "s2"));
  EXPECT_EQ(again.tokens, ref);
  EXPECT_EQ(again.stats.cached_tokens, 0);
  EXPECT_EQ(node_->store().Lookup(Stored(keys)).matched, 3u);
  EXPECT_TRUE(node_->store().CheckInvariants().ok());
}

TEST_F(EmbeddedClusterV4Test, RefusesAnMlaLayoutForAV4Model) {
  NodeOptions o;
  o.data_dir = dir_;
  o.model_dir = dir_ + "/model";
  o.kv_layout = "mla-fp8-656";
  o.metrics = &metrics_;
  auto node = EmbeddedCluster::Open({.node = o});
  ASSERT_FALSE(node.ok());
  EXPECT_EQ(node.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(node.status().message().find("v4-fp8-584"), std::string_view::npos) << node.status();
}

}  // namespace
}  // namespace kv::cluster
