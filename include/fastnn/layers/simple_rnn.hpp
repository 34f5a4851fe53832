#pragma once
/// \file simple_rnn.hpp
/// Fully connected recurrent layer, Keras's SimpleRNN: h_t = a(x_t W + h_{t-1} U + b) with
/// a = tanh (default) or relu. Parameters: kernel [F, H], recurrent_kernel [H, H], bias [H].
/// torch.nn.RNN(nonlinearity='tanh'|'relu') takes weight_ih_l0 = kernel^T, weight_hh_l0 =
/// recurrent_kernel^T, bias_ih_l0 = bias, bias_hh_l0 = 0.

#include <string>

#include "fastnn/layers/recurrent.hpp"

namespace fastnn {

/// Options: `SimpleRNNOptions(32).activation(Activation::Relu).return_sequences(true)`.
struct SimpleRNNOptions {
  explicit SimpleRNNOptions(Index units = 1) { units_ = units; }
  FASTNN_OPTIONS((Index, units, 1),
                 (Activation, activation, Activation::Tanh),
                 (bool, return_sequences, false),
                 (bool, go_backwards, false),
                 FASTNN_RECURRENT_WEIGHT_OPTIONS)
};

template <class T, class D = Cpu>
class SimpleRNN : public detail::RecurrentWithOptions<T, D, SimpleRNNOptions, SimpleRNN, RnnCell::SimpleRNN> {
 public:
  explicit SimpleRNN(const SimpleRNNOptions& opt) : SimpleRNN::RecurrentWithOptions(opt) {
    if (opt.activation() != Activation::Tanh && opt.activation() != Activation::Relu)
      throw ArgumentError("SimpleRNN: activation must be tanh or relu, got " + to_string(opt.activation()));
  }
  detail::RnnDims cell_dims() const override {
    detail::RnnDims d = this->common_dims();
    d.activation = this->opt_.activation();
    return d;
  }
  /// From the options' initialisers (Keras's defaults: glorot_uniform kernel, orthogonal recurrent kernel, zero
  /// bias).
  void initialize(Rng& rng) override { this->init_from_options(rng, false); }
};

}  // namespace fastnn
