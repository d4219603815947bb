// The packed remote key: the blob Register() hands out and a peer's ImportRemoteRegion()
// reads. It names the owner's region id, base address and length, so the importer can
// bounds-check every op locally, plus an opaque backend blob (a packed UCX rkey).
//
// Layout (little-endian): "KVRK" | u8 version=1 | u8 backend | u8 memory kind | u8 flags |
// u64 region id | u64 base | u64 length | u32 blob length | blob | u64 XXH3-64 of all before.
// The checksum makes a truncated or corrupted key an InvalidArgument, never a wild write.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "transport/transport.h"

namespace kv::transport {

enum class BackendKind : uint8_t { kInProc = 1, kUcx = 2 };

struct RemoteKey {
  BackendKind backend = BackendKind::kInProc;
  MemoryKind kind = MemoryKind::kHost;
  uint8_t flags = 0;
  RegionId region = 0;
  uint64_t base = 0;
  uint64_t length = 0;
  std::string blob;
};

std::string PackRemoteKey(const RemoteKey& key);
// InvalidArgument naming the defect (size, magic, version, checksum, backend mismatch).
absl::StatusOr<RemoteKey> UnpackRemoteKey(std::string_view packed, BackendKind expected);

// Little-endian helpers shared by the backends' wire formats.
void PutU64(std::string* out, uint64_t v);
void PutU32(std::string* out, uint32_t v);
// Reads at *pos and advances it; false when fewer bytes remain.
bool GetU64(std::string_view in, size_t* pos, uint64_t* v);
bool GetU32(std::string_view in, size_t* pos, uint32_t* v);

}  // namespace kv::transport
