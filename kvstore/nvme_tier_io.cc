// NvmeTier: the write, seal and read paths (the ordering contract is in nvme_tier.h).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/nvme_index.h"
#include "kvstore/nvme_tier_internal.h"
#include "kvstore/segment_format.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace kv {

using namespace nvme_internal;  // NOLINT: this module's own internals

namespace {

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }

// The status of a completed record write.
absl::Status WriteStatus(int64_t result, uint64_t want, uint64_t segment, uint64_t offset) {
  if (result == static_cast<int64_t>(want)) return absl::OkStatus();
  std::string where = StrCat("nvme write of segment ", segment, " at offset ", offset);
  if (result == -ENOSPC || result == -EDQUOT) {
    return MarkRetryable(absl::ResourceExhaustedError(
        StrCat(where, ": the disk is full (", std::strerror(static_cast<int>(-result)),
               "); the page was not stored")));
  }
  if (result < 0) return ErrnoToStatus(static_cast<int>(-result), where);
  return MarkRetryable(
      absl::UnavailableError(StrCat(where, ": short write (", result, " of ", want, " bytes)")));
}

}  // namespace

// ---- write ----

uint8_t* NvmeTier::TakeBuffer(uint64_t bytes) {
  auto it = free_buffers_.lower_bound(bytes);
  if (it != free_buffers_.end() && it->first <= 2 * bytes) {
    uint8_t* b = it->second;
    free_buffer_bytes_ -= it->first;
    free_buffers_.erase(it);
    return b;
  }
  return AllocAligned(bytes);
}

void NvmeTier::ReturnBuffer(uint8_t* buf, uint64_t bytes) {
  // Keep up to the write budget's worth of buffers for reuse (no page faults on fresh memory).
  if (free_buffer_bytes_ + bytes > options_.write_bytes_in_flight + bytes) {
    FreeAligned(buf);
    return;
  }
  free_buffers_.emplace(bytes, buf);
  free_buffer_bytes_ += bytes;
}

absl::StatusOr<std::shared_ptr<NvmeTier::Segment>> NvmeTier::CreateSegment(uint64_t id) {
  auto seg = std::make_shared<Segment>();
  seg->id = id;
  seg->path = (std::filesystem::path(segment_dir()) / segment::SegmentFileName(id)).string();
  seg->fd = ::open(seg->path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_DIRECT | O_CLOEXEC, 0644);
  if (seg->fd < 0) {
    if (errno == EINVAL) {
      return absl::FailedPreconditionError(
          StrCat("the filesystem of ", options_.path, " does not support O_DIRECT"));
    }
    return ErrnoToStatus(errno, StrCat("create segment ", seg->path));
  }
  auto fail = [&](absl::Status st) {
    ::unlink(seg->path.c_str());
    log::Warn("nvme_segment_create_failed", "path", seg->path, "reason", st.ToString());
    return Annotate(st, StrCat("nvme tier at ", options_.path, ": cannot create a ",
                               options_.segment_bytes >> 20, " MiB segment"));
  };
  absl::Status st = io_->Allocate(seg->fd, 0, options_.segment_bytes);
  if (!st.ok()) return fail(st);
  uint8_t* hdr = AllocAligned(segment::kSegmentHeaderBytes);
  std::unique_ptr<uint8_t, void (*)(uint8_t*)> hold(hdr, &FreeAligned);
  segment::EncodeSegmentHeader({id, static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))},
                               {hdr, segment::kSegmentHeaderBytes});
  IoRequest req{IoRequest::Op::kWrite, seg->fd, 0, {}, 1};
  req.iov[0] = {hdr, segment::kSegmentHeaderBytes};
  int64_t res = 0;
  RunIoBatch(io_, {&req, 1}, 1, [&](size_t, int64_t r) { res = r; });
  st = WriteStatus(res, segment::kSegmentHeaderBytes, id, 0);
  // The file, its size and header are durable before any record in it can be indexed.
  if (st.ok()) st = io_->SyncData(seg->fd);
  if (st.ok()) {
    int dfd = ::open(segment_dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || ::fsync(dfd) != 0) st = ErrnoToStatus(errno, "fsync segment directory");
    if (dfd >= 0) ::close(dfd);
  }
  if (!st.ok()) return fail(st);
  seg->file_bytes = options_.segment_bytes;
  seg->frontier = segment::kSegmentHeaderBytes;
  seg->active = true;
  return seg;
}

