// NvmeTier: opening and recovery, erase, listing, and ReadPageFromNvme. The write, seal and
// read paths are in nvme_tier_io.cc; space reclaim and disk usage in nvme_tier_reclaim.cc.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/time/clock.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/nvme_index.h"
#include "kvstore/nvme_tier_internal.h"
#include "kvstore/page_format.h"
#include "kvstore/segment_format.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace kv {

namespace fs = std::filesystem;
using namespace nvme_internal;  // NOLINT: this file's own internals

namespace nvme_internal {

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut() || s.IsIOError()) {
    return MarkRetryable(absl::UnavailableError(msg));
  }
  return absl::InternalError(msg);
}

uint8_t* AllocAligned(uint64_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, segment::kAlign, std::max<uint64_t>(bytes, 1)) != 0) {
    log::Error("nvme_alloc_failed", "bytes", bytes);
    std::abort();  // like operator new: out of memory is not a recoverable status here
  }
  return static_cast<uint8_t*>(p);
}
void FreeAligned(uint8_t* p) { std::free(p); }

absl::Status CheckLayout(const std::string& dir, bool create) {
  const std::string clear =
      StrCat(" The nvme tier is a cache: to start over, stop kvstrata and clear it with `rm -rf ",
             dir, "` (its pages are recomputed or published again).");
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "CURRENT", ec) || fs::exists(fs::path(dir) / "IDENTITY", ec)) {
    return absl::FailedPreconditionError(
        StrCat("nvme tier at ", dir,
               " holds the earlier format (one RocksDB database with the page bytes in blob "
               "files); this build keeps page bytes in segment files and does not read it.",
               clear));
  }
  fs::path marker = fs::path(dir) / kMarkerFile;
  if (fs::exists(marker, ec)) {
    std::ifstream in(marker);
    std::string line;
    std::getline(in, line);
    if (line + "\n" != kMarker) {
      return absl::FailedPreconditionError(StrCat("nvme tier at ", dir, " is marked '", line,
                                                  "', a format this build does not read.", clear));
    }
    return absl::OkStatus();
  }
  if (!create) {
    return absl::FailedPreconditionError(
        StrCat(dir, " is not a kvstrata nvme tier (no ", kMarkerFile, " file)"));
  }
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    return absl::FailedPreconditionError(
        StrCat("nvme tier path ", dir, " is not empty and holds no ", kMarkerFile,
               " marker: refusing to use a directory kvstrata did not create. Point the tier at an "
               "empty or missing directory."));
  }
  return absl::OkStatus();
}

}  // namespace nvme_internal

namespace {

absl::Status FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, StrCat("open ", path));
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (r != 0) return ErrnoToStatus(err, StrCat("fsync ", path));
  return absl::OkStatus();
}

// Reads [offset, offset + len) of an O_DIRECT descriptor synchronously (len aligned).
absl::Status PreadDirect(int fd, uint8_t* buf, uint64_t len, uint64_t offset) {
  uint64_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, buf + got, len - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, "read segment");
    if (n == 0) return absl::DataLossError(StrCat("segment ends at ", offset + got));
    got += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

NvmeTier::NvmeTier(NvmeTierOptions options) : options_(std::move(options)) {
  MetricsRegistry* reg = options_.metrics ? options_.metrics : &MetricsRegistry::Default();
  disk_gauge_ = reg->GetGauge("kvstrata_nvme_disk_bytes",
                              "Bytes the nvme tier directory takes on disk (as du counts them)");
  reclaimed_counter_ = reg->GetCounter("kvstrata_nvme_reclaimed_bytes_total",
                                       "Segment bytes freed by hole punching or deletion");
  verify_counter_ = reg->GetCounter("kvstrata_nvme_verify_failures_total",
                                    "nvme page reads that failed verification");
  // Registered here so that the series exists (at 0) before anything is quarantined.
  (void)reg->GetCounter("kvstrata_nvme_index_quarantined_total",
                        "Damaged nvme indexes moved aside at open (the tier restarted empty)");
}

