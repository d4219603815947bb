// TransportSecurity: how every gRPC channel and server of kvstrata is secured — plaintext, or
// mutual TLS against one cluster CA. It is the one place that makes gRPC credentials, so
// TLS is either on for every channel and server of a process or off for all of them:
//   - NewChannel(address, args) is how kvstrata dials another node or a client dials kvstrata;
//   - GrpcServer (cluster/grpc_server.h) takes its server credentials from here.
// Both use the process's security (SetProcessTransportSecurity, set once at start by `kvstrata
// serve` and by the CLI's client commands) unless a caller passes its own (the client
// library, whose options name the files per connection).
//
// mTLS. The server asks for and requires a client certificate and verifies it against the CA
// (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY). A client presents its own
// certificate and verifies the server's chain against the same CA. Host names are not checked:
// nodes dial each other by the addresses they advertise (pod IPs), which a certificate shared
// by a Deployment cannot name, so "holds a certificate from the cluster CA" is the identity
// (docs/design-notes.md 27).
//
// Reload. A reloadable security (serve) copies the three files into a private directory that
// gRPC's FileWatcherCertificateProvider re-reads every second; Reload() (SIGHUP) checks the
// configured files again and, only when they are valid, swaps the copies in at once. New
// connections then use the new certificate and CA within about a second; established
// connections keep theirs. A non-reloadable one (clients) reads the files once.
//
// Uses gRPC's grpc::experimental TLS API (TlsCredentials, TlsServerCredentials, certificate
// providers and verifiers), the only way gRPC 1.51 offers to change certificates of a running
// server.
//
// Thread-safety: all methods are safe to call concurrently. Ownership: credentials and channels
// are shared_ptrs owned by the caller. A reloadable TransportSecurity must outlive the servers
// and channels made from it (its destructor removes the watched copies); the process's is held
// until SetProcessTransportSecurity replaces it (serve drops it after its servers shut down).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/config.h"
#include "core/mutex.h"

namespace grpc::experimental {
class CertificateProviderInterface;
}  // namespace grpc::experimental

namespace kv::cluster {

// The three PEM files of mutual TLS: this node's (or client's) certificate chain, its private
// key, and the CA bundle peers are verified against. All three or none.
struct TlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string ca_file;

  bool empty() const { return cert_file.empty() && key_file.empty() && ca_file.empty(); }
};

// OK when all three are empty (TLS off) or all three exist and parse: the certificate file
// starts with a PEM certificate, the key file holds an unencrypted PEM private key that
// matches it, the CA file holds at least one PEM certificate, and the certificate verifies
// against the CA now (not expired). INVALID_ARGUMENT naming the file and the problem (NOT_FOUND
// for a missing file) otherwise. `flag_prefix` names the keys in messages: "tls-" gives
// "tls-cert-file", one ending in '_' ("options.tls_") gives "options.tls_cert_file".
absl::Status ValidateTlsFiles(const TlsFiles& files, const std::string& flag_prefix = "tls-");

class TransportSecurity {
 public:
  // Plaintext channels and servers.
  static std::shared_ptr<TransportSecurity> Insecure();
  // Mutual TLS with `files` (ValidateTlsFiles first; its errors). With `reloadable`, the files
  // are copied into a private directory under $TMPDIR (mode 0700, removed by the destructor)
  // that gRPC watches, and Reload() swaps in new copies. INVALID_ARGUMENT for empty files.
  // `flag_prefix` as for ValidateTlsFiles.
  static absl::StatusOr<std::shared_ptr<TransportSecurity>> Tls(
      TlsFiles files, bool reloadable, const std::string& flag_prefix = "tls-");

  ~TransportSecurity();
  TransportSecurity(const TransportSecurity&) = delete;
  TransportSecurity& operator=(const TransportSecurity&) = delete;

  bool tls() const { return provider_ != nullptr; }
  const TlsFiles& files() const { return files_; }

  // Re-reads the configured files; when valid, the watched copies are replaced (new
  // connections use them within about a second). On error the old certificates stay in use
  // and the error names the problem. FAILED_PRECONDITION when TLS is off or not reloadable.
  absl::Status Reload();

  std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() const;
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;

 private:
  TransportSecurity() = default;
  absl::Status WriteGeneration(const std::string& cert, const std::string& key,
                               const std::string& ca) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  TlsFiles files_;
  std::string watch_dir_;  // reloadable: the private directory; empty otherwise
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider_;
  kv::Mutex mu_;
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
};

// The process's security, used by NewChannel and GrpcServer when the caller passes none.
// Plaintext until set. Set it before the first channel or server is made.
void SetProcessTransportSecurity(std::shared_ptr<TransportSecurity> security);
std::shared_ptr<TransportSecurity> ProcessTransportSecurity();

// Binds --tls-cert-file, --tls-key-file and --tls-ca-file (also config keys) to `files`.
// `who` says whose files they are in the help ("this node's", "the client's").
void BindTlsFlags(kv::FlagSet* flags, TlsFiles* files, std::string_view who);

// Makes `files` the process's security: nothing when all are empty (plaintext), mutual TLS
// otherwise (reloadable: see TransportSecurity::Tls). ValidateTlsFiles' errors. Returns the
// security now in use.
absl::StatusOr<std::shared_ptr<TransportSecurity>> UseProcessTls(const TlsFiles& files,
                                                                 bool reloadable);

// A channel to `address` with `security`'s credentials (null: the process's).
std::shared_ptr<grpc::Channel> NewChannel(const std::string& address,
                                          const grpc::ChannelArguments& args = {},
                                          const TransportSecurity* security = nullptr);

}  // namespace kv::cluster
