#include "kvstore/nvme_tier.h"

#include <algorithm>
#include <cstring>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/write_batch.h"

namespace kv {
namespace {

constexpr char kPagesCf[] = "pages";
constexpr char kMetaCf[] = "meta";
// Version 1: up to the layout. Version 2 appends the resume role (u8) and resume bytes (u64);
// version-1 records still decode (role kTurnEnd, resume bytes unknown for v4 pages).
constexpr uint8_t kMetaVersion = 2;
constexpr uint8_t kMetaVersionNoResume = 1;

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut() || s.IsIOError()) {
    return MarkRetryable(absl::UnavailableError(msg));
  }
  return absl::InternalError(msg);
}

rocksdb::Slice KeySlice(const BlockKey& key) {
  return rocksdb::Slice(reinterpret_cast<const char*>(key.bytes.data()), key.bytes.size());
}

void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

rocksdb::ColumnFamilyOptions PagesCfOptions(const NvmeTierOptions& o) {
  rocksdb::ColumnFamilyOptions cf;
  cf.enable_blob_files = true;
  cf.min_blob_size = 0;
  cf.blob_file_size = o.blob_file_bytes;
  cf.blob_compression_type = rocksdb::kNoCompression;
  cf.compression = rocksdb::kNoCompression;
  cf.enable_blob_garbage_collection = true;
  cf.write_buffer_size = o.write_buffer_bytes;
  // Page bytes are large: let several memtables fill while one flushes instead of stalling.
  cf.max_write_buffer_number = 4;
  return cf;
}

// Page bytes carry their own XXH3 section checksums, which the TieredStore verifies on every
// read, so RocksDB's CRC pass over the blob (software CRC32c in Debian's portable build,
// measured to halve read throughput) is skipped for page reads. Metadata reads keep it.
rocksdb::ReadOptions PageReadOptions() {
  rocksdb::ReadOptions ro;
  ro.verify_checksums = false;
  return ro;
}

std::vector<rocksdb::ColumnFamilyDescriptor> Descriptors(const NvmeTierOptions& o) {
  return {{rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
          {kPagesCf, PagesCfOptions(o)},
          {kMetaCf, rocksdb::ColumnFamilyOptions()}};
}

}  // namespace

std::string EncodePageMeta(const PageMeta& m) {
  std::string s;
  s.push_back(static_cast<char>(kMetaVersion));
  s.push_back(static_cast<char>(m.sealed ? 1 : 0));
  PutU64(&s, m.size);
  PutU64(&s, static_cast<uint64_t>(absl::ToUnixMicros(m.last_access)));
  s.append(reinterpret_cast<const char*>(m.parent.bytes.data()), m.parent.bytes.size());
  PutU64(&s, m.ns.size());
  s.append(m.ns);
  PutU64(&s, m.layout.size());
  s.append(m.layout);
  s.push_back(static_cast<char>(m.resume_role));
  PutU64(&s, m.resume_bytes);
  return s;
}

absl::StatusOr<PageMeta> DecodePageMeta(const BlockKey& key, std::string_view b) {
  auto bad = [&](std::string_view why) {
    return absl::DataLossError(StrCat("page meta of ", key.Hex(), ": ", why));
  };
  constexpr size_t kFixed = 2 + 8 + 8 + 32;
  if (b.size() < kFixed + 8) return bad("truncated");
  const uint8_t version = static_cast<uint8_t>(b[0]);
  if (version != kMetaVersion && version != kMetaVersionNoResume) return bad("unknown version");
  if (static_cast<uint8_t>(b[1]) > 1) return bad("bad flags");
  PageMeta m;
  m.key = key;
  m.sealed = b[1] == 1;
  m.size = GetU64(b.data() + 2);
  m.last_access = absl::FromUnixMicros(static_cast<int64_t>(GetU64(b.data() + 10)));
  std::memcpy(m.parent.bytes.data(), b.data() + 18, 32);
  size_t pos = kFixed;
  for (std::string* field : {&m.ns, &m.layout}) {
    if (b.size() - pos < 8) return bad("truncated");
    uint64_t n = GetU64(b.data() + pos);
    pos += 8;
    if (n > b.size() - pos) return bad("field length past the end");
    field->assign(b.data() + pos, n);
    pos += n;
  }
  if (version == kMetaVersionNoResume) {
    // Written before resume roles existed: the default role; a v4 page may carry a resume
    // section of unknown size (the store finds out when it first considers stripping it).
    m.resume_bytes = m.layout == "v4-fp8-584" ? kResumeBytesUnknown : 0;
  } else {
    if (b.size() - pos < 9) return bad("truncated");
    const uint8_t role = static_cast<uint8_t>(b[pos]);
    if (role > static_cast<uint8_t>(PageRole::kCheckpoint)) return bad("bad resume role");
    m.resume_role = static_cast<PageRole>(role);
    m.resume_bytes = GetU64(b.data() + pos + 1);
    pos += 9;
  }
  if (pos != b.size()) return bad("trailing bytes");
  return m;
}

