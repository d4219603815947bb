#include "cluster/page_store_service.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "cluster/grpc_status.h"
#include "cluster/page_store_wire.h"
#include "cluster/proto_convert.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;
using wire::FromPageStore;
using wire::KeyBytes;
using wire::Tagged;

namespace {

PageStoreOptions StoreOptions(const PageStoreServiceOptions& o, MetricsRegistry* metrics) {
  return {.node_id = o.node_id,
          .clock = o.clock,
          .metrics = metrics,
          .max_page_bytes = o.max_page_bytes,
          .default_lease = o.default_lease,
          .max_lease = o.max_lease,
          .max_leases_per_tenant = o.max_leases_per_tenant,
          .beacons = o.beacons};
}

// Answers a unary call with `s`.
grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, const absl::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

}  // namespace

PageStoreService::PageStoreService(TieredStore* store, TenantAuth auth,
                                   PageStoreServiceOptions options)
    : auth_(std::move(auth)),
      options_(std::move(options)),
      metrics_(options_.metrics ? options_.metrics : &MetricsRegistry::Default()),
      bytes_read_(metrics_->GetCounter("kvstrata_pagestore_read_bytes_total",
                                       "Page bytes sent by PageStore.ReadPages")),
      bytes_written_(metrics_->GetCounter("kvstrata_pagestore_written_bytes_total",
                                          "Page bytes stored by PageStore.WritePages")),
      pages_(store, StoreOptions(options_, metrics_)),
      started_(absl::Now()),
      threads_(std::make_unique<ThreadPool>(std::max(1, options_.io_threads))) {}

PageStoreService::~PageStoreService() { threads_.reset(); }  // then pages_ releases every lease

absl::StatusOr<PageStoreCaller> PageStoreService::Authenticate(grpc::CallbackServerContext* ctx,
                                                               bool* node) const {
  ASSIGN_OR_RETURN(CallIdentity id, IdentifyCall(auth_, ctx));
  if (node != nullptr) *node = id.node;
  return PageStoreCaller::Tenant(id.tenant);
}

void PageStoreService::Count(std::string_view rpc, const absl::Status& status) {
  metrics_
      ->GetCounter("kvstrata_pagestore_requests_total", "PageStore calls by RPC and status code",
                   {{"rpc", std::string(rpc)}, {"code", absl::StatusCodeToString(status.code())}})
      ->Inc();
}

grpc::ServerUnaryReactor* PageStoreService::GetNodeStats(grpc::CallbackServerContext* ctx,
                                                         const pb::GetNodeStatsRequest* request,
                                                         pb::NodeStats* response) {
  absl::Status s = RequireNode(auth_, ctx, "PageStore.GetNodeStats").status();
  if (s.ok()) {
    response->set_node_id(options_.node_id);
    FillStoreStats(pages_.store().Stats(), /*cost=*/nullptr, response);
    SetDuration(absl::Now() - started_, response->mutable_uptime());
  }
  Count("GetNodeStats", s);
  return Finish(ctx, s);
}

// ---- LookupBlocks -----------------------------------------------------------------------------

absl::Status PageStoreService::DoLookup(const PageStoreCaller& c,
                                        const pb::LookupBlocksRequest& req,
                                        pb::LookupBlocksResponse* resp) {
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   wire::ParseKeys(req.keys(), options_.max_lookup_keys));
  resp->set_node_id(options_.node_id);
  PageLookupOptions o;
  bool filtered = false;  // a filter of only unknown tiers matches nothing
  for (int t : req.tiers()) {
    if (t == pb::TIER_UNSPECIFIED) continue;
    filtered = true;
    if (pb::Tier_IsValid(t)) o.tiers.push_back(FromProto(static_cast<pb::Tier>(t)));
  }
  if (filtered && o.tiers.empty()) keys.clear();
  const std::vector<VisibleBlock> blocks = pages_.Lookup(c, keys, o);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const VisibleBlock& b = blocks[i];
    pb::BlockLocation* loc = resp->add_blocks();
    loc->set_key(KeyBytes(keys[i]));
    loc->set_tier(ToProto(b.tier));
    loc->set_page_bytes(b.size);
    loc->set_token_count(b.geometry.token_count);
    loc->mutable_layers()->set_begin(b.geometry.first_layer);
    loc->mutable_layers()->set_end(b.geometry.first_layer + b.geometry.layer_count);
    loc->set_has_resume(b.has_resume);
  }
  resp->set_prefix_blocks(static_cast<uint32_t>(blocks.size()));
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PageStoreService::LookupBlocks(grpc::CallbackServerContext* ctx,
                                                         const pb::LookupBlocksRequest* request,
                                                         pb::LookupBlocksResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(PageStoreCaller c, Authenticate(ctx));
    return DoLookup(c, *request, response);
  }();
  Count("LookupBlocks", s);
  return Finish(ctx, s);
}

// ---- PinBlocks / UnpinBlocks ------------------------------------------------------------------

