#include "kvstore/prefix_index.h"

#include "core/strings.h"

namespace kv {
namespace {
constexpr int kMaxScan = 256;  // victims examined per namespace before giving up
}  // namespace

const IndexEntry* PrefixIndex::Find(const BlockKey& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second.e;
}

bool PrefixIndex::Blocked(const IndexEntry& e, int t) const {
  bool last_copy_with_children = e.residency_count() == 1 && e.child_count > 0;
  if (!leaf_first_) return last_copy_with_children;
  return e.child_in_tier[t] > 0 || last_copy_with_children;
}

void PrefixIndex::Unlist(Slot& s) {
  for (int t = 0; t < kNumTiers; ++t) {
    if (!s.vkey[t]) continue;
    auto& sets = victims_[t];
    auto it = sets.find(s.e.ns);
    if (it != sets.end()) {
      it->second.erase(*s.vkey[t]);
      if (it->second.empty()) sets.erase(it);
    }
    s.vkey[t].reset();
  }
}

void PrefixIndex::Relist(Slot& s) {
  Unlist(s);
  if (s.e.pins > 0) return;
  int64_t score = absl::ToUnixNanos(s.e.last_access + s.e.retention);
  for (int t = 0; t < kNumTiers; ++t) {
    if (!s.e.resident(static_cast<TierKind>(t))) continue;
    VictimKey vk{Blocked(s.e, t), score, s.seq, s.e.key};
    victims_[t][s.e.ns].insert(vk);
    s.vkey[t] = vk;
  }
}

void PrefixIndex::ChildResidencyChanged(const BlockKey& parent, int t, int delta) {
  auto it = entries_.find(parent);
  if (it == entries_.end()) return;
  it->second.e.child_in_tier[t] += delta;
  Relist(it->second);
}

absl::Status PrefixIndex::Insert(const PageMeta& meta, TierKind tier, absl::Time now,
                                 absl::Duration retention) {
  if (entries_.contains(meta.key)) {
    return absl::AlreadyExistsError(StrCat("index already has ", meta.key.Hex()));
  }
  Slot* parent = nullptr;
  if (!meta.parent.IsZero()) {
    auto it = entries_.find(meta.parent);
    if (it == entries_.end()) {
      return absl::FailedPreconditionError(
          StrCat("parent ", meta.parent.Hex(), " of ", meta.key.Hex(), " is not cached"));
    }
    parent = &it->second;
  }
  Slot s;
  s.e.key = meta.key;
  s.e.parent = meta.parent;
  s.e.ns = meta.ns;
  s.e.layout = meta.layout;
  s.e.size = meta.size;
  s.e.last_access = now;
  s.e.retention = retention;
  s.e.resume_role = meta.resume_role;
  s.e.resume_bytes = meta.resume_bytes;
  s.e.geometry = meta.geometry;
  s.e.engine_hash = meta.engine_hash;
  s.e.page_key = meta.page_key;
  s.e.page_parent = meta.page_parent;
  s.seq = next_seq_++;
  if (s.e.resume_bytes != 0) resume_keys_.insert(meta.key);
  if (parent != nullptr) {
    ++parent->e.child_count;
    Relist(*parent);
  }
  auto [it, ok] = entries_.emplace(meta.key, std::move(s));
  (void)ok;
  return AddResidency(meta.key, tier);
}

absl::Status PrefixIndex::AddResidency(const BlockKey& key, TierKind tier) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(StrCat("not indexed: ", key.Hex()));
  IndexEntry& e = it->second.e;
  if (e.resident(tier)) {
    return absl::AlreadyExistsError(StrCat(key.Hex(), " already resident in ", TierName(tier)));
  }
  e.residency |= 1u << static_cast<int>(tier);
  Relist(it->second);
  if (!e.parent.IsZero()) ChildResidencyChanged(e.parent, static_cast<int>(tier), +1);
  Notify(e, tier, true);
  return absl::OkStatus();
}

void PrefixIndex::Notify(const IndexEntry& e, TierKind tier, bool stored) const {
  if (!listener_) return;
  const IndexEntry* parent = nullptr;
  if (!e.parent.IsZero()) {
    auto p = entries_.find(e.parent);
    if (p != entries_.end()) parent = &p->second.e;
  }
  listener_(e, parent, tier, stored);
}