// Waits for write budget and a segment with room, rolling to a new segment when needed.
// mu_ may be released while waiting or rolling; every check is redone after.
absl::Status NvmeTier::ReserveLocked(const BlockKey& key, uint64_t rec) {
  for (;;) {
    if (entries_.contains(key)) {
      return absl::AlreadyExistsError(StrCat("page ", key.Hex(), " already in nvme"));
    }
    if (used_ + rec > options_.capacity_bytes) {
      return MarkRetryable(absl::ResourceExhaustedError(
          StrCat("nvme tier full: ", used_, "+", rec, " > ", options_.capacity_bytes)));
    }
    bool budget = writes_in_flight_ < options_.write_depth &&
                  (write_bytes_in_flight_ == 0 ||
                   write_bytes_in_flight_ + rec <= options_.write_bytes_in_flight);
    if (!budget || rolling_) {
      cv_.Wait(&mu_);
      continue;
    }
    if (active_ != nullptr && active_->frontier + rec <= active_->file_bytes)
      return absl::OkStatus();
    rolling_ = true;
    uint64_t id = next_segment_id_++;
    mu_.Unlock();
    absl::StatusOr<std::shared_ptr<Segment>> seg = CreateSegment(id);
    mu_.Lock();
    rolling_ = false;
    cv_.SignalAll();
    if (!seg.ok()) return seg.status();
    if (active_ != nullptr) {
      std::shared_ptr<Segment> old = std::move(active_);
      old->active = false;
      if (old->records == 0) {
        RetireSegmentLocked(old);
      } else if (old->frontier < old->file_bytes) {
        Enqueue({ReclaimTask::Kind::kTrim, old, old->frontier, 0});  // the unused preallocation
      }
    }
    active_ = *seg;
    segments_.emplace(id, active_);
  }
}

absl::Status NvmeTier::Write(const PageMeta& meta, std::string_view bytes) {
  if (meta.size != bytes.size()) {
    return absl::InvalidArgumentError(
        StrCat("page ", meta.key.Hex(), ": meta size ", meta.size, " != ", bytes.size(), " bytes"));
  }
  const uint64_t rec = Footprint(bytes.size());
  if (rec == 0) {
    return absl::InvalidArgumentError(StrCat("page of ", bytes.size(), " bytes can never fit the ",
                                             "nvme tier (segment ", options_.segment_bytes,
                                             " bytes, capacity ", options_.capacity_bytes, ")"));
  }
  auto e = std::make_shared<Entry>();
  e->meta = meta;
  e->meta.sealed = false;
  e->record_bytes = rec;
  e->xxh3 = Xxh3_64(bytes.data(), bytes.size());
  uint8_t* buf;
  {
    MutexLock l(&mu_);
    RETURN_IF_ERROR(ReserveLocked(meta.key, rec));
    e->seg = active_;
    e->offset = active_->frontier;
    active_->frontier += rec;
    ++active_->records;
    used_ += rec;
    ++writes_in_flight_;
    write_bytes_in_flight_ += rec;
    entries_.emplace(meta.key, e);
    buf = TakeBuffer(rec);
  }
  segment::EncodeRecordHeader({e->seg->id, meta.key, bytes.size(), e->xxh3},
                              {buf, segment::kRecordHeaderBytes});
  std::memcpy(buf + segment::kRecordHeaderBytes, bytes.data(), bytes.size());
  uint64_t end = segment::kRecordHeaderBytes + bytes.size();
  std::memset(buf + end, 0, rec - end);
  IoRequest req{IoRequest::Op::kWrite, e->seg->fd, e->offset, {}, 1};
  req.iov[0] = {buf, rec};
  io_->Submit(req, [this, e, buf](int64_t r) { OnWriteDone(e, buf, r); });
  return absl::OkStatus();
}

