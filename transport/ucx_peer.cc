#include "transport/ucx_peer.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/hash.h"
#include "transport/ucx_transport.h"

namespace kv::transport {

namespace {
void Fill(char* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<char>(rng() | 1);
}
}  // namespace

int RunUcxPeer(size_t bytes, FILE* in, FILE* out) {
  absl::StatusOr<std::unique_ptr<UcxTransport>> t = UcxTransport::Create();
  if (!t.ok()) {
    std::fprintf(out, "ERR %s\n", std::string(t.status().message()).c_str());
    std::fflush(out);
    return 1;
  }
  std::unique_ptr<char[]> region(new char[bytes]);
  std::memset(region.get(), 0xA5, bytes);
  absl::StatusOr<RegisteredRegion> reg = (*t)->Register(region.get(), bytes, MemoryKind::kHost);
  if (!reg.ok()) {
    std::fprintf(out, "ERR %s\n", std::string(reg.status().message()).c_str());
    std::fflush(out);
    return 1;
  }
  std::string addr = (*t)->address();
  std::fprintf(out, "ADDR %s\nKEY %s\n", ToHex(addr.data(), addr.size()).c_str(),
               ToHex(reg->packed_key.data(), reg->packed_key.size()).c_str());
  std::fflush(out);
  char line[4096];
  while (std::fgets(line, sizeof(line), in) != nullptr) {
    std::string cmd(line);
    unsigned long long a = 0, b = 0, c = 0;
    if (cmd.rfind("QUIT", 0) == 0) break;
    if (std::sscanf(line, "FILL %llu", &a) == 1) {
      Fill(region.get(), bytes, a);
      std::fprintf(out, "OK\n");
    } else if (cmd.rfind("DEREG", 0) == 0) {
      absl::Status st = (*t)->Deregister(reg->id);
      std::fprintf(out, "%s\n", st.ok() ? "OK" : ("ERR " + std::string(st.message())).c_str());
    } else if (cmd.rfind("POISON", 0) == 0) {
      std::memset(region.get(), 0xA5, bytes);
      std::fprintf(out, "OK\n");
    } else if (std::sscanf(line, "SUMS %llu %llu %llu", &a, &b, &c) == 3) {
      std::string reply = "SUMS";
      for (unsigned long long i = 0; i < c && a + (i + 1) * b <= bytes; ++i) {
        absl::StrAppend(&reply, " ", Xxh3_64(region.get() + a + i * b, b));
      }
      std::fprintf(out, "%s\n", reply.c_str());
    } else if (std::sscanf(line, "ECHO %llu", &a) == 1) {
      auto m = (*t)->ReceiveTagged(static_cast<uint32_t>(a), absl::Now() + absl::Seconds(10));
      absl::Status st = m.status();
      if (m.ok()) {
        st = (*t)->SendTagged(m->from, static_cast<uint32_t>(a + 1), m->payload,
                              absl::Now() + absl::Seconds(10));
      }
      if (st.ok()) {
        std::fprintf(out, "OK\n");
      } else {
        std::fprintf(out, "ERR %s\n", std::string(st.message()).c_str());
      }
    } else {
      std::fprintf(out, "ERR unknown command\n");
    }
    std::fflush(out);
  }
  return 0;
}

ChildProcess::ChildProcess(const std::vector<std::string>& argv) {
  int to[2], from[2];
  if (argv.empty() || pipe2(to, O_CLOEXEC) != 0) return;
  if (pipe2(from, O_CLOEXEC) != 0) {
    close(to[0]);
    close(to[1]);
    return;
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_ = fork();
  if (pid_ == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    execv(args[0], args.data());
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  in_ = to[1];
  out_ = from[0];
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    Send("QUIT");
    for (int i = 0; i < 200 && pid_ > 0; ++i) {  // <= 2 s, then SIGKILL
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) pid_ = 0;
      if (pid_ > 0) usleep(10000);
    }
    if (pid_ > 0) Kill();
  }
  if (in_ >= 0) close(in_);
  if (out_ >= 0) close(out_);
}

void ChildProcess::Send(const std::string& line) {
  std::string l = line + "\n";
  (void)!write(in_, l.data(), l.size());
}

std::string ChildProcess::ReadLine(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (line.rfind("[", 0) == 0) continue;  // a UCX log line, not a reply
      return line;
    }
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0) return "";
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) return "";
    char tmp[4096];
    ssize_t n = read(out_, tmp, sizeof(tmp));
    if (n <= 0) return "";
    buf_.append(tmp, n);
  }
}

std::string ChildProcess::ReadAll(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0) {
      Kill();
      break;
    }
    pollfd p{out_, POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) continue;
    char tmp[4096];
    ssize_t n = read(out_, tmp, sizeof(tmp));
    if (n <= 0) break;
    buf_.append(tmp, n);
  }
  if (pid_ > 0 && waitpid(pid_, nullptr, 0) == pid_) pid_ = 0;
  std::string all;
  all.swap(buf_);
  return all;
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = 0;
}

}  // namespace kv::transport
