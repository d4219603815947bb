#include "kvstore/segment_format.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::segment {
namespace {

constexpr char kSegmentMagic[8] = {'K', 'V', 'S', 'T', 'S', 'E', 'G', 'M'};
constexpr char kRecordMagic[8] = {'K', 'V', 'S', 'T', 'R', 'E', 'C', 'D'};
// Where each header's own checksum sits: its last 8 bytes.
constexpr size_t kSegmentSumAt = kSegmentHeaderBytes - 8;
constexpr size_t kRecordSumAt = kRecordHeaderBytes - 8;
// Fixed fields end here; bytes from here up to the checksum are zero.
constexpr size_t kSegmentFieldsEnd = 32;
constexpr size_t kRecordFieldsEnd = 80;

void PutU16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetLe(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
bool AllZero(const uint8_t* p, size_t n) {
  return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

// Checks magic, version, the fixed size field and the trailing checksum, then that the
// reserved range [fields_end, sum_at) is zero. `what` names the header in messages.
absl::Status CheckHeader(const uint8_t* p, size_t bytes, const char (&magic)[8], size_t fields_end,
                         uint32_t size_field, std::string_view what) {
  if (std::memcmp(p, magic, 8) != 0) return absl::DataLossError(StrCat(what, ": bad magic"));
  uint16_t version = static_cast<uint16_t>(GetLe(p + 8, 2));
  if (version != kVersion) {
    return absl::DataLossError(StrCat(what, ": unsupported version ", version,
                                      " (this build reads version ", kVersion, ")"));
  }
  uint64_t stored = GetLe(p + bytes - 8, 8), computed = Xxh3_64(p, bytes - 8);
  if (stored != computed) {
    return absl::DataLossError(
        StrCat(what, ": checksum mismatch (stored ", stored, ", computed ", computed, ")"));
  }
  if (GetLe(p + 10, 2) != 0 || GetLe(p + 12, 4) != size_field ||
      !AllZero(p + fields_end, bytes - 8 - fields_end)) {
    return absl::DataLossError(StrCat(what, ": reserved bytes are not zero or size is wrong"));
  }
  return absl::OkStatus();
}

}  // namespace

void EncodeSegmentHeader(const SegmentHeader& h, std::span<uint8_t> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kSegmentHeaderBytes);
  std::memcpy(p, kSegmentMagic, 8);
  PutU16(p + 8, kVersion);
  PutU32(p + 12, static_cast<uint32_t>(kAlign));
  PutU64(p + 16, h.segment_id);
  PutU64(p + 24, h.created_micros);
  PutU64(p + kSegmentSumAt, Xxh3_64(p, kSegmentSumAt));
}

absl::StatusOr<SegmentHeader> DecodeSegmentHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kSegmentHeaderBytes) {
    return absl::DataLossError(StrCat("segment header: truncated (", bytes.size(), " of ",
                                      kSegmentHeaderBytes, " bytes)"));
  }
  const uint8_t* p = bytes.data();
  RETURN_IF_ERROR(CheckHeader(p, kSegmentHeaderBytes, kSegmentMagic, kSegmentFieldsEnd,
                              static_cast<uint32_t>(kAlign), "segment header"));
  return SegmentHeader{GetLe(p + 16, 8), GetLe(p + 24, 8)};
}

void EncodeRecordHeader(const RecordHeader& h, std::span<uint8_t> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kRecordHeaderBytes);
  std::memcpy(p, kRecordMagic, 8);
  PutU16(p + 8, kVersion);
  PutU32(p + 12, static_cast<uint32_t>(kRecordHeaderBytes));
  PutU64(p + 16, h.payload_bytes);
  PutU64(p + 24, h.segment_id);
  std::memcpy(p + 40, h.key.bytes.data(), h.key.bytes.size());
  PutU64(p + 72, h.payload_xxh3);
  PutU64(p + kRecordSumAt, Xxh3_64(p, kRecordSumAt));
}

