// Two real processes over UCX on loopback: this test and transport_ucx_peer (ucx_peer.h),
// with UCX_TLS forced to TCP (UCX_NET_DEVICES=lo) and to shared memory.
#include "transport/ucx_transport.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/fault_transport.h"
#include "transport/test_util.h"
#include "transport/ucx_peer.h"

namespace kv::transport {
namespace {

absl::Time In(absl::Duration d) { return absl::Now() + d; }

// The peer process, driven over pipes (ucx_peer.h).
class PeerProcess : public ChildProcess {
 public:
  explicit PeerProcess(size_t bytes)
      : ChildProcess({KV_UCX_PEER_PATH, "--bytes=" + std::to_string(bytes)}) {}
};

std::string Unhex(const std::string& line, const std::string& prefix) {
  std::string out;
  if (line.rfind(prefix, 0) != 0 || !FromHex(line.substr(prefix.size()), &out)) return "";
  return out;
}

std::vector<uint64_t> ParseSums(const std::string& line) {
  std::vector<uint64_t> v;
  std::istringstream is(line);
  std::string word;
  is >> word;
  uint64_t x;
  while (is >> x) v.push_back(x);
  return v;
}

struct TlsCase {
  const char* name;
  const char* tls;
  const char* devices;  // nullptr: leave UCX_NET_DEVICES unset
  UcxOptions::Protocol protocol;
  UcxOptions::Protocol expected;  // what kAuto must pick on this transport
};

class UcxTwoProcess : public ::testing::TestWithParam<TlsCase> {
 protected:
  static constexpr size_t kPeerBytes = 64 << 20;

  void SetUp() override {
    seed_ = testing::Seed();
    setenv("UCX_TLS", GetParam().tls, 1);
    if (GetParam().devices) {
      setenv("UCX_NET_DEVICES", GetParam().devices, 1);
    } else {
      unsetenv("UCX_NET_DEVICES");
    }
    peer_ = std::make_unique<PeerProcess>(kPeerBytes);
    ASSERT_TRUE(peer_->ok());
    std::string addr = Unhex(peer_->ReadLine(), "ADDR ");
    std::string key = Unhex(peer_->ReadLine(), "KEY ");
    ASSERT_FALSE(addr.empty()) << "peer did not start";
    ASSERT_FALSE(key.empty());
    auto t = UcxTransport::Create(UcxOptions{.protocol = GetParam().protocol});
    ASSERT_TRUE(t.ok()) << t.status();
    t_ = std::move(*t);
    auto p = t_->Connect(addr, In(absl::Seconds(10)));
    ASSERT_TRUE(p.ok()) << p.status();
    peer_id_ = *p;
    auto r = t_->ImportRemoteRegion(peer_id_, key);
    ASSERT_TRUE(r.ok()) << r.status();
    remote_ = *r;
  }
  void TearDown() override {
    t_.reset();
    peer_.reset();
  }

  // Writes `pages` pages of `page` bytes from `src` (registered as `local`) to the peer's
  // region start, in one batch, and returns the status.
  absl::Status WritePages(RegionId local, size_t page, size_t pages, absl::Duration deadline) {
    TransferBatch b{peer_id_, OpKind::kWrite, {}};
    for (size_t i = 0; i < pages; ++i) b.ops.push_back({local, i * page, remote_, i * page, page});
    auto id = t_->Prepare(b);
    if (!id.ok()) return id.status();
    absl::Status st = t_->Post(*id, In(deadline));
    if (st.ok()) st = t_->Wait(*id, In(deadline + absl::Seconds(5)));
    (void)t_->Release(*id);
    return st;
  }
  void ExpectPeerSums(const char* src, size_t page, size_t pages) {
    std::vector<uint64_t> got =
        ParseSums(peer_->Call("SUMS 0 " + std::to_string(page) + " " + std::to_string(pages)));
    ASSERT_EQ(got.size(), pages);
    for (size_t i = 0; i < pages; ++i) {
      ASSERT_EQ(got[i], Xxh3_64(src + i * page, page)) << "page " << i;
    }
  }

