#include "transport/remote_key.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/hash.h"

namespace kv::transport {

namespace {
constexpr char kMagic[4] = {'K', 'V', 'R', 'K'};
constexpr uint8_t kVersion = 1;
constexpr size_t kFixed = 4 + 4 + 8 + 8 + 8 + 4;
}  // namespace

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
bool GetU64(std::string_view in, size_t* pos, uint64_t* v) {
  if (in.size() < *pos || in.size() - *pos < 8) return false;
  uint64_t r = 0;
  for (int i = 0; i < 8; ++i) r |= uint64_t{static_cast<uint8_t>(in[*pos + i])} << (8 * i);
  *pos += 8;
  *v = r;
  return true;
}
bool GetU32(std::string_view in, size_t* pos, uint32_t* v) {
  if (in.size() < *pos || in.size() - *pos < 4) return false;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t{static_cast<uint8_t>(in[*pos + i])} << (8 * i);
  *pos += 4;
  *v = r;
  return true;
}

std::string PackRemoteKey(const RemoteKey& key) {
  std::string out(kMagic, 4);
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(key.backend));
  out.push_back(static_cast<char>(key.kind));
  out.push_back(static_cast<char>(key.flags));
  PutU64(&out, key.region);
  PutU64(&out, key.base);
  PutU64(&out, key.length);
  PutU32(&out, static_cast<uint32_t>(key.blob.size()));
  out += key.blob;
  PutU64(&out, Xxh3_64(out.data(), out.size()));
  return out;
}

absl::StatusOr<RemoteKey> UnpackRemoteKey(std::string_view packed, BackendKind expected) {
  if (packed.size() < kFixed + 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("remote key too short: ", packed.size(), " bytes"));
  }
  if (std::memcmp(packed.data(), kMagic, 4) != 0) {
    return absl::InvalidArgumentError("remote key has a bad magic (not a kvstrata region key)");
  }
  size_t body = packed.size() - 8;
  size_t pos = body;
  uint64_t sum = 0;
  GetU64(packed, &pos, &sum);
  if (sum != Xxh3_64(packed.data(), body)) {
    return absl::InvalidArgumentError("remote key checksum mismatch (truncated or corrupted)");
  }
  if (static_cast<uint8_t>(packed[4]) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("remote key version ", static_cast<int>(packed[4]), " unsupported"));
  }
  RemoteKey k;
  k.backend = static_cast<BackendKind>(packed[5]);
  if (k.backend != expected) {
    return absl::InvalidArgumentError(absl::StrCat("remote key is for backend ",
                                                   static_cast<int>(k.backend), ", expected ",
                                                   static_cast<int>(expected)));
  }
  uint8_t kind = static_cast<uint8_t>(packed[6]);
  if (kind > 1) return absl::InvalidArgumentError("remote key names an unknown memory kind");
  k.kind = static_cast<MemoryKind>(kind);
  k.flags = static_cast<uint8_t>(packed[7]);
  pos = 8;
  uint32_t blob_len = 0;
  GetU64(packed, &pos, &k.region);
  GetU64(packed, &pos, &k.base);
  GetU64(packed, &pos, &k.length);
  GetU32(packed, &pos, &blob_len);
  if (body - pos != blob_len) {
    return absl::InvalidArgumentError("remote key blob length does not match its size");
  }
  k.blob.assign(packed.data() + pos, blob_len);
  if (k.length == 0) return absl::InvalidArgumentError("remote key names an empty region");
  return k;
}

}  // namespace kv::transport
