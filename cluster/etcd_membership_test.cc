#include "cluster/etcd_membership.h"

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "cluster/testing/etcd_process.h"
#include "core/status_macros.h"
#include "gtest/gtest.h"

namespace kv::cluster {
namespace {

using kvstrata::v1::NodeInfo;
using testing::EtcdProcess;

// etcd's minimum lease TTL with default election settings is 2 s; this is the test's TTL.
constexpr absl::Duration kTtl = absl::Seconds(2);
// etcd checks lease expiry every 0.5 s; allow that plus scheduling slack on a busy machine.
constexpr absl::Duration kExpirySlack = absl::Seconds(2);

std::vector<std::string> Ids(const MembershipView& view) {
  std::vector<std::string> ids;
  for (const NodeInfo& n : view.members) ids.push_back(n.node_id());
  return ids;
}

// Polls `pred` every 20 ms until it holds or `timeout` passes; returns whether it held.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return pred();
}

NodeInfo Node(const std::string& id, kvstrata::v1::Role role) {
  NodeInfo n;
  n.set_node_id(id);
  n.set_grpc_address(id + ":7000");
  n.add_roles(role);
  return n;
}

class EtcdMembershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // scripts/setup installs etcd: a missing one is a broken setup, not a reason to pass.
    absl::StatusOr<std::string> binary = EtcdProcess::FindBinary();
    ASSERT_TRUE(binary.ok()) << "etcd is required (scripts/setup installs etcd-server): "
                             << binary.status();
    auto etcd = EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(*etcd);
  }

  EtcdMembershipOptions Options() const {
    EtcdMembershipOptions o;
    o.endpoint = etcd_->endpoint();
    o.prefix = "/kvstrata-test/members/";
    o.ttl = kTtl;
    o.rpc_timeout = absl::Seconds(2);
    o.retry_interval = absl::Milliseconds(100);
    return o;
  }

  std::unique_ptr<EtcdMembership> StartMember(EtcdMembershipOptions o) {
    auto m = EtcdMembership::Start(std::move(o));
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? std::move(*m) : nullptr;
  }

  std::unique_ptr<EtcdProcess> etcd_;
};

TEST_F(EtcdMembershipTest, TwoMembersSeeEachOther) {
  auto a = StartMember(Options());
  auto b = StartMember(Options());
  ASSERT_TRUE(a && b);
  std::atomic<int> a_notifications{0};
  a->Watch([&](const MembershipView&) { ++a_notifications; });
  ASSERT_TRUE(a->Register(Node("node-a", kvstrata::v1::ROLE_ROUTER)).ok());
  ASSERT_TRUE(b->Register(Node("node-b", kvstrata::v1::ROLE_STORE)).ok());
  const std::vector<std::string> both = {"node-a", "node-b"};
  EXPECT_TRUE(WaitFor([&] { return Ids(a->Members()) == both; }, absl::Seconds(10)));
  EXPECT_TRUE(WaitFor([&] { return Ids(b->Members()) == both; }, absl::Seconds(10)));
  EXPECT_GE(a_notifications.load(), 2);
  EXPECT_FALSE(a->Members().stale);
  EXPECT_EQ(a->Members().members[1].roles(0), kvstrata::v1::ROLE_STORE);
  EXPECT_NE(a->lease_id(), 0);

  // A member started later reads the current list at once.
  auto c = StartMember(Options());
  ASSERT_TRUE(c);
  EXPECT_EQ(Ids(c->Members()), both);

  // A clean Close() revokes the lease: the node leaves without waiting for the TTL. Keep-alive
  // keeps the others registered meanwhile.
  absl::SleepFor(kTtl + absl::Milliseconds(500));
  EXPECT_EQ(Ids(c->Members()), both);
  b->Close();
  EXPECT_TRUE(WaitFor([&] { return Ids(a->Members()) == std::vector<std::string>{"node-a"}; },
                      absl::Seconds(1)));
}

TEST_F(EtcdMembershipTest, DeadMemberLeavesWithinTtl) {
  auto a = StartMember(Options());
  EtcdMembershipOptions crash = Options();
  crash.revoke_on_close = false;  // stops keep-alive without revoking: what a crash looks like
  auto b = StartMember(crash);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Register(Node("node-a", kvstrata::v1::ROLE_STORE)).ok());
  ASSERT_TRUE(b->Register(Node("node-b", kvstrata::v1::ROLE_STORE)).ok());
  ASSERT_TRUE(WaitFor([&] { return a->Members().members.size() == 2; }, absl::Seconds(10)));

  const absl::Time stopped = absl::Now();
  b->Close();
  ASSERT_TRUE(WaitFor([&] { return Ids(a->Members()) == std::vector<std::string>{"node-a"}; },
                      kTtl + kExpirySlack))
      << "node-b still listed " << absl::FormatDuration(absl::Now() - stopped)
      << " after its keep-alive stopped";
  EXPECT_FALSE(a->Members().stale);
}

