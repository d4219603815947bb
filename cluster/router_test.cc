// The router's choices in one process (issue #14): fake workers behind WorkerClient, a fake
// page pool, a static membership and a fake clock. Which workers it picks, what it pins and
// hands them, how it falls back when a prefill worker fails, how it cancels, and which
// deadlines and times it reads from the injected clock.
#include "cluster/router.h"

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "core/clock.h"
#include "core/mutex.h"
#include "kvstore/block_key.h"

namespace kv::cluster {
namespace {

namespace pb = ::kvstrata::v1;

constexpr uint32_t kPageTokens = 4;
constexpr absl::Duration kMaxRequestTime = absl::Seconds(7);
constexpr absl::Duration kTokenTime = absl::Milliseconds(5);
constexpr absl::Duration kPrefillTime = absl::Milliseconds(20);

pb::NodeInfo Node(const std::string& id, const std::string& address, pb::Role role) {
  pb::NodeInfo n;
  n.set_node_id(id);
  n.set_grpc_address(address);
  n.add_roles(role);
  return n;
}

// What the fake workers and pool saw, and how they behave.
struct World {
  explicit World(FakeClock* c) : clock(c) {}
  FakeClock* clock;
  // Behaviour.
  std::vector<int32_t> tokens = {11, 12, 13, 14};
  bool prefill_fails = false;
  int decode_fails_at = -1;           // Next() fails instead of emitting this token index
  std::set<std::string> dead_decode;  // StartDecode on these fails as on a dead process
  int64_t cached_blocks = 0;
  std::string cache_address = "10.0.0.1:7000";

  kv::Mutex mu;
  std::vector<std::string> decode_calls ABSL_GUARDED_BY(mu), prefill_calls ABSL_GUARDED_BY(mu);
  std::vector<decode::DecodeRequest> decode_requests ABSL_GUARDED_BY(mu);
  std::vector<prefill::PrefillRequest> prefill_requests ABSL_GUARDED_BY(mu);
  std::vector<absl::Time> deadlines ABSL_GUARDED_BY(mu);
  std::vector<decode::PrefillResult> results ABSL_GUARDED_BY(mu);
  std::vector<size_t> lookups ABSL_GUARDED_BY(mu);  // chain length of each Lookup
  std::vector<size_t> pins ABSL_GUARDED_BY(mu);     // keys asked to pin
  std::vector<std::string> unpins ABSL_GUARDED_BY(mu);
  int cancels ABSL_GUARDED_BY(mu) = 0;
  // While true, the first Prefill call waits (at most 30 s) before it runs.
  bool hold_prefill ABSL_GUARDED_BY(mu) = false;
};

class FakeDecodeCall final : public DecodeCall {
 public:
  FakeDecodeCall(World* w, std::string node, decode::DecodeRequest req)
      : w_(w), node_(std::move(node)), req_(std::move(req)) {}

  absl::StatusOr<transport::HandoffDestination> Ready() override {
    return transport::HandoffDestination{.handoff_id = "h-" + req_.request_id,
                                         .node_id = node_,
                                         .transport = "inproc",
                                         .endpoint = "inproc://" + node_,
                                         .slot_bytes = 64,
                                         .slots = 2};
  }
  absl::Status SendPrefillResult(const decode::PrefillResult& result) override {
    kv::MutexLock l(&w_->mu);
    w_->results.push_back(result);
    verified_ = result.kv_tokens > 0;
    return absl::OkStatus();
  }
  void Cancel() override {
    cancelled_ = true;
    kv::MutexLock l(&w_->mu);
    ++w_->cancels;
  }
  absl::StatusOr<DecodeEvent> Next() override {
    if (w_->decode_fails_at == next_) return absl::UnavailableError("decode worker died");
    if (!cancelled_ && next_ < static_cast<int>(w_->tokens.size())) {
      w_->clock->Advance(kTokenTime);
      return DecodeEvent{.token = w_->tokens[next_++]};
    }
    decode::DecodeOutcome out;
    out.finish = cancelled_ ? FinishReason::kCancelled : FinishReason::kLength;
    out.handoff = verified_ ? decode::HandoffVerdict::kVerified : decode::HandoffVerdict::kNone;
    if (!verified_) {  // computed the prompt itself, from the pinned run
      out.cached_tokens = req_.cached ? static_cast<int64_t>(req_.cached->keys.size()) *
                                            static_cast<int64_t>(kPageTokens)
                                      : 0;
      out.recomputed_tokens = static_cast<int64_t>(req_.prompt.size()) - out.cached_tokens;
    }
    out.decode_time = kTokenTime * next_;
    out.published_pages = 1;  // stored before the answer (the end of the turn)
    return DecodeEvent{.done = out};
  }

