#include "cluster/page_store_service.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

namespace {

const std::string& SharedNs() {
  static const std::string* ns = new std::string(KeyNamespace::Shared().ToString());
  return *ns;
}

std::string KeyBytes(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

absl::StatusOr<BlockKey> ParseKey(const std::string& bytes, std::string_view what) {
  BlockKey k;
  if (bytes.size() != k.bytes.size()) {
    return absl::InvalidArgumentError(
        StrCat(what, " is ", bytes.size(), " bytes; block keys are 32 bytes"));
  }
  std::memcpy(k.bytes.data(), bytes.data(), k.bytes.size());
  return k;
}

absl::StatusOr<std::vector<BlockKey>> ParseKeys(
    const google::protobuf::RepeatedPtrField<std::string>& in, size_t max) {
  if (static_cast<size_t>(in.size()) > max) {
    return absl::InvalidArgumentError(StrCat(in.size(), " keys; at most ", max, " per call"));
  }
  std::vector<BlockKey> out;
  out.reserve(in.size());
  for (int i = 0; i < in.size(); ++i) {
    ASSIGN_OR_RETURN(BlockKey k, ParseKey(in[i], StrCat("keys[", i, "]")));
    out.push_back(k);
  }
  return out;
}

// A status carrying a machine-readable reason (ErrorInfo.reason).
absl::Status Tagged(absl::Status s, std::string_view reason) {
  pb::ErrorInfo info;
  info.set_reason(std::string(reason));
  return WithErrorInfo(std::move(s), info);
}

// How every invisible or absent block is reported, so the two cannot be told apart.
absl::Status Miss(const BlockKey& key, const std::string& node) {
  return Tagged(absl::NotFoundError(StrCat("block ", key.Hex(), " is not cached on ", node)),
                "NOT_CACHED");
}

absl::Status LeaseGone(const std::string& id) {
  return Tagged(absl::NotFoundError(StrCat("lease '", id, "' is unknown or expired")),
                "LEASE_NOT_FOUND");
}

std::string NewLeaseId() {
  std::random_device rd;  // the kernel's CSPRNG on Linux
  std::string raw(16, '\0');
  for (size_t i = 0; i < raw.size(); i += 4) {
    const uint32_t v = rd();
    std::memcpy(raw.data() + i, &v, 4);
  }
  return ToHex(raw.data(), raw.size());
}

bool HasResume(const PageHeader& h) {
  return std::any_of(h.sections.begin(), h.sections.end(),
                     [](const SectionInfo& s) { return s.kind == SectionKind::kV4Resume; });
}

}  // namespace

// ---- ReadPages --------------------------------------------------------------------------------

// One ReadPages call. Pages are loaded on the service's pool, one at a time, and sent one
// chunk at a time: exactly one of {a pool task, an outstanding write} owns the reactor at any
// moment, and whichever owns it last calls Finish(). Deleted in OnDone().
class ReadPagesReactor final : public grpc::ServerWriteReactor<pb::PageChunk> {
 public:
  ReadPagesReactor(PageStoreService* svc, PageStoreService::Caller caller, pb::ReadPagesRequest req,
                   uint32_t chunk_bytes)
      : svc_(svc), caller_(std::move(caller)), req_(std::move(req)), chunk_bytes_(chunk_bytes) {}

  void Start() { LoadNext(); }

  void OnWriteDone(bool ok) override {
    if (!ok) {  // the client is gone; nothing more can be sent
      Done(absl::CancelledError("ReadPages stream broken"));
      return;
    }
    if (offset_ < page_.bytes.size() && page_.status.ok()) {
      SendChunk();
    } else {
      LoadNext();
    }
  }
  void OnCancel() override { cancelled_ = true; }
  void OnDone() override {
    svc_->Count("ReadPages", final_);
    delete this;
  }

 private:
  void LoadNext() {
    if (cancelled_) return Done(absl::CancelledError("ReadPages cancelled"));
    if (next_ >= req_.pages_size()) return Done(absl::OkStatus());
    if (!svc_->pool_->Schedule([this] {
          index_ = next_++;
          page_ = svc_->LoadPage(caller_, req_.pages(index_), req_.lease_id());
          offset_ = 0;
          SendChunk();
        })) {
      Done(absl::UnavailableError("page store is shutting down"));
    }
  }

  void SendChunk() {
    const pb::PageSelector& sel = req_.pages(index_);
    msg_.Clear();
    msg_.set_key(sel.key());
    msg_.set_page_index(static_cast<uint32_t>(index_));
    if (!page_.status.ok()) {
      pb::ErrorInfo* e = msg_.mutable_error();
      *e = ToErrorInfo(page_.status);
      e->set_node_id(svc_->options_.node_id);
      e->set_key(sel.key());
      msg_.set_last(true);
      StartWrite(&msg_);
      return;
    }
    const std::string& b = page_.bytes;
    const size_t n = std::min<size_t>(chunk_bytes_, b.size() - offset_);
    if (offset_ == 0) msg_.set_page_header(b.substr(0, page_.header_bytes));
    msg_.set_section(pb::SECTION_KIND_UNSPECIFIED);
    msg_.mutable_layers()->set_begin(page_.first_layer);
    msg_.mutable_layers()->set_end(page_.first_layer + page_.layer_count);
    msg_.set_offset(offset_);
    msg_.set_data(b.data() + offset_, n);
    msg_.set_data_xxh3(Xxh3_64(b.data() + offset_, n));
    msg_.set_total_bytes(b.size());
    offset_ += n;
    msg_.set_last(offset_ == b.size());
    svc_->bytes_read_->Inc(static_cast<double>(n));
    StartWrite(&msg_);
  }

