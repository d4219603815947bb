// The peer side of the two-process UCX tests and of `kvstrata bench transport`: a process
// that owns one registered region and serves one-sided writes/reads into it, driven by
// line commands on `in`, answering on `out`.
//
//   start: prints "ADDR <hex address>" and "KEY <hex packed region key>"
//   FILL <seed>          fill the region with seeded random bytes      -> "OK"
//   POISON               fill the region with 0xA5                     -> "OK"
//   DEREG                deregister the region (the memory stays)      -> "OK" / "ERR ..."
//   SUMS <off> <len> <n> XXH3-64 of n consecutive len-byte pages        -> "SUMS h1 h2 ..."
//   ECHO <tag>           receive a tagged message, send it back as tag+1 -> "OK" / "ERR ..."
//   QUIT                 exit 0
// Not thread-safe (one process, one caller). Returns the process exit code.
#pragma once

#include <sys/types.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace kv::transport {

// A child process (a peer, or any helper such as ucx_perftest) driven over its stdin/stdout.
// Every read is bounded; the destructor sends "QUIT", waits up to 2 s, then SIGKILLs. UCX log
// lines (starting with '[') on the child's stdout are skipped. Not thread-safe.
class ChildProcess {
 public:
  // Starts argv[0] with `argv` (fork + execv). ok() is false when it could not start.
  explicit ChildProcess(const std::vector<std::string>& argv);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool ok() const { return pid_ > 0; }
  void Send(const std::string& line);
  // The next line, or "" when none arrives within `timeout` or the child closed stdout.
  std::string ReadLine(absl::Duration timeout = absl::Seconds(20));
  std::string Call(const std::string& line) {
    Send(line);
    return ReadLine();
  }
  // Everything the child writes until it exits or `timeout` (then it is killed).
  std::string ReadAll(absl::Duration timeout);
  void Kill();

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string buf_;
};

// `bytes` is the size of the served region. The UCX configuration comes from the
// environment (UCX_TLS, UCX_NET_DEVICES), as for any UcxTransport.
int RunUcxPeer(size_t bytes, FILE* in, FILE* out);

}  // namespace kv::transport
