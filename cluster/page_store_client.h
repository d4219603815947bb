// PageStoreClient: the synchronous C++ client of the kvstrata.v1.PageStore service
// (cluster/page_store_service.h), used by workers and the router to find, pin, read and write
// pages on a store node over the gRPC fallback data path.
//
// Every call carries the caller's bearer token (`authorization` metadata; a tenant token, or
// the node credential with the tenant it acts for, set_acting_tenant) and a deadline of
// `timeout` from the call's start; nothing blocks past it. Errors are the server's status
// mapped back to absl (cluster/grpc_status.h): UNAUTHENTICATED for a bad token,
// INVALID_ARGUMENT for malformed input, NOT_FOUND for an unknown or expired lease... A call
// that fails with UNAVAILABLE (nothing listens, connection lost) or DEADLINE_EXCEEDED is
// marked retryable (kv::IsRetryable).
//
// ReadPages never returns wrong bytes: each page is reassembled from its chunks in offset
// order, every chunk's XXH3 is checked, the size must equal total_bytes, and the whole page
// is decoded and verified (page_format: header and section checksums) and its key compared
// with the requested one. A page failing any of this is an error for that page (DATA_LOSS),
// like a page the server could not serve (its error chunk's code and message).
//
// Thread-safety: a PageStoreClient may be used from several threads at once (gRPC channels
// and stubs are thread-safe). Returned values are owned by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/thread_pool.h"
#include "kvstore/block_key.h"
#include "kvstore/resume_policy.h"
#include "proto/kvstrata/v1/page_store.grpc.pb.h"

namespace kv::cluster {
class TransportSecurity;

class PageStoreClient {
 public:
  struct PinResult {
    std::string lease_id;  // empty when nothing was pinned and no lease was given
    absl::Time deadline;
    std::vector<BlockKey> pinned;  // the longest present prefix, in order
    std::vector<BlockKey> missing;
  };
  struct PageRead {
    BlockKey key;
    absl::StatusOr<std::string> page;  // the verified encoded page, or why not
  };
  struct PageToWrite {
    BlockKey key;
    std::span<const uint8_t> bytes;             // a whole encoded page; borrowed for the call
    PageRole resume_role = PageRole::kTurnEnd;  // kvstore/resume_policy.h
    // The block's hash as the engine knows it (PageChunk.engine_block_hash, reported in KV
    // events); empty: none. gRPC writes only: the UCX write path does not carry it.
    std::string engine_block_hash;
  };
  struct WriteResult {
    BlockKey key;
    kvstrata::v1::WriteOutcome outcome = kvstrata::v1::WRITE_OUTCOME_UNSPECIFIED;
    absl::Status error;  // set when REJECTED (with the ErrorInfo attached)
  };

  // A client over an existing channel (not connected yet is fine: calls then fail
  // UNAVAILABLE or DEADLINE_EXCEEDED within `timeout`). `token` may be empty (no header).
  // `acting_tenant`, when not empty, is sent as `x-kvstrata-tenant` metadata: `token` is then the
  // node credential acting for that tenant (cluster/tenants.h).
  PageStoreClient(std::shared_ptr<grpc::Channel> channel, std::string token,
                  absl::Duration timeout = absl::Seconds(10), std::string acting_tenant = {});
  ~PageStoreClient();  // waits for UnpinAsync calls in flight
  PageStoreClient(const PageStoreClient&) = delete;
  PageStoreClient& operator=(const PageStoreClient&) = delete;
  // Opens a channel to `address` and waits up to `connect_timeout` for it to connect.
  // UNAVAILABLE (retryable) naming the address when nothing answers.
  static absl::StatusOr<std::unique_ptr<PageStoreClient>> Connect(
      const std::string& address, std::string token, absl::Duration timeout = absl::Seconds(10),
      absl::Duration connect_timeout = absl::Seconds(5));

