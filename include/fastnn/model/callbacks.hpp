#pragma once
/// \file callbacks.hpp
/// Per-epoch logs, the History they form, and callbacks with Keras's hooks and names: EarlyStopping,
/// ReduceLROnPlateau, LearningRateScheduler, a CSV logger and the Keras-style progress bar.

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <locale>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/shape.hpp"

namespace fastnn {

/// A metric's name and value.
using MetricValue = std::pair<std::string, double>;

/// What one epoch produced. val_* are NaN when there was no validation data. `metrics` holds
/// every compiled metric by name, in compile order (and `val_metrics` the same with "val_"
/// names); `accuracy` / `val_accuracy` repeat the metric named "accuracy" (or "acc"), NaN
/// without one.
struct EpochLogs {
  int epoch = 0;  ///< 1-based
  double loss = NAN, accuracy = NAN, val_loss = NAN, val_accuracy = NAN;
  double train_seconds = 0, eval_seconds = 0;
  std::vector<MetricValue> metrics, val_metrics;
  /// The value of metric `name` ("val_" names included); NaN when there is none.
  double metric(const std::string& name) const {
    for (const auto& m : metrics)
      if (m.first == name) return m.second;
    for (const auto& m : val_metrics)
      if (m.first == name) return m.second;
    return NAN;
  }
};

/// Every epoch's logs, in order.
struct History {
  std::vector<EpochLogs> epochs;
  const EpochLogs& last() const {
    if (epochs.empty()) throw ArgumentError("History::last: no epoch has run");
    return epochs.back();
  }
};

/// What one training batch produced, for Callback::on_train_batch_end: its 0-based index in the epoch and its
/// sample count; `loss` is the epoch's running mean loss when the callback asks for it (wants_batch_logs()),
/// else NaN (reading it would wait for the device every step).
struct BatchLogs {
  long batch = 0;
  Index size = 0;
  double loss = NAN;
};

/// What a running fit() lets its callbacks see and change (Keras's `self.model`, type-erased so that callbacks
/// need no template): the epoch, the learning rate, the weights, the names the run logs, and `stop_training`.
/// Set on every callback before on_train_begin; valid until on_train_end returns.
struct TrainingContext {
  bool stop_training = false;      ///< set by a callback: fit() stops after the current batch or epoch
  int epoch = 0;                   ///< 1-based epoch being run (or last run)
  std::vector<std::string> logged;  ///< every name fit() logs: "loss", the metrics, "val_" names with validation
  std::function<double()> learning_rate;                  ///< the rate of the next optimizer step
  std::function<void(double)> set_learning_rate;          ///< replaces the rate (and any schedule)
  std::function<std::vector<double>()> get_weights;       ///< the flat parameters, exactly (as double)
  std::function<void(const std::vector<double>&)> set_weights;
  std::vector<class Callback*> callbacks;                 ///< every callback of the run, in order
  bool logs(const std::string& name) const {
    for (const auto& n : logged)
      if (n == name) return true;
    return false;
  }
};

/// Hooks called by fit(), with Keras's names. Override what you need; context() gives the run's TrainingContext.
/// A callback that keeps state across epochs (EarlyStopping, ReduceLROnPlateau) names it with state_name() and
/// saves it with state() / state_weights(): checkpoints record it, and a resumed fit() restores it after
/// on_train_begin, so that a resumed run continues exactly where it stopped.
class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_begin() {}
  virtual void on_epoch_begin(int /*epoch*/) {}
  virtual void on_epoch_end(const EpochLogs&) {}
  virtual void on_train_batch_begin(long /*batch*/) {}
  virtual void on_train_batch_end(long /*batch*/, const BatchLogs&) {}
  virtual void on_train_end() {}
  /// Whether on_train_batch_end needs BatchLogs::loss.
  virtual bool wants_batch_logs() const { return false; }
  /// Names this callback monitors; fit() refuses to start (ArgumentError) when the run does not log one.
  virtual std::vector<std::string> monitors() const { return {}; }
  /// Whether on_epoch_end writes files that record the other callbacks' state: such callbacks run after the
  /// others at the end of an epoch.
  virtual bool writes_checkpoints() const { return false; }
  /// The key under which checkpoints record this callback's state; empty: it has none.
  virtual std::string state_name() const { return {}; }
  virtual Config state() const { return {}; }
  virtual void set_state(const Config&) {}
  /// Weights the state holds (EarlyStopping's best weights), or null.
  virtual const std::vector<double>* state_weights() const { return nullptr; }
  virtual void set_state_weights(std::vector<double>) {}

