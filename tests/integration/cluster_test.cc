// The distributed cluster end to end, as real processes on loopback (issue #6): a real etcd,
// a router, two prefill workers, two decode workers and two store nodes, each a
// `kvstrata serve --role=...` process found through etcd leases. The client is the real gRPC
// client (cluster/client.h). Checked:
//   - generation through the cluster equals an in-process reference engine over the same
//     model, token for token (greedy and seeded sampling): the KV handed from prefill to
//     decode over UCX is exact;
//   - a repeated prompt loads its prefix from the store pool, and the next turn of a
//     conversation hits the whole previous turn;
//   - tenants are isolated (same prompt, other tenant: no hit), the shared namespace is an
//     explicit opt-in, and a bad token or bad request gets a clear error;
//   - faults: a killed decode worker, a killed store node and a killed etcd do not stop the
//     cluster (requests succeed, dead nodes leave the ring within the TTL), and with every
//     prefill worker dead the decode workers compute prompts themselves.
// Every wait is bounded. Usage: cluster_multiprocess_test KVSTRATA_BINARY
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <grpcpp/create_channel.h>

#include "cluster/client.h"
#include "cluster/embedded_cluster.h"
#include "cluster/grpc_status.h"
#include "cluster/tenants.h"
#include "cluster/testing/child_process.h"
#include "cluster/testing/etcd_process.h"
#include "core/strings.h"
#include "model/tokenizer.h"
#include "proto/kvstrata/v1/page_store.grpc.pb.h"
#include "proto/kvstrata/v1/worker.grpc.pb.h"
#include "tests/integration/binary_test_main.h"

namespace kv {
namespace {

namespace fs = std::filesystem;
namespace pb = ::kvstrata::v1;
using cluster::testing::ChildProcess;
using cluster::testing::EtcdProcess;

constexpr char kServiceToken[] = "svc-cluster-test";

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
constexpr absl::Duration kCallTimeout = absl::Seconds(60);

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // scripts/setup installs etcd: a missing one is a broken setup, not a reason to pass.
    absl::StatusOr<std::string> binary = EtcdProcess::FindBinary();
    ASSERT_TRUE(binary.ok()) << "etcd is required (scripts/setup installs etcd-server): "
                             << binary.status();
    const char* tmp = std::getenv("KVSTRATA_TEST_TMPDIR");
    work_ = (fs::path(tmp ? tmp : "/tmp") / StrCat("cluster-test-", getpid())).string();
    fs::remove_all(work_);
    fs::create_directories(work_);
    {
      std::ofstream t(work_ + "/tokens.yaml");
      t << "tok-acme: acme\ntok-globex: globex\n";
      std::ofstream(work_ + "/service-token") << kServiceToken << "\n";
    }
    model_dir_ = work_ + "/model";
    absl::Status init = InitTinyModel(model_dir_, work_ + "/model-init.log");
    ASSERT_TRUE(init.ok()) << init;
    auto etcd = EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = etcd->release();
    for (const char* name :
         {"store-a", "store-b", "prefill-a", "prefill-b", "decode-a", "decode-b", "router"}) {
      ASSERT_NO_FATAL_FAILURE(StartNode(name));
    }
    for (const char* name :
         {"store-a", "store-b", "prefill-a", "prefill-b", "decode-a", "decode-b", "router"}) {
      absl::StatusOr<std::string> line = nodes_[name]->WaitForLine("listening on", kStartTimeout);
      ASSERT_TRUE(line.ok()) << name << ": " << line.status();
      if (std::string(name) == "router") {
        const size_t at = line->find("listening on ") + 13;
        router_ = line->substr(at, line->find(' ', at) - at);
      }
    }
    ASSERT_TRUE(WaitForMembers(7, absl::Seconds(30)));
    cluster::NodeOptions no;
    no.model_dir = model_dir_;
    no.data_dir = work_ + "/reference";
    no.nvme_bytes = 0;
    auto ref = cluster::EmbeddedCluster::Open({.node = no});
    ASSERT_TRUE(ref.ok()) << ref.status();
    reference_ = ref->release();
  }

