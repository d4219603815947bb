// The ABI boundary, connection, buffers, queries and stats of libkvstrata_client
// (kvstrata/kvstrata.h). Data calls are in kvstrata_data.cc, key and page helpers in
// kvstrata_pages.cc.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <deque>
#include <exception>
#include <new>

#include "absl/strings/str_join.h"
#include "client/client_internal.h"
#include "cluster/page_store_wire.h"
#include "cluster/proto_convert.h"
#include "cluster/transport_security.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "transport/ucx_transport.h"

namespace kv::client {
namespace {

namespace pb = ::kvstrata::v1;

// This thread's messages: the last error and per-key messages of the current call.
struct ThreadMessages {
  std::string last_error;
  std::deque<std::string> messages;  // a deque: pointers stay valid while it grows
};
ThreadMessages& Messages() {
  thread_local ThreadMessages m;
  return m;
}

absl::Status CheckOptions(const kvstrata_options& o) {
  if (o.struct_size < sizeof(kvstrata_options)) {
    return absl::InvalidArgumentError(
        "options.struct_size is too small: initialise options with kvstrata_options_init");
  }
  if (o.transport < KVSTRATA_TRANSPORT_AUTO || o.transport > KVSTRATA_TRANSPORT_GRPC) {
    return absl::InvalidArgumentError(StrCat("options.transport ", o.transport, " is unknown"));
  }
  constexpr int64_t kDay = 86400000;
  for (int64_t ms : {o.timeout_ms, o.connect_timeout_ms, o.lease_ms}) {
    if (ms <= 0 || ms > kDay) {
      return absl::InvalidArgumentError(
          StrCat("option value ", ms, " ms is outside 1 ms .. 1 day (timeouts and lease)"));
    }
  }
  return absl::OkStatus();
}

// Plaintext, or mTLS with the options' three files (read now).
absl::StatusOr<std::shared_ptr<cluster::TransportSecurity>> ClientSecurity(
    const kvstrata_options& o) {
  auto str = [](const char* s) { return std::string(s != nullptr ? s : ""); };
  cluster::TlsFiles files{str(o.tls_cert_file), str(o.tls_key_file), str(o.tls_ca_file)};
  if (files.empty()) return cluster::TransportSecurity::Insecure();
  return cluster::TransportSecurity::Tls(std::move(files), /*reloadable=*/false, "options.tls_");
}

absl::StatusOr<kvstrata_client*> Connect(const char* const* addresses, size_t n, const char* token,
                                         const kvstrata_options* options) {
  RETURN_IF_ERROR(NotNull(addresses, "addresses"));
  RETURN_IF_ERROR(CheckCount(n, KVSTRATA_MAX_ADDRESSES, "n_addresses"));
  kvstrata_options o;
  kvstrata_options_init(&o);
  if (options != nullptr) {
    // A caller built against ABI 1's first header passes the struct without the TLS fields.
    if (options->struct_size < offsetof(kvstrata_options, tls_cert_file)) {
      return absl::InvalidArgumentError(
          "options->struct_size is too small: initialise options with kvstrata_options_init");
    }
    std::memcpy(&o, options, std::min<size_t>(options->struct_size, sizeof(o)));
    o.struct_size = sizeof(o);
  }
  RETURN_IF_ERROR(CheckOptions(o));
  auto c = std::make_unique<kvstrata_client>();
  ASSIGN_OR_RETURN(c->security, ClientSecurity(o));
  o.tls_cert_file = o.tls_key_file = o.tls_ca_file = nullptr;  // borrowed: not kept
  c->options = o;
  c->token = token != nullptr ? token : "";
  std::vector<std::string> tried;
  for (size_t i = 0; i < n && c->channel == nullptr; ++i) {
    if (addresses[i] == nullptr || addresses[i][0] == '\0') {
      return absl::InvalidArgumentError(StrCat("addresses[", i, "] is NULL or empty"));
    }
    auto channel = cluster::PageStoreChannel(addresses[i], c->security.get());
    if (channel->WaitForConnected(
            absl::ToChronoTime(absl::Now() + absl::Milliseconds(o.connect_timeout_ms)))) {
      c->channel = std::move(channel);
      c->address = addresses[i];
    } else {
      tried.push_back(addresses[i]);
    }
  }
  if (c->channel == nullptr) {
    return absl::UnavailableError(StrCat("no kvstrata store answered at ",
                                         absl::StrJoin(tried, ", "), " within ",
                                         o.connect_timeout_ms, " ms each"));
  }
  if (o.transport != KVSTRATA_TRANSPORT_GRPC) {
    auto ucx = transport::UcxTransport::Create();
    if (ucx.ok()) {
      c->transport = *std::move(ucx);
    } else if (o.transport == KVSTRATA_TRANSPORT_UCX) {
      return absl::UnavailableError(StrCat("UCX cannot start: ", ucx.status().message()));
    }
  }
  if (o.transport == KVSTRATA_TRANSPORT_UCX) {  // UCX only: the store must be reachable now
    Session s = c->GetSession(0);
    RETURN_IF_ERROR(s.rma->Peer(c->Deadline(0)).status());
  }
  return c.release();
}

}  // namespace

int32_t CallImpl(absl::FunctionRef<absl::Status()> body) {
  ThreadMessages& m = Messages();
  m.messages.clear();
  absl::Status s;
  try {
    s = body();
  } catch (const std::bad_alloc&) {
    s = absl::ResourceExhaustedError("out of memory");
  } catch (const std::exception& e) {
    s = absl::InternalError(StrCat("internal error: ", e.what()));
  } catch (...) {
    s = absl::InternalError("internal error: unknown exception");
  }
  if (s.ok()) return KVSTRATA_OK;
  m.last_error = std::string(s.message());
  return static_cast<int32_t>(s.code());
}

void SetStatus(kvstrata_status* out, const absl::Status& status) {
  out->code = static_cast<int32_t>(status.code());
  if (status.ok()) {
    out->message = "";
    return;
  }
  Messages().messages.emplace_back(status.message());
  out->message = Messages().messages.back().c_str();
}

absl::Status NotNull(const void* p, const char* what) {
  if (p == nullptr) return absl::InvalidArgumentError(StrCat(what, " is NULL"));
  return absl::OkStatus();
}

absl::Status CheckCount(size_t n, size_t max, const char* what) {
  if (n == 0 || n > max) {
    return absl::InvalidArgumentError(StrCat(what, " is ", n, "; it must be 1..", max));
  }
  return absl::OkStatus();
}

absl::Duration Ms(int64_t ms, absl::Duration fallback) {
  return ms > 0 ? absl::Milliseconds(ms) : fallback;
}

std::span<const BlockKey> Keys(const kvstrata_key* keys, size_t n) {
  static_assert(sizeof(BlockKey) == sizeof(kvstrata_key) &&
                alignof(BlockKey) <= alignof(kvstrata_key));
  return {reinterpret_cast<const BlockKey*>(keys), n};
}

}  // namespace kv::client

