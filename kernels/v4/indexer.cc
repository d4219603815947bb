// formats.md §4.4: ReLU-weighted multi-head indexer scores and deterministic causal top-k.
#include "kernels/v4/indexer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/v4/compressor.h"

namespace kv::kernels::v4 {

absl::Status IndexerScores(const IndexerQuery& q, const float* keys, int64_t n_entries,
                           float* scores) {
  if (q.q == nullptr || q.weights == nullptr || scores == nullptr ||
      (n_entries > 0 && keys == nullptr)) {
    return absl::InvalidArgumentError("IndexerScores: null pointer");
  }
  if (q.n_heads < 1 || q.head_dim < 1 || n_entries < 0 || q.position < 0) {
    return absl::InvalidArgumentError(kv::StrCat("IndexerScores: bad sizes n_heads ", q.n_heads,
                                                 " head_dim ", q.head_dim, " n_entries ", n_entries,
                                                 " position ", q.position));
  }
  RETURN_IF_ERROR(CheckFinite(q.q, q.n_heads, q.head_dim, "indexer q"));
  RETURN_IF_ERROR(CheckFinite(q.weights, 1, q.n_heads, "indexer weights"));
  const int64_t visible = std::min(n_entries, NumVisibleEntries(q.position, 4));
  RETURN_IF_ERROR(CheckFinite(keys, visible, q.head_dim, "indexer key"));
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(q.n_heads));
  const float s_scale = 1.0f / std::sqrt(static_cast<float>(q.head_dim));
  std::vector<float> w(q.n_heads);
  for (int h = 0; h < q.n_heads; ++h) w[h] = q.weights[h] * w_scale;
  const int d = q.head_dim;
  for (int64_t s = 0; s < n_entries; ++s) {
    if (s >= visible) {
      scores[s] = -std::numeric_limits<float>::infinity();
      continue;
    }
    const float* k = keys + s * d;
    float total = 0.0f;
    for (int h = 0; h < q.n_heads; ++h) {
      const float* qh = q.q + static_cast<int64_t>(h) * d;
      const float dot = Dot8(qh, k, d);
      total += w[h] * std::max(dot, 0.0f);
    }
    scores[s] = total * s_scale;
  }
  return absl::OkStatus();
}

absl::Status TopKIndices(const float* scores, int64_t n, int k, int32_t* out) {
  if (k < 1 || n < 0 || out == nullptr || (n > 0 && scores == nullptr)) {
    return absl::InvalidArgumentError(kv::StrCat("TopKIndices: k ", k, " n ", n));
  }
  if (n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(kv::StrCat("TopKIndices: n ", n, " exceeds int32"));
  }
  std::vector<int32_t> idx;
  idx.reserve(n);
  for (int64_t s = 0; s < n; ++s) {
    if (std::isnan(scores[s]) || scores[s] == std::numeric_limits<float>::infinity()) {
      return absl::InvalidArgumentError(kv::StrCat("TopKIndices: score ", s, " is ", scores[s]));
    }
    if (scores[s] != -std::numeric_limits<float>::infinity())
      idx.push_back(static_cast<int32_t>(s));
  }
  const int64_t take = std::min<int64_t>(k, static_cast<int64_t>(idx.size()));
  // Higher score first; on equal scores the lower index wins (deterministic, §4.4).
  std::partial_sort(idx.begin(), idx.begin() + take, idx.end(), [&](int32_t a, int32_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  for (int64_t i = 0; i < k; ++i) out[i] = i < take ? idx[i] : -1;
  return absl::OkStatus();
}

}  // namespace kv::kernels::v4
