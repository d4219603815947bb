// DeepSeek-V4 disaggregation in one process: the real tiny-v4 model, a PrefillWorker handing the
// prompt's state (per layer: compressed CSA/HCA entries and indexer keys; then the resume
// section: window rows and compressor states) to a DecodeSession over the in-process transport
// (optionally through the fault injector), and a page pool over an in-memory tiered store.
// Every path must produce exactly the tokens of a local generation, and the published pages
// must be the bytes a local computation exports.
#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "decode/decode_session.h"
#include "decode/session_test_base.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/local_page_pool.h"
#include "kvstore/page_format.h"
#include "kvstore/tiered_store.h"
#include "model/config.h"
#include "model/serving_model.h"
#include "model/test_util.h"
#include "model/v4_generate.h"
#include "model/weights.h"
#include "prefill/prefill_worker.h"
#include "transport/fault_transport.h"
#include "transport/inproc_transport.h"

namespace kv::decode {
namespace {

std::vector<int32_t> Prompt(int n, int seed) {
  std::vector<int32_t> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 37 + seed * 11 + (i / 7) * 3 + 5) % 256;
  return p;
}

class DecodeSessionV4Test : public testing::SessionTestBase {
 protected:
  static void SetUpTestSuite() { LoadModel("tiny-v4", 5, "", 8192); }
  void SetUp() override { OpenWorld(100); }
  static const model::V4Model& v4() { return *model_->v4; }

