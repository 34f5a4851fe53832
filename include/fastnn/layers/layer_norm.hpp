#pragma once
/// \file layer_norm.hpp
/// LayerNormalization (Keras's), over the last axis (axis = -1):
///   y = gamma (x - mean) / sqrt(var + epsilon) + beta,
/// with mean and the biased variance var taken over the last axis of each row (each step of a
/// sequence on its own), the same in training and inference. Options as Keras: axis, epsilon
/// (1e-3, PyTorch's default is 1e-5), center (beta), scale (gamma), gamma_initializer (ones),
/// beta_initializer (zeros). Only the last axis is normalised.
///
/// Parameters, in Keras's order: gamma [c] (scale=true), beta [c] (center=true). In a weights file
/// they are `<name>.gamma` and `<name>.beta`, which are torch.nn.LayerNorm(c, eps=epsilon)'s
/// `weight` and `bias` with the same layout (docs/weights-format.md).
///
/// Sequence lengths pass through. Each step is normalised on its own, so a padded step changes
/// nothing at the real steps; as Dense, the layer computes the padded steps too, and the layers
/// after it (recurrent layers, pooling with lengths, the masked loss) ignore them.
///
/// The row statistics come from TransformerOps<T, D> (backend/transformer.hpp): one pass per row
/// on the CPU, a fused kernel of fastnn's on CUDA. mean and 1 / sqrt(var + epsilon) of each row
/// are kept for backward() in workspaces that grow to the largest batch and are then reused.

#include <memory>
#include <string>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/cpu/transformer.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/backend/transformer.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of LayerNormalization: `LayerNormalizationOptions().epsilon(1e-5)`.
struct LayerNormalizationOptions {
  FASTNN_OPTIONS((Index, axis, -1),
                 (double, epsilon, 1e-3),
                 (bool, center, true),
                 (bool, scale, true),
                 (init::Initializer, beta_initializer, init::Initializer::zeros()),
                 (init::Initializer, gamma_initializer, init::Initializer::ones()))
};

template <class T, class D = Cpu>
class LayerNormalization : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using X = TransformerOps<T, D>;

 public:
  explicit LayerNormalization(const LayerNormalizationOptions& opt = LayerNormalizationOptions()) : opt_(opt) {
    if (!(opt.epsilon() > 0))
      throw ArgumentError("LayerNormalization: epsilon must be positive, got " + format_number(opt.epsilon()));
  }
  std::string type_name() const override { return "LayerNormalization"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<LayerNormalization>(opt_); }
  const LayerNormalizationOptions& options() const { return opt_; }

  /// Any per-sample shape [..., features]; axis must name its last axis (-1, or the rank counting the batch axis).
  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("[batch, ..., features]", in);
    if (opt_.axis() != -1 && opt_.axis() != in.rank())
      throw ArgumentError(this->name_ + " (LayerNormalization): only the last axis is normalised (axis -1 or " +
                          std::to_string(in.rank()) + " for input " + this->batch_shape(in) + "), got axis " +
                          std::to_string(opt_.axis()));
    this->input_shape_ = in;
    this->output_shape_ = in;
    c_ = in[in.rank() - 1];
    return in;
  }
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> s;
    if (opt_.scale()) s.push_back({"gamma", Shape{c_}});
    if (opt_.center()) s.push_back({"beta", Shape{c_}});
    return s;
  }
  /// gamma from gamma_initializer (ones), beta from beta_initializer (zeros).
  void initialize(Rng& rng) override {
    if (opt_.scale()) fill(gamma().value, opt_.gamma_initializer(), rng);
    if (opt_.center()) fill(beta().value, opt_.beta_initializer(), rng);
  }

  bool per_step() const override { return true; }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(x.shape());
    const Index rows = x.size() / c_;
    mean_.resize(Shape{rows});
    rstd_.resize(Shape{rows});
    X::layer_norm_forward(x, static_cast<T>(opt_.epsilon()), gamma_value(), beta_value(), y, mean_, rstd_);
  }

  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (dx) dx->resize(x.shape());
    X::layer_norm_backward(x, mean_, rstd_, gamma_value(), dy, opt_.scale() ? &gamma().grad : nullptr,
                           opt_.center() ? &beta().grad : nullptr, dx);
  }

 private:
  Parameter<T, D>& gamma() { return this->params_[0]; }
  Parameter<T, D>& beta() { return this->params_[opt_.scale() ? 1 : 0]; }
  const Tn* gamma_value() { return opt_.scale() ? &gamma().value : nullptr; }
  const Tn* beta_value() { return opt_.center() ? &beta().value : nullptr; }
  void fill(Tn& dst, const init::Initializer& init, Rng& rng) {
    Tensor<T, Cpu> h(dst.shape());
    init.fill(h, init::keras_fans(h.shape(), c_), rng);
    copy_from_host(h, dst);
  }

  LayerNormalizationOptions opt_;
  Index c_ = 0;
  Tn mean_, rstd_;
};

}  // namespace fastnn
