#pragma once
/// \file ops.hpp
/// Ops<T, Cpu>: Eigen implementations of the device contract (backend/ops.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "fastnn/backend/cpu/gemm.hpp"
#include "fastnn/backend/cpu/x86_kernels.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/activation.hpp"

namespace fastnn {

template <class T>
struct Ops<T, Cpu> {
  using Tn = Tensor<T, Cpu>;

  /// On the path of cpu_isa() (backend/cpu/gemm.hpp); `p` BF16: bfloat16 products; threads >= 2: a large
  /// product on two threads.
  static void gemm(bool ta, bool tb, T alpha, const Tn& A, const Tn& B, T beta, Tn& C,
                   Precision p = Precision::F32, int threads = 1) {
    const Index ar = A.matrix().rows(), ac = A.matrix().cols(), br = B.matrix().rows(), bc = B.matrix().cols();
    const Index M = ta ? ac : ar, K = ta ? ar : ac, N = tb ? br : bc;
    if ((tb ? bc : br) != K || C.matrix().rows() != M || C.matrix().cols() != N)
      throw ShapeError("gemm: op(A) " + std::to_string(M) + "x" + std::to_string(K) + ", op(B) " +
                       std::to_string(tb ? bc : br) + "x" + std::to_string(N) + ", C " +
                       std::to_string(C.matrix().rows()) + "x" + std::to_string(C.matrix().cols()));
    cpu_gemm(ta, tb, M, N, K, alpha, A.data(), ac, B.data(), bc, beta, C.data(), N, p, threads);
  }

  static void add_row_vector(Tn& Y, const Tn& b) {
    Y.matrix().rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b.data(), b.size());
  }

