// Injectable clock. Logic with leases, TTLs and deadlines reads time only through a Clock,
// so tests drive it with FakeClock instead of sleeping.
//
// Clock::Real() is a process-wide singleton, never destroyed, safe for concurrent use.
// FakeClock is safe for concurrent use: SleepFor/SleepUntil block until another thread
// advances the time past the wake-up point (or return at once if it already is).
#pragma once

#include "absl/time/time.h"
#include "core/mutex.h"

namespace kv {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  virtual void SleepFor(absl::Duration d) = 0;
  virtual void SleepUntil(absl::Time t) { SleepFor(t - Now()); }

  // Wall-clock time backed by absl::Now(); owned by the library.
  static Clock* Real();
};

class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24 * 365 * 50));
  absl::Time Now() override;
  void SleepFor(absl::Duration d) override;
  void SleepUntil(absl::Time t) override;
  void Advance(absl::Duration d);
  void SetTime(absl::Time t);

 private:
  Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

// Deadlines cross between an injected clock and the wall clock where a library that only
// knows wall time is involved (gRPC deadlines, condition-variable waits): the same remaining
// time, read on the other clock. Identity for Clock::Real(); the infinite past and future map
// to themselves.
absl::Time ToWallTime(Clock* clock, absl::Time t);
absl::Time FromWallTime(Clock* clock, absl::Time wall);

}  // namespace kv
