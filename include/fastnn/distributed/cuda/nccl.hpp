#pragma once
/// \file nccl.hpp
/// NcclCommunicator: fastnn's Communicator on NVIDIA NCCL, for data-parallel training of a
/// model on the GPU (Sequential<T, Cuda>) with one GPU per rank. Link fastnn::nccl (built with
/// FASTNN_CUDA and FASTNN_MPI when NCCL is found).
///
///   fastnn::NcclCommunicator nccl(fastnn::mpi_world());  // first: it selects this rank's GPU
///   fastnn::Sequential<float, fastnn::Cuda> model = cpu_model.to<fastnn::Cuda>();
///   auto train = cpu_train.to<fastnn::Cuda>();
///   model.fit(train, fastnn::FitOptions().epochs(30).batch_size(128).distributed(nccl));
///
/// and start the program with `mpirun -np N ./program`. MPI bootstraps NCCL (rank 0's
/// ncclUniqueId is broadcast over it) and carries the host-side operations (allreduce_host,
/// allgather, barrier, abort); broadcast() and allreduce_start() move GPU buffers with NCCL.
///
/// The constructor selects the rank's GPU: `device`, or by default the rank's index on its node
/// (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, or else the MPI rank) modulo the number of
/// GPUs, made current with cudaSetDevice. fastnn's per-thread CUDA stream is created on the
/// device current when the thread first uses the GPU, so construct the communicator before any
/// fastnn CUDA work (tensors, models, datasets), on the thread that trains.
///
/// NCCL runs on a stream of its own: each operation starts after the work already queued on
/// fastnn::cuda::stream() (the gradients it reads are complete), and wait_all() makes that
/// stream wait for the operations before later kernels touch their buffers. The communicator is
/// non-blocking (ncclConfig_t::blocking = 0): every wait, including NCCL's own set-up, polls and
/// gives up after timeout() seconds by aborting the NCCL communicator and then the job
/// (MPI_Abort) with a message naming the operation; an asynchronous NCCL error (a peer lost)
/// ends the job the same way.

#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/distributed/communicator.hpp"
#include "fastnn/distributed/mpi.hpp"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "fastnn's NcclCommunicator needs NCCL 2.14 or later (non-blocking communicators)"
#endif

