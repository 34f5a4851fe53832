#pragma once
/// \file gru.hpp
/// Gated recurrent unit, Keras semantics (equations in backend/rnn.hpp). Parameters: kernel
/// [F, 3H], recurrent_kernel [H, 3H], gate order z, r, h; bias [2, 3H] (input and recurrent
/// bias) with reset_after, the default and cuDNN's and PyTorch's form, else [3H] (Keras's older
/// form, CPU only). Everything but the options lives in RecurrentLayer (layers/recurrent.hpp).
///
/// PyTorch's torch.nn.GRU orders the gates r, z, n: weight_ih_l0 = [W_r; W_z; W_h]^T, i.e. the
/// column blocks of the kernel permuted (1, 0, 2) and transposed, the same for weight_hh_l0 and
/// the two biases (bias_ih_l0 = bias[0], bias_hh_l0 = bias[1]).

#include <string>

#include "fastnn/layers/recurrent.hpp"

namespace fastnn {

/// Options: `GRUOptions(64).return_sequences(true)`, `.reset_after(false)` for Keras's older form.
struct GRUOptions {
  explicit GRUOptions(Index units = 1) { units_ = units; }
  FASTNN_OPTIONS((Index, units, 1),
                 (Activation, activation, Activation::Tanh),
                 (Activation, recurrent_activation, Activation::Sigmoid),
                 (bool, return_sequences, false),
                 (bool, reset_after, true),
                 (bool, go_backwards, false),
                 FASTNN_RECURRENT_WEIGHT_OPTIONS)
};

template <class T, class D = Cpu>
class GRU : public detail::RecurrentWithOptions<T, D, GRUOptions, GRU, RnnCell::GRU> {
 public:
  explicit GRU(const GRUOptions& opt) : GRU::RecurrentWithOptions(opt) {
    this->require_gate_activation("GRU", opt.recurrent_activation());
    if (opt.activation() != Activation::Tanh)
      throw UnsupportedError("GRU: activation must be tanh, got " + to_string(opt.activation()));
  }
  detail::RnnDims cell_dims() const override {
    detail::RnnDims d = this->common_dims();
    d.reset_after = this->opt_.reset_after();
    d.recurrent = this->opt_.recurrent_activation();
    return d;
  }
  /// From the options' initialisers (Keras's defaults: glorot_uniform kernel, orthogonal recurrent kernel, zero
  /// bias).
  void initialize(Rng& rng) override { this->init_from_options(rng, false); }
};

}  // namespace fastnn
