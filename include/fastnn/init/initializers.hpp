#pragma once
/// \file initializers.hpp
/// Keras's default initialisers, drawn from fastnn::Rng so that runs are reproducible.
/// All write into host tensors; device layers initialise on the host and copy.

#include <cmath>

#include <Eigen/QR>

#include "fastnn/core/random.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace init {

/// Uniform in [-limit, limit] with limit = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).
/// For a [fan_in, fan_out] kernel.
template <class T>
void glorot_uniform(Tensor<T, Cpu>& w, Index fan_in, Index fan_out, Rng& rng) {
  const double limit = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  for (Index i = 0; i < w.size(); ++i) w[i] = static_cast<T>(rng.uniform(-limit, limit));
}

/// A random orthogonal matrix of shape [rows, cols] (Saxe et al. 2013), as Keras builds it:
/// QR of a standard-normal matrix, columns of Q sign-corrected by diag(R). With rows < cols the
/// rows are orthonormal (W W^T = gain^2 I), otherwise the columns are.
template <class T>
void orthogonal(Tensor<T, Cpu>& w, Rng& rng, double gain = 1.0) {
  const Index rows = w.dim(0), cols = w.shape().inner();
  const bool tall = rows >= cols;
  const Index m = tall ? rows : cols, n = tall ? cols : rows;  // factor an m x n matrix, m >= n
  Eigen::MatrixXd a(m, n);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) a(i, j) = rng.normal();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(m, n);
  Eigen::MatrixXd r = qr.matrixQR().topLeftCorner(n, n).template triangularView<Eigen::Upper>();
  for (Index j = 0; j < n; ++j)
    if (r(j, j) < 0) q.col(j) = -q.col(j);
  q *= gain;
  auto out = w.matrix();
  if (tall) out = q.cast<T>();
  else out = q.transpose().cast<T>();
}

/// Uniform in [lo, hi).
template <class T>
void uniform(Tensor<T, Cpu>& w, double lo, double hi, Rng& rng) {
  for (Index i = 0; i < w.size(); ++i) w[i] = static_cast<T>(rng.uniform(lo, hi));
}

}  // namespace init
}  // namespace fastnn