  void set_context(TrainingContext* c) { ctx_ = c; }
  TrainingContext* context() const { return ctx_; }

 protected:
  TrainingContext& ctx(const char* who) const {
    if (!ctx_) throw ArgumentError(std::string(who) + ": used outside fit()");
    return *ctx_;
  }

 private:
  TrainingContext* ctx_ = nullptr;
};

namespace detail {

/// Keras's "auto" mode: a monitored name containing "acc" is maximised, anything else minimised.
inline bool monitor_maximises(const std::string& mode, const std::string& monitor, const char* who) {
  if (mode == "max") return true;
  if (mode == "min") return false;
  if (mode == "auto") return monitor.find("acc") != std::string::npos;
  throw ArgumentError(std::string(who) + ": mode must be auto, min or max, got '" + mode + "'");
}

/// The value of `monitor` in `l` ("loss", "val_loss" or any metric); NaN when absent.
inline double monitored(const EpochLogs& l, const std::string& monitor) {
  if (monitor == "loss") return l.loss;
  if (monitor == "val_loss") return l.val_loss;
  return l.metric(monitor);
}

inline std::string exact_text(double v) { return format_number(v); }
inline double parse_state(const Config& c, const char* key, const char* who) {
  auto it = c.find(key);
  double v = 0;
  if (it == c.end() || !(it->second == "inf" || it->second == "-inf" || parse_number(it->second, v)))
    throw FormatError(std::string(who), std::string("state.") + key, "missing or not a number");
  if (it->second == "inf") return INFINITY;
  if (it->second == "-inf") return -INFINITY;
  return v;
}
inline std::string state_number(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return exact_text(v);
}

}  // namespace detail

/// Options of EarlyStopping (Keras's names and defaults).
struct EarlyStoppingOptions {
  FASTNN_OPTIONS((std::string, monitor, "val_loss"),
                 (double, min_delta, 0.0),
                 (int, patience, 0),
                 (std::string, mode, "auto"),
                 (double, baseline, NAN),
                 (bool, restore_best_weights, false),
                 (int, start_from_epoch, 0))
};

/// Stops training when `monitor` has not improved by more than min_delta for `patience` epochs (Keras's
/// EarlyStopping): an epoch improves when current - min_delta beats the best (max mode) or current + min_delta
/// does (min mode); with a baseline, the wait is reset only by epochs that also beat the baseline. Epochs before
/// start_from_epoch (0-based, as Keras counts) are ignored. With restore_best_weights, the weights of the best
/// epoch are put back when training ends. stopped_epoch() is the 1-based epoch after which it stopped (0: never).
class EarlyStopping : public Callback {
 public:
  explicit EarlyStopping(EarlyStoppingOptions o = {}) : o_(std::move(o)) {
    if (!(o_.min_delta() >= 0) || !std::isfinite(o_.min_delta()))
      throw ArgumentError("EarlyStopping: min_delta must be finite and >= 0, got " + format_fixed(o_.min_delta(), 6));
    if (o_.patience() < 0) throw ArgumentError("EarlyStopping: patience must be >= 0, got " +
                                               std::to_string(o_.patience()));
    if (o_.start_from_epoch() < 0)
      throw ArgumentError("EarlyStopping: start_from_epoch must be >= 0, got " + std::to_string(o_.start_from_epoch()));
    if (o_.monitor().empty()) throw ArgumentError("EarlyStopping: monitor is empty");
    max_ = detail::monitor_maximises(o_.mode(), o_.monitor(), "EarlyStopping");
  }
  void on_train_begin() override {
    wait_ = 0;
    stopped_epoch_ = 0;
    best_epoch_ = 0;
    best_ = std::isnan(o_.baseline()) ? (max_ ? -INFINITY : INFINITY) : o_.baseline();
    best_weights_.clear();
  }
  void on_epoch_end(const EpochLogs& l) override {
    const double current = detail::monitored(l, o_.monitor());
    const int epoch = l.epoch - 1;  // Keras counts from 0
    if (std::isnan(current) || epoch < o_.start_from_epoch()) return;
    TrainingContext& c = ctx("EarlyStopping");
    if (o_.restore_best_weights() && best_weights_.empty()) {
      best_weights_ = c.get_weights();
      best_epoch_ = l.epoch;
    }
    ++wait_;
    if (improves(current, best_)) {
      best_ = current;
      best_epoch_ = l.epoch;
      if (o_.restore_best_weights()) best_weights_ = c.get_weights();
      if (std::isnan(o_.baseline()) || improves(current, o_.baseline())) wait_ = 0;
      return;
    }
    if (wait_ >= o_.patience() && epoch > 0) {
      stopped_epoch_ = l.epoch;
      c.stop_training = true;
    }
  }
  void on_train_end() override {
    if (o_.restore_best_weights() && !best_weights_.empty()) ctx("EarlyStopping").set_weights(best_weights_);
  }
  std::vector<std::string> monitors() const override { return {o_.monitor()}; }
  std::string state_name() const override { return "EarlyStopping." + o_.monitor(); }
  Config state() const override {
    return {{"wait", std::to_string(wait_)},
            {"best", detail::state_number(best_)},
            {"best_epoch", std::to_string(best_epoch_)},
            {"stopped_epoch", std::to_string(stopped_epoch_)}};
  }
  void set_state(const Config& s) override {
    const char* who = "EarlyStopping";
    wait_ = static_cast<int>(detail::parse_state(s, "wait", who));
    best_ = detail::parse_state(s, "best", who);
    best_epoch_ = static_cast<int>(detail::parse_state(s, "best_epoch", who));
    stopped_epoch_ = static_cast<int>(detail::parse_state(s, "stopped_epoch", who));
  }
  const std::vector<double>* state_weights() const override {
    return o_.restore_best_weights() && !best_weights_.empty() ? &best_weights_ : nullptr;
  }
  void set_state_weights(std::vector<double> w) override { best_weights_ = std::move(w); }

