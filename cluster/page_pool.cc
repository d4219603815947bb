#include "cluster/page_pool.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "cluster/page_store_client.h"
#include "cluster/page_store_rma.h"
#include "cluster/placement.h"
#include "cluster/proto_convert.h"
#include "cluster/transport_security.h"
#include "core/logging.h"
#include "core/mutex.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {
namespace {

namespace pb = ::kvstrata::v1;

class GrpcPagePool final : public PagePool {
 public:
  GrpcPagePool(Membership* membership, GrpcPagePoolOptions options)
      : membership_(membership), options_(options) {}
  ~GrpcPagePool() override {
    if (warmer_.joinable()) {
      membership_->Unwatch(watch_);
      {
        kv::MutexLock l(&mu_);
        stopping_ = true;
      }
      warmer_.join();
    }
    rma_.clear();  // their scratch words are registered with the transport too
    for (ReadBuffer& b : idle_) options_.transport->Deregister(b.region).IgnoreError();
  }

  std::vector<pb::NodeInfo> Homes(const BlockKey& root) {
    MembershipView view = membership_->Members();
    std::map<std::string, pb::NodeInfo> stores;
    for (pb::NodeInfo& n : view.members) {
      if (std::find(n.roles().begin(), n.roles().end(), pb::ROLE_STORE) != n.roles().end()) {
        stores.emplace(n.node_id(), std::move(n));
      }
    }
    std::vector<std::string> ids;
    for (const auto& [id, n] : stores) ids.push_back(id);
    absl::StatusOr<Placement> placement = Placement::Create(ids, options_.replication);
    std::vector<pb::NodeInfo> homes;
    if (!placement.ok()) return homes;
    for (std::string_view id : placement->Homes(root.bytes)) {
      homes.push_back(stores.at(std::string(id)));
    }
    return homes;
  }

  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& tenant) override {
    if (chain.empty()) return absl::InvalidArgumentError("pool lookup: empty chain");
    PoolPrefix best;
    for (const pb::NodeInfo& home : Homes(chain[0])) {
      PageStoreClient client(Channel(home.grpc_address()), options_.service_token,
                             options_.rpc_timeout, tenant);
      absl::StatusOr<pb::LookupBlocksResponse> r = client.Lookup(chain);
      if (!r.ok()) {
        log::Warn("pool_lookup_failed", "node", home.node_id(), "error", r.status().ToString());
        continue;
      }
      if (static_cast<int64_t>(r->prefix_blocks()) <= best.blocks()) continue;
      best.node_id = home.node_id();
      best.address = home.grpc_address();
      best.tiers.clear();
      best.has_resume.clear();
      for (const pb::BlockLocation& b : r->blocks()) {
        best.tiers.push_back(FromProto(b.tier()));
        best.has_resume.push_back(b.has_resume());
      }
    }
    return best;
  }

  absl::StatusOr<std::string> Pin(const std::string& address, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& tenant, int64_t* pinned,
                                  std::string* lent) override {
    PageStoreClient client(Channel(address), options_.service_token, options_.rpc_timeout, tenant);
    if (lent == nullptr) {
      ASSIGN_OR_RETURN(PageStoreClient::PinResult r, client.Pin(keys, lease));
      *pinned = static_cast<int64_t>(r.pinned.size());
      return r.lease_id;
    }
    // Pinned where the store can lend the pages (its host tier), and lent: the worker that
    // loads the run reads them one-sided without a PinBlocks of its own (PageRmaClient::Borrow).
    ASSIGN_OR_RETURN(pb::PinBlocksResponse r, client.PinToLend(keys, lease));
    *pinned = r.pinned_size();
    lent->clear();
    if (r.pinned_size() > 0 && r.pinned(0).has_region() && r.has_beacon()) {
      lent->reserve(r.ByteSizeLong());
      r.SerializeToString(lent);
    }
    return r.lease_id();
  }

