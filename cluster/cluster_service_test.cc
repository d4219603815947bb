// The Cluster service over gRPC on loopback, with the real engine, model and tiered store.
#include "cluster/cluster_service.h"
#include "cluster/embedded_cluster.h"
#include "model/test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <grpcpp/create_channel.h>

#include "cluster/client.h"
#include "cluster/grpc_probe.h"
#include "cluster/grpc_server.h"
#include "cluster/node.h"
#include "cluster/proto_convert.h"

namespace kv::cluster {
namespace {

namespace pb = ::kvstrata::v1;
constexpr absl::Duration kTimeout = absl::Seconds(60);

const char kPrompt[] =
    "<|system|>You are a careful agent. Use the tools below and answer briefly.<|tools|>"
    "search(query: string) -> documents; fetch(url: string) -> text; run(code: string) -> "
    "output;<|user|>find the quarterly report and summarise it<|assistant|>";

class ClusterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = model::testing::FreshTempDir("cluster-service");
    NodeOptions o;
    o.data_dir = dir_;
    o.device_bytes = 8ull << 20;
    o.host_bytes = 16ull << 20;
    o.nvme_bytes = 1ull << 30;
    o.slab_bytes = 1ull << 20;
    o.metrics = &metrics_;
    auto node = EmbeddedCluster::Open({.node = o});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
    auto auth = TenantAuth::Parse("tok-a: acme\ntok-b: globex\n", "test");
    ASSERT_TRUE(auth.ok()) << auth.status();
    ClusterServiceOptions so;
    so.metrics = &metrics_;
    service_ = std::make_unique<ClusterService>(&node_->router(), *auth, so);
    GrpcServerOptions go;
    go.services = {service_.get()};
    go.health_service_names = {pb::Cluster::service_full_name()};
    go.shutdown_grace = absl::Seconds(2);
    auto server = GrpcServer::Start(go);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    service_->SetAdvertisedAddress(server_->address());
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    service_.reset();
    node_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<ClusterClient> Client(const std::string& token) {
    auto c = ClusterClient::Connect(server_->address(), token);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  static pb::GenerateRequest Req(int max_tokens = 16) {
    pb::GenerateRequest r;
    r.mutable_prompt()->set_text(kPrompt);
    r.set_session_id("session-1");
    r.mutable_sampling()->set_max_new_tokens(max_tokens);
    r.mutable_sampling()->set_ignore_eos(true);
    return r;
  }

  MetricsRegistry metrics_;
  std::string dir_;
  std::unique_ptr<EmbeddedCluster> node_;
  std::unique_ptr<ClusterService> service_;
  std::unique_ptr<GrpcServer> server_;
};

TEST_F(ClusterServiceTest, GenerateStreamsTokensAndWarmRunMatchesCold) {
  auto client = Client("tok-a");
  ASSERT_NE(client, nullptr);
  int events = 0;
  auto cold = client->Generate(Req(), kTimeout, [&](const pb::GeneratedTokens&) { ++events; });
  ASSERT_TRUE(cold.ok()) << cold.status();
  EXPECT_EQ(cold->tokens.size(), 16u);
  EXPECT_EQ(events, 16);
  EXPECT_EQ(cold->finish, pb::FINISH_REASON_LENGTH);
  EXPECT_EQ(cold->stats.cached_tokens(), 0u);
  EXPECT_EQ(cold->stats.output_tokens(), 16u);
  // The prompt's pages are queued for the prefill write-back, the turn's stored by decode.
  EXPECT_GT(cold->stats.published_pages() + cold->stats.queued_pages(), 0u);
  EXPECT_GT(FromProto(cold->stats.ttft()), absl::ZeroDuration());
  node_->WaitIdle();

  auto warm = client->Generate(Req(), kTimeout);
  ASSERT_TRUE(warm.ok()) << warm.status();
  EXPECT_EQ(warm->tokens, cold->tokens);
  const uint32_t prompt = warm->stats.prompt_tokens();
  EXPECT_EQ(warm->stats.cached_tokens(), prompt / 64 * 64);
  EXPECT_EQ(warm->stats.cached_tokens() + warm->stats.recomputed_tokens(), prompt);
  EXPECT_EQ(warm->plan.decision(), pb::CACHE_DECISION_LOAD);
  EXPECT_EQ(warm->stats.transport(), pb::TRANSPORT_KIND_INPROC);
  uint32_t hit_tokens = 0;
  for (const auto& h : warm->stats.tier_hits()) hit_tokens += h.tokens();
  EXPECT_EQ(hit_tokens, warm->stats.cached_tokens());

  // Another tenant never sees acme's pages.
  auto other = Client("tok-b")->Generate(Req(), kTimeout);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->stats.cached_tokens(), 0u);
  EXPECT_EQ(other->tokens, cold->tokens);

