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
#include "fastnn/core/parameter.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/backend/cpu/ops.hpp"

namespace fastnn {

template <class T, class D = Cpu>
class Optimizer {
 public:
  using Tn = Tensor<T, D>;
  virtual ~Optimizer() = default;
  /// "SGD", "Adam", "RMSprop".
  virtual std::string type_name() const = 0;
  /// Hyper-parameters as text (checkpoint metadata, device transfer), Keras's names.
  virtual Config config() const = 0;
  /// Whether a step's update takes no per-step scalar computed on the host, so that a device
  /// may capture it once and replay it (a CUDA graph): true for SGD and RMSprop without decay.
  virtual bool capturable() const { return false; }

  /// Binds the flat parameter and gradient buffers and allocates zeroed state.
  void attach(const Tn& params, const Tn& grads, std::vector<ParamRange> layout = {}) {
    (void)layout;
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
  void set_learning_rate(double lr) { lr_ = lr; }
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

  double lr_, decay_;
  std::int64_t iterations_ = 0;
  Tn params_, grads_;
  std::vector<std::pair<std::string, Tn>> slots_;
};

/// Options of SGD (Keras's names): `SGDOptions().learning_rate(0.5).momentum(0.9).nesterov(true)`.
struct SGDOptions {
  FASTNN_OPTIONS((double, learning_rate, 0.01),
                 (double, momentum, 0.0),
                 (bool, nesterov, false),
                 (double, decay, 0.0))
};

/// Stochastic gradient descent with optional (Nesterov) momentum, Keras's formulation:
///   v = momentum * v - lr * g
///   p = p + momentum * v - lr * g   (nesterov)     p = p + v   (classical)
template <class T, class D = Cpu>
class SGD : public Optimizer<T, D> {
 public:
  explicit SGD(double lr = 0.01, double momentum = 0.0, bool nesterov = false, double decay = 0.0)
      : SGD(SGDOptions().learning_rate(lr).momentum(momentum).nesterov(nesterov).decay(decay)) {}
  explicit SGD(const SGDOptions& o) : Optimizer<T, D>(o.learning_rate(), o.decay()), opt_(o) {
    if (!(o.momentum() >= 0 && o.momentum() < 1)) throw ArgumentError("SGD: momentum must be in [0, 1)");
    this->slots_.push_back({"momentum", {}});
  }
  std::string type_name() const override { return "SGD"; }
  Config config() const override { return options_to_config(opt_); }
  bool capturable() const override { return opt_.decay() == 0; }

 protected:
  void update(T lr) override {
    Ops<T, D>::sgd_update(this->params_, this->grads_, this->slot(0), lr, static_cast<T>(opt_.momentum()), opt_.nesterov());
  }

 private:
  SGDOptions opt_;
};

/// Options of Adam (Keras's names).
struct AdamOptions {
  FASTNN_OPTIONS((double, learning_rate, 0.001),
                 (double, beta_1, 0.9),
                 (double, beta_2, 0.999),
                 (double, epsilon, 1e-7),
                 (double, decay, 0.0))
};

/// Adam (Kingma & Ba), Keras's formulation with the bias correction folded into the rate:
///   t = iterations + 1;  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
///   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;  p -= lr_t m / (sqrt(v) + eps)
template <class T, class D = Cpu>
class Adam : public Optimizer<T, D> {
 public:
  explicit Adam(double lr = 0.001, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-7,
                double decay = 0.0)
      : Adam(AdamOptions().learning_rate(lr).beta_1(beta1).beta_2(beta2).epsilon(epsilon).decay(decay)) {}
  explicit Adam(const AdamOptions& o) : Optimizer<T, D>(o.learning_rate(), o.decay()), opt_(o) {
    if (!(o.beta_1() >= 0 && o.beta_1() < 1) || !(o.beta_2() >= 0 && o.beta_2() < 1))
      throw ArgumentError("Adam: beta1 and beta2 must be in [0, 1)");
    if (!(o.epsilon() > 0)) throw ArgumentError("Adam: epsilon must be positive");
    this->slots_.push_back({"m", {}});
    this->slots_.push_back({"v", {}});
  }
  std::string type_name() const override { return "Adam"; }
  Config config() const override { return options_to_config(opt_); }

 protected:
  void update(T lr) override {
    const double t = static_cast<double>(this->iterations_ + 1);
    const double lr_t = lr * std::sqrt(1.0 - std::pow(opt_.beta_2(), t)) / (1.0 - std::pow(opt_.beta_1(), t));
    Ops<T, D>::adam_update(this->params_, this->grads_, this->slot(0), this->slot(1), static_cast<T>(lr_t),
                           static_cast<T>(opt_.beta_1()), static_cast<T>(opt_.beta_2()), static_cast<T>(opt_.epsilon()));
  }

 private:
  AdamOptions opt_;
};

/// Options of RMSprop (Keras's names).
struct RMSpropOptions {
  FASTNN_OPTIONS((double, learning_rate, 0.001),
                 (double, rho, 0.9),
                 (double, epsilon, 1e-7),
                 (double, decay, 0.0))
};

/// RMSprop (Tieleman & Hinton), Keras's formulation:
///   a = rho a + (1 - rho) g^2;  p -= lr g / (sqrt(a) + eps)
template <class T, class D = Cpu>
class RMSprop : public Optimizer<T, D> {
 public:
  explicit RMSprop(double lr = 0.001, double rho = 0.9, double epsilon = 1e-7, double decay = 0.0)
      : RMSprop(RMSpropOptions().learning_rate(lr).rho(rho).epsilon(epsilon).decay(decay)) {}
  explicit RMSprop(const RMSpropOptions& o) : Optimizer<T, D>(o.learning_rate(), o.decay()), opt_(o) {
    if (!(o.rho() >= 0 && o.rho() < 1)) throw ArgumentError("RMSprop: rho must be in [0, 1)");
    if (!(o.epsilon() > 0)) throw ArgumentError("RMSprop: epsilon must be positive");
    this->slots_.push_back({"accumulator", {}});
  }
  std::string type_name() const override { return "RMSprop"; }
  Config config() const override { return options_to_config(opt_); }
  bool capturable() const override { return opt_.decay() == 0; }

 protected:
  void update(T lr) override {
    Ops<T, D>::rmsprop_update(this->params_, this->grads_, this->slot(0), lr, static_cast<T>(opt_.rho()),
                              static_cast<T>(opt_.epsilon()));
  }

 private:
  RMSpropOptions opt_;
};

}  // namespace fastnn
