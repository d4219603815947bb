#include "cluster/page_store_client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "cluster/tenants.h"
#include "cluster/transport_security.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "core/thread_pool.h"
#include "kvstore/page_format.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

namespace {

std::string KeyBytes(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

std::optional<BlockKey> KeyFrom(const std::string& bytes) {
  BlockKey k;
  if (bytes.size() != k.bytes.size()) return std::nullopt;
  std::memcpy(k.bytes.data(), bytes.data(), k.bytes.size());
  return k;
}

// The status an ErrorInfo of a stream item describes.
absl::Status FromErrorInfo(const pb::ErrorInfo& e) {
  absl::StatusCode code = static_cast<absl::StatusCode>(e.code());
  if (e.code() <= 0 || e.code() > 16) code = absl::StatusCode::kUnknown;
  absl::Status s = WithErrorInfo(absl::Status(code, e.message()), e);
  return e.retryable() ? MarkRetryable(std::move(s)) : s;
}

// Reassembles the pages of a ReadPages stream (see the header for what is checked).
class PageAssembler {
 public:
  explicit PageAssembler(std::span<const BlockKey> keys) : keys_(keys) {
    out_.resize(keys.size(), {BlockKey(), absl::InternalError("page not received")});
    for (size_t i = 0; i < keys.size(); ++i) out_[i].key = keys[i];
  }

  // A protocol violation ends the call. `c`'s data may be moved out.
  absl::Status Add(pb::PageChunk& c) {
    if (!in_page_) {
      if (c.page_index() != next_ || next_ >= keys_.size()) {
        return absl::InternalError(
            StrCat("ReadPages stream sent page ", c.page_index(), ", expected page ", next_));
      }
      if (KeyFrom(c.key()) != keys_[next_]) {
        return absl::InternalError(StrCat("ReadPages chunk of page ", next_, " has another key"));
      }
      if (c.has_error()) {
        out_[next_++].page = FromErrorInfo(c.error());
        return absl::OkStatus();
      }
      in_page_ = true;
      total_ = c.total_bytes();
      received_ = 0;
      header_ = c.page_header();
      bad_ = absl::OkStatus();
      buf_.clear();
      if (total_ == 0 || total_ > kMaxPage) {
        Bad(absl::DataLossError(StrCat("page of ", total_, " bytes announced")));
      } else if (c.data().size() < total_) {  // a one-chunk page is moved in whole below
        buf_.reserve(total_);
      }
    } else if (c.page_index() != next_) {
      return absl::InternalError(StrCat("ReadPages chunk of page ", c.page_index(),
                                        " before the last chunk of page ", next_));
    }
    if (c.offset() != received_) {
      return absl::InternalError(StrCat("ReadPages chunk of page ", next_, " at offset ",
                                        c.offset(), ", expected ", received_));
    }
    std::string& d = *c.mutable_data();
    const size_t n = d.size();
    if (c.total_bytes() != total_) {
      Bad(absl::DataLossError("total_bytes changed within the page"));
    } else if (Xxh3_64(d.data(), n) != c.data_xxh3()) {
      Bad(absl::DataLossError(StrCat("chunk at offset ", c.offset(), " fails its XXH3 checksum")));
    } else if (received_ + n > total_) {
      Bad(absl::DataLossError("chunks exceed total_bytes"));
    } else if (bad_.ok() && received_ == 0 && n == total_) {
      buf_.swap(d);  // the whole page in one chunk: no copy
    } else if (bad_.ok()) {
      buf_.append(d);
    }
    received_ += n;
    if (c.last()) Complete();
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<PageStoreClient::PageRead>> Finish() {
    if (in_page_ || next_ != keys_.size()) {
      return absl::InternalError(
          StrCat("ReadPages stream ended after ", next_, " of ", keys_.size(), " pages"));
    }
    return std::move(out_);
  }

 private:
  static constexpr uint64_t kMaxPage = 1ull << 30;

  void Bad(absl::Status s) {
    if (bad_.ok()) bad_ = std::move(s);
    std::string().swap(buf_);
  }

  void Complete() {
    const BlockKey& key = keys_[next_];
    if (bad_.ok() && received_ != total_) {
      Bad(absl::DataLossError(StrCat("page ended at ", received_, " of ", total_, " bytes")));
    }
    if (bad_.ok()) {
      const std::span<const uint8_t> page(reinterpret_cast<const uint8_t*>(buf_.data()),
                                          buf_.size());
      absl::StatusOr<PageView> v = DecodePage(page);
      if (!v.ok()) {
        Bad(absl::DataLossError(StrCat("page fails verification: ", v.status().message())));
      } else if (v->header().key != key) {
        Bad(absl::DataLossError(StrCat("page header names key ", v->header().key.Hex())));
      } else if (buf_.compare(0, header_.size(), header_) != 0 ||
                 header_.size() != v->header().header_bytes()) {
        Bad(absl::DataLossError("page_header differs from the page's header bytes"));
      }
    }
    if (bad_.ok()) {
      out_[next_].page = std::move(buf_);
    } else {
      out_[next_].page = WithErrorInfo(bad_, [&] {
        pb::ErrorInfo e;
        e.set_reason("PAGE_CORRUPTED_IN_TRANSIT");
        e.set_key(KeyBytes(key));
        return e;
      }());
    }
    buf_ = std::string();
    in_page_ = false;
    ++next_;
  }

  std::span<const BlockKey> keys_;
  std::vector<PageStoreClient::PageRead> out_;
  size_t next_ = 0;
  bool in_page_ = false;
  uint64_t total_ = 0, received_ = 0;
  std::string header_, buf_;
  absl::Status bad_;
};

}  // namespace

absl::Status FromPageStoreStatus(const grpc::Status& status) {
  absl::Status s = FromGrpcStatus(status);
  if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)) s = MarkRetryable(std::move(s));
  return s;
}

