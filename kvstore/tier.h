// Tier: one storage medium of the tiered page store (DESIGN.md "Tiers").
//
// A Tier holds encoded pages (opaque byte strings produced by page_format) under their
// 32-byte block key, with the metadata the store needs to rebuild its index (PageMeta).
// Three real implementations exist: SlabTier over device memory (a cudaMalloc slab on CUDA
// builds, the compute memory of the CPU backend otherwise) and over pinned host memory
// (slab_tier.h), and NvmeTier over O_DIRECT segment files with a RocksDB index (nvme_tier.h).
// MemTier is an in-memory fake and FaultInjectingTier breaks chosen operations
// (fake_tiers.h).
//
// Writes are two-phase: Write() stores the bytes unsealed; Seal() makes them durable and
// listable. A tier does not verify page checksums; the TieredStore does, on every read.
//
// Thread-safety: every method is safe for concurrent use. A caller must not Erase() a key
// while another thread reads or lends it; the TieredStore guarantees this with pins.
// Ownership: Read() copies into the caller's buffer. Lend() returns a view into the tier's
// own memory that stays valid until the key is erased (the store keeps it pinned).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/block_key.h"
#include "kvstore/resume_policy.h"

namespace kv {

enum class TierKind : uint8_t { kDevice = 0, kHost = 1, kNvme = 2 };
inline constexpr int kNumTiers = 3;

// "device", "host" or "nvme".
std::string_view TierName(TierKind kind);
// Parses a tier name. InvalidArgument naming the bad name otherwise.
absl::StatusOr<TierKind> ParseTierName(std::string_view name);

// A page's token and layer span, from its header (page_format.h).
struct PageGeometry {
  uint32_t token_count = 0;  // 0: not known
  uint32_t first_layer = 0;
  uint32_t layer_count = 0;
  bool known() const { return token_count != 0; }
};

// What a tier records about a page besides its bytes.
struct PageMeta {
  BlockKey key;
  BlockKey parent;      // BlockKey::Zero() for the first block of a chain
  std::string ns;       // KeyNamespace::ToString() of the page's namespace
  std::string layout;   // layout id, e.g. "mla-fp8-656"
  uint64_t size = 0;    // encoded page bytes
  bool sealed = false;  // set by Seal(); only sealed pages are listed
  absl::Time last_access = absl::UnixEpoch();
  // Why the publisher kept a resume section on this page (resume_policy.h); only matters
  // for v4-fp8-584 pages that carry one. Set by the publisher.
  PageRole resume_role = PageRole::kTurnEnd;
  // Bytes the page would shrink by if its resume section were stripped; 0 when it has none.
  // Computed by the TieredStore from the page (callers' values are ignored);
  // kResumeBytesUnknown for pages listed from an nvme record older than the field.
  uint64_t resume_bytes = 0;
  // Computed by TieredStore::Write from the page header (callers' values are ignored). Tiers
  // need not keep it (nvme records do not): unknown for recovered pages until first read.
  PageGeometry geometry;
  // The block's hash as the engine that wrote it knows it (e.g. vLLM's sha256_cbor digest),
  // opaque bytes; empty when the writer gave none. Reported in KV events
  // (kvstore/kv_events.h), never used for lookup.
  std::string engine_hash;
  // The key and parent the page's own header names, when the store indexes the page under
  // other keys: a PageStore keeps each page under a storage key derived from its namespace
  // and its key (kvstore/page_store.h StorageKey), so two namespaces can hold one key. Zero
  // page_key: the header names `key` and `parent` themselves (page_parent is then unused).
  BlockKey page_key;
  BlockKey page_parent;
  // The key and parent the header must name.
  const BlockKey& header_key() const { return page_key.IsZero() ? key : page_key; }
  const BlockKey& header_parent() const { return page_key.IsZero() ? parent : page_parent; }
};
inline constexpr uint64_t kResumeBytesUnknown = ~uint64_t{0};

// Where a page lives inside a registered memory region (for the transport's RMA).
struct PageLocation {
  uint32_t region = 0;  // index of the tier's memory region
  uint64_t offset = 0;  // byte offset inside the region
  uint64_t length = 0;  // page bytes
};

class Tier {
 public:
  virtual ~Tier() = default;

