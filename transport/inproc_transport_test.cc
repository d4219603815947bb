#include "transport/inproc_transport.h"

#include <cstring>
#include <random>
#include <vector>

#include "core/clock.h"
#include "core/hash.h"
#include "gtest/gtest.h"
#include "transport/test_util.h"

namespace kv::transport {
namespace {

absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

struct Pair {
  InProcFabric fabric;
  InProcTransport a{&fabric};
  InProcTransport b{&fabric};
};

TEST(InProcTransport, WritesAndReadsVerifiedByChecksum) {
  uint64_t seed = testing::Seed();
  SCOPED_TRACE(testing::SeedTrace(seed));
  Pair p;
  std::vector<char> src(1 << 20), dst(1 << 20);
  testing::FillRandom(src.data(), src.size(), seed);
  testing::Poison(dst.data(), dst.size());
  ASSERT_OK_AND_ASSIGN_T(RegisteredRegion ls,
                         p.a.Register(src.data(), src.size(), MemoryKind::kHost));
  ASSERT_OK_AND_ASSIGN_T(RegisteredRegion rd,
                         p.b.Register(dst.data(), dst.size(), MemoryKind::kHost));
  ASSERT_OK_AND_ASSIGN_T(PeerId peer, p.a.Connect(p.b.address(), Soon()));
  ASSERT_OK_AND_ASSIGN_T(RemoteRegionId remote, p.a.ImportRemoteRegion(peer, rd.packed_key));
  TransferBatch batch{peer, OpKind::kWrite, {}};
  for (uint64_t off = 0; off < src.size(); off += 4096) {
    batch.ops.push_back({ls.id, off, remote, src.size() - 4096 - off, 4096});
  }
  ASSERT_OK_AND_ASSIGN_T(TransferId id, p.a.Prepare(batch));
  ASSERT_OK_AND_ASSIGN_T(TransferStatus st, p.a.Poll(id));
  EXPECT_EQ(st.state, TransferState::kPrepared);
  ASSERT_TRUE(p.a.Post(id, Soon()).ok());
  ASSERT_TRUE(p.a.Wait(id, Soon()).ok());
  for (uint64_t off = 0; off < src.size(); off += 4096) {
    ASSERT_EQ(Xxh3_64(src.data() + off, 4096), Xxh3_64(dst.data() + src.size() - 4096 - off, 4096))
        << "page at " << off;
  }
  ASSERT_TRUE(p.a.Release(id).ok());
  EXPECT_EQ(*p.a.GetRegionState(ls.id), RegionState::kIdle);

  // Read it back into a poisoned local buffer.
  std::vector<char> back(src.size());
  testing::Poison(back.data(), back.size());
  ASSERT_OK_AND_ASSIGN_T(RegisteredRegion lb,
                         p.a.Register(back.data(), back.size(), MemoryKind::kHost));
  ASSERT_OK_AND_ASSIGN_T(TransferId rid,
                         p.a.Prepare({peer, OpKind::kRead, {{lb.id, 0, remote, 0, dst.size()}}}));
  ASSERT_TRUE(p.a.Post(rid, Soon()).ok());
  ASSERT_TRUE(p.a.Wait(rid, Soon()).ok());
  EXPECT_EQ(Xxh3_64(back.data(), back.size()), Xxh3_64(dst.data(), dst.size()));
  EXPECT_TRUE(p.a.Release(rid).ok());
  EXPECT_TRUE(p.a.Deregister(lb.id).ok());
  EXPECT_TRUE(absl::IsNotFound(p.a.Deregister(lb.id)));
}

TEST(InProcTransport, BadInputIsAClearError) {
  Pair p;
  std::vector<char> buf(4096, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(p.a.Register(nullptr, 10, MemoryKind::kHost).status()));
  EXPECT_TRUE(absl::IsUnimplemented(p.a.Register(buf.data(), 10, MemoryKind::kDevice).status()));
  ASSERT_OK_AND_ASSIGN_T(RegisteredRegion r,
                         p.a.Register(buf.data(), buf.size(), MemoryKind::kHost));
  ASSERT_OK_AND_ASSIGN_T(RegisteredRegion rb,
                         p.b.Register(buf.data(), buf.size(), MemoryKind::kHost));
  EXPECT_TRUE(absl::IsInvalidArgument(p.a.Connect("tcp://nowhere", Soon()).status()));
  EXPECT_TRUE(absl::IsUnavailable(p.a.Connect("inproc:999:1", Soon()).status()));
  ASSERT_OK_AND_ASSIGN_T(PeerId peer, p.a.Connect(p.b.address(), Soon()));
  EXPECT_EQ(*p.a.Connect(p.b.address(), Soon()), peer);
  std::string bad_key = rb.packed_key;
  bad_key[20] ^= 1;
  EXPECT_TRUE(absl::IsInvalidArgument(p.a.ImportRemoteRegion(peer, bad_key).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(p.a.ImportRemoteRegion(peer, "KVRK").status()));
  ASSERT_OK_AND_ASSIGN_T(RemoteRegionId remote, p.a.ImportRemoteRegion(peer, rb.packed_key));
  // Out of bounds locally and remotely, empty op, unknown remote.
  EXPECT_TRUE(absl::IsInvalidArgument(
      p.a.Prepare({peer, OpKind::kWrite, {{r.id, 4000, remote, 0, 200}}}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      p.a.Prepare({peer, OpKind::kWrite, {{r.id, 0, remote, 4000, 200}}}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      p.a.Prepare({peer, OpKind::kWrite, {{r.id, 0, remote, 0, 0}}}).status()));
  EXPECT_FALSE(p.a.Prepare({peer, OpKind::kWrite, {{r.id, 0, remote + 7, 0, 8}}}).ok());
  ASSERT_OK_AND_ASSIGN_T(TransferId id,
                         p.a.Prepare({peer, OpKind::kWrite, {{r.id, 0, remote, 0, 8}}}));
  EXPECT_TRUE(absl::IsInvalidArgument(p.a.Post(id, absl::InfiniteFuture())));
  EXPECT_TRUE(absl::IsFailedPrecondition(p.a.Wait(id, Soon())));
  EXPECT_TRUE(absl::IsNotFound(p.a.Poll(id + 100).status()));
}

TEST(InProcTransport, TaggedMessagesCarryTheSender) {
  Pair p;
  ASSERT_OK_AND_ASSIGN_T(PeerId peer, p.a.Connect(p.b.address(), Soon()));
  ASSERT_TRUE(p.a.SendTagged(peer, 7, "hello", Soon()).ok());
  ASSERT_TRUE(p.a.SendTagged(peer, 8, "other", Soon()).ok());
  ASSERT_OK_AND_ASSIGN_T(TaggedMessage m, p.b.ReceiveTagged(7, Soon()));
  EXPECT_EQ(m.payload, "hello");
  ASSERT_TRUE(p.b.SendTagged(m.from, 9, "reply", Soon()).ok());
  ASSERT_OK_AND_ASSIGN_T(TaggedMessage r, p.a.ReceiveTagged(9, Soon()));
  EXPECT_EQ(r.payload, "reply");
  EXPECT_EQ(r.from, peer);
  absl::Time t0 = absl::Now();
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      p.b.ReceiveTagged(7, absl::Now() + absl::Milliseconds(50)).status()));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  EXPECT_TRUE(absl::IsInvalidArgument(
      p.a.SendTagged(peer, 1, std::string(kMaxTaggedMessageBytes + 1, 'x'), Soon())));
}

TEST(InProcTransport, PeerDestroyedFailsTransfersAndLiftsQuarantineAtTeardown) {
  InProcFabric fabric;
  InProcTransport a(&fabric);
  std::vector<char> src(8192, 3), dst(8192);
  ASSERT_OK_AND_ASSIGN_T(RegisteredRegion ls,
                         a.Register(src.data(), src.size(), MemoryKind::kHost));
  PeerId peer;
  RemoteRegionId remote;
  {
    InProcTransport b(&fabric);
    ASSERT_OK_AND_ASSIGN_T(RegisteredRegion rd,
                           b.Register(dst.data(), dst.size(), MemoryKind::kHost));
    ASSERT_OK_AND_ASSIGN_T(peer, a.Connect(b.address(), Soon()));
    ASSERT_OK_AND_ASSIGN_T(remote, a.ImportRemoteRegion(peer, rd.packed_key));
  }
  // The peer is gone: Prepare refuses the unknown peer.
  EXPECT_TRUE(
      absl::IsNotFound(a.Prepare({peer, OpKind::kWrite, {{ls.id, 0, remote, 0, 8}}}).status()));
  EXPECT_EQ(*a.GetRegionState(ls.id), RegionState::kIdle);
  EXPECT_TRUE(a.Deregister(ls.id).ok());
}

}  // namespace
}  // namespace kv::transport
