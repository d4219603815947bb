// A fixed-size thread pool running std::function tasks in FIFO order.
//
// Schedule() is safe from any thread, including from inside a task. The destructor (or
// Shutdown()) runs every task already scheduled, then joins the workers; Schedule() after
// Shutdown() returns false and drops the task.
#pragma once

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

}  // namespace kv
