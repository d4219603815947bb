// CostModel: decides, per request, whether to load a cached prefix or recompute it
// (DESIGN.md "One request, end to end": "always load" is a known failure of peers).
//
// Inputs are measured, not configured: each tier's read bandwidth (bytes/s, an exponential
// moving average of the page reads the engine times) and the prefill speed (tokens/s, from
// the prefills the engine times). Until a figure has been measured a conservative default
// stands in (EngineOptions / CostModelOptions). A plan over a cached prefix of n blocks,
// whose block i sits in tier t_i, loads the first k blocks and recomputes the other n - k,
// with k chosen to minimise  sum_{i<k} page_bytes / bw(t_i)  +  (n - k) * page_tokens / tps.
// k == n is LOAD, 0 < k < n is PARTIAL_LOAD, k == 0 is RECOMPUTE (also when nothing is
// cached). The estimate and a one-line human reason are part of the plan.
//
// Thread-safety: every method is safe for concurrent use (one mutex). Plans are values.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "absl/time/time.h"
#include "core/mutex.h"
#include "kvstore/tier.h"

namespace kv::cluster {

enum class CacheDecision { kNone, kLoad, kPartialLoad, kRecompute };
// "none", "load", "partial-load", "recompute".
std::string_view CacheDecisionName(CacheDecision d);

struct CostPlan {
  CacheDecision decision = CacheDecision::kNone;
  int64_t load_blocks = 0;                  // leading cached blocks the plan loads
  int64_t load_tokens = 0;                  // load_blocks * page_tokens
  int64_t recompute_tokens = 0;             // cached tokens the plan recomputes instead of loading
  absl::Duration estimated_load_time;       // loading the whole cached prefix
  absl::Duration estimated_recompute_time;  // recomputing the whole cached prefix
  std::string reason;
};

struct CostModelOptions {
  // Defaults used until a tier / the prefill has been measured once.
  std::array<double, kNumTiers> default_bytes_per_s = {8e9, 4e9, 0.5e9};
  double default_prefill_tokens_per_s = 2000;
  double ewma_alpha = 0.3;  // weight of a new measurement
};

class CostModel {
 public:
  explicit CostModel(CostModelOptions options = {}) : options_(options) {}

  // Records a timed read of `bytes` from `tier`. Ignored for bytes == 0 or elapsed <= 0.
  void RecordRead(TierKind tier, uint64_t bytes, absl::Duration elapsed);
  // Records a timed prefill of `tokens`. Ignored for tokens <= 0 or elapsed <= 0.
  void RecordPrefill(int64_t tokens, absl::Duration elapsed);

  // Current figures (measured, or the defaults).
  double BytesPerSecond(TierKind tier);
  double PrefillTokensPerSecond();
  bool measured(TierKind tier);

  // The plan for a cached prefix whose block i lives in tiers[i], each page `page_bytes`
  // long and covering `page_tokens` tokens. An empty `tiers` is RECOMPUTE with the reason
  // "nothing cached".
  CostPlan Plan(std::span<const TierKind> tiers, uint64_t page_bytes, int64_t page_tokens);

 private:
  const CostModelOptions options_;
  kv::Mutex mu_;
  std::array<double, kNumTiers> bw_ ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  double tps_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kv::cluster
