// The nvme tier on segment files (nvme_tier.h): record format and scanning, direct reads
// into aligned and unaligned buffers, torn records at restart, space reclaim against du,
// a full disk, failed syncs, group commit, and refusing directories of another format.
// The crash (kill -9) and corruption tests run it under the TieredStore in
// tiered_store_fault_test.cc.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/hash.h"
#include "gtest/gtest.h"
#include "kvstore/nvme_index.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/segment_format.h"
#include "kvstore/test_pages.h"
#include "rocksdb/db.h"

namespace kv {
namespace {

namespace fs = std::filesystem;
using testing::MakeChain;
using testing::TestPage;

std::string_view Str(const std::vector<uint8_t>& b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

// Independent one-page chains with pages of about `layers` x 2.6 KB.
std::vector<TestPage> Pages(uint64_t seed, int n, uint32_t layers) {
  std::vector<TestPage> out;
  for (int i = 0; i < n; ++i) out.push_back(MakeChain(seed * 1000 + i, "t", 1, 4, layers)[0]);
  return out;
}

std::vector<fs::path> SegmentFiles(const NvmeTier& t) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(t.segment_dir())) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status PublishAll(NvmeTier* t, const std::vector<TestPage>& pages) {
  for (const TestPage& p : pages) {
    absl::Status st = t->Write(p.meta, Str(p.bytes));
    if (!st.ok()) return st;
  }
  for (const TestPage& p : pages) {
    absl::Status st = t->Seal(p.meta.key);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

// `du -s --block-size=1 DIR`, the number the tier's disk usage must match.
uint64_t Du(const std::string& dir) {
  std::string cmd = "du -s --block-size=1 '" + dir + "'";
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return 0;
  unsigned long long v = 0;
  if (std::fscanf(f, "%llu", &v) != 1) v = 0;
  pclose(f);
  return v;
}

TEST(SegmentFormatTest, HeadersRoundTripAndEveryFlipIsCaught) {
  std::vector<uint8_t> seg(segment::kSegmentHeaderBytes), rec(segment::kRecordHeaderBytes);
  segment::EncodeSegmentHeader({7, 1234}, seg);
  auto sh = segment::DecodeSegmentHeader(seg);
  ASSERT_TRUE(sh.ok()) << sh.status();
  EXPECT_EQ(sh->segment_id, 7u);
  EXPECT_EQ(sh->created_micros, 1234u);
  segment::RecordHeader h{7, MakeChain(1, "a", 1)[0].meta.key, 100000, 0xabcdef};
  segment::EncodeRecordHeader(h, rec);
  auto rh = segment::DecodeRecordHeader(rec);
  ASSERT_TRUE(rh.ok()) << rh.status();
  EXPECT_EQ(rh->key, h.key);
  EXPECT_EQ(rh->payload_bytes, 100000u);
  EXPECT_EQ(rh->payload_xxh3, 0xabcdefu);
  for (size_t i = 0; i < rec.size(); ++i) {
    auto bad = rec;
    bad[i] ^= 0x01;
    EXPECT_TRUE(absl::IsDataLoss(segment::DecodeRecordHeader(bad).status())) << i;
  }
  for (size_t i = 0; i < seg.size(); i += 7) {
    auto bad = seg;
    bad[i] ^= 0x80;
    EXPECT_TRUE(absl::IsDataLoss(segment::DecodeSegmentHeader(bad).status())) << i;
  }
  EXPECT_TRUE(absl::IsDataLoss(segment::DecodeRecordHeader(std::span(rec).first(100)).status()));
  std::vector<uint8_t> zero(segment::kRecordHeaderBytes, 0);
  EXPECT_TRUE(absl::IsDataLoss(segment::DecodeRecordHeader(zero).status()));
  EXPECT_EQ(segment::RecordBytes(1), 4096u);
  EXPECT_EQ(segment::RecordBytes(4096 - 512), 4096u);
  EXPECT_EQ(segment::RecordBytes(4096 - 511), 8192u);
  uint64_t id = 0;
  EXPECT_TRUE(segment::ParseSegmentFileName(segment::SegmentFileName(0x1f), &id));
  EXPECT_EQ(id, 0x1fu);
  EXPECT_FALSE(segment::ParseSegmentFileName("000000000000001f.sst", &id));
}

TEST(NvmeIndexTest, RecordRoundTripsAndRejectsGarbage) {
  IndexRecord r;
  r.meta = MakeChain(18, "tenant-x", 2)[1].meta;
  r.meta.sealed = true;
  r.meta.last_access = absl::FromUnixMicros(1234567);
  r.meta.resume_role = PageRole::kCheckpoint;
  r.meta.resume_bytes = 99;
  r.ref = {3, 8192, 0x1234};
  std::string enc = EncodeIndexRecord(r);
  auto dec = DecodeIndexRecord(r.meta.key, enc);
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(dec->meta.parent, r.meta.parent);
  EXPECT_EQ(dec->meta.ns, r.meta.ns);
  EXPECT_EQ(dec->meta.layout, r.meta.layout);
  EXPECT_EQ(dec->meta.size, r.meta.size);
  EXPECT_EQ(dec->meta.last_access, r.meta.last_access);
  EXPECT_EQ(dec->meta.resume_role, PageRole::kCheckpoint);
  EXPECT_EQ(dec->meta.resume_bytes, 99u);
  EXPECT_EQ(dec->ref.segment, 3u);
  EXPECT_EQ(dec->ref.offset, 8192u);
  EXPECT_EQ(dec->ref.payload_xxh3, 0x1234u);
  for (size_t cut = 0; cut < enc.size(); ++cut) {
    EXPECT_TRUE(absl::IsDataLoss(DecodeIndexRecord(r.meta.key, enc.substr(0, cut)).status()));
  }
  EXPECT_TRUE(absl::IsDataLoss(DecodeIndexRecord(r.meta.key, enc + "x").status()));
  std::string bad = enc;
  bad[0] = 9;
  EXPECT_TRUE(absl::IsDataLoss(DecodeIndexRecord(r.meta.key, bad).status()));
  // Version 2 keeps the page's own key and parent (a PageStore's namespaced storage keys).
  r.meta.page_key = MakeChain(19, "tenant-y", 1)[0].meta.key;
  r.meta.page_parent = r.meta.key;
  dec = DecodeIndexRecord(r.meta.parent, EncodeIndexRecord(r));
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(dec->meta.page_key, r.meta.page_key);
  EXPECT_EQ(dec->meta.page_parent, r.meta.page_parent);
  EXPECT_EQ(dec->meta.header_key(), r.meta.page_key);
  // A version 1 record (keyed before namespaced storage keys) is refused by name, not read
  // as if its key were a storage key.
  bad = enc;
  bad[0] = 1;
  auto v1 = DecodeIndexRecord(r.meta.key, bad);
  EXPECT_TRUE(absl::IsDataLoss(v1.status()));
  EXPECT_NE(v1.status().message().find("version 1 record"), std::string_view::npos) << v1.status();
}

// Every record can be verified from the segment alone; a flipped page byte shows.
TEST(NvmeTierTest, SegmentsScanAndVerifyWithoutTheIndex) {
  std::string dir = testing::FreshTestDir("nvme-scan");
  auto pages = Pages(2, 20, 3);
  std::vector<fs::path> files;
  {
    auto t = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t->get(), pages).ok());
    files = SegmentFiles(**t);
  }
  ASSERT_EQ(files.size(), 1u);
  auto scan = segment::ScanSegmentFile(files[0]);
  ASSERT_TRUE(scan.ok()) << scan.status();
  ASSERT_EQ(scan->records.size(), pages.size());
  for (size_t i = 0; i < pages.size(); ++i) {
    EXPECT_TRUE(scan->records[i].status.ok()) << scan->records[i].status;
    EXPECT_EQ(scan->records[i].header.key, pages[i].meta.key);
    EXPECT_EQ(scan->records[i].header.payload_bytes, pages[i].bytes.size());
  }
  {
    std::fstream f(files[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(scan->records[5].offset + segment::kRecordHeaderBytes + 9));
    f.put('\x77');
  }
  scan = segment::ScanSegmentFile(files[0]);
  ASSERT_TRUE(scan.ok());
  EXPECT_TRUE(absl::IsDataLoss(scan->records[5].status)) << scan->records[5].status;
  EXPECT_TRUE(scan->records[4].status.ok());
}

// Reads land straight in a page-aligned buffer, and through a bounce buffer otherwise;
// small and multi-block pages alike, with the same bytes.
TEST(NvmeTierTest, AlignedAndUnalignedBuffersReadTheSameBytes) {
  std::string dir = testing::FreshTestDir("nvme-align");
  auto pages = Pages(3, 4, 1);
  for (auto& p : Pages(4, 4, 40)) pages.push_back(p);  // ~100 KB pages
  auto t = NvmeTier::Open({.path = dir});
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(PublishAll(t->get(), pages).ok());
  constexpr size_t kMax = 256 << 10;
  void* raw = nullptr;
  ASSERT_EQ(posix_memalign(&raw, 4096, kMax + 4096), 0);
  std::unique_ptr<uint8_t, decltype(&std::free)> hold(static_cast<uint8_t*>(raw), &std::free);
  for (size_t shift : {size_t{0}, size_t{1}, size_t{512}, size_t{100}}) {
    for (const TestPage& p : pages) {
      std::span<uint8_t> dst(hold.get() + shift, p.bytes.size() + 3);
      std::memset(dst.data(), 0xEE, dst.size());
      auto n = (*t)->Read(p.meta.key, dst);
      ASSERT_TRUE(n.ok()) << n.status() << " shift " << shift;
      ASSERT_EQ(*n, p.bytes.size());
      EXPECT_EQ(std::memcmp(dst.data(), p.bytes.data(), p.bytes.size()), 0) << "shift " << shift;
      EXPECT_EQ(dst[p.bytes.size()], 0xEE);  // nothing written past the page
    }
  }
}

// A record cut short at the end of a segment (a write that a crash interrupted) is never
// served, and its space goes back; an index record naming bytes that are gone is dropped.
TEST(NvmeTierTest, TornRecordAtSegmentEndIsIgnoredAtRestart) {
  std::string dir = testing::FreshTestDir("nvme-torn");
  auto pages = Pages(5, 12, 6);
  auto torn = Pages(6, 1, 6)[0];
  fs::path seg;
  uint64_t end = 0;
  {
    auto t = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t->get(), pages).ok());
    seg = SegmentFiles(**t)[0];
  }
  end = fs::file_size(seg);  // trimmed to the last record at close
  {
    // What a power cut in the middle of the next record's write leaves on disk.
    std::vector<uint8_t> rec(segment::RecordBytes(torn.bytes.size()), 0);
    segment::EncodeRecordHeader(
        {1, torn.meta.key, torn.bytes.size(), Xxh3_64(torn.bytes.data(), torn.bytes.size())}, rec);
    std::memcpy(rec.data() + segment::kRecordHeaderBytes, torn.bytes.data(), torn.bytes.size());
    std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(end));
    f.write(reinterpret_cast<const char*>(rec.data()),
            static_cast<std::streamsize>(rec.size() / 2));
  }
  auto scan = segment::ScanSegmentFile(seg);
  ASSERT_TRUE(scan.ok());
  ASSERT_EQ(scan->records.size(), pages.size() + 1);
  EXPECT_TRUE(absl::IsDataLoss(scan->records.back().status)) << scan->records.back().status;
  {
    auto t = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(t.ok()) << t.status();
    auto listed = (*t)->List();
    ASSERT_TRUE(listed.ok());
    EXPECT_EQ(listed->size(), pages.size());
    std::vector<uint8_t> dst(torn.bytes.size());
    EXPECT_TRUE(absl::IsNotFound((*t)->Read(torn.meta.key, dst).status()));
    for (const TestPage& p : pages) {
      std::vector<uint8_t> d(p.bytes.size());
      ASSERT_TRUE((*t)->Read(p.meta.key, d).ok());
      EXPECT_EQ(d, p.bytes);
    }
    ASSERT_TRUE((*t)->WaitReclaimIdle(absl::Seconds(60))) << "reclaim did not finish";
    EXPECT_EQ(fs::file_size(seg), end) << "the torn tail was not reclaimed";
    // Writing goes on in a new segment; the torn key can be stored afresh.
    ASSERT_TRUE(PublishAll(t->get(), {torn}).ok());
    EXPECT_EQ(SegmentFiles(**t).size(), 2u);
  }
  // Now cut a sealed record short behind the tier's back: its index record names bytes that
  // are not there any more, so it is dropped at open and the page is a miss.
  fs::resize_file(seg, end - 4096);
  auto t = NvmeTier::Open({.path = dir});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Stats().dropped_at_open, 1u);
  auto listed = (*t)->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), pages.size());  // 12 - 1 cut + the torn key written again
  std::vector<uint8_t> d(pages.back().bytes.size());
  EXPECT_TRUE(absl::IsNotFound((*t)->Read(pages.back().meta.key, d).status()));
  d.resize(torn.bytes.size());
  ASSERT_TRUE((*t)->Read(torn.meta.key, d).ok());
  EXPECT_EQ(d, torn.bytes);
}

