// kv::Mutex, kv::MutexLock, kv::Condition, kv::CondVar and kv::Notification: the locks of
// core/ and kvstore/.
//
// Why not absl::Mutex: ThreadSanitizer learns about a lock either from instrumented code or
// from its interceptors of the pthread functions. Debian 12 ships libabsl_synchronization.so
// built without TSAN, and absl::Mutex is a futex-based lock implemented inside that library,
// so a TSAN build cannot see it: every access it protects is reported as a race, and real
// races drown in the noise (docs/design-notes.md item 6). These types are thin wrappers over
// std::mutex / std::condition_variable(_any), i.e. pthread_mutex_* and pthread_cond_*, which
// TSAN intercepts whether or not the calling library is instrumented.
//
// They keep absl::Mutex's shape so code reads the same: Lock()/Unlock()/TryLock()/
// AssertHeld(), MutexLock as the RAII guard, Await(Condition) for "block until this predicate
// over guarded state holds", and CondVar with Wait/WaitWithTimeout/WaitWithDeadline. The Clang
// thread-safety annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED, ...) apply to them
// as to absl::Mutex. Differences: there is no shared (reader) mode -- ReaderLock() and
// ReaderMutexLock take the lock exclusively -- and a Condition is re-evaluated only when a
// holder unlocks (or another thread starts waiting), exactly the events that can change
// guarded state; it must be a pure function of state guarded by the mutex.
//
// Thread-safety: all members are safe for concurrent use, with the usual rules: Unlock() only
// by the holder, no recursive locking (undefined, as for std::mutex; TSAN reports it).
// Ownership: nothing is returned; a Condition borrows its callable, which must outlive it.
// Notification stands in for absl::Notification, which is built on absl::Mutex too.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kv {

// A predicate evaluated with the mutex held: Condition(&lambda) where the lambda takes no
// arguments and returns bool, or Condition(&flag) for a bool. Borrows the callable or flag.
class Condition {
 public:
  template <typename Fn>
  explicit Condition(const Fn* fn)
      : fn_(fn),
        eval_([](const void* f) { return static_cast<bool>((*static_cast<const Fn*>(f))()); }) {}
  // Condition(&flag): true while `flag` (read with the mutex held) is true.
  explicit Condition(const bool* flag)
      : fn_(flag), eval_([](const void* f) { return *static_cast<const bool*>(f); }) {}
  bool Eval() const { return eval_(fn_); }

 private:
  const void* fn_;
  bool (*eval_)(const void*);
};

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION();
  // Releases the lock; wakes Await()ers so they re-check their conditions.
  void Unlock() ABSL_UNLOCK_FUNCTION();
  // True if the lock was taken (never blocks).
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true);
  // Aborts with a message unless the calling thread holds the lock.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK();

  // No shared mode: readers take the lock exclusively (see the header comment).
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { Lock(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { Unlock(); }

  // With the lock held: releases it until `cond` holds, then returns with it held again.
  void Await(const Condition& cond) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this);
  // As Await, but gives up at `deadline` (absl::Now() clock). Returns whether `cond` holds;
  // the lock is held on return either way.
  bool AwaitWithDeadline(const Condition& cond, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this);
  bool AwaitWithTimeout(const Condition& cond, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this);
  // Lock() then Await(cond).
  void LockWhen(const Condition& cond) ABSL_EXCLUSIVE_LOCK_FUNCTION();

  // BasicLockable spelling, so std::condition_variable_any (CondVar) can release and retake
  // the lock through Unlock()/Lock() and wake Await()ers like any other release.
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { Lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { Unlock(); }

 private:
  // Waits on cv_ until `cond` holds or `steady_deadline` passes; returns whether it holds.
  bool AwaitUntil(const Condition& cond, std::chrono::steady_clock::time_point steady_deadline,
                  bool timed);

  std::mutex mu_;
  std::condition_variable cv_;  // Await()ers
  int waiters_ = 0;             // Await()ers, guarded by mu_
  // The holder, for AssertHeld(). Relaxed: it is only compared with the calling thread's id,
  // which can match only if this thread stored it.
  std::atomic<std::thread::id> owner_{};
};

// Holds `mu` for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }

 private:
  Mutex* const mu_;
};

// Holds `mu` for its scope (exclusively: kv::Mutex has no shared mode).
class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(Mutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) { mu_->ReaderLock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_->ReaderUnlock(); }

 private:
  Mutex* const mu_;
};

// A condition variable over kv::Mutex. Wait*() must be called with `mu` held; they release
// it while blocked and hold it again on return. Spurious wake-ups are possible: wait in a
// loop over the predicate. Signal/SignalAll may be called with or without the mutex held.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Return true if the wait timed out, false if woken (possibly spuriously) before that.
  bool WaitWithTimeout(Mutex* mu, absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  bool WaitWithDeadline(Mutex* mu, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable_any cv_;
};

// A one-shot event: Notify() once; waiters return as soon as it has happened. Everything the
// notifying thread wrote before Notify() is visible to a waiter that saw it.
class Notification {
 public:
  Notification() = default;
  Notification(const Notification&) = delete;
  Notification& operator=(const Notification&) = delete;

  // Calling it twice is a programming error (aborts), as for absl::Notification.
  void Notify();
  bool HasBeenNotified() const;
  void WaitForNotification() const;
  // Returns whether the notification happened before `timeout` elapsed.
  bool WaitForNotificationWithTimeout(absl::Duration timeout) const;

 private:
  mutable Mutex mu_;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kv
