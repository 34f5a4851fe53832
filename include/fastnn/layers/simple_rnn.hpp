#pragma once
/// \file simple_rnn.hpp
/// Fully connected recurrent layer, Keras's SimpleRNN: h_t = a(x_t W + h_{t-1} U + b) with
/// a = tanh (default) or relu. Parameters: kernel [F, H], recurrent_kernel [H, H], bias [H].
/// torch.nn.RNN(nonlinearity='tanh'|'relu') takes weight_ih_l0 = kernel^T, weight_hh_l0 =
/// recurrent_kernel^T, bias_ih_l0 = bias, bias_hh_l0 = 0.

#include <memory>
#include <string>

#include "fastnn/layers/recurrent.hpp"

namespace fastnn {

/// Options: `SimpleRNNOptions(32).activation(Activation::Relu).return_sequences(true)`.
struct SimpleRNNOptions {
  explicit SimpleRNNOptions(Index units = 1) { units_ = units; }
  FASTNN_OPTIONS((Index, units, 1),
                 (Activation, activation, Activation::Tanh),
                 (bool, return_sequences, false),
                 (bool, go_backwards, false))
};

template <class T, class D = Cpu>
class SimpleRNN : public RecurrentLayer<T, D> {
  using Base = Layer<T, D>;

 public:
  explicit SimpleRNN(const SimpleRNNOptions& opt) : opt_(opt) {
    if (opt.units() <= 0) throw ArgumentError("SimpleRNN: units must be positive, got " + std::to_string(opt.units()));
    if (opt.activation() != Activation::Tanh && opt.activation() != Activation::Relu)
      throw ArgumentError("SimpleRNN: activation must be tanh or relu, got " + to_string(opt.activation()));
  }
  std::string type_name() const override { return "SimpleRNN"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<SimpleRNN>(opt_); }
  const SimpleRNNOptions& options() const { return opt_; }
  void set_go_backwards(bool on) override { opt_.go_backwards(on); }
  bool go_backwards() const override { return opt_.go_backwards(); }
  bool return_sequences() const override { return opt_.return_sequences(); }
  Index units() const override { return opt_.units(); }
  detail::RnnDims cell_dims() const override {
    detail::RnnDims d;
    d.cell = RnnCell::SimpleRNN;
    d.return_sequences = opt_.return_sequences();
    d.go_backwards = opt_.go_backwards();
    d.activation = opt_.activation();
    return d;
  }
  /// glorot_uniform kernel, orthogonal recurrent kernel, zero bias (Keras defaults).
  void initialize(Rng& rng) override { this->init_weights(rng, false); }

 private:
  SimpleRNNOptions opt_;
};

}  // namespace fastnn
