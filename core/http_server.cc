#include "core/http_server.h"

#include <httplib.h>

#include "core/logging.h"
#include "core/strings.h"

namespace kv {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    MetricsRegistry* registry, const std::string& host, int port, HealthFn health) {
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->server_ = std::make_unique<httplib::Server>();
  s->server_->Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->RenderPrometheus(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s->server_->Get("/healthz", [health](const httplib::Request&, httplib::Response& res) {
    absl::Status st = health ? health() : absl::OkStatus();
    if (st.ok()) {
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
