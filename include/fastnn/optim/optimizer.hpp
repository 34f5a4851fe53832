#pragma once
/// \file optimizer.hpp
/// Optimizers update a model's parameters in one fused pass over its contiguous parameter
/// buffer (see core/parameter.hpp), after gradient clipping and weight decay (see Optimizer).
/// Keras's formulas, schedules (optim/schedules.hpp) and its time-based `decay`:
/// lr_t = lr / (1 + decay * iterations).

#include <algorithm>
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
#include "fastnn/core/parse.hpp"
#include "fastnn/optim/schedules.hpp"
#include "fastnn/backend/cpu/ops.hpp"

namespace fastnn {

namespace detail {

/// The options every optimizer takes besides its own (Keras's names; 0 or "" = off).
struct CommonOptimizerOptions {
  double learning_rate = 0.01, decay = 0, weight_decay = 0, clipnorm = 0, clipvalue = 0, global_clipnorm = 0;
  std::string exclude_from_weight_decay;
  bool decoupled = false;  ///< weight decay applied to the weights (AdamW), not added to the gradient
};
template <class O>
CommonOptimizerOptions common_options(const O& o, bool decoupled) {
  CommonOptimizerOptions c;
  c.learning_rate = o.learning_rate();
  c.decay = o.decay();
  c.weight_decay = o.weight_decay();
  c.clipnorm = o.clipnorm();
  c.clipvalue = o.clipvalue();
  c.global_clipnorm = o.global_clipnorm();
  c.exclude_from_weight_decay = o.exclude_from_weight_decay();
  c.decoupled = decoupled;
  return c;
}
/// The options that a config may omit (checkpoints written before they existed): their defaults.
inline bool optional_optimizer_option(const std::string& key) {
  return key == "weight_decay" || key == "clipnorm" || key == "clipvalue" || key == "global_clipnorm" ||
         key == "exclude_from_weight_decay";
}
/// `c` without the optional options that equal those of `defaults`.
inline Config drop_default_optional(Config c, const Config& defaults) {
  for (auto it = c.begin(); it != c.end();) {
    auto d = defaults.find(it->first);
    if (optional_optimizer_option(it->first) && d != defaults.end() && d->second == it->second) it = c.erase(it);
    else ++it;
  }
  return c;
}
/// The comma-separated name fragments of exclude_from_weight_decay.
inline std::vector<std::string> split_patterns(const std::string& s) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= s.size()) {
    const std::size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at) out.push_back(s.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

}  // namespace detail

/// The base of every optimizer. A step runs, over the trainable ranges of the flat gradient and parameter
/// buffers (core/parameter.hpp):
///  1. gradient clipping, Keras's options (at most one): `clipvalue` clamps every element to [-c, c];
///     `clipnorm` scales each parameter tensor by c / max(||g||, c); `global_clipnorm` scales all of them by
///     c / max(||g||_all, c). The norms are summed in double on the device; a non-finite norm is a
///     NonFiniteError (on a device that defers the check, reported with the step's batch), and nothing is
///     updated;
///  2. weight decay: coupled L2 (`g += weight_decay * p`, as torch.optim.SGD / Adam / RMSprop) or, for AdamW,
///     decoupled (`p *= 1 - lr * weight_decay` before the update, as torch.optim.AdamW), skipping the
///     parameters whose names contain one of the fragments of `exclude_from_weight_decay` (comma-separated,
///     Keras's exclude_from_weight_decay(var_names));
///  3. the optimizer's own update with the step's learning rate: the schedule's value at iterations() if one is
///     set (optim/schedules.hpp), else learning_rate / (1 + decay * iterations) (Keras's time-based `decay`,
///     the same as InverseTimeDecay(learning_rate, 1, decay)).
/// With data-parallel training the step runs on the summed gradients, so clipping and decay see what one
/// process would.
///
/// The scalars that change from step to step (the update's rate, Adam's bias-corrected rate, AdamW's decay factor)
/// are computed on the host and written into a small buffer on the optimizer's device (scalars()) before the
/// step; the update kernels read them from there. A device that captures a step once and replays it (a CUDA
/// graph, model/cuda/step_runner.hpp) calls load_scalars() before each replay, so no rate is baked into the
/// captured kernels: a changed rate, a schedule, the time-based decay and Adam's bias correction all reach a
/// replayed step.
template <class T, class D = Cpu>
class Optimizer {
 public:
  using Tn = Tensor<T, D>;
  virtual ~Optimizer() = default;
  /// "SGD", "Adam", "AdamW", "RMSprop".
  virtual std::string type_name() const = 0;
  /// Hyper-parameters as text (checkpoint metadata, device transfer), Keras's names. learning_rate is the
  /// current base rate; clipping and weight-decay options appear when they differ from their defaults.
  virtual Config config() const = 0;
  /// Whether a step's update reads every per-step scalar from scalars(), so that a device may capture it once and
  /// replay it (a CUDA graph) after load_scalars(): every built-in optimizer, with any rate, schedule or decay.
  bool capturable() const { return own_capturable(); }

