// KvCache: one sequence's paged MLA KV in host memory: a pool of fixed-size physical blocks,
// a block table mapping the sequence's logical blocks to them, and the token count written.
//
// A block holds `page_tokens` (64) tokens for *all* layers, layer-major: layer L's records
// are contiguous at byte L * page_tokens * record_bytes of the block, token t of the block at
// + t * record_bytes (kernels/kv_layout.h). So a block's bytes are exactly a kvstore page
// section (DESIGN.md "Pages": "each section is layer-major"), and ExportBlock/AppendBlock
// move a block in and out byte for byte: a cached page is loaded instead of recomputed.
//
// The pool is poisoned with 0xFF on creation and whenever a block is freed: 0xFF is NaN in
// e4m3, bf16 and f32, so a read of a record nobody wrote shows up as NaN, never as data.
//
// Lifecycle: Reserve(total) allocates blocks for positions [0, total); the model writes
// each layer's records for new positions through LayerView() + Slots(), then calls
// Commit(total). Export/Append/Truncate operate on committed tokens.
//
// Not thread-safe: one sequence, one user at a time. Views returned by LayerView() point
// into the cache and are valid until the next Reserve/AppendBlock/Truncate/Reset.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kv_layout.h"

namespace kv::model {

struct KvCacheOptions {
  kernels::KvLayout layout = kernels::KvLayout::kMlaFp8_656;
  int num_layers = 0;
  int page_tokens = kernels::kDefaultPageTokens;
  int64_t max_blocks = 0;  // pool capacity; max tokens = max_blocks * page_tokens
};

class KvCache {
 public:
  // InvalidArgument naming the option for num_layers <= 0, page_tokens <= 0, max_blocks
  // <= 0, an unknown layout, or a pool size past 2^40 bytes.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const KvCacheOptions& options);

  const KvCacheOptions& options() const { return options_; }
  kernels::KvLayout layout() const { return options_.layout; }
  int page_tokens() const { return options_.page_tokens; }
  int record_bytes() const { return kernels::RecordBytes(options_.layout); }
  // Bytes of one block (all layers): num_layers * page_tokens * record_bytes.
  int64_t block_bytes() const { return block_bytes_; }
  // KV bytes one token occupies across all layers.
  int64_t bytes_per_token() const { return int64_t{options_.num_layers} * record_bytes(); }
  // Tokens whose KV is written and committed.
  int64_t num_tokens() const { return num_tokens_; }
  // Logical blocks allocated (>= ceil(num_tokens / page_tokens)).
  int64_t num_blocks() const { return static_cast<int64_t>(block_table_.size()); }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }

  // Allocates blocks so positions [0, total_tokens) have slots. ResourceExhausted (retryable:
  // freeing blocks helps) when the pool is too small; nothing is allocated then.
  absl::Status Reserve(int64_t total_tokens);
  // Physical slots of positions [start, start + n). InvalidArgument when a position has no
  // reserved block.
  absl::StatusOr<std::vector<int64_t>> Slots(int64_t start, int64_t n) const;
  // The paged view of one layer over the whole pool and the block table (for kernels).
  kernels::PagedKvView LayerView(int layer) const;
  // Marks [0, total_tokens) written. InvalidArgument if total_tokens is beyond the reserved
  // blocks or below the committed count.
  absl::Status Commit(int64_t total_tokens);

  // The bytes of full logical block `i` (block_bytes() of them), layer-major.
  // OutOfRange when block i is not completely committed.
  absl::StatusOr<std::string> ExportBlock(int64_t i) const;
  // The raw bytes of reserved logical block `i`, complete or not: records not yet written
  // read as 0xFF poison. For tests and inspection (ExportBlock is the publishing path).
  // OutOfRange when block i is not reserved.
  absl::StatusOr<std::string> RawBlock(int64_t i) const;
  // Zero-copy view of reserved logical block `i` (block_bytes() bytes, layer-major; records
  // not yet written read as 0xFF). Valid until the next Reserve/AppendBlock/Truncate/Reset.
  // OutOfRange when block i is not reserved.
  absl::StatusOr<std::span<const uint8_t>> BlockView(int64_t i) const;
  // Appends a full block after the committed tokens (which must be a whole number of
  // blocks) and commits it. InvalidArgument for a wrong size or a partial last block;
  // ResourceExhausted when the pool is full.
  absl::Status AppendBlock(std::span<const uint8_t> bytes) {
    return AppendBlock(bytes, options_.page_tokens);
  }
  // The same for a block of which only the first `tokens` (1..page_tokens) positions are
  // valid (the tail of a prompt handed over from another worker): those are committed, the
  // records past them are re-poisoned with 0xFF whatever `bytes` holds there. InvalidArgument
  // for tokens outside 1..page_tokens, otherwise as AppendBlock.
  absl::Status AppendBlock(std::span<const uint8_t> bytes, int64_t tokens);
  // Keeps the first `num_tokens` committed tokens, frees (and re-poisons) whole blocks past
  // them. InvalidArgument if num_tokens > num_tokens().
  absl::Status Truncate(int64_t num_tokens);
  void Reset() { (void)Truncate(0); }

 private:
  explicit KvCache(const KvCacheOptions& options);
  uint8_t* BlockBase(int32_t physical) { return blocks_.data() + physical * block_bytes_; }

  KvCacheOptions options_;
  int64_t block_bytes_ = 0;
  std::vector<uint8_t> blocks_;
  std::vector<int32_t> block_table_;
  std::vector<int32_t> free_;  // a stack; lowest block ids are handed out first
  int64_t num_tokens_ = 0;
};

}  // namespace kv::model