  static void TearDownTestSuite() {
    for (auto& [name, p] : nodes_) {
      if (p->Running()) {
        absl::StatusOr<int> rc = p->Stop(SIGTERM, absl::Seconds(15));
        EXPECT_TRUE(rc.ok()) << name << " did not stop on SIGTERM: " << rc.status();
        // A clean exit, not a crash on the way out (waitpid status 0).
        if (rc.ok()) {
          EXPECT_EQ(*rc, 0) << name << " exited with status " << *rc;
        }
      }
      delete p;
    }
    nodes_.clear();
    delete reference_;
    reference_ = nullptr;
    delete etcd_;
    etcd_ = nullptr;
    if (std::getenv("KVSTRATA_KEEP_TEST_TMP") == nullptr) fs::remove_all(work_);
  }

  static void StartNode(const std::string& name) {
    const std::string role = name.substr(0, name.find('-'));
    auto* p = new ChildProcess();
    nodes_[name] = p;
    absl::Status s = p->Spawn(
        {g_binary, "serve", "--role=" + role, "--node-id=" + name, "--listen=127.0.0.1:0",
         "--metrics-port=-1", "--etcd=" + etcd_->endpoint(), "--member-ttl=2s",
         "--model-dir=" + model_dir_, "--tokens-file=" + work_ + "/tokens.yaml",
         "--service-token-file=" + work_ + "/service-token", "--data-dir=" + work_ + "/" + name,
         "--device-mib=16", "--host-mib=32", "--nvme-mib=128", "--worker-threads=2"},
        work_ + "/" + name + ".log",
        {"OPENBLAS_NUM_THREADS=1", "UCX_TLS=tcp,self", "UCX_NET_DEVICES=lo"});
    ASSERT_TRUE(s.ok()) << s;
  }

