#pragma once
/// \file dense.hpp
/// Dense (fully connected) layer: y = a(x W + b), W [in, units], b [units], applied to the last
/// axis of its input as in Keras: [batch, features] -> [batch, units], and
/// [batch, steps, features] -> [batch, steps, units] (the same weights at every step, e.g. after
/// an LSTM with return_sequences). Written once against Ops<T, D>, so it runs on every device.

#include <memory>
#include <string>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of a Dense layer: `DenseOptions(10).activation(Activation::Softmax)`. Initialisers and regularisers
/// (init/initializers.hpp, init/regularizers.hpp) default to Keras's: glorot_uniform kernel, zero bias, none.
struct DenseOptions {
  explicit DenseOptions(Index units = 1) { units_ = units; }
  FASTNN_OPTIONS((Index, units, 1),
                 (Activation, activation, Activation::Linear),
                 (bool, use_bias, true),
                 (init::Initializer, kernel_initializer, init::Initializer::glorot_uniform()),
                 (init::Initializer, bias_initializer, init::Initializer::zeros()),
                 (init::Regularizer, kernel_regularizer, init::Regularizer::none()),
                 (init::Regularizer, bias_regularizer, init::Regularizer::none()),
                 (init::Regularizer, activity_regularizer, init::Regularizer::none()))
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
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Dense>(opt_); }
  const DenseOptions& options() const { return opt_; }

  /// Input [..., features] (any rank >= 1 per sample); output [..., units].
  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("[..., features] (rank >= 1)", in);
    this->input_shape_ = in;
    this->output_shape_ = in;
    this->output_shape_[in.rank() - 1] = opt_.units();
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> s{{"kernel", Shape{features(), opt_.units()}}};
    if (opt_.use_bias()) s.push_back({"bias", Shape{opt_.units()}});
    return s;
  }
  /// The kernel, then the bias, from their initialisers (Keras's fans; PyTorch's fan-in is the input features).
  void initialize(Rng& rng) override {
    Tensor<T, Cpu> k(this->params_[0].value.shape());
    opt_.kernel_initializer().fill(k, init::keras_fans(k.shape(), features()), rng);
    copy_from_host(k, this->params_[0].value);
    if (opt_.use_bias()) {
      Tensor<T, Cpu> b(this->params_[1].value.shape());
      opt_.bias_initializer().fill(b, init::keras_fans(b.shape(), features()), rng);
      copy_from_host(b, this->params_[1].value);
    }
  }
  bool has_regularizers() const override {
    return this->trainable_ &&
           (opt_.kernel_regularizer().active() || (opt_.use_bias() && opt_.bias_regularizer().active()));
  }
  const init::Regularizer& activity_regularizer() const override { return opt_.activity_regularizer(); }
  /// kernel_regularizer on the kernel plus bias_regularizer on the bias (none for a layer that is not trainable).
  double regularization_loss(bool accumulate_grad) override {
    if (!has_regularizers()) return 0;
    double r = Base::weight_penalty(opt_.kernel_regularizer(), this->params_[0], accumulate_grad);
    if (opt_.use_bias()) r += Base::weight_penalty(opt_.bias_regularizer(), this->params_[1], accumulate_grad);
    return r;
  }

  bool per_step() const override { return true; }
  Activation output_activation() const override { return opt_.activation(); }
  /// When set, forward() leaves out the activation (the model fuses it into the loss).
  void set_emit_preactivation(bool on) override { emit_pre_ = on && opt_.activation() != Activation::Linear; }
  bool emits_preactivation() const override { return emit_pre_; }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    this->require_batch_of_input_shape(x.shape());
    const Index rows = x.size() / features();
    y.resize(this->output_shape_.prepend(x.dim(0)));
    Tn y2 = y.reshaped(Shape{rows, opt_.units()});
    O::gemm(false, false, T(1), x.reshaped(Shape{rows, features()}), this->params_[0].value, T(0), y2, this->precision_,
            this->threads_);
    if (opt_.use_bias()) O::add_row_vector(y2, this->params_[1].value);
    if (!emit_pre_) activate_keeping_input<T, D>(opt_.activation(), y2, pre_, mode == Mode::Train);
  }

  void backward(const Tn& x, const Tn& y, const Tn& dy, Tn* dx) override {
    const Index rows = x.size() / features();
    Tn dz = dy.reshaped(Shape{rows, opt_.units()});
    if (!emit_pre_ && opt_.activation() != Activation::Linear) {
      dz_.resize(dz.shape());
      copy_into(dy, dz_);
      activation_grad<T, D>(opt_.activation(), y.reshaped(dz.shape()), pre_, dz_);
      dz = dz_;
    }
    O::gemm(true, false, T(1), x.reshaped(Shape{rows, features()}), dz, T(1), this->params_[0].grad, this->precision_,
            this->threads_);
    if (opt_.use_bias()) O::accumulate_column_sums(dz, this->params_[1].grad);
    if (dx) {
      dx->resize(x.shape());
      Tn dx2 = dx->reshaped(Shape{rows, features()});
      O::gemm(false, true, T(1), dz, this->params_[0].value, T(0), dx2, this->precision_, this->threads_);
    }
  }

 private:
  Index features() const { return this->input_shape_[this->input_shape_.rank() - 1]; }

  DenseOptions opt_;
  bool emit_pre_ = false;
  Tn dz_, pre_;  // pre_: the pre-activation, kept in training for gelu and swish
};

}  // namespace fastnn