namespace fastnn {

class NcclCommunicator : public Communicator {
 public:
  /// A communicator over the ranks of `bootstrap`, one GPU each: `device`, or -1 for the rank's
  /// index on its node modulo the number of GPUs. Collective over `bootstrap`. When the set-up
  /// fails on any rank, every rank throws the same exception naming the failing ranks and their
  /// reasons: DeviceError (no usable GPU, no such device), ArgumentError (a bad `device` or
  /// local rank), DistributedError (NCCL). A failure of NCCL's initialisation itself is a
  /// DistributedError on the rank it happens on.
  explicit NcclCommunicator(MpiCommunicator& bootstrap, int device = -1) : bootstrap_(bootstrap) {
    set_timeout(bootstrap.timeout());
    try {
      // Each rank's local set-up; then all ranks learn whether any failed, before any rank
      // waits for the others inside NCCL.
      ncclUniqueId id;
      std::memset(&id, 0, sizeof id);
      std::string error;  // the kind of error ('D'evice, 'A'rgument, 'E'lse) and its message
      auto failed_with = [&error](char kind, const char* what) {
        error = kind + std::string(*what ? what : "unknown error");
      };
      try {
        setup_device(device);
        if (rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      } catch (const DeviceError& e) {
        failed_with('D', e.what());
      } catch (const ArgumentError& e) {
        failed_with('A', e.what());
      } catch (const std::exception& e) {
        failed_with('E', e.what());
      }
      throw_if_any_failed(error);

      bootstrap_.broadcast(&id, sizeof id, DType::U8, 0);  // rank 0's id to every rank

      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      check(ncclCommInitRankConfig(&comm_, size(), id, rank(), &config), "ncclCommInitRankConfig",
            "NCCL initialisation");
      ready_ = true;
    } catch (...) {
      release();
      throw;
    }
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  /// Flushes and destroys the NCCL communicator (aborts it when that does not finish within
  /// timeout()), then the stream and events. Never throws.
  ~NcclCommunicator() override { release(); }

  int rank() const override { return bootstrap_.rank(); }
  int size() const override { return bootstrap_.size(); }
  std::string backend() const override { return "nccl"; }
  bool device_buffers() const override { return true; }
  /// The CUDA device this rank's NCCL communicator runs on.
  int device() const { return device_; }
  /// The stream NCCL's operations run on.
  cudaStream_t comm_stream() const { return stream_; }
  ncclComm_t comm() const { return comm_; }

  void broadcast(void* data, std::size_t count, DType type, int root) override {
    if (count == 0) return;
    after_compute();
    check(ncclBroadcast(data, data, count, nccl_type(type), root, comm_, stream_), "ncclBroadcast", "broadcast");
    pending_ = true;
    wait_for("broadcast");
  }

  void allreduce_start(void* data, std::size_t count, DType type) override {
    if (count == 0) return;
    after_compute();
    check(ncclAllReduce(data, data, count, nccl_type(type), ncclSum, comm_, stream_), "ncclAllReduce",
          "gradient allreduce");
    pending_ = true;
  }

  void wait_all() override { wait_for("gradient allreduce"); }

  void allreduce_host(double* data, std::size_t count) override { bootstrap_.allreduce_host(data, count); }
  /// Also the timeout of the host operations, which run on the bootstrap communicator.
  void set_timeout(double seconds) override {
    Communicator::set_timeout(seconds);
    bootstrap_.set_timeout(seconds);
  }
  std::vector<std::string> allgather(const std::string& s) override { return bootstrap_.allgather(s); }
  void barrier() override { bootstrap_.barrier(); }

  [[noreturn]] void abort(const std::string& message) override {
    if (comm_) {
      (void)ncclCommAbort(comm_);  // frees kernels waiting for a peer that will never answer
      comm_ = nullptr;
    }
    bootstrap_.abort(message);
    std::_Exit(1);  // the bootstrap's abort does not return; in case an MPI library's does
  }

 private:
  static ncclDataType_t nccl_type(DType t) {
    return t == DType::F32 ? ncclFloat32 : (t == DType::F64 ? ncclFloat64 : ncclUint8);
  }
  static const std::string& prefix() {
    static const std::string p = "NcclCommunicator: ";
    return p;
  }

  /// Gathers every rank's set-up error (its kind, 'D'evice, 'A'rgument or 'E'lse, then its
  /// message; "" for none). If any rank failed, throws on every rank an exception of the first
  /// failing rank's kind naming each failing rank and its message.
  void throw_if_any_failed(const std::string& mine) {
    const std::vector<std::string> all = bootstrap_.allgather(mine);
    std::string failed, msg;
    char kind = 0;
    bool alike = true;  // every rank failed the same way
    for (std::size_t r = 0; r < all.size(); ++r) {
      alike = alike && all[r] == all[0];
      if (all[r].empty()) continue;
      if (!kind) kind = all[r][0];
      msg = all[r].substr(1);
      if (msg.compare(0, prefix().size(), prefix()) == 0) msg.erase(0, prefix().size());
      failed += (failed.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) + ": " + msg;
    }
    if (!kind) return;
    if (alike && all.size() > 1) failed = "every rank: " + msg;
    if (kind == 'D') throw DeviceError(prefix() + failed);
    if (kind == 'A') throw ArgumentError(prefix() + failed);
    throw DistributedError(prefix() + failed);
  }

  /// Chooses and selects the device, checks that this thread's fastnn stream lives on it, and
  /// creates the communication stream and events.
  void setup_device(int device) {
    if (device < -1)
      throw ArgumentError("NcclCommunicator: device " + std::to_string(device) + " (expected -1 or a device index)");
    cuda::require_device();
    int count = 0;
    FASTNN_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device == -1) {
      device = local_rank() % count;
    } else if (device >= count) {
      throw DeviceError("NcclCommunicator: no CUDA device " + std::to_string(device) + " (this machine has " +
                        std::to_string(count) + ")");
    }
    device_ = device;
    FASTNN_CUDA_CHECK(cudaSetDevice(device_));
    (void)compute_stream();
    FASTNN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    FASTNN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_event_, cudaEventDisableTiming));
    FASTNN_CUDA_CHECK(cudaEventCreateWithFlags(&done_event_, cudaEventDisableTiming));
  }