std::string NvmeTier::segment_dir() const {
  return (fs::path(options_.path) / kSegmentDir).string();
}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Open(NvmeTierOptions options) {
  if (options.path.empty()) return absl::InvalidArgumentError("nvme tier: empty path");
  if (options.segment_bytes < (1u << 20) || options.segment_bytes % segment::kAlign != 0 ||
      options.write_depth < 1 || options.read_parallelism < 1 || options.read_parallelism > 1024) {
    return absl::InvalidArgumentError(
        "nvme tier: need segment_bytes >= 1 MiB and a multiple of 4096, write_depth >= 1, "
        "1 <= read_parallelism <= 1024");
  }
  bool index_damaged = false;
  absl::StatusOr<std::unique_ptr<NvmeTier>> t = OpenOnce(options, &index_damaged);
  if (t.ok() || !index_damaged || !options.quarantine_damaged_index) return t;
  // The cache must never keep the node from serving: set the damaged index aside and start
  // over with an empty one. The segments stay; no index names their records, so reclaim
  // frees them in the background.
  RETURN_IF_ERROR(QuarantineIndex(options, t.status()));
  t = OpenOnce(options, &index_damaged);
  if (t.ok()) {
    MutexLock l(&(*t)->mu_);
    (*t)->stats_.index_quarantined = 1;
  }
  return t;
}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::OpenOnce(const NvmeTierOptions& options,
                                                             bool* index_damaged) {
  std::unique_ptr<NvmeTier> t(new NvmeTier(options));
  RETURN_IF_ERROR(t->PrepareDirectory());
  absl::Status index = t->OpenIndex();
  *index_damaged = absl::IsDataLoss(index);
  RETURN_IF_ERROR(index);
  if (t->options_.io != nullptr) {
    t->io_ = t->options_.io;
  } else {
    ASSIGN_OR_RETURN(t->own_io_, NewUringSegmentIo(2 * t->options_.write_depth +
                                                   t->options_.read_parallelism + 16));
    t->io_ = t->own_io_.get();
  }
  RETURN_IF_ERROR(t->ProbeDirectIo());
  RETURN_IF_ERROR(t->LoadSegments());
  index = t->LoadIndex();
  *index_damaged = absl::IsDataLoss(index);
  RETURN_IF_ERROR(index);
  t->reclaimer_ = std::thread([p = t.get()] { p->ReclaimLoop(); });
  t->ScheduleOpenReclaim();
  return t;
}

std::string NvmeTier::QuarantineDir(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "dir/" names dir, not a file inside it
  return StrCat(p.string(), ".quarantine");
}

absl::Status NvmeTier::QuarantineIndex(const NvmeTierOptions& options, const absl::Status& why) {
  const std::string dir = QuarantineDir(options.path);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return Annotate(why, StrCat("and cannot create quarantine dir ", dir, ": ", ec.message()));
  const std::string to =
      (fs::path(dir) /
       StrCat("index-", absl::FormatTime("%Y%m%dT%H%M%E6SZ", absl::Now(), absl::UTCTimeZone())))
          .string();
  const std::string from = (fs::path(options.path) / kIndexDir).string();
  fs::rename(from, to, ec);
  if (ec) return Annotate(why, StrCat("and cannot move ", from, " to ", to, ": ", ec.message()));
  fs::create_directories(from, ec);
  if (ec) return ErrnoToStatus(ec.value(), StrCat("create ", from));
  RETURN_IF_ERROR(FsyncPath(options.path));
  MetricsRegistry* reg = options.metrics ? options.metrics : &MetricsRegistry::Default();
  reg->GetCounter("kvstrata_nvme_index_quarantined_total",
                  "Damaged nvme indexes moved aside at open (the tier restarted empty)")
      ->Inc();
  log::Error("nvme_index_quarantined", "path", options.path, "moved_to", to, "reason",
             why.ToString(), "effect",
             "the nvme tier starts empty; its pages are recomputed on demand");
  return absl::OkStatus();
}

