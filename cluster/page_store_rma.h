// PageRmaClient: reads and writes whole pages of one store node over the transport (UCX RMA
// into and out of the store's registered memory), with PageStoreClient's gRPC calls as the
// control path and ReadPages/WritePages as the fallback data path (DESIGN.md "Cluster": page
// bytes move over the transport; gRPC streaming is the fallback). Issue #15.
//
// Reads (ReadPagesInto = PinForRead + GetPinned):
//   1. PinBlocks(promote_to = TIER_HOST) pins the longest present prefix under a lease; the
//      store lends each page in place and answers its RemoteRegion.
//   2. ONE batch of one-sided gets moves every page straight into the caller's registered
//      buffer, pages back to back from offset 0 in key order (no intermediate copy). Its
//      deadline is the earlier of the caller's and the lease's.
//   3. Every page is verified in place (page_format checksums, and its header names the key
//      asked for); a page that fails is a miss for that page (DataLoss), never served.
//   4. The lease is confirmed, then released. The lease is the poisoning contract: the store
//      neither frees nor reuses a page while its lease lives, so the bytes are good only if
//      the lease was still live after the get completed. When PinBlocks answered a beacon
//      (kvstore/lease_beacons.h), one 8-byte get of it, after the page gets, must read the
//      lease's nonce back before the lease's deadline; the UnpinBlocks call is then sent
//      without waiting for it (PageStoreClient::UnpinAsync). Without a beacon (none free, or
//      an older store) UnpinBlocks is waited for and must report the pins released (> 0). A
//      lease that ended (beacon zeroed or replaced, released = 0, deadline passed), a
//      transfer that failed or timed out, or a store that died makes the whole call an error
//      (Aborted, DeadlineExceeded, Unavailable): then the buffer's contents are not valid,
//      and the transport may still hold the region (transport.h "Poisoning contract": check
//      GetRegionState before reuse).
//   The fallback, only when the transport cannot reach the store (no transport, no UCX
//   endpoint, Connect fails) or the store lends no region: PageStoreClient::ReadPages (which
//   verifies every page) copied into the same buffer. The result says which path ran.
//
// Writes (WritePagesFrom): ReserveStaging returns a slot in the store's registered staging
// memory per page; one batch of puts moves the pages from the caller's registered buffer;
// SealStaged verifies and publishes them (the store's admission rules). Any failure between
// the phases aborts the staging lease (best effort: it expires anyway), so nothing half
// written is ever visible. Fallback as for reads, through WritePages.
//
// Thread-safety: safe for concurrent use (connections and imported region keys are cached
// under a lock). The PageStoreClient and Transport are not owned and must outlive the client.
// Buffers are the caller's; results are values owned by the caller.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cluster/page_store_client.h"
#include "core/clock.h"
#include "kvstore/block_key.h"
#include "transport/transport.h"

