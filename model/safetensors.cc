#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace kv::model {
namespace {

using Json = nlohmann::json;
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

absl::StatusOr<DType> ParseDType(std::string_view s) {
  if (s == "BF16") return DType::kBF16;
  if (s == "F32") return DType::kF32;
  if (s == "F8_E4M3") return DType::kF8E4M3;
  return absl::UnimplementedError(
      absl::StrCat("dtype '", std::string(s), "' is not supported (BF16, F32, F8_E4M3)"));
}

// Checked byte size of a tensor: dtype size x product(shape), or an error on overflow.
absl::StatusOr<uint64_t> ByteSize(DType d, const std::vector<int64_t>& shape) {
  uint64_t n = DTypeSize(d);
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(dim), &n)) {
      return absl::InvalidArgumentError("shape product overflows 64 bits");
    }
  }
  return n;
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const Json& e, uint64_t data_size) {
  if (!e.is_object()) return absl::InvalidArgumentError("entry is not an object");
  TensorInfo t;
  t.name = name;
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) {
    return absl::InvalidArgumentError("'dtype' is missing or not a string");
  }
  ASSIGN_OR_RETURN(t.dtype, ParseDType(dt->get<std::string>()));
  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) {
    return absl::InvalidArgumentError("'shape' is missing or not an array");
  }
  for (const Json& d : *sh) {
    if (!d.is_number_unsigned()) {
      return absl::InvalidArgumentError("'shape' holds a value that is not a non-negative integer");
    }
    t.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(d.get<uint64_t>(), 1ull << 62)));
  }
  auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return absl::InvalidArgumentError("'data_offsets' must be two non-negative integers");
  }
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  if (t.begin > t.end) {
    return absl::InvalidArgumentError(
        absl::StrCat("data_offsets [", t.begin, ", ", t.end, ") run backwards"));
  }
  if (t.end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                                                   ") lie beyond the data section (", data_size,
                                                   " bytes)"));
  }
  ASSIGN_OR_RETURN(uint64_t want, ByteSize(t.dtype, t.shape));
  if (t.end - t.begin != want) {
    return absl::InvalidArgumentError(absl::StrCat("holds ", t.end - t.begin, " bytes but dtype ",
                                                   DTypeName(t.dtype), " x shape needs ", want));
  }
  return t;
}

}  // namespace

size_t DTypeSize(DType d) {
  switch (d) {
    case DType::kBF16:
      return 2;
    case DType::kF32:
      return 4;
    case DType::kF8E4M3:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType d) {
  switch (d) {
    case DType::kBF16:
      return "BF16";
    case DType::kF32:
      return "F32";
    case DType::kF8E4M3:
      return "F8_E4M3";
  }
  return "?";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return kv::ErrnoToStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return kv::ErrnoToStatus(err, absl::StrCat("stat ", path));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_size_ = static_cast<size_t>(st.st_size);
  if (f->map_size_ < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file is ", f->map_size_, " bytes, shorter than the 8-byte header length"));
  }
  void* m = mmap(nullptr, f->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  if (m == MAP_FAILED) return kv::ErrnoToStatus(err, absl::StrCat("mmap ", path));
  f->map_ = m;
  absl::Status s = f->Parse();
  if (!s.ok()) return kv::Annotate(s, path);
  return f;
}

absl::Status SafetensorsFile::Parse() {
  const auto* base = static_cast<const uint8_t*>(map_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];  // little-endian u64
  if (n > map_size_ - 8) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", n, " exceeds the ",
                                                   map_size_ - 8, " bytes after it (truncated?)"));
  }
  if (n > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", n, " is implausibly large"));
  }
  header_ = std::string_view(reinterpret_cast<const char*>(base + 8), n);
  data_ = std::span<const uint8_t>(base + 8 + n, map_size_ - 8 - n);
  Json j = Json::parse(header_.begin(), header_.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("header is not a JSON object");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return absl::InvalidArgumentError("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat("__metadata__ value '", m.key(), "' is not a string"));
        }
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    auto t = ParseEntry(it.key(), *it, data_.size());
    if (!t.ok()) return kv::Annotate(t.status(), absl::StrCat("tensor '", it.key(), "'"));
    tensors_.push_back(*std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  uint64_t covered = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorInfo& t = tensors_[i];
    if (t.begin < covered) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors '", tensors_[i - 1].name, "' and '", t.name, "' overlap"));
    }
    if (t.begin > covered) {
      return absl::InvalidArgumentError(
          absl::StrCat("data bytes [", covered, ", ", t.begin, ") belong to no tensor"));
    }
    covered = t.end;
    by_name_[t.name] = i;
  }
  if (covered != data_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data bytes [", covered, ", ", data_.size(), ") belong to no tensor"));
  }
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::Bytes(const TensorInfo& t) const {
  return data_.subspan(t.begin, t.end - t.begin);
}

namespace {
absl::Status WriteAll(int fd, const void* p, size_t n, const std::string& path) {
  const auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return kv::ErrnoToStatus(errno, absl::StrCat("write ", path));
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> sorted;
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const TensorToWrite* t : sorted) {
    if (!seen.insert(t->name).second || t->name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat("tensor name '", t->name, "' repeats"));
    }
    ASSIGN_OR_RETURN(uint64_t want, ByteSize(t->dtype, t->shape));
    if (want != t->bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t->name, "' has ", t->bytes.size(),
                                                     " bytes, shape needs ", want));
    }
    header[t->name] = {{"dtype", DTypeName(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + want}}};
    offset += want;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t{h.size()} >> (8 * i));
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return kv::ErrnoToStatus(errno, absl::StrCat("create ", tmp));
  absl::Status s = WriteAll(fd, len, 8, tmp);
  if (s.ok()) s = WriteAll(fd, h.data(), h.size(), tmp);
  for (const TensorToWrite* t : sorted) {
    if (s.ok()) s = WriteAll(fd, t->bytes.data(), t->bytes.size(), tmp);
  }
  if (s.ok() && ::fsync(fd) != 0) s = kv::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp));
  ::close(fd);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = kv::ErrnoToStatus(errno, absl::StrCat("rename to ", path));
  }
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace kv::model