absl::Status NvmeTier::PrepareDirectory() {
  const std::string& dir = options_.path;
  RETURN_IF_ERROR(CheckLayout(dir, /*create=*/true));
  std::error_code ec;
  fs::path marker = fs::path(dir) / kMarkerFile;
  if (fs::exists(marker, ec)) {
    // A subdirectory deleted under a marked tier is damage, not a reason to refuse to start:
    // recreate it (index records naming lost segments are then dropped by LoadIndex).
    for (const char* sub : {kSegmentDir, kIndexDir}) {
      const fs::path p = fs::path(dir) / sub;
      if (fs::is_directory(p, ec)) continue;
      log::Error("nvme_dir_missing", "path", p.string(), "effect", "recreated empty");
      fs::create_directories(p, ec);
      if (ec) return ErrnoToStatus(ec.value(), StrCat("create ", p.string()));
    }
    return absl::OkStatus();
  }
  for (const char* sub : {kSegmentDir, kIndexDir}) {
    fs::create_directories(fs::path(dir) / sub, ec);
    if (ec) return ErrnoToStatus(ec.value(), StrCat("create ", dir, "/", sub));
  }
  // The marker goes last, atomically: a directory with it is always complete.
  std::string tmp = (fs::path(dir) / "KVSTRATA_NVME.tmp").string();
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kMarker;
    out.flush();
    if (!out) return absl::UnavailableError(StrCat("cannot write ", tmp));
  }
  RETURN_IF_ERROR(FsyncPath(tmp));
  fs::rename(tmp, marker, ec);
  if (ec) return ErrnoToStatus(ec.value(), StrCat("rename ", tmp));
  return FsyncPath(dir);
}

absl::Status NvmeTier::OpenIndex() {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.write_buffer_size = options_.write_buffer_bytes;
  o.max_background_jobs = 2;
  o.keep_log_file_num = 4;
  // RocksDB preallocates its WAL (1.1 x the memtable) and MANIFEST (4 MiB) by default; the
  // index is small, and preallocated space would count in the tier's disk usage for nothing.
  o.allow_fallocate = false;
  rocksdb::DB* raw = nullptr;
  std::string dir = (fs::path(options_.path) / kIndexDir).string();
  RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(o, dir, &raw), StrCat("open nvme index at ", dir)));
  db_.reset(raw);
  return absl::OkStatus();
}

// The alignment O_DIRECT needs on this filesystem (statx STATX_DIOALIGN; 4096 when the
// kernel does not say). Records are 4096-aligned, so anything up to 4096 works.
absl::Status NvmeTier::ProbeDirectIo() {
  std::string probe = (fs::path(options_.path) / kMarkerFile).string();
  struct statx sx {};
  if (::statx(AT_FDCWD, probe.c_str(), 0, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) != 0) {
    if (sx.stx_dio_offset_align == 0) {
      return absl::FailedPreconditionError(
          StrCat("the filesystem of ", options_.path, " does not support O_DIRECT"));
    }
    dio_mem_align_ = std::max<uint64_t>(sx.stx_dio_mem_align, 8);
    dio_offset_align_ = std::max<uint64_t>(sx.stx_dio_offset_align, 512);
  }
  if (dio_offset_align_ > segment::kAlign || dio_mem_align_ > segment::kAlign) {
    return absl::FailedPreconditionError(StrCat("O_DIRECT on ", options_.path, " needs ",
                                                dio_offset_align_,
                                                "-byte alignment; segments "
                                                "are 4096-aligned"));
  }
  return absl::OkStatus();
}