  /// Binds the flat parameter and gradient buffers and allocates zeroed state. `layout` (empty: everything is
  /// trained) lists each parameter's range: a range with trainable = false gets no update and no state, so each
  /// state buffer holds the trainable elements only, in order (shaped like `params` when all are trainable).
  void attach(const Tn& params, const Tn& grads, std::vector<ParamRange> layout = {}) {
    params_ = params;
    grads_ = grads;
    runs_.clear();
    tensors_.clear();
    Index trained = 0;
    for (const auto& r : layout) {
      if (r.offset < 0 || r.size < 0 || r.offset + r.size > params.size())
        throw ArgumentError(type_name() + ": attach: parameter '" + r.name + "' lies outside the flat buffer");
      if (!r.trainable || r.size == 0) continue;
      tensors_.push_back({r.offset, r.size, !excluded(r.name)});
      if (!runs_.empty() && runs_.back().offset + runs_.back().size == r.offset) runs_.back().size += r.size;
      else runs_.push_back({r.offset, r.size, trained});
      trained += r.size;
    }
    const bool all = layout.empty() || trained == params.size();
    if (all) runs_.assign(1, {0, params.size(), 0});
    if (layout.empty()) tensors_.assign(1, {0, params.size(), true});
    for (auto& s : slots_) {
      if (all) s.second.resize(params.shape());
      else s.second.resize(Shape{trained});
      s.second.set_zero();
    }
    norms_.resize(Shape{static_cast<Index>(tensors_.size()) + 1});
    scalars_.resize(Shape{kScalars});
    Ops<T, D>::fill(scalars_, T(0));
  }
  /// One update from the current gradients (the trainable ranges only); `batch` names the batch in the error of
  /// a non-finite gradient norm.
  void step(long batch = 0) {
    if (params_.empty() && runs_.empty()) throw ArgumentError(type_name() + ": step() before attach()");
    if (!external_scalars_) load_scalars();
    clip_gradients(batch);
    decay_weights();
    const Tn rate = scalars_.view(kRate, Shape{1});
    if (runs_.size() == 1 && runs_[0].size == params_.size()) {
      update(rate, params_, grads_, slots_);
    } else {
      for (const auto& r : runs_) {
        Tn p = params_.view(r.offset, Shape{r.size}), g = grads_.view(r.offset, Shape{r.size});
        std::vector<std::pair<std::string, Tn>> s;
        for (auto& sl : slots_) s.push_back({sl.first, sl.second.view(r.state_offset, Shape{r.size})});
        update(rate, p, g, s);
      }
    }
    ++iterations_;
  }
  /// Writes the next step's scalars (at iterations()) into scalars(): [the update's rate, the decoupled decay
  /// factor 1 - lr * weight_decay]. step() calls it itself unless set_external_scalars(true).
  void load_scalars() {
    if (scalars_.size() != kScalars) throw ArgumentError(type_name() + ": load_scalars() before attach()");
    const double lr = current_rate();
    Tn rate = scalars_.view(kRate, Shape{1}), factor = scalars_.view(kDecayFactor, Shape{1});
    Ops<T, D>::fill(rate, static_cast<T>(update_rate(static_cast<T>(lr))));
    Ops<T, D>::fill(factor, static_cast<T>(1.0 - lr * common_.weight_decay));
  }
  /// While on, step() leaves scalars() as the caller wrote them (load_scalars() before a captured step and
  /// before each replay of it), so that the capture records no host value.
  void set_external_scalars(bool on) { external_scalars_ = on; }
  /// The per-step scalars on the optimizer's device (see load_scalars()).
  const Tn& scalars() const { return scalars_; }
  /// The learning rate of the next step (after the schedule or the time-based decay).
  T current_lr() const { return static_cast<T>(current_rate()); }
  /// The rate of the next step in double.
  double current_rate() const {
    if (schedule_) return (*schedule_)(iterations_);
    return lr_ / (1.0 + decay_ * static_cast<double>(iterations_));
  }
  /// The base rate (before the time-based decay), or the schedule's value at the next step.
  double learning_rate() const { return schedule_ ? (*schedule_)(iterations_) : lr_; }
  /// Replaces the base rate and drops any schedule; ArgumentError naming the value when it is negative, NaN or
  /// infinite (nothing changes).
  void set_learning_rate(double lr) {
    if (!(lr >= 0) || !std::isfinite(lr))
      throw ArgumentError(type_name() + ": learning_rate must be finite and >= 0, got " + format_number(lr));
    lr_ = lr;
    schedule_.reset();
  }
  /// Follows `schedule` from now on (evaluated at iterations()); Keras's `learning_rate=schedule`.
  void set_learning_rate(const LearningRateSchedule& schedule) { schedule_ = schedule.clone(); }
  void set_learning_rate(std::shared_ptr<const LearningRateSchedule> schedule) {
    if (!schedule) throw ArgumentError(type_name() + ": set_learning_rate: null schedule");
    schedule_ = std::move(schedule);
  }
  /// The schedule, or null for a constant (or time-decayed) rate.
  const std::shared_ptr<const LearningRateSchedule>& schedule() const { return schedule_; }
  /// The base rate as set (without the schedule).
  double base_learning_rate() const { return lr_; }
  double decay() const { return decay_; }
  double weight_decay() const { return common_.weight_decay; }
  std::int64_t iterations() const { return iterations_; }
  void set_iterations(std::int64_t n) { iterations_ = n; }
  /// Named state buffers ("momentum", "m", "v", ...), each shaped like the flat parameters.
  std::vector<std::pair<std::string, Tn>>& state() { return slots_; }

