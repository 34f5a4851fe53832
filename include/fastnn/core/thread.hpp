#pragma once
/// \file thread.hpp
/// Two threads on one job, without creating a thread per call and without oversubscribing a small machine
/// (one worker plus the calling thread):
///
///   Worker: a persistent thread; run() hands it a task, wait() blocks until it is done. A spinning worker
///       (Worker(spin_us)) polls for its next task and the caller polls for its end for up to spin_us
///       microseconds before either sleeps, so that back-to-back tasks of a few microseconds are not paid in
///       thread wake-ups (tens of microseconds on a virtual machine).
///   HelperLease: the process's one shared spinning worker, for the layers and products that split their work
///       in two (cpu_gemm, the attention). A lease holds it or, when another caller holds it, is empty and the
///       caller runs the whole job itself; a task on the helper that asks for a lease gets an empty one.
///
/// Bidirectional and the convolutions keep a worker of their own (no spinning): their tasks are long.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define FASTNN_SPIN_PAUSE() _mm_pause()
#else
#define FASTNN_SPIN_PAUSE() std::this_thread::yield()
#endif

namespace fastnn {
namespace detail {

class Worker {
 public:
  /// spin_us > 0: poll that long for the next task (and for a task's end in wait()) before sleeping.
  explicit Worker(int spin_us = 0) : spin_(std::chrono::microseconds(spin_us)), thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_.store(true, std::memory_order_release);
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
      error_ = nullptr;
      busy_.store(true, std::memory_order_release);
      posted_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }
  /// Runs `theirs` on the worker and `mine` on the calling thread, and waits for both. The worker's exception, if
  /// any, is rethrown once the caller's part is done; the caller's own exception wins, and is rethrown only once
  /// the worker is done, since its task may use the caller's frame.
  template <class Theirs, class Mine>
  void run_alongside(Theirs&& theirs, Mine&& mine) {
    run(std::forward<Theirs>(theirs));
    try {
      mine();
    } catch (...) {
      try {
        wait();
      } catch (...) {
      }
      throw;
    }
    wait();
  }
  /// Blocks until the current task is done; rethrows an exception it threw.
  void wait() {
    spin_until([this] { return !busy_.load(std::memory_order_acquire); });
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return !busy_.load(std::memory_order_relaxed); });
    if (error_) {
      auto e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  /// Polls `ready` for up to spin_ (not at all for a worker that does not spin).
  template <class F>
  void spin_until(F ready) const {
    if (spin_.count() <= 0 || ready()) return;
    const auto end = std::chrono::steady_clock::now() + spin_;
    for (int i = 1;; ++i) {
      FASTNN_SPIN_PAUSE();
      if (ready()) return;
      if (i % 64 == 0 && std::chrono::steady_clock::now() > end) return;
    }
  }
  void loop() {
    for (;;) {
      spin_until([this] {
        return posted_.load(std::memory_order_acquire) || quit_.load(std::memory_order_acquire);
      });
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [this] {
        return quit_.load(std::memory_order_relaxed) || posted_.load(std::memory_order_relaxed);
      });
      if (quit_.load(std::memory_order_relaxed)) return;
      posted_.store(false, std::memory_order_relaxed);
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
      busy_.store(false, std::memory_order_release);
      lk.unlock();
      done_cv_.notify_all();
    }
  }

  std::chrono::microseconds spin_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::function<void()> task_;
  std::exception_ptr error_;
  std::atomic<bool> busy_{false}, posted_{false}, quit_{false};
  std::thread thread_;
};

/// How long the shared helper polls for its next task before it sleeps: a training step's products come a few
/// hundred microseconds apart at most, so the helper stays awake through a step (OpenMP runtimes poll for
/// longer: 200 ms by default in Intel's).
constexpr int kHelperSpinMicroseconds = 2000;

/// A lease on the process's shared helper thread (see the file comment). Empty when another caller holds it.
class HelperLease {
 public:
  HelperLease() : held_(!taken().exchange(true, std::memory_order_acquire)) {}
  ~HelperLease() {
    if (held_) taken().store(false, std::memory_order_release);
  }
  HelperLease(const HelperLease&) = delete;
  HelperLease& operator=(const HelperLease&) = delete;

  explicit operator bool() const { return held_; }
  /// The helper; only on a lease that holds it.
  Worker& worker() const { return helper(); }

 private:
  static std::atomic<bool>& taken() {
    static std::atomic<bool> flag{false};
    return flag;
  }
  static Worker& helper() {
    static Worker w(kHelperSpinMicroseconds);
    return w;
  }
  bool held_;
};

}  // namespace detail
}  // namespace fastnn
