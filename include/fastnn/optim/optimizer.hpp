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

  /// Binds the flat parameter and gradient buffers and allocates zeroed state. `layout` (empty: everything is
  /// trained) lists each parameter's range: a range with trainable = false gets no update and no state, so each
  /// state buffer holds the trainable elements only, in order (shaped like `params` when all are trainable).
  void attach(const Tn& params, const Tn& grads, std::vector<ParamRange> layout = {}) {
    params_ = params;
    grads_ = grads;
    runs_.clear();
    Index trained = 0;
    for (const auto& r : layout) {
      if (r.offset < 0 || r.size < 0 || r.offset + r.size > params.size())
        throw ArgumentError(type_name() + ": attach: parameter '" + r.name + "' lies outside the flat buffer");
      if (!r.trainable || r.size == 0) continue;
      if (!runs_.empty() && runs_.back().offset + runs_.back().size == r.offset) runs_.back().size += r.size;
      else runs_.push_back({r.offset, r.size, trained});
      trained += r.size;
    }
    const bool all = layout.empty() || trained == params.size();
    if (all) runs_.assign(1, {0, params.size(), 0});
    for (auto& s : slots_) {
      if (all) s.second.resize(params.shape());
      else s.second.resize(Shape{trained});
      s.second.set_zero();
    }
  }
  /// One update from the current gradients (the trainable ranges only).
  void step() {
    if (params_.empty() && runs_.empty()) throw ArgumentError(type_name() + ": step() before attach()");
    const T lr = current_lr();
    if (runs_.size() == 1 && runs_[0].size == params_.size()) {
      update(lr, params_, grads_, slots_);
    } else {
      for (const auto& r : runs_) {
        Tn p = params_.view(r.offset, Shape{r.size}), g = grads_.view(r.offset, Shape{r.size});
        std::vector<std::pair<std::string, Tn>> s;
        for (auto& sl : slots_) s.push_back({sl.first, sl.second.view(r.state_offset, Shape{r.size})});
        update(lr, p, g, s);
      }
    }
    ++iterations_;
  }
  /// The learning rate of the next step, after decay.
  T current_lr() const {
    return static_cast<T>(lr_ / (1.0 + decay_ * static_cast<double>(iterations_)));
  }
  /// The base rate (before the time-based decay).
  double learning_rate() const { return lr_; }
  /// Replaces the base rate; ArgumentError naming the value when it is negative, NaN or infinite (nothing changes).
  void set_learning_rate(double lr) {
    if (!(lr >= 0) || !std::isfinite(lr))
      throw ArgumentError(type_name() + ": learning_rate must be finite and >= 0, got " + format_number(lr));
    lr_ = lr;
  }
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
  using Slots = std::vector<std::pair<std::string, Tn>>;
  /// Updates parameters `p` from gradients `g` with state `s` (views of one contiguous trainable run).
  virtual void update(T lr, Tn& p, Tn& g, Slots& s) = 0;
  struct Run {
    Index offset, size, state_offset;
  };
  std::vector<Run> runs_;

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
  void update(T lr, Tensor<T, D>& p, Tensor<T, D>& g, typename Optimizer<T, D>::Slots& s) override {
    Ops<T, D>::sgd_update(p, g, s[0].second, lr, static_cast<T>(opt_.momentum()), opt_.nesterov());
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
  void update(T lr, Tensor<T, D>& p, Tensor<T, D>& g, typename Optimizer<T, D>::Slots& s) override {
    const double t = static_cast<double>(this->iterations_ + 1);
    const double lr_t = lr * std::sqrt(1.0 - std::pow(opt_.beta_2(), t)) / (1.0 - std::pow(opt_.beta_1(), t));
    Ops<T, D>::adam_update(p, g, s[0].second, s[1].second, static_cast<T>(lr_t),
                           static_cast<T>(opt_.beta_1()), static_cast<T>(opt_.beta_2()),
                           static_cast<T>(opt_.epsilon()));
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
  void update(T lr, Tensor<T, D>& p, Tensor<T, D>& g, typename Optimizer<T, D>::Slots& s) override {
    Ops<T, D>::rmsprop_update(p, g, s[0].second, lr, static_cast<T>(opt_.rho()),
                              static_cast<T>(opt_.epsilon()));
  }

 private:
  RMSpropOptions opt_;
};

}  // namespace fastnn