 protected:
  /// Checks the common options: ArgumentError naming the option and the value.
  explicit Optimizer(const detail::CommonOptimizerOptions& c) : lr_(c.learning_rate), decay_(c.decay), common_(c) {
    if (!(c.learning_rate > 0) || !std::isfinite(c.learning_rate))
      throw ArgumentError("optimizer: learning_rate must be positive and finite, got " +
                          format_number(c.learning_rate));
    auto non_negative = [](const char* name, double v) {
      if (!(v >= 0) || !std::isfinite(v))
        throw ArgumentError(std::string("optimizer: ") + name + " must be finite and >= 0, got " + format_number(v));
    };
    non_negative("decay", c.decay);
    non_negative("weight_decay", c.weight_decay);
    non_negative("clipnorm", c.clipnorm);
    non_negative("clipvalue", c.clipvalue);
    non_negative("global_clipnorm", c.global_clipnorm);
    if ((c.clipnorm > 0) + (c.clipvalue > 0) + (c.global_clipnorm > 0) > 1)
      throw ArgumentError("optimizer: only one of clipnorm, clipvalue and global_clipnorm can be set, got clipnorm " +
                          format_number(c.clipnorm) + ", clipvalue " + format_number(c.clipvalue) +
                          ", global_clipnorm " + format_number(c.global_clipnorm));
    patterns_ = detail::split_patterns(c.exclude_from_weight_decay);
  }
  using Slots = std::vector<std::pair<std::string, Tn>>;
  /// Updates parameters `p` from gradients `g` with state `s` (views of one contiguous trainable run); `rate` is a
  /// one-element tensor on the device holding update_rate() of the step's learning rate.
  virtual void update(const Tn& rate, Tn& p, Tn& g, Slots& s) = 0;
  /// The rate the update kernels read for learning rate `lr` at the current iterations() (Adam folds its bias
  /// correction in).
  virtual double update_rate(T lr) const { return lr; }
  /// Whether the update reads every per-step scalar from its `rate` argument (a subclass that computes one on the
  /// host inside update() must return false: its steps are never captured).
  virtual bool own_capturable() const { return false; }
  /// config() of options struct `o`: the current base rate, the optional options only when not their defaults.
  template <class O>
  Config make_config(const O& o) const {
    Config c = options_to_config(o);
    c["learning_rate"] = format_number(lr_);
    return detail::drop_default_optional(std::move(c), options_to_config(O()));
  }
  struct Run {
    Index offset, size, state_offset;
  };
  std::vector<Run> runs_;