  static std::unique_ptr<cluster::ClusterClient> Client(const std::string& token) {
    auto c = cluster::ClusterClient::Connect(router_, token, absl::Seconds(10));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // Waits until the router lists exactly `n` members.
  static bool WaitForMembers(int n, absl::Duration timeout) {
    auto c = Client("tok-acme");
    if (c == nullptr) return false;
    const absl::Time deadline = absl::Now() + timeout;
    int last = -1;
    while (absl::Now() < deadline) {
      auto r = c->ListNodes(absl::Seconds(5));
      if (r.ok()) last = r->nodes_size();
      if (r.ok() && last == n) return true;
      absl::SleepFor(absl::Milliseconds(200));
    }
    ADD_FAILURE() << "the router lists " << last << " members, want " << n;
    return false;
  }

  static pb::GenerateRequest Request(const std::string& text, int max_tokens = 16,
                                     double temperature = 0, uint64_t seed = 0) {
    pb::GenerateRequest r;
    r.mutable_prompt()->set_text(text);
    r.mutable_sampling()->set_max_new_tokens(max_tokens);
    r.mutable_sampling()->set_temperature(static_cast<float>(temperature));
    r.mutable_sampling()->set_seed(seed);
    r.mutable_sampling()->set_ignore_eos(true);
    return r;
  }

  // What the in-process engine generates for the same request (cache bypassed).
  static std::vector<uint32_t> Reference(const std::string& text, int max_tokens,
                                         double temperature = 0, uint64_t seed = 0) {
    return Reference(model::ByteTokenizer::Encode(text, /*add_bos=*/true, /*parse_specials=*/true),
                     max_tokens, temperature, seed);
  }
  static std::vector<uint32_t> Reference(std::vector<int32_t> prompt, int max_tokens,
                                         double temperature = 0, uint64_t seed = 0) {
    cluster::GenerateRequest q;
    q.prompt = std::move(prompt);
    q.tenant = "reference";
    q.max_tokens = max_tokens;
    q.sampling.temperature = temperature;
    q.sampling.top_p = 1.0;
    q.sampling.seed = seed;
    q.ignore_eos = true;
    q.policy = cluster::CachePolicy::kBypass;
    auto r = reference_->Generate(q);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<uint32_t> out;
    if (r.ok()) out.assign(r->tokens.begin(), r->tokens.end());
    return out;
  }

  // Waits until Lookup reports at least `blocks` cached blocks for `text` (the prefill's
  // publish is asynchronous).
  static bool WaitCached(cluster::ClusterClient& c, const std::string& text, uint32_t blocks) {
    pb::LookupRequest l;
    l.mutable_prompt()->set_text(text);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      auto r = c.Lookup(l, absl::Seconds(5));
      if (r.ok() && r->cached_blocks() >= blocks) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  static std::string Prompt(const std::string& seed_text, int bytes) {
    std::string s;
    while (static_cast<int>(s.size()) < bytes) s += seed_text;
    return s.substr(0, bytes);
  }

  static inline std::string work_, model_dir_, router_;
  static inline EtcdProcess* etcd_ = nullptr;
  static inline cluster::EmbeddedCluster* reference_ = nullptr;
  static inline std::map<std::string, ChildProcess*> nodes_;
};

TEST_F(ClusterTest, GenerationEqualsTheLocalEngineAndReusesThePool) {
  auto c = Client("tok-acme");
  ASSERT_NE(c, nullptr);
  const std::string text = Prompt("You are a careful coding agent. Tools: grep, sed, make. ", 400);
  const std::vector<uint32_t> want = Reference(text, 16);
  auto cold = c->Generate(Request(text), kCallTimeout);
  ASSERT_TRUE(cold.ok()) << cold.status();
  EXPECT_EQ(cold->tokens, want);
  EXPECT_EQ(cold->stats.cached_tokens(), 0u);
  EXPECT_EQ(cold->stats.transport(), pb::TRANSPORT_KIND_UCX);
  EXPECT_GT(cold->stats.bytes_transferred(), 0u);  // the prompt's KV went prefill -> decode
  const uint32_t full = static_cast<uint32_t>((text.size() + 1) / 64);  // + BOS
  ASSERT_TRUE(WaitCached(*c, text, full - 1)) << "the prompt's pages were not published";
  auto warm = c->Generate(Request(text), kCallTimeout);
  ASSERT_TRUE(warm.ok()) << warm.status();
  EXPECT_EQ(warm->tokens, want);
  EXPECT_GT(warm->stats.cached_tokens(), 0u) << cluster::FormatStats(warm->stats);
  EXPECT_EQ(warm->stats.cached_tokens() + warm->stats.recomputed_tokens(),
            warm->stats.prompt_tokens());
  ASSERT_GT(warm->stats.tier_hits_size(), 0);
  EXPECT_TRUE(warm->stats.tier_hits(0).remote());
  EXPECT_FALSE(warm->stats.tier_hits(0).node_id().empty());
  // The same chain goes to the same prefill worker, which kept the pages it published in its
  // local tier (kv::CachingPagePool, design-notes item 17): the hit is local (INPROC), or, for
  // pages its keep had not finished yet, over UCX RMA from the store's registered memory,
  // never gRPC (#15).
  EXPECT_TRUE(warm->stats.pool_transport() == pb::TRANSPORT_KIND_INPROC ||
              warm->stats.pool_transport() == pb::TRANSPORT_KIND_UCX)
      << cluster::FormatStats(warm->stats);
  EXPECT_EQ(cold->stats.pool_transport(), pb::TRANSPORT_KIND_UNSPECIFIED);
  // By the third request the worker holds every page it loaded: no network at all.
  auto third = c->Generate(Request(text), kCallTimeout);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->tokens, want);
  EXPECT_GE(third->stats.cached_tokens(), warm->stats.cached_tokens());
  EXPECT_EQ(third->stats.pool_transport(), pb::TRANSPORT_KIND_INPROC)
      << cluster::FormatStats(third->stats);

  // GetStats(all_nodes): every live member but the router, in node-id order, from its own
  // GetNodeStats (#18 item 7: it listed none). The stores hold the published pages; the
  // workers served the three requests.
  auto stats = c->GetStats(kCallTimeout, /*all_nodes=*/true);
  ASSERT_TRUE(stats.ok()) << stats.status();
  std::vector<std::string> ids;
  uint64_t store_pages = 0, worker_requests = 0;
  for (const pb::NodeStats& n : stats->nodes()) {
    ids.push_back(n.node_id());
    EXPECT_FALSE(n.has_error()) << n.node_id() << ": " << n.error().message();
    for (const pb::TierStats& t : n.tiers()) store_pages += t.capacity().pages();
    if (n.node_id().starts_with("prefill") || n.node_id().starts_with("decode")) {
      worker_requests += n.requests_ok();
    }
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"decode-a", "decode-b", "prefill-a", "prefill-b",
                                           "store-a", "store-b"}));
  EXPECT_GE(store_pages, full - 1);
  EXPECT_GE(worker_requests, 6u);  // 3 decodes and 3 prefills at least
}

