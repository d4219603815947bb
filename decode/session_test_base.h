// The world of a decode-session test, shared by decode_session_test (tiny-v3) and
// decode_session_v4_test (tiny-v4): one seeded model per suite, an in-memory tiered store and
// its page pool, the prefill and decode sides' in-process transports on one fabric, and the
// session's DecodeContext over them.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "decode/decode_session.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/local_page_pool.h"
#include "kvstore/tiered_store.h"
#include "model/config.h"
#include "model/serving_model.h"
#include "model/test_util.h"
#include "model/weights.h"
#include "transport/inproc_transport.h"

namespace kv::decode::testing {

class SessionTestBase : public ::testing::Test {
 protected:
  // Writes a random `preset` model (seed `seed`) and loads it for serving; call from
  // SetUpTestSuite. `layout` empty: the model's default.
  static void LoadModel(const std::string& preset, uint64_t seed, const std::string& layout,
                        int64_t max_context) {
    const std::string dir = model::testing::FreshTempDir("decode-session-" + preset);
    ASSERT_TRUE(model::WriteRandomModel(*model::PresetConfig(preset), seed, dir).ok());
    auto m = model::LoadServingModel(dir, layout, max_context, 1);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = new model::LoadedModel(*std::move(m));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  // A fresh store, pool and transports; the sessions compute in chunks of `prefill_chunk`.
  void OpenWorld(int64_t prefill_chunk) {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[1] = std::make_unique<MemTier>(TierKind::kHost, 256ull << 20);
    auto store = TieredStore::Open({}, std::move(tiers));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    pool_ = std::make_unique<LocalPagePool>(store_.get());
    prefill_transport_ = std::make_unique<transport::InProcTransport>(&fabric_);
    decode_transport_ = std::make_unique<transport::InProcTransport>(&fabric_);
    ctx_ = DecodeContext{.model = &model(),
                         .pool = pool_.get(),
                         .transport = decode_transport_.get(),
                         .graveyard = &graveyard_,
                         .options = {.prefill_chunk = prefill_chunk}};
  }
  static const model::ServingModel& model() { return *model_->serving; }
  std::unique_ptr<DecodeSession> Session(DecodeRequest r,
                                         absl::Time deadline = absl::InfiniteFuture()) {
    auto s = DecodeSession::Create(&ctx_, std::move(r), deadline);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  static inline model::LoadedModel* model_ = nullptr;
  transport::RegionGraveyard graveyard_;  // outlives the transports
  transport::InProcFabric fabric_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<LocalPagePool> pool_;
  std::unique_ptr<transport::InProcTransport> prefill_transport_, decode_transport_;
  DecodeContext ctx_;
};

}  // namespace kv::decode::testing