// Erasing 80% of the pages gives their space back (holes punched, empty segments deleted),
// and the tier's disk usage is exactly what du reports.
TEST(NvmeTierTest, EvictingEightyPercentFreesTheirSpaceAndMatchesDu) {
  std::string dir = testing::FreshTestDir("nvme-reclaim");
  MetricsRegistry reg;
  auto t = NvmeTier::Open({.path = dir, .segment_bytes = 4 << 20, .metrics = &reg});
  ASSERT_TRUE(t.ok()) << t.status();
  auto pages = Pages(7, 200, 40);  // ~105 KB pages, ~21 MB over 6 segments
  ASSERT_TRUE(PublishAll(t->get(), pages).ok());
  ASSERT_TRUE((*t)->Flush().ok());
  ASSERT_TRUE((*t)->WaitReclaimIdle(absl::Seconds(60))) << "reclaim did not finish";
  auto before = (*t)->DiskUsage();
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(*before, Du(dir));
  std::mt19937_64 rng(7);
  std::shuffle(pages.begin(), pages.end(), rng);
  uint64_t erased = 0;
  for (size_t i = 0; i < pages.size() * 8 / 10; ++i) {
    erased += (*t)->Footprint(pages[i].bytes.size());
    ASSERT_TRUE((*t)->Erase(pages[i].meta.key).ok());
  }
  ASSERT_TRUE((*t)->WaitReclaimIdle(absl::Seconds(60))) << "reclaim did not finish";
  auto after = (*t)->DiskUsage();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, Du(dir));
  EXPECT_EQ(reg.GetGauge("kvstrata_nvme_disk_bytes", "")->Value(), static_cast<double>(*after));
  std::printf("reclaim: %llu -> %llu bytes on disk after erasing %llu record bytes\n",
              static_cast<unsigned long long>(*before), static_cast<unsigned long long>(*after),
              static_cast<unsigned long long>(erased));
  EXPECT_GE(*before - *after, erased * 95 / 100);
  // What is left: the remaining records, the active segment's preallocated tail, the index.
  EXPECT_LE(*after, (*t)->used_bytes() + (4 << 20) + (2 << 20));
  EXPECT_EQ((*t)->Stats().reclaim_moved_bytes, 0u);
  for (size_t i = pages.size() * 8 / 10; i < pages.size(); ++i) {
    std::vector<uint8_t> d(pages[i].bytes.size());
    ASSERT_TRUE((*t)->Read(pages[i].meta.key, d).ok());
    EXPECT_EQ(d, pages[i].bytes);
  }
}

