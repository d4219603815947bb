// PageRmaClient: the two-phase write (reserve staging, put, seal) and its gRPC fallback.
#include "cluster/grpc_status.h"
#include "cluster/page_store_rma.h"
#include "cluster/page_store_wire.h"
#include "cluster/proto_convert.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;
using wire::KeyBytes;

namespace {

absl::Status FromErrorInfo(const pb::ErrorInfo& e) {
  return WithErrorInfo(absl::Status(static_cast<absl::StatusCode>(e.code()), e.message()), e);
}

}  // namespace

absl::StatusOr<RmaWriteResult> PageRmaClient::WriteOverGrpc(const pb::WriteOptions& options,
                                                            std::span<const RmaPageToWrite> pages,
                                                            RegisteredBuffer buffer) {
  std::vector<PageStoreClient::PageToWrite> writes;
  for (const RmaPageToWrite& p : pages) {
    writes.push_back({p.key, buffer.bytes.subspan(p.offset, p.size), p.resume_role});
  }
  RmaWriteResult r;
  r.path = PagePath::kGrpc;
  ASSIGN_OR_RETURN(r.results, rpc_->WritePages(options, writes));
  return r;
}

absl::StatusOr<RmaWriteResult> PageRmaClient::StageAndSeal(const pb::WriteOptions& options,
                                                           std::span<const RmaPageToWrite> pages,
                                                           RegisteredBuffer buffer,
                                                           transport::PeerId peer,
                                                           absl::Time deadline) {
  pb::ReserveStagingRequest req;
  for (const RmaPageToWrite& p : pages) {
    pb::StagedPageSpec* s = req.add_pages();
    s->set_key(KeyBytes(p.key));
    s->set_page_bytes(p.size);
  }
  SetDuration(options_.lease, req.mutable_lease());
  ASSIGN_OR_RETURN(pb::ReserveStagingResponse staged, rpc_->ReserveStaging(req));
  absl::Status s = [&]() -> absl::Status {
    if (staged.regions_size() != static_cast<int>(pages.size())) {
      return absl::InternalError(StrCat("ReserveStaging answered ", staged.regions_size(),
                                        " regions for ", pages.size(), " pages"));
    }
    std::vector<transport::TransferOp> ops;
    for (size_t i = 0; i < pages.size(); ++i) {
      const pb::RemoteRegion& r = staged.regions(static_cast<int>(i));
      if (r.length() != pages[i].size || r.address() < r.region_address()) {
        return absl::InternalError("ReserveStaging answered a region that does not fit its page");
      }
      ASSIGN_OR_RETURN(transport::RemoteRegionId id, Import(peer, r.remote_key()));
      ops.push_back(
          {buffer.region, pages[i].offset, id, r.address() - r.region_address(), pages[i].size});
    }
    return Transfer(peer, transport::OpKind::kWrite, std::move(ops),
                    std::min(deadline, FromTimestamp(staged.deadline())));
  }();
  if (!s.ok()) {
    // Nothing was sealed, so nothing is visible; the staged space expires if this fails too.
    rpc_->AbortStaged(staged.lease_id()).IgnoreError();
    return s;
  }
  pb::SealStagedRequest seal;
  seal.set_lease_id(staged.lease_id());
  *seal.mutable_options() = options;
  for (const RmaPageToWrite& p : pages) seal.add_resume_roles(ToProto(p.resume_role));
  ASSIGN_OR_RETURN(pb::SealStagedResponse sealed, rpc_->SealStaged(seal));
  RmaWriteResult out;
  out.path = PagePath::kUcx;
  for (const pb::PageWriteResult& w : sealed.results()) {
    absl::StatusOr<BlockKey> key = wire::ParseKey(w.key(), "sealed key");
    if (!key.ok()) return absl::InternalError("SealStaged answered a malformed key");
    PageStoreClient::WriteResult r{.key = *key, .outcome = w.outcome()};
    if (w.outcome() == pb::WRITE_OUTCOME_REJECTED) r.error = FromErrorInfo(w.error());
    out.results.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<RmaWriteResult> PageRmaClient::WritePagesFrom(const pb::WriteOptions& options,
                                                             std::span<const RmaPageToWrite> pages,
                                                             RegisteredBuffer buffer,
                                                             absl::Time deadline) {
  if (pages.empty()) return absl::InvalidArgumentError("WritePagesFrom: no pages");
  for (const RmaPageToWrite& p : pages) {
    if (p.size == 0 || p.offset > buffer.bytes.size() || p.size > buffer.bytes.size() - p.offset) {
      return absl::InvalidArgumentError(StrCat("page ", p.key.Hex(), " [", p.offset, ", +", p.size,
                                               ") is empty or outside the buffer of ",
                                               buffer.bytes.size(), " bytes"));
    }
  }
  absl::StatusOr<transport::PeerId> peer = Peer(deadline);
  if (!peer.ok()) {
    log::Info("rma_write_fallback", "error", peer.status().ToString());
    return WriteOverGrpc(options, pages, buffer);
  }
  absl::StatusOr<RmaWriteResult> r = StageAndSeal(options, pages, buffer, *peer, deadline);
  if (absl::IsFailedPrecondition(r.status())) {  // the store has no staging memory
    log::Info("rma_write_fallback", "error", r.status().ToString());
    return WriteOverGrpc(options, pages, buffer);
  }
  return r;
}

}  // namespace kv::cluster