using kv::client::Call;
using kv::client::CheckCount;
using kv::client::NotNull;
using kv::client::Session;

std::unique_ptr<kv::cluster::PageStoreClient> kvstrata_client::Rpc(int64_t timeout_ms) const {
  return std::make_unique<kv::cluster::PageStoreClient>(
      channel, token, kv::client::Ms(timeout_ms, absl::Milliseconds(options.timeout_ms)));
}

absl::Time kvstrata_client::Deadline(int64_t timeout_ms) const {
  return absl::Now() + kv::client::Ms(timeout_ms, absl::Milliseconds(options.timeout_ms));
}

Session kvstrata_client::GetSession(int64_t timeout_ms) {
  int64_t key = timeout_ms > 0 ? timeout_ms : 0;
  absl::MutexLock l(&mu);
  auto it = sessions.find(key);
  if (it == sessions.end() && sessions.size() >= kMaxSessions) it = sessions.find(key = 0);
  if (it != sessions.end()) return it->second;
  Session s;
  s.timeout_ms = key;
  s.rpc = Rpc(key);
  if (transport != nullptr) {
    s.rma = std::make_shared<kv::cluster::PageRmaClient>(
        s.rpc.get(), transport.get(),
        kv::cluster::PageRmaOptions{.lease = absl::Milliseconds(options.lease_ms)});
  }
  sessions[key] = s;
  return s;
}

