#include "core/clock.h"

namespace kv {
namespace {
class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  void SleepFor(absl::Duration d) override { absl::SleepFor(d); }
};
}  // namespace

Clock* Clock::Real() {
  static Clock* clock = new RealClock();
  return clock;
}

namespace {

bool Passthrough(Clock* clock, absl::Time t) {
  return clock == nullptr || clock == Clock::Real() || t == absl::InfiniteFuture() ||
         t == absl::InfinitePast();
}

}  // namespace

absl::Time ToWallTime(Clock* clock, absl::Time t) {
  return Passthrough(clock, t) ? t : absl::Now() + (t - clock->Now());
}

absl::Time FromWallTime(Clock* clock, absl::Time wall) {
  return Passthrough(clock, wall) ? wall : clock->Now() + (wall - absl::Now());
}

FakeClock::FakeClock(absl::Time start) : now_(start) {}

absl::Time FakeClock::Now() {
  MutexLock l(&mu_);
  return now_;
}

void FakeClock::SleepFor(absl::Duration d) {
  absl::Time wake;
  {
    MutexLock l(&mu_);
    wake = now_ + d;
  }
  SleepUntil(wake);
}

void FakeClock::SleepUntil(absl::Time wake) {
  MutexLock l(&mu_);
  auto reached = [this, wake]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return now_ >= wake; };
  mu_.Await(Condition(&reached));
}

void FakeClock::Advance(absl::Duration d) {
  MutexLock l(&mu_);
  now_ += d;
}

void FakeClock::SetTime(absl::Time t) {
  MutexLock l(&mu_);
  now_ = t;
}

}  // namespace kv
