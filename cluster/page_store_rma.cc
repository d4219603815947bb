#include "cluster/page_store_rma.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "cluster/grpc_status.h"
#include "cluster/page_store_wire.h"
#include "cluster/proto_convert.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;
using wire::KeyBytes;

namespace {

// A transfer fails by its own deadline; Wait gets this much longer to observe that.
constexpr absl::Duration kWaitGrace = absl::Seconds(2);
// Beacon words in a client's scratch memory: reads in flight at once that can use a beacon.
constexpr uint32_t kScratchWords = 512;

absl::Status Unusable(absl::Status s) {
  return Annotate(std::move(s), "the buffer's contents are not valid");
}

}  // namespace

absl::Status VerifyPageInPlace(std::span<const uint8_t> bytes, const BlockKey& key) {
  absl::StatusOr<PageView> v = DecodePage(bytes);
  if (!v.ok()) return absl::DataLossError(StrCat("page ", key.Hex(), ": ", v.status().message()));
  if (v->header().key != key) {
    return absl::DataLossError(
        StrCat("page read as ", key.Hex(), " names ", v->header().key.Hex()));
  }
  return absl::OkStatus();
}

std::string_view PagePathName(PagePath path) { return path == PagePath::kUcx ? "ucx" : "grpc"; }

bool PinnedPages::rma() const {
  return std::all_of(pages.begin(), pages.end(), [](const Page& p) { return p.remote != 0; });
}

size_t RmaReadResult::prefix() const {
  size_t n = 0;
  while (n < pages.size() && pages[n].ok()) ++n;
  return n;
}

PageRmaClient::PageRmaClient(PageStoreClient* rpc, transport::Transport* transport,
                             PageRmaOptions options)
    : rpc_(rpc),
      transport_(transport),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()) {}

PageRmaClient::~PageRmaClient() {
  absl::MutexLock l(&mu_);
  if (scratch_.region == 0) return;
  if (!transport_->Deregister(scratch_.region).ok()) {
    // The transport may still write a word whose get failed: the memory must outlive it.
    log::Warn("rma_scratch_kept", "region", scratch_.region);
    (void)scratch_.words.release();
  }
}

absl::StatusOr<transport::PeerId> PageRmaClient::Peer(absl::Time deadline) {
  if (transport_ == nullptr) return absl::UnavailableError("no transport: gRPC only");
  {
    absl::MutexLock l(&mu_);
    if (peer_ != 0) return peer_;
  }
  ASSIGN_OR_RETURN(pb::GetTransportInfoResponse info, rpc_->GetTransportInfo());
  std::string address;
  for (const pb::TransportEndpoint& e : info.endpoints()) {
    if (e.kind() == pb::TRANSPORT_KIND_UCX) address = e.address();
  }
  if (address.empty()) {
    return absl::UnavailableError(StrCat("store ", info.node_id(), " offers no UCX endpoint"));
  }
  const absl::Time by = std::min(deadline, clock_->Now() + options_.connect_timeout);
  ASSIGN_OR_RETURN(transport::PeerId peer, options_.connect ? options_.connect(address, by)
                                                            : transport_->Connect(address, by));
  absl::MutexLock l(&mu_);
  peer_address_ = address;
  peer_ = peer;
  return peer;
}

absl::StatusOr<transport::RemoteRegionId> PageRmaClient::Import(transport::PeerId peer,
                                                                const std::string& packed_key) {
  absl::MutexLock l(&mu_);
  auto it = imported_.find({peer, packed_key});
  if (it != imported_.end()) return it->second;
  ASSIGN_OR_RETURN(transport::RemoteRegionId id, transport_->ImportRemoteRegion(peer, packed_key));
  imported_[{peer, packed_key}] = id;
  return id;
}

absl::Status PageRmaClient::Transfer(transport::PeerId peer, transport::OpKind kind,
                                     std::vector<transport::TransferOp> ops, absl::Time deadline) {
  if (ops.empty()) return absl::OkStatus();
  if (deadline <= clock_->Now()) {
    return MarkRetryable(absl::DeadlineExceededError("no time left for the transfer"));
  }
  ASSIGN_OR_RETURN(transport::TransferId id,
                   transport_->Prepare({.peer = peer, .kind = kind, .ops = std::move(ops)}));
  absl::Status s = transport_->Post(id, deadline);
  if (s.ok()) s = transport_->Wait(id, deadline + kWaitGrace);
  transport_->Release(id).IgnoreError();  // cancels a transfer still running
  if (absl::IsUnavailable(s)) {
    {
      absl::MutexLock l(&mu_);  // the endpoint is dead: connect afresh next time
      if (peer_ == peer) peer_ = 0;
    }
    if (options_.peer_failed) options_.peer_failed(peer);
  }
  return s;
}