  // The longest prefix of the chain `keys` present and visible on the node, with where each
  // block is. Never fails for missing keys (prefix_blocks = 0).
  absl::StatusOr<kvstrata::v1::LookupBlocksResponse> Lookup(std::span<const BlockKey> keys);
  // Pins the longest present prefix of `keys` under a new lease of `lease` (0: the server's
  // default), or adds them to `lease_id` and extends it. NOT_FOUND for an unknown or expired
  // lease_id; RESOURCE_EXHAUSTED when the tenant holds too many leases.
  absl::StatusOr<PinResult> Pin(std::span<const BlockKey> keys,
                                absl::Duration lease = absl::ZeroDuration(),
                                const std::string& lease_id = "");
  // Releases a lease, or only `keys` of it. Returns the pins released (0 for an unknown or
  // expired lease).
  absl::StatusOr<uint32_t> Unpin(const std::string& lease_id, std::span<const BlockKey> keys = {});
  // Releases a whole lease without waiting for the answer (sent by a thread of the client's):
  // for a reader that already confirmed its lease another way (a beacon). A failure is only
  // logged: the lease expires on its own. The destructor waits for these calls (each is
  // bounded by the client's timeout).
  void UnpinAsync(const std::string& lease_id);
  // Reads whole pages, in order, under `lease_id` when given. One entry per key; a page
  // that is missing, unreadable or corrupted in transit has an error instead of bytes. The
  // call itself fails (INTERNAL) only when the stream breaks the protocol (chunks out of
  // order, a chunk of a page that was not asked for), or with the RPC's own error.
  absl::StatusOr<std::vector<PageRead>> ReadPages(std::span<const BlockKey> keys,
                                                  const std::string& lease_id = "",
                                                  uint32_t max_chunk_bytes = 0);
  // Writes whole encoded pages, each split into chunks of `chunk_bytes` (the default sends a
  // 2.56 MB page as one message). One result per page,
  // in order. The call fails only with the RPC's error (then some pages may have been
  // stored; Lookup tells which).
  absl::StatusOr<std::vector<WriteResult>> WritePages(const kvstrata::v1::WriteOptions& options,
                                                      std::span<const PageToWrite> pages,
                                                      uint32_t chunk_bytes = 4u << 20);
  absl::StatusOr<kvstrata::v1::GetTransportInfoResponse> GetTransportInfo();

  // The RMA data path's calls, as the protos say (cluster/page_store_rma.h drives them):
  // PinBlocks with promote_to and regions, and the two-phase staged write. Errors as above.
  absl::StatusOr<kvstrata::v1::PinBlocksResponse> PinBlocks(
      const kvstrata::v1::PinBlocksRequest& request);
  // PinBlocks of `keys` under a new lease of `lease`, promote_to TIER_HOST: the store pins
  // them where it can lend them and answers their regions and the lease's beacon.
  absl::StatusOr<kvstrata::v1::PinBlocksResponse> PinToLend(std::span<const BlockKey> keys,
                                                            absl::Duration lease);
  absl::StatusOr<kvstrata::v1::ReserveStagingResponse> ReserveStaging(
      const kvstrata::v1::ReserveStagingRequest& request);
  absl::StatusOr<kvstrata::v1::SealStagedResponse> SealStaged(
      const kvstrata::v1::SealStagedRequest& request);
  absl::StatusOr<uint32_t> AbortStaged(const std::string& lease_id);

 private:
  void Prepare(grpc::ClientContext* ctx) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<kvstrata::v1::PageStore::Stub> stub_;
  absl::Mutex unpin_mu_;
  std::unique_ptr<ThreadPool> unpinner_ ABSL_GUARDED_BY(unpin_mu_);  // UnpinAsync's thread
  const std::string token_;
  const std::string acting_tenant_;
  const absl::Duration timeout_;
};

// A channel to the store at `address` tuned for pages (its own connection, a 16 MiB stream
// window, 1 MiB socket reads; PageStoreClient::Connect uses it). Not connected yet. Secured
// by `security` (cluster/transport_security.h; null: the process's).
std::shared_ptr<grpc::Channel> PageStoreChannel(const std::string& address,
                                                const TransportSecurity* security = nullptr);

// Maps a grpc::Status from a PageStore call to absl (FromGrpcStatus), marking UNAVAILABLE
// and DEADLINE_EXCEEDED retryable.
absl::Status FromPageStoreStatus(const grpc::Status& status);

}  // namespace kv::cluster
