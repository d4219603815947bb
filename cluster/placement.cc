#include "cluster/placement.h"

#include <algorithm>
#include <utility>

#include "core/strings.h"

namespace kv::cluster {
namespace {

uint64_t NodeSeed(std::string_view node_id) { return Xxh3_64(node_id.data(), node_id.size()); }

uint64_t ScoreWithSeed(const Digest256& key, uint64_t seed) {
  return Xxh3_64(key.data(), key.size(), seed);
}

}  // namespace

absl::StatusOr<Placement> Placement::Create(std::vector<std::string> node_ids, int replication) {
  if (replication < 1) {
    return absl::InvalidArgumentError(
        kv::StrCat("placement: replication factor must be >= 1, got ", replication));
  }
  std::sort(node_ids.begin(), node_ids.end());
  for (size_t i = 0; i < node_ids.size(); ++i) {
    if (node_ids[i].empty()) return absl::InvalidArgumentError("placement: empty node id");
    if (i > 0 && node_ids[i] == node_ids[i - 1]) {
      return absl::InvalidArgumentError(
          kv::StrCat("placement: node id '", node_ids[i], "' listed twice"));
    }
  }
  std::vector<Node> nodes;
  nodes.reserve(node_ids.size());
  for (std::string& id : node_ids) {
    const uint64_t seed = NodeSeed(id);
    nodes.push_back(Node{std::move(id), seed});
  }
  return Placement(std::move(nodes), replication);
}

Placement::Placement(std::vector<Node> nodes, int replication)
    : scored_(std::move(nodes)), replication_(replication) {
  nodes_.reserve(scored_.size());
  for (const Node& n : scored_) nodes_.push_back(n.id);
}

uint64_t Placement::Score(const Digest256& key, std::string_view node_id) {
  return ScoreWithSeed(key, NodeSeed(node_id));
}

std::vector<std::string_view> Placement::Homes(const Digest256& key) const {
  const size_t want = std::min(static_cast<size_t>(replication_), scored_.size());
  std::vector<std::pair<uint64_t, const std::string*>> ranked;
  ranked.reserve(scored_.size());
  for (const Node& n : scored_) ranked.emplace_back(ScoreWithSeed(key, n.seed), &n.id);
  // Highest score first; equal scores by ascending id (scored_ is sorted by id).
  auto better = [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : *a.second < *b.second;
  };
  std::partial_sort(ranked.begin(), ranked.begin() + want, ranked.end(), better);
  std::vector<std::string_view> homes;
  homes.reserve(want);
  for (size_t i = 0; i < want; ++i) homes.emplace_back(*ranked[i].second);
  return homes;
}

bool Placement::IsHome(const Digest256& key, std::string_view node_id) const {
  for (std::string_view home : Homes(key)) {
    if (home == node_id) return true;
  }
  return false;
}

std::vector<std::string> StoreNodeIds(std::span<const kvstrata::v1::NodeInfo> members) {
  std::vector<std::string> ids;
  for (const kvstrata::v1::NodeInfo& m : members) {
    for (int role : m.roles()) {
      if (role == kvstrata::v1::ROLE_STORE) {
        ids.push_back(m.node_id());
        break;
      }
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace kv::cluster
