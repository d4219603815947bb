// Issue #18 item 9: mutual TLS between nodes and from clients, with real processes on
// loopback. A throwaway CA ("A") and certificates are made at test time with the `openssl`
// CLI, plus a second CA ("B") whose certificates the cluster must refuse, and a third ("C")
// the store switches to on SIGHUP. A `serve --role=store` and a `serve --role=router` (which
// reaches the store for GetStats(all_nodes), node to node) both run with CA A. Checked:
//   - a client with a certificate from A is served, by both nodes;
//   - a client without a certificate (but trusting A), one whose certificate is from B, and a
//     plaintext client are refused, by both nodes;
//   - the router collects the store's stats over TLS (node-to-node);
//   - `serve --check-config` refuses a partial or mismatched tls-* set and accepts a valid one;
//   - SIGHUP with broken files keeps the old certificates (a log line says why); SIGHUP with
//     files of CA C switches the store to C (a C client is served, an A client refused).
// Every wait is bounded; the work directory is removed unless KVSTRATA_KEEP_TEST_TMP is set.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "cluster/client.h"
#include "cluster/grpc_probe.h"
#include "cluster/testing/child_process.h"
#include "cluster/transport_security.h"
#include "core/strings.h"
#include "tests/integration/binary_test_main.h"

namespace kv {
namespace {

namespace fs = std::filesystem;
namespace gx = ::grpc::experimental;
using cluster::testing::ChildProcess;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

std::string g_work;  // the suite's work directory

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs a shell command with a 60 s bound; its exit status (-1 when it could not run).
int Shell(const std::string& command) {
  const int rc =
      std::system(StrCat("timeout 60 ", command, " >>", g_work, "/cmd.log 2>&1").c_str());
  return rc == -1 ? -1 : WEXITSTATUS(rc);
}

// DIR/NAME.key + DIR/NAME.pem: a self-signed CA.
void MakeCa(const std::string& name) {
  ASSERT_EQ(Shell(StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 ",
                         "-nodes -days 2 -subj /CN=", name, " -keyout ", g_work, "/", name,
                         ".key -out ", g_work, "/", name, ".pem")),
            0)
      << ReadFile(g_work + "/cmd.log");
}

// DIR/NAME.key + DIR/NAME.pem: a certificate for localhost/127.0.0.1 signed by CA `ca`.
void MakeCert(const std::string& name, const std::string& ca) {
  const std::string p = StrCat(g_work, "/", name);
  std::ofstream(p + ".ext") << "basicConstraints=CA:FALSE\n"
                               "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  ASSERT_EQ(Shell(StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ",
                         "-subj /CN=", name, " -keyout ", p, ".key -out ", p, ".csr")),
            0)
      << ReadFile(g_work + "/cmd.log");
  ASSERT_EQ(Shell(StrCat("openssl x509 -req -days 2 -in ", p, ".csr -CA ", g_work, "/", ca,
                         ".pem -CAkey ", g_work, "/", ca, ".key -CAcreateserial -extfile ", p,
                         ".ext -out ", p, ".pem")),
            0)
      << ReadFile(g_work + "/cmd.log");
}

std::string Pem(const std::string& name) { return ReadFile(StrCat(g_work, "/", name, ".pem")); }
std::string Key(const std::string& name) { return ReadFile(StrCat(g_work, "/", name, ".key")); }

// A TLS channel with root `ca_pem` and, unless `cert` is empty, the identity `cert`. Host
// names unchecked, as kvstrata's own channels.
std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address, const std::string& ca_pem,
                                          const std::string& cert) {
  std::vector<gx::IdentityKeyCertPair> id;
  if (!cert.empty()) id.push_back({Key(cert), Pem(cert)});
  auto provider = std::make_shared<gx::StaticDataCertificateProvider>(ca_pem, id);
  gx::TlsChannelCredentialsOptions o;
  o.set_certificate_provider(provider);
  o.watch_root_certs();
  if (!cert.empty()) o.watch_identity_key_cert_pairs();
  o.set_certificate_verifier(std::make_shared<gx::NoOpCertificateVerifier>());
  o.set_check_call_host(false);
  return grpc::CreateChannel(address, gx::TlsCredentials(o));
}

absl::StatusOr<HealthStatus::ServingStatus> Health(const std::shared_ptr<grpc::Channel>& c) {
  return cluster::CheckHealth(c.get(), "", absl::Seconds(5));
}

// A node started with `serve ROLE ... --tls-*` from the files NAME.{pem,key} and CA.pem,
// copied to NAME-live.* so that a test can replace them.
struct Node {
  std::unique_ptr<ChildProcess> proc;
  std::string address;
  std::string cert, key, ca;  // the configured paths
};