// A full disk is a clear ResourceExhausted, and the tier stays consistent and usable.
TEST(NvmeTierTest, FullDiskIsResourceExhaustedAndTheTierStaysConsistent) {
  std::string dir = testing::FreshTestDir("nvme-enospc");
  auto base = NewUringSegmentIo(64);
  ASSERT_TRUE(base.ok());
  FaultInjectingSegmentIo io(base->get());
  auto pages = Pages(8, 30, 40);  // ~105 KB: 9 fit a 1 MiB segment
  {
    auto t = NvmeTier::Open({.path = dir, .segment_bytes = 1 << 20, .io = &io});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t.value().get(), {pages.begin(), pages.begin() + 9}).ok());
    io.FailAllocations(ENOSPC);
    absl::Status st = (*t)->Write(pages[9].meta, Str(pages[9].bytes));
    EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
    EXPECT_NE(st.message().find("No space left"), absl::string_view::npos) << st;
    EXPECT_EQ((*t)->used_bytes(), 9 * (*t)->Footprint(pages[0].bytes.size()));
    io.FailAllocations(0);
    ASSERT_TRUE(PublishAll(t->get(), {pages[11]}).ok());  // in a new segment
    io.FailWrites(ENOSPC);  // the record's own write fails: seen at Seal
    ASSERT_TRUE((*t)->Write(pages[10].meta, Str(pages[10].bytes)).ok());
    st = (*t)->Seal(pages[10].meta.key);
    EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
    ASSERT_TRUE((*t)->Erase(pages[10].meta.key).ok());
    io.FailWrites(0);
    auto listed = (*t)->List();
    ASSERT_TRUE(listed.ok());
    EXPECT_EQ(listed->size(), 10u);
  }
  auto t = NvmeTier::Open({.path = dir, .segment_bytes = 1 << 20, .io = &io});
  ASSERT_TRUE(t.ok()) << t.status();
  auto listed = (*t)->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 10u);
  for (int i : {0, 8, 11}) {
    std::vector<uint8_t> d(pages[i].bytes.size());
    ASSERT_TRUE((*t)->Read(pages[i].meta.key, d).ok());
    EXPECT_EQ(d, pages[i].bytes);
  }
}