  int stopped_epoch() const { return stopped_epoch_; }
  int best_epoch() const { return best_epoch_; }
  double best() const { return best_; }
  int wait() const { return wait_; }
  const EarlyStoppingOptions& options() const { return o_; }

 private:
  bool improves(double current, double reference) const {
    return max_ ? current - o_.min_delta() > reference : current + o_.min_delta() < reference;
  }
  EarlyStoppingOptions o_;
  bool max_ = false;
  int wait_ = 0, stopped_epoch_ = 0, best_epoch_ = 0;
  double best_ = INFINITY;
  std::vector<double> best_weights_;
};

/// Options of ReduceLROnPlateau (Keras's names and defaults).
struct ReduceLROnPlateauOptions {
  FASTNN_OPTIONS((std::string, monitor, "val_loss"),
                 (double, factor, 0.1),
                 (int, patience, 10),
                 (std::string, mode, "auto"),
                 (double, min_delta, 1e-4),
                 (int, cooldown, 0),
                 (double, min_lr, 0.0))
};

/// Multiplies the learning rate by `factor` when `monitor` has not improved by min_delta for `patience` epochs,
/// then waits `cooldown` epochs before counting again; never below min_lr (Keras's ReduceLROnPlateau).
class ReduceLROnPlateau : public Callback {
 public:
  explicit ReduceLROnPlateau(ReduceLROnPlateauOptions o = {}) : o_(std::move(o)) {
    if (!(o_.factor() > 0 && o_.factor() < 1))
      throw ArgumentError("ReduceLROnPlateau: factor must be in (0, 1), got " + format_fixed(o_.factor(), 6));
    if (!(o_.min_delta() >= 0) || !std::isfinite(o_.min_delta()))
      throw ArgumentError("ReduceLROnPlateau: min_delta must be finite and >= 0, got " +
                          format_fixed(o_.min_delta(), 6));
    if (!(o_.min_lr() >= 0) || !std::isfinite(o_.min_lr()))
      throw ArgumentError("ReduceLROnPlateau: min_lr must be finite and >= 0, got " + format_fixed(o_.min_lr(), 6));
    if (o_.patience() < 0) throw ArgumentError("ReduceLROnPlateau: patience must be >= 0, got " +
                                               std::to_string(o_.patience()));
    if (o_.cooldown() < 0) throw ArgumentError("ReduceLROnPlateau: cooldown must be >= 0, got " +
                                               std::to_string(o_.cooldown()));
    max_ = detail::monitor_maximises(o_.mode(), o_.monitor(), "ReduceLROnPlateau");
  }
  void on_train_begin() override {
    best_ = max_ ? -INFINITY : INFINITY;
    wait_ = 0;
    cooldown_counter_ = 0;
  }
  void on_epoch_end(const EpochLogs& l) override {
    const double current = detail::monitored(l, o_.monitor());
    if (std::isnan(current)) return;
    if (cooldown_counter_ > 0) {
      --cooldown_counter_;
      wait_ = 0;
    }
    if (max_ ? current > best_ + o_.min_delta() : current < best_ - o_.min_delta()) {
      best_ = current;
      wait_ = 0;
    } else if (cooldown_counter_ == 0) {
      if (++wait_ >= o_.patience()) {
        TrainingContext& c = ctx("ReduceLROnPlateau");
        const double old_lr = c.learning_rate();
        if (old_lr > o_.min_lr()) {
          c.set_learning_rate(std::max(old_lr * o_.factor(), o_.min_lr()));
          cooldown_counter_ = o_.cooldown();
          wait_ = 0;
        }
      }
    }
  }
  std::vector<std::string> monitors() const override { return {o_.monitor()}; }
  std::string state_name() const override { return "ReduceLROnPlateau." + o_.monitor(); }
  Config state() const override {
    return {{"wait", std::to_string(wait_)},
            {"best", detail::state_number(best_)},
            {"cooldown_counter", std::to_string(cooldown_counter_)}};
  }
  void set_state(const Config& s) override {
    const char* who = "ReduceLROnPlateau";
    wait_ = static_cast<int>(detail::parse_state(s, "wait", who));
    best_ = detail::parse_state(s, "best", who);
    cooldown_counter_ = static_cast<int>(detail::parse_state(s, "cooldown_counter", who));
  }
  const ReduceLROnPlateauOptions& options() const { return o_; }

