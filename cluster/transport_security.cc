#include "cluster/transport_security.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {
namespace {

namespace gx = ::grpc::experimental;

// How often gRPC re-reads the watched copies. A reload (which replaces them) takes effect
// within this long.
constexpr unsigned kWatchIntervalSeconds = 1;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, const std::string& key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = StrCat(key, " '", path, "' cannot be read: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(why) : absl::InvalidArgumentError(why);
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::unique_ptr<BIO, BioFree> MemBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The name of a file's key in messages: "tls-cert-file" (flags) or "options.tls_cert_file".
std::string KeyName(const std::string& prefix, const char* what) {
  const bool snake = !prefix.empty() && prefix.back() == '_';
  return StrCat(prefix, what, snake ? "_file" : "-file");
}

// Every PEM certificate in `pem`, in order (none when it holds none).
std::vector<X509Ptr> ParseCerts(const std::string& pem) {
  std::vector<X509Ptr> out;
  auto bio = MemBio(pem);
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the read that ended the loop left "no start line"
  return out;
}

// Chain-verifies certs[0] (with certs[1..] as intermediates) against `ca`.
absl::Status VerifyAgainstCa(const std::vector<X509Ptr>& certs, const std::vector<X509Ptr>& ca,
                             const std::string& cert_key, const std::string& ca_key) {
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  for (const X509Ptr& c : ca) X509_STORE_add_cert(store.get(), c.get());
  std::unique_ptr<STACK_OF(X509), StackFree> chain(sk_X509_new_null());
  for (size_t i = 1; i < certs.size(); ++i) {
    X509_up_ref(certs[i].get());
    sk_X509_push(chain.get(), certs[i].get());
  }
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), certs[0].get(), chain.get()) != 1) {
    return absl::InternalError("OpenSSL could not set up certificate verification");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::InvalidArgumentError(StrCat(cert_key, " does not verify against ", ca_key, ": ",
                                             X509_verify_cert_error_string(err)));
  }
  return absl::OkStatus();
}

// The checks of ValidateTlsFiles on the files' contents.
absl::Status ValidatePem(const std::string& cert_pem, const std::string& key_pem,
                         const std::string& ca_pem, const TlsFiles& f, const std::string& p) {
  const std::string cert_key = StrCat(KeyName(p, "cert"), " '", f.cert_file, "'");
  const std::string key_key = StrCat(KeyName(p, "key"), " '", f.key_file, "'");
  const std::string ca_key = StrCat(KeyName(p, "ca"), " '", f.ca_file, "'");
  std::vector<X509Ptr> certs = ParseCerts(cert_pem);
  if (certs.empty())
    return absl::InvalidArgumentError(StrCat(cert_key, " holds no PEM certificate"));
  auto bio = MemBio(key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, const_cast<char*>("")));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(StrCat(key_key, " holds no unencrypted PEM private key"));
  }
  if (X509_check_private_key(certs[0].get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        StrCat(key_key, " is not the private key of the certificate in ", cert_key));
  }
  std::vector<X509Ptr> ca = ParseCerts(ca_pem);
  if (ca.empty()) return absl::InvalidArgumentError(StrCat(ca_key, " holds no PEM certificate"));
  return VerifyAgainstCa(certs, ca, cert_key, ca_key);
}

struct Pems {
  std::string cert, key, ca;
};

absl::StatusOr<Pems> ReadAndValidate(const TlsFiles& f, const std::string& p) {
  const int set = !f.cert_file.empty() + !f.key_file.empty() + !f.ca_file.empty();
  if (set != 3) {
    return absl::InvalidArgumentError(StrCat(KeyName(p, "cert"), ", ", KeyName(p, "key"), " and ",
                                             KeyName(p, "ca"),
                                             " go together: set all three or none"));
  }
  Pems out;
  ASSIGN_OR_RETURN(out.cert, ReadWholeFile(f.cert_file, KeyName(p, "cert")));
  ASSIGN_OR_RETURN(out.key, ReadWholeFile(f.key_file, KeyName(p, "key")));
  ASSIGN_OR_RETURN(out.ca, ReadWholeFile(f.ca_file, KeyName(p, "ca")));
  RETURN_IF_ERROR(ValidatePem(out.cert, out.key, out.ca, f, p));
  return out;
}

