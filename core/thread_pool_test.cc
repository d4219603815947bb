#include "core/thread_pool.h"

#include <atomic>

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

}  // namespace
}  // namespace kv
