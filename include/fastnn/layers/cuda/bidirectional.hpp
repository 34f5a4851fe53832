#pragma once
/// \file bidirectional.hpp
/// Bidirectional on the GPU: the two device hooks of fastnn::Bidirectional
/// (layers/bidirectional.hpp) for Cuda.
///
///  - detail::BidirFused<T, Cuda> runs Bidirectional(LSTM, GRU or SimpleRNN) with merge concat in
///    one call of the layer, in one of two ways (cuda::set_bidirectional_mode, FASTNN_CUDA_BIDIR):
///      TwoStreams (default): two unidirectional cuDNN RNNs, the backward one on the context's
///        second lane (stream and cuDNN handle), so that the two directions can run at the same
///        time; events order the lanes, and a CUDA graph capture follows both;
///      CudnnBidirectional: one cuDNN RNN with CUDNN_BIDIRECTIONAL.
///    Both use the two wrapped layers' own parameter views and gradients, so the weights are the
///    generic wrapper's. Any other case (another merge mode, BidirMode::Generic, a batch with
///    per-sample lengths) is declined, and the generic wrapper runs the two layers in turn on the
///    thread's stream (host_threads is false: all work of a thread stays on its stream).
///  - detail::BidirMerge<T, Cuda>: the merge and split kernels of the generic path, with the
///    batch's per-sample lengths copied to the device (the backward layer's outputs are reversed
///    within each sample's length; padded steps merge to 0 and get no gradient).

#include <cstdint>
#include <string>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/cuda/rnn.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/cuda/rnn.hpp"
#include "fastnn/layers/recurrent.hpp"

namespace fastnn {
namespace cuda {
namespace detail {

/// A device copy of the host lengths [B] of a merge over S steps, made on this thread's stream
/// into a buffer of the calling thread (its next call reuses it; stream order keeps the kernels
/// that read it before the next copy). Null when there are no lengths or S <= 1 (without
/// return_sequences the merge has one step and no padding). Throws DeviceError while a CUDA
/// graph is captured (lengths change from batch to batch).
inline const std::int32_t* merge_lengths(const std::int32_t* lengths, Index B, Index S) {
  if (!lengths || S <= 1) return nullptr;
  if (context().capturing())
    throw DeviceError("Bidirectional: a batch with per-sample lengths cannot be captured in a CUDA graph (its lengths "
                      "change from batch to batch); run such a model without graph capture");
  thread_local Tensor<std::int32_t, Cuda> buf;
  buf.resize(Shape{B});
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(buf.data(), lengths, sizeof(std::int32_t) * static_cast<std::size_t>(B),
                                    cudaMemcpyHostToDevice, stream()));
  return buf.data();
}

}  // namespace detail
}  // namespace cuda

namespace detail {

/// Bidirectional(LSTM, GRU or SimpleRNN) with merge concat in one call of the layer (see the
/// file comment), in one of two ways (cuda::set_bidirectional_mode):
///  - TwoStreams: two unidirectional cuDNN RNNs, the backward one on the context's second lane,
///    so that the two directions run concurrently (cuDNN's bidirectional mode runs them one after
///    the other); events order the lanes;
///  - CudnnBidirectional: one cuDNN RNN with CUDNN_BIDIRECTIONAL.
/// Both share the two wrapped layers' parameter views and gradients.
template <class T>
struct BidirFused<T, Cuda> {
  using Tn = Tensor<T, Cuda>;
  /// The generic path must not run the two directions on two host threads: each thread has its
  /// own stream, and the model's work (and a CUDA graph capture) follows one.
  static constexpr bool host_threads = false;

  /// Runs both directions when it can (see above) and returns true; false declines (nothing was
  /// done). x [B, S, F]; y is resized to [B, out_shape...]. Throws UnsupportedError, naming the
  /// layer, for what cuDNN lacks (hard sigmoid, a GRU without reset_after).
  bool forward(RecurrentLayer<T, Cuda>& fl, RecurrentLayer<T, Cuda>& bl, MergeMode merge, const Tn& x, Tn& y,
               const Shape& out_shape, Mode mode) {
    active_ = false;
    const cuda::BidirMode how = cuda::bidirectional_mode();
    if (merge != MergeMode::Concat || how == cuda::BidirMode::Generic) return false;
    const RnnDims fd = fl.cell_dims(), bd = bl.cell_dims();
    if (fd.go_backwards || !bd.go_backwards || fd.cell != bd.cell || fd.return_sequences != bd.return_sequences ||
        fd.reset_after != bd.reset_after || fd.activation != bd.activation || fd.recurrent != bd.recurrent ||
        fl.units() != bl.units() || fl.parameters().size() != 3 || bl.parameters().size() != 3)
      return false;
    cuda::detail::require_cudnn_cell(fd, fl.name());
    const Shape& in = fl.input_shape();
    if (x.rank() != 3 || x.dim(1) != in[0] || x.dim(2) != in[1])
      throw ShapeError(fl.name() + " (" + fl.type_name() + "): expected input [batch, " + std::to_string(in[0]) +
                       ", " + std::to_string(in[1]) + "], got " + x.shape().str());
    // Per-sample lengths take the generic path: each layer runs its padded batch, and the merge
    // reverses the backward outputs within each sample's length.
    const Lengths& lengths = fl.input_lengths();
    if (!lengths.empty()) {
      check_lengths(lengths, x.dim(0), x.dim(1), fl.name() + " (" + fl.type_name() + ")");
      if (!all_full_length(lengths, x.dim(1))) return false;
    }
    f_ = &fl;
    b_ = &bl;
    B_ = x.dim(0);
    S_ = in[0];
    F_ = in[1];
    H_ = fl.units();
    seq_ = fd.return_sequences;
    RnnDims d = fd;
    d.features = F_;
    d.units = H_;
    spec_ = cuda::detail::rnn_spec(d, 1, false);
    two_ = how == cuda::BidirMode::TwoStreams;
    y.resize(out_shape.prepend(B_));
    if (two_) forward_two(x, y, mode);
    else forward_one(x, y, mode);
    active_ = mode == Mode::Train;
    return true;
  }

  /// Gradients of the preceding forward() when it ran here in Mode::Train (returns true; the
  /// parameter gradients of both layers are ADDED to, dx is written when not null); false
  /// otherwise.
  bool backward(const Tn& x, const Tn& dy, Tn* dx) {
    if (!active_) return false;
    (void)x;
    if (dx) dx->resize(Shape{B_, S_, F_});
    if (two_) backward_two(dy, dx);
    else backward_one(dy, dx);
    return true;
  }

