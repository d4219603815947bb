#include "kernels/kv_layout.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace kv::kernels {

std::string_view LayoutName(KvLayout layout) {
  const char* name = KvLayoutName(layout);
  return name != nullptr ? name : "unknown";
}

absl::StatusOr<KvLayout> ParseLayout(std::string_view name) {
  for (KvLayout l : {KvLayout::kMlaFp8_656, KvLayout::kMlaBf16_1152}) {
    if (name == KvLayoutName(l)) return l;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown KV layout '", std::string(name),
                                                 "' (expected mla-fp8-656 or mla-bf16-1152)"));
}

absl::Status ValidatePagedKvView(const PagedKvView& kv) {
  if (kv.pool == nullptr) return absl::InvalidArgumentError("paged KV view: pool is null");
  if (kv.page_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("paged KV view: page_tokens ", kv.page_tokens, " must be positive"));
  }
  const int rb = RecordBytes(kv.layout);
  if (rb == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("paged KV view: unknown layout id ", static_cast<int>(kv.layout)));
  }
  if (kv.layer_offset < 0 || kv.block_stride <= 0 || kv.layer_offset > kv.block_stride ||
      kv.layer_offset + static_cast<int64_t>(kv.page_tokens) * rb > kv.block_stride) {
    return absl::InvalidArgumentError(
        absl::StrCat("paged KV view: layer_offset ", kv.layer_offset, " + ", kv.page_tokens,
                     " tokens x ", rb, " B does not fit in block_stride ", kv.block_stride));
  }
  // The bound keeps block * block_stride and block * page_tokens far from int64 overflow.
  if (kv.num_physical_blocks <= 0 || kv.num_physical_blocks > (int64_t{1} << 31) ||
      kv.block_stride > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("paged KV view: num_physical_blocks ", kv.num_physical_blocks,
                     " must be in (0, 2^31] and block_stride ", kv.block_stride, " <= 2^31"));
  }
  return absl::OkStatus();
}

absl::Status ValidateReadableTokens(const PagedKvView& kv, int64_t num_tokens) {
  if (absl::Status s = ValidatePagedKvView(kv); !s.ok()) return s;
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("negative token count ", num_tokens));
  }
  const int64_t blocks = (num_tokens + kv.page_tokens - 1) / kv.page_tokens;
  if (blocks > kv.num_table_blocks || (blocks > 0 && kv.block_table == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("block table has ", kv.num_table_blocks,
                                                   " entries but ", num_tokens, " tokens need ",
                                                   blocks));
  }
  for (int64_t i = 0; i < blocks; ++i) {
    const int32_t b = kv.block_table[i];
    if (b < 0 || b >= kv.num_physical_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("block table entry ", i, " = ", b,
                                                     " is outside the pool of ",
                                                     kv.num_physical_blocks, " blocks"));
    }
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels
