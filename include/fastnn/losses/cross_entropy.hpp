#pragma once
/// \file cross_entropy.hpp
/// Sparse categorical cross-entropy fused with the softmax, and accuracy.
///
///   loss_i = logsumexp(z_i) - z_i[y_i]          (stable: logsumexp(z) = m + log sum exp(z - m))
///   dloss/dz_i = (softmax(z_i) - onehot(y_i)) / N   for the mean over N samples

#include <cstdint>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

/// Mean softmax cross-entropy of logits [N, K] against integer labels [N]; writes the gradient
/// of the mean into `dlogits` when it is not null.
template <class T, class D>
double softmax_cross_entropy(const Tensor<T, D>& logits, const Tensor<std::int32_t, D>& labels,
                             Tensor<T, D>* dlogits = nullptr) {
  if (logits.rank() != 2 || labels.rank() != 1 || labels.dim(0) != logits.dim(0))
    throw ShapeError("softmax_cross_entropy: logits " + logits.shape().str() + " and labels " +
                     labels.shape().str() + " do not match (expected [N, K] and [N])");
  Tensor<double, D> stats(Shape{2});
  stats.set_zero();
  if (dlogits) dlogits->resize(logits.shape());
  Ops<T, D>::softmax_xent(logits, labels, dlogits, T(1) / static_cast<T>(logits.dim(0)), stats);
  return to_device<Cpu>(stats)[0] / static_cast<double>(logits.dim(0));
}

/// Fraction of rows of `scores` [N, K] whose arg-max equals the label.
template <class T, class D>
double accuracy(const Tensor<T, D>& scores, const Tensor<std::int32_t, D>& labels) {
  if (scores.rank() != 2 || labels.rank() != 1 || labels.dim(0) != scores.dim(0))
    throw ShapeError("accuracy: scores " + scores.shape().str() + " and labels " + labels.shape().str() +
                     " do not match (expected [N, K] and [N])");
  Tensor<double, D> stats(Shape{2});
  stats.set_zero();
  Ops<T, D>::softmax_xent(scores, labels, nullptr, T(0), stats);
  return to_device<Cpu>(stats)[1] / static_cast<double>(scores.dim(0));
}

}  // namespace fastnn
