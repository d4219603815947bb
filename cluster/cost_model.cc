#include "cluster/cost_model.h"

#include <fmt/format.h>

#include <vector>

namespace kv::cluster {

std::string_view CacheDecisionName(CacheDecision d) {
  switch (d) {
    case CacheDecision::kNone:
      return "none";
    case CacheDecision::kLoad:
      return "load";
    case CacheDecision::kPartialLoad:
      return "partial-load";
    case CacheDecision::kRecompute:
      return "recompute";
  }
  return "none";
}

void CostModel::RecordRead(TierKind tier, uint64_t bytes, absl::Duration elapsed) {
  const double secs = absl::ToDoubleSeconds(elapsed);
  if (bytes == 0 || secs <= 0) return;
  const double bw = static_cast<double>(bytes) / secs;
  kv::MutexLock l(&mu_);
  double& cur = bw_[static_cast<int>(tier)];
  cur = cur == 0 ? bw : (1 - options_.ewma_alpha) * cur + options_.ewma_alpha * bw;
}

void CostModel::RecordPrefill(int64_t tokens, absl::Duration elapsed) {
  const double secs = absl::ToDoubleSeconds(elapsed);
  if (tokens <= 0 || secs <= 0) return;
  const double tps = static_cast<double>(tokens) / secs;
  kv::MutexLock l(&mu_);
  tps_ = tps_ == 0 ? tps : (1 - options_.ewma_alpha) * tps_ + options_.ewma_alpha * tps;
}

double CostModel::BytesPerSecond(TierKind tier) {
  kv::MutexLock l(&mu_);
  const double v = bw_[static_cast<int>(tier)];
  return v > 0 ? v : options_.default_bytes_per_s[static_cast<int>(tier)];
}

double CostModel::PrefillTokensPerSecond() {
  kv::MutexLock l(&mu_);
  return tps_ > 0 ? tps_ : options_.default_prefill_tokens_per_s;
}

bool CostModel::measured(TierKind tier) {
  kv::MutexLock l(&mu_);
  return bw_[static_cast<int>(tier)] > 0;
}

CostPlan CostModel::Plan(std::span<const TierKind> tiers, uint64_t page_bytes,
                         int64_t page_tokens) {
  CostPlan plan;
  const int64_t n = static_cast<int64_t>(tiers.size());
  if (n == 0) {
    plan.decision = CacheDecision::kRecompute;
    plan.reason = "nothing cached";
    return plan;
  }
  std::array<double, kNumTiers> bw;
  for (int t = 0; t < kNumTiers; ++t) bw[t] = BytesPerSecond(static_cast<TierKind>(t));
  const double tps = PrefillTokensPerSecond();
  const double block_compute = static_cast<double>(page_tokens) / tps;
  // prefix_load[k]: seconds to load blocks [0, k). Best k minimises load + recompute of rest.
  double load = 0, best_cost = static_cast<double>(n) * block_compute;
  int64_t best_k = 0;
  for (int64_t k = 1; k <= n; ++k) {
    load += static_cast<double>(page_bytes) / bw[static_cast<int>(tiers[k - 1])];
    const double cost = load + static_cast<double>(n - k) * block_compute;
    if (cost <= best_cost) {
      best_cost = cost;
      best_k = k;
    }
  }
  plan.load_blocks = best_k;
  plan.load_tokens = best_k * page_tokens;
  plan.recompute_tokens = (n - best_k) * page_tokens;
  plan.estimated_load_time = absl::Seconds(load);
  plan.estimated_recompute_time = absl::Seconds(static_cast<double>(n) * block_compute);
  plan.decision = best_k == n   ? CacheDecision::kLoad
                  : best_k == 0 ? CacheDecision::kRecompute
                                : CacheDecision::kPartialLoad;
  const TierKind slowest = tiers[n - 1];
  plan.reason = fmt::format(
      "{} {} blocks: load {:.2f} ms ({} tier {:.2f} GB/s) vs recompute {:.2f} ms (prefill "
      "{:.0f} tok/s)",
      CacheDecisionName(plan.decision), n, load * 1e3, TierName(slowest),
      bw[static_cast<int>(slowest)] / 1e9, static_cast<double>(n) * block_compute * 1e3, tps);
  return plan;
}

}  // namespace kv::cluster
