#include "core/metrics.h"

#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "core/http_server.h"

namespace kv {
namespace {

TEST(Metrics, CounterGaugeHistogramText) {
  MetricsRegistry r;
  Counter* hits = r.GetCounter("kvstrata_hits_total", "hits", {{"tier", "host"}});
  EXPECT_EQ(hits, r.GetCounter("kvstrata_hits_total", "hits", {{"tier", "host"}}));
  hits->Inc();
  hits->Inc(2);
  hits->Inc(-5);  // ignored: counters only go up
  r.GetCounter("kvstrata_hits_total", "hits", {{"tier", "nvme"}})->Inc(7);
  Gauge* g = r.GetGauge("kvstrata_bytes", "bytes");
  g->Set(10);
  g->Add(-3);
  Histogram* h = r.GetHistogram("kvstrata_lat_seconds", "latency", {0.1, 1, 10});
  h->Observe(0.05);
  h->Observe(0.5);
  h->Observe(5);
  h->Observe(50);
  const std::string text = r.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE kvstrata_hits_total counter"), std::string::npos);
  EXPECT_NE(text.find("kvstrata_hits_total{tier=\"host\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kvstrata_hits_total{tier=\"nvme\"} 7\n"), std::string::npos);
  EXPECT_NE(text.find("kvstrata_bytes 7\n"), std::string::npos);
  EXPECT_NE(text.find("kvstrata_lat_seconds_bucket{le=\"0.10000000000000001\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("kvstrata_lat_seconds_bucket{le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("kvstrata_lat_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("kvstrata_lat_seconds_count 4\n"), std::string::npos);
  EXPECT_EQ(h->Count(), 4u);
  EXPECT_DOUBLE_EQ(h->Sum(), 55.55);
}

TEST(Metrics, LabelEscaping) {
  MetricsRegistry r;
  r.GetCounter("c_total", "c", {{"k", "a\"b\\c\nd"}})->Inc();
  EXPECT_NE(r.RenderPrometheus().find("c_total{k=\"a\\\"b\\\\c\\nd\"} 1"), std::string::npos);
}

TEST(Metrics, HistogramQuantile) {
  Histogram h(Histogram::ExponentialBounds(1, 2, 10));
  EXPECT_EQ(h.Quantile(0.5), 0);
  for (int i = 0; i < 100; ++i) h.Observe(3);  // bucket (2, 4]
  const double p50 = h.Quantile(0.5);
  EXPECT_GT(p50, 2);
  EXPECT_LE(p50, 4);
}

TEST(Metrics, ConcurrentIncrements) {
  MetricsRegistry r;
  Counter* c = r.GetCounter("n_total", "n");
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([c] {
      for (int i = 0; i < 10000; ++i) c->Inc();
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(c->Value(), 40000);
}

TEST(MetricsHttpServer, ServesMetricsAndHealth) {
  MetricsRegistry r;
  r.GetCounter("kvstrata_test_total", "t")->Inc(5);
  bool healthy = true;
  auto server = MetricsHttpServer::Start(&r, "127.0.0.1", 0, [&healthy]() {
    return healthy ? absl::OkStatus() : absl::UnavailableError("draining");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client cli("127.0.0.1", (*server)->port());
  cli.set_connection_timeout(2);
  cli.set_read_timeout(2);
  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("kvstrata_test_total 5"), std::string::npos);
  res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  healthy = false;
  res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_NE(res->body.find("draining"), std::string::npos);
  (*server)->Stop();
  (*server)->Stop();  // idempotent
}

}  // namespace
}  // namespace kv