TEST_F(ClusterTest, TheNextTurnHitsTheWholeConversation) {
  auto c = Client("tok-acme");
  ASSERT_NE(c, nullptr);
  // Token prompts: the model's output bytes need not be valid UTF-8 text.
  std::vector<int32_t> convo = model::ByteTokenizer::Encode(
      Prompt("<|user|>Plan the refactor of the tiered store, step by step. ", 300), true, true);
  pb::GenerateRequest r1 = Request("", 70);
  for (int32_t t : convo) r1.mutable_prompt()->mutable_tokens()->add_ids(static_cast<uint32_t>(t));
  auto t1 = c->Generate(r1, kCallTimeout);
  ASSERT_TRUE(t1.ok()) << t1.status();
  // Turn 2 = turn 1 + its output + a tool result. The decode worker published turn 1's pages.
  std::vector<int32_t> turn2 = convo;
  turn2.insert(turn2.end(), t1->tokens.begin(), t1->tokens.end());
  for (int32_t t : model::ByteTokenizer::Encode("<|tool|>ok: 3 files changed", false, true)) {
    turn2.push_back(t);
  }
  const uint32_t turn1_blocks = static_cast<uint32_t>((convo.size() + t1->tokens.size() - 1) / 64);
  pb::GenerateRequest r2 = Request("", 8);
  for (int32_t t : turn2) r2.mutable_prompt()->mutable_tokens()->add_ids(static_cast<uint32_t>(t));
  pb::LookupRequest l;
  *l.mutable_prompt() = r2.prompt();
  uint32_t cached = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline && cached < turn1_blocks) {
    auto lr = c->Lookup(l, absl::Seconds(5));
    if (lr.ok()) cached = lr->cached_blocks();
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_GE(cached, turn1_blocks) << "turn 1's pages were not published";
  auto t2 = c->Generate(r2, kCallTimeout);
  ASSERT_TRUE(t2.ok()) << t2.status();
  EXPECT_GE(t2->stats.cached_tokens(), turn1_blocks * 64u) << cluster::FormatStats(t2->stats);
  EXPECT_EQ(t2->tokens, Reference(turn2, 8));
  // A second session with the same system prompt (the first 256 tokens) hits that prefix.
  std::vector<int32_t> other(convo.begin(), convo.begin() + 256);
  for (int32_t t : model::ByteTokenizer::Encode("<|user|>A different question.", false, true)) {
    other.push_back(t);
  }
  pb::GenerateRequest r3 = Request("", 8);
  for (int32_t t : other) r3.mutable_prompt()->mutable_tokens()->add_ids(static_cast<uint32_t>(t));
  r3.set_session_id("second-session");
  auto s2 = c->Generate(r3, kCallTimeout);
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_GE(s2->stats.cached_tokens(), 256u) << cluster::FormatStats(s2->stats);
  EXPECT_EQ(s2->tokens, Reference(other, 8));
}

TEST_F(ClusterTest, SampledGenerationEqualsTheLocalEngine) {
  auto c = Client("tok-acme");
  ASSERT_NE(c, nullptr);
  const std::string text = Prompt(
      "Sampling check: the first token is drawn on the prefill "
      "worker, the rest on the decode worker. ",
      200);
  auto r = c->Generate(Request(text, 24, 0.9, 7), kCallTimeout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, Reference(text, 24, 0.9, 7));
}