absl::Status PageRmaClient::Warm(RegisteredBuffer buffer, int ops, absl::Time deadline) {
  if (ops <= 0 || buffer.bytes.size() < static_cast<size_t>(ops)) {
    return absl::InvalidArgumentError("warm: need at least one byte per get");
  }
  ASSIGN_OR_RETURN(transport::PeerId peer, Peer(deadline));
  ASSIGN_OR_RETURN(pb::GetTransportInfoResponse info, rpc_->GetTransportInfo());
  for (const pb::RegisteredRegion& r : info.regions()) {
    if (r.tier() != pb::TIER_HOST || r.transport() != pb::TRANSPORT_KIND_UCX) continue;
    const uint64_t each = std::min<uint64_t>(buffer.bytes.size() / ops, r.length() / ops);
    if (each == 0) break;
    ASSIGN_OR_RETURN(transport::RemoteRegionId remote, Import(peer, r.remote_key()));
    std::vector<transport::TransferOp> batch;
    for (int i = 0; i < ops; ++i)
      batch.push_back({buffer.region, i * each, remote, i * each, each});
    return Transfer(peer, transport::OpKind::kRead, std::move(batch), deadline);
  }
  return absl::FailedPreconditionError(
      StrCat("store ", info.node_id(), " registers no host tier to warm the path with"));
}

absl::StatusOr<PinnedPages> PageRmaClient::PinForRead(std::span<const BlockKey> keys,
                                                      absl::Time deadline) {
  ASSIGN_OR_RETURN(transport::PeerId peer, Peer(deadline));
  ASSIGN_OR_RETURN(pb::PinBlocksResponse resp, rpc_->PinToLend(keys, options_.lease));
  absl::StatusOr<PinnedPages> out = FromPinned(resp, peer);
  if (!out.ok() && !resp.lease_id().empty()) rpc_->Unpin(resp.lease_id()).IgnoreError();
  return out;
}

absl::StatusOr<PinnedPages> PageRmaClient::Borrow(const pb::PinBlocksResponse& lent,
                                                  absl::Time deadline) {
  ASSIGN_OR_RETURN(transport::PeerId peer, Peer(deadline));
  ASSIGN_OR_RETURN(PinnedPages out, FromPinned(lent, peer));
  out.borrowed = true;
  if (out.lease_id.empty() || out.pages.empty() || out.beacon == 0 || !out.rma()) {
    return absl::FailedPreconditionError(
        "the lent pages cannot be read one-sided (no lease, region or beacon)");
  }
  return out;
}

absl::StatusOr<PinnedPages> PageRmaClient::FromPinned(const pb::PinBlocksResponse& resp,
                                                      transport::PeerId peer) {
  PinnedPages out;
  out.lease_id = resp.lease_id();
  out.deadline = FromTimestamp(resp.deadline());
  out.peer = peer;
  absl::Status bad;
  for (const pb::PinnedBlock& b : resp.pinned()) {
    absl::StatusOr<BlockKey> key = wire::ParseKey(b.key(), "pinned key");
    if (!key.ok()) bad.Update(key.status());
    PinnedPages::Page p{.key = key.ok() ? *key : BlockKey()};
    const pb::RemoteRegion& r = b.region();
    if (b.has_region() && r.transport() == pb::TRANSPORT_KIND_UCX &&
        r.address() >= r.region_address()) {
      absl::StatusOr<transport::RemoteRegionId> id = Import(peer, r.remote_key());
      if (id.ok()) {
        p.remote = *id;
        p.remote_offset = r.address() - r.region_address();
        p.size = r.length();
      } else {
        bad.Update(id.status());
      }
    }
    out.pages.push_back(p);
  }
  for (const std::string& m : resp.missing()) {
    absl::StatusOr<BlockKey> key = wire::ParseKey(m, "missing key");
    if (key.ok()) out.missing.push_back(*key);
  }
  const pb::RemoteRegion& beacon = resp.beacon();
  if (resp.has_beacon() && resp.beacon_nonce() != 0 && beacon.length() == sizeof(uint64_t) &&
      beacon.transport() == pb::TRANSPORT_KIND_UCX && beacon.address() >= beacon.region_address()) {
    if (absl::StatusOr<transport::RemoteRegionId> id = Import(peer, beacon.remote_key()); id.ok()) {
      out.beacon = *id;
      out.beacon_offset = beacon.address() - beacon.region_address();
      out.beacon_nonce = resp.beacon_nonce();
    }  // else confirmed through UnpinBlocks
  }
  if (!bad.ok()) return bad;
  return out;
}