absl::Status NvmeTier::LoadSegments() {
  std::error_code ec;
  uint8_t* buf = AllocAligned(segment::kSegmentHeaderBytes);
  std::unique_ptr<uint8_t, void (*)(uint8_t*)> hold(buf, &FreeAligned);
  MutexLock l(&mu_);
  for (const auto& de : fs::directory_iterator(segment_dir(), ec)) {
    uint64_t id = 0;
    if (!segment::ParseSegmentFileName(de.path().filename().string(), &id)) continue;
    auto seg = std::make_shared<Segment>();
    seg->id = id;
    seg->path = de.path().string();
    seg->fd = ::open(seg->path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    if (seg->fd < 0) return ErrnoToStatus(errno, StrCat("open segment ", seg->path));
    struct stat st {};
    if (::fstat(seg->fd, &st) != 0) return ErrnoToStatus(errno, StrCat("stat ", seg->path));
    seg->file_bytes = seg->frontier = static_cast<uint64_t>(st.st_size);
    absl::Status s = PreadDirect(seg->fd, buf, segment::kSegmentHeaderBytes, 0);
    absl::StatusOr<segment::SegmentHeader> h =
        s.ok() ? segment::DecodeSegmentHeader({buf, segment::kSegmentHeaderBytes})
               : absl::StatusOr<segment::SegmentHeader>(s);
    if (h.ok() && h->segment_id != id) {
      h = absl::DataLossError(StrCat("header names segment ", h->segment_id));
    }
    next_segment_id_ = std::max(next_segment_id_, id + 1);
    if (!h.ok()) {
      // Never written whole (a crash while creating it) or damaged: no page is read from it.
      log::Warn("nvme_segment_dropped", "path", seg->path, "reason", h.status().ToString());
      seg->retired = true;
      Enqueue({ReclaimTask::Kind::kDelete, seg});
      continue;
    }
    segments_.emplace(id, std::move(seg));
  }
  if (ec) return ErrnoToStatus(ec.value(), StrCat("list ", segment_dir()));
  return absl::OkStatus();
}

absl::Status NvmeTier::LoadIndex() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  rocksdb::WriteBatch drop;
  MutexLock l(&mu_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    BlockKey key;
    absl::StatusOr<IndexRecord> r = absl::DataLossError("key is not 32 bytes");
    if (it->key().size() == key.bytes.size()) {
      std::memcpy(key.bytes.data(), it->key().data(), key.bytes.size());
      r = DecodeIndexRecord(key, it->value().ToStringView());
    }
    auto seg = r.ok() ? segments_.find(r->ref.segment) : segments_.end();
    uint64_t rec = r.ok() ? segment::RecordBytes(r->meta.size) : 0;
    if (!r.ok() || seg == segments_.end() || r->ref.offset < segment::kSegmentHeaderBytes ||
        r->ref.offset + rec > seg->second->file_bytes) {
      log::Warn("nvme_index_record_dropped", "key", key.Hex(), "reason",
                r.ok() ? std::string("its segment or record is not there") : r.status().ToString());
      drop.Delete(it->key()).PermitUncheckedError();
      ++stats_.dropped_at_open;
      continue;
    }
    auto e = std::make_shared<Entry>();
    e->meta = r->meta;
    e->seg = seg->second;
    e->offset = r->ref.offset;
    e->record_bytes = rec;
    e->xxh3 = r->ref.payload_xxh3;
    e->written = true;
    e->write_result = static_cast<int64_t>(rec);
    e->sealed = true;
    ++e->seg->records;
    used_ += rec;
    entries_.emplace(key, std::move(e));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan nvme index"));
  if (drop.Count() > 0) {
    RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &drop), "drop index records"));
  }
  log::Info("nvme_tier_open", "path", options_.path, "pages", entries_.size(), "bytes", used_,
            "segments", segments_.size(), "dropped", stats_.dropped_at_open);
  return absl::OkStatus();
}

