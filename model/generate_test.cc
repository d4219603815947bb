#include "model/generate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/test_util.h"
#include "model/tokenizer.h"

namespace kv::model {
namespace {

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = testing::TestSeed();
    ModelConfig c = *PresetConfig("tiny-v3");
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.intermediate_size = 96;
    const std::string dir = testing::FreshTempDir("generate");
    ASSERT_TRUE(WriteRandomModel(c, seed_, dir).ok());
    auto t = Transformer::Load(dir, {.max_context = 512});
    ASSERT_TRUE(t.ok()) << t.status();
    model_ = *std::move(t);
  }
  uint64_t seed_ = 0;
  std::unique_ptr<Transformer> model_;
};

// Greedy generation equals the hand-written prefill + argmax + decode loop.
TEST_F(GenerateTest, GreedyMatchesManualLoop) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  GenerateRequest req;
  req.prompt = ByteTokenizer::Encode("<|user|>hello pages<|assistant|>", true, true);
  req.max_tokens = 20;
  std::vector<int32_t> streamed;
  req.on_token = [&](int32_t t) { streamed.push_back(t); };
  FakeClock clock;
  auto r = GenerateLocal(*model_, req, &clock);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, streamed);
  ASSERT_EQ(r->tokens.size(), 20u);
  EXPECT_EQ(r->kv_bytes_per_token, 2 * 656);
  EXPECT_EQ(r->kv_bytes, static_cast<int64_t>(req.prompt.size() + 19) * 2 * 656);

  auto kv = *model_->NewCache(kernels::KvLayout::kMlaFp8_656, 512);
  auto logits = *model_->Prefill(req.prompt, 0, kv.get());
  std::vector<int32_t> want;
  for (int i = 0; i < 20; ++i) {
    want.push_back(*Argmax(logits));
    if (i < 19) logits = *model_->DecodeStep(want.back(), kv->num_tokens(), kv.get());
  }
  EXPECT_EQ(r->tokens, want);
}

TEST_F(GenerateTest, SeededSamplingIsReproducibleAndStopsAtStopTokens) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  GenerateRequest req;
  req.prompt = ByteTokenizer::Encode("abc", true, false);
  req.max_tokens = 30;
  req.layout = kernels::KvLayout::kMlaBf16_1152;
  req.sampling = {.temperature = 1.0, .top_p = 0.9, .seed = seed_};
  auto a = GenerateLocal(*model_, req);
  auto b = GenerateLocal(*model_, req);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  // Stop at the 5th generated token's id: generation ends right there.
  req.stop_tokens = {a->tokens[4]};
  auto c = GenerateLocal(*model_, req);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->stopped);
  EXPECT_LE(c->tokens.size(), 5u);
  EXPECT_EQ(c->tokens.back(), a->tokens[4]);
}

TEST_F(GenerateTest, BadRequestsAreErrors) {
  GenerateRequest req;
  EXPECT_EQ(GenerateLocal(*model_, req).status().code(), absl::StatusCode::kInvalidArgument);
  req.prompt = {1, 2, 3};
  req.max_tokens = 0;
  EXPECT_EQ(GenerateLocal(*model_, req).status().code(), absl::StatusCode::kInvalidArgument);
  req.max_tokens = 600;
  EXPECT_EQ(GenerateLocal(*model_, req).status().code(), absl::StatusCode::kOutOfRange);
  req.max_tokens = 4;
  req.sampling.top_p = 2;
  EXPECT_EQ(GenerateLocal(*model_, req).status().code(), absl::StatusCode::kInvalidArgument);
  req.sampling.top_p = 1;
  req.prompt = {1, 9999};
  EXPECT_EQ(GenerateLocal(*model_, req).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kv::model