PageStoreClient::PageStoreClient(std::shared_ptr<grpc::Channel> channel, std::string token,
                                 absl::Duration timeout, std::string acting_tenant)
    : channel_(std::move(channel)),
      stub_(pb::PageStore::NewStub(channel_)),
      token_(std::move(token)),
      acting_tenant_(std::move(acting_tenant)),
      timeout_(timeout) {}

PageStoreClient::~PageStoreClient() {
  // Runs the unpins still queued (each bounded by the client's timeout), then joins.
  absl::MutexLock l(&unpin_mu_);
  unpinner_.reset();
}

// A thread of the client's own sends them (made on first use). gRPC's callback API was tried
// first: its completion runs on gRPC's thread after the callback returns, and a client
// destroyed right after the callback counted the call as done crashed gRPC 1.51 (a refcount
// assertion) about one run in five.
void PageStoreClient::UnpinAsync(const std::string& lease_id) {
  ThreadPool* pool = nullptr;
  {
    absl::MutexLock l(&unpin_mu_);
    if (unpinner_ == nullptr) unpinner_ = std::make_unique<ThreadPool>(1);
    pool = unpinner_.get();
  }
  const bool queued = pool->Schedule([this, lease_id] {
    absl::StatusOr<uint32_t> r = Unpin(lease_id);
    if (!r.ok()) log::Info("unpin_async_failed", "lease", lease_id, "error", r.status().ToString());
  });
  if (!queued) Unpin(lease_id).IgnoreError();
}

std::shared_ptr<grpc::Channel> PageStoreChannel(const std::string& address,
                                                const TransportSecurity* security) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Its own connection (not one shared with other channels to the same store), and an initial
  // HTTP/2 stream window that lets a whole page through at once (gRPC caps it at 4 MiB): with
  // the default 64 KiB window, grown by updates of at most 1 MiB, a 2.56 MB page waited for
  // three window updates, a round trip each. Socket reads of 1 MiB instead of 8 KiB.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
  args.SetInt(GRPC_ARG_TCP_READ_CHUNK_SIZE, 1 << 20);
  return NewChannel(address, args, security);
}

