// Segment files of the nvme tier: their byte format (docs/formats.md §3).
//
// A segment is an append-only file of page records, written with O_DIRECT. It opens with a
// 4096-byte segment header; records follow, each starting on a 4096-byte boundary. A record
// is a 512-byte record header, the page bytes (the payload), and zero padding up to the next
// 4096-byte boundary. Both headers end in their own XXH3-64, and the record header carries
// the payload's XXH3-64 and the segment's id, so a segment can be scanned and every record
// verified without the index (ScanSegmentFile), and a record read from the wrong place, a
// torn record, or a hole punched under it is always detected.
//
// Everything here is a pure function over byte buffers, except ScanSegmentFile, which reads
// a file. Thread-safe; nothing returned borrows its input.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstore/block_key.h"

namespace kv::segment {

inline constexpr uint64_t kAlign = 4096;               // record start and length granularity
inline constexpr uint64_t kSegmentHeaderBytes = 4096;  // the first record starts here
inline constexpr uint64_t kRecordHeaderBytes = 512;    // the payload starts here in a record
inline constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 30;
inline constexpr uint16_t kVersion = 1;

struct SegmentHeader {
  uint64_t segment_id = 0;
  uint64_t created_micros = 0;  // Unix microseconds, informational
};

struct RecordHeader {
  uint64_t segment_id = 0;     // the segment the record was written into
  BlockKey key;                // the page's block key
  uint64_t payload_bytes = 0;  // page bytes, 1..kMaxPayloadBytes
  uint64_t payload_xxh3 = 0;   // XXH3-64 (seed 0) of the page bytes
};

// Bytes a record with `payload_bytes` of page takes in a segment: header + payload rounded
// up to kAlign.
constexpr uint64_t RecordBytes(uint64_t payload_bytes) {
  return (kRecordHeaderBytes + payload_bytes + kAlign - 1) / kAlign * kAlign;
}

// Writes the segment header into out[0, kSegmentHeaderBytes). `out` must be that large.
void EncodeSegmentHeader(const SegmentHeader& h, std::span<uint8_t> out);
// Decodes and verifies a segment header from the first kSegmentHeaderBytes of `bytes`.
// DataLoss naming the problem (short, bad magic, unsupported version, checksum, nonzero
// reserved bytes).
absl::StatusOr<SegmentHeader> DecodeSegmentHeader(std::span<const uint8_t> bytes);

// Writes the record header into out[0, kRecordHeaderBytes). `out` must be that large.
void EncodeRecordHeader(const RecordHeader& h, std::span<uint8_t> out);
// Decodes and verifies a record header from the first kRecordHeaderBytes of `bytes`.
// DataLoss naming the problem; an all-zero header (a hole, or space never written) is
// DataLoss "no record here".
absl::StatusOr<RecordHeader> DecodeRecordHeader(std::span<const uint8_t> bytes);

// One record found by a scan. `status` is OK when the header and the payload checksum
// verify; DataLoss (payload checksum mismatch, or "torn": the record runs past the end of
// the file) otherwise, with the header as decoded.
struct ScannedRecord {
  uint64_t offset = 0;  // of the record header in the file
  RecordHeader header;
  absl::Status status;
};
struct SegmentScan {
  SegmentHeader header;
  uint64_t file_bytes = 0;
  std::vector<ScannedRecord> records;  // in file order
  uint64_t skipped_blocks = 0;         // kAlign blocks holding no record header (holes, junk)
};

// Reads the segment file at `path` front to back and verifies every record: the way to
// check a segment without the index. A block that holds no valid record header is skipped
// (counted); a valid header's record is checked whole and skipped over. NotFound if the file
// does not exist; DataLoss if its segment header does not verify; Unavailable on a read
// error.
absl::StatusOr<SegmentScan> ScanSegmentFile(const std::string& path);

// "%016x.seg": the file name of segment `id`. ParseSegmentFileName returns false for any
// other name.
std::string SegmentFileName(uint64_t id);
bool ParseSegmentFileName(std::string_view name, uint64_t* id);

}  // namespace kv::segment