absl::StatusOr<std::unique_ptr<NvmeTier>> NvmeTier::Open(NvmeTierOptions options) {
  if (options.path.empty()) return absl::InvalidArgumentError("nvme tier: empty path");
  std::unique_ptr<NvmeTier> t(new NvmeTier(options));
  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  db.max_background_jobs = options.background_jobs;
  db.use_direct_reads = options.use_direct_reads;
  db.use_direct_io_for_flush_and_compaction = options.use_direct_io_for_flush;
  db.enable_pipelined_write = true;  // WAL and memtable writes of different batches overlap
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  RETURN_IF_ERROR(
      FromRocks(rocksdb::DB::Open(db, options.path, Descriptors(options), &handles, &t->db_),
                StrCat("open nvme tier at ", options.path)));
  if (options.read_parallelism > 1) {
    t->read_pool_ = std::make_unique<ThreadPool>(options.read_parallelism - 1);
  }
  t->default_cf_ = handles[0];
  t->pages_cf_ = handles[1];
  t->meta_cf_ = handles[2];
  RETURN_IF_ERROR(t->Recover());
  return t;
}

NvmeTier::~NvmeTier() {
  read_pool_.reset();  // joined before the database it reads goes away
  if (db_ == nullptr) return;
  for (auto* h : {default_cf_, pages_cf_, meta_cf_}) {
    if (h != nullptr) db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  }
  db_->Close().PermitUncheckedError();
  delete db_;
}

absl::Status NvmeTier::Recover() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_cf_));
  rocksdb::WriteBatch drop;
  MutexLock l(&mu_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    BlockKey key;
    if (it->key().size() != key.bytes.size()) {
      drop.Delete(meta_cf_, it->key()).PermitUncheckedError();
      continue;
    }
    std::memcpy(key.bytes.data(), it->key().data(), key.bytes.size());
    absl::StatusOr<PageMeta> m = DecodePageMeta(key, it->value().ToStringView());
    if (!m.ok() || !m->sealed) {
      if (!m.ok())
        log::Warn("nvme_meta_dropped", "key", key.Hex(), "reason", m.status().ToString());
      drop.Delete(meta_cf_, it->key()).PermitUncheckedError();
      drop.Delete(pages_cf_, it->key()).PermitUncheckedError();
      ++recovered_unsealed_;
      continue;
    }
    used_ += m->size;
    metas_.emplace(key, *std::move(m));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan nvme metadata"));
  if (drop.Count() > 0) {
    RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &drop), "drop unsealed"));
  }
  log::Info("nvme_tier_open", "path", options_.path, "pages", metas_.size(), "bytes", used_,
            "dropped_unsealed", recovered_unsealed_);
  return absl::OkStatus();
}

uint64_t NvmeTier::used_bytes() const {
  MutexLock l(&mu_);
  return used_;
}

bool NvmeTier::HasRoom(uint64_t size) const {
  MutexLock l(&mu_);
  return used_ + size <= options_.capacity_bytes;
}