  static void accumulate_column_sums(const Tn& dY, Tn& db) {
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db.data(), db.size()) += dY.matrix().colwise().sum();
  }

  static void activate(Activation a, Tn& Y) {
    auto y = Y.array();
    switch (a) {
      case Activation::Linear: break;
      case Activation::Relu: y = y.max(T(0)); break;
      case Activation::Tanh: y = y.tanh(); break;
      case Activation::Sigmoid: y = T(1) / (T(1) + (-y).exp()); break;
      case Activation::HardSigmoid: y = (T(0.2) * y + T(0.5)).max(T(0)).min(T(1)); break;
      case Activation::Gelu:
#if FASTNN_X86_DISPATCH
        if constexpr (std::is_same<T, float>::value) {
          if (auto* f = detail::path_kernel(&detail::x86_avx2::gelu_forward, &detail::x86_avx512::gelu_forward)) {
            f(Y.size(), Y.data());
            break;
          }
        }
#endif
        for (Index i = 0; i < Y.size(); ++i) {
          const T v = Y.data()[i];
          Y.data()[i] = T(0.5) * v * std::erfc(v * T(-0.70710678118654752440));
        }
        break;
      case Activation::Swish: y = y / (T(1) + (-y).exp()); break;
      case Activation::Softplus: y = y.max(T(0)) + (-y.abs()).exp().log1p(); break;
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
      case Activation::Softplus: d *= T(1) - (-y).exp(); break;  // sigmoid(x) = 1 - exp(-softplus(x))
      case Activation::Gelu:
      case Activation::Swish:
        throw ArgumentError("activation_backward: " + to_string(a) +
                            "'s derivative needs its input (activation_backward_input)");
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

  /// dX *= a'(X) from the pre-activation X (every element-wise activation; gelu and swish need it):
  /// gelu' = Phi(x) + x phi(x), swish' = s (1 + x (1 - s)) with s = sigmoid(x).
  static void activation_backward_input(Activation a, const Tn& X, Tn& dX) {
    if (X.size() != dX.size())
      throw ShapeError("activation_backward_input: " + X.shape().str() + " and " + dX.shape().str());
    if (a == Activation::Softmax) throw ArgumentError("activation_backward_input: softmax is not element-wise");
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (a == Activation::Gelu)
        if (auto* f = detail::path_kernel(&detail::x86_avx2::gelu_backward, &detail::x86_avx512::gelu_backward))
          return f(X.size(), X.data(), dX.data());
    }
#endif
    const T* x = X.data();
    T* d = dX.data();
    for (Index i = 0; i < X.size(); ++i) {
      const T v = x[i];
      T g = T(1);
      switch (a) {
        case Activation::Linear: break;
        case Activation::Relu: g = v > T(0) ? T(1) : T(0); break;
        case Activation::Tanh: g = T(1) - std::tanh(v) * std::tanh(v); break;
        case Activation::Sigmoid: {
          const T s = T(1) / (T(1) + std::exp(-v));
          g = s * (T(1) - s);
          break;
        }
        case Activation::HardSigmoid: g = (v > T(-2.5) && v < T(2.5)) ? T(0.2) : T(0); break;
        case Activation::Gelu:
          g = T(0.5) * std::erfc(v * T(-0.70710678118654752440)) +
              v * T(0.39894228040143267794) * std::exp(T(-0.5) * v * v);
          break;
        case Activation::Swish: {
          const T s = T(1) / (T(1) + std::exp(-v));
          g = s * (T(1) + v * (T(1) - s));
          break;
        }
        case Activation::Softplus: g = T(1) / (T(1) + std::exp(-v)); break;
        case Activation::Softmax: break;
      }
      d[i] *= g;
    }
  }

  /// dst[j, ...] = src[idx[begin + j], ...] for j < count (rows of any element type).
  template <class U>
  static void gather_rows(const Tensor<U, Cpu>& src, const Tensor<std::int32_t, Cpu>& idx, Index begin, Index count,
                          Tensor<U, Cpu>& dst) {
    const Index inner = src.shape().inner();
    const std::size_t bytes = sizeof(U) * static_cast<std::size_t>(inner);
    for (Index j = 0; j < count; ++j) {
      const Index r = idx.data()[begin + j];
      if (bytes) std::memcpy(dst.data() + j * inner, src.data() + r * inner, bytes);
    }
  }

  /// y[i, :] = table[ids[i], :] for every element i of ids (token ids held as T, already
  /// checked to be integers in [0, rows of table)).
  static void embedding_lookup(const Tn& table, const Tn& ids, Tn& y) {
    const Index E = table.shape().inner();
    for (Index i = 0; i < ids.size(); ++i) {
      const Index r = static_cast<Index>(ids.data()[i]);
      std::copy(table.data() + r * E, table.data() + (r + 1) * E, y.data() + i * E);
    }
  }
  /// dtable[ids[i], :] += dy[i, :] for every element i of ids.
  static void embedding_grad(const Tn& dy, const Tn& ids, Tn& dtable) {
    const Index E = dtable.shape().inner();
    for (Index i = 0; i < ids.size(); ++i) {
      const Index r = static_cast<Index>(ids.data()[i]);
      ArrayMap<T>(dtable.data() + r * E, E) += ConstArrayMap<T>(dy.data() + i * E, E);
    }
  }

  // ---- losses: y viewed as rows [R, K] over its last axis (see backend/ops.hpp) -------------

  /// Softmax cross-entropy with class indices: row loss lse(z) - z[label];
  /// dz = s (softmax(z) - onehot(label)).
  static void softmax_xent(const Tn& logits, const Tensor<std::int32_t, Cpu>& labels, Tn* dlogits, T s,
                           Tensor<double, Cpu>& stats, Index slot) {
    const Index k = last(logits), n = logits.size() / k;
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
      Row r(logits.data() + i * k, k);
      const T m = r.maxCoeff();
      const T lse = m + std::log((r.array() - m).exp().sum());
      const Index y = labels.data()[i];
      loss += static_cast<double>(lse - r(y));
      if (dlogits) {
        T* d = dlogits->data() + i * k;
        for (Index j = 0; j < k; ++j) d[j] = s * std::exp(r(j) - lse);
        d[y] -= s;
      }
    }
    stats.data()[slot] += loss;
  }

  /// Softmax cross-entropy with target distributions t: row loss sum_k t_k (lse(z) - z_k);
  /// dz = s (softmax(z) sum(t) - t).
  static void softmax_xent_dense(const Tn& logits, const Tn& targets, Tn* dlogits, T s, Tensor<double, Cpu>& stats,
                                 Index slot) {
    const Index k = last(logits), n = logits.size() / k;
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
      Row r(logits.data() + i * k, k);
      Row t(targets.data() + i * k, k);
      const T m = r.maxCoeff();
      const T lse = m + std::log((r.array() - m).exp().sum());
      const T tsum = t.sum();
      loss += static_cast<double>(lse * tsum - t.dot(r));
      if (dlogits) {
        T* d = dlogits->data() + i * k;
        for (Index j = 0; j < k; ++j) d[j] = s * (std::exp(r(j) - lse) * tsum - t(j));
      }
    }
    stats.data()[slot] += loss;
  }

  /// Sigmoid cross-entropy on logits: row loss mean_k max(z,0) - z t + log(1 + exp(-|z|));
  /// dz = s (sigmoid(z) - t) / K.
  static void sigmoid_xent(const Tn& logits, const Tn& targets, Tn* dlogits, T s, Tensor<double, Cpu>& stats,
                           Index slot) {
    const Index k = last(logits), n = logits.size();
    const T* z = logits.data();
    const T* t = targets.data();
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
      loss += static_cast<double>(std::max(z[i], T(0)) - z[i] * t[i] + std::log1p(std::exp(-std::abs(z[i]))));
      if (dlogits) dlogits->data()[i] = s * (T(1) / (T(1) + std::exp(-z[i])) - t[i]) / static_cast<T>(k);
    }
    stats.data()[slot] += loss / static_cast<double>(k);
  }

  /// Element-wise losses (PointwiseLoss): row loss mean_k f(y, t); dy = s f'(y, t) / K.
  static void pointwise_loss(PointwiseLoss kind, const Tn& y, const Tn& targets, Tn* dy, T s,
                             Tensor<double, Cpu>& stats, Index slot) {
    const Index k = last(y), n = y.size();
    const T* p = y.data();
    const T* t = targets.data();
    const T g = s / static_cast<T>(k);
    const T eps = static_cast<T>(kProbabilityEpsilon);
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
      const T e = p[i] - t[i];
      T f = 0, d = 0;
      switch (kind) {
        case PointwiseLoss::MeanSquaredError: f = e * e; d = T(2) * e; break;
        case PointwiseLoss::MeanAbsoluteError: f = std::abs(e); d = static_cast<T>((e > T(0)) - (e < T(0))); break;
        case PointwiseLoss::BinaryCrossentropy: {
          const T q = std::min(std::max(p[i], eps), T(1) - eps);
          f = -(t[i] * std::log(q) + (T(1) - t[i]) * std::log(T(1) - q));
          d = (p[i] > eps && p[i] < T(1) - eps) ? (q - t[i]) / (q * (T(1) - q)) : T(0);
          break;
        }
      }
      loss += static_cast<double>(f);
      if (dy) dy->data()[i] = g * d;
    }
    stats.data()[slot] += loss / static_cast<double>(k);
  }

  // ---- metrics --------------------------------------------------------------------------------

  /// Sparse categorical accuracy: adds the number of rows whose first arg-max is the label.
  static void metric_labels(const Tn& y, const Tensor<std::int32_t, Cpu>& labels, Tensor<double, Cpu>& stats,
                            Index slot) {
    const Index k = last(y), n = y.size() / k;
    double hits = 0;
    for (Index i = 0; i < n; ++i) {
      Index arg = 0;
      Row(y.data() + i * k, k).maxCoeff(&arg);
      hits += (arg == labels.data()[i]) ? 1.0 : 0.0;
    }
    stats.data()[slot] += hits;
  }

  /// Metrics against float targets (MetricKind), summed over rows.
  static void metric_targets(MetricKind kind, const Tn& y, const Tn& targets, T threshold, Tensor<double, Cpu>& stats,
                             Index slot) {
    const Index k = last(y), n = y.size() / k;
    double sum = 0;
    for (Index i = 0; i < n; ++i) {
      Row r(y.data() + i * k, k);
      Row t(targets.data() + i * k, k);
      switch (kind) {
        case MetricKind::CategoricalAccuracy: {
          Index a = 0, b = 0;
          r.maxCoeff(&a);
          t.maxCoeff(&b);
          sum += (a == b) ? 1.0 : 0.0;
          break;
        }
        case MetricKind::BinaryAccuracy: {
          double hits = 0;
          for (Index j = 0; j < k; ++j) hits += ((r(j) > threshold ? T(1) : T(0)) == t(j)) ? 1.0 : 0.0;
          sum += hits / static_cast<double>(k);
          break;
        }
        case MetricKind::MeanAbsoluteError:
          sum += static_cast<double>((r - t).cwiseAbs().sum()) / static_cast<double>(k);
          break;
      }
    }
    stats.data()[slot] += sum;
  }

  /// Keras SGD: v = momentum v - lr g; p += momentum v - lr g (Nesterov) or p += v; lr = rate[0].
  static void sgd_update(Tn& p, const Tn& g, Tn& v, const Tn& rate, T momentum, bool nesterov) {
    const T lr = scalar(rate, "sgd_update");
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (auto* f = detail::path_kernel(&detail::x86_avx2::sgd_update, &detail::x86_avx512::sgd_update))
        return f(p.size(), p.data(), g.data(), momentum == T(0) ? nullptr : v.data(), lr, momentum, nesterov);
    }