  double lr_, decay_;
  std::int64_t iterations_ = 0;
  Tn params_, grads_;
  std::vector<std::pair<std::string, Tn>> slots_;

 private:
  struct TensorRange {
    Index offset, size;
    bool decayed;
  };
  bool excluded(const std::string& name) const {
    for (const auto& p : patterns_)
      if (name.find(p) != std::string::npos) return true;
    return false;
  }
  Tn grad_view(const TensorRange& r) { return grads_.view(r.offset, Shape{r.size}); }
  Tn param_view(const TensorRange& r) { return params_.view(r.offset, Shape{r.size}); }

  void clip_gradients(long batch) {
    using O = Ops<T, D>;
    if (common_.clipvalue > 0) {
      for (const auto& r : tensors_) {
        Tn g = grad_view(r);
        O::clip_by_value(g, static_cast<T>(common_.clipvalue));
      }
      return;
    }
    const bool global = common_.global_clipnorm > 0;
    if (!global && !(common_.clipnorm > 0)) return;
    Ops<double, D>::fill(norms_, 0.0);
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      Tn g = grad_view(tensors_[i]);
      O::sum_squares(g, norms_, global ? 0 : static_cast<Index>(i));
    }
    // On a device that checks on the host, nothing changes before every norm is known to be finite.
    const char* option = global ? "global_clipnorm" : "clipnorm";
    const Index checked = global ? 1 : static_cast<Index>(tensors_.size());
    O::check_norms_finite(norms_, checked, option, batch);
    const T c = static_cast<T>(global ? common_.global_clipnorm : common_.clipnorm);
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      Tn g = grad_view(tensors_[i]);
      O::clip_by_norm(g, norms_, global ? 0 : static_cast<Index>(i), c, batch);
    }
  }
  void decay_weights() {
    if (!(common_.weight_decay > 0)) return;
    const Tn factor = scalars_.view(kDecayFactor, Shape{1});
    for (const auto& r : tensors_) {
      if (!r.decayed) continue;
      Tn p = param_view(r);
      if (common_.decoupled) {
        Ops<T, D>::scale(p, factor);
      } else {
        Tn g = grad_view(r);
        Ops<T, D>::axpy(static_cast<T>(common_.weight_decay), p, g);
      }
    }
  }

  detail::CommonOptimizerOptions common_;
  std::vector<std::string> patterns_;
  std::vector<TensorRange> tensors_;
  Tensor<double, D> norms_;
  static constexpr Index kRate = 0, kDecayFactor = 1, kScalars = 2;
  Tn scalars_;  ///< [update rate, decoupled decay factor] of the next step, on the device
  bool external_scalars_ = false;
  std::shared_ptr<const LearningRateSchedule> schedule_;
};

// The options every optimizer has besides its own, Keras's names: (double, weight_decay, 0.0),
// (double, clipnorm, 0.0), (double, clipvalue, 0.0), (double, global_clipnorm, 0.0),
// (std::string, exclude_from_weight_decay, "") -- see Optimizer.
#define FASTNN_COMMON_OPTIMIZER_OPTIONS(wd)                                                  \
  (double, weight_decay, wd), (double, clipnorm, 0.0), (double, clipvalue, 0.0),             \
      (double, global_clipnorm, 0.0), (std::string, exclude_from_weight_decay, std::string())

/// Options of SGD (Keras's names): `SGDOptions().learning_rate(0.5).momentum(0.9).nesterov(true)`.
struct SGDOptions {
  FASTNN_OPTIONS((double, learning_rate, 0.01),
                 (double, momentum, 0.0),
                 (bool, nesterov, false),
                 (double, decay, 0.0),
                 FASTNN_COMMON_OPTIMIZER_OPTIONS(0.0))
};