  void Done(absl::Status s) {
    final_ = s;
    Finish(ToGrpcStatus(s));
  }

  PageStoreService* const svc_;
  const PageStoreService::Caller caller_;
  const pb::ReadPagesRequest req_;
  const uint32_t chunk_bytes_;
  int next_ = 0;   // next page to load
  int index_ = 0;  // page being sent
  PageStoreService::LoadedPage page_;
  size_t offset_ = 0;
  pb::PageChunk msg_;
  std::atomic<bool> cancelled_{false};
  absl::Status final_;
};

// ---- WritePages -------------------------------------------------------------------------------

// One WritePages call. Chunks are checked as they arrive (inline); a completed page is
// verified and published on the pool, which then asks for the next message. As with
// ReadPagesReactor, one actor owns the reactor at a time. Deleted in OnDone().
class WritePagesReactor final : public grpc::ServerReadReactor<pb::WritePagesRequest> {
 public:
  WritePagesReactor(PageStoreService* svc, PageStoreService::Caller caller,
                    pb::WritePagesResponse* resp)
      : svc_(svc), caller_(std::move(caller)), resp_(resp) {
    StartRead(&msg_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return EndOfStream();
    absl::Status s = Handle();
    if (!s.ok()) return Done(s);
    if (!publish_) return StartRead(&msg_);
    if (!svc_->pool_->Schedule([this] {
          *resp_->add_results() =
              svc_->PublishPage(caller_, options_, cur_->key, std::move(cur_->bytes), cur_->role);
          cur_.reset();
          publish_ = false;
          StartRead(&msg_);
        })) {
      Done(absl::UnavailableError("page store is shutting down"));
    }
  }
  void OnDone() override {
    svc_->Count("WritePages", final_);
    delete this;
  }

 private:
  struct Page {
    BlockKey key;
    PageRole role = PageRole::kTurnEnd;
    uint64_t total = 0;
    uint64_t received = 0;
    std::string bytes;
    std::optional<pb::PageWriteResult> rejected;
  };

  // Applies one message. An error is a protocol violation that ends the call.
  absl::Status Handle() {
    if (msg_.has_options()) {
      if (options_seen_) return absl::InvalidArgumentError("WriteOptions sent twice");
      options_ = msg_.options();
      options_seen_ = true;
      absl::StatusOr<LayoutInfo> layout = LookupLayout(options_.key_space().layout());
      if (!layout.ok()) {
        return absl::InvalidArgumentError(
            StrCat("WriteOptions.key_space.layout: ", layout.status().message()));
      }
      return absl::OkStatus();
    }
    if (!options_seen_) {
      return absl::InvalidArgumentError("the first WritePages message must be WriteOptions");
    }
    if (!msg_.has_chunk()) return absl::InvalidArgumentError("WritePages message with no chunk");
    const pb::PageChunk& c = msg_.chunk();
    ASSIGN_OR_RETURN(BlockKey key, ParseKey(c.key(), "chunk key"));
    resp_->set_bytes_received(resp_->bytes_received() + c.data().size());
    if (!cur_) {
      if (c.offset() != 0) {
        return absl::InvalidArgumentError(
            StrCat("first chunk of page ", key.Hex(), " has offset ", c.offset(), ", not 0"));
      }
      StartPage(key, c);
    } else if (key != cur_->key) {
      return absl::InvalidArgumentError(
          StrCat("chunk of page ", key.Hex(), " before the last chunk of page ", cur_->key.Hex()));
    } else if (c.offset() != cur_->received) {
      return absl::InvalidArgumentError(StrCat("chunk of page ", key.Hex(), " at offset ",
                                               c.offset(), ", expected ", cur_->received));
    }
    Append(c);
    if (!c.last()) return absl::OkStatus();
    if (!cur_->rejected && cur_->received != cur_->total) {
      Reject(absl::InvalidArgumentError(StrCat("page ended after ", cur_->received,
                                               " bytes; total_bytes says ", cur_->total)),
             "SIZE_MISMATCH");
    }
    if (cur_->rejected) {
      *resp_->add_results() = *std::move(cur_->rejected);
      cur_.reset();
    } else {
      publish_ = true;
    }
    return absl::OkStatus();
  }

  void StartPage(const BlockKey& key, const pb::PageChunk& c) {
    cur_.emplace();
    cur_->key = key;
    cur_->role = FromProto(c.resume_role());
    cur_->total = c.total_bytes();
    if (c.section() != pb::SECTION_KIND_UNSPECIFIED) {
      Reject(absl::UnimplementedError("section writes are not supported; send whole pages"),
             "UNSUPPORTED_SECTION");
    } else if (c.total_bytes() == 0) {
      Reject(absl::InvalidArgumentError("total_bytes is 0"), "SIZE_MISMATCH");
    } else if (c.total_bytes() > svc_->options_.max_page_bytes) {
      Reject(absl::InvalidArgumentError(StrCat("page of ", c.total_bytes(),
                                               " bytes exceeds the limit of ",
                                               svc_->options_.max_page_bytes)),
             "PAGE_TOO_LARGE");
    } else {
      cur_->bytes.reserve(c.total_bytes());
    }
  }

  void Append(const pb::PageChunk& c) {
    const std::string& d = c.data();
    if (!cur_->rejected) {
      if (c.total_bytes() != cur_->total) {
        Reject(absl::InvalidArgumentError(StrCat("total_bytes changed from ", cur_->total, " to ",
                                                 c.total_bytes(), " within the page")),
               "SIZE_MISMATCH");
      } else if (Xxh3_64(d.data(), d.size()) != c.data_xxh3()) {
        Reject(absl::DataLossError(StrCat("chunk at offset ", c.offset(), " (", d.size(),
                                          " bytes) fails its XXH3 checksum")),
               "CHUNK_CHECKSUM_MISMATCH");
      } else if (cur_->received + d.size() > cur_->total) {
        Reject(absl::InvalidArgumentError(
                   StrCat("chunks exceed total_bytes (", cur_->total, ") of the page")),
               "SIZE_MISMATCH");
      } else {
        cur_->bytes.append(d);
      }
    }
    cur_->received += d.size();
  }

  void Reject(absl::Status why, std::string_view reason) {
    cur_->rejected = svc_->Reject(cur_->key, std::move(why), reason);
    std::string().swap(cur_->bytes);  // stop holding the bytes of a rejected page
  }

  void EndOfStream() {
    if (!options_seen_) {
      return Done(absl::InvalidArgumentError("WritePages stream carried no WriteOptions"));
    }
    if (cur_) {  // the client half-closed in the middle of a page
      *resp_->add_results() =
          cur_->rejected ? *std::move(cur_->rejected)
                         : svc_->Reject(cur_->key,
                                        absl::InvalidArgumentError(StrCat(
                                            "stream ended after ", cur_->received, " of ",
                                            cur_->total, " bytes of the page (no `last` chunk)")),
                                        "PAGE_TRUNCATED");
      cur_.reset();
    }
    Done(absl::OkStatus());
  }

  void Done(absl::Status s) {
    final_ = s;
    Finish(ToGrpcStatus(s));
  }

  PageStoreService* const svc_;
  const PageStoreService::Caller caller_;
  pb::WritePagesResponse* const resp_;
  pb::WritePagesRequest msg_;
  pb::WriteOptions options_;
  bool options_seen_ = false;
  bool publish_ = false;
  std::optional<Page> cur_;
  absl::Status final_;
};

// ---- the service ------------------------------------------------------------------------------

PageStoreService::PageStoreService(TieredStore* store, TenantAuth auth,
                                   PageStoreServiceOptions options)
    : store_(store),
      auth_(std::move(auth)),
      options_(std::move(options)),
      clock_(options_.clock ? options_.clock : Clock::Real()),
      metrics_(options_.metrics ? options_.metrics : &MetricsRegistry::Default()),
      pool_(std::make_unique<ThreadPool>(std::max(1, options_.io_threads))) {
  bytes_read_ = metrics_->GetCounter("kvstrata_pagestore_bytes_read_total",
                                     "Page bytes sent by PageStore.ReadPages");
  bytes_written_ = metrics_->GetCounter("kvstrata_pagestore_bytes_written_total",
                                        "Page bytes stored by PageStore.WritePages");
  leases_gauge_ = metrics_->GetGauge("kvstrata_pagestore_leases", "Live PageStore pin leases");
  SeedDirectory();
}

PageStoreService::~PageStoreService() {
  pool_.reset();
  kv::MutexLock l(&mu_);
  for (auto& [id, lease] : leases_) {
    for (const LeasePins& p : lease.pins) store_->Unpin(p.handle).IgnoreError();
  }
  leases_gauge_->Set(0);
}

void PageStoreService::SeedDirectory() {
  kv::MutexLock l(&mu_);
  for (int t = 0; t < kNumTiers; ++t) {
    Tier* tier = store_->tier(static_cast<TierKind>(t));
    if (tier == nullptr) continue;
    absl::StatusOr<std::vector<PageMeta>> metas = tier->List();
    if (!metas.ok()) {
      log::Warn("pagestore_seed_failed", "tier", TierName(static_cast<TierKind>(t)), "error",
                metas.status().ToString());
      continue;
    }
    for (const PageMeta& m : *metas) {
      DirEntry& e = dir_[m.key];
      e.ns = m.ns;
      e.size = m.size;
    }
  }
}

absl::StatusOr<PageStoreService::Caller> PageStoreService::Authenticate(
    grpc::CallbackServerContext* ctx) const {
  Caller c;
  ASSIGN_OR_RETURN(c.tenant, AuthenticateCall(auth_, ctx));
  ASSIGN_OR_RETURN(KeyNamespace ns, KeyNamespace::Tenant(c.tenant));
  c.ns = ns.ToString();
  return c;
}

void PageStoreService::Count(std::string_view rpc, const absl::Status& status) {
  metrics_
      ->GetCounter("kvstrata_pagestore_requests_total", "PageStore calls by RPC and status code",
                   {{"rpc", std::string(rpc)}, {"code", absl::StatusCodeToString(status.code())}})
      ->Inc();
}

size_t PageStoreService::VisiblePrefix(const Caller& c, std::span<const BlockKey> keys,
                                       std::vector<bool>* has_resume,
                                       std::vector<TierKind>* tiers) {
  TieredStore::LookupResult r = store_->Lookup(keys);
  kv::MutexLock l(&mu_);
  size_t n = 0;
  for (; n < r.matched; ++n) {
    auto it = dir_.find(keys[n]);
    if (it == dir_.end() || (it->second.ns != c.ns && it->second.ns != SharedNs())) break;
  }
  if (r.matched < keys.size()) {  // keys[matched] is not in the store: forget it
    auto it = dir_.find(keys[r.matched]);
    if (it != dir_.end() && it->second.writers == 0) dir_.erase(it);
  }
  if (tiers != nullptr) tiers->assign(r.tiers.begin(), r.tiers.begin() + n);
  if (has_resume != nullptr) has_resume->assign(r.has_resume.begin(), r.has_resume.begin() + n);
  return n;
}

absl::Status PageStoreService::FillHeader(const BlockKey& key) {
  uint64_t size;
  {
    kv::MutexLock l(&mu_);
    auto it = dir_.find(key);
    if (it == dir_.end()) return Miss(key, options_.node_id);
    if (it->second.header_known) return absl::OkStatus();
    size = it->second.size;
  }
  ASSIGN_OR_RETURN(TieredStore::PinHandle h,
                   store_->Pin({&key, 1}, clock_->Now() + absl::Seconds(30)));
  std::string buf(size, '\0');
  absl::StatusOr<size_t> n =
      store_->Read(h, key, {reinterpret_cast<uint8_t*>(buf.data()), buf.size()});
  store_->Unpin(h).IgnoreError();  // a lease that already expired needs no release
  RETURN_IF_ERROR(n.status());
  ASSIGN_OR_RETURN(PageHeader hdr,
                   DecodePageHeader({reinterpret_cast<const uint8_t*>(buf.data()), *n}));
  kv::MutexLock l(&mu_);
  auto it = dir_.find(key);
  if (it == dir_.end()) return Miss(key, options_.node_id);
  DirEntry& e = it->second;
  e.header_known = true;
  e.token_count = hdr.token_count;
  e.first_layer = hdr.first_layer;
  e.layer_count = hdr.layer_count;
  e.has_resume = HasResume(hdr);
  return absl::OkStatus();
}

// ---- LookupBlocks -----------------------------------------------------------------------------

absl::Status PageStoreService::DoLookup(const Caller& c, const pb::LookupBlocksRequest& req,
                                        pb::LookupBlocksResponse* resp) {
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(req.keys(), options_.max_lookup_keys));
  absl::flat_hash_set<int> filter(req.tiers().begin(), req.tiers().end());
  filter.erase(pb::TIER_UNSPECIFIED);
  std::vector<TierKind> tiers;
  std::vector<bool> has_resume;  // the store's, current after pressure strips
  const size_t n = VisiblePrefix(c, keys, &has_resume, &tiers);
  resp->set_node_id(options_.node_id);
  uint32_t found = 0;
  for (size_t i = 0; i < n; ++i) {
    const pb::Tier tier = ToProto(tiers[i]);
    if (!filter.empty() && !filter.contains(tier)) break;
    if (!FillHeader(keys[i]).ok()) break;  // gone meanwhile, or unreadable: a miss
    pb::BlockLocation* loc = resp->add_blocks();
    loc->set_key(KeyBytes(keys[i]));
    loc->set_tier(tier);
    kv::MutexLock l(&mu_);
    auto it = dir_.find(keys[i]);
    if (it == dir_.end()) {
      resp->mutable_blocks()->RemoveLast();
      break;
    }
    const DirEntry& e = it->second;
    loc->set_page_bytes(e.size);
    loc->set_token_count(e.token_count);
    loc->mutable_layers()->set_begin(e.first_layer);
    loc->mutable_layers()->set_end(e.first_layer + e.layer_count);
    loc->set_has_resume(has_resume[i]);
    ++found;
  }
  resp->set_prefix_blocks(found);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PageStoreService::LookupBlocks(grpc::CallbackServerContext* ctx,
                                                         const pb::LookupBlocksRequest* request,
                                                         pb::LookupBlocksResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Caller c, Authenticate(ctx));
    return DoLookup(c, *request, response);
  }();
  Count("LookupBlocks", s);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

// ---- leases -----------------------------------------------------------------------------------

void PageStoreService::ReleaseLeaseLocked(Lease& lease) {
  // NotFound: the store's pins already expired on the same clock; nothing to release.
  for (const LeasePins& p : lease.pins) store_->Unpin(p.handle).IgnoreError();
  lease.pins.clear();
  if (--leases_per_tenant_[lease.tenant] <= 0) leases_per_tenant_.erase(lease.tenant);
}

void PageStoreService::ReapLeasesLocked(absl::Time now) {
  while (!lease_deadlines_.empty() && lease_deadlines_.begin()->first <= now) {
    const std::string id = lease_deadlines_.begin()->second;
    lease_deadlines_.erase(lease_deadlines_.begin());
    auto it = leases_.find(id);
    if (it == leases_.end()) continue;
    ReleaseLeaseLocked(it->second);
    leases_.erase(it);
  }
  leases_gauge_->Set(static_cast<double>(leases_.size()));
}

size_t PageStoreService::live_leases() {
  kv::MutexLock l(&mu_);
  ReapLeasesLocked(clock_->Now());
  return leases_.size();
}

absl::StatusOr<TieredStore::PinHandle> PageStoreService::LeaseHandle(const Caller& c,
                                                                     const std::string& id,
                                                                     const BlockKey& key) {
  kv::MutexLock l(&mu_);
  ReapLeasesLocked(clock_->Now());
  auto it = leases_.find(id);
  if (it == leases_.end() || it->second.tenant != c.tenant) return LeaseGone(id);
  for (const LeasePins& p : it->second.pins) {
    if (std::find(p.keys.begin(), p.keys.end(), key) != p.keys.end()) return p.handle;
  }
  return TieredStore::PinHandle{0};
}

absl::Status PageStoreService::DoPin(const Caller& c, const pb::PinBlocksRequest& req,
                                     pb::PinBlocksResponse* resp) {
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(req.keys(), options_.max_lookup_keys));
  if (keys.empty() && req.lease_id().empty()) {
    return absl::InvalidArgumentError("PinBlocks needs keys, or a lease_id to extend");
  }
  if (req.promote_to() != pb::TIER_UNSPECIFIED) {
    return absl::UnimplementedError(
        "promote_to is not supported yet: pages are pinned where they are (read with ReadPages)");
  }
  absl::Duration len = options_.default_lease;
  if (req.has_lease()) {
    len = FromProto(req.lease());
    if (len <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("lease must be a positive duration (or unset)");
    }
  }
  len = std::min(len, options_.max_lease);
  const absl::Time now = clock_->Now();
  absl::Time deadline = now + len;
  {
    kv::MutexLock l(&mu_);
    ReapLeasesLocked(now);
    if (!req.lease_id().empty()) {
      auto it = leases_.find(req.lease_id());
      if (it == leases_.end() || it->second.tenant != c.tenant) return LeaseGone(req.lease_id());
    } else if (leases_per_tenant_[c.tenant] >= options_.max_leases_per_tenant) {
      return MarkRetryable(Tagged(
          absl::ResourceExhaustedError(StrCat("tenant holds ", options_.max_leases_per_tenant,
                                              " leases already; unpin some or wait")),
          "TOO_MANY_LEASES"));
    }
  }
  // Pin the visible prefix. A page evicted between the lookup and the pin makes the pin fail
  // (all or nothing); look up again, a bounded number of times.
  std::vector<TierKind> tiers;
  size_t n = 0;
  TieredStore::PinHandle handle = 0;
  for (int attempt = 0; !keys.empty(); ++attempt) {
    n = VisiblePrefix(c, keys, nullptr, &tiers);
    if (n == 0) break;
    absl::StatusOr<TieredStore::PinHandle> h = store_->Pin({keys.data(), n}, deadline);
    if (h.ok()) {
      handle = *h;
      break;
    }
    if (!absl::IsNotFound(h.status()) || attempt == 3) return h.status();
  }
  kv::MutexLock l(&mu_);
  std::string id = req.lease_id();
  Lease* lease = nullptr;
  if (!id.empty()) {
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.tenant != c.tenant) {  // released meanwhile
      if (handle != 0) store_->Unpin(handle).IgnoreError();
      return LeaseGone(id);
    }
    lease = &it->second;
    deadline = std::max(deadline, lease->deadline);
    lease_deadlines_.erase({lease->deadline, id});
    // Renew every earlier pin; one the store already dropped no longer pins anything.
    std::erase_if(lease->pins,
                  [&](const LeasePins& p) { return !store_->Renew(p.handle, deadline).ok(); });
  } else if (handle != 0) {
    if (leases_per_tenant_[c.tenant] >= options_.max_leases_per_tenant) {  // raced another pin
      store_->Unpin(handle).IgnoreError();
      return MarkRetryable(Tagged(
          absl::ResourceExhaustedError(StrCat("tenant holds ", options_.max_leases_per_tenant,
                                              " leases already; unpin some or wait")),
          "TOO_MANY_LEASES"));
    }
    id = NewLeaseId();
    lease = &leases_[id];
    lease->tenant = c.tenant;
    ++leases_per_tenant_[c.tenant];
  }
  if (lease != nullptr) {
    lease->deadline = deadline;
    lease_deadlines_.insert({deadline, id});
    if (handle != 0) lease->pins.push_back({handle, {keys.begin(), keys.begin() + n}});
    resp->set_lease_id(id);
    SetTimestamp(deadline, resp->mutable_deadline());
  }
  leases_gauge_->Set(static_cast<double>(leases_.size()));
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i < n) {
      pb::PinnedBlock* b = resp->add_pinned();
      b->set_key(KeyBytes(keys[i]));
      b->set_tier(ToProto(tiers[i]));
    } else {
      resp->add_missing(KeyBytes(keys[i]));
    }
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PageStoreService::PinBlocks(grpc::CallbackServerContext* ctx,
                                                      const pb::PinBlocksRequest* request,
                                                      pb::PinBlocksResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Caller c, Authenticate(ctx));
    return DoPin(c, *request, response);
  }();
  Count("PinBlocks", s);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