 private:
  using Ptrs = cuda::kernels::RnnParamPtrs<T>;
  static Ptrs values(RecurrentLayer<T, Cuda>* l) {
    auto& p = l->parameters();
    return cuda::detail::rnn_ptrs(p[0].value, p[1].value, p[2].value);
  }
  static Ptrs grads(RecurrentLayer<T, Cuda>* l) {
    auto& p = l->parameters();
    return cuda::detail::rnn_ptrs(p[0].grad, p[1].grad, p[2].grad);
  }
  /// Zeroes `t` (on `s`) unless it is still the zero buffer of the last call.
  static void zeroed(Tn& t, const Shape& shape, const T*& ptr, Index& n, cudaStream_t s) {
    t.resize(shape);
    if (t.data() == ptr && t.size() == n) return;
    FASTNN_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, sizeof(T) * static_cast<std::size_t>(t.size()), s));
    ptr = t.data();
    n = t.size();
  }

  // ---- two unidirectional RNNs on two lanes -----------------------------------------------------
  void forward_two(const Tn& x, Tn& y, Mode mode) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto& ctx = cuda::context();
    cudaStream_t s0 = ctx.stream(0), s1 = ctx.stream(1);
    rnn_f_.set_lane(0);
    rnn_b_.set_lane(1);
    rnn_f_.configure(spec_);
    rnn_b_.configure(spec_);
    xt_.resize(Shape{S, B, F});
    xtb_.resize(Shape{S, B, F});
    ys_.resize(Shape{S, B, H});
    ysb_.resize(Shape{S, B, H});
    hy_.resize(Shape{B, H});
    hyb_.resize(Shape{B, H});
    fork_.order(s0, s1);  // x and the parameters are ready on lane 0
    cuda::kernels::swap01(x.data(), xtb_.data(), B, S, F, false, true, s1);  // reversed in time
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    rnn_b_.forward(mode, B, S, xtb_.data(), ysb_.data(), seq_ ? nullptr : hyb_.data(), values(b_));
    cuda::kernels::swap01(x.data(), xt_.data(), B, S, F, false, false, s0);
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    rnn_f_.forward(mode, B, S, xt_.data(), ys_.data(), seq_ ? nullptr : hy_.data(), values(f_));
    join_.order(s1, s0);
    if (seq_) {
      yf_.resize(Shape{B, S, H});
      yb_.resize(Shape{B, S, H});
      cuda::kernels::swap01(ys_.data(), yf_.data(), S, B, H, false, false, s0);
      cuda::kernels::swap01(ysb_.data(), yb_.data(), S, B, H, false, false, s0);
      cuda::kernels::bidir_merge<T>(0, B, S, H, yf_.data(), yb_.data(), y.data(), nullptr, s0);
    } else {
      cuda::kernels::bidir_merge<T>(0, B, 1, H, hy_.data(), hyb_.data(), y.data(), nullptr, s0);
    }
    FASTNN_CUDA_CHECK_LAUNCH("bidir_merge");
  }

  void backward_two(const Tn& dy, Tn* dx) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto& ctx = cuda::context();
    cudaStream_t s0 = ctx.stream(0), s1 = ctx.stream(1);
    const T* dhy = nullptr;
    const T* dhyb = nullptr;
    if (seq_) {
      yf_.resize(Shape{B, S, H});  // reused as dy of each direction, batch-major
      yb_.resize(Shape{B, S, H});
      dys_.resize(Shape{S, B, H});
      dysb_.resize(Shape{S, B, H});
      cuda::kernels::bidir_split<T>(0, B, S, H, dy.data(), nullptr, nullptr, yf_.data(), yb_.data(), nullptr, s0);
      cuda::kernels::swap01(yf_.data(), dys_.data(), B, S, H, false, false, s0);
      cuda::kernels::swap01(yb_.data(), dysb_.data(), B, S, H, false, false, s0);
      zero_ptr_ = zero_ptr_b_ = nullptr;
    } else {
      zeroed(dys_, Shape{S, B, H}, zero_ptr_, zero_n_, s0);
      zeroed(dysb_, Shape{S, B, H}, zero_ptr_b_, zero_n_b_, s0);
      dhy_.resize(Shape{B, H});
      dhyb_.resize(Shape{B, H});
      cuda::kernels::bidir_split<T>(0, B, 1, H, dy.data(), nullptr, nullptr, dhy_.data(), dhyb_.data(), nullptr, s0);
      dhy = dhy_.data();
      dhyb = dhyb_.data();
    }
    FASTNN_CUDA_CHECK_LAUNCH("bidir_split");
    dxt_.resize(Shape{S, B, F});
    dxtb_.resize(Shape{S, B, F});
    if (dx) dxb_.resize(Shape{B, S, F});
    fork_.order(s0, s1);  // dy split, gradients zeroed by the caller
    rnn_b_.backward(B, S, xtb_.data(), ysb_.data(), dysb_.data(), dhyb, dxtb_.data(), grads(b_));
    if (dx) {
      cuda::kernels::swap01(dxtb_.data(), dxb_.data(), S, B, F, true, false, s1);  // back to input order
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
    rnn_f_.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(), grads(f_));
    if (dx) {
      cuda::kernels::swap01(dxt_.data(), dx->data(), S, B, F, false, false, s0);
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
    join_.order(s1, s0);
    if (dx) {
      cuda::kernels::add_inplace(dxb_.data(), dx->data(), dx->size(), s0);
      FASTNN_CUDA_CHECK_LAUNCH("add_inplace");
    }
  }

  // ---- one cuDNN bidirectional RNN ----------------------------------------------------------------
  void forward_one(const Tn& x, Tn& y, Mode mode) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto s = cuda::stream();
    cuda::detail::RnnSpec spec = spec_;
    spec.dirs = 2;
    rnn_.configure(spec);
    xt_.resize(Shape{S, B, F});
    cuda::kernels::swap01(x.data(), xt_.data(), B, S, F, false, false, s);
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    ys_.resize(Shape{S, B, 2 * H});
    hy_.resize(Shape{2, B, H});
    auto& pf = f_->parameters();
    auto& pb = b_->parameters();
    rnn_.forward(mode, B, S, xt_.data(), ys_.data(), seq_ ? nullptr : hy_.data(),
                 cuda::detail::rnn_ptrs(pf[0].value, pf[1].value, pf[2].value, &pb[0].value, &pb[1].value,
                                        &pb[2].value));
    if (seq_) cuda::kernels::swap01(ys_.data(), y.data(), S, B, 2 * H, false, false, s);  // y[b, t] = ys[t, b]
    else cuda::kernels::swap01(hy_.data(), y.data(), 2, B, H, false, false, s);            // y[b, d] = hy[d, b]
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
  }

  void backward_one(const Tn& dy, Tn* dx) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto s = cuda::stream();
    const T* dhy = nullptr;
    if (seq_) {
      dys_.resize(Shape{S, B, 2 * H});
      cuda::kernels::swap01(dy.data(), dys_.data(), B, S, 2 * H, false, false, s);
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
      zero_ptr_ = nullptr;
    } else {
      zeroed(dys_, Shape{S, B, 2 * H}, zero_ptr_, zero_n_, s);
      dhy_.resize(Shape{2, B, H});
      cuda::kernels::swap01(dy.data(), dhy_.data(), B, 2, H, false, false, s);  // dhy[d, b] = dy[b, d]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
      dhy = dhy_.data();
    }
    dxt_.resize(Shape{S, B, F});
    auto& pf = f_->parameters();
    auto& pb = b_->parameters();
    rnn_.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(),
                  cuda::detail::rnn_ptrs(pf[0].grad, pf[1].grad, pf[2].grad, &pb[0].grad, &pb[1].grad, &pb[2].grad));
    if (dx) {
      cuda::kernels::swap01(dxt_.data(), dx->data(), S, B, F, false, false, s);
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
  }

  RecurrentLayer<T, Cuda>* f_ = nullptr;
  RecurrentLayer<T, Cuda>* b_ = nullptr;
  Index B_ = 0, S_ = 0, F_ = 0, H_ = 0;
  bool seq_ = false, active_ = false, two_ = true;
  cuda::detail::RnnSpec spec_;
  cuda::detail::CudnnRnn<T> rnn_, rnn_f_, rnn_b_;
  cuda::Event fork_, join_;
  Tn xt_, xtb_, ys_, ysb_, hy_, hyb_, yf_, yb_, dys_, dysb_, dhy_, dhyb_, dxt_, dxtb_, dxb_;
  const T* zero_ptr_ = nullptr;
  const T* zero_ptr_b_ = nullptr;
  Index zero_n_ = 0, zero_n_b_ = 0;
};