#endif
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
  /// lr_t = rate[0] = lr sqrt(1 - b2^t) / (1 - b1^t) computed by the caller.
  static void adam_update(Tn& p, const Tn& g, Tn& m, Tn& v, const Tn& rate, T b1, T b2, T eps) {
    const T lr_t = scalar(rate, "adam_update");
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (auto* f = detail::path_kernel(&detail::x86_avx2::adam_update, &detail::x86_avx512::adam_update))
        return f(p.size(), p.data(), g.data(), m.data(), v.data(), lr_t, b1, b2, eps);
    }
#endif
    auto ga = g.array();
    m.array() = b1 * m.array() + (T(1) - b1) * ga;
    v.array() = b2 * v.array() + (T(1) - b2) * ga.square();
    p.array() -= lr_t * m.array() / (v.array().sqrt() + eps);
  }
  /// RMSprop: a = rho a + (1 - rho) g^2; p -= lr g / (sqrt(a) + eps); lr = rate[0].
  static void rmsprop_update(Tn& p, const Tn& g, Tn& a, const Tn& rate, T rho, T eps) {
    const T lr = scalar(rate, "rmsprop_update");
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (auto* f = detail::path_kernel(&detail::x86_avx2::rmsprop_update, &detail::x86_avx512::rmsprop_update))
        return f(p.size(), p.data(), g.data(), a.data(), lr, rho, eps);
    }
