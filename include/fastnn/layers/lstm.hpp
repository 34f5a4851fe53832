#pragma once
/// \file lstm.hpp
/// Long short-term memory layer, Keras semantics (see backend/cpu/lstm.hpp for the equations).
/// Parameters: kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H], gate order i, f, c, o.
/// Everything but the options lives in RecurrentLayer (layers/recurrent.hpp).

#include <memory>
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
                 (bool, go_backwards, false))
};

template <class T, class D = Cpu>
class LSTM : public RecurrentLayer<T, D> {
  using Base = Layer<T, D>;

 public:
  explicit LSTM(const LSTMOptions& opt) : opt_(opt) {
    if (opt.units() <= 0) throw ArgumentError("LSTM: units must be positive, got " + std::to_string(opt.units()));
    this->require_gate_activation("LSTM", opt.recurrent_activation());
    if (opt.activation() != Activation::Tanh)
      throw UnsupportedError("LSTM: activation must be tanh, got " + to_string(opt.activation()));
  }
  std::string type_name() const override { return "LSTM"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<LSTM>(opt_); }
  const LSTMOptions& options() const { return opt_; }
  void set_go_backwards(bool on) override { opt_.go_backwards(on); }
  bool go_backwards() const override { return opt_.go_backwards(); }
  bool return_sequences() const override { return opt_.return_sequences(); }
  Index units() const override { return opt_.units(); }
  detail::RnnDims cell_dims() const override {
    detail::RnnDims d;
    d.cell = RnnCell::LSTM;
    d.return_sequences = opt_.return_sequences();
    d.go_backwards = opt_.go_backwards();
    d.recurrent = opt_.recurrent_activation();
    return d;
  }
  /// glorot_uniform kernel, orthogonal recurrent kernel, zero bias with forget-gate bias 1
  /// when unit_forget_bias (Keras defaults).
  void initialize(Rng& rng) override { this->init_weights(rng, opt_.unit_forget_bias()); }

 private:
  LSTMOptions opt_;
};

}  // namespace fastnn