absl::StatusOr<uint32_t> PageRmaClient::Unpin(const PinnedPages& pinned) {
  if (pinned.lease_id.empty()) return 0;
  return rpc_->Unpin(pinned.lease_id);
}

absl::StatusOr<RmaReadResult> PageRmaClient::GetPinned(const PinnedPages& pinned,
                                                       std::span<const BlockKey> keys,
                                                       RegisteredBuffer buffer,
                                                       absl::Time deadline) {
  RmaReadResult r;
  r.path = PagePath::kUcx;
  r.pages.assign(keys.size(), absl::NotFoundError("block is not cached on the store"));
  std::vector<transport::TransferOp> ops;
  std::vector<RmaReadResult::Page> where;
  uint64_t offset = 0;
  for (size_t i = 0; i < pinned.pages.size() && i < keys.size(); ++i) {
    const PinnedPages::Page& p = pinned.pages[i];
    if (p.key != keys[i] || p.remote == 0) {
      r.pages[i] = absl::FailedPreconditionError("the store did not lend this page");
      break;
    }
    if (p.size > buffer.bytes.size() - offset) {
      r.pages[i] = absl::ResourceExhaustedError("no room left in the buffer");
      break;
    }
    ops.push_back({buffer.region, offset, p.remote, p.remote_offset, p.size});
    where.push_back({offset, p.size});
    offset += p.size;
  }
  const absl::Time by = std::min(deadline, pinned.deadline);
  absl::Status moved = Transfer(pinned.peer, transport::OpKind::kRead, std::move(ops), by);
  if (!moved.ok()) {
    if (!pinned.lease_id.empty() && !pinned.borrowed) rpc_->UnpinAsync(pinned.lease_id);
    return Unusable(moved);
  }
  // The bytes count only if the lease was still live after the get.
  if (absl::Status live = ConfirmAndRelease(pinned, by, &r.beacon_confirmed); !live.ok()) {
    return Unusable(live);
  }
  for (size_t i = 0; i < where.size(); ++i) {
    absl::Status v =
        VerifyPageInPlace(buffer.bytes.subspan(where[i].offset, where[i].size), keys[i]);
    if (v.ok()) {
      r.pages[i] = where[i];
      r.bytes += where[i].size;
    } else {
      log::Warn("rma_page_failed_verification", "key", keys[i].Hex(), "error", v.ToString());
      r.pages[i] = v;
    }
  }
  return r;
}

absl::StatusOr<uint64_t> PageRmaClient::ReadBeacon(const PinnedPages& pinned, absl::Time deadline) {
  uint32_t word = 0;
  transport::RegionId region = 0;
  uint64_t* words = nullptr;
  {
    absl::MutexLock l(&mu_);
    if (scratch_.region == 0 && !scratch_failed_) {
      scratch_.words = std::make_unique<uint64_t[]>(kScratchWords);
      absl::StatusOr<transport::RegisteredRegion> reg = transport_->Register(
          scratch_.words.get(), kScratchWords * sizeof(uint64_t), transport::MemoryKind::kHost);
      if (reg.ok()) {
        scratch_.region = reg->id;
        for (uint32_t i = kScratchWords; i > 0; --i) scratch_.free.push_back(i - 1);
      } else {
        scratch_failed_ = true;
        log::Warn("rma_scratch_unregistered", "error", reg.status().ToString());
      }
    }
    if (scratch_.free.empty()) return absl::ResourceExhaustedError("no free beacon scratch word");
    word = scratch_.free.back();
    scratch_.free.pop_back();
    region = scratch_.region;
    words = scratch_.words.get();
  }
  words[word] = 0;
  std::vector<transport::TransferOp> op = {
      {region, word * sizeof(uint64_t), pinned.beacon, pinned.beacon_offset, sizeof(uint64_t)}};
  absl::Status s = Transfer(pinned.peer, transport::OpKind::kRead, std::move(op), deadline);
  if (!s.ok()) return s;  // the word is not handed out again
  const uint64_t value = std::atomic_ref<uint64_t>(words[word]).load(std::memory_order_acquire);
  absl::MutexLock l(&mu_);
  scratch_.free.push_back(word);
  return value;
}

