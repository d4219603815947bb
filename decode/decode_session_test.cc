// DecodeSession's transitions, in one process: the real tiny-v3 model, a PrefillWorker writing
// over the in-process transport (optionally through the fault injector), a page pool over an
// in-memory tiered store, and the clock. Every path must produce exactly the tokens of a local
// generation: a verified handoff, a corrupt one, a stalled one, none, a cached run, a cancel.
#include "decode/decode_session.h"
#include "decode/session_test_base.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/local_page_pool.h"
#include "kvstore/tiered_store.h"
#include "model/config.h"
#include "model/generate.h"
#include "model/serving_model.h"
#include "model/test_util.h"
#include "model/weights.h"
#include "prefill/prefill_worker.h"
#include "transport/fault_transport.h"
#include "transport/inproc_transport.h"

namespace kv::decode {
namespace {

std::vector<int32_t> Prompt(int n, int seed) {
  std::vector<int32_t> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 37 + seed * 11 + 5) % 256;
  return p;
}

class DecodeSessionTest : public testing::SessionTestBase {
 protected:
  static void SetUpTestSuite() { LoadModel("tiny-v3", 3, "mla-fp8-656", 2048); }
  void SetUp() override { OpenWorld(64); }

  DecodeRequest Req(std::vector<int32_t> prompt, int max_tokens = 12) {
    return DecodeRequest{.request_id = "r1",
                         .prompt = std::move(prompt),
                         .tenant = "acme",
                         .max_tokens = max_tokens,
                         .ignore_eos = true};
  }
  // Greedy tokens of a local generation: what every path must produce.
  std::vector<int32_t> Local(const DecodeRequest& r) {
    model::GenerateRequest g{.prompt = r.prompt, .max_tokens = r.max_tokens};
    g.layout = kernels::KvLayout::kMlaFp8_656;
    auto out = model::GenerateLocal(*model_->mla, g);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? out->tokens : std::vector<int32_t>{};
  }
  // Runs a PrefillWorker over `transport` into `dest` for `r`.
  absl::StatusOr<prefill::PrefillDone> Prefill(const DecodeRequest& r,
                                               const transport::HandoffDestination& dest,
                                               transport::Transport* transport,
                                               absl::Duration step = absl::Seconds(10),
                                               absl::Time deadline = absl::InfiniteFuture(),
                                               std::function<bool()> cancelled = nullptr) {
    prefill::PrefillContext pc{.model = &model(),
                               .pool = pool_.get(),
                               .transport = transport,
                               .graveyard = &graveyard_,
                               .options = {.prefill_chunk = 64, .handoff_timeout = step}};
    auto worker = prefill::PrefillWorker::Create(&pc);
    if (!worker.ok()) return worker.status();
    prefill::PrefillRequest p{.request_id = r.request_id,
                              .prompt = r.prompt,
                              .tenant = r.tenant,
                              .cached = r.cached,
                              .target = dest,
                              .skip_publish = true,
                              .cancelled = std::move(cancelled)};
    return (*worker)->Run(
        p, deadline == absl::InfiniteFuture() ? absl::Now() + absl::Seconds(30) : deadline,
        nullptr);
  }
};

TEST_F(DecodeSessionTest, VerifiedHandoffImportsThePromptAndMatchesLocal) {
  const DecodeRequest r = Req(Prompt(150, 1));
  auto s = Session(r);
  ASSERT_NE(s, nullptr);
  auto dest = s->Start();
  ASSERT_TRUE(dest.ok()) << dest.status();
  ASSERT_TRUE(dest->valid());
  EXPECT_EQ(dest->slots, 3);  // 149 handed-off tokens in 64-token blocks
  auto done = Prefill(r, *dest, prefill_transport_.get());
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->kv_tokens, 149);
  ASSERT_TRUE(
      s->OnPrefillResult({.kv_tokens = done->kv_tokens, .slot_xxh3 = done->slot_xxh3}).ok());
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->handoff, HandoffVerdict::kVerified);
  EXPECT_EQ(out->recomputed_tokens, 0);
  EXPECT_EQ(out->tokens, Local(r));
  EXPECT_EQ(out->finish, FinishReason::kLength);
}

