#include "kvstore/slab_tier.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#ifdef KVSTRATA_HAVE_CUDA
#include "kvstore/cuda_memory.h"
#endif

namespace kv {
namespace {

constexpr uint64_t kMinClass = 4096;

absl::Status CheckRange(uint64_t offset, uint64_t n, uint64_t size) {
  if (offset > size || n > size - offset) {
    return absl::InvalidArgumentError(
        StrCat("range [", offset, ", +", n, ") outside region of ", size, " bytes"));
  }
  return absl::OkStatus();
}

// Host-addressable memory: the host tier's mapping or the CPU backend's compute memory.
class HostRegion : public MemoryRegion {
 public:
  HostRegion(uint8_t* base, uint64_t size, bool mapped, bool pinned, bool cuda_registered)
      : base_(base),
        size_(size),
        mapped_(mapped),
        pinned_(pinned),
        cuda_registered_(cuda_registered) {}
  ~HostRegion() override {
#ifdef KVSTRATA_HAVE_CUDA
    if (cuda_registered_) cuda_memory::HostUnregister(base_);
#endif
    if (mapped_) {
      munmap(base_, size_);
    } else {
      std::free(base_);
    }
  }
  uint64_t size() const override { return size_; }
  uint8_t* host_base() override { return base_; }
  bool pinned() const override { return pinned_; }
  absl::Status CopyIn(uint64_t offset, const void* src, uint64_t n) override {
    RETURN_IF_ERROR(CheckRange(offset, n, size_));
    std::memcpy(base_ + offset, src, n);
    return absl::OkStatus();
  }
  absl::Status CopyOut(uint64_t offset, void* dst, uint64_t n) override {
    RETURN_IF_ERROR(CheckRange(offset, n, size_));
    std::memcpy(dst, base_ + offset, n);
    return absl::OkStatus();
  }

 private:
  uint8_t* base_;
  uint64_t size_;
  bool mapped_;
  bool pinned_;
  bool cuda_registered_;
};

#ifdef KVSTRATA_HAVE_CUDA
class CudaRegion : public MemoryRegion {
 public:
  CudaRegion(void* base, uint64_t size) : base_(static_cast<uint8_t*>(base)), size_(size) {}
  ~CudaRegion() override { cuda_memory::Free(base_); }
  uint64_t size() const override { return size_; }
  uint8_t* host_base() override { return nullptr; }
  bool pinned() const override { return true; }
  absl::Status CopyIn(uint64_t offset, const void* src, uint64_t n) override {
    RETURN_IF_ERROR(CheckRange(offset, n, size_));
    int e = cuda_memory::CopyToDevice(base_ + offset, src, n);
    if (e != 0) return absl::InternalError(StrCat("cudaMemcpy H2D: ", cuda_memory::ErrorString(e)));
    return absl::OkStatus();
  }
  absl::Status CopyOut(uint64_t offset, void* dst, uint64_t n) override {
    RETURN_IF_ERROR(CheckRange(offset, n, size_));
    int e = cuda_memory::CopyToHost(dst, base_ + offset, n);
    if (e != 0) return absl::InternalError(StrCat("cudaMemcpy D2H: ", cuda_memory::ErrorString(e)));
    return absl::OkStatus();
  }

