// PageStoreService: the RMA data path's calls (page_store_service.h "RMA data path"): regions
// of the pages PinBlocks lends, and the staged two-phase write (ReserveStaging, SealStaged,
// AbortStaged) over kv::StagingArea. Policy stays in kvstore/; this file converts.
#include <utility>

#include "cluster/grpc_status.h"
#include "cluster/page_store_service.h"
#include "cluster/page_store_wire.h"
#include "cluster/proto_convert.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;
using wire::FromPageStore;
using wire::KeyBytes;

namespace {

grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, const absl::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

void SetRegion(const RegisteredMemory& m, std::span<const uint8_t> page, pb::RemoteRegion* out) {
  out->set_transport(m.transport);
  out->set_address(reinterpret_cast<uint64_t>(page.data()));
  out->set_length(page.size());
  out->set_remote_key(m.packed_key);
  out->set_region_address(reinterpret_cast<uint64_t>(m.base));
}

AdmitOptions AdmitOptionsOf(const pb::WriteOptions& o) {
  AdmitOptions a{.layout = o.key_space().layout(),
                 .page_tokens = o.key_space().page_tokens(),
                 .shared_namespace = o.shared_namespace()};
  if (o.has_retention_ttl()) a.retention = FromProto(o.retention_ttl());
  return a;
}

}  // namespace

absl::Status PageStoreService::LendPinned(const PageStoreCaller& c,
                                          std::span<const BlockKey> pinned,
                                          pb::PinBlocksResponse* resp) {
  if (options_.tier_memory.empty()) return absl::OkStatus();  // pinned, read with ReadPages
  absl::StatusOr<std::vector<LentPage>> lent = pages_.Lend(c, resp->lease_id(), pinned);
  if (!lent.ok()) return FromPageStore(lent.status());
  for (size_t i = 0; i < lent->size(); ++i) {
    const LentPage& p = (*lent)[i];
    for (const RegisteredMemory& m : options_.tier_memory) {
      if (!m.Contains(p.bytes)) continue;
      pb::PinnedBlock* b = resp->mutable_pinned(static_cast<int>(i));
      b->set_tier(ToProto(p.tier));
      SetRegion(m, p.bytes, b->mutable_region());
      break;
    }
  }
  if (options_.beacons == nullptr || lent->empty()) return absl::OkStatus();
  absl::StatusOr<std::optional<Beacon>> beacon = pages_.LeaseBeacon(c, resp->lease_id());
  if (!beacon.ok()) return FromPageStore(beacon.status());
  if (beacon->has_value()) {  // none free: the reader confirms with UnpinBlocks instead
    const uint8_t* word =
        options_.beacons->memory().data() + LeaseBeacons::OffsetOf((*beacon)->slot);
    SetRegion(options_.beacon_memory, {word, sizeof(uint64_t)}, resp->mutable_beacon());
    resp->set_beacon_nonce((*beacon)->nonce);
  }
  return absl::OkStatus();
}

absl::Status PageStoreService::DoReserve(const PageStoreCaller& c,
                                         const pb::ReserveStagingRequest& req,
                                         pb::ReserveStagingResponse* resp) {
  if (options_.staging == nullptr) {
    return absl::FailedPreconditionError(
        StrCat(options_.node_id, " has no registered staging memory; write with WritePages"));
  }
  if (static_cast<size_t>(req.pages_size()) > options_.max_read_pages) {
    return absl::InvalidArgumentError(
        StrCat(req.pages_size(), " pages to stage; at most ", options_.max_read_pages));
  }
  std::vector<StagedSlot> slots;
  for (const pb::StagedPageSpec& p : req.pages()) {
    ASSIGN_OR_RETURN(BlockKey key, wire::ParseKey(p.key(), "staged page key"));
    slots.push_back({key, p.page_bytes()});
  }
  std::optional<absl::Duration> lease;
  if (req.has_lease()) lease = FromProto(req.lease());
  absl::StatusOr<StagingLease> l = options_.staging->Reserve(c, std::move(slots), lease);
  if (!l.ok()) return FromPageStore(l.status());
  resp->set_lease_id(l->lease_id);
  SetTimestamp(l->deadline, resp->mutable_deadline());
  for (const StagedSlot& s : l->slots) {
    SetRegion(options_.staging_memory, {options_.staging->base() + s.offset, s.size},
              resp->add_regions());
  }
  return absl::OkStatus();
}

absl::Status PageStoreService::DoSeal(const PageStoreCaller& c, const pb::SealStagedRequest& req,
                                      pb::SealStagedResponse* resp) {
  if (options_.staging == nullptr) {
    return absl::FailedPreconditionError(
        StrCat(options_.node_id, " has no registered staging memory; write with WritePages"));
  }
  std::vector<PageRole> roles;
  for (int r : req.resume_roles()) {
    roles.push_back(FromProto(pb::ResumeRole_IsValid(r) ? static_cast<pb::ResumeRole>(r)
                                                        : pb::RESUME_ROLE_UNSPECIFIED));
  }
  // Staged leases carry the keys; Seal admits each slot in order.
  absl::StatusOr<std::vector<StagedAdmit>> admitted =
      options_.staging->Seal(pages_, c, req.lease_id(), AdmitOptionsOf(req.options()), roles);
  if (!admitted.ok()) return FromPageStore(admitted.status());
  uint64_t stored = 0;
  for (StagedAdmit& a : *admitted) {
    if (a.result.outcome == AdmitOutcome::kStored) stored += a.slot.size;
    *resp->add_results() = WriteResultOf(a.slot.key, std::move(a.result), a.slot.size);
  }
  resp->set_bytes_stored(stored);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PageStoreService::ReserveStaging(grpc::CallbackServerContext* ctx,
                                                           const pb::ReserveStagingRequest* request,
                                                           pb::ReserveStagingResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(PageStoreCaller c, Authenticate(ctx));
    return DoReserve(c, *request, response);
  }();
  Count("ReserveStaging", s);
  return Finish(ctx, s);
}

// Admission verifies every page (checksums over megabytes): it runs on the I/O pool, not on
// gRPC's callback thread.
grpc::ServerUnaryReactor* PageStoreService::SealStaged(grpc::CallbackServerContext* ctx,
                                                       const pb::SealStagedRequest* request,
                                                       pb::SealStagedResponse* response) {
  bool node = false;
  absl::StatusOr<PageStoreCaller> c = Authenticate(ctx, &node);
  if (c.ok() && request->options().shared_namespace() && !node) c = wire::SharedWriteDenied();
  if (!c.ok()) {
    Count("SealStaged", c.status());
    return Finish(ctx, c.status());
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const bool scheduled =
      threads_->Schedule([this, reactor, caller = *std::move(c), request, response] {
        absl::Status s = DoSeal(caller, *request, response);
        Count("SealStaged", s);
        reactor->Finish(ToGrpcStatus(s));
      });
  if (!scheduled)
    reactor->Finish(ToGrpcStatus(absl::UnavailableError("page store is shutting down")));
  return reactor;
}

grpc::ServerUnaryReactor* PageStoreService::AbortStaged(grpc::CallbackServerContext* ctx,
                                                        const pb::AbortStagedRequest* request,
                                                        pb::AbortStagedResponse* response) {
  absl::Status s = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(PageStoreCaller c, Authenticate(ctx));
    if (options_.staging != nullptr) {
      response->set_released(options_.staging->Abort(c, request->lease_id()));
    }
    return absl::OkStatus();
  }();
  Count("AbortStaged", s);
  return Finish(ctx, s);
}

}  // namespace kv::cluster