/// Stochastic gradient descent with optional (Nesterov) momentum, Keras's formulation:
///   v = momentum * v - lr * g
///   p = p + momentum * v - lr * g   (nesterov)     p = p + v   (classical)
/// weight_decay is coupled L2 (g += weight_decay * p), as torch.optim.SGD's; with a constant rate the
/// trajectory is torch's (its buffer b is v / -lr).
template <class T, class D = Cpu>
class SGD : public Optimizer<T, D> {
 public:
  explicit SGD(double lr = 0.01, double momentum = 0.0, bool nesterov = false, double decay = 0.0)
      : SGD(SGDOptions().learning_rate(lr).momentum(momentum).nesterov(nesterov).decay(decay)) {}
  explicit SGD(const SGDOptions& o) : Optimizer<T, D>(detail::common_options(o, false)), opt_(o) {
    if (!(o.momentum() >= 0 && o.momentum() < 1))
      throw ArgumentError("SGD: momentum must be in [0, 1), got " + format_number(o.momentum()));
    this->slots_.push_back({"momentum", {}});
  }
  std::string type_name() const override { return "SGD"; }
  Config config() const override { return this->make_config(opt_); }

 protected:
  bool own_capturable() const override { return true; }
  void update(const Tensor<T, D>& rate, Tensor<T, D>& p, Tensor<T, D>& g,
              typename Optimizer<T, D>::Slots& s) override {
    Ops<T, D>::sgd_update(p, g, s[0].second, rate, static_cast<T>(opt_.momentum()), opt_.nesterov());
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
                 (double, decay, 0.0),
                 FASTNN_COMMON_OPTIMIZER_OPTIONS(0.0))
};
/// Options of AdamW (Keras's names and defaults; weight_decay 0.004).
struct AdamWOptions {
  FASTNN_OPTIONS((double, learning_rate, 0.001),
                 (double, beta_1, 0.9),
                 (double, beta_2, 0.999),
                 (double, epsilon, 1e-7),
                 (double, decay, 0.0),
                 FASTNN_COMMON_OPTIMIZER_OPTIONS(0.004))
};

namespace detail {
/// Adam's bias-corrected rate lr * sqrt(1 - beta2^t) / (1 - beta1^t) for step t = iterations + 1.
template <class T, class O>
double adam_rate(T lr, std::int64_t iterations, const O& o) {
  const double t = static_cast<double>(iterations + 1);
  return lr * std::sqrt(1.0 - std::pow(o.beta_2(), t)) / (1.0 - std::pow(o.beta_1(), t));
}
template <class T, class D, class O>
void adam_step(const Tensor<T, D>& rate, const O& o, Tensor<T, D>& p, Tensor<T, D>& g,
               std::vector<std::pair<std::string, Tensor<T, D>>>& s) {
  Ops<T, D>::adam_update(p, g, s[0].second, s[1].second, rate, static_cast<T>(o.beta_1()),
                         static_cast<T>(o.beta_2()), static_cast<T>(o.epsilon()));
}
template <class O>
void check_adam(const O& o, const char* name) {
  if (!(o.beta_1() >= 0 && o.beta_1() < 1) || !(o.beta_2() >= 0 && o.beta_2() < 1))
    throw ArgumentError(std::string(name) + ": beta_1 and beta_2 must be in [0, 1), got " + format_number(o.beta_1()) +
                        " and " + format_number(o.beta_2()));
  if (!(o.epsilon() > 0)) throw ArgumentError(std::string(name) + ": epsilon must be positive");
}
}  // namespace detail