  DecodeRequest Req(std::vector<int32_t> prompt, int max_tokens = 10) {
    return DecodeRequest{.request_id = "r1",
                         .prompt = std::move(prompt),
                         .tenant = "acme",
                         .max_tokens = max_tokens,
                         .ignore_eos = true};
  }
  std::vector<int32_t> Local(const DecodeRequest& r) {
    model::GenerateRequest g{.prompt = r.prompt, .max_tokens = r.max_tokens};
    auto out = model::GenerateLocalV4(v4(), g);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? out->tokens : std::vector<int32_t>{};
  }
  // A PrefillWorker over `transport` writes `r`'s prompt into `dest`; it publishes the
  // prompt's pages (checkpoint every `checkpoint` pages) unless `publish` is false.
  absl::StatusOr<prefill::PrefillDone> Prefill(const DecodeRequest& r,
                                               const transport::HandoffDestination& dest,
                                               transport::Transport* transport,
                                               absl::Duration step = absl::Seconds(20),
                                               bool publish = false, int64_t checkpoint = 4) {
    prefill::PrefillContext pc{
        .model = &model(),
        .pool = pool_.get(),
        .transport = transport,
        .graveyard = &graveyard_,
        .options = {
            .prefill_chunk = 100, .resume_checkpoint_pages = checkpoint, .handoff_timeout = step}};
    auto worker = prefill::PrefillWorker::Create(&pc);
    if (!worker.ok()) return worker.status();
    prefill::PrefillRequest p{.request_id = r.request_id,
                              .prompt = r.prompt,
                              .tenant = r.tenant,
                              .cached = r.cached,
                              .target = dest,
                              .skip_publish = !publish};
    auto done = (*worker)->Run(p, absl::Now() + absl::Seconds(60), nullptr);
    (*worker)->WaitIdle();  // its pages are in the pool before the decode side looks
    return done;
  }
  // Prefill worker -> transport -> decode session, with a verified handoff.
  DecodeOutcome Disaggregated(const DecodeRequest& r, bool publish, int64_t checkpoint = 4,
                              prefill::PrefillDone* done_out = nullptr) {
    auto s = Session(r);
    auto dest = s->Start();
    EXPECT_TRUE(dest.ok() && dest->valid());
    auto done = Prefill(r, *dest, prefill_transport_.get(), absl::Seconds(20), publish, checkpoint);
    EXPECT_TRUE(done.ok()) << done.status();
    if (!done.ok()) return {};
    if (done_out) *done_out = *done;
    EXPECT_TRUE(
        s->OnPrefillResult({.kv_tokens = done->kv_tokens, .slot_xxh3 = done->slot_xxh3}).ok());
    auto out = s->Run(nullptr);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : DecodeOutcome{};
  }
  std::vector<BlockKey> Keys(const std::vector<int32_t>& tokens) {
    KeyParams kp{
        .model_fingerprint = model().fingerprint(), .layout_id = "v4-fp8-584", .page_tokens = 256};
    auto keys = DeriveRequestKeys(kp, tokens, "acme", 0, nullptr);
    EXPECT_TRUE(keys.ok()) << keys.status();
    return keys.ok() ? *keys : std::vector<BlockKey>{};
  }
};

// The layout: one slot per layer plus the resume slot, each checksummed; the decode side
// imports every layer and the resume state, computes only the last prompt token, samples the
// local tokens; the pages published (the prompt's by the prefill worker, the turn's last by
// the decode session) are the bytes a local computation exports.
TEST_F(DecodeSessionV4Test, VerifiedHandoffMatchesLocalTokensAndPages) {
  const DecodeRequest r = Req(Prompt(500, 1), 40);
  const int layers = static_cast<int>(model().config().num_hidden_layers);
  const model::HandoffLayout layout = model().handoff_layout(499);
  EXPECT_EQ(layout.slots, layers + 1);
  uint64_t want_slot = model::V4ResumeBytes(v4().v4_config(), 499);
  for (int l = 0; l < layers; ++l) {
    want_slot = std::max(want_slot, model::V4LayerRecordBytes(v4().v4_config(), l, 0, 499));
  }
  EXPECT_EQ(layout.slot_bytes, want_slot);
  prefill::PrefillDone done;
  const DecodeOutcome out = Disaggregated(r, /*publish=*/true, 4, &done);
  EXPECT_EQ(out.handoff, HandoffVerdict::kVerified);
  EXPECT_EQ(out.recomputed_tokens, 0);
  EXPECT_EQ(done.kv_tokens, 499);
  EXPECT_EQ(done.slot_xxh3.size(), static_cast<size_t>(layers + 1));
  EXPECT_GT(done.bytes_sent, 0u);
  EXPECT_EQ(out.tokens, Local(r));
  EXPECT_EQ(out.published_pages, 1);  // block 1 (tokens 256..511); block 0 came from prefill

  // The conversation's two full pages in the pool against a local cache of the same tokens.
  std::vector<int32_t> convo = r.prompt;
  convo.insert(convo.end(), out.tokens.begin(), out.tokens.end() - 1);  // the KV the turn has
  const std::vector<BlockKey> keys = Keys(convo);
  ASSERT_EQ(keys.size(), 2u);
  int64_t pinned = 0;
  auto lease = pool_->Pin("local", keys, absl::Seconds(30), "acme", &pinned);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(pinned, 2);
  auto pages = pool_->Read("local", keys, *lease, "", absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(pages.ok()) << pages.status();
  auto local = v4().NewCache();
  ASSERT_TRUE(v4().Prefill(convo, 0, local.get()).ok());
  for (int64_t p = 0; p < 2; ++p) {
    auto got = DecodePage((*pages)[p]);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->has_resume()) << "page " << p << " is a turn or reuse end";
    auto want_bytes = local->ExportPage(p, got->has_resume());
    ASSERT_TRUE(want_bytes.ok()) << want_bytes.status();
    auto want = DecodePage(*want_bytes);
    ASSERT_TRUE(want.ok());
    EXPECT_TRUE(std::ranges::equal(got->kv(), want->kv())) << "page " << p;
    EXPECT_TRUE(std::ranges::equal(got->indexer_keys(), want->indexer_keys())) << "page " << p;
    EXPECT_TRUE(std::ranges::equal(got->resume(), want->resume())) << "page " << p;
  }
}

// The prefill worker resumes mid-chain: the cached run matches 5 pages of an earlier prompt,
// of which the 4th is the last checkpoint with a resume section, so it loads 4 pages, computes
// the rest and hands the whole state over.
TEST_F(DecodeSessionV4Test, PromptResumingMidChainFromACheckpointMatchesLocal) {
  const std::vector<int32_t> first = Prompt(1800, 2);
  Disaggregated(Req(first, 2), /*publish=*/true, /*checkpoint=*/2);
  std::vector<int32_t> second(first.begin(), first.begin() + 1500);
  const std::vector<int32_t> tail = Prompt(300, 3);
  second.insert(second.end(), tail.begin(), tail.end());
  DecodeRequest r = Req(second, 8);
  const std::vector<BlockKey> keys = Keys(second);
  int64_t pinned = 0;
  auto lease = pool_->Pin("local", keys, absl::Seconds(30), "acme", &pinned);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(pinned, 5);  // blocks 0..4 are shared with the first prompt
  r.cached = CachedRun{
      .address = "local", .keys = {keys.begin(), keys.begin() + pinned}, .lease_id = *lease};
  prefill::PrefillDone done;
  const DecodeOutcome out = Disaggregated(r, /*publish=*/false, 2, &done);
  EXPECT_EQ(done.cached_tokens, 1024);  // block 3 is the last checkpoint; block 4 has none
  EXPECT_EQ(done.recomputed_tokens, 1799 - 1024);
  EXPECT_GT(done.bytes_loaded, 0u);
  EXPECT_EQ(out.handoff, HandoffVerdict::kVerified);
  EXPECT_EQ(out.tokens, Local(r));
}

// A handoff killed mid-layer (the first layer's transfer lands half, then hangs): the prefill
// worker fails within its step bound, the router reports no handoff, and the session computes
// the prompt with the local tokens.
TEST_F(DecodeSessionV4Test, HandoffKilledMidLayerFallsBackToLocalCompute) {
  transport::FaultInjectingTransport stall(prefill_transport_.get(), {.stall = 1.0});
  const DecodeRequest r = Req(Prompt(300, 4), 6);
  auto s = Session(r);
  auto dest = s->Start();
  ASSERT_TRUE(dest.ok() && dest->valid());
  auto done = Prefill(r, *dest, &stall, absl::Milliseconds(300));
  EXPECT_TRUE(absl::IsDeadlineExceeded(done.status())) << done.status();
  EXPECT_GE(stall.stats().stalled, 1u);
  ASSERT_TRUE(s->OnPrefillResult({}).ok());
  auto out = s->Run(nullptr);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->handoff, HandoffVerdict::kNone);
  EXPECT_EQ(out->recomputed_tokens, 300);
  EXPECT_EQ(out->tokens, Local(r));
}

