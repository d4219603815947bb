// NvmeTier: the nvme tier (DESIGN.md "Tiers"; on-disk format in docs/formats.md §3).
//
// Page bytes live in append-only segment files (segment_format.h) written and read with
// O_DIRECT through io_uring (segment_io.h); RocksDB holds only the index, one small record
// per sealed page: key -> (segment, offset, length, XXH3-64, namespace, layout, parent, resume
// role and bytes, last access) (nvme_index.h). The directory holds:
//   KVSTRATA_NVME   format marker ("kvstrata nvme tier: segments v1")
//   segments/       <16 hex digits>.seg, one preallocated file of segment_bytes each
//   index/          the RocksDB index (with its WAL)
//
// Write() copies the page into an aligned record (header + page + zero padding), queues it
// at the end of the active segment and returns; up to write_depth records are in flight.
// Seal() makes the page durable and visible, in this order:
//   1. the record's write has completed (an error here fails the seal);
//   2. fdatasync of the segment has returned, for a sync that started after that completion
//      (concurrent seals share one fdatasync: group commit);
//   3. only then is the index record written to RocksDB (through its WAL; fsynced too when
//      sync_writes is set).
// A crash (kill -9 or power loss) therefore leaves at worst bytes that no index record names,
// never an index record that names torn bytes. A new segment's file, allocation and header
// are fdatasynced, and the directory fsynced, before any record in it is written.
//
// Reads: ReadMany() reads up to read_parallelism records at once (fewer for large pages:
// read_bytes_in_flight caps the bytes in flight) with one io_uring readv each, the page bytes
// straight into the caller's buffer when it is aligned for direct I/O (a page-aligned, e.g.
// registered, buffer; otherwise through a bounce buffer), and verifies there: the record
// header (magic, checksum, key, segment, length) and the page's XXH3-64 against the header
// and the index. A mismatch, a short read or a read error is DataLoss; the TieredStore then
// quarantines the page and it becomes a miss.
//
// Restart: Open() opens the index and loads it into memory; it never reads page bytes, so
// the tier serves hits as soon as Open() returns. Writes always go to a new segment. Bytes no
// index record names (unsealed or torn records, a crash's leftovers) are reclaimed in the
// background.
//
// Space: Erase() deletes the index record, then punches a hole over the record
// (fallocate PUNCH_HOLE) from a background thread; a segment with no page left is deleted.
// Reclaim moves no page bytes. used_bytes() counts the records of stored pages (sealed or
// not); DiskUsage() is what the directory takes on disk, counted the way du counts it, and
// the gauge kvstrata_nvme_disk_bytes reports it (refreshed every disk_usage_refresh and
// after reclaim work).
//
// Damage: an index RocksDB reports as corrupt (a flipped byte in an .sst, a missing table
// file) is quarantined by Open(): index/ is moved to PATH.quarantine/index-<UTC time>, an
// Error log line (nvme_index_quarantined) and kvstrata_nvme_index_quarantined_total say so,
// and the tier starts with an empty index. The segments stay where they are; no index record
// names their records any more, so reclaim frees them. The tier is a cache: a damaged index
// costs recomputation, never the node. Other failures (I/O errors, the index locked by a
// running process) still fail Open(): nothing says the directory is damaged.
//
// Compatibility: a directory in the earlier format (one RocksDB database with page bytes in
// blob files), a marker of another format, or a non-empty directory without a marker is
// refused with FailedPrecondition saying how to clear it. Nothing in it is read.
//
// Thread-safety: every method is safe for concurrent use. Nothing returned borrows tier
// memory; Read() fills the caller's buffer.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "kvstore/segment_io.h"
#include "kvstore/tier.h"

namespace rocksdb {
class DB;
}  // namespace rocksdb

