// MLA KV record layouts and the paged KV view the attention kernels read through.
//
// A *record* is one token's cached KV for one layer (DESIGN.md "KV layouts"):
//   mla-fp8-656   (formats.md §2.1, FlashMLA "V32_FP8Sparse"), little-endian, contiguous:
//                   [0, 512)    512 e4m3 codes of the latent c_kv, element j at byte j
//                   [512, 528)  4 float32 power-of-two scales, scale k covers [128k, 128k+128)
//                   [528, 656)  64 bf16 of the post-RoPE shared k_rope (interleaved pairs)
//   mla-bf16-1152 the same data uncompressed: 512 bf16 latent, then 64 bf16 rope.
//
// PagedKvView describes where records live: a pool of physical blocks; logical block i of a
// sequence is physical block block_table[i]; token t (0-based within its block) of the
// view's layer is at  pool + block * block_stride + layer_offset + t * record_bytes.
// Tokens are contiguous within a block per layer (FlashMLA's layout); the block stride is
// free. A *slot* is physical_block * page_tokens + offset_in_block (formats.md §2.3).
//
// These are plain descriptors: the view does not own the pool or the block table; both must
// outlive every call given the view. A view may be shared across threads for reading;
// concurrent writes to the same slots are the caller's to prevent.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kv_layout_defs.h"

namespace kv::kernels {

// "mla-fp8-656" / "mla-bf16-1152"; "unknown" otherwise.
std::string_view LayoutName(KvLayout layout);
// Inverse of LayoutName. InvalidArgument naming the string for anything else.
absl::StatusOr<KvLayout> ParseLayout(std::string_view name);

// Checks the geometry: pool non-null, page_tokens > 0, known layout, a block holding
// page_tokens records after layer_offset fits in block_stride (<= 2^31 bytes),
// 0 < num_physical_blocks <= 2^31.
// InvalidArgument naming the bad field.
absl::Status ValidatePagedKvView(const PagedKvView& kv);

// ValidatePagedKvView plus: the block table covers `num_tokens` logical tokens and each of
// its first ceil(num_tokens/page_tokens) entries is a physical block in range.
// InvalidArgument naming the first bad entry.
absl::Status ValidateReadableTokens(const PagedKvView& kv, int64_t num_tokens);

}  // namespace kv::kernels
