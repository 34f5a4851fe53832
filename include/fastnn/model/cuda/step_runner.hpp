#pragma once
/// \file step_runner.hpp
/// The training step of Sequential::fit as one CUDA graph: detail::StepRunner<Cuda>, the device
/// hook of model/step_runner.hpp.
///
/// A training step of a small recurrent model is a few cuDNN RNN calls plus a few dozen small
/// kernels and cuBLAS calls, whose launch cost dominates. The first full batch of an epoch runs
/// eagerly; the next one runs its host code once under stream capture
/// (cudaStreamCaptureModeRelaxed on the context's stream; the second lane of a fused
/// Bidirectional layer joins the capture through the layer's fork/join events), and every later
/// full batch of the epoch is one cudaGraphLaunch.
///
/// What varies between steps is not baked in:
///  - the batch offset into the shuffled index (Ops::gather_rows, for the features and the labels
///    or targets) and the batch number of the deferred finite check (Ops::step_finite) are read
///    by the captured kernels from a device word holding the step's index
///    (cuda::Context::capture_step() during capture); the graph's last node increments it, and a
///    one-thread fill sets it only when a replay does not follow the previous one;
///  - the optimizer's per-step scalars (the scheduled or decayed rate, Adam's bias-corrected
///    rate, AdamW's decay factor): the update kernels read them from the optimizer's scalar buffer
///    on the device (Optimizer::scalars()), which Optimizer::load_scalars() writes before the
///    capture and before every replay; during the capture the optimizer leaves the buffer alone
///    (set_external_scalars), so the graph holds no host value. Every built-in optimizer is
///    captured, with any schedule (the caller passes `capturable` = Optimizer::capturable() and
///    no layer that draws new random numbers every step); the last, smaller batch of an epoch runs
///    eagerly. The optimizer's iteration count is advanced on the host for every replay;
///  - per-sample sequence lengths: cuDNN takes them from the host, per batch, so a model whose
///    batches carry lengths is not captured either (the caller passes capturable = false); the
///    recurrent layers and the Bidirectional merge throw if asked for lengths under capture,
///    which abandons the capture and turns graphs off for the model.
/// Device addresses are baked in, so a graph is replayed only while (a) the key (the StepKey of
/// the model: dataset tensors, index tensor, batch, finite check; plus the optimizer, the thread's
/// context and the cuDNN / TF32 / bidirectional settings) is unchanged and (b) no Allocator<Cuda>
/// allocation or free happened since its capture (cuda::detail::alloc_generation()); otherwise
/// the step runs eagerly and the graph is captured again at the next step (cudaGraphExecUpdate,
/// or a fresh instantiation). cuDNN's workspace and reserve buffers only grow, and the capture
/// follows an eager step of the same shape that allocated nothing, so they are stable.
///
/// If a capture fails (an API that cannot be captured, an error), graphs are turned off for
/// this model, the step runs eagerly, and with FASTNN_CUDA_VERBOSE set the reason is printed.
/// FASTNN_CUDA_GRAPH=0 (or cuda::set_graph_enabled(false)) turns the graphs off; results are
/// the same either way (same kernels, same order).

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/cuda/ops.hpp"
#include "fastnn/backend/cuda/rnn.hpp"
#include "fastnn/model/step_runner.hpp"
#include "fastnn/optim/optimizer.hpp"