namespace kv {

struct NvmeTierOptions {
  std::string path;                       // tier directory; created if missing
  uint64_t capacity_bytes = 64ull << 30;  // record bytes the tier may hold
  // Size of each segment file, preallocated when it is created; a multiple of 4096 of at
  // least 1 MiB. A page must fit one segment.
  uint64_t segment_bytes = 256ull << 20;
  int write_depth = 32;                          // page writes in flight at most
  uint64_t write_bytes_in_flight = 64ull << 20;  // and their bytes (one larger page may go)
  int read_parallelism = 16;                     // reads in flight per ReadMany() call
  uint64_t read_bytes_in_flight = 8ull << 20;    // and their bytes (at least one read)
  bool sync_writes = false;  // also fsync the index WAL at each seal (page bytes always are)
  uint64_t write_buffer_bytes = 16ull << 20;  // RocksDB memtable of the index
  absl::Duration disk_usage_refresh = absl::Seconds(1);
  SegmentIo* io = nullptr;             // not owned; nullptr: the tier's own io_uring
  MetricsRegistry* metrics = nullptr;  // nullptr: MetricsRegistry::Default()
  // Move a corrupt index aside and start empty (see "Damage" above); false: fail Open().
  bool quarantine_damaged_index = true;
};

struct NvmeTierStats {
  uint64_t segments = 0;             // segment files
  uint64_t pages = 0;                // pages stored, sealed or not
  uint64_t record_bytes = 0;         // used_bytes()
  uint64_t disk_bytes = 0;           // last DiskUsage() result
  uint64_t syncs = 0;                // fdatasyncs of segments done for seals
  uint64_t reclaimed_bytes = 0;      // bytes punched out or freed by deleting segments
  uint64_t reclaim_moved_bytes = 0;  // page bytes reclaim copied: always 0 (no compaction)
  uint64_t verify_failures = 0;      // reads that failed verification
  uint64_t dropped_at_open = 0;      // index records naming no valid record, dropped by Open()
  uint64_t index_quarantined = 0;    // 1 when Open() moved a damaged index aside
};

class NvmeTier : public Tier {
 public:
  // Opens (or creates) the tier at options.path and loads its index. InvalidArgument for bad
  // options; FailedPrecondition for a directory this build will not read (the message says
  // how to clear it) or a filesystem without O_DIRECT; Unavailable when io_uring or RocksDB
  // cannot start (the message carries the reason). A corrupt index is quarantined, not an
  // error (unless options.quarantine_damaged_index is false: then DataLoss).
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Open(NvmeTierOptions options);
  // Where Open() moves damaged indexes of the tier at `path`: PATH.quarantine.
  static std::string QuarantineDir(const std::string& path);
  // Waits for writes in flight and queued reclaim work, flushes the index memtable (so a
  // restart replays no WAL), then closes.
  ~NvmeTier() override;

  TierKind kind() const override { return TierKind::kNvme; }
  uint64_t capacity_bytes() const override { return options_.capacity_bytes; }
  uint64_t used_bytes() const override;
  // The record size (header + page, 4096-aligned); 0 if it can never fit.
  uint64_t Footprint(uint64_t size) const override;
  bool HasRoom(uint64_t size) const override;
  // Queues the page's record; errors as Tier::Write, plus ResourceExhausted when no new
  // segment can be allocated (disk full). A failed record write shows up at Seal().
  absl::Status Write(const PageMeta& meta, std::string_view bytes) override;
  // Durable, then indexed (see above). NotFound if absent; ResourceExhausted when the
  // record's write hit a full disk; Unavailable/DataLoss for other write or sync errors (the
  // page stays unsealed: Erase it). OK at once for a sealed page.
  absl::Status Seal(const BlockKey& key) override;
  // Reads and verifies; waits for an unsealed page's write. NotFound if absent; OutOfRange
  // if `dst` is too small (nothing written to it); DataLoss if the record does not verify.
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override;
  absl::StatusOr<std::vector<absl::StatusOr<size_t>>> ReadMany(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) override;
  absl::StatusOr<std::span<const uint8_t>> Lend(const BlockKey& key) override;
  absl::StatusOr<PageLocation> Locate(const BlockKey& key) override;
  // Removes the page: its index record first, then its bytes (a hole punched in the
  // background). NotFound if absent; the RocksDB error if the index record could not be
  // deleted (the page is then gone from this process but its bytes are kept).
  absl::Status Erase(const BlockKey& key) override;
  absl::StatusOr<std::vector<PageMeta>> List() override;

  // Bytes the tier directory takes on disk, as `du -s --block-size=1 DIR` counts them
  // (allocated blocks of every file and directory), measured now; also sets the gauge.
  absl::StatusOr<uint64_t> DiskUsage();
  // Blocks until queued reclaim work (hole punches, segment deletions) is done, or for at
  // most `timeout`. Returns false if work was still queued or running when it gave up.
  bool WaitReclaimIdle(absl::Duration timeout = absl::InfiniteDuration());
  NvmeTierStats Stats() const;
  // Flushes the index memtable to an SST file (tests and benchmarks).
  absl::Status Flush();
  const std::string& path() const { return options_.path; }
  // Directory of the segment files.
  std::string segment_dir() const;