  pb::LookupRequest lr;
  lr.mutable_prompt()->set_text(kPrompt);
  lr.set_include_keys(true);
  auto look = client->Lookup(lr, kTimeout);
  ASSERT_TRUE(look.ok()) << look.status();
  EXPECT_EQ(look->cached_tokens(), prompt / 64 * 64);
  EXPECT_EQ(look->keys_size(), static_cast<int>(look->full_blocks()));
  EXPECT_EQ(look->key_space().layout(), "mla-fp8-656");
  EXPECT_EQ(look->cost().decision(), pb::CACHE_DECISION_LOAD);
  uint32_t covered = 0;
  for (const auto& s : look->segments()) covered += s.block_count();
  EXPECT_EQ(covered, look->cached_blocks());

  auto stats = client->GetStats(kTimeout);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->self().requests_ok(), 3u);
  EXPECT_GT(stats->hit_rate(), 0.0);
  EXPECT_FALSE(stats->self().tiers().empty());
  auto nodes = client->ListNodes(kTimeout);
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->nodes_size(), 1);
  EXPECT_EQ(nodes->nodes(0).grpc_address(), server_->address());
  EXPECT_EQ(nodes->nodes(0).roles_size(), 4);
}

TEST_F(ClusterServiceTest, MissingOrInvalidTokenIsUnauthenticated) {
  for (const std::string token : {"", "wrong-token"}) {
    auto client = Client(token);
    ASSERT_NE(client, nullptr);
    auto g = client->Generate(Req(), kTimeout);
    EXPECT_EQ(g.status().code(), absl::StatusCode::kUnauthenticated) << token;
    pb::LookupRequest lr;
    lr.mutable_prompt()->set_text(kPrompt);
    EXPECT_EQ(client->Lookup(lr, kTimeout).status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(client->GetStats(kTimeout).status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(client->ListNodes(kTimeout).status().code(), absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(node_->router().Counters().requests_ok, 0u);
}

TEST_F(ClusterServiceTest, BadRequestsMapToInvalidArgument) {
  auto client = Client("tok-a");
  pb::GenerateRequest r = Req();
  r.mutable_sampling()->set_max_new_tokens(0);
  auto g = client->Generate(r, kTimeout);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(g.status().message()).find("max_new_tokens"), std::string::npos);
  r = Req();
  r.clear_prompt();
  EXPECT_EQ(client->Generate(r, kTimeout).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req();
  r.mutable_prompt()->mutable_tokens()->add_ids(1u << 20);  // outside the vocabulary
  EXPECT_EQ(client->Generate(r, kTimeout).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req();
  r.set_model("no-such-model");
  EXPECT_EQ(client->Generate(r, kTimeout).status().code(), absl::StatusCode::kNotFound);
  // Issue #18 item 8: empty text is an empty prompt, as the proto says (it became one token).
  r = Req();
  r.mutable_prompt()->set_text("");
  g = client->Generate(r, kTimeout);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(g.status().message()).find("empty"), std::string::npos) << g.status();
  // A Lookup over the context limit names the limit, not a field Lookup does not have.
  pb::LookupRequest lr;
  for (int i = 0; i < 100000; ++i) lr.mutable_prompt()->mutable_tokens()->add_ids(i % 200);
  auto l = client->Lookup(lr, kTimeout);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kOutOfRange) << l.status();
  EXPECT_EQ(std::string(l.status().message()).find("max_new_tokens"), std::string::npos)
      << l.status();
  EXPECT_NE(std::string(l.status().message()).find("context limit"), std::string::npos)
      << l.status();
  lr.mutable_prompt()->set_text("");
  EXPECT_EQ(client->Lookup(lr, kTimeout).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClusterServiceTest, ClientDeadlineEndsTheCallInTime) {
  auto client = Client("tok-a");
  pb::GenerateRequest r = Req(/*max_tokens=*/4000);
  const absl::Time start = absl::Now();
  auto g = client->Generate(r, absl::Milliseconds(300));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // The server stops generating; the next request is served normally.
  auto ok = client->Generate(Req(4), kTimeout);
  ASSERT_TRUE(ok.ok()) << ok.status();
}

TEST_F(ClusterServiceTest, HealthAndReflection) {
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  auto h = CheckHealth(channel.get(), pb::Cluster::service_full_name(), absl::Seconds(5));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, grpc::health::v1::HealthCheckResponse::SERVING);
  auto services = ListServicesByReflection(channel.get(), absl::Seconds(5));
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_NE(std::find(services->begin(), services->end(), "kvstrata.v1.Cluster"), services->end());
}

// Issue #18 item 5: a failing cache tier is reported under its own health name
// (kvstrata.tier.nvme NOT_SERVING) while the node ("" and the Cluster service) stays SERVING
// and keeps answering. The segments directory is deleted before the node's first nvme write,
// so every write-back to nvme fails.
TEST_F(ClusterServiceTest, FailingTierIsNotServingUnderItsOwnNameWhileTheNodeServes) {
  ReportTierHealth(node_->store(), *server_);
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  using grpc::health::v1::HealthCheckResponse;
  auto health = [&](const std::string& name) {
    auto h = CheckHealth(channel.get(), name, absl::Seconds(5));
    EXPECT_TRUE(h.ok()) << name << ": " << h.status();
    return h.ok() ? *h : HealthCheckResponse::UNKNOWN;
  };
  EXPECT_EQ(health("kvstrata.tier.nvme"), HealthCheckResponse::SERVING);
  EXPECT_EQ(health("kvstrata.tier.host"), HealthCheckResponse::SERVING);
  std::filesystem::remove_all(std::filesystem::path(dir_) / "nvme" / "segments");
  auto client = Client("tok-a");
  auto g = client->Generate(Req(4), kTimeout);
  ASSERT_TRUE(g.ok()) << g.status();
  node_->WaitIdle();
  EXPECT_GE(node_->store().Stats().indexed_pages, 3u);  // published (host), not in nvme
  EXPECT_EQ(health("kvstrata.tier.nvme"), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(health("kvstrata.tier.host"), HealthCheckResponse::SERVING);
  EXPECT_EQ(health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(health(pb::Cluster::service_full_name()), HealthCheckResponse::SERVING);
  EXPECT_NE(TierHealthDetail(node_->store()).find("nvme tier failing"), std::string::npos);
  auto again = client->Generate(Req(4), kTimeout);  // served, from the host tier
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_GT(again->stats.cached_tokens(), 0u);
  StopTierHealthReport(node_->store());
}

// Issue #18 item 8: the client's stats line never claims bytes for a prompt that loaded
// nothing, and names the path the bytes took.
TEST(FormatStatsTest, LoadedBytesOnlyWithCachedTokensAndTheirPath) {
  pb::RequestStats s;
  s.set_prompt_tokens(100);
  s.set_recomputed_tokens(100);
  s.set_bytes_transferred(15744);  // e.g. pages read whose import failed
  std::string out = FormatStats(s);
  EXPECT_NE(out.find("loaded nothing"), std::string::npos) << out;
  EXPECT_EQ(out.find("15744"), std::string::npos) << out;
  EXPECT_EQ(out.find("no transfer"), std::string::npos) << out;
  s.set_cached_tokens(64);
  s.set_pool_transport(pb::TRANSPORT_KIND_UCX);
  out = FormatStats(s);
  EXPECT_NE(out.find("loaded 15744 bytes (UCX)"), std::string::npos) << out;
  s.set_pool_transport(pb::TRANSPORT_KIND_UNSPECIFIED);
  s.set_transport(pb::TRANSPORT_KIND_INPROC);
  out = FormatStats(s);
  EXPECT_NE(out.find("loaded 15744 bytes (in-process)"), std::string::npos) << out;
}

}  // namespace
}  // namespace kv::cluster
