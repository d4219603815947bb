#include "kernels/v4/v4_config.h"

#include "core/strings.h"

namespace kv::kernels::v4 {

int V4Config::CountLayers(int ratio) const {
  int n = 0;
  for (int r : compress_ratios) n += (r == ratio) ? 1 : 0;
  return n;
}

V4Config V4ProConfig() {
  V4Config c;
  // (128,) + (128, 4) * 30: formats.md §4.1 (checkpoint order, corroborated by two configs).
  c.compress_ratios.push_back(kHcaRatio);
  for (int i = 0; i < 30; ++i) {
    c.compress_ratios.push_back(kHcaRatio);
    c.compress_ratios.push_back(kCsaRatio);
  }
  c.n_heads = 128;
  c.index_topk = 1024;
  c.o_groups = 16;
  return c;
}

V4Config V4FlashConfig() {
  V4Config c;
  // [0, 0, 4, 128, 4, 128, ..., 4]: 2 window-only, then alternating CSA/HCA ending on CSA.
  c.compress_ratios = {kWindowOnly, kWindowOnly};
  for (int i = 0; i < 20; ++i) {
    c.compress_ratios.push_back(kCsaRatio);
    c.compress_ratios.push_back(kHcaRatio);
  }
  c.compress_ratios.push_back(kCsaRatio);
  c.n_heads = 64;
  c.index_topk = 512;
  c.o_groups = 8;
  return c;
}

absl::Status ValidateV4Config(const V4Config& c) {
  auto bad = [](auto... parts) {
    return absl::InvalidArgumentError(kv::StrCat("V4Config: ", parts...));
  };
  if (c.compress_ratios.empty()) return bad("compress_ratios is empty (need one per layer)");
  for (size_t l = 0; l < c.compress_ratios.size(); ++l) {
    const int r = c.compress_ratios[l];
    if (r != kWindowOnly && r != kCsaRatio && r != kHcaRatio) {
      return bad("compress_ratios[", l, "] = ", r, " (must be 0, 4 or 128)");
    }
  }
  if (c.sliding_window < 1) return bad("sliding_window = ", c.sliding_window, " (must be >= 1)");
  if (c.rope_dim <= 0 || c.rope_dim % 2 != 0)
    return bad("rope_dim = ", c.rope_dim, " (must be positive and even)");
  if (c.nope_dim <= 0) return bad("nope_dim = ", c.nope_dim, " (must be positive)");
  if (c.head_dim != c.nope_dim + c.rope_dim) {
    return bad("head_dim = ", c.head_dim, " != nope_dim + rope_dim = ", c.nope_dim + c.rope_dim);
  }
  if (c.n_heads < 1) return bad("n_heads = ", c.n_heads, " (must be >= 1)");
  if (c.index_n_heads < 1) return bad("index_n_heads = ", c.index_n_heads, " (must be >= 1)");
  if (c.index_head_dim < c.rope_dim || c.index_head_dim % 2 != 0) {
    return bad("index_head_dim = ", c.index_head_dim, " (must be even and >= rope_dim ", c.rope_dim,
               ")");
  }
  if (c.index_topk < 1) return bad("index_topk = ", c.index_topk, " (must be >= 1)");
  if (c.o_groups < 1 || c.n_heads % c.o_groups != 0) {
    return bad("o_groups = ", c.o_groups, " (must be >= 1 and divide n_heads = ", c.n_heads, ")");
  }
  if (c.o_lora_rank < 1) return bad("o_lora_rank = ", c.o_lora_rank, " (must be >= 1)");
  if (!(c.rms_eps >= 0.0f) || !(c.rms_eps < 1.0f))
    return bad("rms_eps = ", c.rms_eps, " (must be in [0, 1))");
  if (!(c.main_rope_theta > 1.0))
    return bad("main_rope_theta = ", c.main_rope_theta, " (must be > 1)");
  absl::Status s = ValidateRopeParams(CompressRopeParams(c));
  if (!s.ok()) return bad("compress rope: ", s.message());
  return absl::OkStatus();
}

YarnRopeParams CompressRopeParams(const V4Config& c) {
  YarnRopeParams p;
  p.theta = c.compress_rope_theta;
  p.factor = c.compress_rope_factor;
  p.original_max_position = c.compress_rope_original_max_position;
  p.beta_fast = c.compress_rope_beta_fast;
  p.beta_slow = c.compress_rope_beta_slow;
  p.mscale = 1.0;  // attention_factor forced to 1.0 (§4.1)
  p.mscale_all_dim = 1.0;
  p.rope_dim = c.rope_dim;
  return p;
}

absl::StatusOr<YarnRopeParams> LayerRopeParams(const V4Config& c, int layer) {
  if (layer < 0 || layer >= c.num_layers()) {
    return absl::InvalidArgumentError(
        kv::StrCat("layer ", layer, " out of range [0, ", c.num_layers(), ")"));
  }
  if (c.compress_ratios[layer] != kWindowOnly) return CompressRopeParams(c);
  YarnRopeParams p;
  p.theta = c.main_rope_theta;
  p.factor = 1.0;  // no scaling
  p.rope_dim = c.rope_dim;
  return p;
}

}  // namespace kv::kernels::v4
