#include "model/config.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kv::model {
namespace {

using ::testing::HasSubstr;

// DeepSeek-V3 671B's config.json fields (formats.md §1.1, §1.3; inference/configs).
constexpr char kV3Config[] = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
  "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "v_head_dim": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "n_routed_experts": 256, "n_shared_experts": 1, "first_k_dense_replace": 3,
  "vocab_size": 129280, "rms_norm_eps": 1e-06, "rope_theta": 10000,
  "max_position_embeddings": 163840, "hidden_act": "silu", "tie_word_embeddings": false,
  "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                   "type": "yarn"}
})";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  size_t p = s.find(from);
  EXPECT_NE(p, std::string::npos) << from;
  if (p != std::string::npos) s.replace(p, from.size(), to);
  return s;
}

TEST(ConfigTest, ParsesDeepSeekV3AndRefusesItsMoe) {
  auto c = ParseModelConfig(kV3Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 7168);
  EXPECT_EQ(c->q_lora_rank, 1536);
  EXPECT_EQ(c->qk_head_dim(), 192);
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->factor, 40);
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 4096);
  EXPECT_EQ(c->rope_scaling->mscale_all_dim, 1.0);
  absl::Status s = ValidateForRuntime(*c);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("n_routed_experts"));
}

TEST(ConfigTest, DenseV3GeometryRuns) {
  auto c =
      ParseModelConfig(Replace(kV3Config, "\"n_routed_experts\": 256", "\"n_routed_experts\": 0"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(ValidateForRuntime(*c).ok());
  // All layers dense (first_k_dense_replace >= layers) also runs.
  auto d = ParseModelConfig(
      Replace(kV3Config, "\"first_k_dense_replace\": 3", "\"first_k_dense_replace\": 61"));
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(ValidateForRuntime(*d).ok());
}

TEST(ConfigTest, NullQLoraRankMeansDirectProjection) {
  auto c = ParseModelConfig(Replace(kV3Config, "\"q_lora_rank\": 1536", "\"q_lora_rank\": null"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->q_lora_rank, 0);
}

TEST(ConfigTest, ErrorsNameTheField) {
  struct Case {
    std::string from, to, field;
  };
  const Case cases[] = {
      {"\"hidden_size\": 7168,", "", "hidden_size"},
      {"\"hidden_size\": 7168", "\"hidden_size\": \"big\"", "hidden_size"},
      {"\"v_head_dim\": 128", "\"v_head_dim\": -1", "v_head_dim"},
      {"\"vocab_size\": 129280", "\"vocab_size\": 1.5", "vocab_size"},
      {"\"kv_lora_rank\": 512", "\"kv_lora_rank\": 99999999999", "kv_lora_rank"},
      {"\"factor\": 40", "\"factor\": 0.5", "rope_scaling.factor"},
      {"\"beta_slow\": 1", "\"beta_slow\": 64", "beta_fast"},
      {"\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0", "rms_norm_eps"},
  };
  for (const Case& k : cases) {
    auto c = ParseModelConfig(Replace(kV3Config, k.from, k.to));
    ASSERT_FALSE(c.ok()) << k.to;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(k.field)) << c.status();
  }
  EXPECT_FALSE(ParseModelConfig("{not json").ok());
  EXPECT_FALSE(ParseModelConfig("[1, 2]").ok());
}

TEST(ConfigTest, RuntimeRefusesWhatItCannotRun) {
  auto dense = Replace(kV3Config, "\"n_routed_experts\": 256", "\"n_routed_experts\": 0");
  struct Case {
    std::string from, to, field;
    absl::StatusCode code;
  };
  const Case cases[] = {
      {"\"kv_lora_rank\": 512", "\"kv_lora_rank\": 256", "kv_lora_rank",
       absl::StatusCode::kInvalidArgument},
      {"\"qk_rope_head_dim\": 64", "\"qk_rope_head_dim\": 32", "qk_rope_head_dim",
       absl::StatusCode::kInvalidArgument},
      {"\"type\": \"yarn\"", "\"type\": \"linear\"", "rope_scaling.type",
       absl::StatusCode::kUnimplemented},
      {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act",
       absl::StatusCode::kUnimplemented},
      {"\"vocab_size\": 129280", "\"vocab_size\": 129280, \"index_topk\": 2048", "index_topk",
       absl::StatusCode::kUnimplemented},
  };
  for (const Case& k : cases) {
    auto c = ParseModelConfig(Replace(dense, k.from, k.to));
    ASSERT_TRUE(c.ok()) << c.status();
    absl::Status s = ValidateForRuntime(*c);
    EXPECT_EQ(s.code(), k.code) << s;
    EXPECT_THAT(s.message(), HasSubstr(k.field));
  }
}

TEST(ConfigTest, TinyV3PresetRoundTripsAndHasV3KvGeometry) {
  auto c = PresetConfig("tiny-v3");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(ValidateForRuntime(*c).ok());
  EXPECT_EQ(c->kv_lora_rank, 512);
  EXPECT_EQ(c->qk_rope_head_dim, 64);
  EXPECT_EQ(c->qk_nope_head_dim, 128);
  EXPECT_EQ(c->rope_scaling->factor, 40);
  auto back = ParseModelConfig(ToConfigJson(*c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(CanonicalJson(*back), CanonicalJson(*c));
  EXPECT_EQ(back->q_lora_rank, 0);
  ModelConfig changed = *c;
  changed.rms_norm_eps = 1e-5;
  EXPECT_NE(CanonicalJson(changed), CanonicalJson(*c));
  EXPECT_EQ(PresetConfig("huge-v9").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kv::model
