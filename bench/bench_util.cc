#include "bench/bench_util.h"

#include <spawn.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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

namespace {

// bench/plot.py, copied by the build next to the executables as kvstrata-plot.py;
// KVSTRATA_PLOT_SCRIPT overrides.
std::string PlotScript() {
  if (const char* env = std::getenv("KVSTRATA_PLOT_SCRIPT"); env != nullptr && *env != 0) {
    return env;
  }
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return "kvstrata-plot.py";
  std::string dir(exe, static_cast<size_t>(n));
  return dir.substr(0, dir.rfind('/') + 1) + "kvstrata-plot.py";
}

}  // namespace

absl::Status WritePlotSvg(const std::string& path, const Plot& plot) {
  size_t points = 0;
  for (const Series& s : plot.series) points += s.points.size();
  if (points == 0) return absl::InvalidArgumentError("plot: no points");
  nlohmann::json spec = {{"title", plot.title},          {"x_label", plot.x_label},
                         {"y_label", plot.y_label},      {"log_x", plot.log_x},
                         {"log_y", plot.log_y},          {"kind", plot.bars ? "bars" : "line"},
                         {"categories", plot.categories}};
  nlohmann::json series = nlohmann::json::array();
  for (const Series& s : plot.series) {
    nlohmann::json pts = nlohmann::json::array();
    for (auto [x, y] : s.points) pts.push_back({x, y});
    series.push_back({{"label", s.label}, {"points", pts}});
  }
  spec["series"] = series;
  const std::string spec_path = path + ".plot.json";
  {
    std::ofstream out(spec_path);
    if (!out) return ErrnoToStatus(errno, kv::StrCat("cannot write ", spec_path));
    out << spec.dump(1) << "\n";
  }
  const std::string script = PlotScript();
  const char* argv[] = {"/usr/bin/python3", script.c_str(), spec_path.c_str(), path.c_str(),
                        nullptr};
  pid_t pid = 0;
  if (int rc = posix_spawn(&pid, argv[0], nullptr, nullptr, const_cast<char**>(argv), environ);
      rc != 0) {
    return ErrnoToStatus(rc, "plot: cannot run /usr/bin/python3");
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::remove(spec_path.c_str());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(kv::StrCat("plot: ", script, " failed (exit status ",
                                          WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                                          "); its message is above"));
  }
  return absl::OkStatus();
}

}  // namespace kv::bench