// Seal indexes nothing unless the fdatasync returned; flipped bytes read as DataLoss.
TEST(NvmeTierTest, FailedSyncIndexesNothingAndFlipsAreDataLoss) {
  std::string dir = testing::FreshTestDir("nvme-sync");
  auto base = NewUringSegmentIo(64);
  ASSERT_TRUE(base.ok());
  FaultInjectingSegmentIo io(base->get());
  auto pages = Pages(9, 3, 8);
  {
    auto t = NvmeTier::Open({.path = dir, .io = &io});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t->get(), {pages[0]}).ok());
    io.FailSyncs(EIO);
    ASSERT_TRUE((*t)->Write(pages[1].meta, Str(pages[1].bytes)).ok());
    EXPECT_FALSE((*t)->Seal(pages[1].meta.key).ok());
    io.FailSyncs(0);
    io.FlipReads(true);
    std::vector<uint8_t> d(pages[0].bytes.size());
    EXPECT_TRUE(absl::IsDataLoss((*t)->Read(pages[0].meta.key, d).status()));
    EXPECT_EQ((*t)->Stats().verify_failures, 1u);
    io.FlipReads(false);
    ASSERT_TRUE((*t)->Read(pages[0].meta.key, d).ok());
    EXPECT_EQ(d, pages[0].bytes);
  }
  auto t = NvmeTier::Open({.path = dir, .io = &io});
  ASSERT_TRUE(t.ok());
  auto listed = (*t)->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].key, pages[0].meta.key);
}

