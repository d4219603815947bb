#include "core/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/strings.h"

namespace kv {
namespace {

void AtomicAdd(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // The shortest text that reads back as exactly `v` (1e-06, 0.1; not 9.9999999999999995e-07).
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

// {a="1",b="2"} with optional extra label (le for histograms). Empty labels -> "".
std::string LabelText(const Labels& labels, const std::string& extra_key = "",
                      const std::string& extra_value = "") {
  if (labels.empty() && extra_key.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    out += kv::StrCat(first ? "" : ",", k, "=\"", EscapeLabel(v), "\"");
    first = false;
  }
  if (!extra_key.empty()) {
    out += kv::StrCat(first ? "" : ",", extra_key, "=\"", extra_value, "\"");
  }
  return out + "}";
}

}  // namespace

void Counter::Inc(double v) {
  if (v > 0) AtomicAdd(value_, v);
}

void Gauge::Add(double v) { AtomicAdd(value_, v); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

uint64_t Histogram::CumulativeCount(size_t i) const {
  uint64_t total = 0;
  for (size_t j = 0; j <= i && j <= bounds_.size(); ++j) {
    total += buckets_[j].load(std::memory_order_relaxed);
  }
  return total;
}

double Histogram::Quantile(double q) const {
  const uint64_t n = Count();
  if (n == 0) return 0;
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(n);
  uint64_t cum = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    const uint64_t in_bucket = buckets_[i].load(std::memory_order_relaxed);
    if (static_cast<double>(cum + in_bucket) >= rank && in_bucket > 0) {
      const double lo = i == 0 ? 0.0 : bounds_[i - 1];
      const double hi = i < bounds_.size() ? bounds_[i] : lo;
      const double frac = (rank - static_cast<double>(cum)) / static_cast<double>(in_bucket);
      return lo + (hi - lo) * std::clamp(frac, 0.0, 1.0);
    }
    cum += in_bucket;
  }
  return bounds_.empty() ? 0 : bounds_.back();
}

std::vector<double> Histogram::ExponentialBounds(double start, double factor, int count) {
  std::vector<double> b;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

std::vector<double> Histogram::LatencyBounds() { return ExponentialBounds(1e-6, 2.0, 25); }

MetricsRegistry& MetricsRegistry::Default() {
  static MetricsRegistry* r = new MetricsRegistry();
  return *r;
}

MetricsRegistry::Family& MetricsRegistry::GetFamily(std::string_view name, std::string_view help,
                                                    Type type) {
  auto it = families_.find(name);
  if (it == families_.end()) {
    it = families_.emplace(std::string(name), Family{type, std::string(help), {}, {}, {}}).first;
  } else if (it->second.type != type) {
    std::fprintf(stderr, "kvstrata: metric %.*s registered twice with different types\n",
                 static_cast<int>(name.size()), name.data());
    std::abort();
  }
  return it->second;
}

Counter* MetricsRegistry::GetCounter(std::string_view name, std::string_view help,
                                     const Labels& labels) {
  MutexLock l(&mu_);
  auto& slot = GetFamily(name, help, Type::kCounter).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return slot.get();
}

Gauge* MetricsRegistry::GetGauge(std::string_view name, std::string_view help,
                                 const Labels& labels) {
  MutexLock l(&mu_);
  auto& slot = GetFamily(name, help, Type::kGauge).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return slot.get();
}

Histogram* MetricsRegistry::GetHistogram(std::string_view name, std::string_view help,
                                         std::vector<double> bounds, const Labels& labels) {
  MutexLock l(&mu_);
  auto& slot = GetFamily(name, help, Type::kHistogram).histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(std::move(bounds));
  return slot.get();
}

int MetricsRegistry::AddCollectHook(std::function<void()> fn) {
  MutexLock l(&hooks_mu_);
  hooks_[next_hook_] = std::move(fn);
  return next_hook_++;
}

void MetricsRegistry::RemoveCollectHook(int id) {
  MutexLock l(&hooks_mu_);
  hooks_.erase(id);
}

std::string MetricsRegistry::RenderPrometheus() const {
  {
    MutexLock h(&hooks_mu_);
    for (const auto& [id, fn] : hooks_) fn();
  }
  MutexLock l(&mu_);
  std::string out;
  for (const auto& [name, fam] : families_) {
    static constexpr const char* kTypeName[] = {"counter", "gauge", "histogram"};
    out += kv::StrCat("# HELP ", name, " ", fam.help, "\n# TYPE ", name, " ",
                      kTypeName[static_cast<int>(fam.type)], "\n");
    for (const auto& [labels, c] : fam.counters) {
      out += kv::StrCat(name, LabelText(labels), " ", FormatValue(c->Value()), "\n");
    }
    for (const auto& [labels, g] : fam.gauges) {
      out += kv::StrCat(name, LabelText(labels), " ", FormatValue(g->Value()), "\n");
    }
    for (const auto& [labels, h] : fam.histograms) {
      const auto& b = h->bounds();
      for (size_t i = 0; i <= b.size(); ++i) {
        const std::string le = i < b.size() ? FormatValue(b[i]) : "+Inf";
        out += kv::StrCat(name, "_bucket", LabelText(labels, "le", le), " ", h->CumulativeCount(i),
                          "\n");
      }
      out += kv::StrCat(name, "_sum", LabelText(labels), " ", FormatValue(h->Sum()), "\n");
      out += kv::StrCat(name, "_count", LabelText(labels), " ", h->Count(), "\n");
    }
  }
  return out;
}

}  // namespace kv