 private:
  World* const w_;
  const std::string node_;
  const decode::DecodeRequest req_;
  std::atomic<bool> cancelled_{false};
  bool verified_ = false;
  int next_ = 0;
};

class FakeWorker final : public WorkerClient {
 public:
  FakeWorker(World* w, std::string node) : w_(w), node_(std::move(node)) {}

  absl::StatusOr<std::unique_ptr<DecodeCall>> StartDecode(const decode::DecodeRequest& request,
                                                          absl::Time deadline) override {
    kv::MutexLock l(&w_->mu);
    w_->decode_calls.push_back(node_);
    w_->decode_requests.push_back(request);
    w_->deadlines.push_back(deadline);
    if (w_->dead_decode.contains(node_)) {
      return absl::UnavailableError("failed to connect to all addresses");
    }
    return std::make_unique<FakeDecodeCall>(w_, node_, request);
  }
  absl::StatusOr<prefill::PrefillDone> Prefill(const prefill::PrefillRequest& request,
                                               absl::Time deadline) override {
    {
      kv::MutexLock l(&w_->mu);
      w_->prefill_calls.push_back(node_);
      w_->prefill_requests.push_back(request);
      w_->deadlines.push_back(deadline);
      if (w_->prefill_calls.size() == 1) {
        auto released = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !w_->hold_prefill; };
        w_->mu.AwaitWithTimeout(kv::Condition(&released), absl::Seconds(30));
      }
    }
    if (w_->prefill_fails) return absl::UnavailableError("prefill worker died mid-handoff");
    w_->clock->Advance(kPrefillTime);
    prefill::PrefillDone d;
    d.kv_tokens = static_cast<int64_t>(request.prompt.size()) - 1;
    d.slot_xxh3 = {7, 8};
    d.cached_tokens =
        request.cached ? static_cast<int64_t>(request.cached->keys.size()) * kPageTokens : 0;
    d.recomputed_tokens = d.kv_tokens - d.cached_tokens;
    d.bytes_sent = 1000;
    d.transport = "inproc";
    d.compute_time = kPrefillTime;
    d.queued_pages = 2;  // queued for write-back: not stored yet
    return d;
  }

 private:
  World* const w_;
  const std::string node_;
};

class FakePool final : public PagePool {
 public:
  explicit FakePool(World* w) : w_(w) {}
  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& tenant) override {
    kv::MutexLock l(&w_->mu);
    w_->lookups.push_back(chain.size());
    PoolPrefix p;
    const int64_t n = std::min<int64_t>(w_->cached_blocks, static_cast<int64_t>(chain.size()));
    if (n == 0) return p;
    p.node_id = "store-a";
    p.address = w_->cache_address;
    p.tiers.assign(n, TierKind::kHost);
    p.has_resume.assign(n, false);
    return p;
  }
  absl::StatusOr<std::string> Pin(const std::string& address, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& tenant, int64_t* pinned,
                                  std::string* lent) override {
    kv::MutexLock l(&w_->mu);
    w_->pins.push_back(keys.size());
    *pinned = static_cast<int64_t>(keys.size());
    if (lent != nullptr) *lent = "lent-1";  // what the store lent, passed on to the workers
    return std::string("lease-1");
  }
  void Unpin(const std::string& address, const std::string& lease_id,
             const std::string& tenant) override {
    kv::MutexLock l(&w_->mu);
    w_->unpins.push_back(lease_id);
  }
  // The router never reads or publishes pages itself: the workers do.
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(const std::string&,
                                                         std::span<const BlockKey>,
                                                         const std::string&, const std::string&,
                                                         absl::Time, std::string*,
                                                         const std::string&) override {
    ADD_FAILURE() << "the router read pages";
    return absl::InternalError("unexpected");
  }
  absl::StatusOr<int64_t> Publish(const BlockKey&, std::span<const PoolPage>,
                                  const PoolWriteOptions&, const std::string&) override {
    ADD_FAILURE() << "the router published pages";
    return absl::InternalError("unexpected");
  }

