#pragma once
/// \file common.hpp
/// The foundation of the CUDA backend (host code, compiled by the ordinary C++ compiler):
///
///  - error checking: every failing CUDA runtime, cuBLAS or cuDNN call throws fastnn::DeviceError
///    carrying the library's own error string, the text of the call and where it was made;
///  - device discovery: fastnn::cuda::device_available(), device_description(), require_device();
///  - RAII handles and a per-thread Context: one CUDA stream, a cuBLAS handle and a cuDNN handle
///    bound to that stream. All device work issued from a thread is ordered on that thread's
///    stream; hand a device tensor to another thread only after Ops<T, Cuda>::synchronize();
///  - Allocator<Cuda> (plain cudaMalloc, never managed memory) and the tensor transfers that
///    core/tensor.hpp finds by argument-dependent lookup: copy_into, device_set_zero and
///    copy_across (host <-> device), for every element type;
///  - numerics switches: TF32 is OFF by default (cuBLAS CUBLAS_DEFAULT_MATH, cuDNN
///    CUDNN_FMA_MATH) so that GPU results match the CPU to ~1e-6; set_allow_tf32(true) trades that
///    for speed on Ampere and later.

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cudnn.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fastnn/core/device.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace cuda {
namespace detail {

inline std::string where(const char* call, const char* file, int line) {
  return std::string(" in ") + call + " (" + file + ":" + std::to_string(line) + ")";
}

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  std::string what = std::string("CUDA error ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
  if (e == cudaErrorMemoryAllocation) what = "out of GPU memory: " + what;
  throw DeviceError(what + where(call, file, line));
}

[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw DeviceError(std::string("cuBLAS error ") + cublasGetStatusName(s) + ": " + cublasGetStatusString(s) +
                    where(call, file, line));
}

[[noreturn]] inline void throw_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  std::string what = std::string("cuDNN error ") + cudnnGetErrorString(s);
  char msg[1024] = {0};
  cudnnGetLastErrorString(msg, sizeof msg);
  if (msg[0]) what += " (" + std::string(msg) + ")";
  if (s == CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
    what += ": cuDNN's sub-libraries (libcudnn_adv.so.9, ...) were loaded from another cuDNN installation than "
            "libcudnn.so " + std::to_string(cudnnGetVersion()) + "; put the directory of the libcudnn.so this "
            "program was linked with first on LD_LIBRARY_PATH";
  throw DeviceError(what + where(call, file, line));
}

}  // namespace detail
}  // namespace cuda
}  // namespace fastnn

