// DeepSeek-V4 hybrid attention geometry (formats.md §4.1): which layers compress (CSA m = 4,
// HCA m = 128) and which keep only the 128-token sliding window, the 512-wide K = V head
// (448 nope + 64 rope, rope trailing), the lightning indexer's shape and the compress RoPE.
//
// V4Config is a plain value: copy it freely; const access from many threads is safe.
// ValidateV4Config never allocates results the caller must own.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/rope.h"

namespace kv::kernels::v4 {

// Compress ratios a layer may have (formats.md §4.1 `compress_ratios`).
inline constexpr int kWindowOnly = 0;
inline constexpr int kCsaRatio = 4;
inline constexpr int kHcaRatio = 128;

struct V4Config {
  std::vector<int> compress_ratios;  // one per layer: 0, 4 or 128
  int sliding_window = 128;
  int head_dim = 512;  // = nope_dim + rope_dim
  int nope_dim = 448;
  int rope_dim = 64;  // trailing dims of every 512-d vector, interleaved pairs
  int n_heads = 64;   // query heads
  int index_n_heads = 64;
  int index_head_dim = 128;
  int index_topk = 512;
  int o_groups = 8;
  int o_lora_rank = 1024;
  float rms_eps = 1e-6f;
  // Compress RoPE (§4.1): θ 160000, YaRN factor 16 over 65536, β 32/1, attention factor
  // forced to 1.0 (cos/sin are never scaled).
  double compress_rope_theta = 160000.0;
  double compress_rope_factor = 16.0;
  int64_t compress_rope_original_max_position = 65536;
  double compress_rope_beta_fast = 32.0;
  double compress_rope_beta_slow = 1.0;
  // Main RoPE of window-only layers: θ 10000, no scaling (§4.1).
  double main_rope_theta = 10000.0;

  int num_layers() const { return static_cast<int>(compress_ratios.size()); }
  int CountLayers(int ratio) const;
};

// The published configs (formats.md §4.1), without the MTP layer.
// V4-Pro: 61 layers, [128,128,4,128,4,...,4] = 31 HCA + 30 CSA, 128 heads, topk 1024,
// 16 × 1024 o-groups. V4-Flash: 43 layers [0,0,4,128,...,4] = 2 window-only + 21 CSA + 20 HCA,
// 64 heads, topk 512, 8 × 1024 o-groups.
V4Config V4ProConfig();
V4Config V4FlashConfig();

// OK, or InvalidArgument naming the field and value: no layers, a ratio other than 0/4/128
// (names the layer), head_dim != nope_dim + rope_dim, rope_dim odd or > head_dim, a
// non-positive size, index_topk < 1, head_dim not divisible by o_groups... , bad RoPE values.
absl::Status ValidateV4Config(const V4Config& c);

// The compress RoPE as YarnRopeParams (mscale = mscale_all_dim = 1, i.e. attention factor 1).
YarnRopeParams CompressRopeParams(const V4Config& c);
// The RoPE a layer's attention uses: compress RoPE for CSA/HCA layers, θ = main_rope_theta
// with no scaling for window-only layers. InvalidArgument for a layer out of range.
absl::StatusOr<YarnRopeParams> LayerRopeParams(const V4Config& c, int layer);

}  // namespace kv::kernels::v4
