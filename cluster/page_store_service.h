// PageStoreService: the kvstrata.v1.PageStore gRPC service (proto/kvstrata/v1/page_store.proto)
// over a TieredStore, on gRPC's callback API. The `store` role serves it; prefill/decode
// workers and the router call it (cluster/page_store_client.h) to find, pin, read and write
// pages.
//
//   - LookupBlocks, PinBlocks, UnpinBlocks, GetTransportInfo: unary reactors answered inline.
//   - ReadPages: a ServerWriteReactor. Pages are loaded one at a time on the service's I/O
//     pool (a TieredStore read may hit nvme) and written one chunk at a time, so a 4096-page
//     request holds one page in memory, never the whole response. The first chunk of a page
//     carries its encoded header; every chunk carries data_xxh3, total_bytes and `last`.
//     Only whole-page reads are implemented: a selector with sections or a layer range other
//     than the page's own gets one error chunk UNIMPLEMENTED (the stream continues).
//   - WritePages: a ServerReadReactor. Chunks of a page must arrive in offset order; each
//     chunk's XXH3 is checked on arrival; when a page's last chunk arrives it is decoded and
//     fully verified (page_format checksums, known layout, key, key space, namespace) on the
//     I/O pool and published (TieredStore Write + Seal) with the stream's retention hint.
//     A bad page gets a REJECTED result (with ErrorInfo) and the stream goes on; a protocol
//     violation (no WriteOptions first, a chunk of another key before `last`, an offset out
//     of order, a malformed key) fails the whole call with INVALID_ARGUMENT.
//
// Tenancy. Every call is authenticated with TenantAuth, exactly like ClusterService
// (UNAUTHENTICATED otherwise). A page is visible to a caller iff its namespace is the
// caller's tenant namespace or the shared namespace; any other page is reported exactly like
// a miss (LookupBlocks stops there, PinBlocks lists it in `missing`, ReadPages sends a
// NOT_FOUND error chunk with the miss message). TieredStore does not expose a page's
// namespace, so the service keeps a directory (key -> namespace, size, header summary) of
// every page written through it, seeded at construction from the tiers' sealed pages
// (Tier::List). A page the directory does not know is invisible (fail closed): in the store
// role every page arrives through this service. Directory entries of pages the store no
// longer holds are dropped when a lookup or pin finds them missing.
//
// Writes: a page is written under the caller's tenant namespace, or the shared namespace
// when WriteOptions.shared_namespace. The page header holds no namespace or model
// fingerprint, so the service checks what it can: layout and page_tokens against
// WriteOptions.key_space; a key already held under another namespace is REJECTED
// (NAMESPACE_CONFLICT); a parent that the page's namespace may not chain from (a tenant page
// may continue its own tenant's or a shared chain, a shared page only a shared chain) is
// REJECTED like a missing parent (PARENT_MISSING).
//
// Leases. PinBlocks pins the longest visible present prefix under a lease: a random 128-bit
// hex id owned by the calling tenant, mapped to TieredStore pin handles, with a deadline
// clamped to options.max_lease. Pinning more keys into an existing lease extends it. A lease
// of another tenant is treated as unknown. An expired lease is NOT_FOUND for PinBlocks and
// ReadPages and released = 0 for UnpinBlocks. Each tenant holds at most
// max_leases_per_tenant live leases (RESOURCE_EXHAUSTED, retryable, beyond). Lease time is
// read from options.clock, which must be the TieredStore's clock.
//
// Known limits of the directory (until TieredStore::Lookup reports each block's namespace
// and size): it holds one entry per page written since the service started (plus the seeded
// ones), dropped only when a lookup or pin finds the key missing, so churn of keys never
// looked up again grows it; the first LookupBlocks of a seeded page reads that page once to
// learn its token count and layers. Since a key cannot be checked against its namespace
// without its tokens, a tenant that knows another tenant's exact key can store a page under
// it while the key is not cached (the owner then sees a miss and a NAMESPACE_CONFLICT);
// and NAMESPACE_CONFLICT tells a writer that a key it derived for another namespace is
// cached there (one bit, to a caller that already knows the other tenant's tokens).
//
// Not implemented in v1: PinBlocksRequest.promote_to other than TIER_UNSPECIFIED
// (UNIMPLEMENTED), WriteOptions.target_tier (the store picks), layer/section reads (above).
// LookupBlocksRequest.tiers filters on the fastest tier holding each block.
//
// Metrics: kvstrata_pagestore_requests_total{rpc,code}, kvstrata_pagestore_bytes_read_total,
// kvstrata_pagestore_bytes_written_total, kvstrata_pagestore_pages_rejected_total{reason},
// kvstrata_pagestore_leases (gauge).
//
// Thread-safety: gRPC calls the handlers concurrently; the service is safe for that. The
// service does not own the store (which must outlive it). Destroy the service only after
// the gRPC server serving it has shut down; the destructor drains the I/O pool.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/tenants.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "kvstore/tiered_store.h"
#include "proto/kvstrata/v1/page_store.grpc.pb.h"

