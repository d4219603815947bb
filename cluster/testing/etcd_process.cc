#include "cluster/testing/etcd_process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_split.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "proto/etcd/etcdserverpb/rpc.grpc.pb.h"

extern char** environ;

namespace kv::cluster::testing {
namespace {

namespace fs = std::filesystem;

// Binds two loopback sockets to port 0 at the same time, so the two ports differ, then
// releases them for etcd.
absl::StatusOr<std::pair<int, int>> TwoFreePorts() {
  int fds[2] = {-1, -1};
  int ports[2] = {0, 0};
  absl::Status status;
  for (int i = 0; i < 2 && status.ok(); ++i) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fds[i] < 0 || bind(fds[i], reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(fds[i], reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      status = kv::ErrnoToStatus(errno, "picking a free loopback port");
    } else {
      ports[i] = ntohs(addr.sin_port);
    }
  }
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  RETURN_IF_ERROR(status);
  return std::make_pair(ports[0], ports[1]);
}

constexpr std::string_view kServingLine = "serving insecure client requests";

// One KV.Range on a fresh channel, bounded by 1 s.
bool ProbeOnce(const std::string& endpoint) {
  auto channel = grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials());
  auto kv = etcdserverpb::KV::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  ctx.set_wait_for_ready(true);
  etcdserverpb::RangeRequest request;
  request.set_key("/kvstrata/ready-probe");
  etcdserverpb::RangeResponse response;
  return kv->Range(&ctx, request, &response).ok();
}

}  // namespace

absl::StatusOr<std::string> EtcdProcess::FindBinary() {
  if (access("/usr/bin/etcd", X_OK) == 0) return std::string("/usr/bin/etcd");
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
    std::string candidate = kv::StrCat(dir, "/etcd");
    if (!dir.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError("etcd is not installed (Debian package etcd-server)");
}

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(absl::Duration ready_timeout) {
  ASSIGN_OR_RETURN(std::string binary, FindBinary());
  const char* root = std::getenv("KVSTRATA_TEST_TMPDIR");
  std::string pattern = kv::StrCat(root != nullptr ? root : "/tmp", "/etcd-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  std::error_code ec;
  fs::create_directories(fs::path(pattern).parent_path(), ec);
  if (mkdtemp(buf.data()) == nullptr) return kv::ErrnoToStatus(errno, "mkdtemp for etcd");
  ASSIGN_OR_RETURN(auto ports, TwoFreePorts());
  std::unique_ptr<EtcdProcess> etcd(
      new EtcdProcess(std::move(binary), buf.data(), ports.first, ports.second));
  RETURN_IF_ERROR(etcd->Spawn());
  RETURN_IF_ERROR(etcd->WaitReady(ready_timeout));
  return etcd;
}

EtcdProcess::EtcdProcess(std::string binary, std::string dir, int client_port, int peer_port)
    : binary_(std::move(binary)),
      dir_(std::move(dir)),
      client_port_(client_port),
      peer_port_(peer_port) {}

EtcdProcess::~EtcdProcess() {
  Kill();
  if (std::getenv("KVSTRATA_KEEP_TEST_TMP") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

std::string EtcdProcess::endpoint() const { return kv::StrCat("127.0.0.1:", client_port_); }

absl::Status EtcdProcess::Spawn() {
  const std::string client = kv::StrCat("http://127.0.0.1:", client_port_);
  const std::string peer = kv::StrCat("http://127.0.0.1:", peer_port_);
  return child_.Spawn(
      {binary_, "--name=kvtest", kv::StrCat("--data-dir=", dir_, "/data"),
       kv::StrCat("--listen-client-urls=", client), kv::StrCat("--advertise-client-urls=", client),
       kv::StrCat("--listen-peer-urls=", peer), kv::StrCat("--initial-advertise-peer-urls=", peer),
       kv::StrCat("--initial-cluster=kvtest=", peer), "--initial-cluster-state=new"},
      kv::StrCat(dir_, "/etcd.log"));
}

absl::Status EtcdProcess::WaitReady(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  // etcd opens its client port before it serves it; a gRPC connection made in that window
  // stalls for seconds. So first wait for etcd to log that it serves clients (this run's
  // line: the log is appended to across restarts), then probe with a fresh channel.
  const size_t serving_before = child_.CountInLog(kServingLine);
  bool serving = false;
  while (absl::Now() < deadline) {
    if (!child_.Running()) {
      return absl::InternalError(
          kv::StrCat("etcd exited during start-up; log:\n", child_.LogTail()));
    }
    if (!serving) serving = child_.CountInLog(kServingLine) > serving_before;
    if (serving && ProbeOnce(endpoint())) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  Kill();
  return absl::DeadlineExceededError(kv::StrCat(
      "etcd did not answer within ", absl::FormatDuration(timeout), "; log:\n", child_.LogTail()));
}

void EtcdProcess::Kill() { child_.Kill(); }

absl::Status EtcdProcess::Restart(absl::Duration ready_timeout) {
  Kill();
  RETURN_IF_ERROR(Spawn());
  return WaitReady(ready_timeout);
}

}  // namespace kv::cluster::testing
