// PageStoreService: the kvstrata.v1.PageStore gRPC service (proto/kvstrata/v1/page_store.proto)
// on gRPC's callback API: a thin adapter over kv::PageStore (kvstore/page_store.h), which holds
// the store's policy (tenancy, leases, publish admission) over a TieredStore. The `store` role
// serves it; prefill/decode workers and the router call it (cluster/page_store_client.h) to
// find, pin, read and write pages. The adapter authenticates callers, converts protos to plain
// types and back, streams pages, maps errors (a PageStoreReason becomes ErrorInfo.reason) and
// counts calls.
//
//   - LookupBlocks, PinBlocks, UnpinBlocks, GetTransportInfo: unary reactors answered inline.
//     LookupBlocksRequest.tiers filters on the fastest tier holding each block.
//   - ReadPages: a ServerWriteReactor. Pages are loaded one at a time on the service's I/O
//     pool (a TieredStore read may hit nvme) and written one chunk at a time, so a 4096-page
//     request holds one page in memory, never the whole response. The first chunk of a page
//     carries its encoded header; every chunk carries data_xxh3, total_bytes and `last`. A
//     page that cannot be read (absent, invisible, its lease gone) gets one error chunk and
//     the stream continues. Only whole-page reads are implemented: a selector with sections or
//     a layer range other than the page's own gets one error chunk UNIMPLEMENTED.
//   - WritePages: a ServerReadReactor. Chunks of a page must arrive in offset order; each
//     chunk's XXH3 is checked on arrival and a page announced larger than max_page_bytes is
//     refused at its first chunk (PAGE_TOO_LARGE) without buffering it; when a page's last
//     chunk arrives it is admitted by PageStore::Admit on the I/O pool, with the stream's key
//     space, namespace choice and retention hint. A bad page gets a REJECTED result (with
//     ErrorInfo) and the stream goes on; a protocol violation (no WriteOptions first, a chunk
//     of another key before `last`, an offset out of order, a malformed key) fails the whole
//     call with INVALID_ARGUMENT.
//
// Tenancy: every call is identified with TenantAuth (IdentifyCall: a tenant token, or the node
// credential acting for the tenant named in `x-kvstrata-tenant`; UNAUTHENTICATED otherwise) and
// made as that tenant (PageStoreCaller::Tenant): what a tenant sees, reads, writes and leases
// is PageStore's rule. Who may call what (issue #18 item 1, docs/design-notes.md item 25): a
// tenant token may look up, pin, read and write its own namespace and read the shared one;
// a write in the shared namespace (WritePages or SealStaged with
// WriteOptions.shared_namespace) and GetNodeStats need the node credential
// (PERMISSION_DENIED "writes to the shared namespace need a node credential"), so only
// workers that computed the KV themselves publish shared prefixes.
//
//   - RMA data path (issue #15). With registered tier memory (options.tier_memory),
//     PinBlocks with promote_to = TIER_HOST lends each pinned page in place
//     (kv::PageStore::Lend: an nvme hit is promoted into host under the pin first) and returns
//     its RemoteRegion (page address and length, the region's packed key and base), so a
//     client reads it with one-sided gets; pages that could not be lent come back without a
//     region. With a staging area (options.staging), ReserveStaging / SealStaged /
//     AbortStaged run kv::StagingArea: slots in registered host memory under a staging lease,
//     then admission through kv::PageStore::Admit (the rules WritePages uses).
//
// Not implemented in v1: PinBlocksRequest.promote_to other than TIER_UNSPECIFIED and TIER_HOST
// (UNIMPLEMENTED), WriteOptions.target_tier (the store picks), layer/section reads (above).
//
// Metrics: kvstrata_pagestore_requests_total{rpc,code}, kvstrata_pagestore_read_bytes_total,
// kvstrata_pagestore_written_bytes_total, kvstrata_pagestore_pages_rejected_total{reason},
// kvstrata_pagestore_leases (gauge, PageStore's).
//
// Thread-safety: gRPC calls the handlers concurrently; the service is safe for that. The
// service does not own the store (which must outlive it). Destroy the service only after
// the gRPC server serving it has shut down; the destructor drains the I/O pool, then releases
// every lease.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/tenants.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/thread_pool.h"
#include "kvstore/page_store.h"
#include "kvstore/staging_area.h"
#include "kvstore/tiered_store.h"
#include "proto/kvstrata/v1/page_store.grpc.pb.h"

