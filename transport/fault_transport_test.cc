#include "transport/fault_transport.h"

#include <vector>

#include "core/hash.h"
#include "core/status_macros.h"
#include "gtest/gtest.h"
#include "transport/inproc_transport.h"
#include "transport/test_util.h"

namespace kv::transport {
namespace {

constexpr size_t kPage = 16 << 10;
constexpr int kPages = 8;

absl::Time In(absl::Duration d) { return absl::Now() + d; }

// A sender behind the fault wrapper writes kPages pages to a receiver, which verifies each
// page against the checksum the sender announced (as the page format does).
class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = testing::Seed();
    src_.resize(kPage * kPages);
    dst_.resize(kPage * kPages);
    testing::FillRandom(src_.data(), src_.size(), seed_);
    for (int i = 0; i < kPages; ++i) sums_.push_back(Xxh3_64(src_.data() + i * kPage, kPage));
  }
  void Start(FaultConfig cfg) {
    wrapped_ = std::make_unique<FaultInjectingTransport>(&a_, cfg);
    testing::Poison(dst_.data(), dst_.size());
    auto ls = wrapped_->Register(src_.data(), src_.size(), MemoryKind::kHost);
    auto rd = b_.Register(dst_.data(), dst_.size(), MemoryKind::kHost);
    ASSERT_TRUE(ls.ok() && rd.ok());
    local_ = ls->id;
    auto peer = wrapped_->Connect(b_.address(), In(absl::Seconds(5)));
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = *peer;
    auto remote = wrapped_->ImportRemoteRegion(peer_, rd->packed_key);
    ASSERT_TRUE(remote.ok());
    remote_ = *remote;
  }
  TransferBatch Batch() {
    TransferBatch b{peer_, OpKind::kWrite, {}};
    for (int i = 0; i < kPages; ++i)
      b.ops.push_back({local_, i * kPage, remote_, i * kPage, kPage});
    return b;
  }
  // Pages whose bytes match the announced checksum: what the receiver would accept.
  int AcceptedPages() {
    int ok = 0;
    for (int i = 0; i < kPages; ++i) ok += Xxh3_64(dst_.data() + i * kPage, kPage) == sums_[i];
    return ok;
  }
  absl::Status RunOne(absl::Duration deadline) {
    auto id = wrapped_->Prepare(Batch());
    if (!id.ok()) return id.status();
    absl::Status st = wrapped_->Post(*id, In(deadline));
    if (st.ok()) st = wrapped_->Wait(*id, In(absl::Seconds(10)));
    EXPECT_TRUE(wrapped_->Release(*id).ok());
    return st;
  }

  uint64_t seed_;
  InProcFabric fabric_;
  InProcTransport a_{&fabric_};
  InProcTransport b_{&fabric_};
  std::unique_ptr<FaultInjectingTransport> wrapped_;
  std::vector<char> src_, dst_;
  std::vector<uint64_t> sums_;
  RegionId local_ = 0;
  PeerId peer_ = 0;
  RemoteRegionId remote_ = 0;
};

TEST_F(FaultTest, NoFaultDeliversEveryPage) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_});
  EXPECT_TRUE(RunOne(absl::Seconds(5)).ok());
  EXPECT_EQ(AcceptedPages(), kPages);
}

TEST_F(FaultTest, DropEndsAsDeadlineExceededAndNothingIsAccepted) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_, .drop = 1.0});
  absl::Time t0 = absl::Now();
  absl::Status st = RunOne(absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
  EXPECT_TRUE(IsRetryable(st));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  EXPECT_EQ(AcceptedPages(), 0);
  EXPECT_EQ(wrapped_->stats().dropped, 1u);
}

TEST_F(FaultTest, StallEndsAsDeadlineExceededAndPartialDataIsRejected) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_, .stall = 1.0});
  absl::Status st = RunOne(absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
  // The first half landed; the receiver accepts exactly those and rejects the rest.
  EXPECT_EQ(AcceptedPages(), kPages / 2);
}

