#include "kernels/paged_kv.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace kv::kernels {
namespace {

// All slots are -1 or inside the pool. Checked before anything is written.
absl::Status CheckSlots(const PagedKvView& kv, const int64_t* slots, int64_t n) {
  if (absl::Status s = ValidatePagedKvView(kv); !s.ok()) return s;
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("negative token count ", n));
  if (n > 0 && slots == nullptr) return absl::InvalidArgumentError("null slot mapping");
  const int64_t limit = kv.num_physical_blocks * kv.page_tokens;
  for (int64_t i = 0; i < n; ++i) {
    if (slots[i] < -1 || slots[i] >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, ": slot ", slots[i], " outside [-1, ", limit, ")"));
    }
  }
  return absl::OkStatus();
}

template <typename Src>
absl::Status AppendImpl(const PagedKvView& kv, const int64_t* slots, int64_t n, const Src& src) {
  if (absl::Status s = CheckSlots(kv, slots, n); !s.ok()) return s;
  for (int64_t i = 0; i < n; ++i) {
    if (slots[i] == -1) continue;
    Src one = src;
    one.latent = src.latent == nullptr ? nullptr : src.latent + i * src.latent_stride;
    one.rope = src.rope == nullptr ? nullptr : src.rope + i * src.rope_stride;
    if (absl::Status s =
            EncodeMlaRecords(kv.layout, one, 1, kv.SlotRecord(slots[i]), kv.record_bytes());
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("token ", i, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ScatterRecords(const PagedKvView& kv, const int64_t* slots, int64_t n,
                            const uint8_t* in, int64_t in_stride) {
  if (absl::Status s = CheckSlots(kv, slots, n); !s.ok()) return s;
  const int rb = kv.record_bytes();
  if (n > 0 && (in == nullptr || in_stride < rb)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScatterRecords: null input or stride ", in_stride, " < ", rb));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (slots[i] != -1) std::memcpy(kv.SlotRecord(slots[i]), in + i * in_stride, rb);
  }
  return absl::OkStatus();
}

absl::Status AppendMlaTokens(const PagedKvView& kv, const int64_t* slots, int64_t n,
                             const MlaSourceF32& src) {
  return AppendImpl(kv, slots, n, src);
}

absl::Status AppendMlaTokens(const PagedKvView& kv, const int64_t* slots, int64_t n,
                             const MlaSourceBf16& src) {
  return AppendImpl(kv, slots, n, src);
}

absl::StatusOr<int64_t> SlotForPosition(const PagedKvView& kv, int64_t pos) {
  if (pos < 0) return absl::InvalidArgumentError(absl::StrCat("negative position ", pos));
  if (absl::Status s = ValidateReadableTokens(kv, pos + 1); !s.ok()) return s;
  return static_cast<int64_t>(kv.block_table[pos / kv.page_tokens]) * kv.page_tokens +
         pos % kv.page_tokens;
}

absl::Status GatherMlaTokens(const PagedKvView& kv, int64_t first, int64_t n, float* out,
                             int64_t out_stride) {
  if (first < 0 || n < 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad token range ", first, "+", n));
  }
  if (absl::Status s = ValidateReadableTokens(kv, first + n); !s.ok()) return s;
  if (n > 0 && (out == nullptr || out_stride < kMlaKeyDim)) {
    return absl::InvalidArgumentError("GatherMlaTokens: null output or stride < 576");
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = first + i;
    const int64_t slot =
        static_cast<int64_t>(kv.block_table[pos / kv.page_tokens]) * kv.page_tokens +
        pos % kv.page_tokens;
    if (absl::Status s = DecodeMlaRecords(kv.layout, kv.SlotRecord(slot), kv.record_bytes(), 1,
                                          out + i * out_stride, out_stride);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels
