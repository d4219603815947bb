#include "kvstore/lease_beacons.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <random>

#include "core/strings.h"

namespace kv {
namespace {

// splitmix64: the nonce sequence from a random seed (unpredictable seed, distinct values).
uint64_t NextNonce(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LeaseBeacons>> LeaseBeacons::Create(size_t slots) {
  if (slots < 1 || slots > kMaxSlots) {
    return absl::InvalidArgumentError(
        StrCat("lease beacons: ", slots, " slots; allowed 1..", kMaxSlots));
  }
  const size_t bytes = (slots * sizeof(uint64_t) + 4095) / 4096 * 4096;
  auto* words = static_cast<uint64_t*>(std::aligned_alloc(4096, bytes));
  if (words == nullptr) {
    return absl::ResourceExhaustedError(StrCat("lease beacons: cannot allocate ", bytes, " B"));
  }
  std::memset(words, 0, bytes);
  return std::unique_ptr<LeaseBeacons>(new LeaseBeacons(words, slots));
}

LeaseBeacons::LeaseBeacons(uint64_t* words, size_t slots) : words_(words), slots_(slots) {
  free_.reserve(slots);
  for (size_t i = slots; i > 0; --i) free_.push_back(static_cast<uint32_t>(i - 1));
  std::random_device rd;
  seed_ = (uint64_t{rd()} << 32) ^ rd();
}

LeaseBeacons::~LeaseBeacons() { std::free(words_); }

std::optional<Beacon> LeaseBeacons::Raise() {
  kv::MutexLock l(&mu_);
  if (free_.empty()) return std::nullopt;
  Beacon b{.slot = free_.back()};
  do b.nonce = NextNonce(seed_);
  while (b.nonce == 0);
  free_.pop_back();
  std::atomic_ref<uint64_t>(words_[b.slot]).store(b.nonce, std::memory_order_release);
  return b;
}

void LeaseBeacons::Lower(const Beacon& b) {
  if (b.slot >= slots_ || b.nonce == 0) return;
  kv::MutexLock l(&mu_);
  std::atomic_ref<uint64_t> word(words_[b.slot]);
  if (word.load(std::memory_order_relaxed) != b.nonce) return;  // not this beacon's slot now
  // seq_cst: the zero is visible before anything the caller does next (dropping the pins).
  word.store(0, std::memory_order_seq_cst);
  free_.push_back(b.slot);
}

std::span<const uint8_t> LeaseBeacons::memory() const {
  return {reinterpret_cast<const uint8_t*>(words_), slots_ * sizeof(uint64_t)};
}

std::span<uint8_t> LeaseBeacons::memory() {
  return {reinterpret_cast<uint8_t*>(words_), slots_ * sizeof(uint64_t)};
}

uint64_t LeaseBeacons::Read(uint32_t slot) const {
  if (slot >= slots_) return 0;
  return std::atomic_ref<uint64_t>(words_[slot]).load(std::memory_order_acquire);
}

size_t LeaseBeacons::raised() {
  kv::MutexLock l(&mu_);
  return slots_ - free_.size();
}

}  // namespace kv