// Every segment found at open is closed for writing. Space no index record names (records
// never sealed, torn by the crash, erased before their hole was punched, the preallocated
// tail) is reclaimed; a segment without pages is deleted.
void NvmeTier::ScheduleOpenReclaim() {
  std::map<uint64_t, std::vector<std::pair<uint64_t, uint64_t>>> live;
  std::vector<ReclaimTask> tasks;
  {
    MutexLock l(&mu_);
    for (const auto& [k, e] : entries_) live[e->seg->id].emplace_back(e->offset, e->record_bytes);
    for (auto it = segments_.begin(); it != segments_.end();) {
      auto seg = it->second;
      auto& ranges = live[seg->id];
      if (ranges.empty()) {
        ++it;
        RetireSegmentLocked(seg);
        continue;
      }
      std::sort(ranges.begin(), ranges.end());
      uint64_t at = segment::kSegmentHeaderBytes;
      for (const auto& [off, len] : ranges) {
        if (off > at) tasks.push_back({ReclaimTask::Kind::kPunchIfData, seg, at, off - at});
        at = std::max(at, off + len);
      }
      seg->frontier = at;
      if (seg->file_bytes > at) tasks.push_back({ReclaimTask::Kind::kTrim, seg, at, 0});
      ++it;
    }
  }
  for (auto& t : tasks) Enqueue(std::move(t));
}

NvmeTier::~NvmeTier() {
  {
    MutexLock l(&mu_);
    while (writes_in_flight_ > 0 || rolling_) cv_.Wait(&mu_);
    if (active_ != nullptr && active_->frontier < active_->file_bytes) {
      Enqueue({ReclaimTask::Kind::kTrim, active_, active_->frontier, 0});
    }
  }
  if (reclaimer_.joinable()) {
    {
      MutexLock l(&reclaim_mu_);
      reclaim_stop_ = true;
      reclaim_cv_.SignalAll();
    }
    reclaimer_.join();
  }
  if (db_ != nullptr) {
    // A restart then reads an .sst instead of replaying the WAL. Failure costs only that.
    db_->Flush(rocksdb::FlushOptions()).PermitUncheckedError();
    db_->Close().PermitUncheckedError();
  }
  db_.reset();
  MutexLock l(&mu_);
  for (auto& [cap, buf] : free_buffers_) FreeAligned(buf);
  free_buffers_.clear();
}

uint64_t NvmeTier::used_bytes() const {
  MutexLock l(&mu_);
  return used_;
}

uint64_t NvmeTier::Footprint(uint64_t size) const {
  uint64_t rec = segment::RecordBytes(size);
  bool fits = size > 0 && size <= segment::kMaxPayloadBytes && rec <= options_.capacity_bytes &&
              rec + segment::kSegmentHeaderBytes <= options_.segment_bytes;
  return fits ? rec : 0;
}

bool NvmeTier::HasRoom(uint64_t size) const {
  MutexLock l(&mu_);
  return used_ + segment::RecordBytes(size) <= options_.capacity_bytes;
}

absl::StatusOr<std::span<const uint8_t>> NvmeTier::Lend(const BlockKey& key) {
  return absl::UnimplementedError("the nvme tier cannot lend; use Read");
}

absl::StatusOr<PageLocation> NvmeTier::Locate(const BlockKey& key) {
  return absl::UnimplementedError("the nvme tier has no registered memory region");
}