absl::Status PrefixIndex::RemoveResidency(const BlockKey& key, TierKind tier) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(StrCat("not indexed: ", key.Hex()));
  Slot& s = it->second;
  if (!s.e.resident(tier)) {
    return absl::NotFoundError(StrCat(key.Hex(), " not resident in ", TierName(tier)));
  }
  if (s.e.pins > 0) {
    return absl::FailedPreconditionError(StrCat(key.Hex(), " is pinned"));
  }
  bool last = s.e.residency_count() == 1;
  if (last && s.e.child_count > 0) {
    return absl::FailedPreconditionError(StrCat(key.Hex(), " still has ", s.e.child_count,
                                                " cached children; eviction is leaf-first"));
  }
  Notify(s.e, tier, false);
  s.e.residency &= ~(1u << static_cast<int>(tier));
  BlockKey parent = s.e.parent;
  if (last) {
    Unlist(s);
    resume_keys_.erase(key);
    entries_.erase(it);
  } else {
    Relist(s);
  }
  if (!parent.IsZero()) {
    ChildResidencyChanged(parent, static_cast<int>(tier), -1);
    if (last) {
      auto p = entries_.find(parent);
      if (p != entries_.end()) {
        --p->second.e.child_count;
        Relist(p->second);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status PrefixIndex::Pin(const BlockKey& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(StrCat("not indexed: ", key.Hex()));
  if (++it->second.e.pins == 1) Unlist(it->second);
  return absl::OkStatus();
}

absl::Status PrefixIndex::Unpin(const BlockKey& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(StrCat("not indexed: ", key.Hex()));
  if (it->second.e.pins <= 0) {
    return absl::FailedPreconditionError(StrCat(key.Hex(), " is not pinned"));
  }
  if (--it->second.e.pins == 0) Relist(it->second);
  return absl::OkStatus();
}

void PrefixIndex::Touch(const BlockKey& key, absl::Time now) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  it->second.e.last_access = now;
  it->second.seq = next_seq_++;
  Relist(it->second);
}

void PrefixIndex::SetRetention(const BlockKey& key, absl::Duration retention, absl::Time now) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  it->second.e.retention = retention;
  Touch(key, now);
}

absl::Status PrefixIndex::SetSize(const BlockKey& key, uint64_t size, uint64_t resume_bytes) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(StrCat("not indexed: ", key.Hex()));
  it->second.e.size = size;
  it->second.e.resume_bytes = resume_bytes;
  if (resume_bytes != 0) {
    resume_keys_.insert(key);
  } else {
    resume_keys_.erase(key);
  }
  return absl::OkStatus();
}

void PrefixIndex::SetGeometry(const BlockKey& key, const PageGeometry& geometry) {
  auto it = entries_.find(key);
  if (it != entries_.end()) it->second.e.geometry = geometry;
}

std::optional<BlockKey> PrefixIndex::PickVictim(TierKind tier, const std::string* ns,
                                                bool can_demote) const {
  const auto& sets = victims_[static_cast<int>(tier)];
  std::optional<VictimKey> best;
  auto scan = [&](const VictimSet& set) {
    int n = 0;
    for (const VictimKey& vk : set) {
      if (++n > kMaxScan) break;
      if (best && !(vk < *best)) break;
      const IndexEntry& e = entries_.find(vk.key)->second.e;
      bool removable = can_demote || e.residency_count() > 1 || e.child_count == 0;
      if (removable) {
        best = vk;
        break;
      }
    }
  };
  if (ns != nullptr) {
    auto it = sets.find(*ns);
    if (it != sets.end()) scan(it->second);
  } else {
    for (const auto& [name, set] : sets) scan(set);
  }
  if (!best) return std::nullopt;
  return best->key;
}

