#pragma once
/// \file loss.hpp
/// Losses with Keras's names and semantics, chosen in Sequential::compile:
///
///   SparseCategoricalCrossentropy(from_logits)   integer class labels     -log softmax(y)[label]
///   CategoricalCrossentropy(from_logits)         target distributions t   -sum_k t_k log softmax(y)_k
///   BinaryCrossentropy(from_logits)              targets t in [0, 1]      mean_k -(t log p + (1-t) log(1-p))
///   MeanSquaredError()                           float targets            mean_k (y - t)^2
///   MeanAbsoluteError()                          float targets            mean_k |y - t|
///
/// A prediction y is viewed as rows over its last axis (a [N, K] output has N rows, a
/// [N, steps, K] output N * steps rows, one per step); each row gives one loss value and the
/// loss is their mean, as Keras's default "sum over batch size" reduction. With from_logits =
/// false the cross-entropies take probabilities. When the model's last layer applies exactly the
/// activation the loss would undo (softmax for the categorical ones, sigmoid for the binary one),
/// the model fuses the two: the layer emits its pre-activation and the loss computes from logits
/// (log-sum-exp; numerically stable, and the gradient is softmax - target). The categorical
/// cross-entropies on probabilities need that fusion (or from_logits = true); BinaryCrossentropy
/// on probabilities from any other layer clips them to [1e-7, 1 - 1e-7] as Keras does.
///
/// Losses are small value types: `model.compile(opt, MeanSquaredError(), {"mae"})`.

#include <cstdint>
#include <string>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

/// A loss function: one of the five kinds above and its from_logits option.
class Loss {
 public:
  enum class Kind { SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy, MeanSquaredError, MeanAbsoluteError };

  /// Keras's class name ("SparseCategoricalCrossentropy", ...).
  std::string type_name() const {
    switch (kind_) {
      case Kind::SparseCategoricalCrossentropy: return "SparseCategoricalCrossentropy";
      case Kind::CategoricalCrossentropy: return "CategoricalCrossentropy";
      case Kind::BinaryCrossentropy: return "BinaryCrossentropy";
      case Kind::MeanSquaredError: return "MeanSquaredError";
      case Kind::MeanAbsoluteError: return "MeanAbsoluteError";
    }
    return "?";
  }
  /// Options as text (checkpoints record them): {"from_logits": "true"} for the cross-entropies.
  Config config() const {
    if (!has_from_logits()) return {};
    return {{"from_logits", from_logits_ ? "true" : "false"}};
  }
  Kind kind() const { return kind_; }
  bool from_logits() const { return from_logits_; }
  /// Whether the targets are class indices (int32) rather than float values.
  bool uses_labels() const { return kind_ == Kind::SparseCategoricalCrossentropy; }
  /// The output activation this loss absorbs when the last layer applies it (Linear: none).
  Activation fusable_activation() const {
    if (from_logits_) return Activation::Linear;
    if (kind_ == Kind::SparseCategoricalCrossentropy || kind_ == Kind::CategoricalCrossentropy) return Activation::Softmax;
    if (kind_ == Kind::BinaryCrossentropy) return Activation::Sigmoid;
    return Activation::Linear;
  }
  /// Whether the loss can take the output of a last layer with activation `a` as it is
  /// (unfused). The categorical cross-entropies on probabilities need a fused softmax.
  bool accepts_unfused_output() const {
    return from_logits_ || kind_ == Kind::BinaryCrossentropy || kind_ == Kind::MeanSquaredError ||
           kind_ == Kind::MeanAbsoluteError;
  }

  /// Re-creates a loss from type_name() and config(); MismatchError "<where>: ..." otherwise.
  static Loss from_config(const std::string& type, const Config& c, const std::string& where) {
    for (Kind k : {Kind::SparseCategoricalCrossentropy, Kind::CategoricalCrossentropy, Kind::BinaryCrossentropy,
                   Kind::MeanSquaredError, Kind::MeanAbsoluteError}) {
      Loss l(k, false);
      if (l.type_name() != type) continue;
      if (l.has_from_logits()) {
        auto it = c.find("from_logits");
        if (it == c.end()) throw MismatchError(where + ": configuration lacks 'from_logits'");
        if (!detail::option_parse(it->second, l.from_logits_))
          throw MismatchError(where + ": 'from_logits' must be true or false, got '" + it->second.substr(0, 64) + "'");
      }
      for (const auto& kv : c)
        if (kv.first != "from_logits" || !l.has_from_logits())
          throw MismatchError(where + ": unknown option '" + kv.first.substr(0, 64) + "' of " + type);
      return l;
    }
    throw MismatchError(where + ": unknown loss '" + type.substr(0, 64) +
                        "' (SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy, "
                        "MeanSquaredError, MeanAbsoluteError)");
  }

  bool operator==(const Loss& o) const { return kind_ == o.kind_ && from_logits_ == o.from_logits_; }
  bool operator!=(const Loss& o) const { return !(*this == o); }

 protected:
  Loss(Kind k, bool from_logits) : kind_(k), from_logits_(from_logits) {}

 private:
  bool has_from_logits() const { return kind_ != Kind::MeanSquaredError && kind_ != Kind::MeanAbsoluteError; }
  Kind kind_;
  bool from_logits_;
};