  uint64_t seed_ = 0;
  std::unique_ptr<PeerProcess> peer_;
  std::unique_ptr<UcxTransport> t_;
  PeerId peer_id_ = 0;
  RemoteRegionId remote_ = 0;
};

TEST_P(UcxTwoProcess, ThousandsOfSmallTransfersVerifiedByChecksum) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  constexpr size_t kPage = 1024, kCount = 3000;
  std::vector<char> src(kPage * kCount);
  testing::FillRandom(src.data(), src.size(), seed_);
  auto reg = t_->Register(src.data(), src.size(), MemoryKind::kHost);
  ASSERT_TRUE(reg.ok()) << reg.status();
  std::vector<TransferId> ids;
  for (size_t i = 0; i < kCount; ++i) {
    auto id =
        t_->Prepare({peer_id_, OpKind::kWrite, {{reg->id, i * kPage, remote_, i * kPage, kPage}}});
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(t_->Post(*id, In(absl::Seconds(20))).ok());
    ids.push_back(*id);
  }
  for (TransferId id : ids) {
    absl::Status st = t_->Wait(id, In(absl::Seconds(30)));
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(t_->Release(id).ok());
  }
  ExpectPeerSums(src.data(), kPage, kCount);
  EXPECT_EQ(*t_->GetRegionState(reg->id), RegionState::kIdle);
  EXPECT_TRUE(t_->Deregister(reg->id).ok());
}

TEST_P(UcxTwoProcess, LargeBatchWriteThenReadBack) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  constexpr size_t kPage = 2 << 20, kPages = 16;
  std::vector<char> src(kPage * kPages), back(kPage * kPages);
  testing::FillRandom(src.data(), src.size(), seed_);
  testing::Poison(back.data(), back.size());
  auto ls = t_->Register(src.data(), src.size(), MemoryKind::kHost);
  auto lb = t_->Register(back.data(), back.size(), MemoryKind::kHost);
  ASSERT_TRUE(ls.ok() && lb.ok());
  absl::Status st = WritePages(ls->id, kPage, kPages, absl::Seconds(20));
  ASSERT_TRUE(st.ok()) << st;
  ExpectPeerSums(src.data(), kPage, kPages);
  TransferBatch rb{peer_id_, OpKind::kRead, {}};
  for (size_t i = 0; i < kPages; ++i)
    rb.ops.push_back({lb->id, i * kPage, remote_, i * kPage, kPage});
  auto id = t_->Prepare(rb);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(t_->Post(*id, In(absl::Seconds(20))).ok());
  st = t_->Wait(*id, In(absl::Seconds(25)));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(Xxh3_64(back.data(), back.size()), Xxh3_64(src.data(), src.size()));
  EXPECT_TRUE(t_->Release(*id).ok());
}

TEST_P(UcxTwoProcess, TaggedMessagesRoundTrip) {
  peer_->Send("ECHO 42");
  std::string payload(3000, 'k');
  payload[7] = 'x';
  ASSERT_TRUE(t_->SendTagged(peer_id_, 42, payload, In(absl::Seconds(5))).ok());
  auto m = t_->ReceiveTagged(43, In(absl::Seconds(10)));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->payload, payload);
  EXPECT_EQ(m->from, peer_id_);
  EXPECT_EQ(peer_->ReadLine(), "OK");
}

TEST_P(UcxTwoProcess, ProtocolFollowsTheTransport) {
  // Without a zero-copy put lane (TCP: emulated; posix: bounce copies) kAuto picks tag
  // rendezvous; a forced protocol is kept.
  auto p = t_->PeerProtocol(peer_id_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, GetParam().expected) << ProtocolName(*p);
  EXPECT_TRUE(absl::IsNotFound(t_->PeerProtocol(peer_id_ + 5).status()));
}

