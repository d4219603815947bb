#include "cluster/membership.h"

#include <atomic>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kv::cluster {
namespace {

using kvstrata::v1::NodeInfo;

std::vector<std::string> Ids(const MembershipView& view) {
  std::vector<std::string> ids;
  for (const NodeInfo& n : view.members) ids.push_back(n.node_id());
  return ids;
}

TEST(StaticMembershipTest, ParsesSpec) {
  auto nodes = StaticMembership::ParseSpec(
      " r1=10.0.0.1:7000@router , s1=[::1]:7001@store+prefill,a=host:1@all");
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->size(), 3u);
  EXPECT_EQ((*nodes)[0].node_id(), "r1");
  EXPECT_EQ((*nodes)[0].grpc_address(), "10.0.0.1:7000");
  ASSERT_EQ((*nodes)[0].roles_size(), 1);
  EXPECT_EQ((*nodes)[0].roles(0), kvstrata::v1::ROLE_ROUTER);
  EXPECT_EQ((*nodes)[1].grpc_address(), "[::1]:7001");
  EXPECT_EQ((*nodes)[1].roles_size(), 2);
  EXPECT_EQ((*nodes)[2].roles_size(), 4);
  auto empty = StaticMembership::ParseSpec("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(StaticMembershipTest, BadSpecsNameTheEntry) {
  for (const char* spec : {"r1", "r1=host:1", "=host:1@router", "r1=@router", "r1=host@router",
                           "r1=host:1@", "r1=host:1@chef", "r1=h:1@router,r1=h:2@store"}) {
    auto nodes = StaticMembership::ParseSpec(spec);
    ASSERT_FALSE(nodes.ok()) << spec;
    EXPECT_EQ(nodes.status().code(), absl::StatusCode::kInvalidArgument) << spec;
  }
  auto bad = StaticMembership::ParseSpec("ok=h:1@store, oops=h:2@chef");
  EXPECT_NE(bad.status().message().find("oops=h:2@chef"), absl::string_view::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("chef"), absl::string_view::npos);
}

TEST(StaticMembershipTest, RegisterAddsSelfAndNotifiesWatchers) {
  FakeClock clock;
  auto nodes = StaticMembership::ParseSpec("b=h:2@store,a=h:1@router");
  ASSERT_TRUE(nodes.ok());
  auto m = StaticMembership::Create(*nodes, &clock);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(Ids((*m)->Members()), (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE((*m)->Members().stale);
  EXPECT_EQ((*m)->Members().updated_at, clock.Now());
  EXPECT_EQ((*m)->source(), "static");

  std::vector<std::vector<std::string>> seen;
  const uint64_t id = (*m)->Watch([&](const MembershipView& v) { seen.push_back(Ids(v)); });
  NodeInfo self;
  self.set_node_id("c");
  ASSERT_TRUE((*m)->Register(self).ok());
  ASSERT_TRUE((*m)->Register(self).ok());  // unchanged: no second notification
  self.set_grpc_address("h:3");
  ASSERT_TRUE((*m)->Register(self).ok());  // changed record: notified
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ((*m)->Members().members[2].grpc_address(), "h:3");

  (*m)->Unwatch(id);
  self.set_grpc_address("h:4");
  ASSERT_TRUE((*m)->Register(self).ok());
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ((*m)->Register(NodeInfo()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StaticMembershipTest, DuplicateIdsRejected) {
  std::vector<NodeInfo> nodes(2);
  nodes[0].set_node_id("x");
  nodes[1].set_node_id("x");
  EXPECT_EQ(StaticMembership::Create(nodes).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kv::cluster
