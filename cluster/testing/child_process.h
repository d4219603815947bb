// ChildProcess: a process a test starts (etcd, `kvstrata serve`), with its stdout and stderr
// appended to a log file. The child dies with the process that started it
// (PR_SET_PDEATHSIG), so a crashed or killed test leaves nothing behind.
//
// Every wait is bounded. Thread-safety: not thread-safe; use from one thread. Destruction
// SIGKILLs and reaps a running child.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kv::cluster::testing {

class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess() { Kill(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts `args` (args[0] is the binary's path) with `env_extra` ("K=V") added to this
  // process's environment. Errors of fork. An exec failure shows as exit code 127.
  absl::Status Spawn(std::vector<std::string> args, std::string log_path,
                     std::vector<std::string> env_extra = {});
  // Sends `signal` and waits up to `timeout` for the exit; returns the exit status
  // (waitpid's), DeadlineExceeded if the child is still running (it is then SIGKILLed).
  absl::StatusOr<int> Stop(int signal, absl::Duration timeout);
  // SIGKILLs and reaps the child. No-op when not running.
  void Kill();
  // True while the child has not exited (reaps it when it has).
  bool Running();
  // Waits up to `timeout` for `needle` to appear in the log (past `from_count` earlier
  // occurrences); returns the first line containing it. FailedPrecondition if the child
  // exits first, DeadlineExceeded otherwise; both with the log's tail.
  absl::StatusOr<std::string> WaitForLine(std::string_view needle, absl::Duration timeout,
                                          size_t from_count = 0);
  size_t CountInLog(std::string_view needle) const;
  std::string LogTail(size_t bytes = 2000) const;
  pid_t pid() const { return pid_; }

 private:
  std::string log_path_;
  pid_t pid_ = -1;
};

}  // namespace kv::cluster::testing
