#include "cluster/membership_config.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kv::cluster {
namespace {

TEST(MembershipConfigTest, FlagsSelectStaticList) {
  MembershipConfig config;
  FlagSet flags("test");
  config.Bind(&flags);
  std::vector<std::string> args = {"test", "--members=a=h:1@store,b=h:2@router", "--member-ttl=4s"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  ASSERT_TRUE(flags.Parse(static_cast<int>(argv.size()), argv.data()).ok());
  EXPECT_EQ(config.member_ttl, absl::Seconds(4));
  auto m = OpenMembership(config);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->source(), "static");
  ASSERT_EQ((*m)->Members().members.size(), 2u);
  EXPECT_EQ((*m)->Members().members[1].node_id(), "b");
}

TEST(MembershipConfigTest, EmptyConfigIsAnEmptyStaticList) {
  auto m = OpenMembership(MembershipConfig());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->Members().members.empty());
}

TEST(MembershipConfigTest, ConflictsAndBadInputAreErrors) {
  MembershipConfig both;
  both.etcd = "127.0.0.1:2379";
  both.members = "a=h:1@store";
  EXPECT_EQ(OpenMembership(both).status().code(), absl::StatusCode::kInvalidArgument);

  MembershipConfig bad_spec;
  bad_spec.members = "a=h:1@wizard";
  EXPECT_EQ(OpenMembership(bad_spec).status().code(), absl::StatusCode::kInvalidArgument);

  MembershipConfig bad_ttl;
  bad_ttl.etcd = "127.0.0.1:1";
  bad_ttl.member_ttl = absl::ZeroDuration();
  EXPECT_EQ(OpenMembership(bad_ttl).status().code(), absl::StatusCode::kInvalidArgument);

  MembershipConfig unreachable;
  unreachable.etcd = "127.0.0.1:1";  // nothing listens on port 1
  EXPECT_EQ(OpenMembership(unreachable).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kv::cluster