/// Merge and split of the generic Bidirectional path on the GPU (the same layouts and semantics
/// as the CPU's: outputs [B, S, H], yb in processing order, reversed within each sample's length;
/// MergeMode's order is the kernels' mode number).
template <class T>
struct BidirMerge<T, Cuda> {
  using Tn = Tensor<T, Cuda>;
  /// y [B, S, 2H] (concat) or [B, S, H] from yf and yb; `lengths`: host [B] or null (all S).
  static void merge(MergeMode m, Index B, Index S, Index H, const Tn& yf, const Tn& yb, Tn& y,
                    const std::int32_t* lengths) {
    const std::int32_t* dl = cuda::detail::merge_lengths(lengths, B, S);
    cuda::kernels::bidir_merge(static_cast<int>(m), B, S, H, yf.data(), yb.data(), y.data(), dl, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("bidir_merge");
  }
  /// dyf and dyb (in processing order) from dy; the padded steps of both are 0.
  static void split(MergeMode m, Index B, Index S, Index H, const Tn& dy, const Tn& yf, const Tn& yb, Tn& dyf,
                    Tn& dyb, const std::int32_t* lengths) {
    const std::int32_t* dl = cuda::detail::merge_lengths(lengths, B, S);
    cuda::kernels::bidir_split(static_cast<int>(m), B, S, H, dy.data(), yf.data(), yb.data(), dyf.data(), dyb.data(),
                               dl, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("bidir_split");
  }
  /// acc += a.
  static void add(const Tn& a, Tn& acc) {
    if (a.size() != acc.size())
      throw ShapeError("Bidirectional: input gradients " + a.shape().str() + " and " + acc.shape().str());
    cuda::kernels::add_inplace(a.data(), acc.data(), a.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("add_inplace");
  }
};

}  // namespace detail
}  // namespace fastnn
