#pragma once
/// \file lstm.hpp
/// Long short-term memory layer, Keras semantics (see backend/cpu/lstm.hpp for the equations).
/// Parameters: kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H], gate order i, f, c, o.
/// The layer is written once; the per-device work is detail::LstmImpl<T, D> (the CPU one here,
/// the cuDNN one in layers/cuda/lstm.hpp).

#include <memory>
#include <string>

#include "fastnn/backend/cpu/lstm.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// A layer that consumes a sequence [batch, steps, features] and can run it in reverse;
/// Bidirectional wraps any of these.
template <class T, class D = Cpu>
class RecurrentLayer : public Layer<T, D> {
 public:
  /// Process the sequence from its last step to its first (Keras's go_backwards). With
  /// return_sequences the output is in processing order, i.e. reversed.
  virtual void set_go_backwards(bool on) = 0;
  virtual bool go_backwards() const = 0;
  virtual bool return_sequences() const = 0;
};

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

namespace detail {

/// Per-device LSTM computation. x [B, S, F]; y [B, H] or [B, S, H].
template <class T, class D>
struct LstmImpl {
  static_assert(dependent_false<D>::value,
                "no LSTM implementation for this device: include the device's umbrella header (fastnn/cuda.hpp for Cuda)");
};

template <class T>
struct LstmImpl<T, Cpu> {
  void forward(const LstmDims& d, const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& w,
               const Tensor<T, Cpu>& u, const Tensor<T, Cpu>& b, Tensor<T, Cpu>& y, Mode) {
    kernel.forward(d, x.data(), w.data(), u.data(), b.data(), y.data());
  }
  void backward(const Tensor<T, Cpu>& dy, const Tensor<T, Cpu>& w, const Tensor<T, Cpu>& u,
                Tensor<T, Cpu>& dw, Tensor<T, Cpu>& du, Tensor<T, Cpu>& db, Tensor<T, Cpu>* dx) {
    kernel.backward(dy.data(), w.data(), u.data(), dw.data(), du.data(), db.data(),
                    dx ? dx->data() : nullptr);
  }
  CpuLstmKernel<T> kernel;
};

}  // namespace detail

template <class T, class D = Cpu>
class LSTM : public RecurrentLayer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  explicit LSTM(const LSTMOptions& opt) : opt_(opt) {
    if (opt.units() <= 0) throw ArgumentError("LSTM: units must be positive, got " + std::to_string(opt.units()));
    if (opt.recurrent_activation() != Activation::Sigmoid &&
        opt.recurrent_activation() != Activation::HardSigmoid)
      throw ArgumentError("LSTM: recurrent_activation must be sigmoid or hard_sigmoid, got " +
                          to_string(opt.recurrent_activation()));
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

  /// Input [steps, features]; output [units] or [steps, units].
  Shape build(const Shape& in) override {
    if (in.rank() != 2 || in[0] <= 0 || in[1] <= 0) this->shape_error("[steps, features] (rank 2)", in);
    this->input_shape_ = in;
    this->output_shape_ = opt_.return_sequences() ? Shape{in[0], opt_.units()} : Shape{opt_.units()};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    const Index H = opt_.units();
    return {{"kernel", Shape{this->input_shape_[1], 4 * H}},
            {"recurrent_kernel", Shape{H, 4 * H}},
            {"bias", Shape{4 * H}}};
  }
  /// glorot_uniform kernel, orthogonal recurrent kernel, zero bias with forget-gate bias 1
  /// when unit_forget_bias (Keras defaults).
  void initialize(Rng& rng) override {
    const Index H = opt_.units(), F = this->input_shape_[1];
    Tensor<T, Cpu> k(Shape{F, 4 * H}), r(Shape{H, 4 * H});
    Tensor<T, Cpu> b = Tensor<T, Cpu>::zeros(Shape{4 * H});
    init::glorot_uniform(k, F, 4 * H, rng);
    init::orthogonal(r, rng);
    if (opt_.unit_forget_bias())
      for (Index j = H; j < 2 * H; ++j) b[j] = T(1);
    copy_from_host(k, this->params_[0].value);
    copy_from_host(r, this->params_[1].value);
    copy_from_host(b, this->params_[2].value);
  }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    if (x.rank() != 3 || x.dim(1) != this->input_shape_[0] || x.dim(2) != this->input_shape_[1])
      this->shape_error("[batch, " + std::to_string(this->input_shape_[0]) + ", " +
                            std::to_string(this->input_shape_[1]) + "]",
                        x.shape());
    dims_.batch = x.dim(0);
    dims_.steps = x.dim(1);
    dims_.features = x.dim(2);
    dims_.units = opt_.units();
    dims_.return_sequences = opt_.return_sequences();
    dims_.go_backwards = opt_.go_backwards();
    dims_.recurrent = opt_.recurrent_activation();
    y.resize(this->output_shape_.prepend(x.dim(0)));
    impl_.forward(dims_, x, this->params_[0].value, this->params_[1].value, this->params_[2].value, y,
                  mode);
  }

  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (dx) dx->resize(x.shape());
    impl_.backward(dy, this->params_[0].value, this->params_[1].value, this->params_[0].grad,
                   this->params_[1].grad, this->params_[2].grad, dx);
  }

  /// Device-specific state (the CUDA backend keeps its cuDNN descriptors here).
  detail::LstmImpl<T, D>& impl() { return impl_; }

 private:
  LSTMOptions opt_;
  detail::LstmDims dims_;
  detail::LstmImpl<T, D> impl_;
};

}  // namespace fastnn
