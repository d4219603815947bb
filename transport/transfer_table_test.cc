#include "transport/transfer_table.h"

#include <thread>

#include "core/clock.h"
#include "gtest/gtest.h"
#include "transport/remote_key.h"

namespace kv::transport {
namespace {

TEST(TransferTable, LifecycleAndQuarantineOnQuiescence) {
  FakeClock clock;
  TransferTable t(&clock);
  char buf[64];
  RegionId r = t.AddRegion(buf, sizeof(buf), MemoryKind::kHost, nullptr);
  TransferId id = t.AddTransfer({1, OpKind::kWrite, {{r, 0, 1, 0, 8}, {r, 8, 1, 0, 8}}});
  EXPECT_EQ(t.Poll(id)->state, TransferState::kPrepared);
  ASSERT_TRUE(t.Post(id, clock.Now() + absl::Seconds(1)).ok());
  EXPECT_EQ(*t.StateOf(r), RegionState::kInUse);
  EXPECT_TRUE(absl::IsFailedPrecondition(t.RemoveRegion(r).status()));
  t.OpDone(id);
  // The deadline passes with one op outstanding: failed, quarantined, not removable.
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(t.ExpireOverdue().size(), 1u);
  EXPECT_EQ(t.Poll(id)->state, TransferState::kFailed);
  EXPECT_TRUE(absl::IsDeadlineExceeded(t.Poll(id)->error));
  EXPECT_EQ(*t.StateOf(r), RegionState::kQuarantined);
  EXPECT_TRUE(t.Release(id).ok());  // release is not proof of quiescence
  EXPECT_EQ(*t.StateOf(r), RegionState::kQuarantined);
  t.OpDone(id);  // the last op reports: quiescent
  EXPECT_EQ(*t.StateOf(r), RegionState::kIdle);
  EXPECT_TRUE(t.RemoveRegion(r).ok());
}

TEST(TransferTable, PeerFailureQuarantinesUntilTeardown) {
  FakeClock clock;
  TransferTable t(&clock);
  char buf[64];
  RegionId r = t.AddRegion(buf, sizeof(buf), MemoryKind::kHost, nullptr);
  TransferId id = t.AddTransfer({7, OpKind::kRead, {{r, 0, 1, 0, 8}}});
  ASSERT_TRUE(t.Post(id, clock.Now() + absl::Seconds(1)).ok());
  t.Finish(id, absl::UnavailableError("peer died"), LiftPolicy::kOnTeardown);
  t.OpDone(id);
  EXPECT_EQ(*t.StateOf(r), RegionState::kQuarantined);
  t.PeerTornDown(7, absl::UnavailableError("closed"));
  EXPECT_EQ(*t.StateOf(r), RegionState::kIdle);
}

TEST(TransferTable, WaitIsBoundedByItsDeadline) {
  FakeClock clock;
  TransferTable t(&clock);
  char buf[8];
  RegionId r = t.AddRegion(buf, sizeof(buf), MemoryKind::kHost, nullptr);
  TransferId id = t.AddTransfer({1, OpKind::kWrite, {{r, 0, 1, 0, 8}}});
  ASSERT_TRUE(t.Post(id, clock.Now() + absl::Hours(1)).ok());
  std::thread advance([&] {
    absl::SleepFor(absl::Milliseconds(30));
    clock.Advance(absl::Seconds(2));
  });
  absl::Status st = t.Wait(id, clock.Now() + absl::Seconds(1));
  advance.join();
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
  EXPECT_EQ(t.Poll(id)->state, TransferState::kInProgress);  // the wait did not end it
}

TEST(RemoteKey, RoundTripAndRejectsDamage) {
  RemoteKey k{.backend = BackendKind::kUcx,
              .region = 9,
              .base = 0x1000,
              .length = 77,
              .blob = "rkey-bytes"};
  std::string packed = PackRemoteKey(k);
  auto back = UnpackRemoteKey(packed, BackendKind::kUcx);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->region, 9u);
  EXPECT_EQ(back->base, 0x1000u);
  EXPECT_EQ(back->length, 77u);
  EXPECT_EQ(back->blob, "rkey-bytes");
  EXPECT_TRUE(absl::IsInvalidArgument(UnpackRemoteKey(packed, BackendKind::kInProc).status()));
  for (size_t i = 0; i < packed.size(); ++i) {
    std::string bad = packed;
    bad[i] ^= 0x10;
    EXPECT_FALSE(UnpackRemoteKey(bad, BackendKind::kUcx).ok()) << "flip at " << i;
  }
  EXPECT_FALSE(UnpackRemoteKey(packed.substr(0, packed.size() - 1), BackendKind::kUcx).ok());
}

}  // namespace
}  // namespace kv::transport
