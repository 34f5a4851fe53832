#pragma once
/// \file flatten.hpp
/// Flatten: [batch, d1, d2, ...] -> [batch, d1 * d2 * ...] (Keras's Flatten), e.g. between an
/// LSTM with return_sequences and a Dense layer. No parameters; the values are copied (on the
/// device they live on), so the layer works unchanged on every backend.

#include <memory>
#include <string>

#include "fastnn/layers/layer.hpp"

namespace fastnn {

template <class T, class D = Cpu>
class Flatten : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  Flatten() = default;
  std::string type_name() const override { return "Flatten"; }
  LayerConfig config() const override { return {}; }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Flatten>(); }

  /// Any non-empty per-sample shape; output [product of its dimensions].
  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("a non-empty per-sample shape", in);
    this->input_shape_ = in;
    this->output_shape_ = Shape{in.numel()};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(Shape{x.dim(0), this->output_shape_[0]});
    copy_into(x.reshaped(y.shape()), y);
  }
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    dx->resize(x.shape());
    Tn flat = dx->reshaped(dy.shape());
    copy_into(dy, flat);
  }
};

}  // namespace fastnn
