// batch_get_into and batch_put_from of libkvstrata_client (kvstrata/kvstrata.h).
//
// Reads over UCX scatter the pages of one pin straight into the caller's destinations, which
// may lie in different registered buffers (PageRmaClient::ReadPagesInto lays pages back to
// back in one buffer instead): PinForRead, one batch of gets, then each page verified in
// place, with PageRmaClient's poisoning contract (ConfirmAndRelease: the bytes count only if
// the lease was still live after the gets, shown by its beacon or by Unpin). Writes go through
// PageRmaClient::WritePagesFrom, one call per run of consecutive pages in the same registered
// buffer.
#include <algorithm>
#include <cstring>

#include "client/client_internal.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::client {
namespace {

namespace pb = ::kvstrata::v1;

absl::Status Unusable(const absl::Status& s) {
  return absl::Status(s.code(), StrCat(s.message(), "; the destinations' contents are not valid"));
}

struct GetArgs {
  std::span<const BlockKey> keys;
  void* const* ptrs;
  const uint64_t* sizes;
  absl::Time deadline;
  std::vector<absl::Status>* statuses;  // one per key, pre-set to NotFound
  std::vector<uint64_t>* page_sizes;
};

absl::Status CheckDestinations(const GetArgs& a) {
  for (size_t i = 0; i < a.keys.size(); ++i) {
    if (a.ptrs[i] == nullptr) return absl::InvalidArgumentError(StrCat("ptrs[", i, "] is NULL"));
    if (a.sizes[i] == 0) return absl::InvalidArgumentError(StrCat("sizes[", i, "] is 0"));
    const uintptr_t p = reinterpret_cast<uintptr_t>(a.ptrs[i]);
    if (p + a.sizes[i] < p) {
      return absl::InvalidArgumentError(StrCat("ptrs[", i, "] + sizes[", i, "] overflows"));
    }
  }
  return absl::OkStatus();
}

// Reads over gRPC (ReadPages verifies every page) and copies each page to its destination.
absl::Status GetOverGrpc(kvstrata_client* c, const Session& s, const GetArgs& a) {
  ASSIGN_OR_RETURN(std::vector<cluster::PageStoreClient::PageRead> read, s.rpc->ReadPages(a.keys));
  if (read.size() != a.keys.size()) {
    return absl::InternalError(
        StrCat("ReadPages answered ", read.size(), " pages for ", a.keys.size(), " keys"));
  }
  for (size_t i = 0; i < read.size(); ++i) {
    if (!read[i].page.ok()) {
      (*a.statuses)[i] = read[i].page.status();
      continue;
    }
    const std::string& page = *read[i].page;
    if (page.size() > a.sizes[i]) {
      (*a.statuses)[i] = absl::ResourceExhaustedError(
          StrCat("the page is ", page.size(), " bytes; sizes[", i, "] is ", a.sizes[i]));
      continue;
    }
    std::memcpy(a.ptrs[i], page.data(), page.size());
    (*a.statuses)[i] = absl::OkStatus();
    (*a.page_sizes)[i] = page.size();
    c->counters.grpc_get_pages += 1;
    c->counters.grpc_get_bytes += page.size();
  }
  return absl::OkStatus();
}

// One batch of UCX gets of the pinned pages into the destinations, then confirm and verify.
absl::Status GetPinnedScatter(kvstrata_client* c, const Session& s, const GetArgs& a,
                              const cluster::PinnedPages& pinned) {
  std::vector<transport::TransferOp> ops;
  std::vector<size_t> moved;  // key indexes with an op
  for (size_t i = 0; i < pinned.pages.size() && i < a.keys.size(); ++i) {
    const cluster::PinnedPages::Page& p = pinned.pages[i];
    if (p.key != a.keys[i]) {
      (*a.statuses)[i] = absl::InternalError("the store pinned another key than asked");
      break;
    }
    if (p.size > a.sizes[i]) {
      (*a.statuses)[i] = absl::ResourceExhaustedError(
          StrCat("the page is ", p.size, " bytes; sizes[", i, "] is ", a.sizes[i]));
      continue;
    }
    Buffer b;
    if (!c->FindBuffer(a.ptrs[i], p.size, &b)) {
      return absl::FailedPreconditionError(
          StrCat("ptrs[", i, "] was unregistered during the call"));
    }
    ops.push_back({b.region, reinterpret_cast<uintptr_t>(a.ptrs[i]) - b.base, p.remote,
                   p.remote_offset, p.size});
    moved.push_back(i);
  }
  const absl::Time by = std::min(a.deadline, pinned.deadline);
  absl::Status st = s.rma->Transfer(pinned.peer, transport::OpKind::kRead, std::move(ops), by);
  if (!st.ok()) {
    s.rma->Unpin(pinned).IgnoreError();
    if (absl::IsUnavailable(st)) c->ResetRma(s, pinned.peer);
    return Unusable(st);
  }
  // The bytes count only if the lease was still live after the gets (its beacon, else Unpin).
  bool by_beacon = false;
  if (absl::Status live = s.rma->ConfirmAndRelease(pinned, by, &by_beacon); !live.ok()) {
    if (absl::IsUnavailable(live)) c->ResetRma(s, pinned.peer);
    return Unusable(live);
  }
  for (size_t i : moved) {
    const uint64_t size = pinned.pages[i].size;
    absl::Status v =
        cluster::VerifyPageInPlace({static_cast<const uint8_t*>(a.ptrs[i]), size}, a.keys[i]);
    (*a.statuses)[i] = v;
    if (v.ok()) {
      (*a.page_sizes)[i] = size;
      c->counters.ucx_get_pages += 1;
      c->counters.ucx_get_bytes += size;
    }
  }
  return absl::OkStatus();
}

bool AllRegistered(kvstrata_client* c, const void* const* ptrs, const uint64_t* sizes, size_t n) {
  if (c->transport == nullptr) return false;
  for (size_t i = 0; i < n; ++i) {
    Buffer b;
    if (!c->FindBuffer(ptrs[i], sizes[i], &b) || b.region == 0) return false;
  }
  return true;
}

absl::Status BatchGet(kvstrata_client* c, int64_t timeout_ms, const GetArgs& a) {
  RETURN_IF_ERROR(CheckDestinations(a));
  Session s = c->GetSession(timeout_ms);
  const bool ucx_only = c->options.transport == KVSTRATA_TRANSPORT_UCX;
  if (!AllRegistered(c, a.ptrs, a.sizes, a.keys.size())) {
    if (ucx_only) {
      return absl::FailedPreconditionError(
          "transport is UCX only and a destination is not inside a registered buffer");
    }
    return GetOverGrpc(c, s, a);
  }
  absl::StatusOr<cluster::PinnedPages> pinned = s.rma->PinForRead(a.keys, a.deadline);
  if (absl::IsUnavailable(pinned.status()) && !ucx_only) return GetOverGrpc(c, s, a);
  RETURN_IF_ERROR(pinned.status());
  if (!pinned->rma()) {  // pinned where it cannot be lent: read over gRPC under the lease
    s.rma->Unpin(*pinned).IgnoreError();
    if (ucx_only) return absl::UnavailableError("the store did not lend its pages over UCX");
    return GetOverGrpc(c, s, a);
  }
  return GetPinnedScatter(c, s, a, *pinned);
}

absl::StatusOr<pb::WriteOptions> ToWriteOptions(const kvstrata_key_space* space) {
  ASSIGN_OR_RETURN(KeyParams p, ToKeyParams(space));
  pb::WriteOptions o;
  o.mutable_key_space()->set_model_fingerprint(
      std::string(p.model_fingerprint.begin(), p.model_fingerprint.end()));
  o.mutable_key_space()->set_layout(p.layout_id);
  o.mutable_key_space()->set_page_tokens(p.page_tokens);
  o.set_shared_namespace(p.ns.is_shared());
  return o;
}

absl::Status ToStatus(const cluster::PageStoreClient::WriteResult& r) {
  if (r.outcome == pb::WRITE_OUTCOME_STORED || r.outcome == pb::WRITE_OUTCOME_ALREADY_PRESENT) {
    return absl::OkStatus();
  }
  if (!r.error.ok()) return r.error;
  return absl::InternalError(StrCat("the store answered outcome ", static_cast<int>(r.outcome)));
}

struct PutArgs {
  pb::WriteOptions options;
  std::span<const BlockKey> keys;
  const void* const* ptrs;
  const uint64_t* sizes;
  absl::Time deadline;
  std::vector<absl::Status>* statuses;
};

absl::Status RecordWrites(kvstrata_client* c, const PutArgs& a, size_t first,
                          const std::vector<cluster::PageStoreClient::WriteResult>& results,
                          bool ucx) {
  if (results.size() > a.keys.size() - first) {
    return absl::InternalError("the store answered more results than pages");
  }
  for (size_t j = 0; j < results.size(); ++j) {
    (*a.statuses)[first + j] = ToStatus(results[j]);
    if (!(*a.statuses)[first + j].ok()) {
      c->counters.put_rejected += 1;
    } else if (results[j].outcome == pb::WRITE_OUTCOME_STORED) {
      (ucx ? c->counters.ucx_put_pages : c->counters.grpc_put_pages) += 1;
      (ucx ? c->counters.ucx_put_bytes : c->counters.grpc_put_bytes) += a.sizes[first + j];
    }
  }
  return absl::OkStatus();
}

absl::Status PutOverGrpc(kvstrata_client* c, const Session& s, const PutArgs& a) {
  std::vector<cluster::PageStoreClient::PageToWrite> pages;
  for (size_t i = 0; i < a.keys.size(); ++i) {
    pages.push_back({a.keys[i], {static_cast<const uint8_t*>(a.ptrs[i]), a.sizes[i]}});
  }
  ASSIGN_OR_RETURN(auto results, s.rpc->WritePages(a.options, pages));
  return RecordWrites(c, a, 0, results, /*ucx=*/false);
}

// One WritePagesFrom per run of consecutive pages in the same registered buffer.
absl::Status PutOverUcx(kvstrata_client* c, const Session& s, const PutArgs& a) {
  size_t i = 0;
  while (i < a.keys.size()) {
    Buffer b;
    if (!c->FindBuffer(a.ptrs[i], a.sizes[i], &b)) {
      return absl::FailedPreconditionError(
          StrCat("ptrs[", i, "] was unregistered during the call"));
    }
    std::vector<cluster::RmaPageToWrite> run;
    const size_t first = i;
    for (Buffer bi;
         i < a.keys.size() && c->FindBuffer(a.ptrs[i], a.sizes[i], &bi) && bi.handle == b.handle;
         ++i) {
      run.push_back({a.keys[i], reinterpret_cast<uintptr_t>(a.ptrs[i]) - b.base, a.sizes[i]});
    }
    cluster::RegisteredBuffer rb{b.region, {reinterpret_cast<uint8_t*>(b.base), b.length}};
    ASSIGN_OR_RETURN(cluster::RmaWriteResult w,
                     s.rma->WritePagesFrom(a.options, run, rb, a.deadline));
    RETURN_IF_ERROR(RecordWrites(c, a, first, w.results, w.path == cluster::PagePath::kUcx));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kv::client

using kv::client::Call;
using kv::client::CheckCount;
using kv::client::NotNull;

namespace {

// The arrays every batch call takes are present, and `n` is within the batch limit.
absl::Status CheckBatch(const void* keys, const void* ptrs, const void* sizes, const void* statuses,
                        size_t n) {
  for (auto [p, what] : {std::pair<const void*, const char*>{keys, "keys"},
                         {ptrs, "ptrs"},
                         {sizes, "sizes"},
                         {statuses, "statuses"}}) {
    RETURN_IF_ERROR(NotNull(p, what));
  }
  return CheckCount(n, KVSTRATA_MAX_BATCH, "n");
}

}  // namespace

extern "C" {

int32_t kvstrata_batch_get_into(kvstrata_client* client, const kvstrata_key* keys,
                                void* const* ptrs, const uint64_t* sizes, size_t n,
                                int64_t timeout_ms, kvstrata_status* statuses,
                                uint64_t* page_sizes) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(CheckBatch(keys, ptrs, sizes, statuses, n));
    client->counters.calls += 1;
    std::vector<absl::Status> st(n, absl::NotFoundError("block is not cached on the store"));
    std::vector<uint64_t> got(n, 0);
    kv::client::GetArgs a{kv::client::Keys(keys, n),    ptrs, sizes,
                          client->Deadline(timeout_ms), &st,  &got};
    absl::Status s = kv::client::BatchGet(client, timeout_ms, a);
    if (!s.ok()) {
      client->counters.failed_calls += 1;
      return s;
    }
    for (size_t i = 0; i < n; ++i) {
      kv::client::SetStatus(&statuses[i], st[i]);
      if (page_sizes != nullptr) page_sizes[i] = got[i];
      (st[i].ok() ? client->counters.hits : client->counters.misses) += 1;
      if (absl::IsDataLoss(st[i])) client->counters.corrupt += 1;
    }
    return absl::OkStatus();
  });
}

int32_t kvstrata_batch_put_from(kvstrata_client* client, const kvstrata_key_space* space,
                                const kvstrata_key* keys, const void* const* ptrs,
                                const uint64_t* sizes, size_t n, int64_t timeout_ms,
                                kvstrata_status* statuses) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(CheckBatch(keys, ptrs, sizes, statuses, n));
    std::vector<absl::Status> st(n, absl::UnknownError("not written"));
    kv::client::PutArgs a{{},    kv::client::Keys(keys, n),    ptrs,
                          sizes, client->Deadline(timeout_ms), &st};
    ASSIGN_OR_RETURN(a.options, kv::client::ToWriteOptions(space));
    for (size_t i = 0; i < n; ++i) {
      if (ptrs[i] == nullptr)
        return absl::InvalidArgumentError(kv::StrCat("ptrs[", i, "] is NULL"));
      if (sizes[i] == 0) return absl::InvalidArgumentError(kv::StrCat("sizes[", i, "] is 0"));
    }
    client->counters.calls += 1;
    kv::client::Session s = client->GetSession(timeout_ms);
    const bool ucx = kv::client::AllRegistered(client, ptrs, sizes, n);
    if (!ucx && client->options.transport == KVSTRATA_TRANSPORT_UCX) {
      return absl::FailedPreconditionError(
          "transport is UCX only and a page is not inside a registered buffer");
    }
    absl::Status r =
        ucx ? kv::client::PutOverUcx(client, s, a) : kv::client::PutOverGrpc(client, s, a);
    if (!r.ok()) {
      client->counters.failed_calls += 1;
      return r;
    }
    for (size_t i = 0; i < n; ++i) kv::client::SetStatus(&statuses[i], st[i]);
    return absl::OkStatus();
  });
}

}  // extern "C"
