#include "kernels/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/bf16.h"
#include "kernels/gemm.h"
#include "kernels/mla_record.h"

namespace kv::kernels {
namespace {

constexpr int kChunk = 256;  // keys per step: few, large GEMMs

// Fills `buf` with keys [s0, s0 + c) as rows of 576 floats, or points `*rows` at them
// directly; returns the row stride.
using KeyChunkFn = std::function<int64_t(int64_t s0, int64_t c, float* buf, const float** rows)>;

absl::Status CheckArgs(const float* q, int64_t num_q, int num_heads, int64_t start_pos, float scale,
                       const float* out) {
  if (num_heads <= 0 || num_q < 0 || start_pos < 0) {
    return absl::InvalidArgumentError(absl::StrCat("MLA attention: bad num_heads ", num_heads,
                                                   ", num_q ", num_q, " or start_pos ", start_pos));
  }
  if (!std::isfinite(scale) || scale <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("MLA attention: softmax_scale ", scale, " must be finite and positive"));
  }
  if (num_q > 0 && (q == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError("MLA attention: null query or output");
  }
  for (int64_t i = 0; i < num_q * num_heads * kMlaKeyDim; ++i) {
    if (!std::isfinite(q[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("MLA attention: query token ", i / (num_heads * kMlaKeyDim), " head ",
                       i / kMlaKeyDim % num_heads, " has a NaN or infinite value"));
    }
  }
  return absl::OkStatus();
}

// One chunk of the online softmax for one (query, head): turns the scores `sr[0..c)` into
// unnormalised probabilities against the running max, and rescales the accumulator.
void OnlineSoftmaxStep(float* sr, int64_t c, float* m, float* l, float* acc) {
  const float mx = *std::max_element(sr, sr + c);
  const float m_new = std::max(*m, mx);
  const float alpha = std::exp(*m - m_new);  // 0 on the first chunk (*m = -inf)
  float sum = 0.0f;
  for (int64_t j = 0; j < c; ++j) {
    sr[j] = std::exp(sr[j] - m_new);
    sum += sr[j];
  }
  *l = *l * alpha + sum;
  *m = m_new;
  if (alpha != 1.0f) {
    for (int d = 0; d < kMlaLatentDim; ++d) acc[d] *= alpha;
  }
}

// One validated record (layout known) to 576 floats.
void DecodeRecord(KvLayout layout, const uint8_t* rec, float* out) {
  if (layout == KvLayout::kMlaFp8_656) {
    DequantizeMlaFp8Record(rec, out);
    return;
  }
  uint16_t h[kMlaKeyDim];
  std::memcpy(h, rec, sizeof(h));
  for (int j = 0; j < kMlaKeyDim; ++j) out[j] = Bf16ToFloat(h[j]);
}

// Per-query online-softmax state lives in out (the accumulator) plus m/l arrays. Keys are
// visited chunk by chunk; each chunk is materialised once and used by every query that
// sees it. A query's arithmetic depends only on its position (its chunk sizes), never on
// which other queries share the call.
absl::Status Attend(const float* q, int64_t num_q, int num_heads, int64_t start_pos, float scale,
                    const KeyChunkFn& keys, float* out, float* lse) {
  const int64_t h = num_heads;
  const int64_t total = start_pos + num_q;
  std::fill(out, out + num_q * h * kMlaLatentDim, 0.0f);
  std::vector<float> m(num_q * h, -std::numeric_limits<float>::infinity());
  std::vector<float> l(num_q * h, 0.0f);
  std::vector<float> buf(kChunk * kMlaKeyDim), s(h * kChunk);
  for (int64_t s0 = 0; s0 < total; s0 += kChunk) {
    const int64_t c_all = std::min<int64_t>(kChunk, total - s0);
    const float* rows = buf.data();
    const int64_t ld = keys(s0, c_all, buf.data(), &rows);
    // Queries before position s0 see none of this chunk.
    for (int64_t i = std::max<int64_t>(0, s0 - start_pos); i < num_q; ++i) {
      const int64_t c = std::min<int64_t>(c_all, start_pos + i + 1 - s0);
      const float* qi = q + i * h * kMlaKeyDim;
      float* acc = out + i * h * kMlaLatentDim;
      absl::Status st = Sgemm(false, true, h, c, kMlaKeyDim, scale, qi, kMlaKeyDim, rows, ld, 0.0f,
                              s.data(), kChunk);
      if (!st.ok()) return st;
      for (int64_t hh = 0; hh < h; ++hh) {
        OnlineSoftmaxStep(s.data() + hh * kChunk, c, &m[i * h + hh], &l[i * h + hh],
                          acc + hh * kMlaLatentDim);
      }
      st = Sgemm(false, false, h, kMlaLatentDim, c, 1.0f, s.data(), kChunk, rows, ld, 1.0f, acc,
                 kMlaLatentDim);
      if (!st.ok()) return st;
    }
  }
  for (int64_t k = 0; k < num_q * h; ++k) {
    const float inv = 1.0f / l[k];
    for (int d = 0; d < kMlaLatentDim; ++d) out[k * kMlaLatentDim + d] *= inv;
    if (lse != nullptr) lse[k] = m[k] + std::log(l[k]);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                               const PagedKvView& kv, float softmax_scale, float* out, float* lse) {
  if (absl::Status s = CheckArgs(q, num_q, num_heads, start_pos, softmax_scale, out); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateReadableTokens(kv, start_pos + num_q); !s.ok()) return s;
  if (num_q == 0) return absl::OkStatus();
  auto keys = [&](int64_t s0, int64_t c, float* buf, const float** rows) -> int64_t {
    for (int64_t j = 0; j < c; ++j) {
      const int64_t pos = s0 + j;
      const int64_t slot =
          static_cast<int64_t>(kv.block_table[pos / kv.page_tokens]) * kv.page_tokens +
          pos % kv.page_tokens;
      DecodeRecord(kv.layout, kv.SlotRecord(slot), buf + j * kMlaKeyDim);
    }
    *rows = buf;
    return kMlaKeyDim;
  };
  return Attend(q, num_q, num_heads, start_pos, softmax_scale, keys, out, lse);
}

absl::Status MlaDecodeAttention(const float* q, int num_heads, const PagedKvView& kv,
                                int64_t seq_len, float softmax_scale, float* out, float* lse) {
  if (seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MLA decode: seq_len ", seq_len, " must be positive"));
  }
  return MlaPagedAttention(q, 1, num_heads, seq_len - 1, kv, softmax_scale, out, lse);
}

absl::Status MlaContiguousAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                                    const float* kv, int64_t kv_stride, float softmax_scale,
                                    float* out, float* lse) {
  if (absl::Status s = CheckArgs(q, num_q, num_heads, start_pos, softmax_scale, out); !s.ok()) {
    return s;
  }
  if (num_q == 0) return absl::OkStatus();
  if (kv == nullptr || kv_stride < kMlaKeyDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("MLA attention: null kv or kv_stride ", kv_stride, " < 576"));
  }
  auto keys = [&](int64_t s0, int64_t, float*, const float** rows) -> int64_t {
    *rows = kv + s0 * kv_stride;
    return kv_stride;
  };
  return Attend(q, num_q, num_heads, start_pos, softmax_scale, keys, out, lse);
}

}  // namespace kv::kernels
