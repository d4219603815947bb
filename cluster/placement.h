// Placement: which nodes are the *home* of a block key in the pooled cache (DESIGN.md
// "Cluster" / Placement).
//
// Rendezvous (highest-random-weight) hashing: every (key, node) pair gets a pseudo-random
// score, XXH3-64 of the 32 key bytes seeded with XXH3-64 of the node id, and a key's homes
// are the R nodes with the highest scores (ties, which need a 64-bit collision, go to the
// smaller node id). Consequences the cluster relies on:
//   - it is a pure function of (key, set of node ids, R): every router computes the same
//     homes without coordination, regardless of the order it learned the nodes in;
//   - keys spread evenly over nodes (each node is home to about R/N of the keys);
//   - minimal movement: when a node leaves, only the keys it was home to get a new home (the
//     next node in their ranking); every other key keeps exactly its homes. When a node
//     joins, only keys it now wins move, all of them to it.
//
// Thread-safety: a Placement is immutable after Create() and safe for concurrent use. It owns
// its copy of the node ids; views returned by Homes() stay valid as long as the Placement.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/hash.h"
#include "proto/kvstrata/v1/common.pb.h"

namespace kv::cluster {

class Placement {
 public:
  // Builds a placement over `node_ids` (live store-capable nodes, any order) with replication
  // factor `replication`. Errors (INVALID_ARGUMENT, naming the problem): replication < 1, an
  // empty node id, or the same id twice. An empty node list is valid: Homes() is then empty.
  static absl::StatusOr<Placement> Create(std::vector<std::string> node_ids, int replication);

  // The key's home nodes, best first: min(R, node count) distinct ids. Never fails.
  std::vector<std::string_view> Homes(const Digest256& key) const;

  // True when `node_id` is one of the key's homes.
  bool IsHome(const Digest256& key, std::string_view node_id) const;

  // The rendezvous score of (key, node); exposed for tests and debugging tools.
  static uint64_t Score(const Digest256& key, std::string_view node_id);

  int replication() const { return replication_; }
  // The node ids, sorted.
  const std::vector<std::string>& nodes() const { return nodes_; }

 private:
  struct Node {
    std::string id;
    uint64_t seed;
  };
  Placement(std::vector<Node> nodes, int replication);

  std::vector<std::string> nodes_;
  std::vector<Node> scored_;
  int replication_;
};

// Ids of the store-capable members (those with ROLE_STORE), sorted. These are the nodes a
// Placement is built over.
std::vector<std::string> StoreNodeIds(std::span<const kvstrata::v1::NodeInfo> members);

}  // namespace kv::cluster