 private:
  World* const w_;
};

class RouterTest : public ::testing::Test {
 protected:
  // decode-1 on host B; prefill-near on the cache's host A; prefill-far on host C.
  void SetUp() override { Build({}); }

  void Build(std::vector<pb::NodeInfo> members, bool prefill_handoff = true) {
    if (members.empty()) {
      members = {Node("decode-1", "10.0.0.2:7000", pb::ROLE_DECODE),
                 Node("prefill-far", "10.0.0.3:7000", pb::ROLE_PREFILL),
                 Node("prefill-near", "10.0.0.1:7001", pb::ROLE_PREFILL)};
    }
    auto m = StaticMembership::Create(std::move(members), &clock_);
    ASSERT_TRUE(m.ok()) << m.status();
    membership_ = *std::move(m);
    RouterOptions o;
    o.key_params.layout_id = "mla-fp8-656";
    o.key_params.page_tokens = kPageTokens;
    o.page_bytes = 4096;
    o.vocab_size = 100;
    o.max_context = 64;
    o.prefill_handoff = prefill_handoff;
    o.max_request_time = kMaxRequestTime;
    o.clock = &clock_;
    o.metrics = &metrics_;
    router_ = std::make_unique<RouterBackend>(
        membership_.get(), &pool_,
        [this](const pb::NodeInfo& n) {
          return std::make_shared<FakeWorker>(&world_, n.node_id());
        },
        o);
  }

  GenerateRequest Request(int64_t prompt_tokens = 13) {
    GenerateRequest r;
    for (int64_t i = 0; i < prompt_tokens; ++i) r.prompt.push_back(static_cast<int32_t>(i % 90));
    r.tenant = "acme";
    r.max_tokens = 4;
    return r;
  }

  FakeClock clock_;
  MetricsRegistry metrics_;
  World world_{&clock_};
  FakePool pool_{&world_};
  std::unique_ptr<StaticMembership> membership_;
  std::unique_ptr<RouterBackend> router_;
};

TEST_F(RouterTest, RunsThePromptOnAPrefillWorkerAndStreamsTheDecodeSessionsTokens) {
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(Request(), &route);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, world_.tokens);
  EXPECT_EQ(r->finish, FinishReason::kLength);
  EXPECT_EQ(route.decode_node_id, "decode-1");
  EXPECT_FALSE(route.prefill_node_id.empty());
  kv::MutexLock l(&world_.mu);
  ASSERT_EQ(world_.prefill_requests.size(), 1u);
  const prefill::PrefillRequest& p = world_.prefill_requests[0];
  // The prefill writes into the destination the decode session announced.
  EXPECT_EQ(p.target.node_id, "decode-1");
  EXPECT_EQ(p.request_id, world_.decode_requests[0].request_id);
  // The decode session gets the prefill's result as reported.
  ASSERT_EQ(world_.results.size(), 1u);
  EXPECT_EQ(world_.results[0].kv_tokens, 12);
  EXPECT_EQ(world_.results[0].slot_xxh3, (std::vector<uint64_t>{7, 8}));
  EXPECT_EQ(world_.results[0].prefill_node_id, route.prefill_node_id);
  EXPECT_EQ(r->stats.recomputed_tokens, 13);
  EXPECT_EQ(r->stats.bytes_transferred, 1000u);
  // Published means stored: the decode worker's end-of-turn page. The prefill worker's
  // queued write-back is reported apart (#18 item 5: it was counted as published).
  EXPECT_EQ(r->stats.published_pages, 1);
  EXPECT_EQ(r->stats.queued_pages, 2);
  EXPECT_EQ(router_->Counters().requests_ok, 1u);
}

