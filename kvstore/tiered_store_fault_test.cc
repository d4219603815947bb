// Fault tests of the nvme tier under the TieredStore (DESIGN.md "Testing", tests/fault):
//   - Crash: a child process (this binary re-executed with --crash-child) publishes pages to
//     the nvme tier at full speed from two threads and is killed with SIGKILL at random
//     moments, 20 times. After each kill the store reopens; every page it serves verifies
//     and equals what was written, every page the child saw sealed is served, and nothing
//     that was not sealed is (beyond the logged pages, at most one page per publisher whose
//     seal returned but was not logged yet when the kill came).
//   - Corruption: random bytes of the segment files (page records: headers, page bytes and
//     padding) are flipped. Reads of the affected pages are misses, never wrong bytes, and
//     the quarantine counter counts each of them.
// The seed is printed; KVSTRATA_FAULT_SEED=N replays one.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

constexpr int kPagesPerChain = 8;
constexpr int kMaxChainsPerChild = 250;
constexpr int kPublishers = 2;
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

// The child: kPublishers threads publish chains [first, first + kMaxChainsPerChild) as fast
// as possible (their seals share the nvme tier's fdatasyncs), each appending "chain page\n"
// to the seal log with one write(2) after each successful seal.
int CrashChild(const std::string& dir, uint64_t seed, int first) {
  MetricsRegistry reg;
  auto store = OpenNvmeStore(dir, &reg);
  if (!store.ok()) {
    std::fprintf(stderr, "child: %s\n", store.status().ToString().c_str());
    return 2;
  }
  int log = ::open((dir + "/../seal.log").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log < 0) return 3;
  std::atomic<int> rc{0};
  std::vector<std::thread> publishers;
  for (int w = 0; w < kPublishers; ++w) {
    publishers.emplace_back([&, w] {
      for (int c = first + w; c < first + kMaxChainsPerChild && rc == 0; c += kPublishers) {
        auto chain = CrashChain(seed, c);
        for (int i = 0; i < kPagesPerChain; ++i) {
          absl::Status st = (*store)->Publish(chain[i].meta, chain[i].bytes);
          if (!st.ok()) {
            std::fprintf(stderr, "child: publish: %s\n", st.ToString().c_str());
            rc = 4;
            return;
          }
          char line[32];
          int n = std::snprintf(line, sizeof(line), "%d %d\n", c, i);
          if (::write(log, line, static_cast<size_t>(n)) != n) rc = 3;
        }
      }
    });
  }
  for (auto& t : publishers) t.join();
  ::close(log);
  return rc;
}

uint64_t Seed() {
  if (const char* s = std::getenv("KVSTRATA_FAULT_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

TEST(NvmeCrashTest, KillNineDuringPublishServesOnlySealedVerifiedPages) {
  uint64_t seed = Seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " (replay: KVSTRATA_FAULT_SEED=...)");
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
    // A seal that completed just before the kill may not have reached the log yet: at most
    // one per publisher per kill.
    EXPECT_LE(unlogged, kPublishers * (round + 1))
        << "pages served that the child never saw sealed";
    for (const BlockKey& k : logged) {
      ASSERT_TRUE(served.contains(k)) << "sealed page lost after kill -9: " << k.Hex();
    }
    ASSERT_TRUE((*store)->CheckInvariants().ok());
    total_served = static_cast<int>(served.size());
  }
  std::printf("crash: 20 kills, %d pages served and verified at the end\n", total_served);
  EXPECT_GT(total_served, 0);
}

TEST(NvmeCorruptionTest, FlippedSegmentBytesAreMissesNeverWrongBytes) {
  uint64_t seed = Seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::string dir = testing::FreshTestDir("nvme-corrupt");
  // Independent one-page chains, so a miss is exactly one quarantined page.
  std::vector<testing::TestPage> pages;
  for (int i = 0; i < 200; ++i) pages.push_back(testing::MakeChain(rng(), "c", 1, 4, 4)[0]);
  std::string segments;
  {
    auto nv = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(nv.ok());
    segments = (*nv)->segment_dir();
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[2] = *std::move(nv);
    MetricsRegistry reg;
    auto store = TieredStore::Open({.metrics = &reg, .background_threads = 0}, std::move(tiers));
    ASSERT_TRUE(store.ok());
    for (const auto& p : pages) ASSERT_TRUE((*store)->Publish(p.meta, p.bytes).ok());
  }
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(segments)) files.push_back(e.path());
  ASSERT_FALSE(files.empty()) << "no segment files";
  uint64_t total = 0;
  for (const auto& f : files) total += std::filesystem::file_size(f);
  ASSERT_GT(total, pages.size() * pages[0].bytes.size());
  for (int flip = 0; flip < 12; ++flip) {
    const auto& b = files[rng() % files.size()];
    uint64_t size = std::filesystem::file_size(b);
    std::fstream f(b, std::ios::in | std::ios::out | std::ios::binary);
    uint64_t off = 4096 + rng() % (size - 4096);  // inside the records, not the segment header
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
