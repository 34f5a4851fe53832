#pragma once
/// \file batch_norm.hpp
/// BatchNormalization (Keras's), over the last axis (axis = -1, channels-last):
///   y = gamma (x - mean) / sqrt(var + epsilon) + beta, per channel.
/// In training (Mode::Train on a trainable layer), mean and var are the batch's (over every
/// axis but the last; var is the biased variance, divided by the element count), and the moving
/// statistics are updated: moving = moving * momentum + batch * (1 - momentum), with the same
/// biased variance (as Keras 3; PyTorch and TensorFlow's fused kernel use the unbiased variance
/// for running_var). Otherwise (Mode::Infer, or set_trainable(false) even in training, as in
/// Keras) mean and var are moving_mean and moving_variance.
///
/// Parameters, in Keras's order: gamma [c] (scale=true) and beta [c] (center=true), trainable;
/// moving_mean [c] (initially 0) and moving_variance [c] (initially 1), not trainable
/// (ParamSpec::trainable): the optimizer leaves them alone and their gradients stay zero, but they
/// are saved with the weights. PyTorch's BatchNorm weight, bias, running_mean, running_var are the
/// same four vectors (its eps default is 1e-5, its momentum 0.1 = 1 - Keras's momentum).
///
/// Sequence lengths shorter than the input are refused (the statistics would include padding).

#include <memory>
#include <string>

#include "fastnn/backend/conv.hpp"
#include "fastnn/backend/cpu/conv.hpp"
#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of BatchNormalization: `BatchNormalizationOptions().momentum(0.9)`.
struct BatchNormalizationOptions {
  FASTNN_OPTIONS((Index, axis, -1),
                 (double, momentum, 0.99),
                 (double, epsilon, 1e-3),
                 (bool, center, true),
                 (bool, scale, true))
};

template <class T, class D = Cpu>
class BatchNormalization : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;
  using S = SpatialOps<T, D>;

 public:
  explicit BatchNormalization(const BatchNormalizationOptions& opt = BatchNormalizationOptions()) : opt_(opt) {
    if (!(opt.momentum() >= 0 && opt.momentum() <= 1))
      throw ArgumentError("BatchNormalization: momentum must be in [0, 1], got " + format_number(opt.momentum()));
    if (!(opt.epsilon() > 0))
      throw ArgumentError("BatchNormalization: epsilon must be positive, got " + format_number(opt.epsilon()));
  }
  std::string type_name() const override { return "BatchNormalization"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<BatchNormalization>(opt_); }
  const BatchNormalizationOptions& options() const { return opt_; }

  /// Any per-sample shape; axis must name its last axis (-1, or the rank counting the batch axis).
  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("[batch, ..., channels]", this->batch_shape(in));
    if (opt_.axis() != -1 && opt_.axis() != in.rank())
      throw ArgumentError(this->name_ + " (BatchNormalization): only the last axis is normalised (axis -1 or " +
                          std::to_string(in.rank()) + "), got axis " + std::to_string(opt_.axis()));
    this->input_shape_ = in;
    this->output_shape_ = in;
    c_ = in[in.rank() - 1];
    return in;
  }
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> s;
    if (opt_.scale()) s.push_back({"gamma", Shape{c_}});
    if (opt_.center()) s.push_back({"beta", Shape{c_}});
    s.push_back({"moving_mean", Shape{c_}, false});
    s.push_back({"moving_variance", Shape{c_}, false});
    return s;
  }
  /// gamma 1, beta 0, moving_mean 0, moving_variance 1 (Keras's defaults).
  void initialize(Rng&) override {
    if (opt_.scale()) O::fill(gamma().value, T(1));
    if (opt_.center()) O::fill(beta().value, T(0));
    O::fill(moving_mean().value, T(0));
    O::fill(moving_variance().value, T(1));
  }

  void set_input_lengths(const Lengths& lengths) override {
    if (this->input_shape_.rank() >= 2 && !lengths.empty() && !all_full_length(lengths, this->input_shape_[0]))
      throw ArgumentError(this->name_ + " (BatchNormalization): sequence lengths shorter than the " +
                          std::to_string(this->input_shape_[0]) +
                          " input steps are not supported (the statistics would include the padding)");
    this->in_lengths_ = lengths;
  }
  bool per_step() const override { return true; }

  /// Whether forward() in `mode` normalises with the batch's statistics (and updates the moving ones).
  bool uses_batch_statistics(Mode mode) const { return mode == Mode::Train && this->trainable_; }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(x.shape());
    last_batch_ = uses_batch_statistics(mode);
    const T eps = static_cast<T>(opt_.epsilon());
    if (!last_batch_) {
      S::batch_norm_apply(x, moving_mean().value, moving_variance().value, eps, gamma_value(), beta_value(), y);
      return;
    }
    mean_.resize(Shape{c_});
    var_.resize(Shape{c_});
    S::batch_norm_moments(x, mean_, var_);
    S::batch_norm_apply(x, mean_, var_, eps, gamma_value(), beta_value(), y);
    const T m = static_cast<T>(opt_.momentum());
    O::scale(moving_mean().value, m);
    O::axpy(T(1) - m, mean_, moving_mean().value);
    O::scale(moving_variance().value, m);
    O::axpy(T(1) - m, var_, moving_variance().value);
  }

  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (dx) dx->resize(x.shape());
    const T eps = static_cast<T>(opt_.epsilon());
    Tn* dg = opt_.scale() ? &gamma().grad : nullptr;
    Tn* db = opt_.center() ? &beta().grad : nullptr;
    if (last_batch_) S::batch_norm_backward(x, mean_, var_, eps, gamma_value(), dy, dg, db, dx, true);
    else S::batch_norm_backward(x, moving_mean().value, moving_variance().value, eps, gamma_value(), dy, dg, db, dx,
                                false);
  }

 private:
  Parameter<T, D>& gamma() { return this->params_[0]; }
  Parameter<T, D>& beta() { return this->params_[opt_.scale() ? 1 : 0]; }
  Parameter<T, D>& moving_mean() { return this->params_[this->params_.size() - 2]; }
  Parameter<T, D>& moving_variance() { return this->params_[this->params_.size() - 1]; }
  const Tn* gamma_value() { return opt_.scale() ? &gamma().value : nullptr; }
  const Tn* beta_value() { return opt_.center() ? &beta().value : nullptr; }

  BatchNormalizationOptions opt_;
  Index c_ = 0;
  bool last_batch_ = false;
  Tn mean_, var_;
};

}  // namespace fastnn