namespace kv::cluster {

// OK when the page in `bytes` decodes, all its checksums hold and its header names `key`;
// DataLoss naming the key and the problem otherwise (how an RMA read verifies in place).
absl::Status VerifyPageInPlace(std::span<const uint8_t> bytes, const BlockKey& key);

// Which data path moved a call's page bytes.
enum class PagePath : uint8_t { kUcx, kGrpc };
std::string_view PagePathName(PagePath path);  // "ucx", "grpc"

// Memory the caller registered with the client's transport (region may be 0 when there is no
// transport: then only the gRPC path can fill it). `bytes` must begin at the region's base:
// offsets into `bytes` are used as offsets into the region.
struct RegisteredBuffer {
  transport::RegionId region = 0;
  std::span<uint8_t> bytes;
};

// A prefix pinned for RMA reads (PinForRead). Pages are lent in place by the store.
struct PinnedPages {
  std::string lease_id;  // empty when nothing was pinned
  absl::Time deadline;   // the lease's (the store's clock, the same wall time here)
  transport::PeerId peer = 0;
  struct Page {
    BlockKey key;
    transport::RemoteRegionId remote = 0;  // 0: no region (the store could not lend it)
    uint64_t remote_offset = 0;            // of the page in the remote region
    uint64_t size = 0;                     // encoded page bytes
  };
  std::vector<Page> pages;        // the pinned prefix, in key order
  std::vector<BlockKey> missing;  // requested keys not pinned
  bool rma() const;               // every pinned page has a region
  // The lease's beacon (0: none; the lease is confirmed through UnpinBlocks).
  transport::RemoteRegionId beacon = 0;
  uint64_t beacon_offset = 0;  // of the beacon's word in its remote region
  uint64_t beacon_nonce = 0;
  // The lease is another node's (Borrow): confirmed by its beacon, never released here.
  bool borrowed = false;
};

struct RmaReadResult {
  PagePath path = PagePath::kUcx;
  // One entry per requested key, in order: the verified page's offset in the buffer and
  // size, or why it is a miss (NotFound: not cached or not visible; DataLoss: failed
  // verification; ResourceExhausted: the buffer had no room for it).
  struct Page {
    uint64_t offset = 0;
    uint64_t size = 0;
  };
  std::vector<absl::StatusOr<Page>> pages;
  // Pages usable from the start (the verified prefix).
  size_t prefix() const;
  uint64_t bytes = 0;             // page bytes moved
  bool beacon_confirmed = false;  // the lease was confirmed by its beacon (no RPC waited for)
};

// A page to write: `size` bytes at `offset` of the caller's registered buffer.
struct RmaPageToWrite {
  BlockKey key;
  uint64_t offset = 0;
  uint64_t size = 0;
  PageRole resume_role = PageRole::kTurnEnd;
};

struct RmaWriteResult {
  PagePath path = PagePath::kUcx;
  std::vector<PageStoreClient::WriteResult> results;  // one per page, in order
};

struct PageRmaOptions {
  absl::Duration lease = absl::Seconds(10);  // read pins and staging leases
  absl::Duration connect_timeout = absl::Seconds(3);
  Clock* clock = nullptr;  // the transport's clock; null: Clock::Real()
  // How Peer() reaches the store's UCX address (null: a Connect of its own). A pool passes
  // one that shares one endpoint per store among its clients (one per tenant), and is told
  // through `peer_failed` when a transfer found that endpoint dead.
  std::function<absl::StatusOr<transport::PeerId>(const std::string& ucx_address,
                                                  absl::Time deadline)>
      connect;
  std::function<void(transport::PeerId)> peer_failed;
};

class PageRmaClient {
 public:
  // `rpc` and `transport` are not owned; `transport` may be null (gRPC only).
  PageRmaClient(PageStoreClient* rpc, transport::Transport* transport, PageRmaOptions options = {});
  ~PageRmaClient();  // deregisters its scratch memory (kept alive if the transport holds it)
  PageRmaClient(const PageRmaClient&) = delete;
  PageRmaClient& operator=(const PageRmaClient&) = delete;

  // Pins `keys` and reads them into `buffer` (see the file comment). The call fails only
  // as a whole (the lease, the transfer, the store, or an RPC); per-page misses are in the
  // result. InvalidArgument for no keys.
  absl::StatusOr<RmaReadResult> ReadPagesInto(std::span<const BlockKey> keys,
                                              RegisteredBuffer buffer, absl::Time deadline);
  // Steps 1 and 2-4 of a read, for callers that hold pins across steps. PinForRead fails
  // with Unavailable when the store cannot be reached over the transport (nothing pinned);
  // GetPinned always releases the lease (a borrowed one is left to its owner).
  absl::StatusOr<PinnedPages> PinForRead(std::span<const BlockKey> keys, absl::Time deadline);
  // Pages another node pinned, as the store lent them to it (`lent`: its PinBlocksResponse
  // with promote_to TIER_HOST; a router passes it to the worker that loads the run), read with
  // GetPinned without a PinBlocks of this client's own. The lease stays its owner's: GetPinned
  // confirms it by its beacon and never releases it. FailedPrecondition when `lent` has no
  // beacon or a page without a region (then PinForRead); Unavailable as for PinForRead.
  absl::StatusOr<PinnedPages> Borrow(const kvstrata::v1::PinBlocksResponse& lent,
                                     absl::Time deadline);
  // Releases a PinForRead lease without reading (0 when nothing was pinned or it expired).
  absl::StatusOr<uint32_t> Unpin(const PinnedPages& pinned);
  absl::StatusOr<RmaReadResult> GetPinned(const PinnedPages& pinned, std::span<const BlockKey> keys,
                                          RegisteredBuffer buffer, absl::Time deadline);
  // Step 4 of a read (see the file comment), for callers that moved the pinned pages
  // themselves: OK when the lease provably outlived their gets (*by_beacon: confirmed by its
  // beacon, by `deadline`); Aborted when it ended, or the beacon read's error. Always
  // releases the lease.
  absl::Status ConfirmAndRelease(const PinnedPages& pinned, absl::Time deadline, bool* by_beacon);
  // One batch of ops between this client's transport memory and `peer`, posted and waited
  // for by `deadline` (OK at once for no ops; DeadlineExceeded when no time is left); the
  // transfer is released either way, and an Unavailable peer is connected afresh next time.
  absl::Status Transfer(transport::PeerId peer, transport::OpKind kind,
                        std::vector<transport::TransferOp> ops, absl::Time deadline);