// Seals of records that completed before one fdatasync share it (group commit).
TEST(NvmeTierTest, SealsShareOneFdatasync) {
  std::string dir = testing::FreshTestDir("nvme-group");
  auto base = NewUringSegmentIo(64);
  ASSERT_TRUE(base.ok());
  FaultInjectingSegmentIo io(base->get());
  auto t = NvmeTier::Open({.path = dir, .io = &io});
  ASSERT_TRUE(t.ok()) << t.status();
  auto pages = Pages(10, 24, 8);
  for (const TestPage& p : pages) ASSERT_TRUE((*t)->Write(p.meta, Str(p.bytes)).ok());
  for (const TestPage& p : pages) {  // a read waits for the page's write to complete
    std::vector<uint8_t> d(p.bytes.size());
    ASSERT_TRUE((*t)->Read(p.meta.key, d).ok());
  }
  uint64_t syncs = io.syncs();
  for (const TestPage& p : pages) ASSERT_TRUE((*t)->Seal(p.meta.key).ok());
  EXPECT_EQ(io.syncs() - syncs, 1u);
}

// Directories of another format are refused with how to clear them, and left untouched.
TEST(NvmeTierTest, RefusesDirectoriesOfAnotherFormat) {
  std::string old = testing::FreshTestDir("nvme-oldformat");
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, old, &db).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "k", "v").ok());
    delete db;
  }
  auto t = NvmeTier::Open({.path = old});
  ASSERT_TRUE(absl::IsFailedPrecondition(t.status())) << t.status();
  EXPECT_NE(t.status().message().find("earlier format"), absl::string_view::npos);
  EXPECT_NE(t.status().message().find("rm -rf " + old), absl::string_view::npos);
  EXPECT_TRUE(fs::exists(fs::path(old) / "CURRENT"));
  EXPECT_FALSE(fs::exists(fs::path(old) / "KVSTRATA_NVME"));
  auto page = MakeChain(1, "a", 1)[0];
  EXPECT_TRUE(absl::IsFailedPrecondition(ReadPageFromNvme(old, page.meta.key).status()));

  std::string other = testing::FreshTestDir("nvme-notours");
  std::ofstream(fs::path(other) / "data.bin") << "x";
  EXPECT_TRUE(absl::IsFailedPrecondition(NvmeTier::Open({.path = other}).status()));

  std::string future = testing::FreshTestDir("nvme-future");
  std::ofstream(fs::path(future) / "KVSTRATA_NVME") << "kvstrata nvme tier: segments v9\n";
  auto f = NvmeTier::Open({.path = future});
  ASSERT_TRUE(absl::IsFailedPrecondition(f.status())) << f.status();
  EXPECT_NE(f.status().message().find("segments v9"), absl::string_view::npos);
}