TEST_F(RouterTest, PrefersThePrefillWorkerOnTheCachedPrefixsHost) {
  world_.cached_blocks = 3;
  GenerateRequest req = Request();
  req.policy = CachePolicy::kForceLoad;
  Route route;
  ASSERT_TRUE(router_->Generate(req, &route).ok());
  EXPECT_EQ(route.prefill_node_id, "prefill-near");
  // Without a cached prefix the choice is the rendezvous tie-break: the same chain keeps
  // landing on the same worker.
  world_.cached_blocks = 0;
  Route first, again;
  ASSERT_TRUE(router_->Generate(Request(), &first).ok());
  ASSERT_TRUE(router_->Generate(Request(), &again).ok());
  EXPECT_EQ(first.prefill_node_id, again.prefill_node_id);
}

TEST_F(RouterTest, PinsTheLoadedPrefixHandsItToBothWorkersAndUnpinsIt) {
  world_.cached_blocks = 2;
  GenerateRequest req = Request(13);  // 3 full blocks; at most (13 - 1) / 4 = 3 usable
  req.policy = CachePolicy::kForceLoad;
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(req, &route);
  ASSERT_TRUE(r.ok()) << r.status();
  kv::MutexLock l(&world_.mu);
  ASSERT_EQ(world_.lookups.size(), 1u);
  EXPECT_EQ(world_.lookups[0], 3u);
  ASSERT_EQ(world_.pins.size(), 1u);
  EXPECT_EQ(world_.pins[0], 2u);
  ASSERT_TRUE(world_.decode_requests[0].cached.has_value());
  ASSERT_TRUE(world_.prefill_requests[0].cached.has_value());
  EXPECT_EQ(world_.prefill_requests[0].cached->lease_id, "lease-1");
  EXPECT_EQ(world_.prefill_requests[0].cached->lent, "lent-1");
  EXPECT_EQ(world_.decode_requests[0].cached->lent, "lent-1");
  EXPECT_EQ(world_.prefill_requests[0].cached->keys.size(), 2u);
  EXPECT_EQ(world_.decode_requests[0].cached->keys, world_.prefill_requests[0].cached->keys);
  EXPECT_EQ(world_.unpins, (std::vector<std::string>{"lease-1"}));
  EXPECT_EQ(r->stats.cached_tokens, 8);
  EXPECT_EQ(r->stats.recomputed_tokens, 5);
  EXPECT_EQ(r->stats.cost.decision, CacheDecision::kLoad);
}

TEST_F(RouterTest, ACachePolicyOfBypassReadsNothingAndPublishesNothing) {
  world_.cached_blocks = 3;
  GenerateRequest req = Request();
  req.policy = CachePolicy::kBypass;
  Route route;
  ASSERT_TRUE(router_->Generate(req, &route).ok());
  kv::MutexLock l(&world_.mu);
  EXPECT_TRUE(world_.lookups.empty());
  EXPECT_TRUE(world_.pins.empty());
  EXPECT_TRUE(world_.decode_requests[0].skip_publish);
  EXPECT_TRUE(world_.prefill_requests[0].skip_publish);
  EXPECT_FALSE(world_.decode_requests[0].cached.has_value());
}

TEST_F(RouterTest, AFailedPrefillLetsTheDecodeSessionComputeFromThePinnedRun) {
  world_.prefill_fails = true;
  world_.cached_blocks = 2;
  GenerateRequest req = Request();
  req.policy = CachePolicy::kForceLoad;
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(req, &route);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, world_.tokens);
  EXPECT_EQ(router_->Counters().prefill_fallbacks, 1u);
  kv::MutexLock l(&world_.mu);
  ASSERT_EQ(world_.results.size(), 1u);
  EXPECT_EQ(world_.results[0].kv_tokens, 0);  // no handoff: the session computes
  EXPECT_EQ(r->stats.cached_tokens, 8);       // what the session loaded itself
  EXPECT_EQ(r->stats.recomputed_tokens, 5);
  EXPECT_EQ(r->stats.transport, "grpc");  // a router process: the session read over gRPC
  EXPECT_EQ(world_.unpins.size(), 1u);
}