  virtual TierKind kind() const = 0;
  // Total bytes the tier may hold, and bytes taken now (including slab rounding).
  virtual uint64_t capacity_bytes() const = 0;
  virtual uint64_t used_bytes() const = 0;
  // Bytes a page of `size` takes in this tier (its size class), or 0 if it can never fit.
  virtual uint64_t Footprint(uint64_t size) const = 0;
  // True if a page of `size` could be written now without evicting anything.
  virtual bool HasRoom(uint64_t size) const = 0;

  // Stores `bytes` unsealed under meta.key (meta.size must equal bytes.size()).
  // ResourceExhausted (retryable) when there is no room; AlreadyExists if the key is
  // present; InvalidArgument on a size mismatch; Unavailable/DataLoss on media errors.
  virtual absl::Status Write(const PageMeta& meta, std::string_view bytes) = 0;
  // Marks a written page sealed (durable on nvme). NotFound if the key is absent.
  virtual absl::Status Seal(const BlockKey& key) = 0;
  // Copies the page into `dst` and returns its size. NotFound if absent; OutOfRange if
  // `dst` is too small (nothing is copied); DataLoss if the medium reports corruption.
  virtual absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) = 0;
  // Reads several pages at once (the nvme tier batches them). One status per key, with the
  // same meaning as Read(); the outer status fails only if the call itself could not run.
  virtual absl::StatusOr<std::vector<absl::StatusOr<size_t>>> ReadMany(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts);
  // A host-addressable view of the page. Unimplemented for tiers without one (nvme, or
  // device memory on CUDA builds); NotFound if absent.
  virtual absl::StatusOr<std::span<const uint8_t>> Lend(const BlockKey& key) = 0;
  // The page's (region, offset, length). Unimplemented where there is no region.
  virtual absl::StatusOr<PageLocation> Locate(const BlockKey& key) = 0;
  // Removes the page (sealed or not). NotFound if absent.
  virtual absl::Status Erase(const BlockKey& key) = 0;
  // Metadata of every sealed page, for rebuilding the index after a restart.
  virtual absl::StatusOr<std::vector<PageMeta>> List() = 0;
};

// Forwards every call to `base` (not owned; must outlive the wrapper). Fault injectors
// derive from it and override only what they break.
class TierWrapper : public Tier {
 public:
  explicit TierWrapper(Tier* base) : base_(base) {}
  TierKind kind() const override { return base_->kind(); }
  uint64_t capacity_bytes() const override { return base_->capacity_bytes(); }
  uint64_t used_bytes() const override { return base_->used_bytes(); }
  uint64_t Footprint(uint64_t size) const override { return base_->Footprint(size); }
  bool HasRoom(uint64_t size) const override { return base_->HasRoom(size); }
  absl::Status Write(const PageMeta& meta, std::string_view bytes) override {
    return base_->Write(meta, bytes);
  }
  absl::Status Seal(const BlockKey& key) override { return base_->Seal(key); }
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override {
    return base_->Read(key, dst);
  }
  absl::StatusOr<std::vector<absl::StatusOr<size_t>>> ReadMany(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) override {
    return base_->ReadMany(keys, dsts);
  }
  absl::StatusOr<std::span<const uint8_t>> Lend(const BlockKey& key) override {
    return base_->Lend(key);
  }
  absl::StatusOr<PageLocation> Locate(const BlockKey& key) override { return base_->Locate(key); }
  absl::Status Erase(const BlockKey& key) override { return base_->Erase(key); }
  absl::StatusOr<std::vector<PageMeta>> List() override { return base_->List(); }

 protected:
  Tier* base() const { return base_; }

 private:
  Tier* base_;
};

}  // namespace kv