TEST_F(ClusterTest, TenantsAreIsolatedAndTheSharedNamespaceIsOptIn) {
  auto acme = Client("tok-acme");
  auto globex = Client("tok-globex");
  ASSERT_TRUE(acme && globex);
  const std::string text = Prompt("Acme's private system prompt, never to be shared. ", 400);
  ASSERT_TRUE(acme->Generate(Request(text, 4), kCallTimeout).ok());
  ASSERT_TRUE(WaitCached(*acme, text, 5));
  auto other = globex->Generate(Request(text, 4), kCallTimeout);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->stats.cached_tokens(), 0u) << "globex hit acme's pages";
  // The shared namespace: both tenants opt in for the first 256 tokens.
  const std::string shared = Prompt("A public tool schema both agents use. ", 400);
  pb::GenerateRequest sr = Request(shared, 4);
  sr.set_shared_prefix_tokens(256);
  ASSERT_TRUE(acme->Generate(sr, kCallTimeout).ok());
  pb::LookupRequest l;
  l.mutable_prompt()->set_text(shared);
  l.set_shared_prefix_tokens(256);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  uint32_t cached = 0;
  while (absl::Now() < deadline && cached < 4) {
    auto r = globex->Lookup(l, absl::Seconds(5));
    if (r.ok()) cached = r->cached_blocks();
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GE(cached, 4u) << "globex does not see the shared prefix";
  auto g = globex->Generate(sr, kCallTimeout);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_GE(g->stats.cached_tokens(), 256u);
  EXPECT_EQ(g->tokens, Reference(shared, 4));
}