  void Unpin(const std::string& address, const std::string& lease_id,
             const std::string& tenant) override {
    if (lease_id.empty()) return;
    PageStoreClient client(Channel(address), options_.service_token, options_.rpc_timeout, tenant);
    absl::StatusOr<uint32_t> r = client.Unpin(lease_id);
    if (!r.ok()) log::Info("pool_unpin_failed", "lease", lease_id, "error", r.status().ToString());
  }

  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(const std::string& address,
                                                         std::span<const BlockKey> keys,
                                                         const std::string& lease_id,
                                                         const std::string& tenant,
                                                         absl::Time deadline, std::string* path,
                                                         const std::string& lent) override {
    ASSIGN_OR_RETURN(PoolPages view,
                     ReadView(address, keys, lease_id, tenant, deadline, path, lent));
    return view.Copy();
  }

  absl::StatusOr<PoolPages> ReadView(const std::string& address, std::span<const BlockKey> keys,
                                     const std::string& lease_id, const std::string& tenant,
                                     absl::Time deadline, std::string* path,
                                     const std::string& lent) override {
    if (keys.empty()) return PoolPages{};
    const absl::Duration timeout = std::min(options_.rpc_timeout, deadline - clock()->Now());
    if (timeout <= absl::ZeroDuration()) {
      return MarkRetryable(absl::DeadlineExceededError("pool read: no time left"));
    }
    if (options_.transport != nullptr && !lent.empty()) {
      std::optional<PoolPages> read = ReadLent(address, keys, tenant, lent, deadline);
      if (read.has_value()) {
        if (path != nullptr) *path = "ucx";
        return *std::move(read);
      }
    }
    if (options_.transport != nullptr) {
      absl::StatusOr<std::optional<PoolPages>> read = ReadOverUcx(address, keys, tenant, deadline);
      if (absl::IsUnavailable(read.status()) && clock()->Now() < deadline) {
        // A store that restarted leaves this process a stale endpoint: the first transfer on
        // it fails and the transport forgets the peer (PageRmaClient::Transfer), so one retry
        // connects to the new process instead of costing the caller a recomputed prompt.
        log::Info("pool_read_retry", "node", address, "error", read.status().ToString());
        read = ReadOverUcx(address, keys, tenant, deadline);
      }
      ASSIGN_OR_RETURN(std::optional<PoolPages> rma, std::move(read));
      if (rma.has_value()) {
        if (path != nullptr) *path = "ucx";
        return *std::move(rma);
      }
    }
    if (path != nullptr) *path = "grpc";
    PageStoreClient client(Channel(address), options_.service_token, timeout, tenant);
    ASSIGN_OR_RETURN(std::vector<PageStoreClient::PageRead> pages,
                     client.ReadPages(keys, lease_id));
    auto held = std::make_shared<std::vector<PageStoreClient::PageRead>>(std::move(pages));
    PoolPages out;
    for (PageStoreClient::PageRead& p : *held) {
      if (!p.page.ok()) {
        log::Warn("pool_page_unreadable", "key", p.key.Hex(), "error", p.page.status().ToString());
        break;  // the verified prefix is what the caller may use
      }
      out.pages.emplace_back(reinterpret_cast<const uint8_t*>(p.page->data()), p.page->size());
    }
    out.hold = std::move(held);
    return out;
  }