 private:
  struct Segment;
  struct Entry;
  struct ReclaimTask {
    enum class Kind : uint8_t { kPunch, kPunchIfData, kTrim, kDelete };
    Kind kind;
    std::shared_ptr<Segment> seg;
    uint64_t offset = 0, len = 0;
  };

  explicit NvmeTier(NvmeTierOptions options);
  // One attempt of Open(); *index_damaged tells whether it failed because the index is corrupt.
  static absl::StatusOr<std::unique_ptr<NvmeTier>> OpenOnce(const NvmeTierOptions& options,
                                                            bool* index_damaged);
  // Moves PATH/index aside (see "Damage"), logs it and counts it; `why` is the open error.
  static absl::Status QuarantineIndex(const NvmeTierOptions& options, const absl::Status& why);
  // Open() steps (nvme_tier.cc).
  absl::Status PrepareDirectory();
  absl::Status OpenIndex();
  absl::Status ProbeDirectIo();
  absl::Status LoadSegments();
  absl::Status LoadIndex();
  void ScheduleOpenReclaim() ABSL_LOCKS_EXCLUDED(mu_);
  // Write path (nvme_tier_io.cc).
  absl::StatusOr<std::shared_ptr<Segment>> CreateSegment(uint64_t id);
  absl::Status ReserveLocked(const BlockKey& key, uint64_t record_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnWriteDone(const std::shared_ptr<Entry>& e, uint8_t* buf, int64_t result);
  absl::Status MakeDurable(Segment* seg, uint64_t sync_mark);
  uint8_t* TakeBuffer(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry of `key` once its write has completed (waits); nullptr if absent.
  std::shared_ptr<Entry> FindWrittenLocked(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReturnBuffer(uint8_t* buf, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reclaim (nvme_tier.cc).
  void Enqueue(ReclaimTask task);
  void RetireSegmentLocked(const std::shared_ptr<Segment>& seg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReclaimLoop();
  static std::vector<ReclaimTask> Coalesce(std::vector<ReclaimTask> batch);
  void RunReclaim(const ReclaimTask& t);

  const NvmeTierOptions options_;
  std::unique_ptr<SegmentIo> own_io_;
  SegmentIo* io_ = nullptr;
  std::unique_ptr<rocksdb::DB> db_;
  uint64_t dio_mem_align_ = 4096;
  uint64_t dio_offset_align_ = 4096;
  Gauge* disk_gauge_ = nullptr;
  Counter* reclaimed_counter_ = nullptr;
  Counter* verify_counter_ = nullptr;

  mutable Mutex mu_;
  CondVar cv_;  // write completions, seals, syncs, segment rolls, write budget
  absl::flat_hash_map<BlockKey, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::shared_ptr<Segment>> segments_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Segment> active_ ABSL_GUARDED_BY(mu_);
  uint64_t next_segment_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool rolling_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  int writes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t write_bytes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::multimap<uint64_t, uint8_t*> free_buffers_ ABSL_GUARDED_BY(mu_);  // capacity -> buffer
  uint64_t free_buffer_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  NvmeTierStats stats_ ABSL_GUARDED_BY(mu_);

  Mutex reclaim_mu_;
  CondVar reclaim_cv_;
  std::deque<ReclaimTask> reclaim_queue_ ABSL_GUARDED_BY(reclaim_mu_);
  bool reclaim_busy_ ABSL_GUARDED_BY(reclaim_mu_) = false;
  bool reclaim_stop_ ABSL_GUARDED_BY(reclaim_mu_) = false;
  std::thread reclaimer_;
};

// Reads one sealed page by key straight from an nvme tier directory (the index opened
// read-only, so it works beside a running store) and verifies it: the record header and
// checksum, then the page decoder (header and section checksums) and that the page's own
// key is `key`. NotFound when the key is absent or unsealed; DataLoss when the bytes do not
// verify; FailedPrecondition for a directory in another format; Unavailable when the index
// cannot be opened. This is what `kvstrata inspect --nvme=DIR --key=HEX` calls.
absl::StatusOr<std::vector<uint8_t>> ReadPageFromNvme(const std::string& path, const BlockKey& key);

}  // namespace kv