absl::Status PageStoreService::DoPin(const PageStoreCaller& c, const pb::PinBlocksRequest& req,
                                     pb::PinBlocksResponse* resp) {
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   wire::ParseKeys(req.keys(), options_.max_lookup_keys));
  if (req.promote_to() != pb::TIER_UNSPECIFIED && req.promote_to() != pb::TIER_HOST) {
    return absl::UnimplementedError(
        "promote_to supports TIER_HOST only (pages are lent from registered host memory)");
  }
  std::optional<absl::Duration> lease;
  if (req.has_lease()) lease = FromProto(req.lease());
  absl::StatusOr<PinResult> r = pages_.Pin(c, keys, lease, req.lease_id());
  if (!r.ok()) return FromPageStore(r.status());
  if (!r->lease_id.empty()) {
    resp->set_lease_id(r->lease_id);
    SetTimestamp(r->deadline, resp->mutable_deadline());
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i < r->tiers.size()) {
      pb::PinnedBlock* b = resp->add_pinned();
      b->set_key(KeyBytes(keys[i]));
      b->set_tier(ToProto(r->tiers[i]));
    } else {
      resp->add_missing(KeyBytes(keys[i]));
    }
  }
  if (req.promote_to() == pb::TIER_HOST && !r->tiers.empty()) {
    return LendPinned(c, std::span<const BlockKey>(keys).first(r->tiers.size()), resp);
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PageStoreService::PinBlocks(grpc::CallbackServerContext* ctx,
                                                      const pb::PinBlocksRequest* request,
                                                      pb::PinBlocksResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(PageStoreCaller c, Authenticate(ctx));
    return DoPin(c, *request, response);
  }();
  Count("PinBlocks", s);
  return Finish(ctx, s);
}

absl::StatusOr<uint32_t> PageStoreService::DoUnpin(const PageStoreCaller& c,
                                                   const pb::UnpinBlocksRequest& req) {
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   wire::ParseKeys(req.keys(), options_.max_lookup_keys));
  return pages_.Unpin(c, req.lease_id(), keys);
}

grpc::ServerUnaryReactor* PageStoreService::UnpinBlocks(grpc::CallbackServerContext* ctx,
                                                        const pb::UnpinBlocksRequest* request,
                                                        pb::UnpinBlocksResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(PageStoreCaller c, Authenticate(ctx));
    ASSIGN_OR_RETURN(uint32_t released, DoUnpin(c, *request));
    response->set_released(released);
    return absl::OkStatus();
  }();
  Count("UnpinBlocks", s);
  return Finish(ctx, s);
}

// ---- one page of ReadPages / WritePages -------------------------------------------------------

PageStoreService::LoadedPage PageStoreService::LoadPage(const PageStoreCaller& c,
                                                        const pb::PageSelector& sel,
                                                        const std::string& lease_id) {
  LoadedPage out;
  out.status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(BlockKey key, wire::ParseKey(sel.key(), "page key"));
    if (sel.sections_size() > 0) {
      return Tagged(absl::UnimplementedError("section reads are not supported; read whole pages"),
                    "UNSUPPORTED_SELECTOR");
    }
    absl::StatusOr<std::vector<uint8_t>> bytes = pages_.Read(c, key, lease_id);
    if (!bytes.ok()) return FromPageStore(bytes.status());
    out.bytes = *std::move(bytes);
    ASSIGN_OR_RETURN(PageHeader hdr, DecodePageHeader(out.bytes));
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
  if (!out.status.ok()) std::vector<uint8_t>().swap(out.bytes);
  return out;
}

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

pb::PageWriteResult PageStoreService::PublishPage(const PageStoreCaller& c,
                                                  const pb::WriteOptions& o, const BlockKey& key,
                                                  const std::string& bytes, PageRole resume_role,
                                                  std::string engine_block_hash) {
  AdmitOptions admit{.layout = o.key_space().layout(),
                     .page_tokens = o.key_space().page_tokens(),
                     .shared_namespace = o.shared_namespace(),
                     .resume_role = resume_role,
                     .engine_block_hash = std::move(engine_block_hash)};
  if (o.has_retention_ttl()) admit.retention = FromProto(o.retention_ttl());
  const std::span<const uint8_t> page(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return WriteResultOf(key, pages_.Admit(c, key, page, admit), bytes.size());
}

pb::PageWriteResult PageStoreService::WriteResultOf(const BlockKey& key, AdmitResult a,
                                                    uint64_t size) {
  pb::PageWriteResult r;
  r.set_key(KeyBytes(key));
  switch (a.outcome) {
    case AdmitOutcome::kStored:
      bytes_written_->Inc(static_cast<double>(size));
      r.set_outcome(pb::WRITE_OUTCOME_STORED);
      return r;
    case AdmitOutcome::kAlreadyPresent:
      r.set_outcome(pb::WRITE_OUTCOME_ALREADY_PRESENT);
      return r;
    case AdmitOutcome::kRejected:
      break;
  }
  const PageStoreReason reason = ReasonOf(a.error);
  return Reject(key, std::move(a.error),
                reason == PageStoreReason::kNone ? "STORE_ERROR" : ReasonName(reason));
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
    std::vector<RegisteredMemory> regions = options_.tier_memory;
    if (options_.staging != nullptr) regions.push_back(options_.staging_memory);
    for (const RegisteredMemory& m : regions) {
      pb::RegisteredRegion* r = response->add_regions();
      r->set_tier(m.tier);
      r->set_transport(m.transport);
      r->set_address(reinterpret_cast<uint64_t>(m.base));
      r->set_length(m.length);
      r->set_remote_key(m.packed_key);
    }
    return absl::OkStatus();
  }();
  Count("GetTransportInfo", s);
  return Finish(ctx, s);
}

}  // namespace kv::cluster