  absl::StatusOr<int64_t> Publish(const BlockKey& root, std::span<const PoolPage> pages,
                                  const PoolWriteOptions& options,
                                  const std::string& tenant) override {
    std::vector<pb::NodeInfo> homes = Homes(root);
    if (homes.empty()) {
      return MarkRetryable(absl::UnavailableError("pool publish: no live store node"));
    }
    pb::WriteOptions wo;
    pb::KeySpace* ks = wo.mutable_key_space();
    ks->set_model_fingerprint(std::string(options.key_space.model_fingerprint.begin(),
                                          options.key_space.model_fingerprint.end()));
    ks->set_layout(options.key_space.layout_id);
    ks->set_page_tokens(options.key_space.page_tokens);
    wo.set_shared_namespace(options.shared_namespace);
    wo.set_session_id(options.session_id);
    if (options.retention > absl::ZeroDuration()) {
      SetDuration(options.retention, wo.mutable_retention_ttl());
    }
    std::vector<PageStoreClient::PageToWrite> writes;
    for (const PoolPage& p : pages) writes.push_back({p.key, p.bytes, p.resume_role});
    int64_t best = -1;
    absl::Status last;
    for (const pb::NodeInfo& home : homes) {
      PageStoreClient client(Channel(home.grpc_address()), options_.service_token,
                             options_.write_timeout, tenant);
      absl::StatusOr<std::vector<PageStoreClient::WriteResult>> r = client.WritePages(wo, writes);
      if (!r.ok()) {
        last = r.status();
        log::Warn("pool_publish_failed", "node", home.node_id(), "error", r.status().ToString());
        continue;
      }
      int64_t ok = 0;
      for (const auto& w : *r) {
        if (w.outcome == pb::WRITE_OUTCOME_STORED ||
            w.outcome == pb::WRITE_OUTCOME_ALREADY_PRESENT) {
          ++ok;
        } else {
          log::Warn("pool_page_rejected", "node", home.node_id(), "key", w.key.Hex(), "error",
                    w.error.ToString());
          break;
        }
      }
      best = std::max(best, ok);
    }
    if (best < 0) return last;
    return best;
  }

  // Registers the first read buffer now (16 MiB: a 6K-token prefix of 2.56 MB pages, or 100
  // 168 KB ones), so the first remote hit does not pay for allocating, faulting in and
  // registering it (27 ms of a 65 ms first read in `bench e2e`). A failure only logs.
  void Prewarm() {
    absl::StatusOr<ReadBuffer> b = TakeBuffer(16ull << 20);
    if (!b.ok()) {
      log::Warn("pool_prewarm_failed", "error", b.status().ToString());
      return;
    }
    kv::MutexLock l(&mu_);
    idle_.push_back(*std::move(b));
  }

 private:
  struct RmaClients {
    std::unique_ptr<PageStoreClient> rpc;
    std::unique_ptr<PageRmaClient> rma;
  };
  // The RMA client of (store, tenant), made on first use; it keeps its connection and the
  // store's imported region keys.
  PageRmaClient& RmaFor(const std::string& address, const std::string& tenant) {
    std::shared_ptr<grpc::Channel> channel = Channel(address);
    kv::MutexLock l(&mu_);
    RmaClients& c = rma_[{address, tenant}];
    if (c.rma == nullptr) {
      c.rpc = std::make_unique<PageStoreClient>(std::move(channel), options_.service_token,
                                                options_.rpc_timeout, tenant);
      c.rma = std::make_unique<PageRmaClient>(
          c.rpc.get(), options_.transport,
          PageRmaOptions{.clock = clock(),
                         .connect = [this](const std::string& ucx,
                                           absl::Time by) { return SharedPeer(ucx, by); },
                         .peer_failed = [this](transport::PeerId p) { ForgetPeer(p); }});
    }
    return *c.rma;
  }

  // One UCX endpoint per store (its UCX address), shared by the clients of every tenant: a
  // tenant's first read does not pay for a connection, nor for a cold endpoint (Warm).
  absl::StatusOr<transport::PeerId> SharedPeer(const std::string& ucx, absl::Time by) {
    {
      kv::MutexLock l(&mu_);
      if (auto it = peers_.find(ucx); it != peers_.end()) return it->second;
    }
    ASSIGN_OR_RETURN(transport::PeerId peer, options_.transport->Connect(ucx, by));
    transport::PeerId shared = 0;
    {
      kv::MutexLock l(&mu_);
      shared = peers_.emplace(ucx, peer).first->second;
    }
    if (shared != peer) {  // another client connected first: use its endpoint
      options_.transport->Disconnect(peer).IgnoreError();
    }
    return shared;
  }
  void ForgetPeer(transport::PeerId peer) {
    kv::MutexLock l(&mu_);
    std::erase_if(peers_, [&](const auto& e) { return e.second == peer; });
  }