#endif
    auto ga = g.array();
    a.array() = rho * a.array() + (T(1) - rho) * ga.square();
    p.array() -= lr * ga / (a.array().sqrt() + eps);
  }

  // ---- gradient transforms (optim/optimizer.hpp) ----------------------------------------------
  /// stats[slot] += sum of g^2, summed in double in index order.
  static void sum_squares(const Tn& g, Tensor<double, Cpu>& stats, Index slot) {
    double s = 0;
    const T* x = g.data();
    for (Index i = 0; i < g.size(); ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    stats.data()[slot] += s;
  }
  /// NonFiniteError naming `option` and the batch when one of the squared norms stats[0, count) is not finite.
  static void check_norms_finite(const Tensor<double, Cpu>& stats, Index count, const char* option, long batch) {
    for (Index i = 0; i < count; ++i)
      if (!std::isfinite(stats.data()[i]))
        throw NonFiniteError(std::string(option) + ": the gradient norm is " +
                             format_number(std::sqrt(stats.data()[i])) + " at batch " + std::to_string(batch));
  }
  /// g *= clip / max(||g||, clip) with ||g||^2 = stats[slot] (a norm within clip leaves g as it is).
  static void clip_by_norm(Tn& g, const Tensor<double, Cpu>& stats, Index slot, T clip, long) {
    const double norm = std::sqrt(stats.data()[slot]);
    if (!(norm > static_cast<double>(clip))) return;
    const T f = static_cast<T>(static_cast<double>(clip) / norm);
    g.array() *= f;
  }
  /// g = min(max(g, -clip), clip).
  static void clip_by_value(Tn& g, T clip) { g.array() = g.array().max(-clip).min(clip); }
  static void scale(Tn& t, T s) { t.array() *= s; }
  /// t *= s[0] (a one-element tensor: a per-step scalar of the optimizer).
  static void scale(Tn& t, const Tn& s) { t.array() *= scalar(s, "scale"); }
  /// y += a x.
  static void axpy(T a, const Tn& x, Tn& y) { y.array() += a * x.array(); }
  /// y = a * b elementwise (y may be a or b).
  static void mul(const Tn& a, const Tn& b, Tn& y) { y.array() = a.array() * b.array(); }
  /// y = max(a, b) elementwise (min when not `largest`; y may be a or b).
  static void extremum(bool largest, const Tn& a, const Tn& b, Tn& y) {
    if (largest) y.array() = a.array().max(b.array());
    else y.array() = a.array().min(b.array());
  }
  /// The gradient of an elementwise max / min y for one of its inputs x: dx = dy where x == y and `taken` is 0
  /// (no earlier input took the position), else 0; sets `taken` to 1 where it takes the gradient.
  static void extremum_grad(const Tn& x, const Tn& y, const Tn& dy, Tn& taken, Tn& dx) {
    const T* xp = x.data();
    const T* yp = y.data();
    const T* gp = dy.data();
    T* tp = taken.data();
    T* dp = dx.data();
    for (Index i = 0; i < x.size(); ++i) {
      const bool take = tp[i] == T(0) && xp[i] == yp[i];
      dp[i] = take ? gp[i] : T(0);
      if (take) tp[i] = T(1);
    }
  }
  /// For r < rows: dst[r * dst_stride + dst_off + k] = (or += with `accumulate`) src[r * src_stride + src_off + k],
  /// k < width (a concatenation's or split's blocks).
  static void copy_block(Index rows, Index width, const Tn& src, Index src_stride, Index src_off, Tn& dst,
                         Index dst_stride, Index dst_off, bool accumulate) {
    for (Index r = 0; r < rows; ++r) {
      const T* a = src.data() + r * src_stride + src_off;
      T* b = dst.data() + r * dst_stride + dst_off;
      if (accumulate)
        for (Index k = 0; k < width; ++k) b[k] += a[k];
      else
        std::copy(a, a + width, b);
    }
  }

  static bool all_finite(const Tn& t) { return t.array().isFinite().all(); }

  // ---- the non-finite guard: the CPU checks every step at once ---------------------------------
  static void reset_nonfinite() {}
  static bool step_finite(const Tensor<double, Cpu>& stats, Index slot, const Tn& grads, long) {
    return std::isfinite(stats.data()[slot]) && all_finite(grads);
  }
  static void throw_if_nonfinite(int) {}

  /// out[i] = in[i] * scale where hash::bits32(key, i) >= threshold, else 0 (Dropout's mask).
  static void dropout(const Tn& in, Tn& out, std::uint64_t key, std::uint32_t threshold, T scale) {
    if (in.size() != out.size()) throw ShapeError("dropout: " + in.shape().str() + " and " + out.shape().str());
    detail::apply_dropout(in.size(), key, 0, threshold, scale, in.data(), out.data());
  }

  static void fill(Tn& t, T v) { t.array().setConstant(v); }
  static void synchronize() {}

 private:
  using Row = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;
  static Index last(const Tn& t) { return t.rank() == 0 ? 1 : t.dim(t.rank() - 1); }
  /// The value of a one-element scalar tensor (ShapeError naming `what` otherwise).
  static T scalar(const Tn& s, const char* what) {
    if (s.size() != 1) throw ShapeError(std::string(what) + ": expected a one-element scalar, got " + s.shape().str());
    return s.data()[0];
  }
};

}  // namespace fastnn
