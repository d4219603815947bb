// Safetensors files: a bounds-checked, memory-mapped reader and a writer.
//
// Format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
// ({"__metadata__": {str: str}, "<tensor>": {"dtype", "shape", "data_offsets": [b, e]}}),
// then the data section; offsets are relative to its start. The reader trusts nothing: the
// header length must fit the file and be sane (<= 100 MiB), every offset pair must lie in
// the data section, every byte size must equal dtype size x product(shape) (no overflow),
// tensors must not overlap and must cover the data section exactly (no gaps, as the
// reference implementation requires). Each violation is an InvalidArgument naming the file,
// the tensor and the fault. Dtypes: BF16, F32, F8_E4M3 (others: Unimplemented naming it).
//
// SafetensorsFile is immutable after Open() and safe for concurrent reads. The spans it
// returns point into the mapping and live as long as the SafetensorsFile object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kv::model {

enum class DType { kBF16, kF32, kF8E4M3 };

size_t DTypeSize(DType d);
const char* DTypeName(DType d);  // "BF16", "F32", "F8_E4M3"

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets in the data section
  uint64_t end = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Maps and validates `path`. NotFound when it cannot be opened, InvalidArgument (naming
  // the fault) for a malformed file, Unimplemented for an unsupported dtype.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  // The tensor named `name`, or nullptr when the file has none.
  const TensorInfo* Find(std::string_view name) const;
  // Tensors in data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The raw bytes of `t` (which must come from this file).
  std::span<const uint8_t> Bytes(const TensorInfo& t) const;
  // The header JSON exactly as stored (including any padding).
  std::string_view header_json() const { return header_; }
  std::span<const uint8_t> data_section() const { return data_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::string_view header_;
  std::span<const uint8_t> data_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;  // dtype size x product(shape) bytes, little-endian
};

// Writes a safetensors file (tensors in name order, header padded to 8 bytes) through a
// temporary file and rename, so a reader never sees a partial file. InvalidArgument when a
// tensor's byte count does not match its shape or a name repeats; an errno-mapped status
// on I/O failure.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace kv::model
