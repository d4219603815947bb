#include "core/mutex.h"

#include <atomic>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kv {
namespace {

// Every wait in these tests is bounded, so a lost wake-up fails instead of hanging.
constexpr absl::Duration kBound = absl::Seconds(30);

TEST(Mutex, ExcludesWriters) {
  Mutex mu;
  int64_t counter = 0;  // plain int: TSAN flags it if the lock does not order the writers
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        MutexLock l(&mu);
        ++counter;
      }
    });
  }
  for (auto& t : threads) t.join();
  MutexLock l(&mu);
  EXPECT_EQ(counter, 4 * 20000);
}

TEST(Mutex, TryLockFailsWhileAnotherThreadHoldsIt) {
  Mutex mu;
  mu.Lock();
  bool got = true;
  std::thread([&] { got = mu.TryLock(); }).join();
  EXPECT_FALSE(got);
  mu.Unlock();
  std::thread([&] {
    got = mu.TryLock();
    if (got) mu.Unlock();
  }).join();
  EXPECT_TRUE(got);
}

TEST(Mutex, AssertHeld) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // TSAN runs a background thread
  Mutex mu;
  {
    MutexLock l(&mu);
    mu.AssertHeld();  // does not abort
  }
  EXPECT_DEATH(mu.AssertHeld(), "not held by this thread");
  mu.Lock();
  EXPECT_DEATH(std::thread([&] { mu.AssertHeld(); }).join(), "not held by this thread");
  mu.Unlock();
}

TEST(Mutex, AwaitWakesOnAnotherThreadsUnlock) {
  Mutex mu;
  bool ready = false;
  int value = 0;
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    MutexLock l(&mu);
    value = 42;
    ready = true;
  });
  {
    MutexLock l(&mu);
    auto is_ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return ready; };
    ASSERT_TRUE(mu.AwaitWithTimeout(Condition(&is_ready), kBound));
    mu.AssertHeld();  // Await returns with the lock held
    EXPECT_EQ(value, 42);
  }
  producer.join();
}

// A thread that starts waiting releases the lock; the state it changed first must wake the
// other waiters, just as an Unlock() would (absl::Mutex's semantics).
TEST(Mutex, StartingToAwaitWakesOtherWaiters) {
  Mutex mu;
  int step = 0;
  std::thread second([&] {
    auto first_moved = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return step == 1; };
    mu.Lock();
    EXPECT_TRUE(mu.AwaitWithTimeout(Condition(&first_moved), kBound));
    step = 2;
    mu.Unlock();
  });
  absl::SleepFor(absl::Milliseconds(20));  // usually lets `second` block first
  mu.Lock();
  step = 1;
  auto second_moved = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return step == 2; };
  EXPECT_TRUE(mu.AwaitWithTimeout(Condition(&second_moved), kBound));
  mu.Unlock();
  second.join();
}

TEST(Mutex, AwaitWithTimeoutGivesUpWithTheLockHeld) {
  Mutex mu;
  MutexLock l(&mu);
  auto never = [] { return false; };
  absl::Time start = absl::Now();
  EXPECT_FALSE(mu.AwaitWithTimeout(Condition(&never), absl::Milliseconds(30)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(30));
  mu.AssertHeld();
  EXPECT_FALSE(mu.AwaitWithDeadline(Condition(&never), absl::Now() - absl::Seconds(1)));
  auto always = [] { return true; };
  EXPECT_TRUE(mu.AwaitWithDeadline(Condition(&always), absl::InfinitePast()));
}

TEST(Mutex, LockWhenBlocksUntilTheConditionHolds) {
  Mutex mu;
  int n = 0;
  std::thread incr([&] {
    for (int i = 0; i < 5; ++i) {
      absl::SleepFor(absl::Milliseconds(2));
      MutexLock l(&mu);
      ++n;
    }
  });
  auto five = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return n == 5; };
  mu.LockWhen(Condition(&five));
  EXPECT_EQ(n, 5);
  mu.Unlock();
  incr.join();
}

TEST(CondVar, SignalWakesAWaiterAndDataIsVisible) {
  Mutex mu;
  CondVar cv;
  std::vector<int> queue;
  std::thread producer([&] {
    for (int i = 1; i <= 100; ++i) {
      MutexLock l(&mu);
      queue.push_back(i);
      cv.Signal();
    }
  });
  int sum = 0, got = 0;
  absl::Time deadline = absl::Now() + kBound;
  mu.Lock();
  while (got < 100 && absl::Now() < deadline) {
    if (queue.empty()) {
      cv.WaitWithDeadline(&mu, deadline);
      continue;
    }
    for (int v : queue) sum += v;
    got += static_cast<int>(queue.size());
    queue.clear();
  }
  mu.Unlock();
  producer.join();
  EXPECT_EQ(got, 100);
  EXPECT_EQ(sum, 5050);
}

TEST(CondVar, WaitWithTimeoutReportsTheTimeout) {
  Mutex mu;
  CondVar cv;
  MutexLock l(&mu);
  absl::Time start = absl::Now();
  bool timed_out = false;
  // Spurious wake-ups return false early; loop until the deadline has really passed.
  while (!timed_out && absl::Now() - start < kBound) {
    timed_out = cv.WaitWithTimeout(&mu, absl::Milliseconds(20));
  }
  EXPECT_TRUE(timed_out);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(20));
  mu.AssertHeld();
  EXPECT_TRUE(cv.WaitWithDeadline(&mu, absl::Now() - absl::Seconds(1)));
}

// CondVar::Wait releases the mutex through Unlock(), which must wake Await()ers.
TEST(CondVar, WaitingOnACondVarWakesAwaiters) {
  Mutex mu;
  CondVar cv;
  bool armed = false, done = false;
  std::thread awaiter([&] {
    auto is_armed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return armed; };
    mu.Lock();
    EXPECT_TRUE(mu.AwaitWithTimeout(Condition(&is_armed), kBound));
    done = true;
    cv.SignalAll();
    mu.Unlock();
  });
  absl::SleepFor(absl::Milliseconds(20));
  absl::Time deadline = absl::Now() + kBound;
  mu.Lock();
  armed = true;
  while (!done && absl::Now() < deadline) cv.WaitWithDeadline(&mu, deadline);
  EXPECT_TRUE(done);
  mu.Unlock();
  awaiter.join();
}

TEST(Notification, WaitersSeeTheNotifiersWrites) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Notification ready;
  int payload = 0;  // written before Notify(), read after the wait: ordered by the event
  EXPECT_FALSE(ready.HasBeenNotified());
  EXPECT_FALSE(ready.WaitForNotificationWithTimeout(absl::Milliseconds(5)));
  std::thread notifier([&] {
    payload = 7;
    ready.Notify();
  });
  ASSERT_TRUE(ready.WaitForNotificationWithTimeout(kBound));
  EXPECT_EQ(payload, 7);
  ready.WaitForNotification();  // returns at once
  EXPECT_TRUE(ready.HasBeenNotified());
  notifier.join();
  EXPECT_DEATH(ready.Notify(), "notified twice");
}

}  // namespace
}  // namespace kv