TEST_P(UcxTwoProcess, BadInputIsRejected) {
  std::vector<char> buf(4096, 1);
  auto r = t_->Register(buf.data(), buf.size(), MemoryKind::kHost);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(t_->Connect("garbage", In(absl::Seconds(1))).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      t_->Connect(t_->address(), In(absl::Seconds(1))).status()));  // itself
  EXPECT_TRUE(absl::IsInvalidArgument(
      t_->Prepare({peer_id_, OpKind::kWrite, {{r->id, 0, remote_, kPeerBytes - 8, 16}}}).status()));
  EXPECT_TRUE(absl::IsNotFound(
      t_->Prepare({peer_id_ + 99, OpKind::kWrite, {{r->id, 0, remote_, 0, 16}}}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(t_->ImportRemoteRegion(peer_id_, "KVRKxx").status()));
  if (!t_->capabilities().device_memory) {
    EXPECT_TRUE(
        absl::IsUnimplemented(t_->Register(buf.data(), buf.size(), MemoryKind::kDevice).status()));
  }
}

TEST_P(UcxTwoProcess, CancelMidBatchQuarantinesUntilQuiescent) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  constexpr size_t kPage = 64 << 10, kPages = kPeerBytes / kPage;
  std::vector<char> src(kPage * kPages);
  testing::FillRandom(src.data(), src.size(), seed_);
  auto reg = t_->Register(src.data(), src.size(), MemoryKind::kHost);
  ASSERT_TRUE(reg.ok());
  TransferBatch b{peer_id_, OpKind::kWrite, {}};
  for (size_t i = 0; i < kPages; ++i)
    b.ops.push_back({reg->id, i * kPage, remote_, i * kPage, kPage});
  int cancelled = 0;
  for (int attempt = 0; attempt < 5 && cancelled == 0; ++attempt) {
    auto id = t_->Prepare(b);
    ASSERT_TRUE(id.ok());
    ASSERT_TRUE(t_->Post(*id, In(absl::Seconds(20))).ok());
    ASSERT_TRUE(t_->Cancel(*id).ok());
    absl::Status st = t_->Wait(*id, In(absl::Seconds(20)));
    if (absl::IsCancelled(st)) {
      cancelled++;
      // Not idle until the backend proves every request quiescent.
      auto state = t_->GetRegionState(reg->id);
      ASSERT_TRUE(state.ok());
      if (*state != RegionState::kIdle) {
        EXPECT_TRUE(absl::IsFailedPrecondition(t_->Deregister(reg->id)));
      }
    } else {
      ASSERT_TRUE(st.ok()) << st;  // finished before the cancel landed; try again
    }
    ASSERT_TRUE(t_->Release(*id).ok());
  }
  EXPECT_EQ(cancelled, 1) << "every batch completed before its cancel";
  absl::Time limit = In(absl::Seconds(20));
  while (*t_->GetRegionState(reg->id) != RegionState::kIdle && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(*t_->GetRegionState(reg->id), RegionState::kIdle);
  // The endpoint is still usable: a full write lands intact.
  absl::Status st = WritePages(reg->id, kPage, kPages, absl::Seconds(20));
  ASSERT_TRUE(st.ok()) << st;
  ExpectPeerSums(src.data(), kPage, kPages);
  EXPECT_TRUE(t_->Deregister(reg->id).ok());
}

TEST_P(UcxTwoProcess, PeerKilledMidTransferFailsWithinDeadlineAndQuarantinesUntilTeardown) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  constexpr size_t kPage = 1 << 20, kPages = 32;
  std::vector<char> src(kPage * kPages);
  testing::FillRandom(src.data(), src.size(), seed_);
  auto reg = t_->Register(src.data(), src.size(), MemoryKind::kHost);
  ASSERT_TRUE(reg.ok());
  TransferBatch b{peer_id_, OpKind::kWrite, {}};
  for (size_t i = 0; i < kPages; ++i)
    b.ops.push_back({reg->id, i * kPage, remote_, i * kPage, kPage});
  const absl::Duration kDeadline = absl::Seconds(4);
  absl::Status failure;
  absl::Time t0 = absl::Now();
  for (int i = 0; i < 1000 && failure.ok(); ++i) {
    auto id = t_->Prepare(b);
    if (!id.ok()) {
      failure = id.status();
      break;
    }
    absl::Time posted = absl::Now();
    absl::Status st = t_->Post(*id, posted + kDeadline);
    if (i == 0) peer_->Kill();  // mid-transfer
    if (st.ok()) st = t_->Wait(*id, posted + kDeadline + absl::Seconds(2));
    if (!st.ok()) {
      failure = st;
      EXPECT_LT(absl::Now() - posted, kDeadline + absl::Seconds(1)) << st;
      auto polled = t_->Poll(*id);
      ASSERT_TRUE(polled.ok());
      EXPECT_EQ(polled->state, TransferState::kFailed) << st;
      // Quarantined: not reusable until the endpoint is torn down.
      EXPECT_EQ(*t_->GetRegionState(reg->id), RegionState::kQuarantined);
      EXPECT_TRUE(absl::IsFailedPrecondition(t_->Deregister(reg->id)));
    }
    (void)t_->Release(*id);
  }
  ASSERT_FALSE(failure.ok()) << "transfers to a killed peer kept succeeding";
  EXPECT_TRUE(absl::IsUnavailable(failure) || absl::IsDeadlineExceeded(failure)) << failure;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(30));
  absl::Time td = absl::Now();
  EXPECT_TRUE(t_->Disconnect(peer_id_).ok());
  EXPECT_LT(absl::Now() - td, absl::Seconds(5));
  EXPECT_EQ(*t_->GetRegionState(reg->id), RegionState::kIdle);
  EXPECT_TRUE(t_->Deregister(reg->id).ok());
}