absl::Status NvmeTier::Erase(const BlockKey& key) {
  std::shared_ptr<Entry> e;
  {
    MutexLock l(&mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return absl::NotFoundError(StrCat("erase: no page ", key.Hex()));
    e = it->second;
    // Its bytes may still be on their way to the disk, or being sealed: wait for both.
    while (e->sealing || !e->written) cv_.Wait(&mu_);
    it = entries_.find(key);
    if (it == entries_.end() || it->second != e) {
      return absl::NotFoundError(StrCat("erase: no page ", key.Hex()));
    }
    entries_.erase(it);
    used_ -= e->record_bytes;
  }
  absl::Status st;
  if (e->sealed) {
    // The index record goes first: a crash after it leaves unindexed bytes, never the reverse.
    st = FromRocks(db_->Delete(rocksdb::WriteOptions(), KeySlice(key)), "nvme index delete");
  }
  MutexLock l(&mu_);
  --e->seg->records;
  if (!st.ok()) {
    log::Error("nvme_erase_failed", "key", key.Hex(), "reason", st.ToString());
    return st;  // bytes kept: the record is still valid if the index record survives
  }
  Enqueue({ReclaimTask::Kind::kPunch, e->seg, e->offset, e->record_bytes});
  if (e->seg->records == 0 && !e->seg->active && !e->seg->retired) RetireSegmentLocked(e->seg);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PageMeta>> NvmeTier::List() {
  MutexLock l(&mu_);
  std::vector<PageMeta> out;
  for (const auto& [k, e] : entries_) {
    if (e->sealed) out.push_back(e->meta);
  }
  return out;
}

absl::Status NvmeTier::Flush() {
  return FromRocks(db_->Flush(rocksdb::FlushOptions()), "nvme index flush");
}

NvmeTierStats NvmeTier::Stats() const {
  MutexLock l(&mu_);
  NvmeTierStats s = stats_;
  s.segments = segments_.size();
  s.pages = entries_.size();
  s.record_bytes = used_;
  return s;
}

// ---- read-only access for `kvstrata inspect` ----

absl::StatusOr<std::vector<uint8_t>> ReadPageFromNvme(const std::string& path,
                                                      const BlockKey& key) {
  RETURN_IF_ERROR(CheckLayout(path, /*create=*/false));
  rocksdb::DB* raw = nullptr;
  std::string index = (fs::path(path) / kIndexDir).string();
  RETURN_IF_ERROR(FromRocks(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), index, &raw),
                            StrCat("open nvme index at ", index, " read-only")));
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string value;
  absl::Status st =
      FromRocks(db->Get(rocksdb::ReadOptions(), KeySlice(key), &value), StrCat("page ", key.Hex()));
  if (absl::IsNotFound(st)) {
    return absl::NotFoundError(
        StrCat("page ", key.Hex(), " is not in the nvme tier at ", path, " (absent or unsealed)"));
  }
  RETURN_IF_ERROR(st);
  ASSIGN_OR_RETURN(IndexRecord r, DecodeIndexRecord(key, value));
  std::string seg_path =
      (fs::path(path) / kSegmentDir / segment::SegmentFileName(r.ref.segment)).string();
  int fd = ::open(seg_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::DataLossError(StrCat("page ", key.Hex(), ": segment ", seg_path, " is missing (",
                                      std::strerror(errno), ")"));
  std::vector<uint8_t> rec(segment::kRecordHeaderBytes + r.meta.size);
  ssize_t n = ::pread(fd, rec.data(), rec.size(), static_cast<off_t>(r.ref.offset));
  ::close(fd);
  auto lost = [&](std::string_view why) {
    return absl::DataLossError(
        StrCat("page ", key.Hex(), " in ", seg_path, " at ", r.ref.offset, ": ", why));
  };
  if (n != static_cast<ssize_t>(rec.size())) return lost("the record is cut short");
  absl::StatusOr<segment::RecordHeader> h = segment::DecodeRecordHeader(rec);
  if (!h.ok()) return lost(FromAbsl(h.status().message()));
  if (h->key != key || h->segment_id != r.ref.segment || h->payload_bytes != r.meta.size ||
      h->payload_xxh3 != r.ref.payload_xxh3) {
    return lost("the record there belongs to another page");
  }
  std::vector<uint8_t> out(rec.begin() + segment::kRecordHeaderBytes, rec.end());
  if (Xxh3_64(out.data(), out.size()) != h->payload_xxh3) return lost("page checksum mismatch");
  absl::StatusOr<PageView> view = DecodePage(out);
  if (!view.ok()) return absl::DataLossError(view.status().message());
  if (view->header().key != key) {
    return absl::DataLossError(
        StrCat("page stored under ", key.Hex(), " names key ", view->header().key.Hex()));
  }
  return out;
}

}  // namespace kv
