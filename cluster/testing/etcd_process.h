// EtcdProcess: a real single-member etcd server for tests (unit tests of cluster/ and the
// multi-process tests in tests/integration). It runs the Debian `etcd` binary on free
// loopback ports with a fresh data directory, and kills it on Kill() or destruction. etcd
// also dies with the process that started it (PR_SET_PDEATHSIG), so a crashed or killed test
// leaves no etcd behind.
//
// Every wait is bounded: Start() gives etcd `ready_timeout` to answer a read and fails with
// DEADLINE_EXCEEDED (including the tail of etcd's log) otherwise.
//
// Thread-safety: not thread-safe; use from the test's main thread. The data directory and
// log are removed on destruction unless KVSTRATA_KEEP_TEST_TMP is set.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/testing/child_process.h"

namespace kv::cluster::testing {

class EtcdProcess {
 public:
  // Finds etcd (/usr/bin/etcd, else $PATH). NOT_FOUND when it is not installed (tests skip).
  static absl::StatusOr<std::string> FindBinary();

  // Starts etcd under a fresh directory below $KVSTRATA_TEST_TMPDIR (or /tmp).
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> Start(
      absl::Duration ready_timeout = absl::Seconds(20));

  ~EtcdProcess();
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // "127.0.0.1:PORT" of the client endpoint.
  std::string endpoint() const;

  // SIGKILLs etcd and reaps it. No-op when not running.
  void Kill();

  // Starts etcd again on the same ports and data directory (after Kill()), waiting until
  // it answers. Errors as Start().
  absl::Status Restart(absl::Duration ready_timeout = absl::Seconds(20));

  bool running() { return child_.Running(); }

 private:
  EtcdProcess(std::string binary, std::string dir, int client_port, int peer_port);
  absl::Status Spawn();
  absl::Status WaitReady(absl::Duration timeout);

  const std::string binary_;
  const std::string dir_;
  const int client_port_;
  const int peer_port_;
  ChildProcess child_;
};

}  // namespace kv::cluster::testing