TEST_P(UcxTwoProcess, InjectedFaultsOverUcxAreCaughtAndNeverAccepted) {
  SCOPED_TRACE(testing::SeedTrace(seed_));
  constexpr size_t kPage = 256 << 10, kPages = 8;
  std::vector<char> src(kPage * kPages);
  testing::FillRandom(src.data(), src.size(), seed_);
  // Corruption in flight: the transport reports success; the receiver's checksums reject
  // exactly the damaged page.
  {
    FaultInjectingTransport f(t_.get(), FaultConfig{.seed = seed_, .corrupt = 1.0});
    auto reg = f.Register(src.data(), src.size(), MemoryKind::kHost);
    ASSERT_TRUE(reg.ok());
    TransferBatch b{peer_id_, OpKind::kWrite, {}};
    for (size_t i = 0; i < kPages; ++i)
      b.ops.push_back({reg->id, i * kPage, remote_, i * kPage, kPage});
    auto id = f.Prepare(b);
    ASSERT_TRUE(id.ok());
    ASSERT_TRUE(f.Post(*id, In(absl::Seconds(10))).ok());
    ASSERT_TRUE(f.Wait(*id, In(absl::Seconds(15))).ok());
    ASSERT_TRUE(f.Release(*id).ok());
    std::vector<uint64_t> got =
        ParseSums(peer_->Call("SUMS 0 " + std::to_string(kPage) + " " + std::to_string(kPages)));
    ASSERT_EQ(got.size(), kPages);
    int accepted = 0;
    for (size_t i = 0; i < kPages; ++i)
      accepted += got[i] == Xxh3_64(src.data() + i * kPage, kPage);
    EXPECT_EQ(accepted, static_cast<int>(kPages) - 1);
    EXPECT_TRUE(t_->Deregister(reg->id).ok());
  }
  // A dropped batch: DeadlineExceeded at its deadline; nothing landed.
  {
    ASSERT_EQ(peer_->Call("POISON"), "OK");
    FaultInjectingTransport f(t_.get(), FaultConfig{.seed = seed_, .drop = 1.0});
    auto reg = f.Register(src.data(), src.size(), MemoryKind::kHost);
    ASSERT_TRUE(reg.ok());
    auto id = f.Prepare({peer_id_, OpKind::kWrite, {{reg->id, 0, remote_, 0, kPage}}});
    ASSERT_TRUE(id.ok());
    ASSERT_TRUE(f.Post(*id, In(absl::Milliseconds(200))).ok());
    absl::Status st = f.Wait(*id, In(absl::Seconds(10)));
    EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
    std::vector<uint64_t> got = ParseSums(peer_->Call("SUMS 0 " + std::to_string(kPage) + " 1"));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_NE(got[0], Xxh3_64(src.data(), kPage));
    EXPECT_TRUE(f.Release(*id).ok());
  }
}