namespace fastnn {
namespace cuda {

namespace detail {
inline bool graph_from_env() {
  const char* e = std::getenv("FASTNN_CUDA_GRAPH");
  if (!e) return true;
  const std::string s(e);
  return !(s == "0" || s == "off" || s == "false" || s == "no");
}
inline std::atomic<bool>& graph_setting() {
  static std::atomic<bool> g{graph_from_env()};
  return g;
}
}  // namespace detail

/// Whether Sequential::fit on the GPU captures its training step in a CUDA graph (default: on,
/// unless the environment variable FASTNN_CUDA_GRAPH=0). Takes effect at the next step.
inline void set_graph_enabled(bool on) { detail::graph_setting().store(on); }
inline bool graph_enabled() { return detail::graph_setting().load(); }

/// Counts of this process (all models, all threads): steps run as a graph replay, captures, and
/// captures that failed (each turns graphs off for its model).
struct GraphStats {
  long long replays = 0, captures = 0, failures = 0;
};
namespace detail {
struct GraphCounters {
  std::atomic<long long> replays{0}, captures{0}, failures{0};
};
inline GraphCounters& graph_counters() {
  static GraphCounters c;
  return c;
}
}  // namespace detail
inline GraphStats graph_stats() {
  auto& c = detail::graph_counters();
  return {c.replays.load(), c.captures.load(), c.failures.load()};
}

}  // namespace cuda

namespace detail {

/// Replays Sequential::fit's training step as a CUDA graph where it can (see the file comment).
/// One per model; movable, not copyable (it owns the graph and the step word).
template <>
class StepRunner<Cuda> {
 public:
  StepRunner() = default;
  StepRunner(const StepRunner&) = delete;
  StepRunner& operator=(const StepRunner&) = delete;
  StepRunner(StepRunner&& o) noexcept { *this = std::move(o); }
  StepRunner& operator=(StepRunner&& o) noexcept {
    if (this != &o) {
      release();
      exec_ = o.exec_;
      step_ = o.step_;
      o.exec_ = nullptr;
      o.step_ = nullptr;
      key_ = o.key_;
      warm_ = o.warm_;
      gen_ = o.gen_;
      warm_gen_ = o.warm_gen_;
      next_ = o.next_;
      broken_ = o.broken_;
      has_warm_ = o.has_warm_;
      o.has_warm_ = false;
    }
    return *this;
  }
  ~StepRunner() { release(); }

  /// See model/step_runner.hpp: replays step s (returns true) or returns false, and the caller
  /// runs the step eagerly. `body` runs step s's gather and train_step; it is called here only
  /// once, under capture. `capturable`: the step takes no per-step scalar from the host.
  template <class T, class Body>
  bool step(const StepKey& k, long s, bool capturable, Optimizer<T, Cuda>& opt, Body&& body) {
    if (broken_ || !capturable || !cuda::graph_enabled() || k.count != k.batch_size) return false;
    const Key key = make_key(k, &opt);
    const unsigned long long g = cuda::detail::alloc_generation().load();
    if (exec_ && key == key_ && g == gen_) {
      opt.load_scalars();
      launch(s);
      opt.set_iterations(opt.iterations() + 1);
      cuda::detail::graph_counters().replays.fetch_add(1);
      return true;
    }
    if (!(has_warm_ && key == warm_ && g == warm_gen_)) {
      // run this step eagerly: it sizes every workspace; the next one, if it allocates
      // nothing in between, is captured
      warm_ = key;
      warm_gen_ = g;
      has_warm_ = true;
      return false;
    }
    has_warm_ = false;
    return capture_and_launch(key, g, s, opt, std::forward<Body>(body));
  }

 private:
  struct Key {
    StepKey step;
    const void* optimizer = nullptr;
    const void* context = nullptr;
    int bidir = 0, algo = 0;
    bool tf32 = false;
    bool operator==(const Key& o) const {
      return step == o.step && optimizer == o.optimizer && context == o.context && bidir == o.bidir &&
             algo == o.algo && tf32 == o.tf32;
    }
  };
  static Key make_key(const StepKey& k, const void* opt) {
    Key key;
    key.step = k;
    key.optimizer = opt;
    key.context = &cuda::context();
    key.bidir = static_cast<int>(cuda::bidirectional_mode());
    key.algo = static_cast<int>(cuda::rnn_algo());
    key.tf32 = cuda::allow_tf32();
    return key;
  }

