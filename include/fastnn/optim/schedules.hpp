#pragma once
/// \file schedules.hpp
/// Learning-rate schedules with Keras's names and formulas, evaluated at the optimizer's step
/// (the number of updates done so far, 0 for the first):
///
///   auto opt = std::make_unique<AdamW<float>>(AdamWOptions().weight_decay(0.01));
///   opt->set_learning_rate(CosineDecay(0.0, 1000, 0.0, 1e-3, 100));   // 100 warmup steps to 1e-3
///
/// A schedule is runtime state of the optimizer: checkpoints record its type and config() and
/// restore it (make_schedule), and replacing it is never a configuration mismatch.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/parse.hpp"

namespace fastnn {

/// A learning rate as a function of the step.
class LearningRateSchedule {
 public:
  virtual ~LearningRateSchedule() = default;
  /// The rate of the update after `step` updates.
  virtual double operator()(std::int64_t step) const = 0;
  /// "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay", "InverseTimeDecay".
  virtual std::string type_name() const = 0;
  /// Its arguments as text, Keras's names.
  virtual Config config() const = 0;
  virtual std::unique_ptr<LearningRateSchedule> clone() const = 0;
};

namespace detail {

inline void check_schedule_number(const char* schedule, const char* name, double v, bool positive) {
  if (!std::isfinite(v) || (positive ? !(v > 0) : !(v >= 0)))
    throw ArgumentError(std::string(schedule) + ": " + name + " must be finite and " + (positive ? "> 0" : ">= 0") +
                        ", got " + format_number(v));
}

/// "[a, b, c]" with numbers written as format_number does, and back.
inline std::string number_list(const std::vector<double>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + format_number(v[i]);
  return s + "]";
}
inline std::vector<double> parse_number_list(const std::string& text, const std::string& where) {
  if (text.size() < 2 || text.front() != '[' || text.back() != ']')
    throw ArgumentError(where + ": expected a list [a,b,...], got '" + text.substr(0, 64) + "'");
  std::vector<double> out;
  const std::string body = text.substr(1, text.size() - 2);
  std::size_t at = 0;
  while (at < body.size()) {
    const std::size_t comma = std::min(body.find(',', at), body.size());
    double v = 0;
    if (!parse_number(body.substr(at, comma - at), v))
      throw ArgumentError(where + ": '" + body.substr(at, comma - at).substr(0, 64) + "' is not a number");
    out.push_back(v);
    at = comma + 1;
  }
  return out;
}

/// The value of `key` in `c` as a number; ArgumentError naming it when missing or malformed.
inline double config_number(const Config& c, const std::string& key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end()) throw ArgumentError(where + ": configuration lacks '" + key + "'");
  double v = 0;
  if (!parse_number(it->second, v))
    throw ArgumentError(where + ": '" + key + "' must be a finite number, got '" + it->second.substr(0, 64) + "'");
  return v;
}
inline bool config_bool(const Config& c, const std::string& key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end()) throw ArgumentError(where + ": configuration lacks '" + key + "'");
  if (it->second != "true" && it->second != "false")
    throw ArgumentError(where + ": '" + key + "' must be true or false, got '" + it->second.substr(0, 64) + "'");
  return it->second == "true";
}

}  // namespace detail

namespace detail {

/// The arguments and the progress of ExponentialDecay and InverseTimeDecay: step / decay_steps, floored when
/// `staircase`.
class StepDecaySchedule : public LearningRateSchedule {
 public:
  Config config() const override {
    return {{"initial_learning_rate", format_number(lr0_)},
            {"decay_steps", format_number(steps_)},
            {"decay_rate", format_number(rate_)},
            {"staircase", staircase_ ? "true" : "false"}};
  }

 protected:
  StepDecaySchedule(const char* name, double initial_learning_rate, double decay_steps, double decay_rate,
                    bool staircase)
      : lr0_(initial_learning_rate), steps_(decay_steps), rate_(decay_rate), staircase_(staircase) {
    check_schedule_number(name, "initial_learning_rate", lr0_, false);
    check_schedule_number(name, "decay_steps", steps_, true);
    check_schedule_number(name, "decay_rate", rate_, false);
  }
  double progress(std::int64_t step) const {
    const double p = static_cast<double>(step) / steps_;
    return staircase_ ? std::floor(p) : p;
  }
  double lr0_, steps_, rate_;
  bool staircase_;
};

}  // namespace detail