/// Cross-entropy against integer class labels; the targets of a [N, K] output are [N], of a
/// [N, steps, K] output [N, steps].
struct SparseCategoricalCrossentropy : Loss {
  explicit SparseCategoricalCrossentropy(bool from_logits = false) : Loss(Kind::SparseCategoricalCrossentropy, from_logits) {}
};
/// Cross-entropy against target distributions shaped like the output (one-hot or soft).
struct CategoricalCrossentropy : Loss {
  explicit CategoricalCrossentropy(bool from_logits = false) : Loss(Kind::CategoricalCrossentropy, from_logits) {}
};
/// Element-wise binary cross-entropy against targets in [0, 1] shaped like the output.
struct BinaryCrossentropy : Loss {
  explicit BinaryCrossentropy(bool from_logits = false) : Loss(Kind::BinaryCrossentropy, from_logits) {}
};
/// Mean squared error against float targets shaped like the output.
struct MeanSquaredError : Loss {
  MeanSquaredError() : Loss(Kind::MeanSquaredError, false) {}
};
/// Mean absolute error against float targets shaped like the output.
struct MeanAbsoluteError : Loss {
  MeanAbsoluteError() : Loss(Kind::MeanAbsoluteError, false) {}
};

namespace detail {

/// Adds the sum of the row losses of `y` to stats[slot] and, when `dy` is not null, writes
/// grad_scale * d(sum of row losses)/dy. `fused`: y holds the pre-activation of
/// loss.fusable_activation() (logits). Exactly one of labels / targets is used, as
/// loss.uses_labels() says.
template <class T, class D>
void accumulate_loss(const Loss& loss, const Tensor<T, D>& y, const Tensor<std::int32_t, D>& labels,
                     const Tensor<T, D>& targets, bool fused, Tensor<T, D>* dy, T grad_scale, Tensor<double, D>& stats,
                     Index slot) {
  using O = Ops<T, D>;
  const bool logits = fused || loss.from_logits();
  switch (loss.kind()) {
    case Loss::Kind::SparseCategoricalCrossentropy:
    case Loss::Kind::CategoricalCrossentropy:
      if (!logits)
        throw ArgumentError(loss.type_name() +
                            "(from_logits=false) needs a last layer with softmax activation (fused with the loss); "
                            "or use from_logits=true");
      if (loss.uses_labels()) O::softmax_xent(y, labels, dy, grad_scale, stats, slot);
      else O::softmax_xent_dense(y, targets, dy, grad_scale, stats, slot);
      return;
    case Loss::Kind::BinaryCrossentropy:
      if (logits) O::sigmoid_xent(y, targets, dy, grad_scale, stats, slot);
      else O::pointwise_loss(PointwiseLoss::BinaryCrossentropy, y, targets, dy, grad_scale, stats, slot);
      return;
    case Loss::Kind::MeanSquaredError:
      O::pointwise_loss(PointwiseLoss::MeanSquaredError, y, targets, dy, grad_scale, stats, slot);
      return;
    case Loss::Kind::MeanAbsoluteError:
      O::pointwise_loss(PointwiseLoss::MeanAbsoluteError, y, targets, dy, grad_scale, stats, slot);
      return;
  }
}

/// X itself, in a context that takes no part in template argument deduction (so that nullptr
/// can be passed for a Tensor pointer).
template <class X>
struct NoDeduceT {
  using type = X;
};
template <class X>
using NoDeduce = typename NoDeduceT<X>::type;

/// Rows of a prediction: its elements grouped by the last axis.
template <class T, class D>
Index loss_rows(const Tensor<T, D>& y) {
  if (y.rank() == 0) return 1;
  const Index k = y.dim(y.rank() - 1);
  return k == 0 ? 0 : y.size() / k;
}

}  // namespace detail

/// The mean loss of prediction `y` against class `labels` (SparseCategoricalCrossentropy) and,
/// when `dy` is not null, its gradient with respect to y. `fused`: y holds logits of the
/// activation the loss absorbs (see Loss::fusable_activation). Throws ShapeError when the
/// labels do not give one class per row, ArgumentError for a loss that takes float targets.
template <class T, class D>
double loss_value(const Loss& loss, const Tensor<T, D>& y, const Tensor<std::int32_t, D>& labels,
                  detail::NoDeduce<Tensor<T, D>>* dy = nullptr, bool fused = false) {
  if (!loss.uses_labels()) throw ArgumentError(loss.type_name() + " takes float targets, not class labels");
  const Index rows = detail::loss_rows(y);
  if (labels.size() != rows)
    throw ShapeError(loss.type_name() + ": " + std::to_string(labels.size()) + " labels " + labels.shape().str() +
                     " for a prediction " + y.shape().str() + " of " + std::to_string(rows) + " rows");
  Tensor<double, D> stats = Tensor<double, D>::zeros(Shape{1});
  if (dy) dy->resize(y.shape());
  detail::accumulate_loss(loss, y, labels, Tensor<T, D>(), fused, dy, T(1) / static_cast<T>(rows), stats, 0);
  return to_device<Cpu>(stats)[0] / static_cast<double>(rows);
}

/// The mean loss of prediction `y` against float `targets` of the same shape, and its
/// gradient when `dy` is not null (see the overload for labels).
template <class T, class D>
double loss_value(const Loss& loss, const Tensor<T, D>& y, const Tensor<T, D>& targets,
                  detail::NoDeduce<Tensor<T, D>>* dy = nullptr, bool fused = false) {
  if (loss.uses_labels()) throw ArgumentError(loss.type_name() + " takes class labels, not float targets");
  if (targets.shape() != y.shape())
    throw ShapeError(loss.type_name() + ": targets " + targets.shape().str() + " for a prediction " + y.shape().str());
  const Index rows = detail::loss_rows(y);
  Tensor<double, D> stats = Tensor<double, D>::zeros(Shape{1});
  if (dy) dy->resize(y.shape());
  detail::accumulate_loss(loss, y, Tensor<std::int32_t, D>(), targets, fused, dy, T(1) / static_cast<T>(rows), stats, 0);
  return to_device<Cpu>(stats)[0] / static_cast<double>(rows);
}

}  // namespace fastnn