Node StartNode(const std::string& name, const std::string& cert, const std::string& ca,
               std::vector<std::string> extra) {
  Node n;
  n.cert = StrCat(g_work, "/", name, "-live.pem");
  n.key = StrCat(g_work, "/", name, "-live.key");
  n.ca = StrCat(g_work, "/", name, "-live-ca.pem");
  fs::copy_file(StrCat(g_work, "/", cert, ".pem"), n.cert, fs::copy_options::overwrite_existing);
  fs::copy_file(StrCat(g_work, "/", cert, ".key"), n.key, fs::copy_options::overwrite_existing);
  fs::copy_file(StrCat(g_work, "/", ca, ".pem"), n.ca, fs::copy_options::overwrite_existing);
  std::vector<std::string> args = {g_binary,
                                   "serve",
                                   "--node-id=" + name,
                                   "--listen=127.0.0.1:0",
                                   "--metrics-port=-1",
                                   "--model-dir=" + g_work + "/model",
                                   "--data-dir=" + g_work + "/" + name,
                                   "--device-mib=0",
                                   "--host-mib=32",
                                   "--nvme-mib=0",
                                   "--tls-cert-file=" + n.cert,
                                   "--tls-key-file=" + n.key,
                                   "--tls-ca-file=" + n.ca};
  args.insert(args.end(), extra.begin(), extra.end());
  n.proc = std::make_unique<ChildProcess>();
  // TMPDIR: the node's private TLS copies go under the work directory, removed at the end.
  EXPECT_TRUE(n.proc->Spawn(args, StrCat(g_work, "/", name, ".log"), {"TMPDIR=" + g_work}).ok());
  absl::StatusOr<std::string> line = n.proc->WaitForLine("listening on", absl::Seconds(90));
  EXPECT_TRUE(line.ok()) << line.status();
  if (!line.ok()) return n;
  std::smatch m;
  EXPECT_TRUE(std::regex_search(*line, m, std::regex("listening on ([0-9.:]+)"))) << *line;
  n.address = m[1];
  return n;
}

class ServeTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* tmp = std::getenv("KVSTRATA_TEST_TMPDIR");
    g_work = (fs::path(tmp ? tmp : "/tmp") / StrCat("serve-tls-test-", getpid())).string();
    fs::remove_all(g_work);
    fs::create_directories(g_work);
    MakeCa("ca-a");
    MakeCert("node-a", "ca-a");
    MakeCert("client-a", "ca-a");
    MakeCa("ca-b");
    MakeCert("client-b", "ca-b");
    MakeCa("ca-c");
    MakeCert("node-c", "ca-c");
    MakeCert("client-c", "ca-c");
    absl::Status init = InitTinyModel(g_work + "/model", g_work + "/model-init.log");
    ASSERT_TRUE(init.ok()) << init;
    store_ = new Node(StartNode("store", "node-a", "ca-a", {"--role=store"}));
    router_ =
        new Node(StartNode("router", "node-a", "ca-a",
                           {"--role=router", "--members=store=" + store_->address + "@store"}));
  }
  static void TearDownTestSuite() {
    delete router_;
    delete store_;
    if (std::getenv("KVSTRATA_KEEP_TEST_TMP") == nullptr) fs::remove_all(g_work);
  }

  static Node* store_;
  static Node* router_;
};
Node* ServeTlsTest::store_ = nullptr;
Node* ServeTlsTest::router_ = nullptr;

TEST_F(ServeTlsTest, ClientWithCertificateFromTheCaIsServed) {
  for (const Node* n : {store_, router_}) {
    absl::StatusOr<HealthStatus::ServingStatus> h =
        Health(TlsChannel(n->address, Pem("ca-a"), "client-a"));
    ASSERT_TRUE(h.ok()) << n->address << ": " << h.status();
    EXPECT_EQ(*h, HealthStatus::SERVING);
  }
}

TEST_F(ServeTlsTest, ClientsWithoutAValidCertificateAreRefused) {
  for (const Node* n : {store_, router_}) {
    // No client certificate, but the server's CA is trusted: the server refuses.
    EXPECT_FALSE(Health(TlsChannel(n->address, Pem("ca-a"), "")).ok()) << n->address;
    // A certificate from another CA (trusting the server's CA): the server refuses.
    EXPECT_FALSE(Health(TlsChannel(n->address, Pem("ca-a"), "client-b")).ok()) << n->address;
    // Plaintext.
    EXPECT_FALSE(Health(grpc::CreateChannel(n->address, grpc::InsecureChannelCredentials())).ok())
        << n->address;
  }
}