absl::StatusOr<std::unique_ptr<PageStoreClient>> PageStoreClient::Connect(
    const std::string& address, std::string token, absl::Duration timeout,
    absl::Duration connect_timeout) {
  if (address.empty()) return absl::InvalidArgumentError("no page store address (HOST:PORT)");
  std::shared_ptr<grpc::Channel> channel = PageStoreChannel(address);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + connect_timeout))) {
    return MarkRetryable(absl::UnavailableError(StrCat(
        "no page store answered at ", address, " within ", absl::FormatDuration(connect_timeout))));
  }
  return std::make_unique<PageStoreClient>(std::move(channel), std::move(token), timeout);
}

void PageStoreClient::Prepare(grpc::ClientContext* ctx) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
  // Not AddNodeCredential: the client library links this file without tenants.cc.
  if (!token_.empty()) ctx->AddMetadata("authorization", StrCat("Bearer ", token_));
  if (!acting_tenant_.empty()) ctx->AddMetadata(kTenantHeader, acting_tenant_);
}

absl::StatusOr<pb::LookupBlocksResponse> PageStoreClient::Lookup(std::span<const BlockKey> keys) {
  pb::LookupBlocksRequest req;
  for (const BlockKey& k : keys) req.add_keys(KeyBytes(k));
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::LookupBlocksResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->LookupBlocks(&ctx, req, &resp)));
  return resp;
}

absl::StatusOr<PageStoreClient::PinResult> PageStoreClient::Pin(std::span<const BlockKey> keys,
                                                                absl::Duration lease,
                                                                const std::string& lease_id) {
  pb::PinBlocksRequest req;
  for (const BlockKey& k : keys) req.add_keys(KeyBytes(k));
  if (lease > absl::ZeroDuration()) SetDuration(lease, req.mutable_lease());
  req.set_lease_id(lease_id);
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::PinBlocksResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->PinBlocks(&ctx, req, &resp)));
  PinResult out;
  out.lease_id = resp.lease_id();
  out.deadline = FromTimestamp(resp.deadline());
  for (const pb::PinnedBlock& b : resp.pinned()) {
    std::optional<BlockKey> k = KeyFrom(b.key());
    if (!k) return absl::InternalError("PinBlocks answered a malformed pinned key");
    out.pinned.push_back(*k);
  }
  for (const std::string& m : resp.missing()) {
    std::optional<BlockKey> k = KeyFrom(m);
    if (!k) return absl::InternalError("PinBlocks answered a malformed missing key");
    out.missing.push_back(*k);
  }
  return out;
}

absl::StatusOr<uint32_t> PageStoreClient::Unpin(const std::string& lease_id,
                                                std::span<const BlockKey> keys) {
  pb::UnpinBlocksRequest req;
  req.set_lease_id(lease_id);
  for (const BlockKey& k : keys) req.add_keys(KeyBytes(k));
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::UnpinBlocksResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->UnpinBlocks(&ctx, req, &resp)));
  return resp.released();
}

absl::StatusOr<std::vector<PageStoreClient::PageRead>> PageStoreClient::ReadPages(
    std::span<const BlockKey> keys, const std::string& lease_id, uint32_t max_chunk_bytes) {
  pb::ReadPagesRequest req;
  for (const BlockKey& k : keys) req.add_pages()->set_key(KeyBytes(k));
  req.set_lease_id(lease_id);
  req.set_max_chunk_bytes(max_chunk_bytes);
  grpc::ClientContext ctx;
  Prepare(&ctx);
  std::unique_ptr<grpc::ClientReader<pb::PageChunk>> reader = stub_->ReadPages(&ctx, req);
  PageAssembler assembler(keys);
  pb::PageChunk chunk;
  absl::Status contract;
  while (reader->Read(&chunk)) {
    contract = assembler.Add(chunk);
    if (!contract.ok()) {
      ctx.TryCancel();
      break;
    }
  }
  absl::Status rpc = FromPageStoreStatus(reader->Finish());
  RETURN_IF_ERROR(contract);
  RETURN_IF_ERROR(rpc);
  return assembler.Finish();
}

