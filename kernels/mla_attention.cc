#include "kernels/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/thread_pool.h"
#include "kernels/bf16.h"
#include "kernels/gemm.h"
#include "kernels/mla_record.h"
#include "kernels/portable_math.h"
#include "kernels/transpose.h"

namespace kv::kernels {
namespace {

// Keys per step. Chunks sit at fixed absolute positions (multiples of kChunk); 64 keeps a
// chunk's rows and transpose (2 × 144 KiB) in L2.
constexpr int kChunk = 64;

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
// unnormalised probabilities against the running max, and rescales the accumulator. Every
// step is in a fixed order (j ascending) with the portable exp.
void OnlineSoftmaxStep(float* sr, int64_t c, float* m, float* l, float* acc) {
  const float mx = *std::max_element(sr, sr + c);
  const float m_new = std::max(*m, mx);
  const float alpha = ExpF(*m - m_new);  // 0 on the first chunk (*m = -inf)
  float sum = 0.0f;
  for (int64_t j = 0; j < c; ++j) {
    sr[j] = ExpF(sr[j] - m_new);
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

// Queries per block: a block's scores are (block × heads) × 64 floats and its accumulators
// (block × heads) × 512, which stay in cache while every key chunk it sees streams past.
int64_t QueryBlock(int num_heads) { return std::max<int64_t>(1, 256 / num_heads); }

// Queries [b0, b1) over every key chunk they see. A chunk's keys are materialised (rows for
// the value sums, transposed for the scores) once per block.
absl::Status AttendBlock(const float* q, int64_t b0, int64_t b1, int64_t h, int64_t start_pos,
                         float scale, const KeyChunkFn& keys, float* out, float* m, float* l) {
  thread_local std::vector<float> buf, kt, s;
  buf.resize(kChunk * kMlaKeyDim);
  kt.resize(kMlaKeyDim * kChunk);
  s.resize((b1 - b0) * h * kChunk);
  const int64_t end = start_pos + b1;  // the block's last query sees keys [0, end)
  for (int64_t s0 = 0; s0 < end; s0 += kChunk) {
    const int64_t c_all = std::min<int64_t>(kChunk, end - s0);
    const float* rows = buf.data();
    const int64_t ld = keys(s0, c_all, buf.data(), &rows);
    TransposeF32(rows, c_all, kMlaKeyDim, ld, kt.data(), kChunk);  // k-major for the scores
    // Queries before position s0 see none of this chunk; from `full` on they see all of it.
    const int64_t first = std::max(b0, s0 - start_pos);
    const int64_t full = std::max(first, s0 + kChunk - 1 - start_pos);
    float* sb = s.data() + (first - b0) * h * kChunk;
    RETURN_IF_ERROR(Gemm((b1 - first) * h, q + first * h * kMlaKeyDim, kMlaKeyDim,
                         GemmB::RowMajor(kt.data(), kMlaKeyDim, c_all, kChunk), sb, kChunk));
    for (int64_t i = first; i < b1; ++i) {
      const int64_t c = std::min<int64_t>(c_all, start_pos + i + 1 - s0);
      float* si = s.data() + (i - b0) * h * kChunk;
      for (int64_t hh = 0; hh < h; ++hh) {
        float* sr = si + hh * kChunk;
        for (int64_t j = 0; j < c; ++j) sr[j] *= scale;
        OnlineSoftmaxStep(sr, c, &m[i * h + hh], &l[i * h + hh],
                          out + (i * h + hh) * kMlaLatentDim);
      }
      if (i < full) {  // on the diagonal: exactly the c keys it sees
        RETURN_IF_ERROR(Gemm(h, si, kChunk, GemmB::RowMajor(rows, c, kMlaLatentDim, ld),
                             out + i * h * kMlaLatentDim, kMlaLatentDim, {.accumulate = true}));
      }
    }
    if (full < b1) {  // the queries that see the whole chunk, in one product
      RETURN_IF_ERROR(Gemm((b1 - full) * h, s.data() + (full - b0) * h * kChunk, kChunk,
                           GemmB::RowMajor(rows, c_all, kMlaLatentDim, ld),
                           out + full * h * kMlaLatentDim, kMlaLatentDim, {.accumulate = true}));
    }
  }
  return absl::OkStatus();
}

// Per-query online-softmax state lives in out (the accumulator) plus m/l arrays. Keys are
// visited in 64-token chunks at fixed absolute positions, so every query's sequence of
// chunks depends only on its position. Scores and value sums are batch-invariant GEMMs
// (kernels/gemm.h), so a query's bits depend only on its position and the cache, however many
// queries share the call: the queries that see a whole chunk share one product, and each
// query on the causal diagonal runs its value sum over exactly the keys it sees. Query blocks
// run in parallel on `pool`; which thread runs a block changes nothing.
absl::Status Attend(const float* q, int64_t num_q, int num_heads, int64_t start_pos, float scale,
                    const KeyChunkFn& keys, ThreadPool* pool, float* out, float* lse) {
  const int64_t h = num_heads;
  const int64_t qb = QueryBlock(num_heads);
  std::fill(out, out + num_q * h * kMlaLatentDim, 0.0f);
  std::vector<float> m(num_q * h, -std::numeric_limits<float>::infinity());
  std::vector<float> l(num_q * h, 0.0f);
  const int64_t blocks = (num_q + qb - 1) / qb;
  std::vector<absl::Status> status(blocks);
  ParallelFor(blocks > 1 ? pool : nullptr, blocks, [&](int64_t bi) {
    const int64_t b0 = bi * qb, b1 = std::min(num_q, b0 + qb);
    status[bi] = AttendBlock(q, b0, b1, h, start_pos, scale, keys, out, m.data(), l.data());
  });
  for (const absl::Status& st : status) RETURN_IF_ERROR(st);
  for (int64_t k = 0; k < num_q * h; ++k) {
    const float inv = 1.0f / l[k];
    for (int d = 0; d < kMlaLatentDim; ++d) out[k * kMlaLatentDim + d] *= inv;
    if (lse != nullptr) lse[k] = static_cast<float>(static_cast<double>(m[k]) + LogD(l[k]));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                               const PagedKvView& kv, float softmax_scale, float* out, float* lse,
                               ThreadPool* pool) {
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
  return Attend(q, num_q, num_heads, start_pos, softmax_scale, keys, pool, out, lse);
}

absl::Status MlaDecodeAttention(const float* q, int num_heads, const PagedKvView& kv,
                                int64_t seq_len, float softmax_scale, float* out, float* lse,
                                ThreadPool* pool) {
  if (seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MLA decode: seq_len ", seq_len, " must be positive"));
  }
  return MlaPagedAttention(q, 1, num_heads, seq_len - 1, kv, softmax_scale, out, lse, pool);
}

absl::Status MlaContiguousAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                                    const float* kv, int64_t kv_stride, float softmax_scale,
                                    float* out, float* lse, ThreadPool* pool) {
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
  return Attend(q, num_q, num_heads, start_pos, softmax_scale, keys, pool, out, lse);
}

}  // namespace kv::kernels
