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

TEST(Clock, DeadlinesCrossToTheWallClockWithTheSameRemainingTime) {
  FakeClock c;  // fifty years ahead of the wall clock
  const absl::Time d = c.Now() + absl::Seconds(30);
  // Sequenced: the wall clock read after the conversion, so at most 30 s remain.
  const absl::Time wall = ToWallTime(&c, d);
  const absl::Duration left = wall - absl::Now();
  EXPECT_GT(left, absl::Seconds(29));
  EXPECT_LE(left, absl::Seconds(30));
  const absl::Duration back = FromWallTime(&c, absl::Now() + absl::Seconds(30)) - c.Now();
  EXPECT_GT(back, absl::Seconds(29));
  EXPECT_LE(back, absl::Seconds(30));
  EXPECT_EQ(ToWallTime(&c, absl::InfiniteFuture()), absl::InfiniteFuture());
  EXPECT_EQ(FromWallTime(&c, absl::InfinitePast()), absl::InfinitePast());
  const absl::Time t = absl::Now() + absl::Seconds(5);
  EXPECT_EQ(ToWallTime(Clock::Real(), t), t);
  EXPECT_EQ(FromWallTime(nullptr, t), t);
}

}  // namespace
}  // namespace kv