 public:
  // Connects to and warms (PageRmaClient::Warm) every store the membership names, on a
  // thread of the pool's own, so that a worker's first remote hit finds a warm endpoint.
  void StartWarming() {
    warmer_ = std::thread([this] { WarmLoop(); });
    watch_ = membership_->Watch([this](const MembershipView& v) { QueueStores(v); });
    QueueStores(membership_->Members());
  }

 private:
  void QueueStores(const MembershipView& view) {
    kv::MutexLock l(&mu_);
    for (const pb::NodeInfo& n : view.members) {
      const bool store =
          std::find(n.roles().begin(), n.roles().end(), pb::ROLE_STORE) != n.roles().end();
      if (store && warmed_.insert(n.grpc_address()).second) to_warm_.push_back(n.grpc_address());
    }
  }
  void WarmLoop() {
    while (true) {
      std::string address;
      {
        kv::MutexLock l(&mu_);
        const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !to_warm_.empty();
        };
        mu_.Await(kv::Condition(&ready));
        if (stopping_) return;
        address = std::move(to_warm_.front());
        to_warm_.pop_front();
      }
      WarmStore(address);
    }
  }
  // 64 gets of 128 KiB: the rendezvous state of a batch of pages (31 gets of 168 KB took
  // 8.5 ms cold, 1.4 ms warm). A store that cannot be warmed is connected on first use.
  void WarmStore(const std::string& address) {
    constexpr uint64_t kWarmBytes = 8ull << 20;
    const absl::Time t0 = clock()->Now();
    absl::StatusOr<ReadBuffer> buf = TakeBuffer(kWarmBytes);
    if (!buf.ok()) {
      log::Info("pool_warm_failed", "node", address, "error", buf.status().ToString());
      return;
    }
    // The warm-up's calls (GetTransportInfo) read no tenant's pages, but the node credential
    // must name a tenant it acts for; a cluster without tokens takes none.
    const std::string tenant = options_.service_token.empty() ? "" : "kvstrata-pool-warm";
    absl::Status s = RmaFor(address, tenant)
                         .Warm({buf->region, std::span(buf->mem->data(), kWarmBytes)}, 64,
                               t0 + absl::Seconds(5));
    GiveBack(*std::move(buf), s.ok());
    if (!s.ok()) {
      log::Info("pool_warm_failed", "node", address, "error", s.ToString());
      return;
    }
    log::Info("pool_store_warmed", "node", address, "us",
              absl::ToInt64Microseconds(clock()->Now() - t0));
  }

  // Pins `keys` for this process and reads them with RMA gets into a registered buffer of
  // its own (GetInto). nullopt when UCX cannot reach the store or the store lends no region:
  // the caller falls back to gRPC.
  absl::StatusOr<std::optional<PoolPages>> ReadOverUcx(const std::string& address,
                                                       std::span<const BlockKey> keys,
                                                       const std::string& tenant,
                                                       absl::Time deadline) {
    const absl::Time t0 = clock()->Now();
    PageRmaClient& rma = RmaFor(address, tenant);
    if (absl::StatusOr<transport::PeerId> peer = rma.Peer(deadline); !peer.ok()) {
      log::Info("pool_read_fallback", "node", address, "error", peer.status().ToString());
      return std::nullopt;
    }
    const absl::Time t1 = clock()->Now();
    ASSIGN_OR_RETURN(PinnedPages pinned, rma.PinForRead(keys, deadline));
    if (pinned.pages.empty() || !pinned.rma()) {
      rma.Unpin(pinned).IgnoreError();  // expires on its own otherwise
      if (pinned.pages.empty()) return PoolPages{};
      return std::nullopt;
    }
    log::Debug("pool_read_ucx_pin", "node", address, "connect_us",
               absl::ToInt64Microseconds(t1 - t0), "pin_us",
               absl::ToInt64Microseconds(clock()->Now() - t1));
    return GetInto(rma, pinned, keys, deadline, address);
  }

  // Reads `keys` from the pages the router's pin lent (CachedRun::lent) without pinning them
  // again: the lease is the router's, confirmed by its beacon (PageRmaClient::Borrow). nullopt
  // when they cannot be used (unparsable, not these keys, no UCX endpoint, the lease ended, a
  // failed get, no page verified): the caller then reads the usual way.
  std::optional<PoolPages> ReadLent(const std::string& address, std::span<const BlockKey> keys,
                                    const std::string& tenant, const std::string& lent,
                                    absl::Time deadline) {
    pb::PinBlocksResponse resp;
    if (!resp.ParseFromString(lent)) {
      log::Warn("pool_lent_unparsable", "node", address, "bytes", lent.size());
      return std::nullopt;
    }
    PageRmaClient& rma = RmaFor(address, tenant);
    absl::StatusOr<PinnedPages> pinned = rma.Borrow(resp, deadline);
    if (!pinned.ok()) {
      log::Info("pool_lent_unusable", "node", address, "error", pinned.status().ToString());
      return std::nullopt;
    }
    // The keys are a run of the pinned chain: its start, or after pages a local tier served.
    auto first = std::find_if(pinned->pages.begin(), pinned->pages.end(),
                              [&](const PinnedPages::Page& p) { return p.key == keys[0]; });
    if (first == pinned->pages.end()) return std::nullopt;
    pinned->pages.erase(pinned->pages.begin(), first);
    absl::StatusOr<PoolPages> r = GetInto(rma, *pinned, keys, deadline, address);
    if (!r.ok() || r->pages.empty()) {
      log::Info("pool_lent_read_failed", "node", address, "error",
                r.ok() ? "no page verified" : r.status().ToString());
      return std::nullopt;
    }
    return *std::move(r);
  }

  // One batch of gets of `pinned` (the pages of `keys` it holds, in order) into a registered
  // buffer; the verified pages are returned as views into it, and the buffer goes back to the
  // pool when the caller drops them. A buffer the transport still holds after a failed get is
  // kept alive, never reused.
  absl::StatusOr<PoolPages> GetInto(PageRmaClient& rma, const PinnedPages& pinned,
                                    std::span<const BlockKey> keys, absl::Time deadline,
                                    const std::string& address) {
    uint64_t total = 0;
    for (size_t i = 0; i < pinned.pages.size() && i < keys.size(); ++i) {
      total += pinned.pages[i].size;
    }
    const absl::Time t0 = clock()->Now();
    ASSIGN_OR_RETURN(ReadBuffer buf, TakeBuffer(std::max<uint64_t>(total, 1)));
    const absl::Time t1 = clock()->Now();
    absl::StatusOr<RmaReadResult> r =
        rma.GetPinned(pinned, keys, {buf.region, std::span(buf.mem->data(), total)}, deadline);
    const auto us = [](absl::Duration d) { return absl::ToInt64Microseconds(d); };
    log::Debug("pool_read_ucx", "node", address, "lease", pinned.borrowed ? "lent" : "own", "pages",
               r.ok() ? r->prefix() : 0, "bytes", total, "buffer_us", us(t1 - t0), "get_us",
               us(clock()->Now() - t1));
    if (!r.ok()) {
      GiveBack(std::move(buf), false);
      return r.status();
    }
    PoolPages out;
    for (size_t i = 0; i < r->prefix(); ++i) {
      out.pages.emplace_back(buf.mem->data() + r->pages[i]->offset, r->pages[i]->size);
    }
    std::shared_ptr<ReadBuffer> held(new ReadBuffer(std::move(buf)), [this](ReadBuffer* b) {
      GiveBack(std::move(*b), true);
      delete b;
    });
    out.hold = std::move(held);
    return out;
  }

  // A registered buffer for RMA reads. Registering fresh memory per read (and faulting it in
  // 4 KiB at a time) cost about as much as the get itself, so buffers are kept and reused:
  // at most kIdleBuffers, each of a power-of-two size from 4 MiB to kMaxKeptBytes.
  struct ReadBuffer {
    std::shared_ptr<std::vector<uint8_t>> mem;
    transport::RegionId region = 0;
  };
  static constexpr size_t kIdleBuffers = 4;
  static constexpr uint64_t kMaxKeptBytes = 256ull << 20;

  absl::StatusOr<ReadBuffer> TakeBuffer(uint64_t bytes) {
    {
      kv::MutexLock l(&mu_);
      auto fits = std::find_if(idle_.begin(), idle_.end(),
                               [&](const ReadBuffer& b) { return b.mem->size() >= bytes; });
      if (fits != idle_.end()) {
        ReadBuffer b = std::move(*fits);
        idle_.erase(fits);
        return b;
      }
    }
    uint64_t size = 4ull << 20;
    while (size < bytes && size < kMaxKeptBytes) size *= 2;
    ReadBuffer b{.mem = std::make_shared<std::vector<uint8_t>>(std::max(size, bytes))};
    ASSIGN_OR_RETURN(
        transport::RegisteredRegion reg,
        options_.transport->Register(b.mem->data(), b.mem->size(), transport::MemoryKind::kHost));
    b.region = reg.id;
    return b;
  }

  // Keeps `b` for the next read when its get ended cleanly; otherwise (or when too many are
  // idle, or it is oversized) deregisters it. A buffer the transport still holds after a
  // failed get is kept alive, never reused (the graveyard).
  void GiveBack(ReadBuffer b, bool clean) {
    if (clean && b.mem->size() <= kMaxKeptBytes) {
      absl::StatusOr<transport::RegionState> st = options_.transport->GetRegionState(b.region);
      kv::MutexLock l(&mu_);
      if (st.ok() && *st == transport::RegionState::kIdle && idle_.size() < kIdleBuffers) {
        idle_.push_back(std::move(b));
        return;
      }
    }
    if (!options_.transport->Deregister(b.region).ok()) {
      kv::MutexLock l(&mu_);
      graveyard_.push_back(std::move(b.mem));  // quarantined: the transport may still write it
    }
  }

  Clock* clock() const { return options_.clock != nullptr ? options_.clock : Clock::Real(); }
  std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    kv::MutexLock l(&mu_);
    std::shared_ptr<grpc::Channel>& c = channels_[address];
    if (c == nullptr) c = NewChannel(address);
    return c;
  }

  Membership* const membership_;
  const GrpcPagePoolOptions options_;
  kv::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, RmaClients> rma_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<std::vector<uint8_t>>> graveyard_ ABSL_GUARDED_BY(mu_);
  std::vector<ReadBuffer> idle_ ABSL_GUARDED_BY(mu_);  // registered, ready for the next read
  std::map<std::string, transport::PeerId> peers_ ABSL_GUARDED_BY(mu_);  // by UCX address
  std::set<std::string> warmed_ ABSL_GUARDED_BY(mu_);     // stores queued for warming once
  std::deque<std::string> to_warm_ ABSL_GUARDED_BY(mu_);  // their gRPC addresses
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t watch_ = 0;
  std::thread warmer_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PagePool>> NewGrpcPagePool(Membership* membership,
                                                          GrpcPagePoolOptions options) {
  if (membership == nullptr) return absl::InvalidArgumentError("page pool: null membership");
  if (options.replication < 1) {
    return absl::InvalidArgumentError(
        StrCat("page pool: replication must be >= 1, got ", options.replication));
  }
  auto pool = std::make_unique<GrpcPagePool>(membership, options);
  if (options.transport != nullptr) {
    pool->Prewarm();
    pool->StartWarming();
  }
  return pool;
}

}  // namespace kv::cluster
