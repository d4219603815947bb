#include "kvstore/tier.h"

#include "core/strings.h"

namespace kv {

std::string_view TierName(TierKind kind) {
  switch (kind) {
    case TierKind::kDevice:
      return "device";
    case TierKind::kHost:
      return "host";
    case TierKind::kNvme:
      return "nvme";
  }
  return "unknown";
}

absl::StatusOr<TierKind> ParseTierName(std::string_view name) {
  for (int t = 0; t < kNumTiers; ++t) {
    if (TierName(static_cast<TierKind>(t)) == name) return static_cast<TierKind>(t);
  }
  return absl::InvalidArgumentError(
      StrCat("unknown tier \"", name, "\"; expected device, host or nvme"));
}

absl::StatusOr<std::vector<absl::StatusOr<size_t>>> Tier::ReadMany(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dsts) {
  if (keys.size() != dsts.size()) {
    return absl::InvalidArgumentError(
        StrCat("ReadMany: ", keys.size(), " keys but ", dsts.size(), " buffers"));
  }
  std::vector<absl::StatusOr<size_t>> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) out.push_back(Read(keys[i], dsts[i]));
  return out;
}

}  // namespace kv