/// Checks a CUDA runtime call; throws fastnn::DeviceError with the error string and the call.
#define FASTNN_CUDA_CHECK(call)                                                          \
  do {                                                                                   \
    cudaError_t fastnn_err_ = (call);                                                    \
    if (fastnn_err_ != cudaSuccess) {                                                    \
      (void)cudaGetLastError();                                                          \
      ::fastnn::cuda::detail::throw_cuda(fastnn_err_, #call, __FILE__, __LINE__);         \
    }                                                                                    \
  } while (0)

/// Checks a cuBLAS call; throws fastnn::DeviceError.
#define FASTNN_CUBLAS_CHECK(call)                                                        \
  do {                                                                                   \
    cublasStatus_t fastnn_st_ = (call);                                                  \
    if (fastnn_st_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::fastnn::cuda::detail::throw_cublas(fastnn_st_, #call, __FILE__, __LINE__);        \
  } while (0)

/// Checks a cuDNN call; throws fastnn::DeviceError.
#define FASTNN_CUDNN_CHECK(call)                                                         \
  do {                                                                                   \
    cudnnStatus_t fastnn_st_ = (call);                                                   \
    if (fastnn_st_ != CUDNN_STATUS_SUCCESS)                                              \
      ::fastnn::cuda::detail::throw_cudnn(fastnn_st_, #call, __FILE__, __LINE__);         \
  } while (0)

/// Checks that the last kernel launch was accepted (launch errors are reported at once;
/// faults inside a kernel surface at the next synchronising call).
#define FASTNN_CUDA_CHECK_LAUNCH(what) FASTNN_CUDA_CHECK(cudaPeekAtLastError())

namespace fastnn {
namespace cuda {

namespace detail {

/// The outcome of the one-time device probe.
struct DeviceProbe {
  bool ok = false;
  std::string message;  ///< why no device is usable (empty when ok)
};

inline DeviceProbe probe_device() {
  DeviceProbe p;
  int driver = 0, runtime = 0;
  (void)cudaDriverGetVersion(&driver);
  (void)cudaRuntimeGetVersion(&runtime);
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    auto ver = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
    if (driver == 0) {
      p.message = std::string("no CUDA device is available: ") + cudaGetErrorString(e) +
                  " (no NVIDIA driver was found)";
    } else if (e == cudaErrorInsufficientDriver || driver < runtime) {
      p.message = std::string("the NVIDIA driver is too old: it supports CUDA ") + ver(driver) +
                  ", this build of fastnn uses the CUDA " + ver(runtime) + " runtime (" +
                  cudaGetErrorString(e) + "); update the driver";
    } else {
      p.message = std::string("no CUDA device is available: ") + cudaGetErrorString(e);
    }
    return p;
  }
  if (n <= 0) {
    p.message = "no CUDA device is available: cudaGetDeviceCount found no device";
    return p;
  }
  p.ok = true;
  return p;
}

inline const DeviceProbe& device_probe() {
  static const DeviceProbe p = probe_device();
  return p;
}

/// Whether FASTNN_CUDA_VERBOSE is set: the backend then reports its choices (cuDNN algorithm,
/// CUDA graph capture) on stderr.
inline bool verbose() {
  static const bool v = std::getenv("FASTNN_CUDA_VERBOSE") != nullptr;
  return v;
}

inline std::atomic<bool>& tf32_flag() {
  static std::atomic<bool> f{false};
  return f;
}

/// Counts every cudaMalloc and cudaFree of Allocator<Cuda> (all threads). A captured CUDA graph
/// bakes in device addresses: it is replayed only while this count is unchanged since its
/// capture, i.e. while no tensor can have moved (see model/cuda/step_runner.hpp).
inline std::atomic<unsigned long long>& alloc_generation() {
  static std::atomic<unsigned long long> g{0};
  return g;
}

}  // namespace detail

/// Whether a usable CUDA device is present (probed once per process; never throws).
inline bool device_available() noexcept {
  try {
    return detail::device_probe().ok;
  } catch (...) {
    return false;
  }
}

/// Throws DeviceError ("no CUDA device is available: <reason>", or a message saying the
/// driver is too old) when no device can be used.
inline void require_device() {
  const auto& p = detail::device_probe();
  if (!p.ok) throw DeviceError(p.message);
}

/// The reason no device is usable, or "" when one is.
inline std::string device_unavailable_reason() { return detail::device_probe().message; }

/// Human-readable description of the current device and the library versions, e.g.
/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB), driver CUDA 13.0, runtime 13.0,
/// cuBLAS 13.0.0, cuDNN 9.19.0". Without a device: "no CUDA device (<reason>)".
inline std::string device_description() {
  if (!device_available()) return "no CUDA device (" + device_unavailable_reason() + ")";
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return "CUDA device (properties unavailable)";
  }
  int driver = 0, runtime = 0;
  (void)cudaDriverGetVersion(&driver);
  (void)cudaRuntimeGetVersion(&runtime);
  auto ver = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GiB", static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  const std::size_t cudnn = cudnnGetVersion();
  int cublas_ver = 0;
  (void)cublasGetProperty(MAJOR_VERSION, &cublas_ver);
  int cublas_min = 0, cublas_patch = 0;
  (void)cublasGetProperty(MINOR_VERSION, &cublas_min);
  (void)cublasGetProperty(PATCH_LEVEL, &cublas_patch);
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs, " + mem + "), driver CUDA " + ver(driver) +
         ", runtime " + ver(runtime) + ", cuBLAS " + std::to_string(cublas_ver) + "." + std::to_string(cublas_min) +
         "." + std::to_string(cublas_patch) + ", cuDNN " + std::to_string(cudnn / 10000) + "." +
         std::to_string(cudnn % 10000 / 100) + "." + std::to_string(cudnn % 100);
}

/// Allow TF32 tensor-core math for float GEMMs and RNNs (faster on Ampere and later, about
/// 1e-3 relative error). Off by default, and off in the parity tests. Takes effect for the next
/// cuBLAS call and for cuDNN RNN descriptors built afterwards.
inline void set_allow_tf32(bool on) { detail::tf32_flag().store(on); }
inline bool allow_tf32() { return detail::tf32_flag().load(); }

/// Owns a cuDNN descriptor of any kind: Handle<cudnnRNNDescriptor_t, cudnnDestroyRNNDescriptor>.
template <class H, cudnnStatus_t (*Destroy)(H)>
class CudnnDescriptor {
 public:
  CudnnDescriptor() = default;
  explicit CudnnDescriptor(H h) : h_(h) {}
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;
  CudnnDescriptor(CudnnDescriptor&& o) noexcept : h_(o.h_) { o.h_ = nullptr; }
  CudnnDescriptor& operator=(CudnnDescriptor&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = o.h_;
      o.h_ = nullptr;
    }
    return *this;
  }
  ~CudnnDescriptor() { reset(); }
  void reset() noexcept {
    if (h_) (void)Destroy(h_);
    h_ = nullptr;
  }
  H get() const noexcept { return h_; }
  explicit operator bool() const noexcept { return h_ != nullptr; }

 private:
  H h_ = nullptr;
};

using TensorDesc = CudnnDescriptor<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor>;
using RnnDesc = CudnnDescriptor<cudnnRNNDescriptor_t, cudnnDestroyRNNDescriptor>;
using RnnDataDesc = CudnnDescriptor<cudnnRNNDataDescriptor_t, cudnnDestroyRNNDataDescriptor>;
using DropoutDesc = CudnnDescriptor<cudnnDropoutDescriptor_t, cudnnDestroyDropoutDescriptor>;

inline TensorDesc make_tensor_desc() {
  cudnnTensorDescriptor_t d = nullptr;
  FASTNN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
  return TensorDesc(d);
}

/// The per-thread CUDA state: one stream, and cuBLAS and cuDNN handles bound to it. Created on
/// first use (throws DeviceError when no device is available).
class Context {
 public:
  Context() {
    require_device();
    FASTNN_CUDA_CHECK(cudaStreamCreate(&stream_));
    FASTNN_CUBLAS_CHECK(cublasCreate(&cublas_));
    FASTNN_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    FASTNN_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    FASTNN_CUDNN_CHECK(cudnnCreate(&cudnn_));
    FASTNN_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
    // cuBLAS's workspace, set once, so that no GEMM allocates (e.g. while a CUDA graph is being
    // captured); 32 MiB is cuBLAS's own default size on Hopper.
    FASTNN_CUDA_CHECK(cudaMalloc(&cublas_ws_, kCublasWorkspaceBytes));
    FASTNN_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_ws_, kCublasWorkspaceBytes));
    FASTNN_CUDA_CHECK(cudaMalloc(&guard_, sizeof(int)));
    const int ok = kNoNonFinite;
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(guard_, &ok, sizeof ok, cudaMemcpyHostToDevice, stream_));
    FASTNN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    // Errors at teardown (e.g. the runtime already unloaded at process exit) are ignored.
    if (dropout_states_) (void)cudaFree(dropout_states_);
    dropout_.reset();
    if (guard_) (void)cudaFree(guard_);
    if (aux_cudnn_) (void)cudnnDestroy(aux_cudnn_);
    if (aux_stream_) (void)cudaStreamDestroy(aux_stream_);
    if (cudnn_) (void)cudnnDestroy(cudnn_);
    if (cublas_) (void)cublasDestroy(cublas_);
    if (cublas_ws_) (void)cudaFree(cublas_ws_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }

  cudaStream_t stream() const noexcept { return stream_; }
  /// The cuBLAS handle, its math mode following set_allow_tf32().
  cublasHandle_t cublas() {
    const bool tf32 = allow_tf32();
    if (tf32 != cublas_tf32_) {
      FASTNN_CUBLAS_CHECK(cublasSetMathMode(cublas_, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
      cublas_tf32_ = tf32;
    }
    return cublas_;
  }
  cudnnHandle_t cudnn() const noexcept { return cudnn_; }

  /// Lanes: lane 0 is the stream and cuDNN handle above; lane 1 is a second stream with its own
  /// cuDNN handle, used to run independent work concurrently (the two directions of a fused
  /// Bidirectional layer). Work on lane 1 must be ordered against lane 0 with events.
  cudaStream_t stream(int lane) {
    if (lane == 0) return stream_;
    ensure_aux();
    return aux_stream_;
  }
  cudnnHandle_t cudnn(int lane) {
    if (lane == 0) return cudnn_;
    ensure_aux();
    return aux_cudnn_;
  }

  /// A dropout descriptor with probability 0 (cuDNN's RNN descriptor requires one).
  cudnnDropoutDescriptor_t no_dropout() {
    if (!dropout_) {
      cudnnDropoutDescriptor_t d = nullptr;
      FASTNN_CUDNN_CHECK(cudnnCreateDropoutDescriptor(&d));
      dropout_ = DropoutDesc(d);
      std::size_t bytes = 0;
      FASTNN_CUDNN_CHECK(cudnnDropoutGetStatesSize(cudnn_, &bytes));
      FASTNN_CUDA_CHECK(cudaMalloc(&dropout_states_, bytes ? bytes : 256));
      FASTNN_CUDNN_CHECK(cudnnSetDropoutDescriptor(dropout_.get(), cudnn_, 0.0f, dropout_states_, bytes, 0));
    }
    return dropout_.get();
  }

  /// Device word used by the deferred finite check of training on the GPU: kNoNonFinite, or
  /// 2 * batch + (0: loss, 1: gradient) of the first batch that produced a NaN or infinity.
  /// While it is set, the optimizer kernels leave the parameters unchanged.
  int* guard() const noexcept { return guard_; }
  static constexpr int kNoNonFinite = 0x7fffffff;

  /// While a training step is being captured into a CUDA graph (model/cuda/step_runner.hpp): the
  /// device word holding the step's index within the epoch, from which the captured kernels read
  /// the per-step values (batch offset of gather_rows, batch number of the finite check); null
  /// otherwise.
  const std::int64_t* capture_step() const noexcept { return capture_step_; }
  void set_capture_step(const std::int64_t* p) noexcept { capture_step_ = p; }
  /// Whether such a capture is under way (cuDNN's algorithm fallback is then not attempted).
  bool capturing() const noexcept { return capture_step_ != nullptr; }

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  bool cublas_tf32_ = false;
  DropoutDesc dropout_;
  void* dropout_states_ = nullptr;
  int* guard_ = nullptr;
  void* cublas_ws_ = nullptr;
  static constexpr std::size_t kCublasWorkspaceBytes = std::size_t{32} << 20;
  const std::int64_t* capture_step_ = nullptr;
  cudaStream_t aux_stream_ = nullptr;
  cudnnHandle_t aux_cudnn_ = nullptr;

  void ensure_aux() {
    if (aux_cudnn_) return;
    if (!aux_stream_) FASTNN_CUDA_CHECK(cudaStreamCreate(&aux_stream_));
    FASTNN_CUDNN_CHECK(cudnnCreate(&aux_cudnn_));
    FASTNN_CUDNN_CHECK(cudnnSetStream(aux_cudnn_, aux_stream_));
  }
};

/// Owns a CUDA event (no timing): orders work between lanes.
class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (e_) (void)cudaEventDestroy(e_);
  }
  /// Records on `from`, and makes `to` wait for it.
  void order(cudaStream_t from, cudaStream_t to) {
    if (!e_) FASTNN_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming));
    FASTNN_CUDA_CHECK(cudaEventRecord(e_, from));
    FASTNN_CUDA_CHECK(cudaStreamWaitEvent(to, e_, 0));
  }

 private:
  cudaEvent_t e_ = nullptr;
};