void NvmeTier::OnWriteDone(const std::shared_ptr<Entry>& e, uint8_t* buf, int64_t result) {
  MutexLock l(&mu_);
  ReturnBuffer(buf, e->record_bytes);
  e->written = true;
  e->write_result = result;
  e->sync_mark = e->seg->syncs_started;
  --writes_in_flight_;
  write_bytes_in_flight_ -= e->record_bytes;
  cv_.SignalAll();
}

// ---- seal ----

// Returns once an fdatasync of `seg` that started after the write (sync_mark) has returned.
// Syncs of one segment run one at a time; a seal that finds one running waits for it and
// then starts its own only if that one began too early to cover its record.
absl::Status NvmeTier::MakeDurable(Segment* seg, uint64_t sync_mark) {
  MutexLock l(&mu_);
  while (seg->syncs_done <= sync_mark) {
    if (seg->syncing) {
      cv_.Wait(&mu_);
      continue;
    }
    seg->syncing = true;
    uint64_t n = ++seg->syncs_started;
    mu_.Unlock();
    absl::Status st = io_->SyncData(seg->fd);
    mu_.Lock();
    seg->syncing = false;
    cv_.SignalAll();
    ++stats_.syncs;
    if (!st.ok()) {
      return Annotate(st, StrCat("nvme tier: fdatasync of segment ", seg->id));
    }
    seg->syncs_done = n;
  }
  return absl::OkStatus();
}

absl::Status NvmeTier::Seal(const BlockKey& key) {
  std::shared_ptr<Entry> e;
  {
    MutexLock l(&mu_);
    for (;;) {
      auto it = entries_.find(key);
      if (it == entries_.end()) return absl::NotFoundError(StrCat("seal: no page ", key.Hex()));
      e = it->second;
      if (e->sealed) return absl::OkStatus();
      if (!e->sealing && e->written) break;
      cv_.Wait(&mu_);
    }
    e->sealing = true;
  }
  absl::Status st = WriteStatus(e->write_result, e->record_bytes, e->seg->id, e->offset);
  if (st.ok()) st = MakeDurable(e->seg.get(), e->sync_mark);
  if (st.ok()) {
    rocksdb::WriteOptions wo;
    wo.sync = options_.sync_writes;
    IndexRecord r{e->meta, {e->seg->id, e->offset, e->xxh3}};
    r.meta.sealed = true;
    st = FromRocks(db_->Put(wo, KeySlice(key), EncodeIndexRecord(r)), "nvme index put");
  }
  MutexLock l(&mu_);
  e->sealing = false;
  if (st.ok()) {
    e->sealed = true;
    e->meta.sealed = true;
  }
  cv_.SignalAll();
  return st;
}

// ---- read ----