// Corrupt bytes in flight (the sender cannot know) and a result whose checksum of one layer or
// of the resume slot is wrong are rejected per slot; the session computes the prompt.
TEST_F(DecodeSessionV4Test, CorruptLayerOrResumeSlotIsRejected) {
  const DecodeRequest r = Req(Prompt(280, 5), 5);
  const std::vector<int32_t> ref = Local(r);
  const int layers = static_cast<int>(model().config().num_hidden_layers);
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant);
    transport::FaultInjectingTransport corrupt(prefill_transport_.get(), {.corrupt = 1.0});
    auto s = Session(r);
    auto dest = s->Start();
    ASSERT_TRUE(dest.ok() && dest->valid());
    auto done = Prefill(
        r, *dest,
        variant == 0 ? static_cast<transport::Transport*>(&corrupt) : prefill_transport_.get());
    ASSERT_TRUE(done.ok()) << done.status();
    PrefillResult res{.kv_tokens = done->kv_tokens, .slot_xxh3 = done->slot_xxh3};
    if (variant == 1) res.slot_xxh3[1] ^= 1;       // a CSA layer
    if (variant == 2) res.slot_xxh3[layers] ^= 1;  // the resume slot
    ASSERT_TRUE(s->OnPrefillResult(res).ok());
    auto out = s->Run(nullptr);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->handoff, HandoffVerdict::kRejected);
    EXPECT_EQ(out->recomputed_tokens, 280);
    EXPECT_EQ(out->tokens, ref);
  }
}

// Slots that pass their checksums but hold bytes the model refuses (a sender bug, not the
// wire) fail the import by name; the session starts over and computes the prompt.
TEST_F(DecodeSessionV4Test, ImportRefusesBadSlotsAndLeavesNothing) {
  const int64_t handed = 299;
  auto src = model().NewSequence(400);
  ASSERT_TRUE(src.ok());
  const std::vector<int32_t> prompt = Prompt(300, 6);
  ASSERT_TRUE((*src)->Prefill(std::span<const int32_t>(prompt).first(handed), 0, 100).ok());
  const model::HandoffLayout layout = model().handoff_layout(handed);
  std::vector<std::vector<uint8_t>> slots(layout.slots,
                                          std::vector<uint8_t>(layout.slot_bytes, 0xFF));
  auto put = [&](const std::vector<model::HandoffPiece>& pieces) {
    for (const auto& p : pieces)
      std::copy(p.bytes.begin(), p.bytes.end(), &slots[p.slot][p.offset]);
  };
  for (int l = 0; l + 1 < layout.slots; ++l) {
    auto pieces = (*src)->LayerHandoffPieces(l, 0, handed, handed);
    ASSERT_TRUE(pieces.ok()) << pieces.status();
    put(*pieces);
  }
  auto fin = (*src)->FinalHandoffPieces(handed);
  ASSERT_TRUE(fin.ok()) << fin.status();
  put(*fin);
  auto import = [&](const std::vector<std::vector<uint8_t>>& s) {
    std::vector<std::span<const uint8_t>> spans(s.begin(), s.end());
    auto dst = model().NewSequence(400);
    EXPECT_TRUE(dst.ok());
    absl::Status st = (*dst)->ImportHandoff(spans, handed);
    return std::make_pair(st, (*dst)->num_tokens());
  };
  auto [ok, n] = import(slots);
  EXPECT_TRUE(ok.ok()) << ok;
  EXPECT_EQ(n, handed);
  std::vector<std::vector<uint8_t>> bad = slots;
  bad[3][5] = 0x7F;  // a NaN e4m3 code in the second CSA layer's first entry
  auto [st, n2] = import(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("layer 3"), std::string::npos) << st;
  EXPECT_EQ(n2, 0);
  bad = slots;
  bad.back()[0] ^= 1;  // the resume payload's magic
  EXPECT_EQ(import(bad).first.code(), absl::StatusCode::kDataLoss);
  bad = slots;
  bad.pop_back();
  EXPECT_EQ(import(bad).first.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kv::decode