// The prefill worker's answer counts its write-back as queued, never as published: what the
// pool took arrives later through on_write_back (#18 item 5: a store refusing every page
// still showed them as published).
class RefusingPool final : public PagePool {
 public:
  explicit RefusingPool(PagePool* inner) : inner_(inner) {}
  absl::StatusOr<PoolPrefix> Lookup(std::span<const BlockKey> chain,
                                    const std::string& auth) override {
    return inner_->Lookup(chain, auth);
  }
  absl::StatusOr<std::string> Pin(const std::string& address, std::span<const BlockKey> keys,
                                  absl::Duration lease, const std::string& auth, int64_t* pinned,
                                  std::string* lent) override {
    return inner_->Pin(address, keys, lease, auth, pinned, lent);
  }
  void Unpin(const std::string& address, const std::string& lease,
             const std::string& auth) override {
    inner_->Unpin(address, lease, auth);
  }
  absl::StatusOr<std::vector<std::vector<uint8_t>>> Read(
      const std::string& address, std::span<const BlockKey> keys, const std::string& lease,
      const std::string& auth, absl::Time by, std::string* path, const std::string& lent) override {
    return inner_->Read(address, keys, lease, auth, by, path, lent);
  }
  absl::StatusOr<int64_t> Publish(const BlockKey&, std::span<const PoolPage>,
                                  const PoolWriteOptions&, const std::string&) override {
    return absl::ResourceExhaustedError("every tier of the store is failing");
  }

 private:
  PagePool* const inner_;
};

TEST_F(DecodeSessionTest, PrefillWriteBackIsQueuedAndReportsWhatThePoolTook) {
  RefusingPool refusing(pool_.get());
  for (PagePool* pool : {static_cast<PagePool*>(pool_.get()), static_cast<PagePool*>(&refusing)}) {
    const DecodeRequest r = Req(Prompt(150, pool == pool_.get() ? 2 : 3));
    auto s = Session(r);
    ASSERT_NE(s, nullptr);
    auto dest = s->Start();
    ASSERT_TRUE(dest.ok()) << dest.status();
    std::vector<std::pair<int64_t, int64_t>> reports;
    prefill::PrefillContext pc{.model = &model(),
                               .pool = pool,
                               .transport = prefill_transport_.get(),
                               .graveyard = &graveyard_,
                               .options = {.prefill_chunk = 64},
                               .on_write_back = [&](int64_t stored, int64_t not_stored) {
                                 reports.emplace_back(stored, not_stored);
                               }};
    auto worker = prefill::PrefillWorker::Create(&pc);
    ASSERT_TRUE(worker.ok()) << worker.status();
    auto done = (*worker)->Run(
        prefill::PrefillRequest{
            .request_id = r.request_id, .prompt = r.prompt, .tenant = r.tenant, .target = *dest},
        absl::Now() + absl::Seconds(30), nullptr);
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->queued_pages, 2);  // 149 handed-off tokens: 2 full pages
    (*worker)->WaitIdle();
    const std::pair<int64_t, int64_t> want =
        pool == pool_.get() ? std::pair<int64_t, int64_t>{2, 0} : std::pair<int64_t, int64_t>{0, 2};
    EXPECT_EQ(reports, (std::vector<std::pair<int64_t, int64_t>>{want}));
  }
}

TEST_F(DecodeSessionTest, CorruptHandoffIsRejectedAndTheSessionComputesThePrompt) {
  transport::FaultInjectingTransport corrupt(prefill_transport_.get(), {.corrupt = 1.0});
  const DecodeRequest r = Req(Prompt(130, 2));
  auto s = Session(r);
  auto dest = s->Start();
  ASSERT_TRUE(dest.ok());
  auto done = Prefill(r, *dest, &corrupt);
  ASSERT_TRUE(done.ok()) << done.status();  // the sender cannot know; the checksums can
  ASSERT_TRUE(
      s->OnPrefillResult({.kv_tokens = done->kv_tokens, .slot_xxh3 = done->slot_xxh3}).ok());
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->handoff, HandoffVerdict::kRejected);
  EXPECT_EQ(out->recomputed_tokens, 130);
  EXPECT_EQ(out->tokens, Local(r));
}

TEST_F(DecodeSessionTest, WrongChecksumsOrTokenCountAreRejected) {
  const DecodeRequest r = Req(Prompt(100, 3), 4);
  for (int variant = 0; variant < 2; ++variant) {
    auto s = Session(r);
    auto dest = s->Start();
    ASSERT_TRUE(dest.ok());
    auto done = Prefill(r, *dest, prefill_transport_.get());
    ASSERT_TRUE(done.ok()) << done.status();
    PrefillResult res{.kv_tokens = done->kv_tokens, .slot_xxh3 = done->slot_xxh3};
    if (variant == 0) res.slot_xxh3[1] ^= 1;
    if (variant == 1) res.kv_tokens -= 1;
    ASSERT_TRUE(s->OnPrefillResult(res).ok());
    auto out = s->Run(nullptr);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->handoff, HandoffVerdict::kRejected) << variant;
    EXPECT_EQ(out->tokens, Local(r)) << variant;
  }
}

