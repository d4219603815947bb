#include "core/thread_pool.h"

#include <atomic>
#include <vector>

#include "core/mutex.h"

#include <gtest/gtest.h>

namespace kv {
namespace {

TEST(ThreadPool, RunsEverythingAndDrainsOnShutdown) {
  std::atomic<int> n{0};
  {
    ThreadPool pool(3);
    for (int i = 0; i < 1000; ++i) ASSERT_TRUE(pool.Schedule([&n] { n++; }));
    pool.WaitIdle();
    EXPECT_EQ(n.load(), 1000);
    for (int i = 0; i < 100; ++i) pool.Schedule([&n] { n++; });
  }  // destructor drains
  EXPECT_EQ(n.load(), 1100);
}

TEST(ThreadPool, ScheduleFromTaskAndAfterShutdown) {
  ThreadPool pool(2);
  std::atomic<int> n{0};
  pool.Schedule([&] {
    n++;
    pool.Schedule([&n] { n++; });
  });
  pool.WaitIdle();
  EXPECT_EQ(n.load(), 2);
  pool.Shutdown();
  EXPECT_FALSE(pool.Schedule([&n] { n++; }));
  EXPECT_EQ(n.load(), 2);
}

TEST(ParallelFor, RunsEveryIndexOnceOnPoolAndCaller) {
  ThreadPool pool(2);
  for (int64_t n : {0, 1, 2, 3, 17, 1000}) {
    std::vector<std::atomic<int>> hits(n);
    ParallelFor(&pool, n, [&](int64_t i) { hits[i]++; });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << i;
  }
  std::vector<std::atomic<int>> hits(5);
  ParallelFor(nullptr, 5, [&](int64_t i) { hits[i]++; });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

// The caller finishes the work itself while every worker is blocked on something else: it
// never waits for a helper to start, and the late helpers do nothing.
TEST(ParallelFor, CompletesWhilePoolIsBusy) {
  ThreadPool pool(1);
  Notification release;
  pool.Schedule([&] { (void)release.WaitForNotificationWithTimeout(absl::Seconds(30)); });
  std::atomic<int> n{0};
  ParallelFor(&pool, 8, [&](int64_t) { n++; });
  EXPECT_EQ(n.load(), 8);
  release.Notify();
  pool.WaitIdle();
  EXPECT_EQ(n.load(), 8);
  pool.Shutdown();
  ParallelFor(&pool, 3, [&](int64_t) { n++; });  // shut down: runs on the caller
  EXPECT_EQ(n.load(), 11);
}

}  // namespace
}  // namespace kv