TEST_F(EtcdMembershipTest, EtcdGoneKeepsLastKnownMembersAsStale) {
  auto a = StartMember(Options());
  auto b = StartMember(Options());
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Register(Node("node-a", kvstrata::v1::ROLE_STORE)).ok());
  ASSERT_TRUE(b->Register(Node("node-b", kvstrata::v1::ROLE_STORE)).ok());
  const std::vector<std::string> both = {"node-a", "node-b"};
  // Both views must have caught up before etcd goes away: each member learns the other
  // through its watch, and an event still in flight when etcd dies is never delivered.
  ASSERT_TRUE(WaitFor([&] { return Ids(a->Members()) == both && Ids(b->Members()) == both; },
                      absl::Seconds(10)));

  etcd_->Kill();
  EXPECT_TRUE(WaitFor([&] { return a->Members().stale; }, absl::Seconds(10)));
  EXPECT_EQ(Ids(a->Members()), both);  // the last known list stays in use
  // Longer than the TTL: nobody can expire anything while etcd is down.
  absl::SleepFor(kTtl + absl::Milliseconds(500));
  EXPECT_EQ(Ids(a->Members()), both);
  EXPECT_EQ(Ids(b->Members()), both);
  absl::Status st = a->Register(Node("node-a", kvstrata::v1::ROLE_STORE));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(kv::IsRetryable(st));

  // etcd comes back (same data): the view is confirmed again and both nodes are registered,
  // under new leases where the old ones expired during the outage.
  ASSERT_TRUE(etcd_->Restart().ok());
  EXPECT_TRUE(
      WaitFor([&] { return !a->Members().stale && !b->Members().stale; }, absl::Seconds(15)));
  EXPECT_TRUE(WaitFor([&] { return Ids(a->Members()) == both; }, kTtl + kExpirySlack * 2));
  auto fresh = StartMember(Options());
  ASSERT_TRUE(fresh);
  EXPECT_TRUE(WaitFor([&] { return Ids(fresh->Members()) == both; }, absl::Seconds(10)));
}

TEST_F(EtcdMembershipTest, InvalidRecordsAreIgnored) {
  auto a = StartMember(Options());
  ASSERT_TRUE(a);
  ASSERT_TRUE(a->Register(Node("node-a", kvstrata::v1::ROLE_STORE)).ok());
  // Garbage and a record whose node_id does not match its key, written straight into etcd.
  auto kv = etcdserverpb::KV::NewStub(
      grpc::CreateChannel(etcd_->endpoint(), grpc::InsecureChannelCredentials()));
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"garbage", std::string("\xff\x01\x02", 3)},
           {"liar", Node("someone-else", kvstrata::v1::ROLE_STORE).SerializeAsString()}}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    etcdserverpb::PutRequest put;
    put.set_key(Options().prefix + key);
    put.set_value(value);
    etcdserverpb::PutResponse resp;
    ASSERT_TRUE(kv->Put(&ctx, put, &resp).ok());
  }
  ASSERT_TRUE(a->Register(Node("node-a", kvstrata::v1::ROLE_ROUTER)).ok());  // an event after
  EXPECT_TRUE(WaitFor(
      [&] {
        auto v = a->Members();
        return v.members.size() == 1 && v.members[0].roles(0) == kvstrata::v1::ROLE_ROUTER;
      },
      absl::Seconds(5)));
  auto b = StartMember(Options());  // and through the initial Range
  ASSERT_TRUE(b);
  EXPECT_EQ(Ids(b->Members()), std::vector<std::string>{"node-a"});
}

TEST(EtcdMembershipOptionsTest, BadOptionsAndUnreachableEtcd) {
  EtcdMembershipOptions o;
  EXPECT_EQ(EtcdMembership::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.endpoint = "127.0.0.1:1";
  o.ttl = absl::Milliseconds(500);
  EXPECT_EQ(EtcdMembership::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.ttl = absl::Seconds(2);
  o.prefix = "";
  EXPECT_EQ(EtcdMembership::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.prefix = "/p/";
  o.rpc_timeout = absl::Seconds(2);
  auto m = EtcdMembership::Start(o);  // nothing listens on port 1
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable) << m.status();
  EXPECT_TRUE(kv::IsRetryable(m.status()));
  EXPECT_NE(m.status().message().find("127.0.0.1:1"), absl::string_view::npos);
}

TEST(EtcdPrefixEndTest, IncrementsLastByte) {
  EXPECT_EQ(EtcdPrefixEnd("/a/"), "/a0");
  EXPECT_EQ(EtcdPrefixEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(EtcdPrefixEnd(std::string("\xff\xff", 2)), std::string(1, '\0'));
}

}  // namespace
}  // namespace kv::cluster
