// Fault tests of the nvme tier under the TieredStore (DESIGN.md "Testing", tests/fault):
//   - Crash: a child process (this binary re-executed with --crash-child) publishes pages to
//     the nvme tier at full speed and is killed with SIGKILL at random moments, 20 times.
//     After each kill the store reopens; every page it serves verifies and equals what was
//     written, every page the child saw sealed is served, and nothing that was not sealed
//     is (at most the one page whose seal was in flight, which the child had not logged).
//   - Corruption: random bytes of the RocksDB blob files are flipped. Reads of the affected
//     pages are misses, never wrong bytes, and the quarantine counter counts each of them.
// The seed is printed; KVSTRATA_TEST_SEED=N replays one.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "core/test_seed.h"
#include "gtest/gtest.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

constexpr int kPagesPerChain = 8;
constexpr int kMaxChainsPerChild = 250;
std::string g_self;  // path of this binary, for re-exec

std::vector<testing::TestPage> CrashChain(uint64_t seed, int chain) {
  return testing::MakeChain(seed * 1000003 + chain, "crash", kPagesPerChain, 4, 2);
}

absl::StatusOr<std::unique_ptr<TieredStore>> OpenNvmeStore(const std::string& dir,
                                                           MetricsRegistry* reg) {
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto nv = NvmeTier::Open({.path = dir, .capacity_bytes = 4ull << 30});
  if (!nv.ok()) return nv.status();
  tiers[2] = *std::move(nv);
  return TieredStore::Open({.metrics = reg, .background_threads = 0}, std::move(tiers));
}

// The child: publish chains [first, first + kMaxChainsPerChild) as fast as possible,
// appending "chain page\n" to the seal log after each successful seal.
int CrashChild(const std::string& dir, uint64_t seed, int first) {
  MetricsRegistry reg;
  auto store = OpenNvmeStore(dir, &reg);
  if (!store.ok()) {
    std::fprintf(stderr, "child: %s\n", store.status().ToString().c_str());
    return 2;
  }
  FILE* log = std::fopen((dir + "/../seal.log").c_str(), "a");
  if (log == nullptr) return 3;
  setvbuf(log, nullptr, _IONBF, 0);  // every line reaches the kernel before the next seal
  for (int c = first; c < first + kMaxChainsPerChild; ++c) {
    auto chain = CrashChain(seed, c);
    for (int i = 0; i < kPagesPerChain; ++i) {
      absl::Status st = (*store)->Publish(chain[i].meta, chain[i].bytes);
      if (!st.ok()) {
        std::fprintf(stderr, "child: publish: %s\n", st.ToString().c_str());
        return 4;
      }
      std::fprintf(log, "%d %d\n", c, i);
    }
  }
  return 0;
}

uint64_t Seed() { return kv::testing::TestSeed(); }

TEST(NvmeCrashTest, KillNineDuringPublishServesOnlySealedVerifiedPages) {
  uint64_t seed = Seed();
  SCOPED_TRACE(kv::testing::SeedTrace(seed));
  std::mt19937_64 rng(seed);
  std::string root = testing::FreshTestDir("nvme-crash");
  std::string dir = root + "/db";
  std::filesystem::create_directories(dir);
  absl::flat_hash_map<BlockKey, std::pair<int, int>> expected_at;  // key -> (chain, page)
  absl::flat_hash_map<int, std::vector<testing::TestPage>> chains;
  auto chain_of = [&](int c) -> const std::vector<testing::TestPage>& {
    auto it = chains.find(c);
    if (it == chains.end()) {
      it = chains.emplace(c, CrashChain(seed, c)).first;
      for (int i = 0; i < kPagesPerChain; ++i) expected_at[it->second[i].meta.key] = {c, i};
    }
    return it->second;
  };
  int total_served = 0;
  // A slow child (TSAN, a loaded machine) may need longer than the kill window just to open
  // the store: after a round in which it sealed nothing, the window is stretched.
  useconds_t stretch = 0;
  size_t logged_before = 0;
  for (int round = 0; round < 20; ++round) {
    int first = round * kMaxChainsPerChild;
    for (int c = first; c < first + kMaxChainsPerChild; ++c) chain_of(c);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      std::string s = std::to_string(seed), f = std::to_string(first);
      execl(g_self.c_str(), g_self.c_str(), "--crash-child", dir.c_str(), s.c_str(), f.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    usleep(static_cast<useconds_t>(30000 + rng() % 250000) + stretch);
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "child failed on its own";
    }

    // What the child saw sealed.
    absl::flat_hash_set<BlockKey> logged;
    std::ifstream log(root + "/seal.log");
    int c, i;
    while (log >> c >> i) logged.insert(chain_of(c)[i].meta.key);
    if (logged.size() == logged_before)
      stretch = std::min<useconds_t>(2 * stretch + 100000, 3000000);
    logged_before = logged.size();

    MetricsRegistry reg;
    auto store = OpenNvmeStore(dir, &reg);
    ASSERT_TRUE(store.ok()) << store.status() << " round " << round;
    auto listed = (*store)->tier(TierKind::kNvme)->List();
    ASSERT_TRUE(listed.ok());
    int unlogged = 0;
    absl::flat_hash_set<BlockKey> served;
    for (const PageMeta& m : *listed) {
      auto at = expected_at.find(m.key);
      ASSERT_NE(at, expected_at.end()) << "served a page nobody wrote: " << m.key.Hex();
      const auto& want = chain_of(at->second.first)[at->second.second];
      auto h = (*store)->Pin({&m.key, 1}, absl::Now() + absl::Seconds(30));
      ASSERT_TRUE(h.ok()) << h.status();
      std::vector<uint8_t> dst(want.bytes.size() + 1, 0xEE);
      auto n = (*store)->Read(*h, m.key, dst);
      ASSERT_TRUE(n.ok()) << n.status() << " round " << round;
      dst.resize(*n);
      ASSERT_EQ(dst, want.bytes) << "round " << round;
      ASSERT_TRUE((*store)->Unpin(*h).ok());
      served.insert(m.key);
      if (!logged.contains(m.key)) ++unlogged;
    }
    // A seal that completed just before the kill may not have reached the log yet.
    EXPECT_LE(unlogged, round + 1) << "pages served that the child never saw sealed";
    for (const BlockKey& k : logged) {
      ASSERT_TRUE(served.contains(k)) << "sealed page lost after kill -9: " << k.Hex();
    }
    ASSERT_TRUE((*store)->CheckInvariants().ok());
    total_served = static_cast<int>(served.size());
  }
  std::printf("crash: 20 kills, %d pages served and verified at the end\n", total_served);
  EXPECT_GT(total_served, 0);
}