namespace kv::cluster {

// Fills the transport part of a GetTransportInfoResponse (endpoints, registered regions).
// Errors are returned to the caller of GetTransportInfo.
using TransportInfoFn = std::function<absl::Status(kvstrata::v1::GetTransportInfoResponse*)>;

struct PageStoreServiceOptions {
  std::string node_id = "store-0";
  Clock* clock = nullptr;              // nullptr: Clock::Real(); must be the store's clock
  MetricsRegistry* metrics = nullptr;  // nullptr: the default registry
  absl::Duration default_lease = absl::Seconds(30);
  absl::Duration max_lease = absl::Minutes(5);
  int max_leases_per_tenant = 1024;
  uint32_t default_chunk_bytes = 1u << 20;  // ReadPages chunk when the request says 0
  uint32_t min_chunk_bytes = 4u << 10;      // requests are clamped to [min, max]
  uint32_t max_chunk_bytes = 4u << 20;
  uint64_t max_page_bytes = 64ull << 20;  // larger pages are REJECTED (PAGE_TOO_LARGE)
  size_t max_lookup_keys = 65536;
  size_t max_read_pages = 4096;
  int io_threads = 2;  // ReadPages loads and WritePages verification/publishing
  // Reported as GetTransportInfoResponse.max_transfer_bytes; 0: max_page_bytes.
  uint64_t max_transfer_bytes = 0;
  // Endpoints and regions for GetTransportInfo; empty: none are reported (gRPC only).
  TransportInfoFn transport_info;
};

class PageStoreService final : public kvstrata::v1::PageStore::CallbackService {
 public:
  // `store` is not owned and must outlive the service. Seeds the namespace directory from
  // the sealed pages of every present tier (errors listing a tier are logged; that tier's
  // pages stay invisible).
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
  grpc::ServerWriteReactor<kvstrata::v1::PageChunk>* ReadPages(
      grpc::CallbackServerContext* ctx, const kvstrata::v1::ReadPagesRequest* request) override;
  grpc::ServerReadReactor<kvstrata::v1::WritePagesRequest>* WritePages(
      grpc::CallbackServerContext* ctx, kvstrata::v1::WritePagesResponse* response) override;
  grpc::ServerUnaryReactor* GetTransportInfo(
      grpc::CallbackServerContext* ctx, const kvstrata::v1::GetTransportInfoRequest* request,
      kvstrata::v1::GetTransportInfoResponse* response) override;

  // Live (unexpired) leases, all tenants.
  size_t live_leases();

 private:
  friend class ReadPagesReactor;
  friend class WritePagesReactor;

  // What the service knows about a page (see "Tenancy" above).
  struct DirEntry {
    std::string ns;  // KeyNamespace::ToString()
    uint64_t size = 0;
    bool header_known = false;
    uint32_t token_count = 0, first_layer = 0, layer_count = 0;
    bool has_resume = false;
    int writers = 0;  // writes in flight through this service; never pruned while > 0
  };
  struct LeasePins {
    TieredStore::PinHandle handle;
    std::vector<BlockKey> keys;
  };
  struct Lease {
    std::string tenant;
    absl::Time deadline;
    std::vector<LeasePins> pins;
  };
  // The caller: tenant name and the namespaces it may read.
  struct Caller {
    std::string tenant;
    std::string ns;  // KeyNamespace::Tenant(tenant).ToString()
  };
  // A page a ReadPages stream loaded: the bytes, or the error for its chunk.
  struct LoadedPage {
    absl::Status status;
    std::string bytes;
    size_t header_bytes = 0;
    uint32_t first_layer = 0, layer_count = 0;
  };

  absl::StatusOr<Caller> Authenticate(grpc::CallbackServerContext* ctx) const;
  void Count(std::string_view rpc, const absl::Status& status);
  void SeedDirectory();
  // Longest prefix of `keys` that is cached and visible to `c`; prunes the first missing key
  // from the directory.
  size_t VisiblePrefix(const Caller& c, std::span<const BlockKey> keys,
                       std::vector<bool>* has_resume, std::vector<TierKind>* tiers);
  // Fills token count/layers of a directory entry by reading the page header once.
  absl::Status FillHeader(const BlockKey& key);

  absl::Status DoLookup(const Caller& c, const kvstrata::v1::LookupBlocksRequest& req,
                        kvstrata::v1::LookupBlocksResponse* resp);
  absl::Status DoPin(const Caller& c, const kvstrata::v1::PinBlocksRequest& req,
                     kvstrata::v1::PinBlocksResponse* resp);
  absl::StatusOr<uint32_t> DoUnpin(const Caller& c, const kvstrata::v1::UnpinBlocksRequest& req);
  // The lease's handle covering `key` (0 when the lease does not cover it). NOT_FOUND for an
  // unknown, foreign or expired lease.
  absl::StatusOr<TieredStore::PinHandle> LeaseHandle(const Caller& c, const std::string& id,
                                                     const BlockKey& key);
  void ReapLeasesLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLeaseLocked(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Reads one page for ReadPages (with the lease when given, else a short private pin).
  LoadedPage LoadPage(const Caller& c, const kvstrata::v1::PageSelector& sel,
                      const std::string& lease_id);
  // Verifies and publishes one fully received page. Returns the result to send.
  kvstrata::v1::PageWriteResult PublishPage(const Caller& c, const kvstrata::v1::WriteOptions& o,
                                            const BlockKey& key, std::string bytes,
                                            PageRole resume_role);
  kvstrata::v1::PageWriteResult Reject(const BlockKey& key, absl::Status why,
                                       std::string_view reason);

  TieredStore* const store_;
  const TenantAuth auth_;
  const PageStoreServiceOptions options_;
  Clock* const clock_;
  MetricsRegistry* const metrics_;
  Counter* bytes_read_;
  Counter* bytes_written_;
  Gauge* leases_gauge_;

  kv::Mutex mu_;
  absl::flat_hash_map<BlockKey, DirEntry> dir_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<absl::Time, std::string>> lease_deadlines_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> leases_per_tenant_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ThreadPool> pool_;  // last: joined first
};

}  // namespace kv::cluster