 private:
  uint8_t* base_;
  uint64_t size_;
};
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateHostRegion(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("host region of 0 bytes");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ErrnoToStatus(errno, StrCat("mmap host region of ", bytes));
  madvise(p, bytes, MADV_HUGEPAGE);  // best effort
  bool pinned = mlock(p, bytes) == 0;
  if (!pinned) {
    log::Warn("host_tier_unpinned", "bytes", bytes, "reason", std::strerror(errno), "hint",
              "raise RLIMIT_MEMLOCK (ulimit -l) to pin the host tier");
  }
  bool registered = false;
#ifdef KVSTRATA_HAVE_CUDA
  if (cuda_memory::DeviceCount() > 0) {
    int e = cuda_memory::HostRegister(p, bytes);
    registered = e == 0;
    if (!registered)
      log::Warn("host_tier_cuda_register_failed", "reason", cuda_memory::ErrorString(e));
  }
#endif
  return std::unique_ptr<MemoryRegion>(
      new HostRegion(static_cast<uint8_t*>(p), bytes, true, pinned || registered, registered));
}

absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateDeviceRegion(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("device region of 0 bytes");
#ifdef KVSTRATA_HAVE_CUDA
  if (cuda_memory::DeviceCount() > 0) {
    void* p = nullptr;
    int e = cuda_memory::Malloc(&p, bytes);
    if (e != 0) {
      return MarkRetryable(absl::ResourceExhaustedError(
          StrCat("cudaMalloc(", bytes, "): ", cuda_memory::ErrorString(e))));
    }
    return std::unique_ptr<MemoryRegion>(new CudaRegion(p, bytes));
  }
#endif
  constexpr uint64_t kAlign = 2ull << 20;
  uint64_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(StrCat("compute memory of ", bytes, " bytes"));
  }
  return std::unique_ptr<MemoryRegion>(
      new HostRegion(static_cast<uint8_t*>(p), bytes, false, false, false));
}

SlabTier::SlabTier(std::unique_ptr<MemoryRegion> region, SlabTierOptions options)
    : region_(std::move(region)),
      options_(options),
      num_slabs_(region_->size() / options.slab_bytes) {
  for (double c = kMinClass; c < static_cast<double>(options_.slab_bytes); c *= 1.25) {
    classes_.push_back((static_cast<uint64_t>(c) + 63) / 64 * 64);
  }
  classes_.push_back(options_.slab_bytes);
  slabs_.resize(num_slabs_);
  for (uint64_t i = num_slabs_; i > 0; --i) free_slabs_.push_back(static_cast<uint32_t>(i - 1));
  partial_.resize(classes_.size());
}

absl::StatusOr<std::unique_ptr<SlabTier>> SlabTier::Create(std::unique_ptr<MemoryRegion> region,
                                                           SlabTierOptions options) {
  if (region == nullptr) return absl::InvalidArgumentError("SlabTier: null region");
  if (options.slab_bytes < kMinClass) {
    return absl::InvalidArgumentError(
        StrCat("SlabTier: slab_bytes ", options.slab_bytes, " < ", kMinClass));
  }
  if (region->size() < options.slab_bytes) {
    return absl::InvalidArgumentError(StrCat("SlabTier: region of ", region->size(),
                                             " bytes holds no slab of ", options.slab_bytes));
  }
  return std::unique_ptr<SlabTier>(new SlabTier(std::move(region), options));
}

int SlabTier::ClassOf(uint64_t size) const {
  for (size_t i = 0; i < classes_.size(); ++i) {
    if (size <= classes_[i]) return static_cast<int>(i);
  }
  return -1;
}

uint64_t SlabTier::Footprint(uint64_t size) const {
  int c = ClassOf(size);
  return c < 0 ? 0 : classes_[c];
}

uint64_t SlabTier::used_bytes() const {
  MutexLock l(&mu_);
  return used_;
}

bool SlabTier::HasRoom(uint64_t size) const {
  int c = ClassOf(size);
  if (c < 0) return false;
  MutexLock l(&mu_);
  return !partial_[c].empty() || !free_slabs_.empty();
}

absl::StatusOr<uint64_t> SlabTier::Allocate(int cls) {
  if (partial_[cls].empty()) {
    if (free_slabs_.empty()) {
      return MarkRetryable(absl::ResourceExhaustedError(StrCat(
          TierName(options_.kind), " tier: no free slot of class ", classes_[cls], " bytes")));
    }
    uint32_t s = free_slabs_.back();
    free_slabs_.pop_back();
    Slab& slab = slabs_[s];
    slab.cls = cls;
    uint32_t n = static_cast<uint32_t>(options_.slab_bytes / classes_[cls]);
    slab.free.clear();
    for (uint32_t i = n; i > 0; --i) slab.free.push_back(i - 1);
    partial_[cls].insert(s);
  }
  uint32_t s = *partial_[cls].begin();
  Slab& slab = slabs_[s];
  uint32_t slot = slab.free.back();
  slab.free.pop_back();
  ++slab.used;
  if (slab.free.empty()) partial_[cls].erase(s);
  return s * options_.slab_bytes + static_cast<uint64_t>(slot) * classes_[cls];
}

void SlabTier::Free(uint64_t offset, int cls) {
  uint32_t s = static_cast<uint32_t>(offset / options_.slab_bytes);
  Slab& slab = slabs_[s];
  slab.free.push_back(static_cast<uint32_t>((offset % options_.slab_bytes) / classes_[cls]));
  --slab.used;
  if (slab.used == 0) {
    partial_[cls].erase(s);
    slab.cls = -1;
    slab.free.clear();
    free_slabs_.push_back(s);
  } else {
    partial_[cls].insert(s);
  }
}

absl::Status SlabTier::Write(const PageMeta& meta, std::string_view bytes) {
  if (meta.size != bytes.size()) {
    return absl::InvalidArgumentError(
        StrCat("page ", meta.key.Hex(), ": meta size ", meta.size, " != ", bytes.size(), " bytes"));
  }
  int cls = ClassOf(bytes.size());
  if (cls < 0) {
    return absl::InvalidArgumentError(
        StrCat("page of ", bytes.size(), " bytes exceeds the slab size ", options_.slab_bytes));
  }
  uint64_t offset;
  {
    MutexLock l(&mu_);
    if (slots_.contains(meta.key)) {
      return absl::AlreadyExistsError(
          StrCat("page ", meta.key.Hex(), " already in ", TierName(options_.kind)));
    }
    ASSIGN_OR_RETURN(offset, Allocate(cls));
    Slot slot{meta, offset, cls};
    slot.meta.sealed = false;
    slots_.emplace(meta.key, std::move(slot));
    used_ += classes_[cls];
  }
  // The slot is reserved but unsealed, so no reader can reach it while we copy.
  absl::Status st = region_->CopyIn(offset, bytes.data(), bytes.size());
  if (!st.ok()) {
    MutexLock l(&mu_);
    slots_.erase(meta.key);
    Free(offset, cls);
    used_ -= classes_[cls];
  }
  return st;
}

absl::Status SlabTier::Seal(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = slots_.find(key);
  if (it == slots_.end()) return absl::NotFoundError(StrCat("seal: no page ", key.Hex()));
  it->second.meta.sealed = true;
  return absl::OkStatus();
}

absl::StatusOr<size_t> SlabTier::Read(const BlockKey& key, std::span<uint8_t> dst) {
  uint64_t offset, size;
  {
    MutexLock l(&mu_);
    auto it = slots_.find(key);
    if (it == slots_.end()) return absl::NotFoundError(StrCat("no page ", key.Hex()));
    offset = it->second.offset;
    size = it->second.meta.size;
  }
  if (dst.size() < size) {
    return absl::OutOfRangeError(StrCat("buffer of ", dst.size(), " bytes < page of ", size));
  }
  RETURN_IF_ERROR(region_->CopyOut(offset, dst.data(), size));
  return size;
}

absl::StatusOr<std::span<const uint8_t>> SlabTier::Lend(const BlockKey& key) {
  uint8_t* base = region_->host_base();
  if (base == nullptr) {
    return absl::UnimplementedError("device memory is not host-addressable; use Read");
  }
  MutexLock l(&mu_);
  auto it = slots_.find(key);
  if (it == slots_.end()) return absl::NotFoundError(StrCat("no page ", key.Hex()));
  return std::span<const uint8_t>(base + it->second.offset, it->second.meta.size);
}

absl::StatusOr<PageLocation> SlabTier::Locate(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = slots_.find(key);
  if (it == slots_.end()) return absl::NotFoundError(StrCat("no page ", key.Hex()));
  return PageLocation{0, it->second.offset, it->second.meta.size};
}

absl::Status SlabTier::Erase(const BlockKey& key) {
  MutexLock l(&mu_);
  auto it = slots_.find(key);
  if (it == slots_.end()) return absl::NotFoundError(StrCat("erase: no page ", key.Hex()));
  Free(it->second.offset, it->second.cls);
  used_ -= classes_[it->second.cls];
  slots_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PageMeta>> SlabTier::List() {
  MutexLock l(&mu_);
  std::vector<PageMeta> out;
  for (const auto& [k, s] : slots_) {
    if (s.meta.sealed) out.push_back(s.meta);
  }
  return out;
}

}  // namespace kv
