// The PageStore service's streaming calls: ReadPages (ServerWriteReactor) and WritePages
// (ServerReadReactor). See page_store_service.h.
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "cluster/grpc_status.h"
#include "cluster/page_store_service.h"
#include "cluster/page_store_wire.h"
#include "cluster/proto_convert.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

// ---- ReadPages --------------------------------------------------------------------------------

namespace {

using SharedPage = std::shared_ptr<const std::vector<uint8_t>>;

void ReleasePage(void* holder) { delete static_cast<SharedPage*>(holder); }

// One PageChunk as the wire carries it, without copying the page: `head` (every field but
// `data`) serialized by protobuf, then field 7 (`data`, length-delimited) appended by hand as
// a tag, a varint length and a slice that references `page` (protobuf parsers accept fields
// in any order). The slice keeps the page alive until the transport has sent it.
grpc::ByteBuffer ChunkBuffer(const pb::PageChunk& head, const SharedPage& page, size_t offset,
                             size_t n) {
  std::string prefix = head.SerializeAsString();
  prefix.push_back(static_cast<char>((7 << 3) | 2));
  for (uint64_t v = n; true; v >>= 7) {
    if (v < 0x80) {
      prefix.push_back(static_cast<char>(v));
      break;
    }
    prefix.push_back(static_cast<char>((v & 0x7f) | 0x80));
  }
  auto* data = const_cast<uint8_t*>(page->data()) + offset;
  grpc::Slice slices[2] = {grpc::Slice(prefix),
                           grpc::Slice(data, n, ReleasePage, new SharedPage(page))};
  return grpc::ByteBuffer(slices, 2);
}

grpc::ByteBuffer MessageBuffer(const google::protobuf::Message& m) {
  grpc::Slice slice(m.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

// One ReadPages call, served raw (grpc::ByteBuffer, see ChunkBuffer) so that page bytes go from
// the loaded page to the transport without a copy. Pages are loaded on the service's pool, one
// at a time, and sent one chunk at a time: exactly one of {a pool task, an outstanding write}
// owns the reactor at any moment, and whichever owns it last calls Finish(). Deleted in
// OnDone().
class ReadPagesReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ReadPagesReactor(PageStoreService* svc, PageStoreCaller caller, pb::ReadPagesRequest req,
                   uint32_t chunk_bytes)
      : svc_(svc), caller_(std::move(caller)), req_(std::move(req)), chunk_bytes_(chunk_bytes) {}

  void Start() { LoadNext(); }

  void OnWriteDone(bool ok) override {
    if (!ok) {  // the client is gone; nothing more can be sent
      Done(absl::CancelledError("ReadPages stream broken"));
      return;
    }
    if (status_.ok() && offset_ < bytes_->size()) {
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
    if (!svc_->threads_->Schedule([this] {
          index_ = next_++;
          PageStoreService::LoadedPage page =
              svc_->LoadPage(caller_, req_.pages(index_), req_.lease_id());
          status_ = std::move(page.status);
          header_bytes_ = page.header_bytes;
          first_layer_ = page.first_layer;
          layer_count_ = page.layer_count;
          bytes_ = std::make_shared<const std::vector<uint8_t>>(std::move(page.bytes));
          offset_ = 0;
          SendChunk();
        })) {
      Done(absl::UnavailableError("page store is shutting down"));
    }
  }

  void SendChunk() {
    const pb::PageSelector& sel = req_.pages(index_);
    pb::PageChunk head;
    head.set_key(sel.key());
    head.set_page_index(static_cast<uint32_t>(index_));
    if (!status_.ok()) {
      pb::ErrorInfo* e = head.mutable_error();
      *e = ToErrorInfo(status_);
      e->set_node_id(svc_->options_.node_id);
      e->set_key(sel.key());
      head.set_last(true);
      msg_ = MessageBuffer(head);
      StartWrite(&msg_);
      return;
    }
    const uint8_t* b = bytes_->data();
    const size_t size = bytes_->size();
    const size_t n = std::min<size_t>(chunk_bytes_, size - offset_);
    if (offset_ == 0) head.set_page_header(b, header_bytes_);
    head.set_section(pb::SECTION_KIND_UNSPECIFIED);
    head.mutable_layers()->set_begin(first_layer_);
    head.mutable_layers()->set_end(first_layer_ + layer_count_);
    head.set_offset(offset_);
    head.set_data_xxh3(Xxh3_64(b + offset_, n));
    head.set_total_bytes(size);
    head.set_last(offset_ + n == size);
    msg_ = ChunkBuffer(head, bytes_, offset_, n);
    offset_ += n;
    svc_->bytes_read_->Inc(static_cast<double>(n));
    StartWrite(&msg_);
  }

  void Done(absl::Status s) {
    final_ = s;
    Finish(ToGrpcStatus(s));
  }

  PageStoreService* const svc_;
  const PageStoreCaller caller_;
  const pb::ReadPagesRequest req_;
  const uint32_t chunk_bytes_;
  int next_ = 0;         // next page to load
  int index_ = 0;        // page being sent
  absl::Status status_;  // of the page being sent
  SharedPage bytes_;     // its bytes, shared with the slices in flight
  size_t header_bytes_ = 0;
  uint32_t first_layer_ = 0, layer_count_ = 0;
  size_t offset_ = 0;
  grpc::ByteBuffer msg_;
  std::atomic<bool> cancelled_{false};
  absl::Status final_;
};

// ---- WritePages -------------------------------------------------------------------------------

// One WritePages call. Chunks are checked as they arrive (inline); a completed page is
// verified and published on the pool, which then asks for the next message. As with
// ReadPagesReactor, one actor owns the reactor at a time. Deleted in OnDone().
class WritePagesReactor final : public grpc::ServerReadReactor<pb::WritePagesRequest> {
 public:
  // `node`: the caller has the node credential (may write the shared namespace).
  WritePagesReactor(PageStoreService* svc, PageStoreCaller caller, bool node,
                    pb::WritePagesResponse* resp)
      : svc_(svc), caller_(std::move(caller)), node_(node), resp_(resp) {
    StartRead(&msg_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return EndOfStream();
    absl::Status s = Handle();
    if (!s.ok()) return Done(s);
    if (!publish_) return StartRead(&msg_);
    if (!svc_->threads_->Schedule([this] {
          *resp_->add_results() = svc_->PublishPage(caller_, options_, cur_->key, cur_->bytes,
                                                    cur_->role, cur_->engine_hash);
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
    std::string engine_hash;  // PageChunk.engine_block_hash of the first chunk
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
      if (options_.shared_namespace() && !node_) return wire::SharedWriteDenied();
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
    pb::PageChunk& c = *msg_.mutable_chunk();
    ASSIGN_OR_RETURN(BlockKey key, wire::ParseKey(c.key(), "chunk key"));
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
    cur_->engine_hash = c.engine_block_hash();
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
             ReasonName(PageStoreReason::kPageTooLarge));
    } else {
      cur_->bytes.reserve(c.total_bytes());
    }
  }

  // Checks and appends one chunk; a whole page in one chunk is moved, not copied.
  void Append(pb::PageChunk& c) {
    std::string& d = *c.mutable_data();
    const size_t n = d.size();
    if (!cur_->rejected) {
      if (c.total_bytes() != cur_->total) {
        Reject(absl::InvalidArgumentError(StrCat("total_bytes changed from ", cur_->total, " to ",
                                                 c.total_bytes(), " within the page")),
               "SIZE_MISMATCH");
      } else if (Xxh3_64(d.data(), d.size()) != c.data_xxh3()) {
        Reject(absl::DataLossError(StrCat("chunk at offset ", c.offset(), " (", d.size(),
                                          " bytes) fails its XXH3 checksum")),
               "CHUNK_CHECKSUM_MISMATCH");
      } else if (cur_->received + n > cur_->total) {
        Reject(absl::InvalidArgumentError(
                   StrCat("chunks exceed total_bytes (", cur_->total, ") of the page")),
               "SIZE_MISMATCH");
      } else if (cur_->received == 0 && n == cur_->total) {
        cur_->bytes.swap(d);
      } else {
        cur_->bytes.append(d);
      }
    }
    cur_->received += n;
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
  const PageStoreCaller caller_;
  const bool node_;
  pb::WritePagesResponse* const resp_;
  pb::WritePagesRequest msg_;
  pb::WriteOptions options_;
  bool options_seen_ = false;
  bool publish_ = false;
  std::optional<Page> cur_;
  absl::Status final_;
};

grpc::ServerWriteReactor<grpc::ByteBuffer>* PageStoreService::ReadPages(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw) {
  absl::StatusOr<PageStoreCaller> c = Authenticate(ctx);
  absl::Status s = c.status();
  pb::ReadPagesRequest request;
  if (s.ok()) {
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (raw->Dump(&slices).ok()) {
      for (const grpc::Slice& sl : slices) {
        bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
      }
    }
    if (!request.ParseFromString(bytes)) {
      s = absl::InvalidArgumentError("ReadPagesRequest does not parse");
    }
  }
  if (s.ok() && static_cast<size_t>(request.pages_size()) > options_.max_read_pages) {
    s = absl::InvalidArgumentError(StrCat(request.pages_size(), " pages; at most ",
                                          options_.max_read_pages, " per ReadPages call"));
  }
  for (int i = 0; s.ok() && i < request.pages_size(); ++i) {
    s = wire::ParseKey(request.pages(i).key(), StrCat("pages[", i, "].key")).status();
  }
  if (s.ok() && !request.lease_id().empty()) {
    s = wire::FromPageStore(pages_.CheckLease(*c, request.lease_id()));
  }
  if (!s.ok()) {
    Count("ReadPages", s);
    class Failed final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
     public:
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(s);
  }
  uint32_t chunk = request.max_chunk_bytes();
  if (chunk == 0) chunk = options_.default_chunk_bytes;
  chunk = std::clamp(chunk, options_.min_chunk_bytes, options_.max_chunk_bytes);
  auto* r = new ReadPagesReactor(this, *std::move(c), std::move(request), chunk);
  r->Start();
  return r;
}

grpc::ServerReadReactor<pb::WritePagesRequest>* PageStoreService::WritePages(
    grpc::CallbackServerContext* ctx, pb::WritePagesResponse* response) {
  bool node = false;
  absl::StatusOr<PageStoreCaller> c = Authenticate(ctx, &node);
  if (!c.ok()) {
    Count("WritePages", c.status());
    class Failed final : public grpc::ServerReadReactor<pb::WritePagesRequest> {
     public:
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(c.status());
  }
  return new WritePagesReactor(this, *std::move(c), node, response);
}

}  // namespace kv::cluster