// Issue #18 item 1 over real processes: tenant tokens reach no Worker service and cannot write
// the shared namespace of a store; the node credential (which the router and workers use) can.
TEST_F(ClusterTest, TenantTokensReachNoWorkerAndCannotWriteTheSharedNamespace) {
  auto acme = Client("tok-acme");
  ASSERT_NE(acme, nullptr);
  auto nodes = acme->ListNodes(kCallTimeout);
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  std::string worker, store;
  for (const pb::NodeInfo& n : nodes->nodes()) {
    for (int r : n.roles()) {
      if (r == pb::ROLE_PREFILL || r == pb::ROLE_DECODE) worker = n.grpc_address();
      if (r == pb::ROLE_STORE) store = n.grpc_address();
    }
  }
  ASSERT_FALSE(worker.empty() || store.empty()) << nodes->DebugString();
  auto call = [](const std::string& address, const std::string& token, const std::string& tenant,
                 bool on_store) {
    auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    cluster::AddNodeCredential(&ctx, token, tenant);
    pb::NodeStats stats;
    return cluster::FromGrpcStatus(
        on_store ? pb::PageStore::NewStub(channel)->GetNodeStats(&ctx, {}, &stats)
                 : pb::Worker::NewStub(channel)->GetNodeStats(&ctx, {}, &stats));
  };
  EXPECT_EQ(call(worker, "tok-acme", "", false).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(call(worker, "tok-acme", "globex", false).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(call(store, "tok-acme", "", true).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(call(worker, kServiceToken, "acme", false).ok());
  EXPECT_TRUE(call(store, kServiceToken, "acme", true).ok());
  // A shared-namespace WritePages stream with a tenant token ends at its options.
  auto channel = grpc::CreateChannel(store, grpc::InsecureChannelCredentials());
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  cluster::AddNodeCredential(&ctx, "tok-globex", "");
  pb::WritePagesResponse resp;
  auto w = pb::PageStore::NewStub(channel)->WritePages(&ctx, &resp);
  pb::WritePagesRequest m;
  m.mutable_options()->set_shared_namespace(true);
  m.mutable_options()->mutable_key_space()->set_layout("mla-fp8-656");
  m.mutable_options()->mutable_key_space()->set_page_tokens(64);
  w->Write(m);
  w->WritesDone();
  const absl::Status s = cluster::FromGrpcStatus(w->Finish());
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
}

TEST_F(ClusterTest, BadRequestsGetClearErrors) {
  auto nobody = Client("not-a-token");
  ASSERT_NE(nobody, nullptr);
  auto r = nobody->Generate(Request("hello"), kCallTimeout);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  auto c = Client("tok-acme");
  pb::GenerateRequest bad = Request("hello");
  bad.mutable_prompt()->mutable_tokens()->add_ids(1u << 20);  // outside the vocabulary
  EXPECT_EQ(c->Generate(bad, kCallTimeout).status().code(), absl::StatusCode::kInvalidArgument);
  pb::GenerateRequest zero = Request("hello");
  zero.mutable_sampling()->set_max_new_tokens(0);
  EXPECT_EQ(c->Generate(zero, kCallTimeout).status().code(), absl::StatusCode::kInvalidArgument);
}

// Faults, in order: each leaves the cluster smaller for the next.
TEST_F(ClusterTest, SurvivesADeadDecodeWorkerAStoreAndEtcd) {
  auto c = Client("tok-acme");
  ASSERT_NE(c, nullptr);
  const std::string text = Prompt("Fault drill: keep serving while nodes die. ", 300);
  const std::vector<uint32_t> want = Reference(text, 8);

  // Decode workers SIGKILLed mid-stream (both, so whichever serves the request dies): the
  // client gets a clear error well within its deadline, never a hang. The turn is long
  // (2,000 tokens, seconds of decoding) so the kill lands before it ends even when the first
  // token reaches the client late.
  bool killed = false;
  const absl::Time t0 = absl::Now();
  auto mid = c->Generate(Request(text, 2000), kCallTimeout, [&](const pb::GeneratedTokens&) {
    if (killed) return;
    killed = true;
    nodes_["decode-a"]->Kill();
    nodes_["decode-b"]->Kill();
  });
  EXPECT_TRUE(killed);
  EXPECT_FALSE(mid.ok());
  EXPECT_EQ(mid.status().code(), absl::StatusCode::kUnavailable) << mid.status();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(30));
  for (const char* name : {"decode-a", "decode-b"}) {
    const size_t before = nodes_[name]->CountInLog("listening on");
    ASSERT_NO_FATAL_FAILURE(StartNode(name));
    ASSERT_TRUE(nodes_[name]->WaitForLine("listening on", kStartTimeout, before).ok());
  }
  // Until the new records replace the dead ones, a request may still land on a dead node:
  // a retryable error. Within a few TTLs everything succeeds again.
  absl::StatusOr<cluster::GenerateOutcome> after = absl::UnavailableError("not run");
  const absl::Time retry_until = absl::Now() + absl::Seconds(20);
  while (absl::Now() < retry_until) {
    after = c->Generate(Request(text, 8), kCallTimeout);
    if (after.ok() || after.status().code() != absl::StatusCode::kUnavailable) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->tokens, want);

  // A store SIGKILLed while a request runs: the request completes correctly; later ones
  // recompute what was homed there and republish it to the remaining store.
  const std::string long_text = Prompt("A store dies while this request decodes. ", 300);
  bool store_killed = false;
  auto during = c->Generate(Request(long_text, 120), kCallTimeout, [&](const pb::GeneratedTokens&) {
    if (store_killed) return;
    store_killed = true;
    nodes_["store-a"]->Kill();
  });
  ASSERT_TRUE(during.ok()) << during.status();
  EXPECT_EQ(during->tokens, Reference(long_text, 120));
  ASSERT_TRUE(WaitForMembers(6, absl::Seconds(15)));  // TTL 2 s
  auto no_store_a = c->Generate(Request(text, 8), kCallTimeout);
  ASSERT_TRUE(no_store_a.ok()) << no_store_a.status();
  EXPECT_EQ(no_store_a->tokens, want);

  etcd_->Kill();  // the last known view stays in use
  auto no_etcd = c->Generate(Request(text, 8), kCallTimeout);
  ASSERT_TRUE(no_etcd.ok()) << no_etcd.status();
  EXPECT_EQ(no_etcd->tokens, want);
  ASSERT_TRUE(etcd_->Restart().ok());
}

TEST_F(ClusterTest, DecodeWorkersComputeWhenEveryPrefillWorkerIsDead) {
  auto c = Client("tok-acme");
  ASSERT_NE(c, nullptr);
  nodes_["prefill-a"]->Kill();
  nodes_["prefill-b"]->Kill();
  const std::string text = Prompt("No prefill worker left; decode computes the prompt. ", 200);
  // Before and after the dead workers leave the ring, requests succeed with exact tokens.
  // The decode worker that computes the prompt loads the pinned cached run itself: nothing
  // the first time, the first request's published pages the second time.
  for (int i = 0; i < 2; ++i) {
    auto r = c->Generate(Request(text, 8), kCallTimeout);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens, Reference(text, 8));
    const uint32_t reusable = (r->stats.prompt_tokens() - 1) / 64 * 64;
    EXPECT_EQ(r->stats.cached_tokens(), i == 0 ? 0u : reusable);
    if (i == 0) {
      ASSERT_TRUE(WaitForMembers(4, absl::Seconds(30)));  // router, 2 decode, store-b
    }
  }
}

}  // namespace
}  // namespace kv