TEST_F(ServeTlsTest, KvstrataClientsUseTheFiles) {
  cluster::TlsFiles files{g_work + "/client-a.pem", g_work + "/client-a.key", g_work + "/ca-a.pem"};
  absl::StatusOr<std::shared_ptr<cluster::TransportSecurity>> sec =
      cluster::TransportSecurity::Tls(files, /*reloadable=*/false);
  ASSERT_TRUE(sec.ok()) << sec.status();
  auto ok = Health(cluster::NewChannel(store_->address, {}, sec->get()));
  ASSERT_TRUE(ok.ok()) << ok.status();
  // The router asks the store for its stats: node to node, over TLS.
  cluster::SetProcessTransportSecurity(*sec);
  absl::StatusOr<std::unique_ptr<cluster::ClusterClient>> client =
      cluster::ClusterClient::Connect(router_->address, "");
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<kvstrata::v1::GetStatsResponse> stats =
      (*client)->GetStats(absl::Seconds(10), /*all_nodes=*/true);
  cluster::SetProcessTransportSecurity(cluster::TransportSecurity::Insecure());
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->nodes_size(), 1) << stats->DebugString();
  EXPECT_EQ(stats->nodes(0).node_id(), "store");
  EXPECT_FALSE(stats->nodes(0).has_error()) << stats->nodes(0).error().message();
}

TEST_F(ServeTlsTest, CheckConfigValidatesTheFiles) {
  const std::string base =
      StrCat(g_binary, " serve --role=store --check-config --model-dir=", g_work, "/model ");
  const std::string a =
      StrCat("--tls-cert-file=", g_work, "/node-a.pem --tls-key-file=", g_work, "/node-a.key ");
  EXPECT_EQ(Shell(StrCat(base, a, "--tls-ca-file=", g_work, "/ca-a.pem")), 0);
  EXPECT_EQ(Shell(StrCat(base, a)), 1) << "a partial set must be refused";
  EXPECT_EQ(Shell(StrCat(base, a, "--tls-ca-file=", g_work, "/missing.pem")), 1);
  EXPECT_EQ(Shell(StrCat(base, a, "--tls-ca-file=", g_work, "/ca-b.pem")), 1)
      << "a certificate that does not verify against the CA must be refused";
  EXPECT_EQ(Shell(StrCat(base, "--tls-cert-file=", g_work, "/node-a.pem --tls-key-file=", g_work,
                         "/client-a.key --tls-ca-file=", g_work, "/ca-a.pem")),
            1)
      << "a key that is not the certificate's must be refused";
}

// Last (gtest runs a suite's tests in order): it changes the store's CA.
TEST_F(ServeTlsTest, SighupReloadsTheFiles) {
  // Broken files: refused, the old certificates stay.
  std::ofstream(store_->cert) << "not a certificate\n";
  ASSERT_EQ(::kill(store_->proc->pid(), SIGHUP), 0);
  ASSERT_TRUE(store_->proc->WaitForLine("tls_reload_failed", absl::Seconds(10)).ok())
      << store_->proc->LogTail();
  absl::SleepFor(absl::Seconds(2));  // past the watcher's refresh
  auto still = Health(TlsChannel(store_->address, Pem("ca-a"), "client-a"));
  ASSERT_TRUE(still.ok()) << still.status();

  fs::copy_file(g_work + "/node-c.pem", store_->cert, fs::copy_options::overwrite_existing);
  fs::copy_file(g_work + "/node-c.key", store_->key, fs::copy_options::overwrite_existing);
  fs::copy_file(g_work + "/ca-c.pem", store_->ca, fs::copy_options::overwrite_existing);
  ASSERT_EQ(::kill(store_->proc->pid(), SIGHUP), 0);
  ASSERT_TRUE(store_->proc->WaitForLine("tls_reloaded", absl::Seconds(10)).ok())
      << store_->proc->LogTail();
  bool served = false;
  for (int i = 0; i < 20 && !served; ++i) {  // the watcher re-reads every second
    served = Health(TlsChannel(store_->address, Pem("ca-c"), "client-c")).ok();
    if (!served) absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_TRUE(served) << "a client of the new CA is not served 10 s after SIGHUP";
  EXPECT_FALSE(Health(TlsChannel(store_->address, Pem("ca-a"), "client-a")).ok())
      << "a client of the old CA is still served after the reload";
  EXPECT_TRUE(store_->proc->Running());
}

}  // namespace
}  // namespace kv
