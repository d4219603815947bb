// A fixed-size thread pool running std::function tasks in FIFO order.
//
// Schedule() is safe from any thread, including from inside a task. The destructor (or
// Shutdown()) runs every task already scheduled, then joins the workers; Schedule() after
// Shutdown() returns false and drops the task.
//
// ParallelFor runs n indexed tasks on a pool's workers and the calling thread together.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "core/mutex.h"

namespace kv {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  bool Schedule(std::function<void()> task);
  void Shutdown();
  // Blocks until the queue is empty and no task is running.
  void WaitIdle();
  int size() const { return static_cast<int>(workers_.size()); }

 private:
  void Work();

  Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

// Runs fn(0) .. fn(n-1), each exactly once, on the calling thread and up to pool->size()
// helpers, and returns when all n have finished. The caller claims tasks too, so it never
// waits for a busy pool to start a helper: a helper that starts late finds no task left and
// returns without touching fn. A null pool, a shut-down pool or n <= 1 runs everything on the
// caller. fn must be safe to call concurrently for distinct indices. Must not be called from a
// task of the same pool (its helpers could then all wait on each other).
void ParallelFor(ThreadPool* pool, int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace kv