namespace {

// How one record is read: the page's aligned middle straight into the caller's buffer, the
// record header and the page's unaligned head and tail through a small bounce buffer; or,
// when the caller's buffer is not aligned for O_DIRECT, the whole record through `full`.
struct ReadPlan {
  IoRequest req;
  uint64_t mid_at = 0;  // page offset of the part read straight into the caller's buffer
  uint64_t mid_bytes = 0;
  uint64_t tail_bytes = 0;  // page bytes after it, read into `tail`
  uint8_t* head = nullptr;  // record header, then page bytes [0, mid_at)
  uint8_t* tail = nullptr;
  uint8_t* full = nullptr;  // owned (FreeAligned) when set
};

// `bounce` holds kAlign + a bytes; a is the O_DIRECT offset alignment, mem_align the buffer
// alignment it needs.
ReadPlan PlanRead(int fd, uint64_t offset, uint64_t size, std::span<uint8_t> dst, uint8_t* bounce,
                  uint64_t a, uint64_t mem_align) {
  ReadPlan p;
  p.req = {IoRequest::Op::kRead, fd, offset, {}, 0};
  const uint64_t page_at = offset + segment::kRecordHeaderBytes;
  const uint64_t q = AlignUp(page_at, a), r = AlignDown(page_at + size, a);
  uint8_t* mid = dst.data() + (q - page_at);
  if (r > q && reinterpret_cast<uintptr_t>(mid) % mem_align == 0) {
    p.head = bounce;
    p.tail = bounce + segment::kAlign;
    p.mid_at = q - page_at;
    p.mid_bytes = r - q;
    p.tail_bytes = page_at + size - r;
    p.req.iov[p.req.iovcnt++] = {p.head, q - offset};
    p.req.iov[p.req.iovcnt++] = {mid, p.mid_bytes};
    if (p.tail_bytes > 0) p.req.iov[p.req.iovcnt++] = {p.tail, a};
  } else {
    uint64_t len = AlignUp(segment::kRecordHeaderBytes + size, a);
    p.full = AllocAligned(len);
    p.head = p.full;
    p.req.iov[p.req.iovcnt++] = {p.full, len};
  }
  return p;
}

// Checks a completed read (`res` bytes or -errno) of the record (segment, offset) that the
// index says holds `key` with `size` bytes of XXH3-64 `xxh3`, and leaves the page in `dst`.
absl::StatusOr<size_t> FinishRead(const ReadPlan& p, int64_t res, const BlockKey& key,
                                  uint64_t segment, uint64_t offset, uint64_t size, uint64_t xxh3,
                                  std::span<uint8_t> dst) {
  auto lost = [&](std::string_view why) {
    return absl::DataLossError(
        StrCat("nvme page ", key.Hex(), " (segment ", segment, " offset ", offset, "): ", why));
  };
  if (res == -EIO || res == -EBADMSG || res == -ENODATA) {
    return lost(StrCat("read error: ", std::strerror(static_cast<int>(-res))));  // the medium's
  }
  if (res < 0) {  // not the page's fault (e.g. out of memory): no quarantine
    return Annotate(ErrnoToStatus(static_cast<int>(-res), "nvme read"), key.Hex());
  }
  if (static_cast<uint64_t>(res) < p.req.bytes()) {
    return lost(StrCat("short read (", res, " of ", p.req.bytes(), " bytes): the record is cut"));
  }
  absl::StatusOr<segment::RecordHeader> h =
      segment::DecodeRecordHeader({p.head, segment::kRecordHeaderBytes});
  if (!h.ok()) return lost(FromAbsl(h.status().message()));
  if (h->key != key || h->segment_id != segment || h->payload_bytes != size ||
      h->payload_xxh3 != xxh3) {
    return lost("the record there belongs to another page or write");
  }
  const uint8_t* page = p.full != nullptr ? p.full + segment::kRecordHeaderBytes : dst.data();
  if (p.full == nullptr) {
    std::memcpy(dst.data(), p.head + segment::kRecordHeaderBytes, p.mid_at);
    std::memcpy(dst.data() + p.mid_at + p.mid_bytes, p.tail, p.tail_bytes);
  }
  if (uint64_t sum = Xxh3_64(page, size); sum != xxh3) {
    return lost(StrCat("page checksum mismatch (stored ", xxh3, ", computed ", sum, ")"));
  }
  if (p.full != nullptr) std::memcpy(dst.data(), page, size);  // only verified bytes land
  return size;
}

}  // namespace

std::shared_ptr<NvmeTier::Entry> NvmeTier::FindWrittenLocked(const BlockKey& key) {
  for (;;) {  // an unsealed page is readable once its write has completed
    auto it = entries_.find(key);
    if (it == entries_.end()) return nullptr;
    if (it->second->written) return it->second;
    cv_.Wait(&mu_);
  }
}

