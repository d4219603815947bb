// Metrics registry with Prometheus text exposition (format 0.0.4).
//
// A metric is identified by (name, labels). Get*() returns the existing metric for that
// identity or creates it; the pointer is owned by the registry and valid for the registry's
// lifetime (the default registry lives forever). Asking for an existing name with another
// type is a programming error and aborts with a message naming the metric.
//
// Counter/Gauge/Histogram updates are lock-free (atomics) and safe from any thread; Get*()
// and RenderPrometheus() take the registry mutex. Names follow Prometheus conventions
// (`kvstrata_store_hits_total`); the metric names kvstrata exports are documented in
// docs/metrics.md.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/mutex.h"

namespace kv {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Inc(double v = 1.0);  // v must be >= 0; negative values are ignored
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `bounds` are the upper bounds of the buckets, strictly increasing; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  double Sum() const { return sum_.load(std::memory_order_relaxed); }
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative count of observations <= bounds()[i]; i == bounds().size() is +Inf.
  uint64_t CumulativeCount(size_t i) const;
  // Estimated quantile (0..1) by linear interpolation inside the bucket; 0 when empty.
  double Quantile(double q) const;

  // Exponential bounds: start, start*factor, ... (count bounds).
  static std::vector<double> ExponentialBounds(double start, double factor, int count);
  // Latency buckets in seconds from 1 µs to ~16 s.
  static std::vector<double> LatencyBounds();

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per-bucket (not cumulative)
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // The process-wide registry that /metrics serves.
  static MetricsRegistry& Default();

  Counter* GetCounter(std::string_view name, std::string_view help, const Labels& labels = {});
  Gauge* GetGauge(std::string_view name, std::string_view help, const Labels& labels = {});
  Histogram* GetHistogram(std::string_view name, std::string_view help, std::vector<double> bounds,
                          const Labels& labels = {});

  // Renders every family; first runs the collect hooks, so values that are derived state
  // (live leases, after reaping the expired ones) are current at every scrape.
  std::string RenderPrometheus() const;

  // Registers `fn` to run at the start of every RenderPrometheus (it may Set gauges; it must
  // not call back into this registry's Get* or Render). Returns an id for RemoveCollectHook,
  // which the owner of the state must call before that state goes away.
  int AddCollectHook(std::function<void()> fn);
  void RemoveCollectHook(int id);

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;
    std::map<Labels, std::unique_ptr<Counter>> counters;
    std::map<Labels, std::unique_ptr<Gauge>> gauges;
    std::map<Labels, std::unique_ptr<Histogram>> histograms;
  };
  Family& GetFamily(std::string_view name, std::string_view help, Type type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  std::map<std::string, Family, std::less<>> families_ ABSL_GUARDED_BY(mu_);
  // Held while a hook runs, so RemoveCollectHook returns only once its hook is not running.
  mutable Mutex hooks_mu_;
  std::map<int, std::function<void()>> hooks_ ABSL_GUARDED_BY(hooks_mu_);
  int next_hook_ ABSL_GUARDED_BY(hooks_mu_) = 1;
};

}  // namespace kv
