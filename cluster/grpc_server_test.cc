#include "cluster/grpc_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "cluster/grpc_probe.h"
#include "cluster/grpc_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/kvstrata/v1/cluster.grpc.pb.h"

namespace kv::cluster {
namespace {

using grpc::health::v1::HealthCheckResponse;
using ::testing::Contains;

constexpr absl::Duration kTimeout = absl::Seconds(5);

// A Cluster service on gRPC's callback API that knows only its own node. ListNodes answers
// with it (or nothing, when filtered out by role); Lookup rejects an empty prompt through the
// absl -> gRPC status mapping, as the real router will.
class SelfOnlyCluster final : public kvstrata::v1::Cluster::CallbackService {
 public:
  explicit SelfOnlyCluster(kvstrata::v1::NodeInfo self) : self_(std::move(self)) {}

  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* ctx,
                                      const kvstrata::v1::ListNodesRequest* request,
                                      kvstrata::v1::ListNodesResponse* response) override {
    bool match = request->role() == kvstrata::v1::ROLE_UNSPECIFIED;
    for (int role : self_.roles()) match = match || role == request->role();
    if (match) *response->add_nodes() = self_;
    response->set_membership_source("static");
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx,
                                   const kvstrata::v1::LookupRequest* request,
                                   kvstrata::v1::LookupResponse* response) override {
    absl::Status status = absl::OkStatus();
    if (request->prompt().input_case() == kvstrata::v1::Prompt::INPUT_NOT_SET) {
      kvstrata::v1::ErrorInfo info;
      info.set_reason("EMPTY_PROMPT");
      status = WithErrorInfo(absl::InvalidArgumentError("lookup: prompt is empty"), info);
    }
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }

 private:
  const kvstrata::v1::NodeInfo self_;
};

kvstrata::v1::NodeInfo SelfInfo() {
  kvstrata::v1::NodeInfo self;
  self.set_node_id("node-a");
  self.add_roles(kvstrata::v1::ROLE_ROUTER);
  self.add_roles(kvstrata::v1::ROLE_STORE);
  auto* tier = self.add_tiers();
  tier->set_tier(kvstrata::v1::TIER_HOST);
  tier->set_capacity_bytes(1 << 30);
  return self;
}

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

TEST(GrpcServerTest, HealthReflectionAndCallbackServiceWork) {
  SelfOnlyCluster service(SelfInfo());
  GrpcServerOptions options;
  options.services = {&service};
  options.health_service_names = {kvstrata::v1::Cluster::service_full_name()};
  absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  auto channel = Connect((*server)->address());

  // Health: the whole server and the registered service are SERVING.
  auto health = CheckHealth(channel.get(), "", kTimeout);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthCheckResponse::SERVING);
  health = CheckHealth(channel.get(), "kvstrata.v1.Cluster", kTimeout);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthCheckResponse::SERVING);
  EXPECT_EQ(CheckHealth(channel.get(), "no.such.Service", kTimeout).status().code(),
            absl::StatusCode::kNotFound);

  // Reflection lists our service and serves its descriptor.
  auto services = ListServicesByReflection(channel.get(), kTimeout);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, Contains("kvstrata.v1.Cluster"));
  EXPECT_THAT(*services, Contains("grpc.reflection.v1alpha.ServerReflection"));
  auto files = FileDescriptorsBySymbol(channel.get(), "kvstrata.v1.Cluster", kTimeout);
  ASSERT_TRUE(files.ok()) << files.status();
  bool found_generate = false;
  for (const std::string& bytes : *files) {
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(bytes));
    if (file.name() != "proto/kvstrata/v1/cluster.proto") continue;
    for (const auto& svc : file.service()) {
      for (const auto& method : svc.method()) {
        if (svc.name() == "Cluster" && method.name() == "Generate") {
          found_generate = method.server_streaming();
        }
      }
    }
  }
  EXPECT_TRUE(found_generate) << "reflection did not describe streaming Cluster.Generate";
  EXPECT_EQ(FileDescriptorsBySymbol(channel.get(), "no.such.Symbol", kTimeout).status().code(),
            absl::StatusCode::kNotFound);

  // The callback service answers.
  auto stub = kvstrata::v1::Cluster::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kTimeout));
  kvstrata::v1::ListNodesResponse nodes;
  ASSERT_TRUE(stub->ListNodes(&ctx, kvstrata::v1::ListNodesRequest(), &nodes).ok());
  ASSERT_EQ(nodes.nodes_size(), 1);
  EXPECT_EQ(nodes.nodes(0).node_id(), "node-a");
  EXPECT_EQ(nodes.nodes(0).tiers(0).capacity_bytes(), 1u << 30);

  grpc::ClientContext ctx2;
  ctx2.set_deadline(absl::ToChronoTime(absl::Now() + kTimeout));
  kvstrata::v1::ListNodesRequest decode_only;
  decode_only.set_role(kvstrata::v1::ROLE_DECODE);
  ASSERT_TRUE(stub->ListNodes(&ctx2, decode_only, &nodes).ok());
  EXPECT_EQ(nodes.nodes_size(), 0);

  // An absl error crosses the wire with its code, message and ErrorInfo.
  grpc::ClientContext ctx3;
  ctx3.set_deadline(absl::ToChronoTime(absl::Now() + kTimeout));
  kvstrata::v1::LookupResponse lookup;
  absl::Status st = FromGrpcStatus(stub->Lookup(&ctx3, kvstrata::v1::LookupRequest(), &lookup));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "lookup: prompt is empty");
  ASSERT_TRUE(GetErrorInfo(st).has_value());
  EXPECT_EQ(GetErrorInfo(st)->reason(), "EMPTY_PROMPT");

  // Draining flips health; after Shutdown nothing answers.
  (*server)->SetServing(false);
  health = CheckHealth(channel.get(), "", kTimeout);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthCheckResponse::NOT_SERVING);
  (*server)->Shutdown();
  (*server)->Shutdown();  // idempotent
  health = CheckHealth(channel.get(), "", absl::Seconds(2));
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable) << health.status();
}

TEST(GrpcServerTest, PortInUseIsUnavailable) {
  auto first = GrpcServer::Start(GrpcServerOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  GrpcServerOptions options;
  options.address = (*first)->address();
  auto second = GrpcServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find((*first)->address()), std::string::npos);
}

TEST(GrpcServerTest, BadAddressesAreInvalidArgument) {
  for (const char* address :
       {"", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:99999", "127.0.0.1:http"}) {
    GrpcServerOptions options;
    options.address = address;
    auto server = GrpcServer::Start(options);
    ASSERT_FALSE(server.ok()) << address;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << address;
  }
  GrpcServerOptions options;
  options.services = {nullptr};
  EXPECT_EQ(GrpcServer::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GrpcServerTest, NothingListeningIsUnavailable) {
  // A loopback port bound but not listening: connections are refused, and no other process
  // can take the port while the socket is open (freeing it would race with other tests).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::string address = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  auto channel = Connect(address);
  auto services = ListServicesByReflection(channel.get(), absl::Seconds(2));
  EXPECT_EQ(services.status().code(), absl::StatusCode::kUnavailable) << services.status();
  auto health = CheckHealth(channel.get(), "", absl::Seconds(2));
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable) << health.status();
  close(fd);
}

}  // namespace
}  // namespace kv::cluster
