#pragma once
/// \file rnn.hpp
/// Recurrent layers on the GPU: detail::RnnImpl<T, Cuda>, the per-device part of LSTM, GRU and
/// SimpleRNN (layers/recurrent.hpp), each on one cuDNN RNN (backend/cuda/rnn.hpp describes the
/// mapping of the parameters onto cuDNN's weight space), and their one-step streaming update.
///
/// forward / backward: the input [B, S, F] is transposed to cuDNN's time-major layout [S, B, F] by
/// one kernel, which also reverses time for go_backwards (within each sample's length when the
/// batch has per-sample lengths); with return_sequences the output goes back to [B, S, H] the
/// same way (in processing order, as on the CPU, and 0 after each sample's length); without it
/// the output is cuDNN's final hidden state (each sample's state after its last real step) and
/// its gradient enters as dhy. Padded steps get no gradient and their dx is 0. A batch with
/// per-sample lengths runs on a second cuDNN RNN configured for padded data (unpacked layout,
/// the standard algorithm), so that batches of full length keep theirs (the persistent kernels)
/// and neither is rebuilt when the two kinds of batch alternate.
///
/// step: one step of B streams with cuBLAS (Ops<T, Cuda>::gemm: x W and h U) and one pointwise
/// kernel per cell, on the calling thread's stream, with the caller's `work` as the only scratch:
/// nothing is shared, so any number of threads may step their own states at once.
///
/// What cuDNN lacks is refused with UnsupportedError naming the layer: the hard sigmoid as
/// recurrent activation (cuDNN's gates use the logistic sigmoid) and the GRU without reset_after
/// (cuDNN's GRU is the reset_after form). The streaming step refuses them as well, so that a
/// layer either runs entirely on the GPU or not at all.

#include <string>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/cuda/ops.hpp"
#include "fastnn/backend/cuda/rnn.hpp"
#include "fastnn/backend/rnn.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/layers/gru.hpp"
#include "fastnn/layers/lstm.hpp"
#include "fastnn/layers/recurrent.hpp"
#include "fastnn/layers/simple_rnn.hpp"

namespace fastnn {
namespace cuda {
namespace detail {

/// Throws UnsupportedError when cuDNN has no equivalent of the cell `d` describes (see the file
/// comment). `layer` names the layer in the message (its type is added when the name lacks it).
inline void require_cudnn_cell(const fastnn::detail::RnnDims& d, const std::string& layer) {
  if (d.precision != Precision::F32)
    throw UnsupportedError(layer + ": bf16 precision runs on the CPU only (cuDNN runs float here)");
  const std::string type = to_string(d.cell);
  const std::string who = layer == type ? layer : layer + " (" + type + ")";
  if (d.cell != RnnCell::SimpleRNN && d.recurrent == Activation::HardSigmoid)
    throw UnsupportedError(who + ": recurrent_activation 'hard_sigmoid' is not available on the GPU (cuDNN's " + type +
                           " uses the logistic sigmoid); use " + type +
                           "Options::recurrent_activation(Activation::Sigmoid) for a model that runs on CUDA");
  if (d.cell == RnnCell::GRU && !d.reset_after)
    throw UnsupportedError(who + ": reset_after=false (Keras's original GRU) is not available on the GPU (cuDNN's GRU "
                                 "applies the reset gate after the recurrent GEMM, the reset_after form); use "
                                 "GRUOptions::reset_after(true), the default, for a model that runs on CUDA, or run "
                                 "this model on the CPU");
  if (d.cell == RnnCell::SimpleRNN && d.activation != Activation::Tanh && d.activation != Activation::Relu)
    throw UnsupportedError(who + ": activation '" + to_string(d.activation) +
                           "' is not available on the GPU (cuDNN's SimpleRNN has tanh and relu)");
}

/// The cuDNN configuration of run `d` for `dirs` directions; `padded`: the batch has per-sample
/// lengths.
inline RnnSpec rnn_spec(const fastnn::detail::RnnDims& d, int dirs, bool padded) {
  RnnSpec s;
  s.cell = d.cell;
  s.relu = d.cell == RnnCell::SimpleRNN && d.activation == Activation::Relu;
  s.F = d.features;
  s.H = d.units;
  s.dirs = dirs;
  s.padded = padded;
  return s;
}

}  // namespace detail
}  // namespace cuda

namespace detail {

/// LSTM, GRU and SimpleRNN on cuDNN (one direction; go_backwards reverses time in the transpose
/// kernel). See the file comment and layers/recurrent.hpp for the contract.
template <class T>
struct RnnImpl<T, Cuda> {
  using Tn = Tensor<T, Cuda>;

