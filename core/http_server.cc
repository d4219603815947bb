#include "core/http_server.h"

#include <httplib.h>

#include "absl/time/time.h"
#include "core/logging.h"
#include "core/strings.h"

namespace kv {
namespace {
constexpr int kThreads = 64;
constexpr absl::Duration kIdle = absl::Seconds(2);
}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    MetricsRegistry* registry, const std::string& host, int port, HealthFn health,
    DegradedFn degraded) {
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->server_ = std::make_unique<httplib::Server>();
  httplib::Server& srv = *s->server_;
  // Probes must answer while slow or idle clients hold connections: every connection holds a
  // worker thread until it is served or times out, so there are kThreads of them and a
  // connection that sends nothing is dropped after kIdle.
  srv.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  srv.set_keep_alive_timeout(absl::ToInt64Seconds(kIdle));
  srv.set_read_timeout(absl::ToInt64Seconds(kIdle));
  srv.set_write_timeout(absl::ToInt64Seconds(kIdle));
  // Only GET and HEAD exist. Other methods are answered before any body is read, so a POST
  // that never sends its body cannot hold a thread.
  srv.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" || req.method == "HEAD")
      return httplib::Server::HandlerResponse::Unhandled;
    const bool known = req.path == "/metrics" || req.path == "/healthz";
    res.status = known ? 405 : 404;
    if (known) res.set_header("Allow", "GET, HEAD");
    res.set_header("Connection", "close");  // an unread body must not be parsed as a request
    res.set_content(known ? "method not allowed\n" : "not found\n", "text/plain");
    return httplib::Server::HandlerResponse::Handled;
  });
  s->server_->Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->RenderPrometheus(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s->server_->Get("/healthz", [health, degraded](const httplib::Request&, httplib::Response& res) {
    absl::Status st = health ? health() : absl::OkStatus();
    const std::string why = st.ok() && degraded ? degraded() : std::string();
    if (st.ok() && !why.empty()) {
      res.set_content(kv::StrCat("degraded: ", why, "\n"), "text/plain");
    } else if (st.ok()) {
      res.set_content("ok\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content(kv::StrCat(st.ToString(), "\n"), "text/plain");
    }
  });
  if (port == 0) {
    s->port_ = s->server_->bind_to_any_port(host);
  } else {
    s->port_ = s->server_->bind_to_port(host, port) ? port : -1;
  }
  if (s->port_ <= 0) {
    return absl::UnavailableError(kv::StrCat("metrics http server: cannot bind ", host, ":", port));
  }
  httplib::Server* raw = s->server_.get();
  s->thread_ = std::thread([raw] { raw->listen_after_bind(); });
  log::Info("metrics_http_listening", "addr", kv::StrCat(host, ":", s->port_));
  return s;
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace kv