/// Adam (Kingma & Ba), Keras's formulation with the bias correction folded into the rate:
///   t = iterations + 1;  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
///   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;  p -= lr_t m / (sqrt(v) + eps)
/// (torch.optim.Adam adds eps to sqrt(v / (1 - beta2^t)) instead; the two agree where eps << sqrt(v)).
/// weight_decay is coupled L2, as torch.optim.Adam's.
template <class T, class D = Cpu>
class Adam : public Optimizer<T, D> {
 public:
  explicit Adam(double lr = 0.001, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-7,
                double decay = 0.0)
      : Adam(AdamOptions().learning_rate(lr).beta_1(beta1).beta_2(beta2).epsilon(epsilon).decay(decay)) {}
  explicit Adam(const AdamOptions& o) : Optimizer<T, D>(detail::common_options(o, false)), opt_(o) {
    detail::check_adam(o, "Adam");
    this->slots_.push_back({"m", {}});
    this->slots_.push_back({"v", {}});
  }
  std::string type_name() const override { return "Adam"; }
  Config config() const override { return this->make_config(opt_); }

 protected:
  bool own_capturable() const override { return true; }
  double update_rate(T lr) const override { return detail::adam_rate(lr, this->iterations_, opt_); }
  void update(const Tensor<T, D>& rate, Tensor<T, D>& p, Tensor<T, D>& g,
              typename Optimizer<T, D>::Slots& s) override {
    detail::adam_step(rate, opt_, p, g, s);
  }

 private:
  AdamOptions opt_;
};

/// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, p *= 1 - lr * weight_decay before the Adam
/// update (lr the step's scheduled rate), as torch.optim.AdamW and Keras's AdamW.
template <class T, class D = Cpu>
class AdamW : public Optimizer<T, D> {
 public:
  explicit AdamW(double lr = 0.001, double weight_decay = 0.004)
      : AdamW(AdamWOptions().learning_rate(lr).weight_decay(weight_decay)) {}
  explicit AdamW(const AdamWOptions& o) : Optimizer<T, D>(detail::common_options(o, true)), opt_(o) {
    detail::check_adam(o, "AdamW");
    this->slots_.push_back({"m", {}});
    this->slots_.push_back({"v", {}});
  }
  std::string type_name() const override { return "AdamW"; }
  Config config() const override { return this->make_config(opt_); }

 protected:
  bool own_capturable() const override { return true; }
  double update_rate(T lr) const override { return detail::adam_rate(lr, this->iterations_, opt_); }
  void update(const Tensor<T, D>& rate, Tensor<T, D>& p, Tensor<T, D>& g,
              typename Optimizer<T, D>::Slots& s) override {
    detail::adam_step(rate, opt_, p, g, s);
  }

 private:
  AdamWOptions opt_;
};

/// Options of RMSprop (Keras's names).
struct RMSpropOptions {
  FASTNN_OPTIONS((double, learning_rate, 0.001),
                 (double, rho, 0.9),
                 (double, epsilon, 1e-7),
                 (double, decay, 0.0),
                 FASTNN_COMMON_OPTIMIZER_OPTIONS(0.0))
};

/// RMSprop (Tieleman & Hinton), Keras's formulation:
///   a = rho a + (1 - rho) g^2;  p -= lr g / (sqrt(a) + eps)
/// weight_decay is coupled L2.
template <class T, class D = Cpu>
class RMSprop : public Optimizer<T, D> {
 public:
  explicit RMSprop(double lr = 0.001, double rho = 0.9, double epsilon = 1e-7, double decay = 0.0)
      : RMSprop(RMSpropOptions().learning_rate(lr).rho(rho).epsilon(epsilon).decay(decay)) {}
  explicit RMSprop(const RMSpropOptions& o) : Optimizer<T, D>(detail::common_options(o, false)), opt_(o) {
    if (!(o.rho() >= 0 && o.rho() < 1))
      throw ArgumentError("RMSprop: rho must be in [0, 1), got " + format_number(o.rho()));
    if (!(o.epsilon() > 0)) throw ArgumentError("RMSprop: epsilon must be positive");
    this->slots_.push_back({"accumulator", {}});
  }
  std::string type_name() const override { return "RMSprop"; }
  Config config() const override { return this->make_config(opt_); }

 protected:
  bool own_capturable() const override { return true; }
  void update(const Tensor<T, D>& rate, Tensor<T, D>& p, Tensor<T, D>& g,
              typename Optimizer<T, D>::Slots& s) override {
    Ops<T, D>::rmsprop_update(p, g, s[0].second, rate, static_cast<T>(opt_.rho()), static_cast<T>(opt_.epsilon()));
  }

 private:
  RMSpropOptions opt_;
};

}  // namespace fastnn
