// SlabTier: the device and host tiers, one code path over two kinds of memory.
//
// A MemoryRegion is one contiguous allocation: device memory (a cudaMalloc slab on CUDA
// builds; the compute memory of the CPU backend, an aligned heap block, otherwise) or host
// memory (an anonymous mapping, pinned with mlock and, on CUDA builds, cudaHostRegister).
// Pinning that fails degrades to unpinned memory with one logged warning; it never fails
// the tier.
//
// SlabTier carves its region into fixed-size slabs. Each slab serves one page-size class
// (classes grow geometrically by 1.25x from 4 KiB), so a page takes at most 25% more than
// its size and freeing never fragments across classes: a slab whose pages are all freed
// returns to the free pool for any class. Pages are addressed as (region 0, offset), which
// the transport registers for zero-copy RMA.
//
// Thread-safety: all methods are safe for concurrent use; page copies run outside the
// allocator's lock. The region is owned by the tier; Lend() views stay valid until Erase().
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/mutex.h"
#include "kvstore/tier.h"

namespace kv {

class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual uint64_t size() const = 0;
  // Host pointer to the region start, or nullptr if it is not host-addressable (CUDA).
  virtual uint8_t* host_base() = 0;
  // Whether the memory is pinned (mlock / cudaHostRegister / device memory).
  virtual bool pinned() const = 0;
  // Copies into / out of the region. InvalidArgument when the range is outside the region;
  // Internal on a device copy failure.
  virtual absl::Status CopyIn(uint64_t offset, const void* src, uint64_t n) = 0;
  virtual absl::Status CopyOut(uint64_t offset, void* dst, uint64_t n) = 0;
};

// Host memory for the host tier: an anonymous mapping, pinned when the system allows.
absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateHostRegion(uint64_t bytes);
// Memory for the device tier: cudaMalloc when built with CUDA and a device is present,
// otherwise the CPU backend's compute memory (a 2 MiB-aligned heap block).
absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateDeviceRegion(uint64_t bytes);

struct SlabTierOptions {
  TierKind kind = TierKind::kHost;
  // Slab size; the largest page class. Region size is rounded down to a multiple.
  uint64_t slab_bytes = 16ull << 20;
};

class SlabTier : public Tier {
 public:
  // InvalidArgument if the region holds no slab or slab_bytes < 4 KiB.
  static absl::StatusOr<std::unique_ptr<SlabTier>> Create(std::unique_ptr<MemoryRegion> region,
                                                          SlabTierOptions options);

  TierKind kind() const override { return options_.kind; }
  uint64_t capacity_bytes() const override { return num_slabs_ * options_.slab_bytes; }
  uint64_t used_bytes() const override;
  uint64_t Footprint(uint64_t size) const override;
  bool HasRoom(uint64_t size) const override;
  absl::Status Write(const PageMeta& meta, std::string_view bytes) override;
  absl::Status Seal(const BlockKey& key) override;
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override;
  absl::StatusOr<std::span<const uint8_t>> Lend(const BlockKey& key) override;
  absl::StatusOr<PageLocation> Locate(const BlockKey& key) override;
  absl::Status Erase(const BlockKey& key) override;
  absl::StatusOr<std::vector<PageMeta>> List() override;

  MemoryRegion* region() { return region_.get(); }
  // The page-size class sizes, ascending.
  const std::vector<uint64_t>& classes() const { return classes_; }

 private:
  SlabTier(std::unique_ptr<MemoryRegion> region, SlabTierOptions options);
  struct Slab {
    int cls = -1;                // -1: free
    std::vector<uint32_t> free;  // free slot indices
    uint32_t used = 0;
  };
  struct Slot {
    PageMeta meta;
    uint64_t offset = 0;
    int cls = 0;
  };
  int ClassOf(uint64_t size) const;  // -1 if larger than a slab
  absl::StatusOr<uint64_t> Allocate(int cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Free(uint64_t offset, int cls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<MemoryRegion> region_;
  const SlabTierOptions options_;
  const uint64_t num_slabs_;
  std::vector<uint64_t> classes_;
  mutable Mutex mu_;
  std::vector<Slab> slabs_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_slabs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::set<uint32_t>> partial_ ABSL_GUARDED_BY(mu_);  // per class: slabs w/ room
  absl::flat_hash_map<BlockKey, Slot> slots_ ABSL_GUARDED_BY(mu_);
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kv