absl::StatusOr<RecordHeader> DecodeRecordHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kRecordHeaderBytes) {
    return absl::DataLossError(
        StrCat("record header: truncated (", bytes.size(), " of ", kRecordHeaderBytes, " bytes)"));
  }
  const uint8_t* p = bytes.data();
  if (AllZero(p, kRecordHeaderBytes)) return absl::DataLossError("record header: no record here");
  RETURN_IF_ERROR(CheckHeader(p, kRecordHeaderBytes, kRecordMagic, kRecordFieldsEnd,
                              static_cast<uint32_t>(kRecordHeaderBytes), "record header"));
  if (GetLe(p + 32, 8) != 0) return absl::DataLossError("record header: reserved bytes not zero");
  RecordHeader h;
  h.payload_bytes = GetLe(p + 16, 8);
  h.segment_id = GetLe(p + 24, 8);
  std::memcpy(h.key.bytes.data(), p + 40, h.key.bytes.size());
  h.payload_xxh3 = GetLe(p + 72, 8);
  if (h.payload_bytes == 0 || h.payload_bytes > kMaxPayloadBytes) {
    return absl::DataLossError(StrCat("record header: payload of ", h.payload_bytes,
                                      " bytes outside 1..", kMaxPayloadBytes));
  }
  return h;
}

absl::StatusOr<SegmentScan> ScanSegmentFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, StrCat("open segment ", path));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  auto read_at = [&](uint64_t off, std::vector<uint8_t>& buf) -> absl::StatusOr<size_t> {
    size_t got = 0;
    while (got < buf.size()) {
      ssize_t n = ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(off + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoToStatus(errno, StrCat("read segment ", path));
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    return got;
  };
  SegmentScan scan;
  scan.file_bytes = static_cast<uint64_t>(::lseek(fd, 0, SEEK_END));
  std::vector<uint8_t> buf(kSegmentHeaderBytes);
  ASSIGN_OR_RETURN(size_t got, read_at(0, buf));
  absl::StatusOr<SegmentHeader> sh = DecodeSegmentHeader(std::span(buf).first(got));
  if (!sh.ok()) return Annotate(sh.status(), path);
  scan.header = *sh;
  std::vector<uint8_t> head(kRecordHeaderBytes), payload;
  for (uint64_t off = kSegmentHeaderBytes; off + kRecordHeaderBytes <= scan.file_bytes;) {
    ASSIGN_OR_RETURN(got, read_at(off, head));
    absl::StatusOr<RecordHeader> h = DecodeRecordHeader(std::span(head).first(got));
    if (!h.ok()) {
      ++scan.skipped_blocks;
      off += kAlign;
      continue;
    }
    ScannedRecord r{off, *h, absl::OkStatus()};
    payload.resize(h->payload_bytes);
    ASSIGN_OR_RETURN(got, read_at(off + kRecordHeaderBytes, payload));
    if (got < payload.size()) {
      r.status = absl::DataLossError(StrCat("record at ", off, " of ", path, " is torn: ", got,
                                            " of ", payload.size(), " payload bytes in the file"));
    } else if (uint64_t sum = Xxh3_64(payload.data(), payload.size()); sum != h->payload_xxh3) {
      r.status = absl::DataLossError(StrCat("record at ", off, " of ", path,
                                            ": payload checksum mismatch (stored ", h->payload_xxh3,
                                            ", computed ", sum, ")"));
    }
    scan.records.push_back(std::move(r));
    off += RecordBytes(h->payload_bytes);
  }
  return scan;
}

std::string SegmentFileName(uint64_t id) { return fmt::format("{:016x}.seg", id); }

bool ParseSegmentFileName(std::string_view name, uint64_t* id) {
  if (name.size() != 20 || name.substr(16) != ".seg") return false;
  uint64_t v = 0;
  for (char c : name.substr(0, 16)) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  *id = v;
  return true;
}

}  // namespace kv::segment
