#pragma once
/// \file mpi.hpp
/// MpiCommunicator: fastnn's Communicator on MPI (Open MPI from Debian, or any MPI-3 library
/// with non-blocking collectives). Link fastnn::mpi (CMake option FASTNN_MPI).
///
///   model.fit(train, FitOptions().epochs(30).batch_size(128).distributed(fastnn::mpi_world()), &test);
///
/// and start the program with `mpirun -np N ./program`. mpi_world() initialises MPI on first
/// use (MPI_THREAD_FUNNELED: fastnn calls MPI only from the thread that runs fit) and finalises
/// it at exit; a program that manages MPI itself constructs MpiCommunicator(its_comm) instead.
///
/// Buffers are in host memory. Every wait polls the pending requests and gives up after
/// timeout() seconds by aborting the job (MPI_Abort) with a message naming the operation, so a
/// rank that stops answering never leaves the others hanging. A rank that dies is noticed by
/// the MPI runtime (Open MPI's mpirun ends the job when a process exits abnormally).

// fastnn uses MPI's C interface only: leave out the deprecated C++ bindings.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/distributed/communicator.hpp"

namespace fastnn {

class MpiCommunicator : public Communicator {
 public:
  /// A communicator over a duplicate of `comm` (fastnn's messages never mix with the
  /// program's). MPI must be initialised.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) throw DistributedError("MpiCommunicator: MPI is not initialised (call MPI_Init, or use mpi_world())");
    check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  MPI_Comm comm() const { return comm_; }

  void broadcast(void* data, std::size_t count, DType type, int root) override {
    char* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < count;) {
      const int n = chunk(count - done);
      MPI_Request r;
      check(MPI_Ibcast(p + done * dtype_size(type), n, mpi_type(type), root, comm_, &r), "MPI_Ibcast");
      pending_.push_back(r);
      done += static_cast<std::size_t>(n);
    }
    wait_all_for("broadcast");
  }

  void allreduce_start(void* data, std::size_t count, DType type) override {
    char* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < count;) {
      const int n = chunk(count - done);
      MPI_Request r;
      check(MPI_Iallreduce(MPI_IN_PLACE, p + done * dtype_size(type), n, mpi_type(type), MPI_SUM, comm_, &r),
            "MPI_Iallreduce");
      pending_.push_back(r);
      done += static_cast<std::size_t>(n);
    }
  }

  void progress() override {
    if (pending_.empty()) return;
    int done = 0;
    check(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) pending_.clear();
  }

  void wait_all() override { wait_all_for("gradient allreduce"); }

  void allreduce_host(double* data, std::size_t count) override {
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_DOUBLE, MPI_SUM, comm_, &r), "MPI_Iallreduce");
    pending_.push_back(r);
    wait_all_for("control allreduce");
  }

  std::vector<std::string> allgather(const std::string& s) override {
    std::vector<int> lens(static_cast<std::size_t>(size_));
    int mine = static_cast<int>(s.size());
    MPI_Request r;
    check(MPI_Iallgather(&mine, 1, MPI_INT, lens.data(), 1, MPI_INT, comm_, &r), "MPI_Iallgather");
    pending_.push_back(r);
    wait_all_for("allgather");
    std::vector<int> displs(lens.size());
    int total = 0;
    for (std::size_t i = 0; i < lens.size(); ++i) displs[i] = total, total += lens[i];
    std::string all(static_cast<std::size_t>(total), '\0');
    check(MPI_Iallgatherv(s.data(), mine, MPI_CHAR, &all[0], lens.data(), displs.data(), MPI_CHAR, comm_, &r),
          "MPI_Iallgatherv");
    pending_.push_back(r);
    wait_all_for("allgather");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < lens.size(); ++i)
      out.push_back(all.substr(static_cast<std::size_t>(displs[i]), static_cast<std::size_t>(lens[i])));
    return out;
  }

  void barrier() override {
    MPI_Request r;
    check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
    pending_.push_back(r);
    wait_all_for("barrier");
  }

  [[noreturn]] void abort(const std::string& message) override {
    std::fflush(stdout);
    std::fprintf(stderr, "fastnn: rank %d of %d: %s; ending the job\n", rank_, size_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(comm_, 1);
    std::_Exit(1);  // MPI_Abort does not return; in case an MPI library's does
  }

 private:
  static MPI_Datatype mpi_type(DType t) { return t == DType::F32 ? MPI_FLOAT : (t == DType::F64 ? MPI_DOUBLE : MPI_BYTE); }
  static int chunk(std::size_t left) { return left > static_cast<std::size_t>(INT_MAX) ? INT_MAX : static_cast<int>(left); }

  void check(int rc, const char* call) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw DistributedError("rank " + std::to_string(rank_) + ": " + call + " failed: " + std::string(msg, static_cast<std::size_t>(len)));
  }

  /// Polls the pending requests until all complete; aborts the job after timeout().
  void wait_all_for(const char* what) {
    wait_until(what, [&] {
      if (pending_.empty()) return true;
      int done = 0;
      check(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
      if (done) pending_.clear();
      return done != 0;
    });
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> pending_;
};

namespace detail {
/// mpi_world()'s communicator; finalises MPI at exit when it initialised it.
struct MpiWorld {
  MpiWorld() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        throw DistributedError("mpi_world: MPI_Init_thread failed");
      owns = true;
    }
    comm = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  }
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;
  ~MpiWorld() {
    comm.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns && !finalized) MPI_Finalize();
  }
  bool owns = false;
  std::unique_ptr<MpiCommunicator> comm;
};
}  // namespace detail

/// The communicator of every process of the job (MPI_COMM_WORLD). Initialises MPI on first use
/// (with MPI_THREAD_FUNNELED) unless the program already did, and then finalises it at exit.
inline MpiCommunicator& mpi_world() {
  static detail::MpiWorld world;
  return *world.comm;
}

}  // namespace fastnn
