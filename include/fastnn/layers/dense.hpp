#pragma once
/// \file dense.hpp
/// Dense (fully connected) layer: y = a(x W + b), W [in, units], b [units].
/// Written once against Ops<T, D>, so it runs on every device.

#include <memory>
#include <string>

#include "fastnn/backend/ops.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/activation.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of a Dense layer: `DenseOptions(10).activation(Activation::Softmax)`.
struct DenseOptions {
  explicit DenseOptions(Index units) : units_(units) {}
  DenseOptions& activation(Activation a) { activation_ = a; return *this; }
  DenseOptions& use_bias(bool b) { use_bias_ = b; return *this; }
  Index units() const { return units_; }
  Activation activation() const { return activation_; }
  bool use_bias() const { return use_bias_; }

 private:
  Index units_;
  Activation activation_ = Activation::Linear;
  bool use_bias_ = true;
};

template <class T, class D = Cpu>
class Dense : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit Dense(const DenseOptions& opt) : opt_(opt) {
    if (opt.units() <= 0) throw ArgumentError("Dense: units must be positive, got " + std::to_string(opt.units()));
  }
  std::string type_name() const override { return "Dense"; }
  LayerConfig config() const override {
    return {{"units", std::to_string(opt_.units())},
            {"activation", to_string(opt_.activation())},
            {"use_bias", opt_.use_bias() ? "true" : "false"}};
  }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Dense>(opt_); }
  const DenseOptions& options() const { return opt_; }

  /// Input [features] (a rank-1 per-sample shape); output [units].
  Shape build(const Shape& in) override {
    if (in.rank() != 1 || in[0] <= 0) this->shape_error("[features] (rank 1)", in);
    this->input_shape_ = in;
    this->output_shape_ = Shape{opt_.units()};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> s{{"kernel", Shape{this->input_shape_[0], opt_.units()}}};
    if (opt_.use_bias()) s.push_back({"bias", Shape{opt_.units()}});
    return s;
  }
  /// glorot_uniform kernel, zero bias (Keras defaults).
  void initialize(Rng& rng) override {
    Tensor<T, Cpu> k(this->params_[0].value.shape());
    init::glorot_uniform(k, this->input_shape_[0], opt_.units(), rng);
    copy_from_host(k, this->params_[0].value);
    if (opt_.use_bias()) {
      Tensor<T, Cpu> b = Tensor<T, Cpu>::zeros(this->params_[1].value.shape());
      copy_from_host(b, this->params_[1].value);
    }
  }

  /// When set, forward() leaves the output pre-softmax (logits); Sequential uses this to fuse
  /// softmax with the cross-entropy loss. Only meaningful with Activation::Softmax.
  void set_emit_logits(bool on) { emit_logits_ = on; }
  bool emits_logits() const { return emit_logits_; }

  void forward(const Tn& x, Tn& y, Mode) override {
    check_input(x);
    y.resize(Shape{x.dim(0), opt_.units()});
    O::gemm(false, false, T(1), x.reshaped(Shape{x.dim(0), this->input_shape_[0]}), this->params_[0].value,
            T(0), y);
    if (opt_.use_bias()) O::add_row_vector(y, this->params_[1].value);
    if (!(emit_logits_ && opt_.activation() == Activation::Softmax)) O::activate(opt_.activation(), y);
  }

  void backward(const Tn& x, const Tn& y, const Tn& dy, Tn* dx) override {
    const Index n = x.dim(0);
    const Tn* dz = &dy;
    if (!(emit_logits_ && opt_.activation() == Activation::Softmax) &&
        opt_.activation() != Activation::Linear) {
      dz_.resize(dy.shape());
      copy_into(dy, dz_);
      O::activation_backward(opt_.activation(), y, dz_);
      dz = &dz_;
    }
    Tn x2 = x.reshaped(Shape{n, this->input_shape_[0]});
    O::gemm(true, false, T(1), x2, *dz, T(1), this->params_[0].grad);
    if (opt_.use_bias()) O::accumulate_column_sums(*dz, this->params_[1].grad);
    if (dx) {
      dx->resize(x.shape());
      Tn dx2 = dx->reshaped(Shape{n, this->input_shape_[0]});
      O::gemm(false, true, T(1), *dz, this->params_[0].value, T(0), dx2);
    }
  }

 private:
  void check_input(const Tn& x) const {
    if (x.rank() < 2 || x.shape().inner() != this->input_shape_[0])
      this->shape_error("[batch, " + std::to_string(this->input_shape_[0]) + "]", x.shape());
  }

  DenseOptions opt_;
  bool emit_logits_ = false;
  Tn dz_;
};

}  // namespace fastnn