TEST_F(DecodeSessionTest, StalledHandoffTimesOutAndTheSessionComputesThePrompt) {
  transport::FaultInjectingTransport stall(prefill_transport_.get(), {.stall = 1.0});
  const DecodeRequest r = Req(Prompt(90, 4), 6);
  auto s = Session(r);
  auto dest = s->Start();
  ASSERT_TRUE(dest.ok());
  const absl::Time t0 = absl::Now();
  auto done = Prefill(r, *dest, &stall, /*step=*/absl::Milliseconds(300));
  EXPECT_FALSE(done.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(done.status())) << done.status();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(20)) << "the handoff step bound did not hold";
  ASSERT_TRUE(s->OnPrefillResult({}).ok());  // what the router sends when the prefill failed
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->handoff, HandoffVerdict::kNone);
  EXPECT_EQ(out->tokens, Local(r));
}

TEST_F(DecodeSessionTest, CancelBeforeThePrefillResultEndsWithNoTokens) {
  auto s = Session(Req(Prompt(80, 5)));
  ASSERT_TRUE(s->Start().ok());
  s->Cancel();
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->finish, FinishReason::kCancelled);
  EXPECT_TRUE(out->tokens.empty());
}

TEST_F(DecodeSessionTest, CancelMidTurnKeepsTheTokensSoFar) {
  const DecodeRequest r = Req(Prompt(70, 6), 20);
  auto s = Session(r);
  ASSERT_TRUE(s->Start().ok());
  ASSERT_TRUE(s->OnPrefillResult({}).ok());
  int seen = 0;
  auto out = s->Run([&](int32_t) { return ++seen < 3; });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->finish, FinishReason::kCancelled);
  ASSERT_EQ(out->tokens.size(), 3u);
  const std::vector<int32_t> ref = Local(r);
  EXPECT_TRUE(std::equal(out->tokens.begin(), out->tokens.end(), ref.begin()));
}

TEST_F(DecodeSessionTest, DeadlinePassedMidTurnFinishesAsCancelled) {
  FakeClock clock(absl::FromUnixSeconds(1000));
  ctx_.clock = &clock;
  auto s = Session(Req(Prompt(70, 7), 50), clock.Now() + absl::Seconds(1));
  ASSERT_TRUE(s->Start().ok());
  ASSERT_TRUE(s->OnPrefillResult({}).ok());
  int seen = 0;
  auto out = s->Run([&](int32_t) {
    if (++seen == 4) clock.Advance(absl::Seconds(2));
    return true;
  });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->finish, FinishReason::kCancelled);
  EXPECT_EQ(out->tokens.size(), 4u);
}

TEST_F(DecodeSessionTest, CachedRunIsLoadedWhenTheSessionComputesThePrompt) {
  // A first turn publishes its pages; a second session with the pinned run loads them.
  DecodeRequest first = Req(Prompt(200, 8), 8);
  auto s1 = Session(first);
  ASSERT_TRUE(s1->Start().ok());
  ASSERT_TRUE(s1->OnPrefillResult({}).ok());
  auto o1 = s1->Run(nullptr);
  ASSERT_TRUE(o1.ok()) << o1.status();
  EXPECT_EQ(o1->published_pages, 3);  // 207 tokens with KV: 3 full pages

  DecodeRequest second = Req(Prompt(200, 8), 8);
  KeyParams kp{
      .model_fingerprint = model().fingerprint(), .layout_id = "mla-fp8-656", .page_tokens = 64};
  auto keys = DeriveRequestKeys(kp, second.prompt, "acme", 0, nullptr);
  ASSERT_TRUE(keys.ok());
  int64_t pinned = 0;
  auto lease = pool_->Pin("local", *keys, absl::Seconds(30), "acme", &pinned);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(pinned, 3);
  second.cached = CachedRun{.address = "local", .keys = *keys, .lease_id = *lease};
  auto s2 = Session(second);
  ASSERT_TRUE(s2->Start().ok());
  ASSERT_TRUE(s2->OnPrefillResult({}).ok());
  auto o2 = s2->Run(nullptr);
  ASSERT_TRUE(o2.ok()) << o2.status();
  EXPECT_EQ(o2->cached_tokens, 192);
  EXPECT_EQ(o2->recomputed_tokens, 8);
  EXPECT_GT(o2->bytes_loaded, 0u);
  EXPECT_EQ(o2->tokens, Local(second));
}

