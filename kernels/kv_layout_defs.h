// Plain definitions behind kernels/kv_layout.h, free of Abseil so that CUDA translation
// units (kernels/*.cu) can include them: record sizes and offsets, the KvLayout enum and the
// PagedKvView descriptor. See kv_layout.h for the contract; everything here is constexpr or
// a trivially copyable struct.
#pragma once

#include <cstdint>

#include "kernels/portable.h"

namespace kv::kernels {

inline constexpr int kMlaLatentDim = 512;                       // kv_lora_rank (formats.md §1.1)
inline constexpr int kMlaRopeDim = 64;                          // qk_rope_head_dim
inline constexpr int kMlaKeyDim = kMlaLatentDim + kMlaRopeDim;  // 576: absorbed score dim
inline constexpr int kMlaTile = 128;                            // elements per fp8 scale
inline constexpr int kMlaTiles = kMlaLatentDim / kMlaTile;      // 4

// mla-fp8-656 byte offsets.
inline constexpr int kFp8CodesOffset = 0;
inline constexpr int kFp8ScalesOffset = 512;
inline constexpr int kFp8RopeOffset = 528;
inline constexpr int kFp8RecordBytes = 656;
// mla-bf16-1152 byte offsets.
inline constexpr int kBf16LatentOffset = 0;
inline constexpr int kBf16RopeOffset = 1024;
inline constexpr int kBf16RecordBytes = 1152;

inline constexpr int kDefaultPageTokens = 64;

enum class KvLayout : uint8_t {
  kMlaFp8_656 = 1,
  kMlaBf16_1152 = 2,
};

// "mla-fp8-656" / "mla-bf16-1152"; nullptr for a value outside the enum (kv_layout.h's
// LayoutName says "unknown"). Header-only, so the page format can name layouts without
// linking the kernels.
constexpr const char* KvLayoutName(KvLayout layout) {
  return layout == KvLayout::kMlaFp8_656     ? "mla-fp8-656"
         : layout == KvLayout::kMlaBf16_1152 ? "mla-bf16-1152"
                                             : nullptr;
}

// Bytes per token record: 656 or 1152; 0 for a value outside the enum.
KV_HD constexpr int RecordBytes(KvLayout layout) {
  return layout == KvLayout::kMlaFp8_656     ? kFp8RecordBytes
         : layout == KvLayout::kMlaBf16_1152 ? kBf16RecordBytes
                                             : 0;
}
struct PagedKvView {
  uint8_t* pool = nullptr;   // base of physical block 0
  int64_t block_stride = 0;  // bytes between physical blocks
  int64_t layer_offset = 0;  // bytes from a block's base to this layer's first record
  int page_tokens = kDefaultPageTokens;
  KvLayout layout = KvLayout::kMlaFp8_656;
  const int32_t* block_table = nullptr;  // logical block -> physical block (readers only)
  int64_t num_table_blocks = 0;          // entries in block_table
  int64_t num_physical_blocks = 0;       // blocks in the pool (bounds for table and slots)

  KV_HD int record_bytes() const { return RecordBytes(layout); }
  // Address of a slot's record. No checks: use Validate* first.
  KV_HD uint8_t* SlotRecord(int64_t slot) const {
    return pool + (slot / page_tokens) * block_stride + layer_offset +
           (slot % page_tokens) * static_cast<int64_t>(record_bytes());
  }
};

}  // namespace kv::kernels
