#include "core/clock.h"

#include <thread>

#include <gtest/gtest.h>

namespace kv {
namespace {

TEST(Clock, RealAdvances) {
  Clock* c = Clock::Real();
  const absl::Time a = c->Now();
  c->SleepFor(absl::Milliseconds(2));
  EXPECT_GE(c->Now() - a, absl::Milliseconds(2));
}

TEST(Clock, FakeSleepWakesOnAdvance) {
  FakeClock c;
  const absl::Time start = c.Now();
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    c.SleepUntil(start + absl::Seconds(10));
    woke = true;
  });
  c.Advance(absl::Seconds(5));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE(woke.load()) << "woke before its deadline";
  c.Advance(absl::Seconds(5));
  sleeper.join();  // bounded: the deadline has been reached
  EXPECT_TRUE(woke.load());
  EXPECT_EQ(c.Now() - start, absl::Seconds(10));
  c.SleepFor(absl::ZeroDuration());  // returns at once
  c.SetTime(start);
  EXPECT_EQ(c.Now(), start);
}

}  // namespace
}  // namespace kv
