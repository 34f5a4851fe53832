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

#include <memory>
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
                 (bool, go_backwards, false))
};

template <class T, class D = Cpu>
class GRU : public RecurrentLayer<T, D> {
  using Base = Layer<T, D>;

 public:
  explicit GRU(const GRUOptions& opt) : opt_(opt) {
    if (opt.units() <= 0) throw ArgumentError("GRU: units must be positive, got " + std::to_string(opt.units()));
    this->require_gate_activation("GRU", opt.recurrent_activation());
    if (opt.activation() != Activation::Tanh)
      throw UnsupportedError("GRU: activation must be tanh, got " + to_string(opt.activation()));
  }
  std::string type_name() const override { return "GRU"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<GRU>(opt_); }
  const GRUOptions& options() const { return opt_; }
  void set_go_backwards(bool on) override { opt_.go_backwards(on); }
  bool go_backwards() const override { return opt_.go_backwards(); }
  bool return_sequences() const override { return opt_.return_sequences(); }
  Index units() const override { return opt_.units(); }
  detail::RnnDims cell_dims() const override {
    detail::RnnDims d;
    d.cell = RnnCell::GRU;
    d.return_sequences = opt_.return_sequences();
    d.go_backwards = opt_.go_backwards();
    d.reset_after = opt_.reset_after();
    d.recurrent = opt_.recurrent_activation();
    return d;
  }
  /// glorot_uniform kernel, orthogonal recurrent kernel, zero biases (Keras defaults).
  void initialize(Rng& rng) override { this->init_weights(rng, false); }

 private:
  GRUOptions opt_;
};

}  // namespace fastnn