 private:
  ReduceLROnPlateauOptions o_;
  bool max_ = false;
  double best_ = INFINITY;
  int wait_ = 0, cooldown_counter_ = 0;
};

/// Calls `fn(epoch, lr)` at the start of every epoch (0-based epoch, as Keras) and sets the rate it returns
/// (Keras's LearningRateScheduler). A rate that is negative or not finite is an ArgumentError.
class LearningRateScheduler : public Callback {
 public:
  explicit LearningRateScheduler(std::function<double(int, double)> fn) : fn_(std::move(fn)) {
    if (!fn_) throw ArgumentError("LearningRateScheduler: no function");
  }
  void on_epoch_begin(int epoch) override {
    TrainingContext& c = ctx("LearningRateScheduler");
    const double lr = fn_(epoch - 1, c.learning_rate());
    if (!(lr >= 0) || !std::isfinite(lr))
      throw ArgumentError("LearningRateScheduler: the function returned learning rate " + format_fixed(lr, 6) +
                          " at epoch " + std::to_string(epoch - 1));
    c.set_learning_rate(lr);
  }

 private:
  std::function<double(int, double)> fn_;
};

/// Writes `epoch,loss,<metrics>,val_loss,<val_metrics>,train_seconds,eval_seconds`, one row per
/// epoch, flushed after each row (with the default metric: epoch,loss,accuracy,val_loss,
/// val_accuracy,...). With append = true (resumed runs) an existing file is continued and the
/// header is not repeated.
class CsvLogger : public Callback {
 public:
  explicit CsvLogger(std::string path, bool append = false) : path_(std::move(path)), append_(append) {
    out_.imbue(std::locale::classic());
  }
  void on_train_begin() override {
    has_header_ = false;
    if (append_) {
      std::ifstream in(path_);
      has_header_ = in.good() && in.peek() != std::ifstream::traits_type::eof();
    }
    out_.open(path_, append_ ? std::ios::app : std::ios::trunc);
    if (!out_) throw IoError(path_, "cannot open for writing");
  }
  void on_epoch_end(const EpochLogs& l) override {
    if (!has_header_) {
      out_ << "epoch,loss";
      for (const auto& m : l.metrics) out_ << "," << m.first;
      out_ << ",val_loss";
      for (const auto& m : l.metrics) out_ << ",val_" << m.first;
      out_ << ",train_seconds,eval_seconds\n";
      has_header_ = true;
    }
    // numbers through format_fixed: a '.' for the decimal point whatever the global locale
    out_ << l.epoch << "," << format_fixed(l.loss, 6);
    for (const auto& m : l.metrics) out_ << "," << format_fixed(m.second, 6);
    out_ << "," << format_fixed(l.val_loss, 6);
    for (const auto& m : l.metrics) out_ << "," << format_fixed(l.metric("val_" + m.first), 6);
    out_ << "," << format_fixed(l.train_seconds, 3) << "," << format_fixed(l.eval_seconds, 3) << "\n";
    out_.flush();
    if (!out_) throw IoError(path_, "write failed");
  }