absl::StatusOr<uint32_t> PageStoreService::DoUnpin(const Caller& c,
                                                   const pb::UnpinBlocksRequest& req) {
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ParseKeys(req.keys(), options_.max_lookup_keys));
  kv::MutexLock l(&mu_);
  ReapLeasesLocked(clock_->Now());
  auto it = leases_.find(req.lease_id());
  if (it == leases_.end() || it->second.tenant != c.tenant) return 0u;  // expires on its own
  Lease& lease = it->second;
  uint32_t released = 0;
  if (keys.empty()) {
    for (const LeasePins& p : lease.pins) released += static_cast<uint32_t>(p.keys.size());
    ReleaseLeaseLocked(lease);
  } else {
    const absl::flat_hash_set<BlockKey> drop(keys.begin(), keys.end());
    std::vector<LeasePins> kept;
    for (LeasePins& p : lease.pins) {
      std::vector<BlockKey> rest;
      for (const BlockKey& k : p.keys) {
        if (!drop.contains(k)) rest.push_back(k);
      }
      if (rest.size() == p.keys.size()) {
        kept.push_back(std::move(p));
        continue;
      }
      if (!rest.empty()) {
        // Pin the rest under a new handle before dropping the old one, so they stay pinned.
        absl::StatusOr<TieredStore::PinHandle> h = store_->Pin(rest, lease.deadline);
        if (!h.ok()) {
          log::Warn("pagestore_repin_failed", "error", h.status().ToString());
          kept.push_back(std::move(p));
          continue;
        }
        kept.push_back({*h, rest});
      }
      released += static_cast<uint32_t>(p.keys.size() - rest.size());
      store_->Unpin(p.handle).IgnoreError();
    }
    lease.pins = std::move(kept);
    if (!lease.pins.empty()) return released;
    ReleaseLeaseLocked(lease);
  }
  lease_deadlines_.erase({lease.deadline, it->first});
  leases_.erase(it);
  leases_gauge_->Set(static_cast<double>(leases_.size()));
  return released;
}

