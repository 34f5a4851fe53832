#pragma once
/// \file lstm.hpp
/// LSTM on the GPU: detail::LstmImpl<T, Cuda>, the per-device part of fastnn::LSTM
/// (layers/lstm.hpp), on one cuDNN RNN (backend/cuda/rnn.hpp describes the mapping of the
/// parameters onto cuDNN's weight space). The input [B, S, F] is transposed to cuDNN's
/// time-major layout [S, B, F] by one kernel, which also reverses time for go_backwards; with
/// return_sequences the output goes back to [B, S, H] the same way (in processing order, as on
/// the CPU), without it the output is cuDNN's final hidden state and its gradient enters as dhy.
///
/// cuDNN's LSTM uses the logistic sigmoid as recurrent activation: an LSTM with hard_sigmoid is
/// refused with UnsupportedError on the GPU.

#include <string>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/cuda/rnn.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/layers/lstm.hpp"

namespace fastnn {
namespace cuda {
namespace detail {

/// Throws UnsupportedError: `layer` asks for the hard sigmoid, which cuDNN's LSTM lacks.
[[noreturn]] inline void refuse_hard_sigmoid(const std::string& layer) {
  throw UnsupportedError(layer + ": recurrent_activation 'hard_sigmoid' is not available on the GPU (cuDNN's LSTM "
                                 "uses the logistic sigmoid); use LSTMOptions::recurrent_activation(Activation::Sigmoid) "
                                 "for a model that runs on CUDA");
}

}  // namespace detail
}  // namespace cuda

namespace detail {

/// LSTM on cuDNN (one direction; go_backwards reverses the time axis in the transpose kernel).
template <class T>
struct LstmImpl<T, Cuda> {
  using Tn = Tensor<T, Cuda>;

  /// x [B, S, F] -> y [B, H], or [B, S, H] with return_sequences; w, u, b: the layer's kernel,
  /// recurrent kernel and bias. Throws UnsupportedError for a hard-sigmoid recurrent activation.
  void forward(const LstmDims& d, const Tn& x, const Tn& w, const Tn& u, const Tn& b, Tn& y, Mode mode) {
    if (d.recurrent == Activation::HardSigmoid) cuda::detail::refuse_hard_sigmoid("LSTM");
    d_ = d;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units;
    auto s = cuda::stream();
    rnn_.configure(F, H, 1);
    xt_.resize(Shape{S, B, F});
    cuda::kernels::swap01(x.data(), xt_.data(), B, S, F, false, d.go_backwards, s);  // xt[t, b] = x[b, t or S-1-t]
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    ys_.resize(Shape{S, B, H});
    rnn_.forward(mode, B, S, xt_.data(), ys_.data(), d.return_sequences ? nullptr : y.data(),
                 cuda::detail::lstm_ptrs(F, H, w, u, b));
    if (d.return_sequences) {
      cuda::kernels::swap01(ys_.data(), y.data(), S, B, H, false, false, s);  // y[b, t] = ys[t, b]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
  }

  /// From dy (shaped like the last forward's y): ADDS the parameter gradients into dw, du, db and
  /// writes dx [B, S, F] when not null. Needs the preceding forward() in Mode::Train.
  void backward(const Tn& dy, const Tn& w, const Tn& u, Tn& dw, Tn& du, Tn& db, Tn* dx) {
    (void)w;
    (void)u;
    const LstmDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units;
    auto s = cuda::stream();
    const T* dhy = nullptr;
    if (d.return_sequences) {
      dys_.resize(Shape{S, B, H});
      cuda::kernels::swap01(dy.data(), dys_.data(), B, S, H, false, false, s);  // dys[t, b] = dy[b, t]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
      zero_ptr_ = nullptr;
    } else {
      dys_.resize(Shape{S, B, H});
      if (dys_.data() != zero_ptr_ || dys_.size() != zero_n_) {
        dys_.set_zero();
        zero_ptr_ = dys_.data();
        zero_n_ = dys_.size();
      }
      dhy = dy.data();
    }
    dxt_.resize(Shape{S, B, F});
    rnn_.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(), cuda::detail::lstm_ptrs(F, H, dw, du, db));
    if (dx) {
      cuda::kernels::swap01(dxt_.data(), dx->data(), S, B, F, d.go_backwards, false, s);  // dx[b, t] = dxt[t or S-1-t, b]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
  }

  /// The cuDNN algorithm in use ("persist_static_small_h", "standard", ...).
  const char* algo_name() const { return rnn_.algo_name(); }

 private:
  LstmDims d_;
  cuda::detail::CudnnLstm<T> rnn_;
  Tn xt_, ys_, dys_, dxt_;
  const T* zero_ptr_ = nullptr;
  Index zero_n_ = 0;
};

}  // namespace detail
}  // namespace fastnn