TEST_P(UcxTwoProcess, WriteIntoADeregisteredRegionIsRejectedByTheTarget) {
  if (GetParam().expected == UcxOptions::Protocol::kRma) {
    GTEST_SKIP() << "one-sided RMA has no target-side check; the rkey stays valid to UCX";
  }
  SCOPED_TRACE(testing::SeedTrace(seed_));
  constexpr size_t kPage = 512 << 10;
  std::vector<char> src(2 * kPage);
  testing::FillRandom(src.data(), src.size(), seed_);
  auto reg = t_->Register(src.data(), src.size(), MemoryKind::kHost);
  ASSERT_TRUE(reg.ok());
  ASSERT_EQ(peer_->Call("DEREG"), "OK");
  auto id = t_->Prepare({peer_id_,
                         OpKind::kWrite,
                         {{reg->id, 0, remote_, 0, kPage}, {reg->id, kPage, remote_, kPage, 64}}});
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(t_->Post(*id, In(absl::Seconds(10))).ok());
  absl::Status st = t_->Wait(*id, In(absl::Seconds(15)));
  EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
  EXPECT_NE(st.message().find("region"), absl::string_view::npos) << st;
  ASSERT_TRUE(t_->Release(*id).ok());
  // The target's engine is still healthy: a tagged round trip works.
  peer_->Send("ECHO 5");
  ASSERT_TRUE(t_->SendTagged(peer_id_, 5, "ping", In(absl::Seconds(5))).ok());
  auto m = t_->ReceiveTagged(6, In(absl::Seconds(10)));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->payload, "ping");
}

INSTANTIATE_TEST_SUITE_P(
    Tls, UcxTwoProcess,
    ::testing::Values(TlsCase{"tcp", "tcp", "lo", UcxOptions::Protocol::kAuto,
                              UcxOptions::Protocol::kTag},
                      TlsCase{"shm", "posix,cma,self", nullptr, UcxOptions::Protocol::kAuto,
                              UcxOptions::Protocol::kTag},
                      TlsCase{"shm_rma", "posix,cma,self", nullptr, UcxOptions::Protocol::kRma,
                              UcxOptions::Protocol::kRma}),
    [](const auto& info) { return std::string(info.param.name); });

// KVSTRATA_UCX_PROTOCOL forces the protocol of a kAuto transport (never of an explicit one)
// and an unknown value is refused at Create, naming it.
TEST(UcxTransport, ProtocolEnvironmentOverride) {
  setenv("UCX_TLS", "posix,cma,self", 1);
  unsetenv("UCX_NET_DEVICES");
  struct Unset {
    ~Unset() { unsetenv("KVSTRATA_UCX_PROTOCOL"); }  // also when an ASSERT returns early
  } unset;
  setenv("KVSTRATA_UCX_PROTOCOL", "bogus", 1);
  auto bad = UcxTransport::Create();
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("\"bogus\""));
  for (const char* forced : {"rma", "tag"}) {
    setenv("KVSTRATA_UCX_PROTOCOL", forced, 1);
    auto a = UcxTransport::Create();
    auto b = UcxTransport::Create(UcxOptions{.protocol = UcxOptions::Protocol::kTag});
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << " " << b.status();
    auto peer = (*a)->Connect((*b)->address(), In(absl::Seconds(10)));
    auto back = (*b)->Connect((*a)->address(), In(absl::Seconds(10)));
    ASSERT_TRUE(peer.ok() && back.ok()) << peer.status() << " " << back.status();
    EXPECT_EQ(ProtocolName(*(*a)->PeerProtocol(*peer)), forced);
    EXPECT_EQ(ProtocolName(*(*b)->PeerProtocol(*back)), "tag");  // explicit: not overridden
  }
}

TEST(UcxTransport, IdleEngineSleeps) {
  auto t = UcxTransport::Create();
  ASSERT_TRUE(t.ok()) << t.status();
  // Let it settle, then measure the process CPU time over an idle interval.
  absl::SleepFor(absl::Milliseconds(50));
  timespec a{}, b{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
  absl::SleepFor(absl::Milliseconds(500));
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
  double cpu = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
  EXPECT_LT(cpu, 0.1) << "an idle transport used " << cpu << " s of CPU in 0.5 s";
}

}  // namespace
}  // namespace kv::transport
