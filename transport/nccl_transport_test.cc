// NCCL page batches on real GPUs. Labelled `gpu`; skips when no (or too few) devices exist.
#include "transport/nccl_transport.h"

#include <cuda_runtime.h>

#include <thread>
#include <vector>

#include "core/hash.h"
#include "gtest/gtest.h"
#include "transport/test_util.h"

namespace kv::transport {
namespace {

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

absl::Time In(absl::Duration d) { return absl::Now() + d; }

struct DeviceBuffer {
  void* p = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t bytes) : n(bytes) { cudaMalloc(&p, bytes); }
  ~DeviceBuffer() { cudaFree(p); }
};

// Sends `pages` random pages from rank `me` to `peer` and receives the mirror set, then
// checks the received bytes against the sender's checksums.
void Exchange(NcclChannel& ch, int peer, uint64_t seed, size_t page, int pages,
              std::vector<uint64_t>* sent_sums, std::vector<char>* received) {
  std::vector<char> host(page * pages);
  testing::FillRandom(host.data(), host.size(), seed);
  DeviceBuffer src(host.size()), dst(host.size());
  ASSERT_NE(src.p, nullptr);
  ASSERT_EQ(cudaMemcpy(src.p, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dst.p, 0xA5, host.size()), cudaSuccess);  // poison
  std::vector<DevicePage> send, recv;
  for (int i = 0; i < pages; ++i) {
    send.push_back({static_cast<char*>(src.p) + i * page, page});
    recv.push_back({static_cast<char*>(dst.p) + i * page, page});
    sent_sums->push_back(Xxh3_64(host.data() + i * page, page));
  }
  auto ticket = ch.PostBatch(peer, send, recv);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  absl::Status st = ch.Wait(*ticket, In(absl::Seconds(30)));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(ch.Release(*ticket).ok());
  received->resize(host.size());
  ASSERT_EQ(cudaMemcpy(received->data(), dst.p, host.size(), cudaMemcpyDeviceToHost), cudaSuccess);
}

TEST(NcclChannel, SingleGpuSelfSendRecv) {
  if (DeviceCount() < 1) GTEST_SKIP() << "no CUDA device";
  uint64_t seed = testing::Seed();
  SCOPED_TRACE(testing::SeedTrace(seed));
  auto id = NcclChannel::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto ch = NcclChannel::Create(*id, 1, 0, 0, In(absl::Seconds(30)));
  ASSERT_TRUE(ch.ok()) << ch.status();
  EXPECT_TRUE((*ch)->capabilities().device_memory);
  EXPECT_FALSE((*ch)->capabilities().one_sided);
  constexpr size_t kPage = 168 << 10;  // one tiny-v3 64-token page
  std::vector<uint64_t> sums;
  std::vector<char> got;
  Exchange(**ch, 0, seed, kPage, 8, &sums, &got);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(Xxh3_64(got.data() + i * kPage, kPage), sums[i]) << i;
  // Bad input is a clear error.
  EXPECT_TRUE(absl::IsInvalidArgument((*ch)->PostBatch(3, {}, {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument((*ch)->PostBatch(0, {{nullptr, 8}}, {}).status()));
  EXPECT_TRUE(absl::IsNotFound((*ch)->Poll(999).status()));
}

TEST(NcclChannel, BadBootstrapInput) {
  EXPECT_TRUE(absl::IsInvalidArgument(
      NcclChannel::Create("short", 2, 0, 0, In(absl::Seconds(1))).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      NcclChannel::Create(std::string(128, 'x'), 2, 5, 0, In(absl::Seconds(1))).status()));
}

TEST(NcclChannel, TwoGpusExchangePages) {
  if (DeviceCount() < 2) {
    GTEST_SKIP() << "needs two CUDA devices, found " << DeviceCount()
                 << "; the two-rank NCCL exchange cannot run here";
  }
  uint64_t seed = testing::Seed();
  SCOPED_TRACE(testing::SeedTrace(seed));
  auto id = NcclChannel::NewUniqueId();
  ASSERT_TRUE(id.ok());
  constexpr size_t kPage = 2621440 / 61 * 61;  // ~2.6 MB DeepSeek-V3 page
  std::vector<uint64_t> sums[2];
  std::vector<char> got[2];
  std::thread ranks[2];
  for (int r = 0; r < 2; ++r) {
    ranks[r] = std::thread([&, r] {
      cudaSetDevice(r);
      auto ch = NcclChannel::Create(*id, 2, r, r, In(absl::Seconds(60)));
      ASSERT_TRUE(ch.ok()) << ch.status();
      Exchange(**ch, 1 - r, seed + r, kPage, 4, &sums[r], &got[r]);
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].size(), kPage * 4);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(Xxh3_64(got[r].data() + i * kPage, kPage), sums[1 - r][i]) << r << " " << i;
    }
  }
}

}  // namespace
}  // namespace kv::transport