TEST_F(RouterTest, WithoutALivePrefillWorkerTheDecodeSessionComputesThePrompt) {
  Build({Node("decode-1", "10.0.0.2:7000", pb::ROLE_DECODE)});
  Route route;
  std::string reason;
  GenerateRequest req = Request();
  req.on_plan = [&](const CostPlan& p) { reason = p.reason; };
  absl::StatusOr<GenerateResult> r = router_->Generate(req, &route);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(route.prefill_node_id.empty());
  EXPECT_NE(reason.find("no live prefill worker"), std::string::npos) << reason;
  kv::MutexLock l(&world_.mu);
  EXPECT_TRUE(world_.prefill_calls.empty());
  EXPECT_EQ(world_.results[0].kv_tokens, 0);
}

TEST_F(RouterTest, AModelWithoutAHandoffNeverCallsAPrefillWorker) {
  Build({}, /*prefill_handoff=*/false);
  Route route;
  ASSERT_TRUE(router_->Generate(Request(), &route).ok());
  EXPECT_TRUE(route.prefill_node_id.empty());
  kv::MutexLock l(&world_.mu);
  EXPECT_TRUE(world_.prefill_calls.empty());
}

TEST_F(RouterTest, WithoutALiveDecodeWorkerTheRequestIsUnavailable) {
  Build({Node("prefill-near", "10.0.0.1:7001", pb::ROLE_PREFILL)});
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(Request(), &route);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(router_->Counters().requests_failed, 1u);
  kv::MutexLock l(&world_.mu);
  EXPECT_TRUE(world_.prefill_calls.empty());
}

TEST_F(RouterTest, ADecodeWorkerThatDiesMidTurnIsUnavailableAndReleasesThePin) {
  world_.decode_fails_at = 2;
  world_.cached_blocks = 1;
  GenerateRequest req = Request();
  req.policy = CachePolicy::kForceLoad;
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(req, &route);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("decode-1"), std::string::npos) << r.status();
  kv::MutexLock l(&world_.mu);
  EXPECT_EQ(world_.unpins.size(), 1u);
}

TEST_F(RouterTest, ACallerThatStopsReadingCancelsTheDecodeSession) {
  GenerateRequest req = Request();
  int seen = 0;
  req.on_token = [&](int32_t) { return ++seen < 2; };
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(req, &route);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->finish, FinishReason::kCancelled);
  EXPECT_EQ(r->tokens, (std::vector<int32_t>{11, 12}));
  kv::MutexLock l(&world_.mu);
  EXPECT_EQ(world_.cancels, 1);
}

TEST_F(RouterTest, DeadlinesAndTimesComeFromTheInjectedClock) {
  const absl::Time start = clock_.Now();
  Route route;
  absl::StatusOr<GenerateResult> r = router_->Generate(Request(), &route);
  ASSERT_TRUE(r.ok()) << r.status();
  {
    kv::MutexLock l(&world_.mu);
    ASSERT_EQ(world_.deadlines.size(), 2u);  // the decode session's and the prefill's
    for (absl::Time d : world_.deadlines) EXPECT_EQ(d, start + kMaxRequestTime);
  }
  EXPECT_EQ(r->stats.ttft, kPrefillTime + kTokenTime);
  EXPECT_EQ(r->stats.total_time, kPrefillTime + 4 * kTokenTime);
  EXPECT_EQ(r->stats.prefill_time, kPrefillTime);
}