/// initial_learning_rate * decay_rate ^ (step / decay_steps), the exponent floored when `staircase`.
class ExponentialDecay : public detail::StepDecaySchedule {
 public:
  ExponentialDecay(double initial_learning_rate, double decay_steps, double decay_rate, bool staircase = false)
      : StepDecaySchedule("ExponentialDecay", initial_learning_rate, decay_steps, decay_rate, staircase) {}
  double operator()(std::int64_t step) const override { return lr0_ * std::pow(rate_, progress(step)); }
  std::string type_name() const override { return "ExponentialDecay"; }
  std::unique_ptr<LearningRateSchedule> clone() const override { return std::make_unique<ExponentialDecay>(*this); }
};

/// values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <= boundaries[i], and
/// values.back() after the last boundary. The boundaries increase strictly; there is one value more.
class PiecewiseConstantDecay : public LearningRateSchedule {
 public:
  PiecewiseConstantDecay(std::vector<double> boundaries, std::vector<double> values)
      : bounds_(std::move(boundaries)), values_(std::move(values)) {
    if (values_.size() != bounds_.size() + 1)
      throw ArgumentError("PiecewiseConstantDecay: values must have one element more than boundaries (" +
                          std::to_string(bounds_.size()) + " boundaries, " + std::to_string(values_.size()) +
                          " values)");
    for (std::size_t i = 0; i < bounds_.size(); ++i) {
      if (!std::isfinite(bounds_[i]))
        throw ArgumentError("PiecewiseConstantDecay: boundaries[" + std::to_string(i) + "] is " +
                            format_number(bounds_[i]));
      if (i > 0 && !(bounds_[i] > bounds_[i - 1]))
        throw ArgumentError("PiecewiseConstantDecay: boundaries must increase, got " + format_number(bounds_[i - 1]) +
                            " then " + format_number(bounds_[i]) + " at index " + std::to_string(i));
    }
    for (std::size_t i = 0; i < values_.size(); ++i)
      detail::check_schedule_number("PiecewiseConstantDecay", ("values[" + std::to_string(i) + "]").c_str(), values_[i],
                                    false);
  }
  double operator()(std::int64_t step) const override {
    const double s = static_cast<double>(step);
    for (std::size_t i = 0; i < bounds_.size(); ++i)
      if (s <= bounds_[i]) return values_[i];
    return values_.back();
  }
  std::string type_name() const override { return "PiecewiseConstantDecay"; }
  Config config() const override {
    return {{"boundaries", detail::number_list(bounds_)}, {"values", detail::number_list(values_)}};
  }
  std::unique_ptr<LearningRateSchedule> clone() const override {
    return std::make_unique<PiecewiseConstantDecay>(*this);
  }

 private:
  std::vector<double> bounds_, values_;
};

/// Keras's CosineDecay. Without warmup (warmup_steps = 0): lr0 * ((1 - alpha) c + alpha) with
/// c = 0.5 (1 + cos(pi * min(step, decay_steps) / decay_steps)). With warmup_steps > 0 the rate first goes
/// linearly from initial_learning_rate to warmup_target over warmup_steps, then decays from warmup_target as
/// above over the next decay_steps.
class CosineDecay : public LearningRateSchedule {
 public:
  CosineDecay(double initial_learning_rate, double decay_steps, double alpha = 0.0, double warmup_target = 0.0,
              double warmup_steps = 0.0)
      : lr0_(initial_learning_rate), steps_(decay_steps), alpha_(alpha), target_(warmup_target), warmup_(warmup_steps) {
    detail::check_schedule_number("CosineDecay", "initial_learning_rate", lr0_, false);
    detail::check_schedule_number("CosineDecay", "decay_steps", steps_, true);
    detail::check_schedule_number("CosineDecay", "alpha", alpha_, false);
    detail::check_schedule_number("CosineDecay", "warmup_target", target_, false);
    detail::check_schedule_number("CosineDecay", "warmup_steps", warmup_, false);
  }
  double operator()(std::int64_t step) const override {
    const double pi = 3.14159265358979323846;
    double s = static_cast<double>(step);
    auto decayed = [&](double t, double from) {
      const double c = 0.5 * (1.0 + std::cos(pi * (t / steps_)));
      return from * ((1 - alpha_) * c + alpha_);
    };
    if (warmup_ <= 0) return decayed(std::min(s, steps_), lr0_);
    s = std::min(s, steps_ + warmup_);
    if (s < warmup_) return (target_ - lr0_) * (s / warmup_) + lr0_;
    return decayed(s - warmup_, target_);
  }
  std::string type_name() const override { return "CosineDecay"; }
  Config config() const override {
    return {{"initial_learning_rate", format_number(lr0_)},
            {"decay_steps", format_number(steps_)},
            {"alpha", format_number(alpha_)},
            {"warmup_target", format_number(target_)},
            {"warmup_steps", format_number(warmup_)}};
  }
  std::unique_ptr<LearningRateSchedule> clone() const override { return std::make_unique<CosineDecay>(*this); }

