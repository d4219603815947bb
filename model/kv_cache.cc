#include "model/kv_cache.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace kv::model {

KvCache::KvCache(const KvCacheOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const KvCacheOptions& options) {
  if (options.num_layers <= 0)
    return absl::InvalidArgumentError("kv cache: num_layers must be > 0");
  if (options.page_tokens <= 0) {
    return absl::InvalidArgumentError("kv cache: page_tokens must be > 0");
  }
  if (options.max_blocks <= 0 || options.max_blocks > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("kv cache: max_blocks must be in (0, 2^30]");
  }
  const int rb = kernels::RecordBytes(options.layout);
  if (rb == 0) return absl::InvalidArgumentError("kv cache: unknown KV layout");
  const int64_t block = int64_t{options.num_layers} * options.page_tokens * rb;
  if (block > (int64_t{1} << 40) / options.max_blocks) {
    return absl::InvalidArgumentError("kv cache: pool would exceed 2^40 bytes");
  }
  std::unique_ptr<KvCache> c(new KvCache(options));
  c->block_bytes_ = block;
  c->blocks_.assign(static_cast<size_t>(block * options.max_blocks), 0xFF);
  for (int64_t b = options.max_blocks - 1; b >= 0; --b) c->free_.push_back(static_cast<int32_t>(b));
  return c;
}

absl::Status KvCache::Reserve(int64_t total_tokens) {
  if (total_tokens < 0) return absl::InvalidArgumentError("kv cache: negative token count");
  const int64_t need = (total_tokens + options_.page_tokens - 1) / options_.page_tokens;
  const int64_t more = need - num_blocks();
  if (more <= 0) return absl::OkStatus();
  if (more > free_blocks()) {
    return kv::MarkRetryable(absl::ResourceExhaustedError(
        absl::StrCat("kv cache: ", total_tokens, " tokens need ", need, " blocks; ", num_blocks(),
                     " held and only ", free_blocks(), " free of ", options_.max_blocks)));
  }
  for (int64_t i = 0; i < more; ++i) {
    block_table_.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> KvCache::Slots(int64_t start, int64_t n) const {
  const int64_t pt = options_.page_tokens;
  if (start < 0 || n < 0 || start + n > num_blocks() * pt) {
    return absl::InvalidArgumentError(absl::StrCat("kv cache: positions [", start, ", ", start + n,
                                                   ") are not reserved (", num_blocks() * pt,
                                                   " are)"));
  }
  std::vector<int64_t> slots(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = start + i;
    slots[i] = int64_t{block_table_[p / pt]} * pt + p % pt;
  }
  return slots;
}

kernels::PagedKvView KvCache::LayerView(int layer) const {
  kernels::PagedKvView v;
  v.pool = const_cast<uint8_t*>(blocks_.data());
  v.block_stride = block_bytes_;
  v.layer_offset = int64_t{layer} * options_.page_tokens * record_bytes();
  v.page_tokens = options_.page_tokens;
  v.layout = options_.layout;
  v.block_table = block_table_.data();
  v.num_table_blocks = num_blocks();
  v.num_physical_blocks = options_.max_blocks;
  return v;
}

absl::Status KvCache::Commit(int64_t total_tokens) {
  if (total_tokens < num_tokens_ || total_tokens > num_blocks() * options_.page_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv cache: cannot commit ", total_tokens, " tokens (committed ", num_tokens_,
                     ", reserved ", num_blocks() * options_.page_tokens, ")"));
  }
  num_tokens_ = total_tokens;
  return absl::OkStatus();
}

absl::StatusOr<std::string> KvCache::ExportBlock(int64_t i) const {
  if (i < 0 || (i + 1) * options_.page_tokens > num_tokens_) {
    return absl::OutOfRangeError(absl::StrCat("kv cache: block ", i, " is not complete (",
                                              num_tokens_, " tokens committed)"));
  }
  const uint8_t* base = blocks_.data() + int64_t{block_table_[i]} * block_bytes_;
  return std::string(reinterpret_cast<const char*>(base), static_cast<size_t>(block_bytes_));
}

absl::StatusOr<std::string> KvCache::RawBlock(int64_t i) const {
  if (i < 0 || i >= num_blocks()) {
    return absl::OutOfRangeError(absl::StrCat("kv cache: block ", i, " is not reserved"));
  }
  const uint8_t* base = blocks_.data() + int64_t{block_table_[i]} * block_bytes_;
  return std::string(reinterpret_cast<const char*>(base), static_cast<size_t>(block_bytes_));
}

absl::StatusOr<std::span<const uint8_t>> KvCache::BlockView(int64_t i) const {
  if (i < 0 || i >= num_blocks()) {
    return absl::OutOfRangeError(absl::StrCat("kv cache: block ", i, " is not reserved"));
  }
  return std::span<const uint8_t>(blocks_.data() + int64_t{block_table_[i]} * block_bytes_,
                                  static_cast<size_t>(block_bytes_));
}

absl::Status KvCache::AppendBlock(std::span<const uint8_t> bytes, int64_t tokens) {
  if (tokens < 1 || tokens > options_.page_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("kv cache: cannot append a block of ", tokens,
                                                   " tokens (page holds ", options_.page_tokens,
                                                   ")"));
  }
  if (static_cast<int64_t>(bytes.size()) != block_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv cache: block of ", bytes.size(), " bytes, expected ", block_bytes_));
  }
  if (num_tokens_ % options_.page_tokens != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv cache: cannot append a block after a partial block (", num_tokens_, " tokens)"));
  }
  const int64_t index = num_tokens_ / options_.page_tokens;
  RETURN_IF_ERROR(Reserve(num_tokens_ + tokens));
  uint8_t* base = BlockBase(block_table_[index]);
  std::memcpy(base, bytes.data(), bytes.size());
  num_tokens_ += tokens;
  if (tokens < options_.page_tokens) {  // poison what the sender did not vouch for
    const int64_t layer_bytes = int64_t{options_.page_tokens} * record_bytes();
    for (int l = 0; l < options_.num_layers; ++l) {
      std::memset(base + l * layer_bytes + tokens * record_bytes(), 0xFF,
                  static_cast<size_t>((options_.page_tokens - tokens) * record_bytes()));
    }
  }
  return absl::OkStatus();
}

absl::Status KvCache::Truncate(int64_t num_tokens) {
  if (num_tokens < 0 || num_tokens > num_tokens_) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv cache: cannot truncate to ", num_tokens, " of ", num_tokens_, " tokens"));
  }
  const int64_t keep = (num_tokens + options_.page_tokens - 1) / options_.page_tokens;
  while (num_blocks() > keep) {
    const int32_t b = block_table_.back();
    block_table_.pop_back();
    std::memset(BlockBase(b), 0xFF, static_cast<size_t>(block_bytes_));
    free_.push_back(b);
  }
  // Re-poison the dropped tail of a kept partial block, layer by layer.
  const int64_t in_block = num_tokens % options_.page_tokens;
  if (in_block != 0) {
    uint8_t* base = BlockBase(block_table_.back());
    const int64_t layer_bytes = int64_t{options_.page_tokens} * record_bytes();
    for (int l = 0; l < options_.num_layers; ++l) {
      std::memset(base + l * layer_bytes + in_block * record_bytes(), 0xFF,
                  static_cast<size_t>((options_.page_tokens - in_block) * record_bytes()));
    }
  }
  num_tokens_ = num_tokens;
  return absl::OkStatus();
}

}  // namespace kv::model
