// `kvstrata model`: reference-model files.
//
//   kvstrata model init --preset=tiny-v3|tiny-v4 --out=DIR [--seed=N]
//       writes DIR/config.json + DIR/model.safetensors (seeded random bf16 weights with
//       DeepSeek-V3's KV geometry, or V4's hybrid attention for tiny-v4; DESIGN.md
//       "Models") and prints the model fingerprint.
//   kvstrata model info --model=DIR
//       validates and loads a model directory; prints its geometry, KV bytes per token in
//       each layout, and the fingerprint that block keys use.
#include <cstdio>
#include <cstring>
#include <string>

#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/kv_layout.h"
#include "model/config.h"
#include "model/weights.h"

namespace kv::cmd {
namespace {

absl::Status Init(const std::string& preset, const std::string& out, int64_t seed) {
  if (out.empty()) return absl::InvalidArgumentError("--out=DIR is required");
  if (seed < 0) return absl::InvalidArgumentError("--seed must be >= 0");
  ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig(preset));
  RETURN_IF_ERROR(model::WriteRandomModel(c, static_cast<uint64_t>(seed), out));
  ASSIGN_OR_RETURN(Digest256 fp, model::ModelFingerprint(out));
  std::printf("wrote %s/config.json and %s/model.safetensors (preset %s, seed %ld)\n", out.c_str(),
              out.c_str(), preset.c_str(), static_cast<long>(seed));
  std::printf("model fingerprint %s\n", ToHex(fp).c_str());
  return absl::OkStatus();
}

absl::Status Info(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("--model=DIR is required");
  ASSIGN_OR_RETURN(model::ModelWeights w, model::LoadModel(dir));
  const model::ModelConfig& c = w.config;
  std::printf("model %s: %s, %ld layers, hidden %ld, %ld heads, q_lora_rank %ld, vocab %ld\n",
              dir.c_str(), c.model_type.c_str(), static_cast<long>(c.num_hidden_layers),
              static_cast<long>(c.hidden_size), static_cast<long>(c.num_attention_heads),
              static_cast<long>(c.q_lora_rank), static_cast<long>(c.vocab_size));
  if (c.IsV4()) {
    std::string ratios;
    for (int64_t r : c.compress_ratios) ratios += StrCat(ratios.empty() ? "" : ",", r);
    std::printf(
        "  v4 hybrid attention: compress_ratios [%s], K=V %ld (448+64 rope), window %ld, "
        "indexer %ldx%ld top-%ld, o_groups %ldx%ld\n"
        "  v4-fp8-584 pages: 584 B per compressed entry, 132 B per indexer key, 256 tokens\n",
        ratios.c_str(), static_cast<long>(c.head_dim), static_cast<long>(c.sliding_window),
        static_cast<long>(c.index_n_heads), static_cast<long>(c.index_head_dim),
        static_cast<long>(c.index_topk), static_cast<long>(c.o_groups),
        static_cast<long>(c.o_lora_rank));
    std::printf("model fingerprint %s\n", ToHex(w.fingerprint).c_str());
    return absl::OkStatus();
  }
  for (auto layout : {kernels::KvLayout::kMlaFp8_656, kernels::KvLayout::kMlaBf16_1152}) {
    std::printf("  %-14s %ld KV bytes per token (%d per layer)\n",
                std::string(kernels::LayoutName(layout)).c_str(),
                static_cast<long>(c.num_hidden_layers * kernels::RecordBytes(layout)),
                kernels::RecordBytes(layout));
  }
  std::printf("model fingerprint %s\n", ToHex(w.fingerprint).c_str());
  return absl::OkStatus();
}

int RunModel(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0) {
    std::printf(
        "usage: kvstrata model init --preset=tiny-v3|tiny-v4 --out=DIR [--seed=N]\n"
        "       kvstrata model info --model=DIR\n");
    return argc < 2 ? 2 : 0;
  }
  const std::string sub = argv[1];
  std::string preset = "tiny-v3", out, dir;
  int64_t seed = 1;
  FlagSet flags(StrCat("kvstrata model ", sub));
  if (sub == "init") {
    flags.String("preset", &preset, "model preset (tiny-v3, tiny-v4)");
    flags.String("out", &out, "output directory");
    flags.Int("seed", &seed, "weight seed");
  } else if (sub == "info") {
    flags.String("model", &dir, "model directory (config.json + model.safetensors)");
  } else {
    std::fprintf(stderr, "kvstrata model: unknown subcommand '%s' (init, info)\n", sub.c_str());
    return 2;
  }
  absl::Status s = flags.Parse(argc - 1, argv + 1);
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (s.ok()) s = sub == "init" ? Init(preset, out, seed) : Info(dir);
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata model %s: %s\n", sub.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  return 0;
}

}  // namespace

KV_REGISTER_COMMAND(model, "write (init) or inspect (info) a reference model directory", RunModel);

}  // namespace kv::cmd