// A segment file that went missing takes its pages with it; the rest are served.
TEST(NvmeTierTest, MissingSegmentDropsItsPagesOnly) {
  std::string dir = testing::FreshTestDir("nvme-missing");
  auto pages = Pages(11, 30, 40);
  std::vector<fs::path> files;
  {
    auto t = NvmeTier::Open({.path = dir, .segment_bytes = 1 << 20});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t->get(), pages).ok());
    files = SegmentFiles(**t);
  }
  ASSERT_GE(files.size(), 3u);
  fs::remove(files[1]);
  auto t = NvmeTier::Open({.path = dir, .segment_bytes = 1 << 20});
  ASSERT_TRUE(t.ok()) << t.status();
  uint64_t dropped = (*t)->Stats().dropped_at_open;
  EXPECT_GT(dropped, 0u);
  auto listed = (*t)->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size() + dropped, pages.size());
  for (const PageMeta& m : *listed) {
    auto it = std::find_if(pages.begin(), pages.end(),
                           [&](const TestPage& p) { return p.meta.key == m.key; });
    ASSERT_NE(it, pages.end());
    std::vector<uint8_t> d(it->bytes.size());
    ASSERT_TRUE((*t)->Read(m.key, d).ok());
    EXPECT_EQ(d, it->bytes);
  }
}

}  // namespace
}  // namespace kv

