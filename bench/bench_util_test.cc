#include "bench/bench_util.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace kv::bench {
namespace {

std::string TmpPath(const char* name) {
  const char* d = std::getenv("KVSTRATA_TEST_TMPDIR");
  return std::string(d ? d : "/tmp") + "/" + name;
}

TEST(BenchUtil, RatioAndJson) {
  BenchReport r("unit");
  r.Add({.name = "a", .value = 8, .unit = "GB/s", .limit_name = "memcpy", .limit = 10});
  r.Add({.name = "lat",
         .value = 4,
         .unit = "ms",
         .limit_name = "base",
         .limit = 2,
         .lower_is_better = true});
  r.Add({.name = "plain", .value = 3, .unit = "x"});
  EXPECT_DOUBLE_EQ(r.rows()[0].ratio(), 0.8);
  EXPECT_DOUBLE_EQ(r.rows()[1].ratio(), 0.5);
  EXPECT_DOUBLE_EQ(r.rows()[2].ratio(), 0);
  const std::string path = TmpPath("bench_util_test.json");
  ASSERT_TRUE(r.WriteJson(path).ok());
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["suite"], "unit");
  ASSERT_EQ(j["rows"].size(), 3u);
  EXPECT_DOUBLE_EQ(j["rows"][0]["ratio"].get<double>(), 0.8);
  EXPECT_FALSE(j["rows"][2].contains("ratio"));
}

TEST(BenchUtil, MedianPercentile) {
  EXPECT_DOUBLE_EQ(Median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(Median({4, 1, 2, 3}), 2.5);
  EXPECT_DOUBLE_EQ(Median({}), 0);
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 50);
  EXPECT_DOUBLE_EQ(Percentile(v, 99), 99);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 100);
}

TEST(BenchUtil, MemcpyIsPositive) { EXPECT_GT(MeasureMemcpyGBps(1 << 20, 3), 0.0); }

TEST(BenchUtil, SvgPlot) {
  const std::string path = TmpPath("bench_util_test.svg");
  std::remove(path.c_str());
  ASSERT_TRUE(WritePlotSvg(path, {.title = "t",
                                  .x_label = "x (tokens)",
                                  .y_label = "y (ms)",
                                  .log_x = true,
                                  .series = {{"s", {{1, 2}, {10, 4}}}}})
                  .ok());
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_NE(ss.str().find("<svg"), std::string::npos);
  EXPECT_NE(ss.str().find("y (ms)"), std::string::npos);
  EXPECT_FALSE(WritePlotSvg(path, {.title = "t"}).ok());
}

}  // namespace
}  // namespace kv::bench
