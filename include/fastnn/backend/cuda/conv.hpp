#pragma once
/// \file conv.hpp
/// SpatialOps<T, Cuda>: the GPU primitives of the spatial layers (the contract and its members are
/// in backend/conv.hpp; the semantics are those of backend/cpu/conv.hpp, to rounding). Host code:
/// the cuDNN and cuBLAS calls are inline here; the kernels it launches are in kernels.cu.
///
///  - Convolutions run on cuDNN (cudnnConvolutionForward, BackwardData, BackwardFilter) with NHWC
///    tensor descriptors (CUDNN_TENSOR_NHWC), groups through cudnnSetConvolutionGroupCount, and
///    the strides and dilations of the ConvGeometry.
///  - Filter layout: fastnn's kernel is [kh, kw, c / G, filters] (Keras's), which no cuDNN filter
///    format is. cuDNN's NHWC filter format is [filters, kh, kw, c / G], the transpose of the kernel
///    viewed as a matrix [kh * kw * c / G, filters]; each call transposes the kernel into a buffer
///    of the layer's workspace `col` with cublas<t>geam, and the filter gradient, computed by cuDNN
///    into a buffer of `dcol`, is transposed back and added to dw by a second geam (dw += ...,
///    the CPU's accumulate contract).
///  - Padding: cuDNN pads symmetrically. Per axis, the padding before (pt, pl) and the padding
///    after that the output extent implies (never negative) share their smaller part q, which
///    cuDNN adds on both sides; the remainder (the one extra row or column after the input of an
///    asymmetric 'same' padding, or the (k - 1) d columns before the input of a causal one) is
///    added explicitly: the input is copied into a zero-padded buffer of `col` (pad_nhwc) and the
///    data gradient computed on that buffer is cropped back (crop_nhwc). Symmetric paddings
///    (valid, odd kernels with 'same' and stride 1) copy nothing.
///  - Algorithms: cudnnGet*Algorithm_v7 (cuDNN's heuristics, no trial runs, so nothing is
///    allocated or launched while choosing), once per geometry, batch size, element type and TF32
///    setting; the plans (descriptors and choices) are cached per thread. The first candidate
///    that cuDNN reports as supported and, without TF32, does not use tensor-op math is taken; if
///    cuDNN refuses it at the first call, the next candidate is tried (not while a CUDA graph is
///    being captured). Workspaces live in the layer's `col` tensor (Allocator<Cuda>), which grows
///    on the eager warm-up step and is then stable, so a captured step allocates nothing.
///  - Math: CUDNN_FMA_MATH for float (no TF32) unless cuda::allow_tf32(); then the math type
///    cuDNN reports for the chosen algorithm.
///  - Pooling runs on fastnn's kernels, not cudnnPoolingForward: cuDNN pads symmetrically, does
///    not take per-sample lengths, and its maximum's tie rule is not documented. The kernels keep
///    the CPU's rules: padding never wins and is not counted in an average, and the gradient of a
///    maximum goes to the first maximum of its window in scan order (rows, then columns). The
///    backward kernel gathers, per input element, the windows that contain it in scan order, so
///    it needs neither atomics nor a saved arg-max.
///  - Batch normalization runs on fastnn's kernels, not cudnnBatchNormalization*: the contract
///    keeps the moments, the normalisation and the moving averages apart (the layer updates the
///    moving statistics with the biased batch variance, as Keras 3, while cuDNN's running
///    variance is the unbiased one). Moments and gradient sums are accumulated in double in a
///    fixed order (deterministic), as on the CPU.
///  - Global pooling, mask_steps and permute are fastnn's kernels. Per-sample lengths are copied
///    to the device per call; such batches are not captured in CUDA graphs (the step runner does
///    not capture them), and a call with lengths during a capture throws DeviceError.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "fastnn/backend/conv.hpp"
#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/core/error.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace cuda {
namespace detail {

using FilterDesc = CudnnDescriptor<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor>;
using ConvDesc = CudnnDescriptor<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor>;

/// One algorithm cuDNN offers, with its workspace and math type.
template <class Algo>
struct ConvChoice {
  Algo algo;
  std::size_t bytes;
  cudnnMathType_t math;
};

/// Keeps the supported candidates of a cudnnGet*Algorithm_v7 answer, best first; without TF32
/// (float), those using tensor-op math are left out.
template <class Algo, class Perf>
std::vector<ConvChoice<Algo>> conv_candidates(const Perf* perf, int count, bool tensor_ops) {
  std::vector<ConvChoice<Algo>> out;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (!tensor_ops && (perf[i].mathType == CUDNN_TENSOR_OP_MATH ||
                        perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
      continue;
    out.push_back({perf[i].algo, perf[i].memory, perf[i].mathType});
  }
  return out;
}

/// How one convolution geometry (with its batch size) runs on cuDNN: see the file comment.
struct ConvPlan {
  Index et = 0, eb = 0, el = 0, er = 0;  ///< explicit padding before/after, rows and columns
  Index hp = 0, wp = 0;                  ///< the extents of the (explicitly padded) input
  bool tensor_ops = false;               ///< float with TF32 allowed
  cudnnMathType_t base_math = CUDNN_DEFAULT_MATH;
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  std::vector<ConvChoice<cudnnConvolutionFwdAlgo_t>> fwd;
  std::vector<ConvChoice<cudnnConvolutionBwdDataAlgo_t>> data;
  std::vector<ConvChoice<cudnnConvolutionBwdFilterAlgo_t>> filter;
  std::size_t fwd_at = 0, data_at = 0, filter_at = 0;  ///< the candidate in use
  bool fwd_chosen = false, bwd_chosen = false;

  bool padded() const { return et || eb || el || er; }
  void set_math(cudnnMathType_t m) { FASTNN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv.get(), m)); }
};