 private:
  double lr0_, steps_, alpha_, target_, warmup_;
};

/// initial_learning_rate / (1 + decay_rate * step / decay_steps), the quotient floored when `staircase`. The
/// optimizers' `decay` option is InverseTimeDecay(learning_rate, 1, decay).
class InverseTimeDecay : public detail::StepDecaySchedule {
 public:
  InverseTimeDecay(double initial_learning_rate, double decay_steps, double decay_rate, bool staircase = false)
      : StepDecaySchedule("InverseTimeDecay", initial_learning_rate, decay_steps, decay_rate, staircase) {}
  double operator()(std::int64_t step) const override { return lr0_ / (1.0 + rate_ * progress(step)); }
  std::string type_name() const override { return "InverseTimeDecay"; }
  std::unique_ptr<LearningRateSchedule> clone() const override { return std::make_unique<InverseTimeDecay>(*this); }
};

/// A schedule of `type` with arguments `c` (as type_name() and config() wrote them); ArgumentError naming the
/// type or the argument that is unknown, missing or malformed.
inline std::unique_ptr<LearningRateSchedule> make_schedule(const std::string& type, const Config& c) {
  const std::string where = "learning-rate schedule " + type.substr(0, 64);
  auto only = [&](std::initializer_list<const char*> keys) {
    for (const auto& kv : c) {
      bool known = false;
      for (const char* k : keys) known = known || kv.first == k;
      if (!known) throw ArgumentError(where + ": unknown argument '" + kv.first.substr(0, 64) + "'");
    }
  };
  auto num = [&](const char* k) { return detail::config_number(c, k, where); };
  if (type == "ExponentialDecay" || type == "InverseTimeDecay") {
    only({"initial_learning_rate", "decay_steps", "decay_rate", "staircase"});
    const bool stair = detail::config_bool(c, "staircase", where);
    if (type == "ExponentialDecay")
      return std::make_unique<ExponentialDecay>(num("initial_learning_rate"), num("decay_steps"), num("decay_rate"),
                                                stair);
    return std::make_unique<InverseTimeDecay>(num("initial_learning_rate"), num("decay_steps"), num("decay_rate"),
                                              stair);
  }
  if (type == "CosineDecay") {
    only({"initial_learning_rate", "decay_steps", "alpha", "warmup_target", "warmup_steps"});
    return std::make_unique<CosineDecay>(num("initial_learning_rate"), num("decay_steps"), num("alpha"),
                                         num("warmup_target"), num("warmup_steps"));
  }
  if (type == "PiecewiseConstantDecay") {
    only({"boundaries", "values"});
    auto list = [&](const char* k) {
      auto it = c.find(k);
      if (it == c.end()) throw ArgumentError(where + ": configuration lacks '" + k + "'");
      return detail::parse_number_list(it->second, where + ": " + k);
    };
    return std::make_unique<PiecewiseConstantDecay>(list("boundaries"), list("values"));
  }
  throw ArgumentError("unknown learning-rate schedule '" + type.substr(0, 64) +
                      "' (ExponentialDecay, PiecewiseConstantDecay, CosineDecay, InverseTimeDecay)");
}

}  // namespace fastnn