absl::StatusOr<std::vector<absl::StatusOr<size_t>>> NvmeTier::ReadMany(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) {
  if (keys.size() != dsts.size()) {
    return absl::InvalidArgumentError(
        StrCat("ReadMany: ", keys.size(), " keys but ", dsts.size(), " buffers"));
  }
  std::vector<absl::StatusOr<size_t>> out(keys.size(), absl::InternalError("not read"));
  std::vector<std::shared_ptr<Entry>> entries(keys.size());
  {
    MutexLock l(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      std::shared_ptr<Entry> e = FindWrittenLocked(keys[i]);
      if (e == nullptr) {
        out[i] = absl::NotFoundError(StrCat("nvme read: no page ", keys[i].Hex()));
      } else if (dsts[i].size() < e->meta.size) {
        out[i] = absl::OutOfRangeError(
            StrCat("buffer of ", dsts[i].size(), " bytes < page of ", e->meta.size));
      } else if (e->write_result != static_cast<int64_t>(e->record_bytes)) {
        out[i] = absl::DataLossError(StrCat("nvme read: the write of ", keys[i].Hex(), " failed"));
      } else {
        entries[i] = std::move(e);
      }
    }
  }
  const uint64_t slot = segment::kAlign + dio_offset_align_;
  uint8_t* arena = AllocAligned(keys.size() * slot);
  std::unique_ptr<uint8_t, void (*)(uint8_t*)> hold(arena, &FreeAligned);
  std::vector<ReadPlan> plans;
  std::vector<IoRequest> reqs;
  std::vector<size_t> which;  // request -> key index
  for (size_t i = 0; i < keys.size(); ++i) {
    if (entries[i] == nullptr) continue;
    const Entry& e = *entries[i];
    plans.push_back(PlanRead(e.seg->fd, e.offset, e.meta.size, dsts[i], arena + i * slot,
                             dio_offset_align_, dio_mem_align_));
    reqs.push_back(plans.back().req);
    which.push_back(i);
  }
  // More than a few MiB of reads in flight only queue up in the device: fio on the project
  // VM, 2.5 MiB O_DIRECT io_uring reads, 2.2 GB/s at queue depth 1 and 3, 1.0-1.3 GB/s at
  // 4-16. So the depth is read_bytes_in_flight / the batch's mean read, within
  // [1, read_parallelism].
  uint64_t req_bytes = 0;
  for (const IoRequest& r : reqs) req_bytes += r.bytes();
  const uint64_t avg = reqs.empty() ? 1 : std::max<uint64_t>(1, req_bytes / reqs.size());
  const int depth = static_cast<int>(
      std::clamp<uint64_t>(options_.read_bytes_in_flight / avg, 1, options_.read_parallelism));
  RunIoBatch(io_, reqs, depth, [&](size_t j, int64_t res) {
    const size_t i = which[j];
    const Entry& e = *entries[i];
    out[i] = FinishRead(plans[j], res, keys[i], e.seg->id, e.offset, e.meta.size, e.xxh3, dsts[i]);
    if (absl::IsDataLoss(out[i].status())) {
      verify_counter_->Inc();
      log::Debug("nvme_read_verify_failed", "reason", out[i].status().ToString());
      MutexLock l(&mu_);
      ++stats_.verify_failures;
    }
  });
  for (ReadPlan& p : plans) {
    if (p.full != nullptr) FreeAligned(p.full);
  }
  return out;
}

absl::StatusOr<size_t> NvmeTier::Read(const BlockKey& key, std::span<uint8_t> dst) {
  std::span<uint8_t> d[1] = {dst};
  ASSIGN_OR_RETURN(auto res, ReadMany({&key, 1}, d));
  return std::move(res[0]);
}

}  // namespace kv