/// This thread's context.
inline Context& context() {
  thread_local Context ctx;
  return ctx;
}

/// This thread's stream.
inline cudaStream_t stream() { return context().stream(); }

}  // namespace cuda

/// Device memory through cudaMalloc (no managed memory). Throws DeviceError when no device is
/// available or the device is out of memory.
template <>
struct Allocator<Cuda> {
  static void* allocate(std::size_t bytes) {
    cuda::require_device();
    if (bytes == 0) bytes = 256;
    void* p = nullptr;
    cuda::detail::alloc_generation().fetch_add(1);
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw DeviceError(std::string("out of GPU memory: cudaMalloc of ") + std::to_string(bytes) +
                        " bytes failed: " + cudaGetErrorString(e));
    }
    return p;
  }
  /// cudaFree waits for the device, so memory still used by queued work is freed safely.
  /// Errors (e.g. at process exit, after the runtime has shut down) are ignored.
  static void deallocate(void* p) noexcept {
    if (!p) return;
    cuda::detail::alloc_generation().fetch_add(1);
    (void)cudaFree(p);
  }
};

// ---- transfers found by argument-dependent lookup from core/tensor.hpp ---------------------

/// Device-to-device copy of the elements of `src` into `dst` (same number of elements),
/// ordered on this thread's stream.
template <class T>
void copy_into(const Tensor<T, Cuda>& src, Tensor<T, Cuda>& dst) {
  if (src.size() != dst.size())
    throw ShapeError("copy_into: source " + src.shape().str() + " and destination " + dst.shape().str() +
                     " differ in size");
  if (src.size() == 0 || src.data() == dst.data()) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * static_cast<std::size_t>(src.size()),
                                    cudaMemcpyDeviceToDevice, cuda::stream()));
}