absl::Status NvmeTier::Write(const PageMeta& meta, std::string_view bytes) {
  if (meta.size != bytes.size()) {
    return absl::InvalidArgumentError(
        StrCat("page ", meta.key.Hex(), ": meta size ", meta.size, " != ", bytes.size(), " bytes"));
  }
  PageMeta m = meta;
  m.sealed = false;
  {
    MutexLock l(&mu_);
    if (metas_.contains(meta.key)) {
      return absl::AlreadyExistsError(StrCat("page ", meta.key.Hex(), " already in nvme"));
    }
    if (used_ + bytes.size() > options_.capacity_bytes) {
      return MarkRetryable(absl::ResourceExhaustedError(
          StrCat("nvme tier full: ", used_, "+", bytes.size(), " > ", options_.capacity_bytes)));
    }
    metas_.emplace(meta.key, m);  // reserve the key and the space
    used_ += m.size;
  }
  rocksdb::WriteBatch batch;
  batch.Put(pages_cf_, KeySlice(meta.key), rocksdb::Slice(bytes.data(), bytes.size()))
      .PermitUncheckedError();
  batch.Put(meta_cf_, KeySlice(meta.key), EncodePageMeta(m)).PermitUncheckedError();
  absl::Status st = FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "nvme write");
  if (!st.ok()) {
    MutexLock l(&mu_);
    metas_.erase(meta.key);
    used_ -= m.size;
  }
  return st;
}

absl::Status NvmeTier::Seal(const BlockKey& key) {
  PageMeta m;
  {
    MutexLock l(&mu_);
    auto it = metas_.find(key);
    if (it == metas_.end()) return absl::NotFoundError(StrCat("seal: no page ", key.Hex()));
    m = it->second;
  }
  m.sealed = true;
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  RETURN_IF_ERROR(FromRocks(db_->Put(wo, meta_cf_, KeySlice(key), EncodePageMeta(m)), "nvme seal"));
  MutexLock l(&mu_);
  auto it = metas_.find(key);
  if (it != metas_.end()) it->second.sealed = true;
  return absl::OkStatus();
}

absl::StatusOr<size_t> NvmeTier::Read(const BlockKey& key, std::span<uint8_t> dst) {
  rocksdb::PinnableSlice v;
  RETURN_IF_ERROR(FromRocks(db_->Get(PageReadOptions(), pages_cf_, KeySlice(key), &v),
                            StrCat("nvme read ", key.Hex())));
  if (dst.size() < v.size()) {
    return absl::OutOfRangeError(StrCat("buffer of ", dst.size(), " bytes < page of ", v.size()));
  }
  std::memcpy(dst.data(), v.data(), v.size());
  return v.size();
}

void NvmeTier::ReadRange(std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts,
                         std::span<absl::StatusOr<size_t>> out) {
  std::vector<rocksdb::Slice> slices;
  slices.reserve(keys.size());
  for (const BlockKey& k : keys) slices.push_back(KeySlice(k));
  std::vector<rocksdb::PinnableSlice> values(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  rocksdb::ReadOptions ro = PageReadOptions();
  db_->MultiGet(ro, pages_cf_, keys.size(), slices.data(), values.data(), statuses.data());
  for (size_t i = 0; i < keys.size(); ++i) {
    absl::Status st = FromRocks(statuses[i], StrCat("nvme read ", keys[i].Hex()));
    if (!st.ok()) {
      out[i] = st;
    } else if (dsts[i].size() < values[i].size()) {
      out[i] = absl::OutOfRangeError(
          StrCat("buffer of ", dsts[i].size(), " bytes < page of ", values[i].size()));
    } else {
      std::memcpy(dsts[i].data(), values[i].data(), values[i].size());
      out[i] = values[i].size();
    }
  }
}

absl::StatusOr<std::vector<absl::StatusOr<size_t>>> NvmeTier::ReadMany(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) {
  if (keys.size() != dsts.size()) {
    return absl::InvalidArgumentError(
        StrCat("ReadMany: ", keys.size(), " keys but ", dsts.size(), " buffers"));
  }
  std::vector<absl::StatusOr<size_t>> out(keys.size(), absl::InternalError("not read"));
  // One MultiGet reads the blobs one after another (Debian's RocksDB has no async_io
  // coroutines), so the batch is split into ranges read concurrently: the device sees
  // several requests in flight instead of one.
  size_t parts = std::min<size_t>(keys.size(), read_pool_ ? read_pool_->size() + 1 : 1);
  if (parts <= 1) {
    ReadRange(keys, dsts, out);
    return out;
  }
  Mutex mu;
  size_t pending = parts - 1;
  size_t per = (keys.size() + parts - 1) / parts;
  for (size_t p = 1; p < parts; ++p) {
    size_t b = std::min(keys.size(), p * per), n = std::min(per, keys.size() - b);
    bool scheduled = read_pool_->Schedule([&, b, n] {
      ReadRange(keys.subspan(b, n), dsts.subspan(b, n), std::span(out).subspan(b, n));
      MutexLock l(&mu);
      --pending;
    });
    if (!scheduled) {  // the pool is shutting down: read the range here
      ReadRange(keys.subspan(b, n), dsts.subspan(b, n), std::span(out).subspan(b, n));
      MutexLock l(&mu);
      --pending;
    }
  }
  ReadRange(keys.first(std::min(per, keys.size())), dsts.first(std::min(per, keys.size())),
            std::span(out).first(std::min(per, keys.size())));
  MutexLock l(&mu);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return pending == 0; };
  mu.Await(Condition(&done));
  return out;
}

