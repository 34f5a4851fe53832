#pragma once
/// \file optimizer.hpp
/// Optimizers update a model's parameters in one fused pass over its contiguous parameter
/// buffer (see core/parameter.hpp). Keras's formulas and its time-based `decay`:
/// lr_t = lr / (1 + decay * iterations).

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

template <class T, class D = Cpu>
class Optimizer {
 public:
  using Tn = Tensor<T, D>;
  virtual ~Optimizer() = default;
  /// "SGD", "Adam", "RMSprop".
  virtual std::string type_name() const = 0;
  /// Hyper-parameters as text (summary, checkpoint metadata).
  virtual LayerConfig config() const = 0;
  /// A copy with the same hyper-parameters and no state (used for device transfer).
  virtual std::unique_ptr<Optimizer> clone_config() const = 0;

  /// Binds the flat parameter and gradient buffers and allocates zeroed state.
  void attach(const Tn& params, const Tn& grads) {
    params_ = params;
    grads_ = grads;
    for (auto& s : slots_) {
      s.second.resize(params.shape());
      s.second.set_zero();
    }
  }
  /// One update from the current gradients.
  void step() {
    if (params_.empty()) throw ArgumentError(type_name() + ": step() before attach()");
    update(current_lr());
    ++iterations_;
  }
  /// The learning rate of the next step, after decay.
  T current_lr() const {
    return static_cast<T>(lr_ / (1.0 + decay_ * static_cast<double>(iterations_)));
  }
  double learning_rate() const { return lr_; }
  double decay() const { return decay_; }
  std::int64_t iterations() const { return iterations_; }
  void set_iterations(std::int64_t n) { iterations_ = n; }
  /// Named state buffers ("momentum", "m", "v", ...), each shaped like the flat parameters.
  std::vector<std::pair<std::string, Tn>>& state() { return slots_; }

 protected:
  Optimizer(double lr, double decay) : lr_(lr), decay_(decay) {
    if (!(lr > 0) || !std::isfinite(lr)) throw ArgumentError("optimizer: learning rate must be positive and finite");
    if (!(decay >= 0) || !std::isfinite(decay)) throw ArgumentError("optimizer: decay must be >= 0");
  }
  virtual void update(T lr) = 0;
  Tn& slot(std::size_t i) { return slots_[i].second; }
  LayerConfig base_config() const {
    return {{"learning_rate", fmt(lr_)}, {"decay", fmt(decay_)}};
  }
  static std::string fmt(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
  }

  double lr_, decay_;
  std::int64_t iterations_ = 0;
  Tn params_, grads_;
  std::vector<std::pair<std::string, Tn>> slots_;
};

/// Stochastic gradient descent with optional (Nesterov) momentum, Keras's formulation:
///   v = momentum * v - lr * g
///   p = p + momentum * v - lr * g   (nesterov)     p = p + v   (classical)
template <class T, class D = Cpu>
class SGD : public Optimizer<T, D> {
 public:
  explicit SGD(double lr = 0.01, double momentum = 0.0, bool nesterov = false, double decay = 0.0)
      : Optimizer<T, D>(lr, decay), momentum_(momentum), nesterov_(nesterov) {
    if (!(momentum >= 0 && momentum < 1)) throw ArgumentError("SGD: momentum must be in [0, 1)");
    this->slots_.push_back({"momentum", {}});
  }
  std::string type_name() const override { return "SGD"; }
  LayerConfig config() const override {
    auto c = this->base_config();
    c["momentum"] = this->fmt(momentum_);
    c["nesterov"] = nesterov_ ? "true" : "false";
    return c;
  }
  std::unique_ptr<Optimizer<T, D>> clone_config() const override {
    return std::make_unique<SGD>(this->lr_, momentum_, nesterov_, this->decay_);
  }

 protected:
  void update(T lr) override {
    Ops<T, D>::sgd_update(this->params_, this->grads_, this->slot(0), lr, static_cast<T>(momentum_), nesterov_);
  }

 private:
  double momentum_;
  bool nesterov_;
};

/// Adam (Kingma & Ba), Keras's formulation with the bias correction folded into the rate:
///   t = iterations + 1;  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
///   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;  p -= lr_t m / (sqrt(v) + eps)
template <class T, class D = Cpu>
class Adam : public Optimizer<T, D> {
 public:
  explicit Adam(double lr = 0.001, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-7,
                double decay = 0.0)
      : Optimizer<T, D>(lr, decay), b1_(beta1), b2_(beta2), eps_(epsilon) {
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
      throw ArgumentError("Adam: beta1 and beta2 must be in [0, 1)");
    if (!(epsilon > 0)) throw ArgumentError("Adam: epsilon must be positive");
    this->slots_.push_back({"m", {}});
    this->slots_.push_back({"v", {}});
  }
  std::string type_name() const override { return "Adam"; }
  LayerConfig config() const override {
    auto c = this->base_config();
    c["beta_1"] = this->fmt(b1_);
    c["beta_2"] = this->fmt(b2_);
    c["epsilon"] = this->fmt(eps_);
    return c;
  }
  std::unique_ptr<Optimizer<T, D>> clone_config() const override {
    return std::make_unique<Adam>(this->lr_, b1_, b2_, eps_, this->decay_);
  }

 protected:
  void update(T lr) override {
    const double t = static_cast<double>(this->iterations_ + 1);
    const double lr_t = lr * std::sqrt(1.0 - std::pow(b2_, t)) / (1.0 - std::pow(b1_, t));
    Ops<T, D>::adam_update(this->params_, this->grads_, this->slot(0), this->slot(1), static_cast<T>(lr_t),
                           static_cast<T>(b1_), static_cast<T>(b2_), static_cast<T>(eps_));
  }

 private:
  double b1_, b2_, eps_;
};

/// RMSprop (Tieleman & Hinton), Keras's formulation:
///   a = rho a + (1 - rho) g^2;  p -= lr g / (sqrt(a) + eps)
template <class T, class D = Cpu>
class RMSprop : public Optimizer<T, D> {
 public:
  explicit RMSprop(double lr = 0.001, double rho = 0.9, double epsilon = 1e-7, double decay = 0.0)
      : Optimizer<T, D>(lr, decay), rho_(rho), eps_(epsilon) {
    if (!(rho >= 0 && rho < 1)) throw ArgumentError("RMSprop: rho must be in [0, 1)");
    if (!(epsilon > 0)) throw ArgumentError("RMSprop: epsilon must be positive");
    this->slots_.push_back({"accumulator", {}});
  }
  std::string type_name() const override { return "RMSprop"; }
  LayerConfig config() const override {
    auto c = this->base_config();
    c["rho"] = this->fmt(rho_);
    c["epsilon"] = this->fmt(eps_);
    return c;
  }
  std::unique_ptr<Optimizer<T, D>> clone_config() const override {
    return std::make_unique<RMSprop>(this->lr_, rho_, eps_, this->decay_);
  }

 protected:
  void update(T lr) override {
    Ops<T, D>::rmsprop_update(this->params_, this->grads_, this->slot(0), lr, static_cast<T>(rho_),
                              static_cast<T>(eps_));
  }

 private:
  double rho_, eps_;
};

}  // namespace fastnn
