// Shared plumbing for `kvstrata bench` suites.
//
// Method (DESIGN.md "Performance"): every figure is printed beside a limit measured in the
// same run on the same machine, with the ratio. A suite collects rows in a BenchReport:
//
//   kv::bench::BenchReport r("codec");
//   double limit = kv::bench::MeasureMemcpyGBps(256 << 20);
//   r.Add({.name = "quantize f32->656", .value = gbps, .unit = "GB/s",
//          .limit_name = "memcpy", .limit = limit});
//   r.Print();                       // aligned table on stdout
//   RETURN_IF_ERROR(r.WriteJson(json_path));  // if --json was given
//
// A row's ratio is value / limit (or limit / value when lower_is_better). Extra key/values
// (sizes, iterations, settings) go in `params`. Not thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/config.h"

namespace kv::bench {

struct Row {
  std::string name;
  double value = 0;
  std::string unit;
  std::string limit_name;  // empty when the row has no limit (then no ratio)
  double limit = 0;
  bool lower_is_better = false;
  std::map<std::string, std::string> params;
  double ratio() const;
};

class BenchReport {
 public:
  explicit BenchReport(std::string suite) : suite_(std::move(suite)) {}
  void Add(Row row) { rows_.push_back(std::move(row)); }
  void Note(std::string key, std::string value) { notes_[std::move(key)] = std::move(value); }
  const std::vector<Row>& rows() const { return rows_; }
  void Print() const;
  // Writes {"suite":..,"machine":{..},"notes":{..},"rows":[..]}. Empty path: no-op.
  absl::Status WriteJson(const std::string& path) const;

 private:
  std::string suite_;
  std::vector<Row> rows_;
  std::map<std::string, std::string> notes_;
};

// Single-thread memcpy bandwidth in GB/s (bytes copied / s; 1 GB = 1e9 B) over a buffer of
// `bytes`, median of `reps` copies after a warm-up. Buffers are touched first, never zero.
double MeasureMemcpyGBps(size_t bytes, int reps = 9);

// The body of a suite's entry point: parses `flags`; --help prints the usage and returns 0;
// a flag error or a failed `run` prints "<program>: <message>" to stderr and returns 1;
// otherwise returns 0.
int RunSuite(FlagSet& flags, int argc, char** argv, const std::function<absl::Status()>& run);

// Seconds since an arbitrary epoch, monotonic.
inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median of `v` (copied); 0 for an empty vector.
double Median(std::vector<double> v);
// Percentile p in [0,100] by nearest rank; 0 for an empty vector.
double Percentile(std::vector<double> v, double p);

// A plot drawn as SVG by matplotlib (bench/plot.py, run with /usr/bin/python3; the build copies
// it next to the executables as kvstrata-plot.py, KVSTRATA_PLOT_SCRIPT overrides). Axis labels
// carry their units; use log axes where values span decades.
struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y); for bars x indexes `categories`
};
struct Plot {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_x = false;
  bool log_y = false;
  bool bars = false;  // grouped bars over `categories` instead of lines
  std::vector<std::string> categories;
  std::vector<Series> series;
};
// Writes `plot` to `path` (SVG). InvalidArgument without points; Internal when the plotter
// fails (python3 or matplotlib missing: it says so on stderr).
absl::Status WritePlotSvg(const std::string& path, const Plot& plot);

}  // namespace kv::bench
