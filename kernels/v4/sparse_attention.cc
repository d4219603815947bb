// formats.md §4.2: compressed entries + sliding window in one softmax with a per-head sink.
#include "kernels/v4/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/portable_math.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/indexer.h"
#include "kernels/v4/v4_record.h"

namespace kv::kernels::v4 {

std::vector<int32_t> AllVisibleIndices(int64_t position, int ratio) {
  std::vector<int32_t> v(static_cast<size_t>(NumVisibleEntries(position, ratio)));
  for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<int32_t>(j);
  return v;
}

namespace {
// Validates the arguments and lists the rows to attend, selected entries first (in index
// order) then the window. FP8 entries are dequantized into *scratch, which must outlive kv.
absl::Status Validate(const SparseAttentionArgs& a, const std::vector<double>& freqs,
                      std::vector<const float*>* kv, std::vector<float>* scratch) {
  auto bad = [](auto... p) {
    return absl::InvalidArgumentError(kv::StrCat("SparseAttention: ", p...));
  };
  if (a.q == nullptr || a.sink == nullptr || a.window == nullptr) return bad("null q/sink/window");
  if (a.n_heads < 1 || a.head_dim < 1 || a.rope_dim < 0 || a.rope_dim % 2 ||
      a.rope_dim > a.head_dim)
    return bad("bad n_heads ", a.n_heads, " head_dim ", a.head_dim, " rope_dim ", a.rope_dim);
  if (freqs.size() != static_cast<size_t>(a.rope_dim / 2))
    return bad("rope_freqs has ", freqs.size(), " entries, want ", a.rope_dim / 2);
  if (a.position < 0 || a.sliding_window < 1)
    return bad("position ", a.position, " / window ", a.sliding_window);
  const int64_t want_w = std::min<int64_t>(a.sliding_window, a.position + 1);
  if (a.n_window != want_w) return bad("n_window ", a.n_window, " != min(window, i+1) = ", want_w);
  if (a.ratio != 0 && a.ratio != 4 && a.ratio != 128)
    return bad("ratio ", a.ratio, " (0, 4 or 128)");
  const bool fp8 = a.entries == nullptr;
  if (a.n_indices < 0 ||
      (a.n_indices > 0 &&
       (a.indices == nullptr || (fp8 && (a.entry_tok == nullptr || a.entry_sc == nullptr)))))
    return bad("null indices/entries with n_indices ", a.n_indices);
  if (fp8 && a.n_indices > 0 && a.head_dim != kV4Dim)
    return bad("FP8 entries need head_dim ", kV4Dim, ", got ", a.head_dim);
  if (a.ratio == 0 && a.n_indices > 0) return bad("window-only layer given compressed indices");
  RETURN_IF_ERROR(CheckFinite(a.q, a.n_heads, a.head_dim, "attention q"));
  RETURN_IF_ERROR(CheckFinite(a.sink, 1, a.n_heads, "attention sink"));
  RETURN_IF_ERROR(CheckFinite(a.window, a.n_window, a.head_dim, "window kv"));
  std::vector<int32_t> seen;
  for (int64_t t = 0; t < a.n_indices; ++t) {
    const int32_t j = a.indices[t];
    if (j == -1) continue;
    if (j < 0 || j >= a.n_entries)
      return bad("index[", t, "] = ", j, " out of [0, ", a.n_entries, ")");
    if (!EntryVisible(a.position, j, a.ratio))
      return bad("index[", t, "] = ", j, " is not visible at position ", a.position, " (ratio ",
                 a.ratio, ")");
    seen.push_back(j);
  }
  if (fp8) scratch->resize(seen.size() * kV4Dim);
  for (size_t t = 0; t < seen.size(); ++t) {
    if (!fp8) {
      kv->push_back(a.entries + static_cast<int64_t>(seen[t]) * a.head_dim);
      continue;
    }
    float* row = scratch->data() + t * kV4Dim;
    DequantizeV4Records(a.entry_tok + static_cast<int64_t>(seen[t]) * kV4TokenBytes,
                        a.entry_sc + static_cast<int64_t>(seen[t]) * kV4ScaleBytes, 1, row);
    kv->push_back(row);
  }
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) return bad("duplicated index");
  for (const float* e : *kv) RETURN_IF_ERROR(CheckFinite(e, 1, a.head_dim, "selected entry"));
  for (int64_t t = 0; t < a.n_window; ++t) kv->push_back(a.window + t * a.head_dim);
  return absl::OkStatus();
}
}  // namespace

absl::Status SparseAttention(const SparseAttentionArgs& a, const std::vector<double>& rope_freqs,
                             float* out) {
  if (out == nullptr) return absl::InvalidArgumentError("SparseAttention: null out");
  std::vector<const float*> kv;
  std::vector<float> fp8_rows;
  RETURN_IF_ERROR(Validate(a, rope_freqs, &kv, &fp8_rows));
  const int d = a.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> logits(kv.size()), acc(d);
  for (int h = 0; h < a.n_heads; ++h) {
    const float* qh = a.q + static_cast<int64_t>(h) * d;
    float mx = a.sink[h];
    for (size_t s = 0; s < kv.size(); ++s) {
      logits[s] = Dot8(qh, kv[s], d) * scale;
      mx = std::max(mx, logits[s]);
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    float den = ExpF(a.sink[h] - mx);  // the sink: in the denominator only
    for (size_t s = 0; s < kv.size(); ++s) {
      const float p = ExpF(logits[s] - mx);
      den += p;
      for (int i = 0; i < d; ++i) acc[i] += p * kv[s][i];
    }
    float* oh = out + static_cast<int64_t>(h) * d;
    for (int i = 0; i < d; ++i) oh[i] = acc[i] / den;
    ApplyTrailingRope(rope_freqs, -a.position, d, a.rope_dim, oh);  // inverse RoPE (§4.2)
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels::v4