  /// The rank's index among the ranks of its node, from the MPI launcher's environment.
  int local_rank() const {
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"}) {
      const char* e = std::getenv(name);
      if (!e || !*e) continue;
      char* end = nullptr;
      const long v = std::strtol(e, &end, 10);
      if (end == e || *end != '\0' || v < 0 || v > 1000000)
        throw ArgumentError(std::string(name) + "='" + e + "': expected a local rank (a non-negative integer)");
      return static_cast<int>(v);
    }
    return rank();
  }

  /// fastnn::cuda::stream() of the calling thread, checked (once per stream) to be on the
  /// communicator's device.
  cudaStream_t compute_stream() {
    cudaStream_t s = cuda::stream();
#if CUDART_VERSION >= 12080
    if (s != checked_stream_) {
      int dev = -1;
      FASTNN_CUDA_CHECK(cudaStreamGetDevice(s, &dev));
      if (dev != device_)
        throw DeviceError("NcclCommunicator: this thread's fastnn CUDA stream is on device " + std::to_string(dev) +
                          ", the rank's NCCL communicator on device " + std::to_string(device_) +
                          ": construct the NcclCommunicator before any fastnn CUDA work, on the thread that trains");
      checked_stream_ = s;
    }
#endif
    return s;
  }

  /// Orders the communication stream after the work queued so far on fastnn's stream.
  void after_compute() {
    FASTNN_CUDA_CHECK(cudaEventRecord(ready_event_, compute_stream()));
    FASTNN_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_event_, 0));
  }

  /// Checks an NCCL call. A non-blocking communicator may answer ncclInProgress while NCCL
  /// sets up (connections, initialisation): the call then completes in the background and is
  /// polled until it does, for at most timeout() seconds.
  void check(ncclResult_t r, const char* call, const char* what = nullptr) {
    if (r == ncclInProgress) r = settle(what ? what : call);
    if (r == ncclSuccess) return;
    std::string msg = ncclGetErrorString(r);
    const char* last = ncclGetLastError(comm_);
    if (last && *last) msg += std::string(" (") + last + ")";
    throw DistributedError("rank " + std::to_string(rank()) + ": " + call + " failed: " + msg);
  }

  /// Polls the communicator's state until it leaves ncclInProgress; aborts the job after
  /// timeout().
  ncclResult_t settle(const char* what) {
    ncclResult_t state = ncclInProgress;
    poll(what, [&] {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
      return state != ncclInProgress;
    });
    return state;
  }

  /// Makes fastnn's stream wait for every started operation, and waits for them on the host;
  /// aborts the job after timeout() or on an asynchronous NCCL error.
  void wait_for(const char* what) {
    if (!pending_) return;
    FASTNN_CUDA_CHECK(cudaEventRecord(done_event_, stream_));
    FASTNN_CUDA_CHECK(cudaStreamWaitEvent(compute_stream(), done_event_, 0));
    poll(what, [&] {
      const cudaError_t e = cudaEventQuery(done_event_);
      if (e == cudaSuccess) return true;
      if (e != cudaErrorNotReady) {
        (void)cudaGetLastError();
        cuda::detail::throw_cuda(e, "cudaEventQuery(done_event_)", __FILE__, __LINE__);
      }
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) state = r;
      if (state != ncclSuccess && state != ncclInProgress) {
        std::string msg = ncclGetErrorString(state);
        const char* last = ncclGetLastError(comm_);
        if (last && *last) msg += std::string(" (") + last + ")";
        abort(std::string(what) + " failed: NCCL error: " + msg);
      }
      return false;
    });
    pending_ = false;
  }

  /// Communicator::wait_until, for the calls below.
  template <class Done>
  void poll(const char* what, Done&& done) {
    wait_until(what, std::forward<Done>(done));
  }

  /// Releases the NCCL communicator, the stream and the events; ignores errors (the runtime
  /// may already be shutting down at process exit).
  void release() noexcept {
    if (comm_) {
      bool clean = false;
      const ncclResult_t r = ready_ ? ncclCommFinalize(comm_) : ncclInternalError;
      if (r == ncclSuccess || r == ncclInProgress) {
        // Finalize flushes the started operations in the background; bounded, as every wait.
        ncclResult_t state = ncclInProgress;
        const auto start = std::chrono::steady_clock::now();
        while (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress &&
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <= timeout())
          std::this_thread::sleep_for(std::chrono::microseconds(50));
        clean = state == ncclSuccess;
      }
      (void)(clean ? ncclCommDestroy(comm_) : ncclCommAbort(comm_));
      comm_ = nullptr;
    }
    if (done_event_) (void)cudaEventDestroy(done_event_);
    if (ready_event_) (void)cudaEventDestroy(ready_event_);
    if (stream_) (void)cudaStreamDestroy(stream_);
    done_event_ = ready_event_ = nullptr;
    stream_ = nullptr;
    ready_ = false;
  }

  MpiCommunicator& bootstrap_;
  int device_ = -1;
  ncclComm_t comm_ = nullptr;
  bool ready_ = false;    ///< ncclCommInitRankConfig completed
  bool pending_ = false;  ///< operations started since the last wait
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_event_ = nullptr;  ///< fastnn's stream -> the communication stream
  cudaEvent_t done_event_ = nullptr;   ///< the communication stream -> fastnn's stream
  cudaStream_t checked_stream_ = nullptr;
};

}  // namespace fastnn
