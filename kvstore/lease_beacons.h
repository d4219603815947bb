// LeaseBeacons: one-sided proof that a read lease was still live (issue #15, DESIGN.md
// "Cluster": page bytes move over the transport).
//
// A reader that gets a lent page with RMA must know, after its get completed, that the lease
// pinning the page was still live: only then can the store not have freed or reused the
// page's memory under the get. Asking over gRPC (UnpinBlocks and its released count) costs a
// round trip on every read. A beacon answers the same question with one 8-byte RMA get: the
// store keeps one u64 word per lent lease in memory it registers with its transport, holding
// a random non-zero nonce while the lease lives. The store writes 0 to the word BEFORE it
// drops the lease's pins (release, unpin, expiry, partial unpin), so a reader that reads its
// nonce back after its page get completed knows the pins were held until then. Because the
// store's tier may also drop an expired pin lazily on its own clock, a reader trusts a beacon
// only when its read also finished before the lease's deadline (cluster/page_store_rma.h).
// Nonces are random 64-bit values, so a slot reused by a later lease does not vouch for an
// earlier one (collision 2^-64).
//
// Memory: one 4 KiB-aligned array of `slots` words owned by this object, which the store node
// registers with its transport once (memory() is stable for the object's life).
//
// Thread-safety: Raise() and Lower() are safe for concurrent use (a mutex guards the free
// list; words are written with release stores). Results are values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mutex.h"

namespace kv {

struct Beacon {
  uint32_t slot = 0;
  uint64_t nonce = 0;  // never 0 for a raised beacon
  friend bool operator==(const Beacon&, const Beacon&) = default;
};

class LeaseBeacons {
 public:
  static constexpr size_t kMaxSlots = 1u << 20;
  // InvalidArgument unless 1 <= slots <= kMaxSlots; ResourceExhausted if memory is short.
  static absl::StatusOr<std::unique_ptr<LeaseBeacons>> Create(size_t slots);
  ~LeaseBeacons();
  LeaseBeacons(const LeaseBeacons&) = delete;
  LeaseBeacons& operator=(const LeaseBeacons&) = delete;

  // A free slot holding a fresh non-zero nonce; nullopt when every slot is taken (the caller
  // then has no beacon and confirms its lease another way).
  std::optional<Beacon> Raise();
  // Writes 0 to the beacon's slot and frees it. A beacon that is not raised (already lowered,
  // or a stale copy whose slot now holds another nonce) is ignored.
  void Lower(const Beacon& b);

  // The words, for registration with a transport: slot i is at byte offset OffsetOf(i).
  std::span<const uint8_t> memory() const;
  std::span<uint8_t> memory();  // for Transport::Register, which takes writable memory
  static uint64_t OffsetOf(uint32_t slot) { return uint64_t{slot} * sizeof(uint64_t); }
  // The word of `slot` as a reader would see it (tests).
  uint64_t Read(uint32_t slot) const;
  size_t raised();

 private:
  LeaseBeacons(uint64_t* words, size_t slots);

  uint64_t* const words_;  // aligned_alloc'd, freed in the destructor
  const size_t slots_;
  kv::Mutex mu_;
  std::vector<uint32_t> free_ ABSL_GUARDED_BY(mu_);
  uint64_t seed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv
