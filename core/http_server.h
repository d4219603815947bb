// A small HTTP server (cpp-httplib) that serves a registry's Prometheus text at /metrics
// and a health probe at /healthz. Every kvstrata role runs one beside its gRPC server.
//
// Start() binds and listens before it returns (connections queue in the backlog until the
// server thread accepts them), so a caller may scrape
// right away. Stop() (also run by the destructor) is idempotent and joins the server thread.
// The health callback runs on the server's threads; it must be thread-safe and fast.
//
// Slow clients cannot starve the probes: 64 connections are served at once, a connection
// that sends nothing (or stops mid-request) is dropped after 2 s, and methods other than GET
// and HEAD get 405 (404 off the two paths) before any request body is read.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/metrics.h"

namespace httplib {
class Server;
}

namespace kv {

class MetricsHttpServer {
 public:
  // Returns OK with an empty message when healthy; a non-OK status makes /healthz answer 503
  // with the status text.
  using HealthFn = std::function<absl::Status()>;
  // While healthy, a non-empty string makes /healthz answer 200 "degraded: <text>" instead of
  // "ok": the node serves, but a part of it (e.g. a failing cache tier) is out.
  using DegradedFn = std::function<std::string()>;

  // `port` 0 picks a free port; see port(). `registry` must outlive the server.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(MetricsRegistry* registry,
                                                                  const std::string& host, int port,
                                                                  HealthFn health = {},
                                                                  DegradedFn degraded = {});
  ~MetricsHttpServer();
  int port() const { return port_; }
  void Stop();

 private:
  MetricsHttpServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace kv
