// Fault tests of the nvme tier under the TieredStore (DESIGN.md "Testing", tests/fault):
//   - Crash: a child process (this binary re-executed with --crash-child) opens the store,
//     says so through a pipe, and publishes pages to the nvme tier at full speed from two
//     threads; it is killed with SIGKILL at a random moment 30-280 ms later, and this counts
//     only when the child was still publishing (at least 20 such kills). After each kill the
//     store reopens: every page it serves is one that was written, every page the child saw
//     sealed is served, and nothing that was not sealed is (beyond the logged pages, at most
//     one page per publisher whose seal returned but was not logged yet when the kill came).
//     The pages the last child wrote and a random sample of the older ones are read through
//     the store and compared with what was written after every kill, and every page after
//     the last kill.
//   - Corruption: random bytes of the segment files (page records: headers, page bytes and
//     padding) are flipped. Reads of the affected pages are misses, never wrong bytes, and
//     the quarantine counter counts each of them.
// The seed is printed; KVSTRATA_TEST_SEED=N replays one.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

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

// The child: opens the store, writes one byte to `ready_fd`, then kPublishers threads publish
// chains [first, first + kMaxChainsPerChild) as fast as possible (their seals share the nvme
// tier's fdatasyncs), each appending "chain page\n" to the seal log with one write(2) after
// each successful seal.
int CrashChild(const std::string& dir, uint64_t seed, int first, int ready_fd) {
  MetricsRegistry reg;
  auto store = OpenNvmeStore(dir, &reg);
  if (!store.ok()) {
    std::fprintf(stderr, "child: %s\n", store.status().ToString().c_str());
    return 2;
  }
  int log = ::open((dir + "/../seal.log").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log < 0) return 3;
  char one = 1;
  if (::write(ready_fd, &one, 1) != 1) return 5;
  ::close(ready_fd);
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

uint64_t Seed() { return kv::testing::TestSeed(); }

// Reads `key` through the store and compares it with `want`.
void ExpectServedEquals(TieredStore* store, const BlockKey& key, const testing::TestPage& want,
                        int round) {
  auto h = store->Pin({&key, 1}, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(h.ok()) << h.status();
  std::vector<uint8_t> dst(want.bytes.size() + 1, 0xEE);
  auto n = store->Read(*h, key, dst);
  ASSERT_TRUE(n.ok()) << n.status() << " round " << round;
  dst.resize(*n);
  ASSERT_EQ(dst, want.bytes) << key.Hex() << " round " << round;
  ASSERT_TRUE(store->Unpin(*h).ok());
}

TEST(NvmeCrashTest, KillNineDuringPublishServesOnlySealedVerifiedPages) {
  constexpr int kKills = 20, kMaxRounds = 30, kOldSample = 256;
  uint64_t seed = Seed();
  SCOPED_TRACE(kv::testing::SeedTrace(seed));
  std::mt19937_64 rng(seed);
  std::string root = testing::FreshTestDir("nvme-crash");
  std::string dir = root + "/db";
  std::filesystem::create_directories(dir);
  // Only the keys are kept; a page's bytes are generated again (cached for one round) to
  // compare.
  absl::flat_hash_map<BlockKey, std::pair<int, int>> expected_at;  // key -> (chain, page)
  std::vector<std::array<BlockKey, kPagesPerChain>> keys_of;       // chain -> keys
  absl::flat_hash_map<int, std::vector<testing::TestPage>> round_chains;
  auto page_at = [&](std::pair<int, int> at) -> const testing::TestPage& {
    auto it = round_chains.find(at.first);
    if (it == round_chains.end()) {
      it = round_chains.emplace(at.first, CrashChain(seed, at.first)).first;
    }
    return it->second[at.second];
  };
  absl::flat_hash_set<BlockKey> verified;  // read back and equal after an earlier kill
  int kills = 0, round = 0, served_total = 0;
  for (; kills < kKills && round < kMaxRounds; ++round) {
    const int first = round * kMaxChainsPerChild;
    for (int c = first; c < first + kMaxChainsPerChild; ++c) {
      auto chain = CrashChain(seed, c);
      keys_of.emplace_back();
      for (int i = 0; i < kPagesPerChain; ++i) {
        expected_at[chain[i].meta.key] = {c, i};
        keys_of.back()[i] = chain[i].meta.key;
      }
    }
    round_chains.clear();
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);  // no O_CLOEXEC: the child's exec keeps the write end
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(ready[0]);
      std::string s = std::to_string(seed), f = std::to_string(first), r = std::to_string(ready[1]);
      execl(g_self.c_str(), g_self.c_str(), "--crash-child", dir.c_str(), s.c_str(), f.c_str(),
            r.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    ::close(ready[1]);
    // Wait (bounded) until the child has opened the store and starts publishing.
    pollfd pfd{ready[0], POLLIN, 0};
    int polled = ::poll(&pfd, 1, 120000);
    char byte = 0;
    bool started = polled == 1 && ::read(ready[0], &byte, 1) == 1;
    ::close(ready[0]);
    if (started) usleep(static_cast<useconds_t>(30000 + rng() % 250000));
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "child failed on its own";
    }
    ASSERT_TRUE(started) << "the child did not open the store within 120 s";
    // A child that finished all its chains before the kill is not a kill during writes.
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ++kills;

    // What the child saw sealed.
    absl::flat_hash_set<BlockKey> logged;
    std::ifstream log(root + "/seal.log");
    int c, i;
    while (log >> c >> i) {
      ASSERT_TRUE(c >= 0 && c < static_cast<int>(keys_of.size()) && i >= 0 && i < kPagesPerChain);
      logged.insert(keys_of[c][i]);
    }

    MetricsRegistry reg;
    auto store = OpenNvmeStore(dir, &reg);
    ASSERT_TRUE(store.ok()) << store.status() << " round " << round;
    auto listed = (*store)->tier(TierKind::kNvme)->List();
    ASSERT_TRUE(listed.ok());
    int unlogged = 0;
    absl::flat_hash_set<BlockKey> served;
    std::vector<BlockKey> old;
    for (const PageMeta& m : *listed) {
      auto at = expected_at.find(m.key);
      ASSERT_NE(at, expected_at.end()) << "served a page nobody wrote: " << m.key.Hex();
      served.insert(m.key);
      if (!logged.contains(m.key)) ++unlogged;
      if (verified.contains(m.key)) {
        old.push_back(m.key);
      } else {  // written by the child just killed: read it back now
        ExpectServedEquals(store->get(), m.key, page_at(at->second), round);
        if (::testing::Test::HasFatalFailure()) return;
        verified.insert(m.key);
      }
    }
    std::shuffle(old.begin(), old.end(), rng);
    const bool last = kills == kKills || round + 1 == kMaxRounds;
    const size_t sample = last ? old.size() : std::min<size_t>(old.size(), kOldSample);
    for (size_t k = 0; k < sample; ++k) {
      ExpectServedEquals(store->get(), old[k], page_at(expected_at[old[k]]), round);
      if (::testing::Test::HasFatalFailure()) return;
    }
    // A seal that completed just before the kill may not have reached the log yet: at most
    // one per publisher per kill.
    EXPECT_LE(unlogged, kPublishers * (round + 1))
        << "pages served that the child never saw sealed";
    for (const BlockKey& k : logged) {
      ASSERT_TRUE(served.contains(k)) << "sealed page lost after kill -9: " << k.Hex();
    }
    ASSERT_TRUE((*store)->CheckInvariants().ok());
    served_total = static_cast<int>(served.size());
  }
  std::printf("crash: %d kills during writes in %d rounds, %d pages served and verified\n", kills,
              round, served_total);
  EXPECT_GE(kills, kKills);
  EXPECT_GT(served_total, 0);
}

TEST(NvmeCorruptionTest, FlippedSegmentBytesAreMissesNeverWrongBytes) {
  uint64_t seed = Seed();
  SCOPED_TRACE(kv::testing::SeedTrace(seed));
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
  if (argc == 6 && std::strcmp(argv[1], "--crash-child") == 0) {
    return kv::CrashChild(argv[2], std::strtoull(argv[3], nullptr, 10), std::atoi(argv[4]),
                          std::atoi(argv[5]));
  }
  kv::g_self = std::filesystem::canonical("/proc/self/exe").string();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
