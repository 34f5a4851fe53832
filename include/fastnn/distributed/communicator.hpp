#pragma once
/// \file communicator.hpp
/// The communicator interface of data-parallel training: rank, size, broadcast, allreduce,
/// barrier, allgather of strings, and abort. fastnn ships two implementations, each on an
/// existing communication library:
///   * MpiCommunicator (fastnn/distributed/mpi.hpp, target fastnn::mpi): Open MPI or any MPI-3
///     library; buffers in host memory (a CUDA model's gradients are staged through the host);
///   * NcclCommunicator (fastnn/distributed/cuda/nccl.hpp, target fastnn::nccl): NVIDIA NCCL,
///     buffers in GPU memory, bootstrapped over MPI.
/// Sequential::fit trains data-parallel when FitOptions::distributed(comm) is given (see
/// model/data_parallel.hpp for what each rank does).
///
/// Every operation is collective: all ranks call it in the same order. Waits are bounded by
/// timeout(): a rank that stops answering makes the others end the job (abort) with a message
/// naming the operation, rather than hang.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "fastnn/core/error.hpp"

namespace fastnn {

/// Element types a communicator moves.
enum class DType { F32, F64, U8 };

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::F64;
};

inline std::size_t dtype_size(DType t) { return t == DType::F32 ? sizeof(float) : (t == DType::F64 ? sizeof(double) : 1); }

/// A group of processes that train one model together.
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  /// This process's index, 0 .. size()-1. Rank 0 logs and writes files.
  virtual int rank() const = 0;
  /// The number of processes.
  virtual int size() const = 0;
  /// "mpi", "nccl", ...
  virtual std::string backend() const = 0;
  /// Where the buffers of broadcast() and allreduce_start() live: false for host memory, true
  /// for CUDA device memory.
  virtual bool device_buffers() const { return false; }

  /// Copies `count` elements at `data` from rank `root` to every rank.
  virtual void broadcast(void* data, std::size_t count, DType type, int root) = 0;
  /// Starts an in-place sum of `count` elements at `data` over all ranks. The result is ready
  /// after wait_all(); the buffer must not be touched before.
  virtual void allreduce_start(void* data, std::size_t count, DType type) = 0;
  /// Lets started operations advance without blocking (some MPI libraries progress only
  /// inside MPI calls).
  virtual void progress() {}
  /// Waits for every started operation, at most timeout() seconds.
  virtual void wait_all() = 0;
  /// In-place sum of a few control values in host memory (counts, flags), blocking.
  virtual void allreduce_host(double* data, std::size_t count) = 0;
  /// Every rank's string, in rank order.
  virtual std::vector<std::string> allgather(const std::string& s) = 0;
  /// Waits until every rank has called it.
  virtual void barrier() = 0;
  /// Ends every process of the job at once, after printing `message` to stderr. For faults
  /// after which the ranks can no longer agree (a rank stopped answering).
  [[noreturn]] virtual void abort(const std::string& message) = 0;

  /// Blocking in-place sum (allreduce_start + wait_all).
  void allreduce(void* data, std::size_t count, DType type) {
    allreduce_start(data, count, type);
    wait_all();
  }
  template <class T>
  void allreduce(T* data, std::size_t count) {
    allreduce(data, count, dtype_of<T>::value);
  }
  /// Broadcasts a string from `root`.
  std::string broadcast_string(const std::string& s, int root) { return allgather(rank() == root ? s : "")[root]; }

  /// Seconds any wait may take before the job is aborted (default 300, or FASTNN_DIST_TIMEOUT).
  double timeout() const { return timeout_; }
  virtual void set_timeout(double seconds) {
    if (!(seconds > 0)) throw ArgumentError("Communicator::set_timeout: seconds must be positive");
    timeout_ = seconds;
  }

 protected:
  Communicator() : timeout_(timeout_from_env()) {}

  /// Calls `done` until it returns true; after timeout() seconds ends the job (abort) with a
  /// message naming `what`. Spins briefly, then yields, then sleeps between calls: a rank
  /// waiting for a slower one gives its core away.
  template <class Done>
  void wait_until(const std::string& what, Done&& done) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    for (long spins = 0;; ++spins) {
      if (done()) return;
      if (spins < 2000) continue;
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (waited > timeout())
        abort(what + " did not complete within " + std::to_string(static_cast<long>(timeout())) +
              " s (FASTNN_DIST_TIMEOUT): another rank stopped answering");
      if (waited > 0.01) std::this_thread::sleep_for(std::chrono::microseconds(50));
      else std::this_thread::yield();
    }
  }

 private:
  static double timeout_from_env() {
    const char* e = std::getenv("FASTNN_DIST_TIMEOUT");
    if (!e || !*e) return 300;
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    if (end == e || *end != '\0' || !(v > 0))
      throw ArgumentError(std::string("FASTNN_DIST_TIMEOUT='") + e + "': expected a positive number of seconds");
    return v;
  }
  double timeout_;
};

}  // namespace fastnn
