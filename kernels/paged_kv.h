// Writing token records into paged KV through a slot mapping (the "append/scatter" step
// after a layer's kv projection; vLLM's reshape_and_cache, FlashMLA's slot convention).
//
// slots[i] is the physical slot of token i: physical_block * page_tokens + offset_in_block.
// slots[i] == -1 means "skip": nothing is written anywhere for that token. This is how a
// batch's padding rows are kept out of real pages (formats.md §5.3: never let padding slots
// write into a real page). The block table of the view is not used by writers.
//
// Invariance contract: the bytes written for token i are the record codec's (kernels/
// mla_record.h) of its own values, whatever else shares the call.
//
// Errors: InvalidArgument for a bad view (ValidatePagedKvView), negative n, null pointers,
// a slot < -1 or beyond the pool (num_physical_blocks * page_tokens), or an encode error
// (non-finite value). All slots are checked before anything is written, so a bad slot
// writes nothing. Duplicate slots are not rejected: the later token wins. Thread-safe for
// disjoint slots.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/kv_layout.h"
#include "kernels/mla_record.h"

namespace kv::kernels {

// Copies n already-encoded records (in + i*in_stride, view.layout's size) into their slots.
absl::Status ScatterRecords(const PagedKvView& kv, const int64_t* slots, int64_t n,
                            const uint8_t* in, int64_t in_stride);

// Encodes n tokens straight into their slots (EncodeMlaRecords + ScatterRecords fused).
// On an encode error some earlier tokens may already be written.
absl::Status AppendMlaTokens(const PagedKvView& kv, const int64_t* slots, int64_t n,
                             const MlaSourceF32& src);
absl::Status AppendMlaTokens(const PagedKvView& kv, const int64_t* slots, int64_t n,
                             const MlaSourceBf16& src);

// Reads logical tokens [first, first+n) of the view through its block table and decodes
// them into rows of 576 floats (see DecodeMlaRecords). InvalidArgument if the table does
// not cover them.
absl::Status GatherMlaTokens(const PagedKvView& kv, int64_t first, int64_t n, float* out,
                             int64_t out_stride);

// The slot of logical token `pos` of a sequence, through the view's block table.
// InvalidArgument when the table does not cover pos or names an out-of-range block.
absl::StatusOr<int64_t> SlotForPosition(const PagedKvView& kv, int64_t pos);

}  // namespace kv::kernels