TEST_F(FaultTest, DelayWithinDeadlineSucceedsPastDeadlineFails) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_, .delay = 1.0, .delay_by = absl::Milliseconds(30)});
  absl::Time t0 = absl::Now();
  EXPECT_TRUE(RunOne(absl::Seconds(5)).ok());
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(30));
  EXPECT_EQ(AcceptedPages(), kPages);
  wrapped_.reset();
  Start(FaultConfig{.seed = seed_, .delay = 1.0, .delay_by = absl::Seconds(2)});
  absl::Status st = RunOne(absl::Milliseconds(50));
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
}

TEST_F(FaultTest, CorruptionIsCaughtByTheReceiversChecksum) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_, .corrupt = 1.0});
  std::vector<char> before(src_);
  // The transport cannot see it: the caller gets OK ...
  EXPECT_TRUE(RunOne(absl::Seconds(5)).ok());
  // ... and the receiver rejects exactly one page; the sender's source is untouched.
  EXPECT_EQ(AcceptedPages(), kPages - 1);
  EXPECT_EQ(before, src_);
}

TEST_F(FaultTest, CorruptedReadIsCaughtByChecksum) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_, .corrupt = 1.0});
  std::memcpy(dst_.data(), src_.data(), src_.size());  // the remote holds good pages
  std::vector<char> back(src_.size());
  testing::Poison(back.data(), back.size());
  auto lb = wrapped_->Register(back.data(), back.size(), MemoryKind::kHost);
  ASSERT_TRUE(lb.ok());
  auto id = wrapped_->Prepare({peer_, OpKind::kRead, {{lb->id, 0, remote_, 0, back.size()}}});
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(wrapped_->Post(*id, In(absl::Seconds(5))).ok());
  ASSERT_TRUE(wrapped_->Wait(*id, In(absl::Seconds(5))).ok());
  int good = 0;
  for (int i = 0; i < kPages; ++i) good += Xxh3_64(back.data() + i * kPage, kPage) == sums_[i];
  EXPECT_EQ(good, kPages - 1);
}

TEST_F(FaultTest, FailOnConnectIsRetryableUnavailable) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  wrapped_ = std::make_unique<FaultInjectingTransport>(
      &a_, FaultConfig{.seed = seed_, .fail_connect = 1.0});
  absl::StatusOr<PeerId> p = wrapped_->Connect(b_.address(), In(absl::Seconds(1)));
  EXPECT_TRUE(absl::IsUnavailable(p.status())) << p.status();
  EXPECT_TRUE(IsRetryable(p.status()));
  EXPECT_NE(p.status().message().find("injected"), std::string_view::npos);
}

TEST_F(FaultTest, DecisionsAreDeterministicFromTheSeed) {
  FaultConfig cfg{.seed = seed_, .drop = 0.2, .delay = 0.2, .stall = 0.2, .corrupt = 0.2};
  FaultInjectingTransport x(&a_, cfg), y(&a_, cfg);
  int kinds[5] = {};
  for (uint64_t n = 0; n < 1000; ++n) {
    ASSERT_EQ(x.DecideFault(n), y.DecideFault(n));
    kinds[static_cast<int>(x.DecideFault(n))]++;
  }
  for (int k = 0; k < 5; ++k) EXPECT_GT(kinds[k], 50) << FaultName(static_cast<Fault>(k));
  cfg.seed ^= 1;
  FaultInjectingTransport z(&a_, cfg);
  int differ = 0;
  for (uint64_t n = 0; n < 1000; ++n) differ += x.DecideFault(n) != z.DecideFault(n);
  EXPECT_GT(differ, 100);
}

TEST_F(FaultTest, CancelQuarantinesUntilQuiescent) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  Start(FaultConfig{.seed = seed_, .stall = 1.0});
  auto id = wrapped_->Prepare(Batch());
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(wrapped_->Post(*id, In(absl::Seconds(5))).ok());
  ASSERT_TRUE(wrapped_->Cancel(*id).ok());
  absl::Status st = wrapped_->Wait(*id, In(absl::Seconds(5)));
  EXPECT_TRUE(absl::IsCancelled(st)) << st;
  EXPECT_TRUE(wrapped_->Release(*id).ok());
  EXPECT_LT(AcceptedPages(), kPages);
}

}  // namespace
}  // namespace kv::transport