namespace kv::cluster {

// Memory registered with the node's transport, for RemoteRegions (common.proto).
struct RegisteredMemory {
  kvstrata::v1::Tier tier = kvstrata::v1::TIER_HOST;
  kvstrata::v1::TransportKind transport = kvstrata::v1::TRANSPORT_KIND_UCX;
  const uint8_t* base = nullptr;
  uint64_t length = 0;
  std::string packed_key;  // transport::RegisteredRegion::packed_key
  bool Contains(std::span<const uint8_t> bytes) const {
    return base != nullptr && bytes.data() >= base && bytes.data() + bytes.size() <= base + length;
  }
};

// Fills the transport part of a GetTransportInfoResponse (endpoints, registered regions).
// Errors are returned to the caller of GetTransportInfo.
using TransportInfoFn = std::function<absl::Status(kvstrata::v1::GetTransportInfoResponse*)>;

struct PageStoreServiceOptions {
  std::string node_id = "store-0";
  Clock* clock = nullptr;              // nullptr: the store's; must be the store's clock
  MetricsRegistry* metrics = nullptr;  // nullptr: the default registry
  absl::Duration default_lease = absl::Seconds(30);
  absl::Duration max_lease = absl::Minutes(5);
  int max_leases_per_tenant = 1024;
  // ReadPages chunk when the request says 0: a 2.56 MB page travels as one message.
  uint32_t default_chunk_bytes = 4u << 20;
  uint32_t min_chunk_bytes = 4u << 10;  // requests are clamped to [min, max]
  uint32_t max_chunk_bytes = 4u << 20;
  uint64_t max_page_bytes = 64ull << 20;  // larger pages are REJECTED (PAGE_TOO_LARGE)
  size_t max_lookup_keys = 65536;
  size_t max_read_pages = 4096;
  int io_threads = 2;  // ReadPages loads and WritePages admission
  // Reported as GetTransportInfoResponse.max_transfer_bytes; 0: max_page_bytes.
  uint64_t max_transfer_bytes = 0;
  // Endpoints for GetTransportInfo; empty: none are reported (gRPC only).
  TransportInfoFn transport_info;
  // Tier memory registered with the transport (pages PinBlocks lends from it get regions);
  // reported by GetTransportInfo. Empty: PinBlocks returns no regions.
  std::vector<RegisteredMemory> tier_memory;
  // Staging space for ReserveStaging (not owned; must outlive the service) and its
  // registration. Null: ReserveStaging is UNAVAILABLE.
  StagingArea* staging = nullptr;
  RegisteredMemory staging_memory;
  // Lease beacons (kvstore/lease_beacons.h; not owned, must outlive the service) and their
  // registration: PinBlocks with regions then also answers the lease's beacon, so readers
  // confirm the lease with one RMA read instead of UnpinBlocks. Null: no beacons.
  LeaseBeacons* beacons = nullptr;
  RegisteredMemory beacon_memory;
};

// ReadPages is served raw (grpc::ByteBuffer): the page bytes of its chunks are handed to gRPC
// as slices of the loaded page, not copied into and serialized out of a protobuf. The wire
// format is the same PageChunk.
class PageStoreService final : public kvstrata::v1::PageStore::WithRawCallbackMethod_ReadPages<
                                   kvstrata::v1::PageStore::CallbackService> {
 public:
  // `store` is not owned and must outlive the service.
  PageStoreService(TieredStore* store, TenantAuth auth, PageStoreServiceOptions options);
  ~PageStoreService() override;

  grpc::ServerUnaryReactor* LookupBlocks(grpc::CallbackServerContext* ctx,
                                         const kvstrata::v1::LookupBlocksRequest* request,
                                         kvstrata::v1::LookupBlocksResponse* response) override;
  grpc::ServerUnaryReactor* PinBlocks(grpc::CallbackServerContext* ctx,
                                      const kvstrata::v1::PinBlocksRequest* request,
                                      kvstrata::v1::PinBlocksResponse* response) override;
  grpc::ServerUnaryReactor* UnpinBlocks(grpc::CallbackServerContext* ctx,
                                        const kvstrata::v1::UnpinBlocksRequest* request,
                                        kvstrata::v1::UnpinBlocksResponse* response) override;
  // `request` is a serialized ReadPagesRequest; the stream's messages are PageChunks.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadPages(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* request) override;
  grpc::ServerReadReactor<kvstrata::v1::WritePagesRequest>* WritePages(
      grpc::CallbackServerContext* ctx, kvstrata::v1::WritePagesResponse* response) override;
  grpc::ServerUnaryReactor* GetTransportInfo(
      grpc::CallbackServerContext* ctx, const kvstrata::v1::GetTransportInfoRequest* request,
      kvstrata::v1::GetTransportInfoResponse* response) override;
  grpc::ServerUnaryReactor* ReserveStaging(grpc::CallbackServerContext* ctx,
                                           const kvstrata::v1::ReserveStagingRequest* request,
                                           kvstrata::v1::ReserveStagingResponse* response) override;
  grpc::ServerUnaryReactor* SealStaged(grpc::CallbackServerContext* ctx,
                                       const kvstrata::v1::SealStagedRequest* request,
                                       kvstrata::v1::SealStagedResponse* response) override;
  grpc::ServerUnaryReactor* AbortStaged(grpc::CallbackServerContext* ctx,
                                        const kvstrata::v1::AbortStagedRequest* request,
                                        kvstrata::v1::AbortStagedResponse* response) override;
  grpc::ServerUnaryReactor* GetNodeStats(grpc::CallbackServerContext* ctx,
                                         const kvstrata::v1::GetNodeStatsRequest* request,
                                         kvstrata::v1::NodeStats* response) override;

  // Live (unexpired) leases, all tenants.
  size_t live_leases() { return pages_.live_leases(); }
  // The policy the service answers with; owned by the service.
  PageStore& page_store() { return pages_; }

 private:
  friend class ReadPagesReactor;
  friend class WritePagesReactor;

  // A page a ReadPages stream loaded: the bytes, or the error for its chunk.
  struct LoadedPage {
    absl::Status status;
    std::vector<uint8_t> bytes;
    size_t header_bytes = 0;
    uint32_t first_layer = 0, layer_count = 0;
  };

  // The caller of a call; `node` (when not null) is set to whether it has the node credential.
  absl::StatusOr<PageStoreCaller> Authenticate(grpc::CallbackServerContext* ctx,
                                               bool* node = nullptr) const;
  void Count(std::string_view rpc, const absl::Status& status);

  absl::Status DoLookup(const PageStoreCaller& c, const kvstrata::v1::LookupBlocksRequest& req,
                        kvstrata::v1::LookupBlocksResponse* resp);
  absl::Status DoPin(const PageStoreCaller& c, const kvstrata::v1::PinBlocksRequest& req,
                     kvstrata::v1::PinBlocksResponse* resp);
  // Sets the RemoteRegion of each pinned page PageStore::Lend lends (promote_to = TIER_HOST).
  absl::Status LendPinned(const PageStoreCaller& c, std::span<const BlockKey> pinned,
                          kvstrata::v1::PinBlocksResponse* resp);
  absl::Status DoReserve(const PageStoreCaller& c, const kvstrata::v1::ReserveStagingRequest& req,
                         kvstrata::v1::ReserveStagingResponse* resp);
  absl::Status DoSeal(const PageStoreCaller& c, const kvstrata::v1::SealStagedRequest& req,
                      kvstrata::v1::SealStagedResponse* resp);
  absl::StatusOr<uint32_t> DoUnpin(const PageStoreCaller& c,
                                   const kvstrata::v1::UnpinBlocksRequest& req);

  // Reads one page for ReadPages (with the lease when given, else a short private pin).
  LoadedPage LoadPage(const PageStoreCaller& c, const kvstrata::v1::PageSelector& sel,
                      const std::string& lease_id);
  // Admits one fully received page. Returns the result to send.
  kvstrata::v1::PageWriteResult PublishPage(const PageStoreCaller& c,
                                            const kvstrata::v1::WriteOptions& o,
                                            const BlockKey& key, const std::string& bytes,
                                            PageRole resume_role,
                                            std::string engine_block_hash = {});
  // The wire result of an admission of `size` bytes (counted as written when stored).
  kvstrata::v1::PageWriteResult WriteResultOf(const BlockKey& key, AdmitResult a, uint64_t size);
  // A REJECTED result for `key`, counted under `reason`.
  kvstrata::v1::PageWriteResult Reject(const BlockKey& key, absl::Status why,
                                       std::string_view reason);

  const TenantAuth auth_;
  const PageStoreServiceOptions options_;
  MetricsRegistry* const metrics_;
  Counter* bytes_read_;
  Counter* bytes_written_;
  PageStore pages_;
  const absl::Time started_;
  std::unique_ptr<ThreadPool> threads_;  // last: joined first
};

}  // namespace kv::cluster
