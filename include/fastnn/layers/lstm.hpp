#pragma once
/// \file lstm.hpp
/// Long short-term memory layer, Keras semantics (see backend/cpu/lstm.hpp for the equations).
/// Parameters: kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H], gate order i, f, c, o (the
/// same as PyTorch's i, f, g, o). Everything but the options lives in RecurrentLayer
/// (layers/recurrent.hpp).

#include <string>

#include "fastnn/layers/recurrent.hpp"

namespace fastnn {

/// Options: `LSTMOptions(128).recurrent_activation(Activation::HardSigmoid).return_sequences(true)`.
/// The cell activation is tanh (the only one the CPU kernel and cuDNN implement; recorded in
/// the configuration as Keras does).
struct LSTMOptions {
  explicit LSTMOptions(Index units = 1) { units_ = units; }
  FASTNN_OPTIONS((Index, units, 1),
                 (Activation, activation, Activation::Tanh),
                 (Activation, recurrent_activation, Activation::Sigmoid),
                 (bool, return_sequences, false),
                 (bool, unit_forget_bias, true),
                 (bool, go_backwards, false),
                 FASTNN_RECURRENT_WEIGHT_OPTIONS)
};

template <class T, class D = Cpu>
class LSTM : public detail::RecurrentWithOptions<T, D, LSTMOptions, LSTM, RnnCell::LSTM> {
 public:
  explicit LSTM(const LSTMOptions& opt) : LSTM::RecurrentWithOptions(opt) {
    this->require_gate_activation("LSTM", opt.recurrent_activation());
    if (opt.activation() != Activation::Tanh)
      throw UnsupportedError("LSTM: activation must be tanh, got " + to_string(opt.activation()));
  }
  detail::RnnDims cell_dims() const override {
    detail::RnnDims d = this->common_dims();
    d.recurrent = this->opt_.recurrent_activation();
    return d;
  }
  /// From the options' initialisers (Keras's defaults: glorot_uniform kernel, orthogonal recurrent kernel, zero
  /// bias, forget-gate bias 1 with unit_forget_bias).
  void initialize(Rng& rng) override { this->init_from_options(rng, this->opt_.unit_forget_bias()); }
};

}  // namespace fastnn
