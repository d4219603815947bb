#include "bench/bench_util.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::bench {

double Row::ratio() const {
  if (limit_name.empty() || limit <= 0 || value <= 0) return 0;
  return lower_is_better ? limit / value : value / limit;
}

void BenchReport::Print() const {
  std::printf("\n== kvstrata bench %s ==\n", suite_.c_str());
  std::printf("%-44s %14s %-8s %-26s %14s %8s\n", "measurement", "value", "unit",
              "limit (same run)", "limit value", "ratio");
  for (const auto& r : rows_) {
    if (r.limit_name.empty()) {
      std::printf("%-44s %14.4g %-8s %-26s %14s %8s\n", r.name.c_str(), r.value, r.unit.c_str(),
                  "-", "-", "-");
    } else {
      std::printf("%-44s %14.4g %-8s %-26s %14.4g %8.3f\n", r.name.c_str(), r.value, r.unit.c_str(),
                  r.limit_name.c_str(), r.limit, r.ratio());
    }
  }
  for (const auto& [k, v] : notes_) std::printf("  %s: %s\n", k.c_str(), v.c_str());
  std::fflush(stdout);
}

absl::Status BenchReport::WriteJson(const std::string& path) const {
  if (path.empty()) return absl::OkStatus();
  nlohmann::json j;
  j["suite"] = suite_;
  utsname u{};
  uname(&u);
  j["machine"] = {{"hostname_hash", std::hash<std::string>{}(u.nodename) % 100000},
                  {"kernel", u.release},
                  {"cpus", std::thread::hardware_concurrency()}};
  j["notes"] = notes_;
  j["rows"] = nlohmann::json::array();
  for (const auto& r : rows_) {
    nlohmann::json row = {{"name", r.name}, {"value", r.value}, {"unit", r.unit}};
    if (!r.limit_name.empty()) {
      row["limit_name"] = r.limit_name;
      row["limit"] = r.limit;
      row["ratio"] = r.ratio();
      row["lower_is_better"] = r.lower_is_better;
    }
    if (!r.params.empty()) row["params"] = r.params;
    j["rows"].push_back(std::move(row));
  }
  std::ofstream out(path);
  if (!out) return ErrnoToStatus(errno, kv::StrCat("cannot write ", path));
  out << j.dump(2) << "\n";
  if (!out) return ErrnoToStatus(errno, kv::StrCat("write failed: ", path));
  return absl::OkStatus();
}

int RunSuite(FlagSet& flags, int argc, char** argv, const std::function<absl::Status()>& run) {
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (s.ok()) s = run();
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", flags.program().c_str(), std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(v.size());
  size_t idx = rank <= 1 ? 0 : static_cast<size_t>(std::ceil(rank)) - 1;
  return v[std::min(idx, v.size() - 1)];
}

double MeasureMemcpyGBps(size_t bytes, int reps) {
  auto src = std::make_unique<char[]>(bytes);
  auto dst = std::make_unique<char[]>(bytes);
  for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<char>(i * 131 + 7);
  std::memset(dst.get(), 1, bytes);
  std::memcpy(dst.get(), src.get(), bytes);  // warm-up
  std::vector<double> secs;
  for (int r = 0; r < reps; ++r) {
    const double t0 = NowSeconds();
    std::memcpy(dst.get(), src.get(), bytes);
    secs.push_back(NowSeconds() - t0);
    // Keep the copy observable so it cannot be elided.
    src[r % bytes] = dst[(r * 7919) % bytes];
  }
  const double med = Median(secs);
  return med > 0 ? static_cast<double>(bytes) / med / 1e9 : 0;
}

absl::Status WriteSvgPlot(const std::string& path, const std::string& title,
                          const std::string& x_label, const std::string& y_label,
                          const std::vector<Series>& series, bool log_x) {
  constexpr double W = 720, H = 420, L = 70, R = 170, T = 40, B = 50;
  double xmin = 1e300, xmax = -1e300, ymax = 0;
  for (const auto& s : series) {
    for (auto [x, y] : s.points) {
      const double xv = log_x ? std::log10(std::max(x, 1e-300)) : x;
      xmin = std::min(xmin, xv);
      xmax = std::max(xmax, xv);
      ymax = std::max(ymax, y);
    }
  }
  if (xmin > xmax) return absl::InvalidArgumentError("svg plot: no points");
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax <= 0) ymax = 1;
  ymax *= 1.1;
  auto px = [&](double x) {
    const double xv = log_x ? std::log10(std::max(x, 1e-300)) : x;
    return L + (xv - xmin) / (xmax - xmin) * (W - L - R);
  };
  auto py = [&](double y) { return H - B - y / ymax * (H - T - B); };
  static constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                            "#9467bd", "#8c564b", "#17becf", "#7f7f7f"};
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%g\" y=\"22\" font-size=\"15\">%s</text>\n",
      W, H, L, title);
  absl::StrAppendFormat(&svg,
                        "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n"
                        "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n",
                        L, H - B, W - R, H - B, L, T, L, H - B);
  for (int i = 0; i <= 4; ++i) {
    const double y = ymax * i / 4;
    absl::StrAppendFormat(&svg,
                          "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3g</text>"
                          "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n",
                          L - 6, py(y) + 4, y, L, py(y), W - R, py(y));
  }
  absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s</text>\n",
                        (L + W - R) / 2, H - 12, x_label);
  absl::StrAppendFormat(&svg,
                        "<text x=\"16\" y=\"%g\" transform=\"rotate(-90 16 %g)\" "
                        "text-anchor=\"middle\">%s</text>\n",
                        (T + H - B) / 2, (T + H - B) / 2, y_label);
  for (size_t si = 0; si < series.size(); ++si) {
    const auto& s = series[si];
    const char* color = kColors[si % 8];
    std::string pts;
    for (auto [x, y] : s.points) absl::StrAppendFormat(&pts, "%.1f,%.1f ", px(x), py(y));
    absl::StrAppendFormat(&svg,
                          "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                          "points=\"%s\"/>\n",
                          color, pts);
    for (auto [x, y] : s.points) {
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(x),
                            py(y), color);
      absl::StrAppendFormat(&svg,
                            "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\" "
                            "font-size=\"10\">%g</text>\n",
                            px(x), H - B + 14, x);
    }
    absl::StrAppendFormat(&svg,
                          "<rect x=\"%g\" y=\"%g\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                          "<text x=\"%g\" y=\"%g\">%s</text>\n",
                          W - R + 12, T + 20.0 * si, color, W - R + 30, T + 20.0 * si + 10,
                          s.label);
  }
  svg += "</svg>\n";
  std::ofstream out(path);
  if (!out) return ErrnoToStatus(errno, kv::StrCat("cannot write ", path));
  out << svg;
  return absl::OkStatus();
}

}  // namespace kv::bench
