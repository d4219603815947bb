#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <memory>

namespace kv {

ThreadPool::ThreadPool(int threads) {
  if (threads < 1) threads = 1;
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() { Shutdown(); }

bool ThreadPool::Schedule(std::function<void()> task) {
  MutexLock l(&mu_);
  if (stop_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void ThreadPool::Shutdown() {
  {
    MutexLock l(&mu_);
    if (stop_ && workers_.empty()) return;
    stop_ = true;
  }
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

void ThreadPool::WaitIdle() {
  MutexLock l(&mu_);
  auto idle = [this]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && running_ == 0; };
  mu_.Await(Condition(&idle));
}

void ThreadPool::Work() {
  while (true) {
    std::function<void()> task;
    {
      MutexLock l(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(Condition(&ready));
      if (queue_.empty()) return;  // stop_ and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    task();
    MutexLock l(&mu_);
    --running_;
  }
}

namespace {

// Shared by the caller and its helpers; helpers hold it by shared_ptr, so one that runs after
// the caller returned touches only this, never the caller's fn.
struct ForState {
  explicit ForState(int64_t n_tasks, const std::function<void(int64_t)>* f) : n(n_tasks), fn(f) {}
  const int64_t n;
  const std::function<void(int64_t)>* fn;
  std::atomic<int64_t> next{0};
  Mutex mu;
  int64_t done ABSL_GUARDED_BY(mu) = 0;

  // Claims and runs tasks until none is left.
  void Drain() {
    int64_t ran = 0;
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      (*fn)(i);
      ++ran;
    }
    if (ran > 0) {
      MutexLock l(&mu);
      done += ran;
    }
  }
};

}  // namespace

void ParallelFor(ThreadPool* pool, int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (pool == nullptr || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto st = std::make_shared<ForState>(n, &fn);
  const int64_t helpers = std::min<int64_t>(pool->size(), n - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    if (!pool->Schedule([st] { st->Drain(); })) break;  // shut down: the caller runs the rest
  }
  st->Drain();
  MutexLock l(&st->mu);
  auto all_done = [&st]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(st->mu) { return st->done == st->n; };
  st->mu.Await(Condition(&all_done));
}

}  // namespace kv