/// Zeroes a device tensor (asynchronously, on this thread's stream).
template <class T>
void device_set_zero(Tensor<T, Cuda>& t) {
  if (t.size() == 0) return;
  FASTNN_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, sizeof(T) * static_cast<std::size_t>(t.size()), cuda::stream()));
}

/// Host to device. Returns once the host data has been staged: `src` may be reused at once.
template <class T>
void copy_across(const Tensor<T, Cpu>& src, Tensor<T, Cuda>& dst) {
  if (src.size() != dst.size())
    throw ShapeError("to_device<Cuda>: source " + src.shape().str() + " and destination " + dst.shape().str() +
                     " differ in size");
  if (src.size() == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * static_cast<std::size_t>(src.size()),
                                    cudaMemcpyHostToDevice, cuda::stream()));
}

/// Device to host; waits for the copy (and all work queued before it on this thread's stream).
template <class T>
void copy_across(const Tensor<T, Cuda>& src, Tensor<T, Cpu>& dst) {
  if (src.size() != dst.size())
    throw ShapeError("to_device<Cpu>: source " + src.shape().str() + " and destination " + dst.shape().str() +
                     " differ in size");
  if (src.size() == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * static_cast<std::size_t>(src.size()),
                                    cudaMemcpyDeviceToHost, cuda::stream()));
  FASTNN_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}

}  // namespace fastnn