void kvstrata_client::ResetRma(const Session& session, kv::transport::PeerId peer) {
  {
    absl::MutexLock l(&mu);
    auto it = sessions.find(session.timeout_ms);
    if (it != sessions.end() && it->second.rma == session.rma) sessions.erase(it);
  }
  if (peer != 0) transport->Disconnect(peer).IgnoreError();
}

bool kvstrata_client::FindBuffer(const void* p, uint64_t len, kv::client::Buffer* out) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  absl::MutexLock l(&mu);
  auto it = buffers.upper_bound(a);
  if (it == buffers.begin()) return false;
  --it;
  const kv::client::Buffer& b = it->second;
  if (a - b.base > b.length || len > b.length - (a - b.base)) return false;
  *out = b;
  return true;
}

extern "C" {

const char* kvstrata_last_error(void) { return kv::client::Messages().last_error.c_str(); }

const char* kvstrata_code_name(int32_t code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  if (code < 0 || code > KVSTRATA_UNAUTHENTICATED) return "UNKNOWN_CODE";
  return kNames[code];
}

int32_t kvstrata_abi_version(void) { return KVSTRATA_ABI_VERSION; }

void kvstrata_options_init(kvstrata_options* o) {
  if (o == nullptr) return;
  std::memset(o, 0, sizeof(*o));
  o->struct_size = sizeof(*o);
  o->transport = KVSTRATA_TRANSPORT_AUTO;
  o->timeout_ms = 10000;
  o->connect_timeout_ms = 5000;
  o->lease_ms = 10000;
}

int32_t kvstrata_connect(const char* const* addresses, size_t n_addresses, const char* token,
                         const kvstrata_options* options, kvstrata_client** out) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(out, "out"));
    ASSIGN_OR_RETURN(kvstrata_client * c,
                     kv::client::Connect(addresses, n_addresses, token, options));
    *out = c;
    return absl::OkStatus();
  });
}

void kvstrata_close(kvstrata_client* client) {
  if (client == nullptr) return;
  Call([&]() -> absl::Status {
    {
      absl::MutexLock l(&client->mu);
      client->sessions.clear();
      for (auto& [base, b] : client->buffers) {
        if (b.region != 0) client->transport->Deregister(b.region).IgnoreError();
      }
      client->buffers.clear();
    }
    delete client;
    return absl::OkStatus();
  });
}

int32_t kvstrata_register_buffer(kvstrata_client* client, void* base, size_t length,
                                 uint64_t* handle) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(NotNull(base, "base"));
    RETURN_IF_ERROR(NotNull(handle, "handle"));
    if (length == 0) return absl::InvalidArgumentError("length is 0");
    const uintptr_t a = reinterpret_cast<uintptr_t>(base);
    if (a + length < a) return absl::InvalidArgumentError("base + length overflows");
    absl::MutexLock l(&client->mu);
    auto next = client->buffers.lower_bound(a);
    if (next != client->buffers.end() && next->first < a + length) {
      return absl::InvalidArgumentError("the range overlaps a registered buffer");
    }
    if (next != client->buffers.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second.length > a) {
        return absl::InvalidArgumentError("the range overlaps a registered buffer");
      }
    }
    kv::client::Buffer b{.handle = client->next_handle, .base = a, .length = length};
    if (client->transport != nullptr) {
      ASSIGN_OR_RETURN(kv::transport::RegisteredRegion r,
                       client->transport->Register(base, length, kv::transport::MemoryKind::kHost));
      b.region = r.id;
    }
    ++client->next_handle;
    client->buffers[a] = b;
    *handle = b.handle;
    return absl::OkStatus();
  });
}

int32_t kvstrata_unregister_buffer(kvstrata_client* client, uint64_t handle) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    absl::MutexLock l(&client->mu);
    for (auto it = client->buffers.begin(); it != client->buffers.end(); ++it) {
      if (it->second.handle != handle) continue;
      if (it->second.region != 0) RETURN_IF_ERROR(client->transport->Deregister(it->second.region));
      client->buffers.erase(it);
      return absl::OkStatus();
    }
    return absl::NotFoundError(kv::StrCat("no registered buffer has handle ", handle));
  });
}

}  // extern "C"