  // Writes `pages` (a chain segment in order) from `buffer` under `options`.
  // InvalidArgument for no pages or a page outside the buffer.
  absl::StatusOr<RmaWriteResult> WritePagesFrom(const kvstrata::v1::WriteOptions& options,
                                                std::span<const RmaPageToWrite> pages,
                                                RegisteredBuffer buffer, absl::Time deadline);

  // The store's peer over the transport (connecting on first use). Unavailable when there is
  // no transport or the store offers no endpoint of its kind; the transport's errors.
  absl::StatusOr<transport::PeerId> Peer(absl::Time deadline);
  // Warms the path to the store: one batch of `ops` gets filling `buffer` from the start of
  // its first registered host-tier region (bytes the caller discards). The first batch of
  // many gets over a new endpoint costs several times the next one (UCX sets up its
  // rendezvous state then: 8.5 ms against 1.4 ms for 31 gets of 168 KB on loopback), so a
  // pool does this before the first read needs it. FailedPrecondition when the store
  // registers no host tier.
  absl::Status Warm(RegisteredBuffer buffer, int ops, absl::Time deadline);

 private:
  absl::StatusOr<transport::RemoteRegionId> Import(transport::PeerId peer,
                                                   const std::string& packed_key);
  // The pages, regions and beacon of a PinBlocks answer, their keys imported for `peer`.
  absl::StatusOr<PinnedPages> FromPinned(const kvstrata::v1::PinBlocksResponse& resp,
                                         transport::PeerId peer);
  absl::StatusOr<RmaReadResult> ReadOverGrpc(std::span<const BlockKey> keys,
                                             RegisteredBuffer buffer);
  absl::StatusOr<RmaWriteResult> WriteOverGrpc(const kvstrata::v1::WriteOptions& options,
                                               std::span<const RmaPageToWrite> pages,
                                               RegisteredBuffer buffer);
  // The lease's beacon word, read with one get into this client's scratch memory.
  absl::StatusOr<uint64_t> ReadBeacon(const PinnedPages& pinned, absl::Time deadline);
  absl::StatusOr<RmaWriteResult> StageAndSeal(const kvstrata::v1::WriteOptions& options,
                                              std::span<const RmaPageToWrite> pages,
                                              RegisteredBuffer buffer, transport::PeerId peer,
                                              absl::Time deadline);

  PageStoreClient* const rpc_;
  transport::Transport* const transport_;
  const PageRmaOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::string peer_address_ ABSL_GUARDED_BY(mu_);
  transport::PeerId peer_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<transport::PeerId, std::string>, transport::RemoteRegionId> imported_
      ABSL_GUARDED_BY(mu_);
  // Registered words that beacon gets land in, one per read in flight. A word whose get
  // failed is never handed out again (the transport may still write it).
  struct Scratch {
    std::unique_ptr<uint64_t[]> words;
    transport::RegionId region = 0;
    std::vector<uint32_t> free;
  };
  Scratch scratch_ ABSL_GUARDED_BY(mu_);
  bool scratch_failed_ ABSL_GUARDED_BY(mu_) = false;  // registration failed: no beacons
};

}  // namespace kv::cluster