size_t PrefixIndex::LongestPrefix(std::span<const BlockKey> chain) const {
  size_t lo = 0, hi = chain.size();  // invariant: chain[0, lo) present; chain[hi..] absent
  while (lo < hi) {
    size_t mid = lo + (hi - lo + 1) / 2;  // candidate length
    if (entries_.contains(chain[mid - 1])) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

std::vector<BlockKey> PrefixIndex::KeysIn(TierKind tier) const {
  std::vector<BlockKey> out;
  for (const auto& [k, s] : entries_) {
    if (s.e.resident(tier)) out.push_back(k);
  }
  return out;
}

std::vector<BlockKey> PrefixIndex::Descendants(const BlockKey& key) const {
  absl::flat_hash_map<BlockKey, std::vector<BlockKey>> children;
  for (const auto& [k, s] : entries_) {
    if (!s.e.parent.IsZero()) children[s.e.parent].push_back(k);
  }
  std::vector<BlockKey> out;
  std::vector<BlockKey> stack = {key};
  while (!stack.empty()) {
    BlockKey k = stack.back();
    stack.pop_back();
    auto it = children.find(k);
    if (it == children.end()) continue;
    for (const BlockKey& c : it->second) {
      out.push_back(c);
      stack.push_back(c);
    }
  }
  return out;
}

absl::Status PrefixIndex::CheckInvariants() const {
  absl::flat_hash_map<BlockKey, uint32_t> children;
  absl::flat_hash_map<BlockKey, std::array<uint32_t, kNumTiers>> tier_children;
  size_t listed = 0;
  for (const auto& [k, s] : entries_) {
    const IndexEntry& e = s.e;
    if (e.residency == 0) return absl::InternalError(StrCat(k.Hex(), " resident nowhere"));
    if (e.pins < 0) return absl::InternalError(StrCat(k.Hex(), " has negative pins"));
    if (!e.parent.IsZero()) {
      if (!entries_.contains(e.parent)) {
        return absl::InternalError(
            StrCat("not prefix-closed: ", k.Hex(), " present, parent absent"));
      }
      ++children[e.parent];
      for (int t = 0; t < kNumTiers; ++t) {
        if (e.resident(static_cast<TierKind>(t))) ++tier_children[e.parent][t];
      }
    }
    for (int t = 0; t < kNumTiers; ++t) {
      bool want = e.pins == 0 && e.resident(static_cast<TierKind>(t));
      if (want != s.vkey[t].has_value()) {
        return absl::InternalError(StrCat(k.Hex(), " victim listing wrong in tier ", t));
      }
      if (want) {
        ++listed;
        auto it = victims_[t].find(e.ns);
        if (it == victims_[t].end() || !it->second.contains(*s.vkey[t])) {
          return absl::InternalError(StrCat(k.Hex(), " missing from victim set ", t));
        }
        if (s.vkey[t]->blocked != Blocked(e, t)) {
          return absl::InternalError(StrCat(k.Hex(), " stale blocked flag, tier ", t));
        }
      }
    }
  }
  size_t with_resume = 0;
  for (const auto& [k, s] : entries_) {
    if ((s.e.resume_bytes != 0) != resume_keys_.contains(k)) {
      return absl::InternalError(StrCat(k.Hex(), " resume-key listing wrong"));
    }
    with_resume += s.e.resume_bytes != 0;
  }
  if (with_resume != resume_keys_.size()) {
    return absl::InternalError(
        StrCat("resume keys hold ", resume_keys_.size(), " keys, expected ", with_resume));
  }
  size_t in_sets = 0;
  for (const auto& sets : victims_) {
    for (const auto& [ns, set] : sets) in_sets += set.size();
  }
  if (in_sets != listed) {
    return absl::InternalError(StrCat("victim sets hold ", in_sets, " keys, expected ", listed));
  }
  for (const auto& [k, s] : entries_) {
    auto c = children.find(k);
    uint32_t want = c == children.end() ? 0 : c->second;
    if (s.e.child_count != want) {
      return absl::InternalError(StrCat(k.Hex(), " child_count ", s.e.child_count, " != ", want));
    }
    auto tc = tier_children.find(k);
    for (int t = 0; t < kNumTiers; ++t) {
      uint32_t w = tc == tier_children.end() ? 0 : tc->second[t];
      if (s.e.child_in_tier[t] != w) {
        return absl::InternalError(StrCat(k.Hex(), " child_in_tier[", t, "] wrong"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kv