TEST_F(RouterTest, InvalidRequestsReachNoWorker) {
  GenerateRequest bad_token = Request();
  bad_token.prompt[3] = 100;  // vocab is [0, 100)
  GenerateRequest too_long = Request(61);
  GenerateRequest no_tenant = Request();
  no_tenant.tenant.clear();
  GenerateRequest bad_session = Request();
  bad_session.session_id = "has space";
  Route route;
  EXPECT_EQ(router_->Generate(bad_token, &route).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(router_->Generate(too_long, &route).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(router_->Generate(no_tenant, &route).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(router_->Generate(bad_session, &route).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(router_->Counters().requests_failed, 4u);
  kv::MutexLock l(&world_.mu);
  EXPECT_TRUE(world_.decode_calls.empty());
  EXPECT_TRUE(world_.lookups.empty());
}

TEST_F(RouterTest, LoadSpreadsConcurrentRequestsOverPrefillWorkers) {
  // Two in-flight requests of the same chain (no cached prefix, so no locality): the second
  // avoids the worker the first one is still using.
  {
    kv::MutexLock l(&world_.mu);
    world_.hold_prefill = true;
  }
  Route first;
  std::thread t([&] { ASSERT_TRUE(router_->Generate(Request(), &first).ok()); });
  bool started = false;
  {
    kv::MutexLock l(&world_.mu);
    auto first_prefill_running = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return !world_.prefill_calls.empty();
    };
    started = world_.mu.AwaitWithTimeout(kv::Condition(&first_prefill_running), absl::Seconds(30));
  }
  Route second;
  // Only the first prefill is held: the second runs through.
  absl::StatusOr<GenerateResult> r =
      started ? router_->Generate(Request(), &second) : absl::DeadlineExceededError("no start");
  {
    kv::MutexLock l(&world_.mu);
    world_.hold_prefill = false;
  }
  t.join();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(first.prefill_node_id.empty());
  EXPECT_FALSE(second.prefill_node_id.empty());
  EXPECT_NE(first.prefill_node_id, second.prefill_node_id);
}

}  // namespace
}  // namespace kv::cluster

namespace kv::cluster {
namespace {

// #18 item 7: a decode worker that died is marked down at its first failure and the request
// is retried on a live one, instead of failing with a raw connect error until its membership
// lease expires; with none left, the error says so.
TEST_F(RouterTest, ADeadDecodeWorkerIsMarkedDownAtItsFirstFailure) {
  Build({Node("decode-1", "10.0.0.2:7000", pb::ROLE_DECODE),
         Node("decode-2", "10.0.0.4:7000", pb::ROLE_DECODE),
         Node("prefill-near", "10.0.0.1:7001", pb::ROLE_PREFILL)});
  Route first;
  ASSERT_TRUE(router_->Generate(Request(), &first).ok());
  const std::string dead = first.decode_node_id;
  const std::string live = dead == "decode-1" ? "decode-2" : "decode-1";
  world_.dead_decode = {dead};
  {
    kv::MutexLock l(&world_.mu);
    world_.decode_calls.clear();
  }
  Route retried;
  absl::StatusOr<GenerateResult> r = router_->Generate(Request(), &retried);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, world_.tokens);
  EXPECT_EQ(retried.decode_node_id, live);
  // The next request goes straight to the live worker: the dead one is down.
  ASSERT_TRUE(router_->Generate(Request(), &retried).ok());
  {
    kv::MutexLock l(&world_.mu);
    EXPECT_EQ(world_.decode_calls, (std::vector<std::string>{dead, live, live}));
    world_.decode_calls.clear();
  }
  EXPECT_EQ(router_->Counters().decode_failures, 1u);
  // Once its down time has passed, it is tried again first.
  clock_.Advance(absl::Seconds(11));
  world_.dead_decode = {};
  ASSERT_TRUE(router_->Generate(Request(), &retried).ok());
  EXPECT_EQ(retried.decode_node_id, dead);
  // Both dead: the error names the failure and says no other worker is left.
  world_.dead_decode = {"decode-1", "decode-2"};
  absl::StatusOr<GenerateResult> none = router_->Generate(Request(), &retried);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("no other live decode worker"), std::string::npos)
      << none.status();
  EXPECT_NE(none.status().message().find("failed to connect"), std::string::npos);

  // The router's /metrics: requests by code, decode-worker failures (1 + 2), handoff bytes.
  const std::string m = metrics_.RenderPrometheus();
  EXPECT_NE(m.find("kvstrata_cluster_requests_total{code=\"OK\"} 4"), std::string::npos) << m;
  EXPECT_NE(m.find("kvstrata_cluster_requests_total{code=\"UNAVAILABLE\"} 1"), std::string::npos);
  EXPECT_NE(m.find("kvstrata_cluster_worker_failures_total{role=\"decode\"} 3"), std::string::npos);
  EXPECT_NE(m.find("kvstrata_cluster_handoff_bytes_total"), std::string::npos);
}

}  // namespace
}  // namespace kv::cluster