  /// x [B, S, F] -> y [B, H], or [B, S, H] with return_sequences; w, u, b: the layer's kernel,
  /// recurrent kernel and bias. Throws UnsupportedError for what cuDNN lacks.
  void forward(const RnnDims& d, const Tn& x, const Tn& w, const Tn& u, const Tn& b, Tn& y, Mode mode) {
    cuda::detail::require_cudnn_cell(d, d.layer.empty() ? to_string(d.cell) : d.layer);
    d_ = d;
    padded_ = d.lengths != nullptr;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units;
    auto s = cuda::stream();
    cuda::detail::CudnnRnn<T>& rnn = padded_ ? padded_rnn_ : rnn_;
    rnn.configure(cuda::detail::rnn_spec(d, 1, padded_));
    lengths_ = padded_ ? rnn.set_lengths(B, d.lengths) : nullptr;
    xt_.resize(Shape{S, B, F});
    // xt[t, b] = x[b, t], or x[b, L_b - 1 - t] for go_backwards; 0 after the sample's length
    cuda::kernels::to_time_major(x.data(), xt_.data(), B, S, F, lengths_, d.go_backwards, s);
    FASTNN_CUDA_CHECK_LAUNCH("to_time_major");
    ys_.resize(Shape{S, B, H});
    rnn.forward(mode, B, S, xt_.data(), ys_.data(), d.return_sequences ? nullptr : y.data(),
                cuda::detail::rnn_ptrs(w, u, b));
    if (d.return_sequences) {
      cuda::kernels::from_time_major(ys_.data(), y.data(), B, S, H, lengths_, false, s);  // y[b, t] = ys[t, b]
      FASTNN_CUDA_CHECK_LAUNCH("from_time_major");
    }
  }

  /// From dy (shaped like the last forward's y): ADDS the parameter gradients into dw, du, db and
  /// writes dx [B, S, F] when not null. Needs the preceding forward() in Mode::Train.
  void backward(const Tn& dy, const Tn& w, const Tn& u, Tn& dw, Tn& du, Tn& db, Tn* dx) {
    (void)w;
    (void)u;
    const RnnDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units;
    auto s = cuda::stream();
    cuda::detail::CudnnRnn<T>& rnn = padded_ ? padded_rnn_ : rnn_;
    const T* dhy = nullptr;
    dys_.resize(Shape{S, B, H});
    if (d.return_sequences) {
      // dys[t, b] = dy[b, t]; the padded steps get no gradient
      cuda::kernels::to_time_major(dy.data(), dys_.data(), B, S, H, lengths_, false, s);
      FASTNN_CUDA_CHECK_LAUNCH("to_time_major");
      zero_ptr_ = nullptr;
    } else {
      if (dys_.data() != zero_ptr_ || dys_.size() != zero_n_) {
        dys_.set_zero();
        zero_ptr_ = dys_.data();
        zero_n_ = dys_.size();
      }
      dhy = dy.data();
    }
    dxt_.resize(Shape{S, B, F});
    rnn.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(), cuda::detail::rnn_ptrs(dw, du, db));
    if (dx) {
      // dx[b, t] = dxt[t, b] (dxt[L_b - 1 - t, b] for go_backwards); 0 at the padded steps
      cuda::kernels::from_time_major(dxt_.data(), dx->data(), B, S, F, lengths_, d.go_backwards, s);
      FASTNN_CUDA_CHECK_LAUNCH("from_time_major");
    }
  }

  /// One step of d.batch streams: x [B, F]; h (and c for an LSTM) [B, H] read and updated in
  /// place on the calling thread's stream; `work` is scratch ([B, G*H], [2B, 3H] for a GRU).
  /// The same math as the CPU's step (backend/cpu/): x W + h U, the bias, then the cell.
  static void step(const RnnDims& d, const Tn& x, const Tn& w, const Tn& u, const Tn& b, Tn& h, Tn& c, Tn& work) {
    cuda::detail::require_cudnn_cell(d, d.layer.empty() ? to_string(d.cell) : d.layer);
    using O = Ops<T, Cuda>;
    const Index B = d.batch, H = d.units, G = d.gates() * H;
    auto s = cuda::stream();
    switch (d.cell) {
      case RnnCell::LSTM: {
        if (c.size() != B * H)
          throw ShapeError("LSTM step: cell state " + c.shape().str() + " for " + std::to_string(B) + " streams of " +
                           std::to_string(H) + " units");
        work.resize(Shape{B, G});
        O::gemm(false, false, T(1), x, w, T(0), work);
        O::gemm(false, false, T(1), h, u, T(1), work);
        cuda::kernels::lstm_step(work.data(), b.data(), h.data(), c.data(), B, H, s);
        break;
      }
      case RnnCell::GRU: {
        work.resize(Shape{2 * B, G});
        Tn zx = work.view(0, Shape{B, G});
        Tn rh = work.view(B * G, Shape{B, G});
        O::gemm(false, false, T(1), x, w, T(0), zx);
        O::gemm(false, false, T(1), h, u, T(0), rh);
        cuda::kernels::gru_step(zx.data(), rh.data(), b.data(), h.data(), B, H, s);
        break;
      }
      case RnnCell::SimpleRNN: {
        work.resize(Shape{B, H});
        O::gemm(false, false, T(1), x, w, T(0), work);
        O::gemm(false, false, T(1), h, u, T(1), work);
        cuda::kernels::simple_rnn_step(work.data(), b.data(), h.data(), B, H, d.activation == Activation::Relu, s);
        break;
      }
    }
    FASTNN_CUDA_CHECK_LAUNCH("rnn step");
  }

  /// The cuDNN algorithm of batches of full length ("persist_static_small_h", "standard", ...).
  const char* algo_name() const { return rnn_.algo_name(); }

 private:
  RnnDims d_;
  bool padded_ = false;
  const std::int32_t* lengths_ = nullptr;  ///< device copy of the batch's lengths (padded only)
  cuda::detail::CudnnRnn<T> rnn_;          ///< batches of full length
  cuda::detail::CudnnRnn<T> padded_rnn_;   ///< batches with per-sample lengths
  Tn xt_, ys_, dys_, dxt_;
  const T* zero_ptr_ = nullptr;
  Index zero_n_ = 0;
};

}  // namespace detail
}  // namespace fastnn
