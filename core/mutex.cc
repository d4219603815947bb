#include "core/mutex.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace kv {
namespace {

// absl time -> steady_clock deadline, clamped so that InfiniteFuture/InfiniteDuration cannot
// overflow the chrono representation (ten years is "forever" for a lock wait).
std::chrono::steady_clock::time_point SteadyAfter(absl::Duration d) {
  d = std::clamp(d, absl::ZeroDuration(), absl::Hours(24 * 365 * 10));
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
             absl::ToChronoNanoseconds(d));
}

}  // namespace

void Mutex::Lock() {
  mu_.lock();
  owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
}

bool Mutex::TryLock() {
  if (!mu_.try_lock()) return false;
  owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  return true;
}

void Mutex::Unlock() {
  owner_.store(std::thread::id(), std::memory_order_relaxed);
  // Notified with mu_ held: once it is released, an Await()er may return and destroy *this.
  if (waiters_ > 0) cv_.notify_all();
  mu_.unlock();
}

void Mutex::AssertHeld() const {
  if (owner_.load(std::memory_order_relaxed) != std::this_thread::get_id()) {
    std::fprintf(stderr, "kvstrata: kv::Mutex %p is not held by this thread\n",
                 static_cast<const void*>(this));
    std::abort();
  }
}

bool Mutex::AwaitUntil(const Condition& cond, std::chrono::steady_clock::time_point deadline,
                       bool timed) {
  if (cond.Eval()) return true;
  std::unique_lock<std::mutex> lk(mu_, std::adopt_lock);
  // Starting to wait releases the lock, so the caller's changes may satisfy others' waits.
  if (waiters_ > 0) cv_.notify_all();
  ++waiters_;
  bool holds = false;
  while (true) {
    owner_.store(std::thread::id(), std::memory_order_relaxed);
    bool timed_out = false;
    if (timed) {
      timed_out = cv_.wait_until(lk, deadline) == std::cv_status::timeout;
    } else {
      cv_.wait(lk);
    }
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    holds = cond.Eval();
    if (holds || timed_out) break;
  }
  --waiters_;
  lk.release();  // the caller keeps holding mu_
  return holds;
}

void Mutex::Await(const Condition& cond) {
  AwaitUntil(cond, std::chrono::steady_clock::time_point(), false);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  return AwaitUntil(cond, SteadyAfter(deadline - absl::Now()), true);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  return AwaitUntil(cond, SteadyAfter(timeout), true);
}

void Mutex::LockWhen(const Condition& cond) {
  Lock();
  Await(cond);
}

void CondVar::Wait(Mutex* mu) { cv_.wait(*mu); }

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  return cv_.wait_until(*mu, SteadyAfter(timeout)) == std::cv_status::timeout;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  return WaitWithTimeout(mu, deadline - absl::Now());
}

void Notification::Notify() {
  MutexLock l(&mu_);
  if (notified_) {
    std::fprintf(stderr, "kvstrata: kv::Notification %p notified twice\n",
                 static_cast<const void*>(this));
    std::abort();
  }
  notified_ = true;
}

bool Notification::HasBeenNotified() const {
  MutexLock l(&mu_);
  return notified_;
}

void Notification::WaitForNotification() const {
  MutexLock l(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return notified_; };
  mu_.Await(Condition(&done));
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  MutexLock l(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return notified_; };
  return mu_.AwaitWithTimeout(Condition(&done), timeout);
}

}  // namespace kv
