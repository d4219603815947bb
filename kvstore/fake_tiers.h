// In-memory and fault-injecting tiers for tests (STYLE.md "Hardware behind interfaces").
//
// MemTier is a complete Tier over a hash map of strings with a byte capacity; it has no
// size classes (Footprint == size) and lends views into its own strings. It is the fake the
// kvstore unit tests and the model-checking test run on. FaultInjectingTier wraps any tier
// and, on command, fails writes or reads, flips bytes of what it returns, or drops unsealed
// pages (losing what was not sealed, as a crash would).
//
// Both are safe for concurrent use. Neither owns anything it returns beyond what Tier says.
#pragma once

#include <atomic>
#include <cstdint>
#include <random>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "core/mutex.h"
#include "kvstore/tier.h"

namespace kv {

class MemTier : public Tier {
 public:
  MemTier(TierKind kind, uint64_t capacity_bytes) : kind_(kind), capacity_(capacity_bytes) {}

  TierKind kind() const override { return kind_; }
  uint64_t capacity_bytes() const override { return capacity_; }
  uint64_t used_bytes() const override;
  uint64_t Footprint(uint64_t size) const override { return size <= capacity_ ? size : 0; }
  bool HasRoom(uint64_t size) const override;
  absl::Status Write(const PageMeta& meta, std::string_view bytes) override;
  absl::Status Seal(const BlockKey& key) override;
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override;
  absl::StatusOr<std::span<const uint8_t>> Lend(const BlockKey& key) override;
  absl::StatusOr<PageLocation> Locate(const BlockKey& key) override;
  absl::Status Erase(const BlockKey& key) override;
  absl::StatusOr<std::vector<PageMeta>> List() override;

  // Test hook: flips one byte of the stored page at `offset` (mod size). NotFound if absent.
  absl::Status CorruptForTest(const BlockKey& key, uint64_t offset);

 private:
  struct Page {
    PageMeta meta;
    std::string bytes;
  };
  const TierKind kind_;
  const uint64_t capacity_;
  mutable Mutex mu_;
  absl::flat_hash_map<BlockKey, Page> pages_ ABSL_GUARDED_BY(mu_);
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

// Breaks chosen operations of the wrapped tier. Every knob is an atomic, so a test may
// change them while other threads use the tier.
class FaultInjectingTier : public TierWrapper {
 public:
  explicit FaultInjectingTier(Tier* base) : TierWrapper(base) {}

  // Every Write() fails with Unavailable (retryable) while set.
  void FailWrites(bool on) { fail_writes_ = on; }
  // Every Read()/ReadMany() entry fails with Unavailable while set.
  void FailReads(bool on) { fail_reads_ = on; }
  // Every successful Read() flips one byte of the copy it returns while set.
  void CorruptReads(bool on) { corrupt_reads_ = on; }
  // Seal() fails with Unavailable while set (the page stays unsealed).
  void FailSeals(bool on) { fail_seals_ = on; }
  uint64_t injected_faults() const { return injected_.load(); }

  absl::Status Write(const PageMeta& meta, std::string_view bytes) override;
  absl::Status Seal(const BlockKey& key) override;
  absl::StatusOr<size_t> Read(const BlockKey& key, std::span<uint8_t> dst) override;
  absl::StatusOr<std::vector<absl::StatusOr<size_t>>> ReadMany(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) override;

 private:
  std::atomic<bool> fail_writes_{false};
  std::atomic<bool> fail_reads_{false};
  std::atomic<bool> corrupt_reads_{false};
  std::atomic<bool> fail_seals_{false};
  std::atomic<uint64_t> injected_{0};
};

}  // namespace kv