grpc::ServerUnaryReactor* PageStoreService::UnpinBlocks(grpc::CallbackServerContext* ctx,
                                                        const pb::UnpinBlocksRequest* request,
                                                        pb::UnpinBlocksResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Caller c, Authenticate(ctx));
    ASSIGN_OR_RETURN(uint32_t released, DoUnpin(c, *request));
    response->set_released(released);
    return absl::OkStatus();
  }();
  Count("UnpinBlocks", s);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

// ---- ReadPages --------------------------------------------------------------------------------

PageStoreService::LoadedPage PageStoreService::LoadPage(const Caller& c,
                                                        const pb::PageSelector& sel,
                                                        const std::string& lease_id) {
  LoadedPage out;
  out.status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(BlockKey key, ParseKey(sel.key(), "page key"));
    if (sel.sections_size() > 0) {
      return Tagged(absl::UnimplementedError("section reads are not supported; read whole pages"),
                    "UNSUPPORTED_SELECTOR");
    }
    uint64_t size = 0;
    {
      kv::MutexLock l(&mu_);
      auto it = dir_.find(key);
      if (it == dir_.end() || (it->second.ns != c.ns && it->second.ns != SharedNs())) {
        return Miss(key, options_.node_id);
      }
      size = it->second.size;
    }
    TieredStore::PinHandle h = 0;
    if (!lease_id.empty()) {
      ASSIGN_OR_RETURN(h, LeaseHandle(c, lease_id, key));
    }
    const bool own_pin = h == 0;
    if (own_pin) {
      absl::StatusOr<TieredStore::PinHandle> p =
          store_->Pin({&key, 1}, clock_->Now() + absl::Seconds(30));
      if (absl::IsNotFound(p.status())) return Miss(key, options_.node_id);
      RETURN_IF_ERROR(p.status());
      h = *p;
    }
    out.bytes.resize(size);
    absl::StatusOr<size_t> n =
        store_->Read(h, key, {reinterpret_cast<uint8_t*>(out.bytes.data()), out.bytes.size()});
    if (own_pin) store_->Unpin(h).IgnoreError();
    if (!n.ok()) {
      if (!absl::IsNotFound(n.status())) return n.status();
      // The lease may have expired between LeaseHandle() and Read().
      if (!own_pin) RETURN_IF_ERROR(LeaseHandle(c, lease_id, key).status());
      return Miss(key, options_.node_id);
    }
    out.bytes.resize(*n);
    ASSIGN_OR_RETURN(
        PageHeader hdr,
        DecodePageHeader({reinterpret_cast<const uint8_t*>(out.bytes.data()), out.bytes.size()}));
    out.header_bytes = hdr.header_bytes();
    out.first_layer = hdr.first_layer;
    out.layer_count = hdr.layer_count;
    const pb::LayerRange& lr = sel.layers();
    if (!(lr.begin() == 0 && lr.end() == 0) &&
        !(lr.begin() == hdr.first_layer && lr.end() == hdr.first_layer + hdr.layer_count)) {
      return Tagged(absl::UnimplementedError(
                        StrCat("layer-range reads are not supported; the page covers layers [",
                               hdr.first_layer, ", ", hdr.first_layer + hdr.layer_count, ")")),
                    "UNSUPPORTED_SELECTOR");
    }
    return absl::OkStatus();
  }();
  if (!out.status.ok()) std::string().swap(out.bytes);
  return out;
}

