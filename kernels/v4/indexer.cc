// formats.md §4.4: ReLU-weighted multi-head indexer scores and deterministic causal top-k.
#include "kernels/v4/indexer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/v4_record.h"

namespace kv::kernels::v4 {

namespace {

absl::Status CheckQuery(const IndexerQuery& q, int64_t n_entries, bool keys_null) {
  if (q.q == nullptr || q.weights == nullptr || (n_entries > 0 && keys_null)) {
    return absl::InvalidArgumentError("IndexerScores: null pointer");
  }
  if (q.n_heads < 1 || q.head_dim < 1 || n_entries < 0 || q.position < 0) {
    return absl::InvalidArgumentError(kv::StrCat("IndexerScores: bad sizes n_heads ", q.n_heads,
                                                 " head_dim ", q.head_dim, " n_entries ", n_entries,
                                                 " position ", q.position));
  }
  RETURN_IF_ERROR(CheckFinite(q.q, q.n_heads, q.head_dim, "indexer q"));
  return CheckFinite(q.weights, 1, q.n_heads, "indexer weights");
}

// Σ_h w_h · ReLU(q_h · k), h ascending, times d^-0.5 (w already scaled by H^-0.5).
float ScoreKey(const IndexerQuery& q, const float* w, const float* k, float s_scale) {
  const int d = q.head_dim;
  float total = 0.0f;
  for (int h = 0; h < q.n_heads; ++h) {
    const float dot = Dot8(q.q + static_cast<int64_t>(h) * d, k, d);
    total += w[h] * std::max(dot, 0.0f);
  }
  return total * s_scale;
}

std::vector<float> HeadWeights(const IndexerQuery& q) {
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(q.n_heads));
  std::vector<float> w(q.n_heads);
  for (int h = 0; h < q.n_heads; ++h) w[h] = q.weights[h] * w_scale;
  return w;
}

}  // namespace

absl::Status IndexerScores(const IndexerQuery& q, const float* keys, int64_t n_entries,
                           float* scores) {
  if (scores == nullptr) return absl::InvalidArgumentError("IndexerScores: null pointer");
  RETURN_IF_ERROR(CheckQuery(q, n_entries, keys == nullptr));
  const int64_t visible = std::min(n_entries, NumVisibleEntries(q.position, 4));
  RETURN_IF_ERROR(CheckFinite(keys, visible, q.head_dim, "indexer key"));
  const float s_scale = 1.0f / std::sqrt(static_cast<float>(q.head_dim));
  const std::vector<float> w = HeadWeights(q);
  for (int64_t s = 0; s < n_entries; ++s) {
    scores[s] = s < visible ? ScoreKey(q, w.data(), keys + s * q.head_dim, s_scale)
                            : -std::numeric_limits<float>::infinity();
  }
  return absl::OkStatus();
}

absl::Status IndexerScoresFp8(const IndexerQuery* queries, int64_t n_queries, const uint8_t* codes,
                              const uint8_t* scales, int64_t n_entries, float* scores) {
  if (queries == nullptr || scores == nullptr || n_queries < 0 ||
      (n_entries > 0 && scales == nullptr)) {
    return absl::InvalidArgumentError("IndexerScoresFp8: null pointer or negative count");
  }
  std::vector<std::vector<float>> w(n_queries);
  std::vector<int64_t> visible(n_queries);
  int64_t max_visible = 0;
  for (int64_t i = 0; i < n_queries; ++i) {
    RETURN_IF_ERROR(CheckQuery(queries[i], n_entries, codes == nullptr));
    if (queries[i].head_dim != kIndexerDim) {
      return absl::InvalidArgumentError(kv::StrCat("IndexerScoresFp8: head_dim ",
                                                   queries[i].head_dim, ", FP8 keys are ",
                                                   kIndexerDim, " wide"));
    }
    w[i] = HeadWeights(queries[i]);
    visible[i] = std::min(n_entries, NumVisibleEntries(queries[i].position, 4));
    max_visible = std::max(max_visible, visible[i]);
  }
  const float s_scale = 1.0f / std::sqrt(static_cast<float>(kIndexerDim));
  constexpr int64_t kBlock = 64;
  std::vector<float> keys(kBlock * kIndexerDim);
  for (int64_t s0 = 0; s0 < n_entries; s0 += kBlock) {
    const int64_t nb = std::min(kBlock, n_entries - s0);
    const int64_t live = std::clamp<int64_t>(max_visible - s0, 0, nb);  // rows anyone sees
    DequantizeIndexerRecords(codes + s0 * kIndexerDim, scales + s0 * 4, live, keys.data());
    RETURN_IF_ERROR(CheckFinite(keys.data(), live, kIndexerDim, "indexer key"));
    for (int64_t i = 0; i < n_queries; ++i) {
      float* out = scores + i * n_entries + s0;
      for (int64_t s = 0; s < nb; ++s) {
        out[s] = s0 + s < visible[i]
                     ? ScoreKey(queries[i], w[i].data(), keys.data() + s * kIndexerDim, s_scale)
                     : -std::numeric_limits<float>::infinity();
      }
    }
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