  template <class T, class Body>
  bool capture_and_launch(const Key& key, unsigned long long g, long s, Optimizer<T, Cuda>& opt, Body&& body) {
    auto& ctx = cuda::context();
    cudaStream_t st = ctx.stream();
    if (!step_) {
      void* p = nullptr;
      FASTNN_CUDA_CHECK(cudaMalloc(&p, sizeof(std::int64_t)));  // not through Allocator: no generation change
      step_ = static_cast<std::int64_t*>(p);
      next_ = -1;
    }
    const std::int64_t iterations = opt.iterations();
    std::string failure;
    cudaGraph_t graph = nullptr;
    opt.load_scalars();  // outside the capture: the graph reads them, and every replay writes them anew
    cudaError_t e = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed);
    if (e != cudaSuccess) {
      failure = std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e);
    } else {
      ctx.set_capture_step(step_);
      opt.set_external_scalars(true);
      try {
        body();
        cuda::kernels::increment(step_, st);
        FASTNN_CUDA_CHECK_LAUNCH("increment");
      } catch (const std::exception& ex) {
        failure = ex.what();
      } catch (...) {
        failure = "unknown exception";
      }
      opt.set_external_scalars(false);
      ctx.set_capture_step(nullptr);
      e = cudaStreamEndCapture(st, &graph);  // also ends the capture of the second lane
      if (e != cudaSuccess && failure.empty()) failure = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
    }
    // A step that allocated while captured is valid now (its buffers are alive) and is replayed
    // once, since its host side has run; but it cannot be trusted for the next step.
    const bool allocated = cuda::detail::alloc_generation().load() != g;
    if (failure.empty()) {
      if (exec_) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(exec_, graph, &info) != cudaSuccess) {
          (void)cudaGetLastError();
          (void)cudaGraphExecDestroy(exec_);
          exec_ = nullptr;
        }
      }
      if (!exec_) {
        e = cudaGraphInstantiate(&exec_, graph, 0);
        if (e != cudaSuccess) {
          exec_ = nullptr;
          failure = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
        }
      }
    }
    if (graph) (void)cudaGraphDestroy(graph);
    if (!failure.empty()) {
      (void)cudaGetLastError();
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(ctx.stream(1), &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone)
        throw DeviceError("CUDA graph: the second stream was left capturing after a failed capture (" + failure + ")");
      broken_ = true;
      opt.set_iterations(iterations);
      cuda::detail::graph_counters().failures.fetch_add(1);
      if (cuda::detail::verbose())
        std::fprintf(stderr, "fastnn: capturing the training step in a CUDA graph failed (%s); running it eagerly\n",
                     failure.c_str());
      return false;  // nothing ran on the device: the caller runs the step eagerly
    }
    key_ = key;
    gen_ = g;
    if (allocated) {
      broken_ = true;
      if (cuda::detail::verbose())
        std::fprintf(stderr, "fastnn: the captured training step allocated device memory; CUDA graphs are off for this "
                             "model from the next step\n");
    }
    cuda::detail::graph_counters().captures.fetch_add(1);
    if (cuda::detail::verbose()) {
      static std::atomic<bool> once{false};
      if (!once.exchange(true)) std::fprintf(stderr, "fastnn: training step captured in a CUDA graph\n");
    }
    launch(s);  // the capture advanced opt's iteration count already
    return true;
  }

  void launch(long s) {
    cudaStream_t st = cuda::stream();
    if (next_ != s) {
      cuda::kernels::fill<std::int64_t>(step_, 1, static_cast<std::int64_t>(s), st);
      FASTNN_CUDA_CHECK_LAUNCH("fill");
    }
    FASTNN_CUDA_CHECK(cudaGraphLaunch(exec_, st));
    next_ = s + 1;
  }

  void release() noexcept {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (step_) (void)cudaFree(step_);
    exec_ = nullptr;
    step_ = nullptr;
  }

  cudaGraphExec_t exec_ = nullptr;
  std::int64_t* step_ = nullptr;  ///< device: the index of the step being replayed
  Key key_, warm_;
  unsigned long long gen_ = 0, warm_gen_ = 0;
  long next_ = -1;  ///< the value *step_ holds after the last replay
  bool broken_ = false, has_warm_ = false;
};

}  // namespace detail
}  // namespace fastnn
