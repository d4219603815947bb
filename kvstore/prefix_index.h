// PrefixIndex: which pages the store holds, where, and which to evict next.
//
// One entry per cached block key: its parent, namespace, layout, size, geometry, the tiers
// it is resident in, its pin count, its child count (children present in the index), its eviction
// score and its resume-section facts (role, bytes stripping would free). The index is
// *prefix-closed*: an entry's parent is always present (or is the zero key). Insert()
// refuses a key whose parent is missing, and an entry can leave the index only when it has
// no children, so eviction is leaf-first. Because block keys chain, a request's key chain
// is then "present up to some length, absent after", and LongestPrefix() finds that length
// by binary search.
//
// Eviction order, per tier: unpinned resident entries sorted by (blocked, score). An entry
// is "blocked" in a tier while a child of it is resident in the same tier, or while it is
// its own last copy and still has children; blocked entries go last (leaf-first). The
// score is last access + retention: a session's retention hint makes its pages look newer
// by up to the retention TTL, a soft priority that decays as other pages are used, never a
// hard pin. Pinned entries are never offered as victims.
//
// Not thread-safe: the TieredStore guards it with its mutex. Pointers returned by Find()
// are valid until the next mutating call.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvstore/tier.h"

namespace kv {

struct IndexEntry {
  BlockKey key;
  BlockKey parent;
  std::string ns;
  std::string layout;
  uint64_t size = 0;
  uint8_t residency = 0;  // bit t set: resident in TierKind(t)
  int pins = 0;           // lease pins plus in-flight reads
  uint32_t child_count = 0;
  std::array<uint32_t, kNumTiers> child_in_tier{};
  absl::Time last_access = absl::UnixEpoch();
  absl::Duration retention = absl::ZeroDuration();
  PageRole resume_role = PageRole::kTurnEnd;
  // Bytes stripping the resume section would free (PageMeta::resume_bytes): 0 without one,
  // kResumeBytesUnknown until the store has looked (pages recovered from old nvme records).
  uint64_t resume_bytes = 0;
  // Tokens and layers of the page; unknown for pages recovered from nvme until first read.
  PageGeometry geometry;
  std::string engine_hash;  // PageMeta::engine_hash
  BlockKey page_key;        // PageMeta::page_key: the key the page names (zero: `key`)
  BlockKey page_parent;     // PageMeta::page_parent
  // The key the page itself names, as callers of the store know it.
  const BlockKey& client_key() const { return page_key.IsZero() ? key : page_key; }

  bool resident(TierKind t) const { return residency & (1u << static_cast<int>(t)); }
  int residency_count() const { return __builtin_popcount(residency); }
};

// Told of every residency change: `stored` when `e` became resident in `tier`, !stored when
// it left it (called before an entry that leaves the index is erased). `parent` is the
// parent's entry, nullptr for a first block. It runs under the owner's lock, inside the
// mutating call: it must not block and must not call back into the index.
using ResidencyListener =
    std::function<void(const IndexEntry& e, const IndexEntry* parent, TierKind tier, bool stored)>;

class PrefixIndex {
 public:
  // When false, eviction is plain LRU by score (the "no leaf-first" baseline of the agentic
  // benchmark); entries still only leave the index as leaves.
  explicit PrefixIndex(bool leaf_first = true) : leaf_first_(leaf_first) {}

  size_t size() const { return entries_.size(); }
  // Replaces the residency listener (empty: none).
  void SetResidencyListener(ResidencyListener l) { listener_ = std::move(l); }
  // nullptr when absent.
  const IndexEntry* Find(const BlockKey& key) const;
  bool Contains(const BlockKey& key) const { return entries_.contains(key); }

  // Adds a sealed page resident in `tier`. FailedPrecondition if the parent is neither zero
  // nor present (the index would stop being prefix-closed); AlreadyExists if present.
  absl::Status Insert(const PageMeta& meta, TierKind tier, absl::Time now,
                      absl::Duration retention);
  // Marks an entry resident in `tier`. NotFound if absent; AlreadyExists if already there.
  absl::Status AddResidency(const BlockKey& key, TierKind tier);
  // Clears `tier` from an entry; when no tier is left the entry leaves the index.
  // NotFound if absent or not resident there; FailedPrecondition if it is pinned, or it
  // would leave the index while it still has children.
  absl::Status RemoveResidency(const BlockKey& key, TierKind tier);
  // Pin counts. NotFound if absent; Unpin of an unpinned entry is FailedPrecondition.
  absl::Status Pin(const BlockKey& key);
  absl::Status Unpin(const BlockKey& key);
  // Records an access at `now` (refresh-on-hit for retention). No-op if absent.
  void Touch(const BlockKey& key, absl::Time now);
  // Sets the retention hint of an entry (and refreshes its score). No-op if absent.
  void SetRetention(const BlockKey& key, absl::Duration retention, absl::Time now);
  // Records a page's new size and resume bytes (after its resume section was stripped, or
  // once an unknown resume size is known). The caller rewrites every resident copy first.
  // NotFound if absent.
  absl::Status SetSize(const BlockKey& key, uint64_t size, uint64_t resume_bytes);
  // Records a page's geometry once the store has read it. No-op if absent.
  void SetGeometry(const BlockKey& key, const PageGeometry& geometry);
  // Keys whose resume_bytes is not 0 (a resume section, or not known yet): the pressure
  // stripper's candidates, kept here so it never scans the whole index.
  const absl::flat_hash_set<BlockKey>& ResumeKeys() const { return resume_keys_; }

  // The next victim in `tier`: namespace `ns` only when non-null. `can_demote` says the
  // caller will move the victim to a lower tier rather than drop it, so entries that are
  // their own last copy qualify even with children. nullopt when nothing is evictable.
  std::optional<BlockKey> PickVictim(TierKind tier, const std::string* ns, bool can_demote) const;

  // Length of the longest prefix of `chain` present in the index (binary search; relies on
  // prefix-closure and on `chain` being a real key chain).
  size_t LongestPrefix(std::span<const BlockKey> chain) const;

  // Every key resident in `tier` (unordered).
  std::vector<BlockKey> KeysIn(TierKind tier) const;
  // Every cached descendant of `key` (children, grandchildren, ...). O(index size).
  std::vector<BlockKey> Descendants(const BlockKey& key) const;

  // Verifies every invariant: prefix closure, child counts, per-tier child counts, victim
  // sets matching residency and pins. Internal naming the first violation otherwise.
  absl::Status CheckInvariants() const;

 private:
  struct VictimKey {
    bool blocked;
    int64_t score;
    uint64_t seq;
    BlockKey key;
    friend auto operator<=>(const VictimKey&, const VictimKey&) = default;
  };
  struct Slot {
    IndexEntry e;
    std::array<std::optional<VictimKey>, kNumTiers> vkey;
    uint64_t seq = 0;
  };
  using VictimSet = std::set<VictimKey>;

  bool Blocked(const IndexEntry& e, int t) const;
  void Unlist(Slot& s);
  void Relist(Slot& s);
  void ChildResidencyChanged(const BlockKey& parent, int t, int delta);

  void Notify(const IndexEntry& e, TierKind tier, bool stored) const;

  const bool leaf_first_;
  ResidencyListener listener_;
  uint64_t next_seq_ = 0;
  absl::flat_hash_map<BlockKey, Slot> entries_;
  // victims_[tier][namespace]
  std::array<std::map<std::string, VictimSet>, kNumTiers> victims_;
  absl::flat_hash_set<BlockKey> resume_keys_;
};

}  // namespace kv