grpc::ServerWriteReactor<pb::PageChunk>* PageStoreService::ReadPages(
    grpc::CallbackServerContext* ctx, const pb::ReadPagesRequest* request) {
  absl::StatusOr<Caller> c = Authenticate(ctx);
  absl::Status s = c.status();
  if (s.ok() && static_cast<size_t>(request->pages_size()) > options_.max_read_pages) {
    s = absl::InvalidArgumentError(StrCat(request->pages_size(), " pages; at most ",
                                          options_.max_read_pages, " per ReadPages call"));
  }
  for (int i = 0; s.ok() && i < request->pages_size(); ++i) {
    s = ParseKey(request->pages(i).key(), StrCat("pages[", i, "].key")).status();
  }
  if (s.ok() && !request->lease_id().empty()) {
    kv::MutexLock l(&mu_);
    ReapLeasesLocked(clock_->Now());
    auto it = leases_.find(request->lease_id());
    if (it == leases_.end() || it->second.tenant != c->tenant) s = LeaseGone(request->lease_id());
  }
  if (!s.ok()) {
    Count("ReadPages", s);
    class Failed final : public grpc::ServerWriteReactor<pb::PageChunk> {
     public:
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(s);
  }
  uint32_t chunk = request->max_chunk_bytes();
  if (chunk == 0) chunk = options_.default_chunk_bytes;
  chunk = std::clamp(chunk, options_.min_chunk_bytes, options_.max_chunk_bytes);
  auto* r = new ReadPagesReactor(this, *std::move(c), *request, chunk);
  r->Start();
  return r;
}

// ---- WritePages -------------------------------------------------------------------------------

pb::PageWriteResult PageStoreService::Reject(const BlockKey& key, absl::Status why,
                                             std::string_view reason) {
  metrics_
      ->GetCounter("kvstrata_pagestore_pages_rejected_total",
                   "Pages PageStore.WritePages rejected, by reason",
                   {{"reason", absl::AsciiStrToLower(std::string(reason))}})
      ->Inc();
  pb::PageWriteResult r;
  r.set_key(KeyBytes(key));
  r.set_outcome(pb::WRITE_OUTCOME_REJECTED);
  pb::ErrorInfo* e = r.mutable_error();
  *e = ToErrorInfo(why);
  e->set_reason(std::string(reason));
  e->set_node_id(options_.node_id);
  e->set_key(KeyBytes(key));
  return r;
}

pb::PageWriteResult PageStoreService::PublishPage(const Caller& c, const pb::WriteOptions& o,
                                                  const BlockKey& key, std::string bytes,
                                                  PageRole resume_role) {
  const std::span<const uint8_t> page(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  absl::StatusOr<PageView> view = DecodePage(page);
  if (!view.ok()) {
    if (absl::IsDataLoss(view.status())) {
      return Reject(key, view.status(), "PAGE_CHECKSUM_MISMATCH");
    }
    uint16_t code = 0;
    if (bytes.size() >= 12) std::memcpy(&code, bytes.data() + 10, 2);
    absl::StatusOr<LayoutInfo> layout = LookupLayout(code);
    const bool unknown = !layout.ok() || !layout->supported;
    return Reject(key, view.status(), unknown ? "UNKNOWN_LAYOUT" : "MALFORMED_PAGE");
  }
  const PageHeader& h = view->header();
  if (h.key != key) {
    return Reject(key, absl::InvalidArgumentError(StrCat("the page header's key is ", h.key.Hex())),
                  "KEY_MISMATCH");
  }
  const pb::KeySpace& ks = o.key_space();
  if (h.layout.name != ks.layout() ||
      (ks.page_tokens() != 0 && h.token_count != ks.page_tokens())) {
    return Reject(
        key,
        absl::InvalidArgumentError(StrCat("page is ", h.layout.name, " with ", h.token_count,
                                          " tokens; the stream's key space is ", ks.layout(),
                                          " with ", ks.page_tokens(), " tokens per page")),
        "KEY_SPACE_MISMATCH");
  }
  const std::string& ns = o.shared_namespace() ? SharedNs() : c.ns;
  bool fresh = false;
  {
    kv::MutexLock l(&mu_);
    if (!h.parent.IsZero()) {
      auto p = dir_.find(h.parent);
      const bool may_chain =
          p != dir_.end() && (p->second.ns == SharedNs() || (p->second.ns == c.ns && ns == c.ns));
      if (!may_chain) {
        return Reject(key,
                      absl::FailedPreconditionError(StrCat("parent block ", h.parent.Hex(),
                                                           " is not cached on ", options_.node_id)),
                      "PARENT_MISSING");
      }
    }
    auto it = dir_.find(key);
    if (it != dir_.end() && it->second.ns != ns) {
      if (it->second.ns == c.ns || it->second.ns == SharedNs()) {  // readable by the caller
        pb::PageWriteResult r;
        r.set_key(KeyBytes(key));
        r.set_outcome(pb::WRITE_OUTCOME_ALREADY_PRESENT);
        return r;
      }
      return Reject(key,
                    absl::FailedPreconditionError(
                        "this key is held under another namespace; keys must be derived in the "
                        "caller's namespace (or shared)"),
                    "NAMESPACE_CONFLICT");
    }
    fresh = it == dir_.end();
    DirEntry& e = dir_[key];
    e.ns = ns;
    e.size = bytes.size();
    e.header_known = true;
    e.token_count = h.token_count;
    e.first_layer = h.first_layer;
    e.layer_count = h.layer_count;
    e.has_resume = HasResume(h);
    ++e.writers;
  }
  PageMeta meta;
  meta.key = key;
  meta.parent = h.parent;
  meta.ns = ns;
  meta.layout = std::string(h.layout.name);
  meta.size = bytes.size();
  meta.resume_role = resume_role;
  std::optional<absl::Duration> retention;
  if (o.has_retention_ttl()) retention = FromProto(o.retention_ttl());
  absl::Status s = store_->Publish(meta, page, retention);
  {
    kv::MutexLock l(&mu_);
    auto it = dir_.find(key);
    if (it != dir_.end()) {
      --it->second.writers;
      // A page the store held before this service knew it: its namespace is unknown.
      const bool forget = fresh && !s.ok();
      if (forget && it->second.writers == 0) dir_.erase(it);
    }
  }
  pb::PageWriteResult r;
  r.set_key(KeyBytes(key));
  if (s.ok()) {
    bytes_written_->Inc(static_cast<double>(bytes.size()));
    r.set_outcome(pb::WRITE_OUTCOME_STORED);
    return r;
  }
  if (absl::IsAlreadyExists(s)) {
    if (fresh) {
      return Reject(key, absl::FailedPreconditionError("this key is held under another namespace"),
                    "NAMESPACE_CONFLICT");
    }
    r.set_outcome(pb::WRITE_OUTCOME_ALREADY_PRESENT);
    return r;
  }
  if (absl::IsResourceExhausted(s)) return Reject(key, s, "STORE_FULL");
  if (absl::IsFailedPrecondition(s)) return Reject(key, s, "PARENT_MISSING");
  if (absl::IsDataLoss(s)) return Reject(key, s, "PAGE_CHECKSUM_MISMATCH");
  log::Warn("pagestore_publish_failed", "key", key.Hex(), "error", s.ToString());
  return Reject(key, s, "STORE_ERROR");
}

grpc::ServerReadReactor<pb::WritePagesRequest>* PageStoreService::WritePages(
    grpc::CallbackServerContext* ctx, pb::WritePagesResponse* response) {
  absl::StatusOr<Caller> c = Authenticate(ctx);
  if (!c.ok()) {
    Count("WritePages", c.status());
    class Failed final : public grpc::ServerReadReactor<pb::WritePagesRequest> {
     public:
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(c.status());
  }
  return new WritePagesReactor(this, *std::move(c), response);
}

// ---- GetTransportInfo -------------------------------------------------------------------------

grpc::ServerUnaryReactor* PageStoreService::GetTransportInfo(
    grpc::CallbackServerContext* ctx, const pb::GetTransportInfoRequest* request,
    pb::GetTransportInfoResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    RETURN_IF_ERROR(Authenticate(ctx).status());
    response->set_node_id(options_.node_id);
    response->set_max_transfer_bytes(options_.max_transfer_bytes != 0 ? options_.max_transfer_bytes
                                                                      : options_.max_page_bytes);
    if (options_.transport_info) RETURN_IF_ERROR(options_.transport_info(response));
    return absl::OkStatus();
  }();
  Count("GetTransportInfo", s);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

}  // namespace kv::cluster