template <class T>
cudnnDataType_t cudnn_type() {
  return std::is_same<T, float>::value ? CUDNN_DATA_FLOAT : CUDNN_DATA_DOUBLE;
}

inline int to_cudnn_int(Index v, const char* what) {
  if (v < 0 || v > 0x7fffffff) throw ShapeError(std::string("cuDNN convolution: ") + what + " out of range");
  return static_cast<int>(v);
}

/// This thread's plan for geometry `g` and element type T (created at the first call).
template <class T>
ConvPlan& conv_plan(const ConvGeometry& g) {
  using Key = std::array<Index, 18>;
  thread_local std::map<Key, std::unique_ptr<ConvPlan>> plans;
  const bool tensor_ops = std::is_same<T, float>::value && allow_tf32();
  const Key key{g.n, g.h, g.w, g.c, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.oh, g.ow, g.groups, g.filters,
                static_cast<Index>(sizeof(T)), tensor_ops ? 1 : 0};
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;

  auto p = std::make_unique<ConvPlan>();
  p->tensor_ops = tensor_ops;
  // Per axis: padding after = what the output extent needs beyond the input (never negative);
  // cuDNN pads min(before, after) on both sides, the rest is explicit.
  auto split = [](Index in, Index k, Index s, Index d, Index before, Index out, Index& eb4, Index& ea) {
    const Index after = std::max<Index>((out - 1) * s + (k - 1) * d + 1 - in - before, 0);
    const Index q = std::min(before, after);
    eb4 = before - q;
    ea = after - q;
    return q;
  };
  const Index qh = split(g.h, g.kh, g.sh, g.dh, g.pt, g.oh, p->et, p->eb);
  const Index qw = split(g.w, g.kw, g.sw, g.dw, g.pl, g.ow, p->el, p->er);
  p->hp = g.h + p->et + p->eb;
  p->wp = g.w + p->el + p->er;
  const cudnnDataType_t dt = cudnn_type<T>();
  p->x = make_tensor_desc();
  p->y = make_tensor_desc();
  FASTNN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x.get(), CUDNN_TENSOR_NHWC, dt, to_cudnn_int(g.n, "batch"),
                                                to_cudnn_int(g.c, "channels"), to_cudnn_int(p->hp, "height"),
                                                to_cudnn_int(p->wp, "width")));
  FASTNN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y.get(), CUDNN_TENSOR_NHWC, dt, to_cudnn_int(g.n, "batch"),
                                                to_cudnn_int(g.filters, "filters"), to_cudnn_int(g.oh, "height"),
                                                to_cudnn_int(g.ow, "width")));
  cudnnFilterDescriptor_t fd = nullptr;
  FASTNN_CUDNN_CHECK(cudnnCreateFilterDescriptor(&fd));
  p->w = FilterDesc(fd);
  FASTNN_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w.get(), dt, CUDNN_TENSOR_NHWC, to_cudnn_int(g.filters, "filters"),
                                                to_cudnn_int(g.c / g.groups, "channels"),
                                                to_cudnn_int(g.kh, "kernel"), to_cudnn_int(g.kw, "kernel")));
  cudnnConvolutionDescriptor_t cd = nullptr;
  FASTNN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd));
  p->conv = ConvDesc(cd);
  FASTNN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
      p->conv.get(), to_cudnn_int(qh, "padding"), to_cudnn_int(qw, "padding"), to_cudnn_int(g.sh, "stride"),
      to_cudnn_int(g.sw, "stride"), to_cudnn_int(g.dh, "dilation"), to_cudnn_int(g.dw, "dilation"),
      CUDNN_CROSS_CORRELATION, dt));
  FASTNN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->conv.get(), to_cudnn_int(g.groups, "groups")));
  p->base_math = std::is_same<T, float>::value && !tensor_ops ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
  p->set_math(p->base_math);
  int on = 0, oc = 0, oh = 0, ow = 0;
  FASTNN_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv.get(), p->x.get(), p->w.get(), &on, &oc, &oh, &ow));
  if (on != g.n || oc != g.filters || oh != g.oh || ow != g.ow)
    throw ShapeError("cuDNN convolution: output " + std::to_string(oh) + "x" + std::to_string(ow) + "x" +
                     std::to_string(oc) + " differs from the layer's " + std::to_string(g.oh) + "x" +
                     std::to_string(g.ow) + "x" + std::to_string(g.filters));
  ConvPlan& ref = *p;
  plans.emplace(key, std::move(p));
  return ref;
}

