#pragma once
/// \file thread.hpp
/// A single persistent worker thread: run() hands it a task, wait() blocks until it is done.
/// Used by Bidirectional to put its two directions on two cores without creating a thread per
/// batch and without oversubscribing a small machine (one worker plus the calling thread).

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace fastnn {
namespace detail {

class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  /// Starts `task` on the worker. At most one task runs at a time; call wait() before the next.
  void run(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lk(m_);
      task_ = std::move(task);
      busy_ = true;
      error_ = nullptr;
    }
    cv_.notify_all();
  }
  /// Blocks until the current task is done; rethrows an exception it threw.
  void wait() {
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return !busy_; });
    if (error_) {
      auto e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_.wait(lk, [this] { return quit_ || busy_; });
      if (quit_) return;
      auto task = std::move(task_);
      lk.unlock();
      std::exception_ptr err;
      try {
        task();
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      error_ = err;
      busy_ = false;
      done_cv_.notify_all();
    }
  }

  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::function<void()> task_;
  std::exception_ptr error_;
  bool busy_ = false, quit_ = false;
  std::thread thread_;
};

}  // namespace detail
}  // namespace fastnn