TEST_F(DecodeSessionTest, CallsOutOfOrderAndBadRequestsAreErrors) {
  auto s = Session(Req(Prompt(50, 9)));
  EXPECT_EQ(s->OnPrefillResult({}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->Run(nullptr).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(s->Start().ok());
  EXPECT_EQ(s->Start().status().code(), absl::StatusCode::kFailedPrecondition);
  DecodeRequest bad = Req({});
  EXPECT_EQ(DecodeSession::Create(&ctx_, bad, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = Req({1, 2, 9999});
  EXPECT_EQ(DecodeSession::Create(&ctx_, bad, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = Req({1, 2, 3}, 4000);
  EXPECT_EQ(DecodeSession::Create(&ctx_, bad, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST_F(DecodeSessionTest, OneTokenPromptOffersNoDestination) {
  const DecodeRequest r = Req({42}, 5);
  auto s = Session(r);
  auto dest = s->Start();
  ASSERT_TRUE(dest.ok());
  EXPECT_FALSE(dest->valid());
  ASSERT_TRUE(s->OnPrefillResult({}).ok());
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->tokens, Local(r));
}

// Issue #18 item 2: cancelling or passing the deadline stops the prompt's compute within a
// bound, not at the next sampled token. A 2,000-token tiny-v3 prompt takes seconds here.
constexpr absl::Duration kStopBound = absl::Milliseconds(200);

TEST_F(DecodeSessionTest, CancelMidPrefillStopsTheComputeWithinABound) {
  auto s = Session(Req(Prompt(2000, 9), 4));
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->Start().ok());
  ASSERT_TRUE(s->OnPrefillResult({}).ok());  // no handoff: the session computes the prompt
  std::atomic<int64_t> cancel_at{0};
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    cancel_at = absl::ToUnixMicros(absl::Now());
    s->Cancel();
  });
  auto out = s->Run(nullptr);
  const absl::Time end = absl::Now();
  canceller.join();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->finish, FinishReason::kCancelled);
  EXPECT_TRUE(out->tokens.empty());
  EXPECT_LT(end - absl::FromUnixMicros(cancel_at), kStopBound);
}

TEST_F(DecodeSessionTest, DeadlineMidPrefillStopsTheComputeWithinABound) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(150);
  auto s = Session(Req(Prompt(2000, 10), 4), deadline);
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->Start().ok());
  ASSERT_TRUE(s->OnPrefillResult({}).ok());
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->finish, FinishReason::kCancelled);
  EXPECT_TRUE(out->tokens.empty());
  EXPECT_LT(absl::Now() - deadline, kStopBound);
}

TEST_F(DecodeSessionTest, PrefillWorkerStopsAtItsDeadlineOrWhenCancelled) {
  const DecodeRequest r = Req(Prompt(2000, 11), 4);
  {
    auto s = Session(r);
    ASSERT_NE(s, nullptr);
    auto dest = s->Start();
    ASSERT_TRUE(dest.ok()) << dest.status();
    const absl::Time deadline = absl::Now() + absl::Milliseconds(150);
    auto done = Prefill(r, *dest, prefill_transport_.get(), absl::Seconds(10), deadline);
    EXPECT_EQ(done.status().code(), absl::StatusCode::kDeadlineExceeded) << done.status();
    EXPECT_LT(absl::Now() - deadline, kStopBound);
    s->Cancel();
  }
  {
    auto s = Session(r);
    ASSERT_NE(s, nullptr);
    auto dest = s->Start();
    ASSERT_TRUE(dest.ok()) << dest.status();
    std::atomic<bool> gave_up{false};
    std::atomic<int64_t> cancel_at{0};
    std::thread canceller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      cancel_at = absl::ToUnixMicros(absl::Now());
      gave_up = true;
    });
    auto done = Prefill(r, *dest, prefill_transport_.get(), absl::Seconds(10),
                        absl::InfiniteFuture(), [&] { return gave_up.load(); });
    const absl::Time end = absl::Now();
    canceller.join();
    EXPECT_EQ(done.status().code(), absl::StatusCode::kCancelled) << done.status();
    EXPECT_LT(end - absl::FromUnixMicros(cancel_at), kStopBound);
    s->Cancel();
  }
}

}  // namespace
}  // namespace kv::decode