/// Element offsets of consecutive buffers in one workspace tensor, each 256-byte aligned.
template <class T>
struct Slots {
  Index total = 0;
  Index add(Index elements) {
    const Index align = 256 / static_cast<Index>(sizeof(T));
    const Index at = total;
    total += (elements + align - 1) / align * align;
    return at;
  }
  Index add_bytes(std::size_t bytes) { return add(static_cast<Index>((bytes + sizeof(T) - 1) / sizeof(T))); }
};

/// The device copy of per-sample lengths for the next kernels (null when empty); throws while a
/// CUDA graph is being captured.
inline const std::int32_t* device_lengths(const Lengths& lengths, const char* who) {
  if (lengths.empty()) return nullptr;
  if (context().capturing())
    throw DeviceError(std::string(who) +
                      ": a batch with per-sample lengths cannot be captured in a CUDA graph (its lengths change "
                      "from batch to batch); run such a model without graph capture");
  thread_local Tensor<std::int32_t, Cuda> buf;
  buf.resize(Shape{lengths.size()});
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(buf.data(), lengths.data(), sizeof(std::int32_t) * lengths.size(),
                                    cudaMemcpyHostToDevice, stream()));
  return buf.data();
}

}  // namespace detail
}  // namespace cuda

template <class T>
struct SpatialOps<T, Cuda> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "SpatialOps<T, Cuda> exists for float and double");
  using Tn = Tensor<T, Cuda>;

  /// y [n, oh, ow, filters] (sized by the caller) = conv(x, w) with w [kh, kw, c / G, filters];
  /// col: workspace (the transposed kernel, the padded input, cuDNN's workspace).
  static void conv_forward(const ConvGeometry& g, const Tn& x, const Tn& w, Tn& y, Tn& col, Precision p) {
    require_f32(p, "conv_forward");
    check_size(y, g.rows() * g.filters, "conv_forward");
    auto& plan = cuda::detail::conv_plan<T>(g);
    cudnnHandle_t h = cuda::context().cudnn();
    if (!plan.fwd_chosen) {
      std::array<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT> perf{};
      int n = 0;
      FASTNN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, plan.x.get(), plan.w.get(), plan.conv.get(),
                                                                plan.y.get(), static_cast<int>(perf.size()), &n,
                                                                perf.data()));
      plan.fwd = cuda::detail::conv_candidates<cudnnConvolutionFwdAlgo_t>(perf.data(), n, plan.tensor_ops);
      if (plan.fwd.empty()) plan.fwd.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, 0, plan.base_math});
      plan.fwd_chosen = true;
    }
    const Index K = g.group_cols();
    for (;;) {
      const auto& c = plan.fwd[plan.fwd_at];
      cuda::detail::Slots<T> s;
      const Index wt = s.add(K * g.filters), xp = plan.padded() ? s.add(g.n * plan.hp * plan.wp * g.c) : 0;
      const Index ws = s.add_bytes(c.bytes);
      col.resize(Shape{s.total});
      transpose(w.data(), K, g.filters, col.data() + wt);
      const T* xin = x.data();
      if (plan.padded()) {
        pad(g, plan, x.data(), col.data() + xp);
        xin = col.data() + xp;
      }
      plan.set_math(plan.tensor_ops ? c.math : plan.base_math);
      const T one = 1, zero = 0;
      const cudnnStatus_t st =
          cudnnConvolutionForward(h, &one, plan.x.get(), xin, plan.w.get(), col.data() + wt, plan.conv.get(), c.algo,
                                  c.bytes ? col.data() + ws : nullptr, c.bytes, &zero, plan.y.get(), y.data());
      if (st == CUDNN_STATUS_SUCCESS) return;
      if (!retry(st, plan.fwd_at, plan.fwd.size()))
        cuda::detail::throw_cudnn(st, "cudnnConvolutionForward", __FILE__, __LINE__);
    }
  }

  /// dw += dL/dw and, with dx, dx = dL/dx (sized as x by the caller), given dy [n, oh, ow, filters].
  static void conv_backward(const ConvGeometry& g, const Tn& x, const Tn& w, const Tn& dy, Tn& dw, Tn* dx, Tn& col,
                            Tn& dcol, Precision p) {
    require_f32(p, "conv_backward");
    check_size(dw, w.size(), "conv_backward");
    if (dx) check_size(*dx, x.size(), "conv_backward");
    auto& plan = cuda::detail::conv_plan<T>(g);
    cudnnHandle_t h = cuda::context().cudnn();
    if (!plan.bwd_chosen) {
      std::array<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT> dp{};
      std::array<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT> fp{};
      int nd = 0, nf = 0;
      FASTNN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, plan.w.get(), plan.y.get(), plan.conv.get(),
                                                                     plan.x.get(), static_cast<int>(dp.size()), &nd,
                                                                     dp.data()));
      FASTNN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, plan.x.get(), plan.y.get(),
                                                                       plan.conv.get(), plan.w.get(),
                                                                       static_cast<int>(fp.size()), &nf, fp.data()));
      plan.data = cuda::detail::conv_candidates<cudnnConvolutionBwdDataAlgo_t>(dp.data(), nd, plan.tensor_ops);
      plan.filter = cuda::detail::conv_candidates<cudnnConvolutionBwdFilterAlgo_t>(fp.data(), nf, plan.tensor_ops);
      if (plan.data.empty()) plan.data.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, 0, plan.base_math});
      if (plan.filter.empty()) plan.filter.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, 0, plan.base_math});
      plan.bwd_chosen = true;
    }
    const Index K = g.group_cols();
    const T one = 1, zero = 0;
    for (;;) {
      const auto& fc = plan.filter[plan.filter_at];
      const auto& dc = plan.data[plan.data_at];
      cuda::detail::Slots<T> s, ds;
      const Index wt = s.add(K * g.filters), xp = plan.padded() ? s.add(g.n * plan.hp * plan.wp * g.c) : 0;
      const Index ws = s.add_bytes(std::max(fc.bytes, dx ? dc.bytes : std::size_t{0}));
      const Index dwt = ds.add(K * g.filters), dxp = plan.padded() && dx ? ds.add(g.n * plan.hp * plan.wp * g.c) : 0;
      col.resize(Shape{s.total});
      dcol.resize(Shape{ds.total});
      const T* xin = x.data();
      if (plan.padded()) {
        pad(g, plan, x.data(), col.data() + xp);
        xin = col.data() + xp;
      }
      plan.set_math(plan.tensor_ops ? fc.math : plan.base_math);
      cudnnStatus_t st = cudnnConvolutionBackwardFilter(h, &one, plan.x.get(), xin, plan.y.get(), dy.data(),
                                                        plan.conv.get(), fc.algo, fc.bytes ? col.data() + ws : nullptr,
                                                        fc.bytes, &zero, plan.w.get(), dcol.data() + dwt);
      if (st != CUDNN_STATUS_SUCCESS) {
        if (!retry(st, plan.filter_at, plan.filter.size()))
          cuda::detail::throw_cudnn(st, "cudnnConvolutionBackwardFilter", __FILE__, __LINE__);
        continue;
      }
      if (dx) {
        transpose(w.data(), K, g.filters, col.data() + wt);
        T* dxin = plan.padded() ? dcol.data() + dxp : dx->data();
        plan.set_math(plan.tensor_ops ? dc.math : plan.base_math);
        st = cudnnConvolutionBackwardData(h, &one, plan.w.get(), col.data() + wt, plan.y.get(), dy.data(),
                                          plan.conv.get(), dc.algo, dc.bytes ? col.data() + ws : nullptr, dc.bytes,
                                          &zero, plan.x.get(), dxin);
        if (st != CUDNN_STATUS_SUCCESS) {
          if (!retry(st, plan.data_at, plan.data.size()))
            cuda::detail::throw_cudnn(st, "cudnnConvolutionBackwardData", __FILE__, __LINE__);
          continue;
        }
        if (plan.padded()) {
          cuda::kernels::crop_nhwc(dxin, dx->data(), g.n, g.h, g.w, g.c, plan.et, plan.el, plan.hp, plan.wp,
                                   cuda::stream());
          FASTNN_CUDA_CHECK_LAUNCH("crop_nhwc");
        }
      }
      // dw [K, filters] += dwt [filters, K]^T, only once every cuDNN call has succeeded
      add_transposed(dcol.data() + dwt, g.filters, K, dw.data());
      return;
    }
  }

  /// y [n, oh, ow, c] (sized by the caller): each window's maximum or mean over its real elements;
  /// `lengths` as on the CPU (1-D: sample b's input ends at lengths[b]).
  static void pool_forward(PoolKind kind, const ConvGeometry& g, const Tn& x, Tn& y, const Lengths& lengths = {}) {
    check_size(y, g.rows() * g.c, "pool_forward");
    const std::int32_t* len = cuda::detail::device_lengths(lengths, "pool_forward");
    cuda::kernels::pool_forward(kind == PoolKind::Max, pool_geometry(g), x.data(), y.data(), len, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("pool_forward");
  }

  /// dx = dL/dx (sized as x by the caller, overwritten) given dy [n, oh, ow, c].
  static void pool_backward(PoolKind kind, const ConvGeometry& g, const Tn& x, const Tn& dy, Tn& dx,
                            const Lengths& lengths = {}) {
    check_size(dx, x.size(), "pool_backward");
    const std::int32_t* len = cuda::detail::device_lengths(lengths, "pool_backward");
    cuda::kernels::pool_backward(kind == PoolKind::Max, pool_geometry(g), x.data(), dy.data(), dx.data(), len,
                                 cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("pool_backward");
  }

  /// y [n, c] (sized by the caller): max or mean of x [n, s, c] over each sample's first
  /// lengths[i] steps (all s when lengths is empty).
  static void global_pool_forward(PoolKind kind, const Tn& x, const Lengths& lengths, Tn& y) {
    const Index n = x.dim(0), c = x.dim(x.rank() - 1), s = x.size() / (n * c);
    check_size(y, n * c, "global_pool_forward");
    const std::int32_t* len = cuda::detail::device_lengths(lengths, "global_pool_forward");
    cuda::kernels::global_pool_forward(kind == PoolKind::Max, x.data(), y.data(), n, s, c, len, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("global_pool_forward");
  }

  /// dx = dL/dx (sized as x by the caller, overwritten; zero on the padded steps) given dy [n, c].
  static void global_pool_backward(PoolKind kind, const Tn& x, const Lengths& lengths, const Tn& dy, Tn& dx) {
    const Index n = x.dim(0), c = x.dim(x.rank() - 1), s = x.size() / (n * c);
    check_size(dx, x.size(), "global_pool_backward");
    const std::int32_t* len = cuda::detail::device_lengths(lengths, "global_pool_backward");
    cuda::kernels::global_pool_backward(kind == PoolKind::Max, x.data(), dy.data(), dx.data(), n, s, c, len,
                                        cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("global_pool_backward");
  }

  /// Per-channel mean and biased variance of x viewed as [m, c] (c = its last extent), summed in
  /// double.
  static void batch_norm_moments(const Tn& x, Tn& mean, Tn& var) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check_size(mean, c, "batch_norm_moments");
    check_size(var, c, "batch_norm_moments");
    cuda::kernels::batch_norm_moments(x.data(), mean.data(), var.data(), m, c, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("batch_norm_moments");
  }

  /// y (sized as x by the caller) = gamma (x - mean) / sqrt(var + eps) + beta per channel
  /// (gamma 1 and beta 0 when null).
  static void batch_norm_apply(const Tn& x, const Tn& mean, const Tn& var, T eps, const Tn* gamma, const Tn* beta,
                               Tn& y) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check_size(y, x.size(), "batch_norm_apply");
    cuda::kernels::batch_norm_apply(x.data(), mean.data(), var.data(), eps, gamma ? gamma->data() : nullptr,
                                    beta ? beta->data() : nullptr, y.data(), m, c, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("batch_norm_apply");
  }

  /// Gradients of batch_norm_apply given dy, as on the CPU: dgamma, dbeta accumulated (when not
  /// null); dx (when not null) written, with the dependence of the batch moments on x when
  /// `batch_stats`.
  static void batch_norm_backward(const Tn& x, const Tn& mean, const Tn& var, T eps, const Tn* gamma, const Tn& dy,
                                  Tn* dgamma, Tn* dbeta, Tn* dx, bool batch_stats) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    if (dx) check_size(*dx, x.size(), "batch_norm_backward");
    cuda::kernels::batch_norm_backward(x.data(), mean.data(), var.data(), eps, gamma ? gamma->data() : nullptr,
                                       dy.data(), dgamma ? dgamma->data() : nullptr,
                                       dbeta ? dbeta->data() : nullptr, dx ? dx->data() : nullptr, m, c, batch_stats,
                                       cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("batch_norm_backward");
  }

  /// y = x with its per-sample axes permuted: y's axis j is x's per-sample axis perm[j]
  /// (0-based); with `inverse`, the permutation is applied backwards (its gradient).
  static void permute(const Tn& x, const std::vector<Index>& perm, Tn& y, bool inverse = false) {
    const int r = static_cast<int>(perm.size());
    if (r > kMaxRank) throw ShapeError("permute: at most " + std::to_string(kMaxRank) + " axes");
    const Shape s = x.shape();
    std::array<Index, kMaxRank> in_dims{}, src_axis{}, in_stride{};
    for (int j = 0; j < r; ++j) in_dims[j] = s[j + 1];
    for (int j = 0; j < r; ++j) {
      if (!inverse) src_axis[j] = perm[static_cast<std::size_t>(j)];
      else src_axis[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = j;
    }
    in_stride[static_cast<std::size_t>(r - 1)] = 1;
    for (int j = r - 2; j >= 0; --j) in_stride[j] = in_stride[j + 1] * in_dims[j + 1];
    cuda::kernels::PermuteDims d{};
    d.rank = r;
    Shape out = s;
    for (int j = 0; j < r; ++j) {
      const auto a = static_cast<std::size_t>(src_axis[j]);
      d.out_dims[j] = in_dims[a];
      d.src_stride[j] = in_stride[a];
      out[j + 1] = in_dims[a];
    }
    y.resize(out);
    const Index per = s[0] > 0 ? x.size() / s[0] : 0;
    cuda::kernels::permute(x.data(), y.data(), s[0], per, d, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("permute");
  }
  /// The most per-sample axes permute() takes.
  static constexpr int kMaxRank = cuda::kernels::kMaxPermuteRank;

  /// y = x [n, s, ...] with the steps from each sample's length on set to zero (y sized as x by
  /// the caller; it may be x itself).
  static void mask_steps(const Tn& x, const Lengths& lengths, Tn& y) {
    const Index n = x.dim(0), s = x.dim(1), inner = s > 0 ? x.size() / (n * s) : 0;
    check_size(y, x.size(), "mask_steps");
    if (lengths.empty()) {
      copy_into(x, y);
      return;
    }
    const std::int32_t* len = cuda::detail::device_lengths(lengths, "mask_steps");
    cuda::kernels::mask_steps(x.data(), y.data(), n, s, inner, len, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("mask_steps");
  }

 private:
  static void check_size(const Tn& t, Index n, const char* who) {
    if (t.size() != n)
      throw ShapeError(std::string(who) + ": output holds " + std::to_string(t.size()) + " values, expected " +
                       std::to_string(n));
  }
  static void require_f32(Precision p, const char* who) {
    if (p != Precision::F32) throw UnsupportedError(std::string(who) + ": bf16 precision runs on the CPU only");
  }
  /// Whether to try the next algorithm after cuDNN refused candidate `at` of `count` (never
  /// while a CUDA graph is being captured).
  static bool retry(cudnnStatus_t st, std::size_t& at, std::size_t count) {
    if (cuda::context().capturing() || at + 1 >= count) return false;
    if (cuda::detail::verbose())
      std::fprintf(stderr, "fastnn: cuDNN convolution algorithm refused (%s), trying the next one\n",
                   cudnnGetErrorString(st));
    ++at;
    return true;
  }
  static cuda::kernels::PoolGeometry pool_geometry(const ConvGeometry& g) {
    return {g.n, g.h, g.w, g.c, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.oh, g.ow};
  }
  static void pad(const ConvGeometry& g, const cuda::detail::ConvPlan& plan, const T* x, T* xp) {
    cuda::kernels::pad_nhwc(x, xp, g.n, g.h, g.w, g.c, plan.et, plan.el, plan.hp, plan.wp, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("pad_nhwc");
  }
  /// out [cols, rows] = a [rows, cols]^T (row-major), by cublas<t>geam.
  static void transpose(const T* a, Index rows, Index cols, T* out) { geam(a, rows, cols, T(0), out); }
  /// out [cols, rows] += a [rows, cols]^T.
  static void add_transposed(const T* a, Index rows, Index cols, T* out) { geam(a, rows, cols, T(1), out); }
  static void geam(const T* a, Index rows, Index cols, T beta, T* out) {
    // Row-major a is the column-major cols x rows matrix A; out (column-major rows x cols) =
    // A^T + beta out, in place (B = C, ldb = ldc, no transpose of B).
    cublasHandle_t h = cuda::context().cublas();
    const int m = cuda::detail::to_cudnn_int(rows, "rows"), n = cuda::detail::to_cudnn_int(cols, "columns");
    const T one = 1;
    if constexpr (std::is_same<T, float>::value)
      FASTNN_CUBLAS_CHECK(cublasSgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, &one, a, n, &beta, out, m, out, m));
    else
      FASTNN_CUBLAS_CHECK(cublasDgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, &one, a, n, &beta, out, m, out, m));
  }
};

}  // namespace fastnn