absl::StatusOr<std::vector<PageStoreClient::WriteResult>> PageStoreClient::WritePages(
    const pb::WriteOptions& options, std::span<const PageToWrite> pages, uint32_t chunk_bytes) {
  if (chunk_bytes == 0) return absl::InvalidArgumentError("chunk_bytes must be > 0");
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::WritePagesResponse resp;
  std::unique_ptr<grpc::ClientWriter<pb::WritePagesRequest>> writer =
      stub_->WritePages(&ctx, &resp);
  pb::WritePagesRequest msg;
  *msg.mutable_options() = options;
  bool open = writer->Write(msg);
  for (size_t i = 0; open && i < pages.size(); ++i) {
    const PageToWrite& p = pages[i];
    uint64_t off = 0;
    do {  // an empty page still sends one (empty, last) chunk, which the server rejects
      const size_t n = std::min<uint64_t>(chunk_bytes, p.bytes.size() - off);
      msg.Clear();
      pb::PageChunk* c = msg.mutable_chunk();
      c->set_key(KeyBytes(p.key));
      if (off == 0) {
        c->set_resume_role(ToProto(p.resume_role));
        if (!p.engine_block_hash.empty()) c->set_engine_block_hash(p.engine_block_hash);
      }
      c->set_offset(off);
      c->set_data(reinterpret_cast<const char*>(p.bytes.data()) + off, n);
      c->set_data_xxh3(Xxh3_64(p.bytes.data() + off, n));
      c->set_total_bytes(p.bytes.size());
      off += n;
      c->set_last(off == p.bytes.size());
      open = writer->Write(msg);
    } while (open && off < p.bytes.size());
  }
  if (open) writer->WritesDone();
  RETURN_IF_ERROR(FromPageStoreStatus(writer->Finish()));
  if (static_cast<size_t>(resp.results_size()) != pages.size()) {
    return absl::InternalError(StrCat("WritePages answered ", resp.results_size(), " results for ",
                                      pages.size(), " pages"));
  }
  std::vector<WriteResult> out;
  for (int i = 0; i < resp.results_size(); ++i) {
    const pb::PageWriteResult& r = resp.results(i);
    if (KeyFrom(r.key()) != pages[i].key) {
      return absl::InternalError(StrCat("WritePages result ", i, " names another key"));
    }
    WriteResult w;
    w.key = pages[i].key;
    w.outcome = r.outcome();
    if (r.outcome() == pb::WRITE_OUTCOME_REJECTED) w.error = FromErrorInfo(r.error());
    out.push_back(std::move(w));
  }
  return out;
}

absl::StatusOr<pb::GetTransportInfoResponse> PageStoreClient::GetTransportInfo() {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::GetTransportInfoResponse resp;
  RETURN_IF_ERROR(
      FromPageStoreStatus(stub_->GetTransportInfo(&ctx, pb::GetTransportInfoRequest(), &resp)));
  return resp;
}

absl::StatusOr<pb::PinBlocksResponse> PageStoreClient::PinBlocks(const pb::PinBlocksRequest& req) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::PinBlocksResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->PinBlocks(&ctx, req, &resp)));
  return resp;
}

absl::StatusOr<pb::PinBlocksResponse> PageStoreClient::PinToLend(std::span<const BlockKey> keys,
                                                                 absl::Duration lease) {
  pb::PinBlocksRequest req;
  for (const BlockKey& k : keys) req.add_keys(KeyBytes(k));
  SetDuration(lease, req.mutable_lease());
  req.set_promote_to(pb::TIER_HOST);
  return PinBlocks(req);
}

absl::StatusOr<pb::ReserveStagingResponse> PageStoreClient::ReserveStaging(
    const pb::ReserveStagingRequest& req) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::ReserveStagingResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->ReserveStaging(&ctx, req, &resp)));
  return resp;
}

absl::StatusOr<pb::SealStagedResponse> PageStoreClient::SealStaged(
    const pb::SealStagedRequest& req) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::SealStagedResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->SealStaged(&ctx, req, &resp)));
  return resp;
}

absl::StatusOr<uint32_t> PageStoreClient::AbortStaged(const std::string& lease_id) {
  pb::AbortStagedRequest req;
  req.set_lease_id(lease_id);
  grpc::ClientContext ctx;
  Prepare(&ctx);
  pb::AbortStagedResponse resp;
  RETURN_IF_ERROR(FromPageStoreStatus(stub_->AbortStaged(&ctx, req, &resp)));
  return resp.released();
}

}  // namespace kv::cluster