TEST(NvmeCorruptionTest, FlippedBlobBytesAreMissesNeverWrongBytes) {
  uint64_t seed = Seed();
  SCOPED_TRACE(kv::testing::SeedTrace(seed));
  std::mt19937_64 rng(seed);
  std::string dir = testing::FreshTestDir("nvme-corrupt");
  // Independent one-page chains, so a miss is exactly one quarantined page.
  std::vector<testing::TestPage> pages;
  for (int i = 0; i < 200; ++i) pages.push_back(testing::MakeChain(rng(), "c", 1, 4, 4)[0]);
  {
    auto nv = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(nv.ok());
    NvmeTier* raw = nv->get();
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[2] = *std::move(nv);
    MetricsRegistry reg;
    auto store = TieredStore::Open({.metrics = &reg, .background_threads = 0}, std::move(tiers));
    ASSERT_TRUE(store.ok());
    for (const auto& p : pages) ASSERT_TRUE((*store)->Publish(p.meta, p.bytes).ok());
    ASSERT_TRUE(raw->Flush().ok());
  }
  std::vector<std::filesystem::path> blobs;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".blob") blobs.push_back(e.path());
  }
  ASSERT_FALSE(blobs.empty()) << "page bytes did not land in blob files";
  uint64_t total = 0;
  for (const auto& b : blobs) total += std::filesystem::file_size(b);
  ASSERT_GT(total, pages.size() * pages[0].bytes.size());
  for (int flip = 0; flip < 12; ++flip) {
    const auto& b = blobs[rng() % blobs.size()];
    uint64_t size = std::filesystem::file_size(b);
    std::fstream f(b, std::ios::in | std::ios::out | std::ios::binary);
    uint64_t off = 64 + rng() % (size - 128);  // inside the records, not the file header
    f.seekg(static_cast<std::streamoff>(off));
    char ch;
    f.read(&ch, 1);
    ch ^= static_cast<char>(1 + rng() % 255);
    f.seekp(static_cast<std::streamoff>(off));
    f.write(&ch, 1);
  }
  MetricsRegistry reg;
  auto store = OpenNvmeStore(dir, &reg);
  ASSERT_TRUE(store.ok()) << store.status();
  int misses = 0, hits = 0;
  for (const auto& p : pages) {
    auto h = (*store)->Pin({&p.meta.key, 1}, absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(h.ok()) << h.status();
    std::vector<uint8_t> dst(p.bytes.size(), 0xEE);
    auto n = (*store)->Read(*h, p.meta.key, dst);
    if (n.ok()) {
      ASSERT_EQ(dst, p.bytes) << "wrong bytes served for " << p.meta.key.Hex();
      ++hits;
    } else {
      ASSERT_TRUE(absl::IsNotFound(n.status())) << n.status();
      ++misses;
    }
    (void)(*store)->Unpin(*h);
  }
  double quarantined =
      reg.GetCounter("kvstrata_store_quarantined_total", "", {{"tier", "nvme"}})->Value();
  std::printf("corruption: %d hits, %d misses, %.0f quarantined\n", hits, misses, quarantined);
  EXPECT_GT(misses, 0);
  EXPECT_EQ(quarantined, misses);
  EXPECT_EQ((*store)->Stats().indexed_pages, static_cast<uint64_t>(hits));
  ASSERT_TRUE((*store)->CheckInvariants().ok());
}

}  // namespace
}  // namespace kv

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--crash-child") == 0) {
    return kv::CrashChild(argv[2], std::strtoull(argv[3], nullptr, 10), std::atoi(argv[4]));
  }
  kv::g_self = std::filesystem::canonical("/proc/self/exe").string();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