absl::Status PageRmaClient::ConfirmAndRelease(const PinnedPages& pinned, absl::Time deadline,
                                              bool* by_beacon) {
  *by_beacon = false;
  if (pinned.lease_id.empty()) return absl::OkStatus();
  const auto ended = [&](std::string_view how) {
    return MarkRetryable(
        absl::AbortedError(StrCat("lease ", pinned.lease_id, " ended during the get (", how, ")")));
  };
  if (pinned.borrowed) {  // the owner's lease: proven by its beacon alone, never released
    if (pinned.beacon == 0) return ended("a borrowed lease without a beacon");
    ASSIGN_OR_RETURN(uint64_t word, ReadBeacon(pinned, deadline));
    if (word != pinned.beacon_nonce) return ended("its beacon was lowered");
    if (clock_->Now() >= pinned.deadline) return ended("its deadline passed");
    *by_beacon = true;
    return absl::OkStatus();
  }
  if (pinned.beacon != 0) {
    absl::StatusOr<uint64_t> word = ReadBeacon(pinned, deadline);
    if (word.ok() || !absl::IsResourceExhausted(word.status())) {
      rpc_->UnpinAsync(pinned.lease_id);
      if (!word.ok()) return word.status();
      if (*word != pinned.beacon_nonce) return ended("its beacon was lowered");
      // The tier drops an expired pin on its own clock, beacon or not.
      if (clock_->Now() >= pinned.deadline) return ended("its deadline passed");
      *by_beacon = true;
      return absl::OkStatus();
    }
  }
  absl::StatusOr<uint32_t> released = Unpin(pinned);
  if (!released.ok()) return released.status();
  if (*released == 0) return ended("nothing left to release");
  return absl::OkStatus();
}

absl::StatusOr<RmaReadResult> PageRmaClient::ReadOverGrpc(std::span<const BlockKey> keys,
                                                          RegisteredBuffer buffer) {
  ASSIGN_OR_RETURN(std::vector<PageStoreClient::PageRead> read, rpc_->ReadPages(keys));
  RmaReadResult r;
  r.path = PagePath::kGrpc;
  uint64_t offset = 0;
  for (PageStoreClient::PageRead& p : read) {
    if (!p.page.ok()) {
      r.pages.push_back(p.page.status());
      continue;
    }
    if (p.page->size() > buffer.bytes.size() - offset) {
      r.pages.push_back(absl::ResourceExhaustedError("no room left in the buffer"));
      continue;
    }
    std::memcpy(buffer.bytes.data() + offset, p.page->data(), p.page->size());
    r.pages.push_back(RmaReadResult::Page{offset, p.page->size()});
    offset += p.page->size();
    r.bytes += p.page->size();
  }
  return r;
}

absl::StatusOr<RmaReadResult> PageRmaClient::ReadPagesInto(std::span<const BlockKey> keys,
                                                           RegisteredBuffer buffer,
                                                           absl::Time deadline) {
  if (keys.empty()) return absl::InvalidArgumentError("ReadPagesInto: no keys");
  if (absl::StatusOr<transport::PeerId> peer = Peer(deadline); !peer.ok()) {
    log::Info("rma_read_fallback", "error", peer.status().ToString());
    return ReadOverGrpc(keys, buffer);
  }
  ASSIGN_OR_RETURN(PinnedPages pinned, PinForRead(keys, deadline));
  if (!pinned.rma()) {  // pinned where it cannot be lent: the fallback reads under the lease
    Unpin(pinned).IgnoreError();
    return ReadOverGrpc(keys, buffer);
  }
  return GetPinned(pinned, keys, buffer, deadline);
}

}  // namespace kv::cluster
