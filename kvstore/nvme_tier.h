// NvmeTier: the nvme tier on RocksDB (DESIGN.md "Tiers").
//
// One RocksDB database at a configured path with two column families:
//   - "pages": block key -> encoded page bytes. Integrated BlobDB (enable_blob_files) keeps
//     the page bytes in blob files, so the LSM tree holds only small references;
//   - "meta":  block key -> PageMeta (namespace, layout, size, parent, sealed, last access).
// Write() puts bytes and unsealed metadata in one WriteBatch; Seal() rewrites the metadata
// as sealed. Both go through the WAL, so after a crash (kill -9) the database comes back
// with every batch that was written either whole or not at all. Open() then deletes the
// pages that were written but never sealed, and List() returns only sealed ones. Checksums
// inside pages are verified by the TieredStore; RocksDB additionally checks its own block
// and blob CRCs on every read and reports a mismatch as DataLoss.
//
// Thread-safety: every method is safe for concurrent use (RocksDB is; the in-memory
// metadata map has its own mutex). Read() copies into the caller's buffer; nothing returned
// borrows RocksDB memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "kvstore/tier.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace kv {

struct NvmeTierOptions {
  std::string path;                       // database directory; created if missing
  uint64_t capacity_bytes = 64ull << 30;  // page bytes the tier may hold
  bool sync_writes = false;       // fsync the WAL on each seal (power-loss durability; kill -9
                                  // safety needs only the WAL, which the OS keeps)
  bool use_direct_reads = false;  // O_DIRECT for SST/blob reads (see bench tiers)
  bool use_direct_io_for_flush = false;  // O_DIRECT for flush/compaction file writes
  uint64_t blob_file_bytes = 256ull << 20;
  uint64_t write_buffer_bytes = 64ull << 20;
  int background_jobs = 2;
  // Blob reads in flight per ReadMany() (the caller's thread plus read_parallelism - 1 pool
  // threads); 1 reads a batch with one sequential MultiGet.
  int read_parallelism = 4;
};

class NvmeTier : public Tier {
 public:
  // Opens (or creates) the database and recovers: unsealed pages are deleted, sealed pages'
  // metadata is loaded. InvalidArgument for an empty path; Unavailable/DataLoss when
  // RocksDB cannot open the directory (the message carries RocksDB's).
  static absl::StatusOr<std::unique_ptr<NvmeTier>> Open(NvmeTierOptions options);
  ~NvmeTier() override;

  TierKind kind() const override { return TierKind::kNvme; }
  uint64_t capacity_bytes() const override { return options_.capacity_bytes; }
  uint64_t used_bytes() const override;
  uint64_t Footprint(uint64_t size) const override {
    return size <= options_.capacity_bytes ? size : 0;
  }
  bool HasRoom(uint64_t size) const override;
  absl::Status Write(const PageMeta& meta, std::string_view bytes) override;
  absl::Status Seal(const BlockKey& key) override;
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override;
  // Batched: up to read_parallelism concurrent MultiGets over ranges of the batch.
  absl::StatusOr<std::vector<absl::StatusOr<size_t>>> ReadMany(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) override;
  absl::StatusOr<std::span<const uint8_t>> Lend(const BlockKey& key) override;
  absl::StatusOr<PageLocation> Locate(const BlockKey& key) override;
  absl::Status Erase(const BlockKey& key) override;
  absl::StatusOr<std::vector<PageMeta>> List() override;

  // Flushes memtables so page bytes land in blob files (tests and benchmarks use it).
  absl::Status Flush();
  // Number of unsealed pages Open() deleted during recovery.
  uint64_t recovered_unsealed() const { return recovered_unsealed_; }
  const std::string& path() const { return options_.path; }

 private:
  explicit NvmeTier(NvmeTierOptions options) : options_(std::move(options)) {}
  absl::Status Recover();
  // MultiGet of keys into dsts; one result per key into out.
  void ReadRange(std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts,
                 std::span<absl::StatusOr<size_t>> out);

  const NvmeTierOptions options_;
  rocksdb::DB* db_ = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* pages_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_cf_ = nullptr;
  uint64_t recovered_unsealed_ = 0;
  mutable Mutex mu_;
  absl::flat_hash_map<BlockKey, PageMeta> metas_ ABSL_GUARDED_BY(mu_);
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<ThreadPool> read_pool_;  // ReadMany helpers; null if read_parallelism <= 1
};

// Reads one sealed page by key straight from an nvme tier directory (opened read-only, so
// it works beside a running store) and verifies it with the page decoder: the header and
// section checksums and that the page's own key is `key`. NotFound when the key is absent
// or unsealed; DataLoss when the bytes do not verify; Unavailable when the database cannot
// be opened. This is what `kvstrata inspect --nvme=DIR --key=HEX` calls.
absl::StatusOr<std::vector<uint8_t>> ReadPageFromNvme(const std::string& path, const BlockKey& key);

// The metadata record's byte encoding (exposed for tests): version, flags, size, last
// access, parent, namespace, layout, then (version 2) resume role and resume bytes.
// DecodePageMeta also accepts version-1 records (no resume fields: role kTurnEnd, resume
// bytes kResumeBytesUnknown for v4-fp8-584 pages, else 0). DataLoss naming the problem for a
// truncated or malformed record.
std::string EncodePageMeta(const PageMeta& meta);
absl::StatusOr<PageMeta> DecodePageMeta(const BlockKey& key, std::string_view bytes);

}  // namespace kv
