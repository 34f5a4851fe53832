#pragma once
/// \file ops.hpp
/// Ops<T, Cpu>: Eigen implementations of the primitives listed in backend/ops.hpp.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/layers/activation.hpp"

namespace fastnn {

template <class T>
struct Ops<T, Cpu> {
  using Tn = Tensor<T, Cpu>;

  static void gemm(bool ta, bool tb, T alpha, const Tn& A, const Tn& B, T beta, Tn& C) {
    auto a = A.matrix();
    auto b = B.matrix();
    auto c = C.matrix();
    if (beta == T(0)) c.setZero();
    else if (beta != T(1)) c *= beta;
    if (!ta && !tb) c.noalias() += alpha * a * b;
    else if (ta && !tb) c.noalias() += alpha * a.transpose() * b;
    else if (!ta && tb) c.noalias() += alpha * a * b.transpose();
    else c.noalias() += alpha * a.transpose() * b.transpose();
  }

  static void add_row_vector(Tn& Y, const Tn& b) {
    Y.matrix().rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b.data(), b.size());
  }

  static void accumulate_column_sums(const Tn& dY, Tn& db) {
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db.data(), db.size()) += dY.matrix().colwise().sum();
  }

  static T hard_sigmoid(T x) { return std::min(T(1), std::max(T(0), T(0.2) * x + T(0.5))); }

  static void activate(Activation a, Tn& Y) {
    auto y = Y.array();
    switch (a) {
      case Activation::Linear: break;
      case Activation::Relu: y = y.max(T(0)); break;
      case Activation::Tanh: y = y.tanh(); break;
      case Activation::Sigmoid: y = T(1) / (T(1) + (-y).exp()); break;
      case Activation::HardSigmoid: y = (T(0.2) * y + T(0.5)).max(T(0)).min(T(1)); break;
      case Activation::Softmax: {
        auto m = Y.matrix();
        for (Index i = 0; i < m.rows(); ++i) {
          auto r = m.row(i).array();
          r = (r - r.maxCoeff()).exp();
          r /= r.sum();
        }
        break;
      }
    }
  }

  static void activation_backward(Activation a, const Tn& Y, Tn& dY) {
    auto y = Y.array();
    auto d = dY.array();
    switch (a) {
      case Activation::Linear: break;
      case Activation::Relu: d = (y > T(0)).select(d, T(0)); break;
      case Activation::Tanh: d *= T(1) - y * y; break;
      case Activation::Sigmoid: d *= y * (T(1) - y); break;
      case Activation::HardSigmoid: d = (y > T(0) && y < T(1)).select(d * T(0.2), T(0)); break;
      case Activation::Softmax: {
        auto ym = Y.matrix();
        auto dm = dY.matrix();
        for (Index i = 0; i < ym.rows(); ++i) {
          T dot = ym.row(i).dot(dm.row(i));
          dm.row(i) = (ym.row(i).array() * (dm.row(i).array() - dot)).matrix();
        }
        break;
      }
    }
  }

  /// X[j, :] = scale * src[idx[begin + j], :] for j < count; labels[j] = lsrc[idx[begin + j]].
  static void gather_scaled(const Tensor<std::uint8_t, Cpu>& src, const Tensor<std::int32_t, Cpu>& idx,
                            Index begin, Index count, T scale, Tn& X,
                            const Tensor<std::int32_t, Cpu>& lsrc, Tensor<std::int32_t, Cpu>& labels) {
    const Index inner = src.shape().inner();
    for (Index j = 0; j < count; ++j) {
      const Index r = idx.data()[begin + j];
      const std::uint8_t* s = src.data() + r * inner;
      T* x = X.data() + j * inner;
      for (Index k = 0; k < inner; ++k) x[k] = scale * static_cast<T>(s[k]);
      labels.data()[j] = lsrc.data()[r];
    }
  }

  /// Fused, numerically stable softmax cross-entropy with integer labels (see backend/ops.hpp).
  static void softmax_xent(const Tn& logits, const Tensor<std::int32_t, Cpu>& labels, Tn* dlogits,
                           T grad_scale, Tensor<double, Cpu>& stats) {
    auto z = logits.matrix();
    const Index n = z.rows(), k = z.cols();
    double loss = 0, correct = 0;
    for (Index i = 0; i < n; ++i) {
      auto r = z.row(i);
      Index arg = 0;
      T m = r.maxCoeff(&arg);
      T lse = m + std::log((r.array() - m).exp().sum());
      const Index y = labels.data()[i];
      loss += static_cast<double>(lse - r(y));
      correct += (arg == y) ? 1.0 : 0.0;
      if (dlogits) {
        T* d = dlogits->data() + i * k;
        for (Index j = 0; j < k; ++j) d[j] = grad_scale * std::exp(r(j) - lse);
        d[y] -= grad_scale;
      }
    }
    stats.data()[0] += loss;
    stats.data()[1] += correct;
  }

  /// Keras SGD: v = momentum v - lr g; p += momentum v - lr g (Nesterov) or p += v.
  static void sgd_update(Tn& p, const Tn& g, Tn& v, T lr, T momentum, bool nesterov) {
    auto pa = p.array();
    auto ga = g.array();
    auto va = v.array();
    if (momentum == T(0)) {
      pa -= lr * ga;
      return;
    }
    va = momentum * va - lr * ga;
    if (nesterov) pa += momentum * va - lr * ga;
    else pa += va;
  }
  /// Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr_t m / (sqrt(v) + eps), with
  /// lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) computed by the caller.
  static void adam_update(Tn& p, const Tn& g, Tn& m, Tn& v, T lr_t, T b1, T b2, T eps) {
    auto ga = g.array();
    m.array() = b1 * m.array() + (T(1) - b1) * ga;
    v.array() = b2 * v.array() + (T(1) - b2) * ga.square();
    p.array() -= lr_t * m.array() / (v.array().sqrt() + eps);
  }
  /// RMSprop: a = rho a + (1 - rho) g^2; p -= lr g / (sqrt(a) + eps).
  static void rmsprop_update(Tn& p, const Tn& g, Tn& a, T lr, T rho, T eps) {
    auto ga = g.array();
    a.array() = rho * a.array() + (T(1) - rho) * ga.square();
    p.array() -= lr * ga / (a.array().sqrt() + eps);
  }

  static bool all_finite(const Tn& t) { return t.array().isFinite().all(); }

  /// out[i] = in[i] * scale where hash::bits32(key, i) >= threshold, else 0 (Dropout's mask).
  static void dropout(const Tn& in, Tn& out, std::uint64_t key, std::uint32_t threshold, T scale) {
    if (in.size() != out.size()) throw ShapeError("dropout: " + in.shape().str() + " and " + out.shape().str());
    const T* x = in.data();
    T* y = out.data();
    for (Index i = 0; i < in.size(); ++i)
      y[i] = hash::bits32(key, static_cast<std::uint64_t>(i)) >= threshold ? x[i] * scale : T(0);
  }

  static void fill(Tn& t, T v) { t.array().setConstant(v); }
  static void synchronize() {}
};

}  // namespace fastnn