absl::Status WritePrivate(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  out.close();
  if (!out || ::chmod(path.c_str(), 0600) != 0) {
    return absl::InternalError(StrCat("cannot write TLS copy '", path, "'"));
  }
  return absl::OkStatus();
}

kv::Mutex& ProcessMu() {
  static kv::Mutex* mu = new kv::Mutex;
  return *mu;
}
std::shared_ptr<TransportSecurity>& ProcessSecuritySlot() {
  static auto* slot = new std::shared_ptr<TransportSecurity>;
  return *slot;
}

}  // namespace

absl::Status ValidateTlsFiles(const TlsFiles& files, const std::string& flag_prefix) {
  if (files.empty()) return absl::OkStatus();
  return ReadAndValidate(files, flag_prefix).status();
}

std::shared_ptr<TransportSecurity> TransportSecurity::Insecure() {
  return std::shared_ptr<TransportSecurity>(new TransportSecurity());
}

absl::StatusOr<std::shared_ptr<TransportSecurity>> TransportSecurity::Tls(
    TlsFiles files, bool reloadable, const std::string& flag_prefix) {
  if (files.empty()) return absl::InvalidArgumentError("TLS needs a certificate, key and CA file");
  ASSIGN_OR_RETURN(Pems pems, ReadAndValidate(files, flag_prefix));
  std::shared_ptr<TransportSecurity> s(new TransportSecurity());
  s->files_ = std::move(files);
  if (!reloadable) {
    s->provider_ = std::make_shared<gx::StaticDataCertificateProvider>(
        pems.ca, std::vector<gx::IdentityKeyCertPair>{{pems.key, pems.cert}});
    return s;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = StrCat(tmp != nullptr && tmp[0] != '\0' ? tmp : "/tmp", "/kvstrata-tls-XXXXXX");
  if (::mkdtemp(dir.data()) == nullptr) {
    return absl::InternalError(
        StrCat("cannot create a private TLS directory ", dir, ": ", std::strerror(errno)));
  }
  s->watch_dir_ = dir;
  {
    kv::MutexLock l(&s->mu_);
    RETURN_IF_ERROR(s->WriteGeneration(pems.cert, pems.key, pems.ca));
  }
  s->provider_ = std::make_shared<gx::FileWatcherCertificateProvider>(
      StrCat(dir, "/current/key.pem"), StrCat(dir, "/current/cert.pem"),
      StrCat(dir, "/current/ca.pem"), kWatchIntervalSeconds);
  return s;
}

TransportSecurity::~TransportSecurity() {
  provider_.reset();
  if (!watch_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(watch_dir_, ec);
  }
}

// Writes gen-N/{cert,key,ca}.pem, then points `current` at it with one rename, so gRPC's
// watcher never sees a key of one generation beside a certificate of another (except for a
// read that straddles the rename, which the next read a second later corrects).
absl::Status TransportSecurity::WriteGeneration(const std::string& cert, const std::string& key,
                                                const std::string& ca) {
  const int gen = ++generation_;
  const std::string name = StrCat("gen-", gen);
  const std::string dir = StrCat(watch_dir_, "/", name);
  if (::mkdir(dir.c_str(), 0700) != 0) {
    return absl::InternalError(StrCat("cannot create ", dir, ": ", std::strerror(errno)));
  }
  RETURN_IF_ERROR(WritePrivate(StrCat(dir, "/cert.pem"), cert));
  RETURN_IF_ERROR(WritePrivate(StrCat(dir, "/key.pem"), key));
  RETURN_IF_ERROR(WritePrivate(StrCat(dir, "/ca.pem"), ca));
  const std::string link = StrCat(watch_dir_, "/current.new");
  ::unlink(link.c_str());
  if (::symlink(name.c_str(), link.c_str()) != 0 ||
      ::rename(link.c_str(), StrCat(watch_dir_, "/current").c_str()) != 0) {
    return absl::InternalError(
        StrCat("cannot switch TLS copies in ", watch_dir_, ": ", std::strerror(errno)));
  }
  if (gen > 1) {
    std::error_code ec;
    std::filesystem::remove_all(StrCat(watch_dir_, "/gen-", gen - 1), ec);
  }
  return absl::OkStatus();
}

absl::Status TransportSecurity::Reload() {
  if (watch_dir_.empty()) {
    return absl::FailedPreconditionError(tls() ? "this TLS configuration does not reload"
                                               : "TLS is off: nothing to reload");
  }
  ASSIGN_OR_RETURN(Pems pems, ReadAndValidate(files_, "tls-"));
  kv::MutexLock l(&mu_);
  RETURN_IF_ERROR(WriteGeneration(pems.cert, pems.key, pems.ca));
  log::Info("tls_reloaded", "cert", files_.cert_file, "ca", files_.ca_file, "generation",
            generation_);
  return absl::OkStatus();
}

std::shared_ptr<grpc::ChannelCredentials> TransportSecurity::ChannelCredentials() const {
  if (!tls()) return grpc::InsecureChannelCredentials();
  gx::TlsChannelCredentialsOptions o;
  o.set_certificate_provider(provider_);
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  o.set_verify_server_certs(true);  // the chain, against the CA
  // No host name check: see the header (nodes are dialled by advertised IPs).
  o.set_certificate_verifier(std::make_shared<gx::NoOpCertificateVerifier>());
  o.set_check_call_host(false);
  return grpc::experimental::TlsCredentials(o);
}

std::shared_ptr<grpc::ServerCredentials> TransportSecurity::ServerCredentials() const {
  if (!tls()) return grpc::InsecureServerCredentials();
  gx::TlsServerCredentialsOptions o(provider_);
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  o.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(o);
}

void SetProcessTransportSecurity(std::shared_ptr<TransportSecurity> security) {
  kv::MutexLock l(&ProcessMu());
  ProcessSecuritySlot() = std::move(security);
}

std::shared_ptr<TransportSecurity> ProcessTransportSecurity() {
  kv::MutexLock l(&ProcessMu());
  std::shared_ptr<TransportSecurity>& slot = ProcessSecuritySlot();
  if (slot == nullptr) slot = TransportSecurity::Insecure();
  return slot;
}

void BindTlsFlags(kv::FlagSet* flags, TlsFiles* files, std::string_view who) {
  flags->String("tls-cert-file", &files->cert_file,
                StrCat("mutual TLS: ", who,
                       " PEM certificate (chain); with tls-key-file and "
                       "tls-ca-file, or none of the three for plaintext"));
  flags->String("tls-key-file", &files->key_file,
                StrCat("mutual TLS: ", who, " PEM private key (unencrypted)"));
  flags->String("tls-ca-file", &files->ca_file,
                "mutual TLS: PEM CA bundle that peers' certificates are verified against");
}

absl::StatusOr<std::shared_ptr<TransportSecurity>> UseProcessTls(const TlsFiles& files,
                                                                 bool reloadable) {
  if (files.empty()) return ProcessTransportSecurity();
  ASSIGN_OR_RETURN(std::shared_ptr<TransportSecurity> s, TransportSecurity::Tls(files, reloadable));
  SetProcessTransportSecurity(s);
  return s;
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& address,
                                          const grpc::ChannelArguments& args,
                                          const TransportSecurity* security) {
  std::shared_ptr<TransportSecurity> process;
  if (security == nullptr) {
    process = ProcessTransportSecurity();
    security = process.get();
  }
  return grpc::CreateCustomChannel(address, security->ChannelCredentials(), args);
}

}  // namespace kv::cluster
