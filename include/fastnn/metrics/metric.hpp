#pragma once
/// \file metric.hpp
/// Metrics reported by fit and evaluate beside the loss, named as in Keras:
///
///   "accuracy" (or "acc")           resolved by the loss: sparse categorical accuracy for
///                                   SparseCategoricalCrossentropy, binary accuracy for
///                                   BinaryCrossentropy, categorical accuracy otherwise (binary
///                                   when the output has one unit)
///   "sparse_categorical_accuracy"   arg-max of the prediction equals the class label
///   "categorical_accuracy"          arg-max of the prediction equals the arg-max of the target
///   "binary_accuracy"               (prediction > 0.5) equals the target, averaged over units
///   "mae" / "mean_absolute_error"   |prediction - target|, averaged over units
///
/// Like the losses, a metric gives one value per row of the prediction (its elements grouped by
/// the last axis) and reports their mean. Metrics see the model's real output: where the loss
/// fused the output activation, arg-max and thresholds are taken on the logits (which give the
/// same answers) and the mean absolute error on the activated output.

#include <string>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/losses/loss.hpp"

namespace fastnn {

/// A metric by Keras name; `{"accuracy", "mae"}` converts to a list of them.
class Metric {
 public:
  enum class Kind { Auto, SparseCategoricalAccuracy, CategoricalAccuracy, BinaryAccuracy, MeanAbsoluteError };

  /// Throws ArgumentError for an unknown name (listing the known ones).
  Metric(const char* name) : Metric(std::string(name)) {}  // NOLINT: implicit, as Keras takes strings
  Metric(const std::string& name) : name_(name) {           // NOLINT
    if (name == "accuracy" || name == "acc") kind_ = Kind::Auto;
    else if (name == "sparse_categorical_accuracy") kind_ = Kind::SparseCategoricalAccuracy;
    else if (name == "categorical_accuracy") kind_ = Kind::CategoricalAccuracy;
    else if (name == "binary_accuracy") kind_ = Kind::BinaryAccuracy;
    else if (name == "mae" || name == "mean_absolute_error") kind_ = Kind::MeanAbsoluteError;
    else
      throw ArgumentError("unknown metric '" + name +
                          "' (accuracy, sparse_categorical_accuracy, categorical_accuracy, binary_accuracy, mae)");
  }
  /// The name it was given, which is also its key in logs ("val_" + name for validation).
  const std::string& name() const { return name_; }
  Kind kind() const { return kind_; }

  /// The concrete metric for `loss` and an output with `units` in its last axis (resolves
  /// "accuracy"). Throws ArgumentError when the metric needs targets of another kind.
  Kind resolve(const Loss& loss, Index units) const {
    Kind k = kind_;
    if (k == Kind::Auto) {
      if (loss.kind() == Loss::Kind::SparseCategoricalCrossentropy) k = Kind::SparseCategoricalAccuracy;
      else if (loss.kind() == Loss::Kind::BinaryCrossentropy || units == 1) k = Kind::BinaryAccuracy;
      else k = Kind::CategoricalAccuracy;
    }
    const bool labels = k == Kind::SparseCategoricalAccuracy;
    if (labels != loss.uses_labels())
      throw ArgumentError("metric '" + name_ + "' needs " + (labels ? "class labels" : "float targets") + ", but the loss " +
                          loss.type_name() + " takes " + (loss.uses_labels() ? "class labels" : "float targets"));
    return k;
  }

 private:
  std::string name_;
  Kind kind_ = Kind::Auto;
};

namespace detail {

/// Adds the metric's row values of prediction y to stats[slot]. `fused` says y holds the
/// pre-activation of `act` (the activation the loss absorbed); `scratch` receives the activated
/// output when the metric needs it.
template <class T, class D>
void accumulate_metric(Metric::Kind k, const Tensor<T, D>& y, const Tensor<std::int32_t, D>& labels,
                       const Tensor<T, D>& targets, bool fused, Activation act, Tensor<T, D>& scratch,
                       Tensor<double, D>& stats, Index slot) {
  using O = Ops<T, D>;
  switch (k) {
    case Metric::Kind::SparseCategoricalAccuracy: O::metric_labels(y, labels, stats, slot); return;
    case Metric::Kind::CategoricalAccuracy:  // arg-max is the same before and after softmax
      O::metric_targets(MetricKind::CategoricalAccuracy, y, targets, T(0), stats, slot);
      return;
    case Metric::Kind::BinaryAccuracy:  // sigmoid(z) > 0.5 exactly when z > 0
      O::metric_targets(MetricKind::BinaryAccuracy, y, targets, fused && act == Activation::Sigmoid ? T(0) : T(0.5),
                        stats, slot);
      return;
    case Metric::Kind::MeanAbsoluteError: {
      const Tensor<T, D>* p = &y;
      if (fused && act != Activation::Linear) {
        scratch.resize(y.shape());
        copy_into(y, scratch);
        Tensor<T, D> rows = scratch.reshaped(Shape{loss_rows(y), y.size() / (loss_rows(y) ? loss_rows(y) : 1)});
        O::activate(act, rows);
        p = &scratch;
      }
      O::metric_targets(MetricKind::MeanAbsoluteError, *p, targets, T(0), stats, slot);
      return;
    }
    case Metric::Kind::Auto: break;
  }
  throw ArgumentError("accumulate_metric: unresolved metric");
}

}  // namespace detail
}  // namespace fastnn
