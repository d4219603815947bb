#include "model/weights.h"

#include <cmath>
#include <cstring>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/bf16.h"
#include "kernels/fp8.h"
#include "model/safetensors.h"
#include "model/test_util.h"

namespace kv::model {
namespace {

using ::testing::HasSubstr;

// A small config with the V3 KV geometry (kept small so the tests stay fast).
ModelConfig SmallConfig() {
  ModelConfig c = *PresetConfig("tiny-v3");
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.intermediate_size = 96;
  return c;
}

TEST(WeightsTest, GeneratedModelLoadsWithShapesAndFingerprint) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  const std::string dir = testing::FreshTempDir("weights");
  ModelConfig c = SmallConfig();
  ASSERT_TRUE(WriteRandomModel(c, seed, dir).ok());
  auto w = LoadModel(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(CanonicalJson(w->config), CanonicalJson(c));
  ASSERT_EQ(w->layers.size(), 2u);
  EXPECT_EQ(w->layers[1].kv_a_proj.size(), 576u * 64);
  EXPECT_EQ(w->layers[0].kv_b_proj.size(), 2u * 256 * 512);
  EXPECT_EQ(w->lm_head.size(), static_cast<size_t>(c.vocab_size * 64));
  // Weights are random (not constant) and near their intended scale.
  double ss = 0;
  for (float x : w->layers[0].kv_a_proj) ss += double(x) * x;
  const double rms = std::sqrt(ss / w->layers[0].kv_a_proj.size());
  EXPECT_NEAR(rms, 1.0 / 8.0, 0.01);  // fan-in 64
  EXPECT_NEAR(w->layers[0].input_norm[3], 1.0, 0.3);
  // Fingerprint: stable for the same bytes, different for another seed or config.
  auto fp = ModelFingerprint(dir);
  ASSERT_TRUE(fp.ok());
  EXPECT_EQ(*fp, w->fingerprint);
  const std::string dir2 = testing::FreshTempDir("weights2");
  ASSERT_TRUE(WriteRandomModel(c, seed + 1, dir2).ok());
  EXPECT_NE(*ModelFingerprint(dir2), *fp);
  const std::string dir3 = testing::FreshTempDir("weights3");
  ASSERT_TRUE(WriteRandomModel(c, seed, dir3).ok());
  EXPECT_EQ(*ModelFingerprint(dir3), *fp) << "the generator must be deterministic";
}

TEST(WeightsTest, MismatchedFilesAreRefusedNamingTheTensor) {
  const std::string dir = testing::FreshTempDir("weights-bad");
  ModelConfig c = SmallConfig();
  ASSERT_TRUE(WriteRandomModel(c, 7, dir).ok());
  // config.json now says a bigger hidden size than the tensors have.
  ModelConfig bigger = c;
  bigger.hidden_size = 80;
  std::ofstream(dir + "/config.json", std::ios::trunc) << ToConfigJson(bigger);
  auto w = LoadModel(dir);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("model.embed_tokens.weight"));
  EXPECT_THAT(w.status().message(), HasSubstr("[267, 64]"));
  // MoE config: refused before the weights are read.
  ModelConfig moe = c;
  moe.n_routed_experts = 8;
  std::ofstream(dir + "/config.json", std::ios::trunc) << ToConfigJson(moe);
  EXPECT_THAT(LoadModel(dir).status().message(), HasSubstr("n_routed_experts"));
  // A missing tensor.
  std::ofstream(dir + "/config.json", std::ios::trunc) << ToConfigJson(c);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"model.norm.weight", DType::kF32, {64}, std::string(256, 0)}}, {})
                  .ok());
  EXPECT_THAT(LoadModel(dir).status().message(), HasSubstr("is missing"));
  EXPECT_EQ(LoadModel(dir + "/nope").status().code(), absl::StatusCode::kNotFound);
}

// DeepSeek FP8 checkpoints: e4m3 codes with one inverse scale per 128x128 block.
TEST(WeightsTest, Fp8BlockScaledWeightsDequantize) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  const std::string dir = testing::FreshTempDir("weights-fp8");
  ModelConfig c = SmallConfig();
  ASSERT_TRUE(WriteRandomModel(c, seed, dir).ok());
  auto ref = LoadModel(dir);
  ASSERT_TRUE(ref.ok());
  // Rewrite layer 0's kv_b_proj [512, 512] as F8_E4M3 + F32 scale_inv [4, 4].
  auto f = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  std::vector<TensorToWrite> out;
  const std::string target = "model.layers.0.self_attn.kv_b_proj.weight";
  std::vector<float> expect;
  for (const TensorInfo& t : (*f)->tensors()) {
    auto b = (*f)->Bytes(t);
    TensorToWrite w{t.name, t.dtype, t.shape, std::string(b.begin(), b.end())};
    if (t.name == target) {
      const int64_t rows = t.shape[0], cols = t.shape[1];
      std::vector<float> scale(((rows + 127) / 128) * ((cols + 127) / 128));
      for (size_t i = 0; i < scale.size(); ++i) scale[i] = std::ldexp(1.0f, -int(i % 5) - 6);
      w.dtype = DType::kF8E4M3;
      w.bytes.assign(rows * cols, '\0');
      expect.resize(rows * cols);
      const auto& src = ref->layers[0].kv_b_proj;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t cc = 0; cc < cols; ++cc) {
          const float s = scale[(r / 128) * ((cols + 127) / 128) + cc / 128];
          const uint8_t code = kernels::FloatToE4m3(src[r * cols + cc] / s);
          w.bytes[r * cols + cc] = static_cast<char>(code);
          expect[r * cols + cc] = kernels::E4m3ToFloat(code) * s;
        }
      }
      std::string sb(scale.size() * 4, '\0');
      std::memcpy(sb.data(), scale.data(), sb.size());
      out.push_back(
          {target + "_scale_inv", DType::kF32, {(rows + 127) / 128, (cols + 127) / 128}, sb});
    }
    out.push_back(std::move(w));
  }
  f->reset();
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", out, {}).ok());
  auto fp8 = LoadModel(dir);
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  EXPECT_EQ(fp8->layers[0].kv_b_proj, expect);
  EXPECT_NE(fp8->fingerprint, ref->fingerprint);
}

}  // namespace
}  // namespace kv::model
