// Internals of libkvstrata_client (kvstrata/kvstrata.h): the kvstrata_client object and the
// ABI boundary helpers. Nothing here is exported; the library's version script exports only
// kvstrata_* symbols.
//
// The boundary (Call): every exported function runs its body inside Call(), which resets this
// thread's message storage, catches every C++ exception (std::bad_alloc included) and turns
// it into KVSTRATA_INTERNAL, and records the message of a failed status for
// kvstrata_last_error(). Messages of per-key statuses live in the same per-thread storage
// until the thread's next call (kvstrata.h "Ownership").
//
// Thread-safety: kvstrata_client is safe for concurrent use (buffers and the per-timeout
// client cache are under `mu`, counters are atomics); the PageStoreClient and PageRmaClient
// it holds are thread-safe themselves. Close must not race other calls.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/kvstrata/kvstrata.h"
#include "cluster/page_store_client.h"
#include "cluster/page_store_rma.h"
#include "cluster/transport_security.h"
#include "kvstore/block_key.h"
#include "transport/transport.h"

namespace kv::client {

// Runs `body` (returning absl::Status) at the ABI boundary (see the file comment).
int32_t CallImpl(absl::FunctionRef<absl::Status()> body);
template <typename F>
int32_t Call(F&& body) {
  return CallImpl(absl::FunctionRef<absl::Status()>(body));
}

// Fills one per-key status; its message is stored for this thread (valid until the next call).
void SetStatus(kvstrata_status* out, const absl::Status& status);

// NULL-pointer and count checks naming the argument.
absl::Status NotNull(const void* p, const char* what);
absl::Status CheckCount(size_t n, size_t max, const char* what);
absl::Duration Ms(int64_t ms, absl::Duration fallback);
std::span<const BlockKey> Keys(const kvstrata_key* keys, size_t n);

// A key space from its C form. InvalidArgument naming the field.
absl::StatusOr<KeyParams> ToKeyParams(const kvstrata_key_space* space);

struct Buffer {
  uint64_t handle = 0;
  uintptr_t base = 0;
  uint64_t length = 0;
  transport::RegionId region = 0;  // 0: recorded only (no UCX transport)
};

struct Counters {
  std::atomic<uint64_t> ucx_get_pages{0}, ucx_get_bytes{0}, grpc_get_pages{0}, grpc_get_bytes{0};
  std::atomic<uint64_t> ucx_put_pages{0}, ucx_put_bytes{0}, grpc_put_pages{0}, grpc_put_bytes{0};
  std::atomic<uint64_t> hits{0}, misses{0}, corrupt{0}, put_rejected{0}, calls{0}, failed_calls{0};
};

// The RPC client and RMA client for one call timeout. Shared so that a session replaced
// after its store endpoint died stays alive for the calls still using it.
struct Session {
  int64_t timeout_ms = 0;  // the cache key (0: the default)
  std::shared_ptr<cluster::PageStoreClient> rpc;
  std::shared_ptr<cluster::PageRmaClient> rma;  // null without a transport
};

}  // namespace kv::client

struct kvstrata_client {
  std::string address;
  std::string token;
  kvstrata_options options{};
  std::shared_ptr<grpc::Channel> channel;
  std::shared_ptr<kv::cluster::TransportSecurity> security;  // plaintext or mTLS (options)
  std::unique_ptr<kv::transport::Transport> transport;       // null: gRPC only
  kv::client::Counters counters;

  // A PageStoreClient whose RPC deadline is `timeout` (cheap: a stub on the shared channel).
  std::unique_ptr<kv::cluster::PageStoreClient> Rpc(int64_t timeout_ms) const;
  // The session for `timeout_ms` (<= 0: the default one). RMA clients are cached per timeout
  // (they hold the UCX endpoint and imported region keys); past kMaxSessions distinct
  // timeouts the default session serves (its RPC legs then use the default timeout, the
  // transfer still the call's deadline).
  kv::client::Session GetSession(int64_t timeout_ms) ABSL_LOCKS_EXCLUDED(mu);
  // Replaces the session's RMA client after the store's UCX endpoint died (the next call
  // connects afresh) and disconnects the dead peer.
  void ResetRma(const kv::client::Session& session, kv::transport::PeerId peer)
      ABSL_LOCKS_EXCLUDED(mu);
  // The registered buffer holding [p, p + len), if any.
  bool FindBuffer(const void* p, uint64_t len, kv::client::Buffer* out) const
      ABSL_LOCKS_EXCLUDED(mu);
  absl::Time Deadline(int64_t timeout_ms) const;

  static constexpr size_t kMaxSessions = 16;
  mutable absl::Mutex mu;
  std::map<uintptr_t, kv::client::Buffer> buffers ABSL_GUARDED_BY(mu);  // by base
  uint64_t next_handle ABSL_GUARDED_BY(mu) = 1;
  std::map<int64_t, kv::client::Session> sessions ABSL_GUARDED_BY(mu);
};
