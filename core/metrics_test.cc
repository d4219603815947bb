#include "core/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

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
  // Issue #18 item 7: numbers print in the shortest form that reads back exactly.
  EXPECT_NE(text.find("kvstrata_lat_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kvstrata_lat_seconds_bucket{le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("kvstrata_lat_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  Histogram* us = r.GetHistogram("kvstrata_tiny_seconds", "tiny", {1e-6, 2.5e-4, 0.3});
  us->Observe(1e-7);
  g->Set(0.1 + 0.2);
  const std::string text2 = r.RenderPrometheus();
  EXPECT_NE(text2.find("kvstrata_tiny_seconds_bucket{le=\"1e-06\"} 1\n"), std::string::npos)
      << text2;
  EXPECT_NE(text2.find("kvstrata_tiny_seconds_bucket{le=\"0.00025\"} 1\n"), std::string::npos)
      << text2;
  EXPECT_NE(text2.find("kvstrata_tiny_seconds_bucket{le=\"0.3\"} 1\n"), std::string::npos) << text2;
  EXPECT_NE(text2.find("kvstrata_bytes 0.30000000000000004\n"), std::string::npos) << text2;
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

// A degraded part (issue #18 item 5: a failing cache tier) keeps /healthz at 200 but says so;
// an unhealthy node still answers 503, whatever the degraded text.
TEST(MetricsHttpServer, HealthzSaysDegradedWithStatus200) {
  MetricsRegistry r;
  std::string why;
  bool healthy = true;
  auto server = MetricsHttpServer::Start(
      &r, "127.0.0.1", 0,
      [&healthy]() { return healthy ? absl::OkStatus() : absl::UnavailableError("draining"); },
      [&why]() { return why; });
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client cli("127.0.0.1", (*server)->port());
  cli.set_connection_timeout(2);
  cli.set_read_timeout(2);
  auto res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
  why = "nvme tier failing: 3 write errors in a row";
  res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "degraded: nvme tier failing: 3 write errors in a row\n");
  healthy = false;
  res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
}

// Opens a TCP connection to 127.0.0.1:port and sends `bytes` (possibly nothing); returns the
// fd (-1 on failure). The caller closes it.
int OpenRaw(int port, const std::string& bytes) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      (!bytes.empty() && send(fd, bytes.data(), bytes.size(), 0) < 0)) {
    close(fd);
    return -1;
  }
  return fd;
}

// Issue #18 item 6: slow or idle clients must not starve the liveness probe.
TEST(MetricsHttpServer, HealthAnswersWhileManyConnectionsSitIdle) {
  MetricsRegistry r;
  auto server = MetricsHttpServer::Start(&r, "127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < 32; ++i) {
    // Half of them opened and silent, half stuck in the middle of a request line.
    const int fd = OpenRaw(port, i % 2 == 0 ? "" : "GET /heal");
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the server accept them
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2);
  cli.set_read_timeout(2);
  double best_ms = 1e9;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const auto t0 = std::chrono::steady_clock::now();
    auto res = cli.Get("/healthz");
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(res) << "attempt " << attempt << ": no answer within 2 s";
    EXPECT_EQ(res->status, 200);
    best_ms = std::min(best_ms, ms);
  }
  EXPECT_LT(best_ms, 100.0);
  for (int fd : idle) close(fd);
}

// Wrong methods get 405 (with Allow) at once, whatever their body; nothing waits for a body
// that never comes.
TEST(MetricsHttpServer, WrongMethodsAre405Immediately) {
  MetricsRegistry r;
  auto server = MetricsHttpServer::Start(&r, "127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client cli("127.0.0.1", (*server)->port());
  cli.set_connection_timeout(2);
  cli.set_read_timeout(2);
  for (const char* path : {"/metrics", "/healthz"}) {
    const auto t0 = std::chrono::steady_clock::now();
    auto post = cli.Post(path, "x=1", "application/x-www-form-urlencoded");
    ASSERT_TRUE(post) << path;
    EXPECT_EQ(post->status, 405) << path;
    EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD") << path;
    auto del = cli.Delete(path);
    ASSERT_TRUE(del) << path;
    EXPECT_EQ(del->status, 405) << path;
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(ms, 1000.0) << path;
  }
  // A POST that announces no body and sends none is answered, not held open.
  const int fd = OpenRaw((*server)->port(), "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_GE(fd, 0);
  timeval tv{.tv_sec = 2, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[64] = {};
  const auto t0 = std::chrono::steady_clock::now();
  const ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  ASSERT_GT(n, 12);
  EXPECT_EQ(std::string(buf, 12), "HTTP/1.1 405");
  EXPECT_LT(ms, 1000.0);
  auto head = cli.Head("/healthz");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  auto get = cli.Get("/nope");
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 404);
}

}  // namespace
}  // namespace kv
