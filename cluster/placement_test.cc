#include "cluster/placement.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kv::cluster {
namespace {

constexpr int kKeys = 20000;

std::vector<Digest256> Keys(int n) {
  std::vector<Digest256> keys;
  keys.reserve(n);
  for (int i = 0; i < n; ++i) keys.push_back(Sha256Of(absl::StrCat("block-", i)));
  return keys;
}

std::vector<std::string> NodeIds(int n) {
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) ids.push_back(absl::StrCat("store-", i));
  return ids;
}

std::vector<std::string> Homes(const Placement& p, const Digest256& key) {
  std::vector<std::string> out;
  for (std::string_view h : p.Homes(key)) out.emplace_back(h);
  return out;
}

TEST(PlacementTest, HomesAreDistinctDeterministicAndOrderIndependent) {
  std::vector<std::string> ids = NodeIds(6);
  auto a = Placement::Create(ids, 3);
  std::reverse(ids.begin(), ids.end());
  auto b = Placement::Create(ids, 3);
  ASSERT_TRUE(a.ok() && b.ok());
  for (const Digest256& key : Keys(500)) {
    std::vector<std::string> homes = Homes(*a, key);
    ASSERT_EQ(homes.size(), 3u);
    EXPECT_EQ(std::set<std::string>(homes.begin(), homes.end()).size(), 3u);
    EXPECT_EQ(homes, Homes(*b, key));
    // Best first: scores are non-increasing.
    EXPECT_GE(Placement::Score(key, homes[0]), Placement::Score(key, homes[1]));
    EXPECT_GE(Placement::Score(key, homes[1]), Placement::Score(key, homes[2]));
    EXPECT_TRUE(a->IsHome(key, homes[2]));
  }
}

TEST(PlacementTest, KeysSpreadEvenly) {
  const int nodes = 8;
  for (int r : {1, 2}) {
    auto p = Placement::Create(NodeIds(nodes), r);
    ASSERT_TRUE(p.ok());
    std::map<std::string, int> load;
    for (const Digest256& key : Keys(kKeys)) {
      for (std::string_view h : p->Homes(key)) ++load[std::string(h)];
    }
    ASSERT_EQ(load.size(), static_cast<size_t>(nodes));
    const double mean = static_cast<double>(kKeys) * r / nodes;
    for (const auto& [node, count] : load) {
      // Binomial std-dev is ~sqrt(mean) ≈ 47..67 here; 10% of the mean is > 5 sigma.
      EXPECT_NEAR(count, mean, 0.10 * mean) << node << " r=" << r;
    }
  }
}

TEST(PlacementTest, NodeLeavingMovesOnlyItsKeys) {
  for (int r : {1, 2}) {
    std::vector<std::string> ids = NodeIds(8);
    auto before = Placement::Create(ids, r);
    ids.erase(ids.begin() + 3);  // store-3 leaves
    auto after = Placement::Create(ids, r);
    ASSERT_TRUE(before.ok() && after.ok());
    int moved = 0;
    for (const Digest256& key : Keys(kKeys)) {
      std::vector<std::string> old_homes = Homes(*before, key);
      std::vector<std::string> new_homes = Homes(*after, key);
      ASSERT_EQ(new_homes.size(), static_cast<size_t>(r));
      EXPECT_EQ(std::count(new_homes.begin(), new_homes.end(), "store-3"), 0);
      // Every surviving old home is still a home, in the same relative order.
      std::vector<std::string> survivors;
      for (const std::string& h : old_homes) {
        if (h != "store-3") survivors.push_back(h);
      }
      ASSERT_GE(new_homes.size(), survivors.size());
      EXPECT_TRUE(std::equal(survivors.begin(), survivors.end(), new_homes.begin()));
      if (survivors.size() == old_homes.size()) {
        EXPECT_EQ(new_homes, old_homes);
      } else {
        ++moved;
      }
    }
    // About r/8 of the keys had store-3 as a home.
    const double expected = static_cast<double>(kKeys) * r / 8;
    EXPECT_NEAR(moved, expected, 0.15 * expected) << "r=" << r;
  }
}

TEST(PlacementTest, NodeJoiningTakesKeysOnlyForItself) {
  std::vector<std::string> ids = NodeIds(8);
  auto before = Placement::Create(ids, 1);
  ids.push_back("store-new");
  auto after = Placement::Create(ids, 1);
  ASSERT_TRUE(before.ok() && after.ok());
  int moved = 0;
  for (const Digest256& key : Keys(kKeys)) {
    const std::string old_home(before->Homes(key)[0]);
    const std::string new_home(after->Homes(key)[0]);
    if (old_home != new_home) {
      EXPECT_EQ(new_home, "store-new");
      ++moved;
    }
  }
  EXPECT_NEAR(moved, kKeys / 9.0, 0.15 * kKeys / 9.0);
}

TEST(PlacementTest, FewerNodesThanReplicasUsesAll) {
  auto p = Placement::Create({"a", "b"}, 3);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->Homes(Sha256Of("k")).size(), 2u);
  auto empty = Placement::Create({}, 1);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->Homes(Sha256Of("k")).empty());
}

TEST(PlacementTest, BadInputIsInvalidArgument) {
  EXPECT_EQ(Placement::Create({"a"}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Placement::Create({"a", ""}, 1).status().code(), absl::StatusCode::kInvalidArgument);
  auto dup = Placement::Create({"a", "b", "a"}, 1);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dup.status().message().find("'a'"), absl::string_view::npos);
}

TEST(PlacementTest, StoreNodeIdsPicksStoreRole) {
  std::vector<kvstrata::v1::NodeInfo> members(3);
  members[0].set_node_id("z-store");
  members[0].add_roles(kvstrata::v1::ROLE_PREFILL);
  members[0].add_roles(kvstrata::v1::ROLE_STORE);
  members[1].set_node_id("router");
  members[1].add_roles(kvstrata::v1::ROLE_ROUTER);
  members[2].set_node_id("a-store");
  members[2].add_roles(kvstrata::v1::ROLE_STORE);
  EXPECT_EQ(StoreNodeIds(members), (std::vector<std::string>{"a-store", "z-store"}));
}

}  // namespace
}  // namespace kv::cluster