namespace kv {
namespace {

// Flips two bytes a quarter into the index's first .sst (issue #18 item 5).
void FlipTwoBytesOfAnSst(const std::string& tier_dir) {
  fs::path sst;
  for (const auto& e : fs::directory_iterator(fs::path(tier_dir) / "index")) {
    if (e.path().extension() == ".sst" && fs::file_size(e.path()) > 0) sst = e.path();
  }
  ASSERT_FALSE(sst.empty()) << "no .sst in " << tier_dir << "/index";
  const uint64_t at = fs::file_size(sst) / 4;
  std::fstream f(sst, std::ios::in | std::ios::out | std::ios::binary);
  for (uint64_t off : {at, at + 7}) {
    f.seekg(static_cast<std::streamoff>(off));
    const char c = static_cast<char>(f.get() ^ 0xff);
    f.seekp(static_cast<std::streamoff>(off));
    f.put(c);
  }
}

// A corrupt index is detected (DataLoss when quarantine is off), and by default moved aside:
// the tier opens empty, says so in its stats and metric, takes new pages, and the damaged
// index is kept in PATH.quarantine for inspection.
TEST(NvmeTierTest, CorruptIndexIsQuarantinedAndTheTierOpensEmpty) {
  std::string dir = testing::FreshTestDir("nvme-quarantine");
  auto pages = Pages(11, 40, 1);
  {
    auto t = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t->get(), pages).ok());
    ASSERT_TRUE((*t)->Flush().ok());
  }
  FlipTwoBytesOfAnSst(dir);
  {
    MetricsRegistry reg;
    auto strict = NvmeTier::Open({.path = dir, .metrics = &reg, .quarantine_damaged_index = false});
    ASSERT_FALSE(strict.ok());
    EXPECT_TRUE(absl::IsDataLoss(strict.status())) << strict.status();
  }
  MetricsRegistry reg;
  auto t = NvmeTier::Open({.path = dir, .metrics = &reg});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Stats().index_quarantined, 1u);
  EXPECT_EQ((*t)->Stats().pages, 0u);
  auto listed = (*t)->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
  EXPECT_EQ(reg.GetCounter("kvstrata_nvme_index_quarantined_total", "")->Value(), 1.0);
  // A sibling of the tier directory, however the path is spelled.
  EXPECT_EQ(NvmeTier::QuarantineDir(dir + "/"), NvmeTier::QuarantineDir(dir));
  EXPECT_EQ(fs::path(NvmeTier::QuarantineDir(dir)).parent_path(),
            fs::path(dir).lexically_normal().parent_path());
  int quarantined = 0;
  for (const auto& e : fs::directory_iterator(NvmeTier::QuarantineDir(dir))) {
    quarantined += e.path().filename().string().rfind("index-", 0) == 0;
  }
  EXPECT_EQ(quarantined, 1);
  ASSERT_TRUE(PublishAll(t->get(), Pages(12, 3, 1)).ok());
  EXPECT_EQ((*t)->Stats().pages, 3u);
}

// A deleted segments directory under a marked tier is recreated at open, not fatal; index
// records naming the lost segments are dropped.
TEST(NvmeTierTest, DeletedSegmentDirectoryIsRecreatedAtOpen) {
  std::string dir = testing::FreshTestDir("nvme-nosegments");
  auto pages = Pages(13, 5, 1);
  {
    auto t = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE(PublishAll(t->get(), pages).ok());
  }
  fs::remove_all(fs::path(dir) / "segments");
  auto t = NvmeTier::Open({.path = dir});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Stats().pages, 0u);
  EXPECT_EQ((*t)->Stats().dropped_at_open, pages.size());
}

}  // namespace
}  // namespace kv
