#include "cluster/testing/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "core/status_macros.h"
#include "core/strings.h"

extern char** environ;

namespace kv::cluster::testing {

absl::Status ChildProcess::Spawn(std::vector<std::string> args, std::string log_path,
                                 std::vector<std::string> env_extra) {
  Kill();
  if (args.empty()) return absl::InvalidArgumentError("spawn: no program");
  log_path_ = std::move(log_path);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  for (std::string& e : env_extra) env.push_back(std::move(e));
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  // fork + exec rather than posix_spawn, to set PR_SET_PDEATHSIG. Between fork and exec the
  // child calls only async-signal-safe functions.
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, StrCat("forking for ", args[0]));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    const int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  pid_ = pid;
  return absl::OkStatus();
}

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  int wstatus = 0;
  if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

absl::StatusOr<int> ChildProcess::Stop(int signal, absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, signal);
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int wstatus = 0;
    if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return wstatus;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  Kill();
  return absl::DeadlineExceededError(StrCat("the child did not exit within ",
                                            absl::FormatDuration(timeout), " of signal ", signal));
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int wstatus = 0;
  waitpid(pid_, &wstatus, 0);
  pid_ = -1;
}

size_t ChildProcess::CountInLog(std::string_view needle) const {
  std::ifstream in(log_path_);
  size_t count = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) ++count;
  }
  return count;
}

absl::StatusOr<std::string> ChildProcess::WaitForLine(std::string_view needle,
                                                      absl::Duration timeout, size_t from_count) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    std::ifstream in(log_path_);
    size_t seen = 0;
    for (std::string line; std::getline(in, line);) {
      if (line.find(needle) != std::string::npos && seen++ >= from_count) return line;
    }
    if (!Running()) {
      return absl::FailedPreconditionError(
          StrCat("the child exited before logging '", needle, "'; log:\n", LogTail()));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(StrCat(
          "no '", needle, "' within ", absl::FormatDuration(timeout), "; log:\n", LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

std::string ChildProcess::LogTail(size_t bytes) const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string all = ss.str();
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

}  // namespace kv::cluster::testing