 private:
  std::string path_;
  bool append_;
  bool has_header_ = false;
  std::ofstream out_;
};

namespace detail {

/// Keras-style progress: on a terminal a bar redrawn in place (at most every 100 ms); otherwise
/// one line per epoch.
///   Epoch 1/30
///   469/469 [==============================] - 10s 21ms/step - loss: 0.3376 - accuracy: 0.8889 - val_loss: 0.0863 - val_accuracy: 0.9741
class ProgressBar {
 public:
  ProgressBar(int verbose, std::FILE* out = stdout)
      : verbose_(verbose), out_(out), tty_(isatty(fileno(out)) != 0) {}
  bool wants_updates() const { return verbose_ == 1 && tty_; }
  void begin_epoch(int epoch, int epochs, long steps) {
    steps_ = steps;
    start_ = Clock::now();
    last_draw_ = start_ - std::chrono::seconds(1);
    if (verbose_ >= 1) std::fprintf(out_, "Epoch %d/%d\n", epoch, epochs), std::fflush(out_);
  }
  /// Redraws when due. loss and the metrics are running means.
  void update(long step, double loss, const std::vector<MetricValue>& metrics, bool force = false) {
    if (!wants_updates()) return;
    auto now = Clock::now();
    if (!force && now - last_draw_ < std::chrono::milliseconds(100) && step < steps_) return;
    last_draw_ = now;
    double el = seconds(now);
    double eta = step > 0 ? el / static_cast<double>(step) * static_cast<double>(steps_ - step) : 0;
    std::string line = bar(step) + " - ETA: " + std::to_string(static_cast<long>(std::lround(eta))) + "s - loss: " + num(loss);
    for (const auto& m : metrics) line += " - " + m.first + ": " + num(m.second);
    std::fprintf(out_, "\r%s", line.c_str());
    std::fflush(out_);
  }
  bool due() const {
    return wants_updates() && Clock::now() - last_draw_ >= std::chrono::milliseconds(100);
  }
  void end_epoch(const EpochLogs& l) {
    if (verbose_ == 0) return;
    double el = l.train_seconds + l.eval_seconds;
    std::string line = bar(steps_) + " - " + std::to_string(static_cast<long>(std::lround(el))) + "s " +
                       per_step(l.train_seconds / static_cast<double>(steps_ > 0 ? steps_ : 1)) +
                       " - loss: " + num(l.loss);
    for (const auto& m : l.metrics) line += " - " + m.first + ": " + num(m.second);
    if (!std::isnan(l.val_loss)) {
      line += " - val_loss: " + num(l.val_loss);
      for (const auto& m : l.val_metrics) line += " - " + m.first + ": " + num(m.second);
    }
    std::fprintf(out_, "%s%s\n", wants_updates() ? "\r\033[K" : "", line.c_str());
    std::fflush(out_);
  }

 private:
  using Clock = std::chrono::steady_clock;
  double seconds(Clock::time_point t) const { return std::chrono::duration<double>(t - start_).count(); }
  std::string bar(long step) const {
    const int width = 30;
    int filled = steps_ > 0 ? static_cast<int>(width * step / steps_) : width;
    std::string b = std::to_string(step) + "/" + std::to_string(steps_) + " [";
    for (int i = 0; i < width; ++i) b += i < filled - 1 || (i == filled - 1 && step == steps_) ? '=' : (i == filled - 1 ? '>' : '.');
    return b + "]";
  }
  static std::string per_step(double s) {
    char buf[32];
    if (s >= 1) std::snprintf(buf, sizeof buf, "%.0fs/step", s);
    else if (s >= 1e-3) std::snprintf(buf, sizeof buf, "%.0fms/step", s * 1e3);
    else std::snprintf(buf, sizeof buf, "%.0fus/step", s * 1e6);
    return buf;
  }
  static std::string num(double v) {
    char buf[32];
    if (v != 0 && std::fabs(v) < 1e-3) std::snprintf(buf, sizeof buf, "%.4e", v);
    else std::snprintf(buf, sizeof buf, "%.4f", v);
    return buf;
  }
  int verbose_;
  std::FILE* out_;
  bool tty_;
  long steps_ = 0;
  Clock::time_point start_, last_draw_;
};

}  // namespace detail
}  // namespace fastnn
