#include "kvstore/fake_tiers.h"

#include <cstring>

#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {

uint64_t MemTier::used_bytes() const {
  MutexLock l(&mu_);
  return used_;
}

bool MemTier::HasRoom(uint64_t size) const {
  MutexLock l(&mu_);
  return used_ + size <= capacity_;
}

absl::Status MemTier::Write(const PageMeta& meta, std::string_view bytes) {
  if (meta.size != bytes.size()) {
    return absl::InvalidArgumentError(
        StrCat("page ", meta.key.Hex(), ": meta size ", meta.size, " != ", bytes.size(), " bytes"));
  }
  MutexLock l(&mu_);
  if (pages_.contains(meta.key)) {
    return absl::AlreadyExistsError(
        StrCat("page ", meta.key.Hex(), " already in ", TierName(kind_)));
  }
  if (used_ + bytes.size() > capacity_) {
    return MarkRetryable(absl::ResourceExhaustedError(StrCat(
        TierName(kind_), " tier full: ", used_, "+", bytes.size(), " > ", capacity_, " bytes")));
  }
  Page p{meta, std::string(bytes)};
  p.meta.sealed = false;
  used_ += bytes.size();
  pages_.emplace(meta.key, std::move(p));
  return absl::OkStatus();
}

absl::Status MemTier::Seal(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = pages_.find(key);
  if (it == pages_.end()) return absl::NotFoundError(StrCat("seal: no page ", key.Hex()));
  it->second.meta.sealed = true;
  return absl::OkStatus();
}

absl::StatusOr<size_t> MemTier::Read(const BlockKey& key, std::span<uint8_t> dst) {
  MutexLock l(&mu_);
  auto it = pages_.find(key);
  if (it == pages_.end()) return absl::NotFoundError(StrCat("no page ", key.Hex()));
  const std::string& b = it->second.bytes;
  if (dst.size() < b.size()) {
    return absl::OutOfRangeError(StrCat("buffer of ", dst.size(), " bytes < page of ", b.size()));
  }
  std::memcpy(dst.data(), b.data(), b.size());
  return b.size();
}

absl::StatusOr<std::span<const uint8_t>> MemTier::Lend(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = pages_.find(key);
  if (it == pages_.end()) return absl::NotFoundError(StrCat("no page ", key.Hex()));
  const std::string& b = it->second.bytes;
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size());
}

absl::StatusOr<PageLocation> MemTier::Locate(const BlockKey& key) {
  return absl::UnimplementedError("MemTier has no registered region");
}

absl::Status MemTier::Erase(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = pages_.find(key);
  if (it == pages_.end()) return absl::NotFoundError(StrCat("erase: no page ", key.Hex()));
  used_ -= it->second.bytes.size();
  pages_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PageMeta>> MemTier::List() {
  MutexLock l(&mu_);
  std::vector<PageMeta> out;
  for (const auto& [k, p] : pages_) {
    if (p.meta.sealed) out.push_back(p.meta);
  }
  return out;
}

absl::Status MemTier::CorruptForTest(const BlockKey& key, uint64_t offset) {
  MutexLock l(&mu_);
  auto it = pages_.find(key);
  if (it == pages_.end() || it->second.bytes.empty()) {
    return absl::NotFoundError(StrCat("no page ", key.Hex()));
  }
  it->second.bytes[offset % it->second.bytes.size()] ^= 0x5a;
  return absl::OkStatus();
}

absl::Status FaultInjectingTier::Write(const PageMeta& meta, std::string_view bytes) {
  if (fail_writes_) {
    ++injected_;
    return MarkRetryable(absl::UnavailableError("injected write fault"));
  }
  return TierWrapper::Write(meta, bytes);
}

absl::Status FaultInjectingTier::Seal(const BlockKey& key) {
  if (fail_seals_) {
    ++injected_;
    return MarkRetryable(absl::UnavailableError("injected seal fault"));
  }
  return TierWrapper::Seal(key);
}

absl::StatusOr<size_t> FaultInjectingTier::Read(const BlockKey& key, std::span<uint8_t> dst) {
  if (fail_reads_) {
    ++injected_;
    return MarkRetryable(absl::UnavailableError("injected read fault"));
  }
  ASSIGN_OR_RETURN(size_t n, TierWrapper::Read(key, dst));
  if (corrupt_reads_ && n > 0) {
    ++injected_;
    dst[n / 2] ^= 0x01;
  }
  return n;
}

absl::StatusOr<std::vector<absl::StatusOr<size_t>>> FaultInjectingTier::ReadMany(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) {
  // Route through Read() so every injected fault applies per key.
  return Tier::ReadMany(keys, dsts);
}

}  // namespace kv