absl::StatusOr<std::span<const uint8_t>> NvmeTier::Lend(const BlockKey& key) {
  return absl::UnimplementedError("the nvme tier cannot lend; use Read");
}

absl::StatusOr<PageLocation> NvmeTier::Locate(const BlockKey& key) {
  return absl::UnimplementedError("the nvme tier has no registered memory region");
}

absl::Status NvmeTier::Erase(const BlockKey& key) {
  uint64_t size;
  {
    MutexLock l(&mu_);
    auto it = metas_.find(key);
    if (it == metas_.end()) return absl::NotFoundError(StrCat("erase: no page ", key.Hex()));
    size = it->second.size;
    metas_.erase(it);
    used_ -= size;
  }
  rocksdb::WriteBatch batch;
  batch.Delete(meta_cf_, KeySlice(key)).PermitUncheckedError();
  batch.Delete(pages_cf_, KeySlice(key)).PermitUncheckedError();
  return FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "nvme erase");
}

absl::StatusOr<std::vector<PageMeta>> NvmeTier::List() {
  MutexLock l(&mu_);
  std::vector<PageMeta> out;
  for (const auto& [k, m] : metas_) {
    if (m.sealed) out.push_back(m);
  }
  return out;
}

absl::Status NvmeTier::Flush() {
  rocksdb::FlushOptions fo;
  return FromRocks(db_->Flush(fo, {pages_cf_, meta_cf_}), "nvme flush");
}

absl::StatusOr<std::vector<uint8_t>> ReadPageFromNvme(const std::string& path,
                                                      const BlockKey& key) {
  NvmeTierOptions o;
  o.path = path;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(FromRocks(
      rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), path, Descriptors(o), &handles, &raw),
      StrCat("open nvme tier at ", path, " read-only")));
  std::unique_ptr<rocksdb::DB> db(raw);
  auto cleanup = [&] {
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  };
  std::string meta_bytes, page;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  absl::Status st = FromRocks(db->Get(ro, handles[2], KeySlice(key), &meta_bytes),
                              StrCat("page ", key.Hex(), " metadata"));
  absl::StatusOr<PageMeta> meta =
      st.ok() ? DecodePageMeta(key, meta_bytes) : absl::StatusOr<PageMeta>(st);
  if (meta.ok() && !meta->sealed) {
    meta = absl::NotFoundError(StrCat("page ", key.Hex(), " is not sealed"));
  }
  if (meta.ok()) {
    st = FromRocks(db->Get(ro, handles[1], KeySlice(key), &page), StrCat("page ", key.Hex()));
  }
  cleanup();
  RETURN_IF_ERROR(meta.status());
  RETURN_IF_ERROR(st);
  std::vector<uint8_t> out(page.begin(), page.end());
  absl::StatusOr<PageView> view = DecodePage(out);
  if (!view.ok()) return absl::DataLossError(view.status().message());
  if (view->header().key != key) {
    return absl::DataLossError(
        StrCat("page stored under ", key.Hex(), " names key ", view->header().key.Hex()));
  }
  return out;
}

}  // namespace kv
