#pragma once
/// \file callbacks.hpp
/// Per-epoch logs, the History they form, and callbacks: a CSV logger and the Keras-style
/// progress bar.

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <locale>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/core/parse.hpp"

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

/// Hooks called by Sequential::fit. Override what you need.
class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_begin() {}
  virtual void on_epoch_end(const EpochLogs&) {}
  virtual void on_train_end() {}
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
