#pragma once
/// \file transformer.hpp
/// TransformerOps<T, Cpu>: the CPU primitives of the Transformer layers (the contract is in
/// backend/transformer.hpp). Plain loops over contiguous rows that the compiler vectorises without
/// -ffast-math: the reductions run in kLanes independent partial results (a vector register's
/// worth), combined at the end of each row.
///
/// Row moments: one pass per row, Welford's update in kLanes lanes (lane j takes the elements
/// j, j + kLanes, ...), the lanes merged pairwise with Chan et al.'s formula for two partitions,
/// then the tail elements by Welford's update. Welford's update is numerically stable (no
/// subtraction of two large sums), so a row with a large mean and a small spread keeps its variance.
/// Nothing is allocated: the layer owns mean and rstd. MultiHeadAttention's computation is
/// detail::CpuAttention (backend/cpu/attention.hpp).

#include <cmath>
#include <string>

#include "fastnn/backend/cpu/attention.hpp"
#include "fastnn/backend/transformer.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

template <class T>
struct TransformerOps<T, Cpu> {
  using Tn = Tensor<T, Cpu>;
  static constexpr int kLanes = 8;
  /// MultiHeadAttention's computation (backend/cpu/attention.hpp).
  using Attention = detail::CpuAttention<T>;

  /// Mean and biased variance of r[0, c), in one pass (see the file comment).
  static void row_moments(const T* r, Index c, T& mean, T& var) {
    T mu[kLanes] = {}, m2[kLanes] = {};
    const Index blocks = c / kLanes;
    for (Index b = 0; b < blocks; ++b) {
      const T inv = T(1) / static_cast<T>(b + 1);
      const T* p = r + b * kLanes;
      for (int j = 0; j < kLanes; ++j) {
        const T d = p[j] - mu[j];
        mu[j] += d * inv;
        m2[j] += d * (p[j] - mu[j]);
      }
    }
    T n = static_cast<T>(blocks);
    if (blocks > 0) {
      for (int w = kLanes / 2; w >= 1; w /= 2) {  // two partitions of n elements each
        for (int j = 0; j < w; ++j) {
          const T d = mu[j + w] - mu[j];
          mu[j] += d / 2;
          m2[j] += m2[j + w] + d * d * n / 2;
        }
        n *= 2;
      }
    }
    T m = mu[0], q = m2[0];
    for (Index k = blocks * kLanes; k < c; ++k) {
      n += 1;
      const T d = r[k] - m;
      m += d / n;
      q += d * (r[k] - m);
    }
    mean = m;
    var = q / static_cast<T>(c);
  }

  static void layer_norm_forward(const Tn& x, T eps, const Tn* gamma, const Tn* beta, Tn& y, Tn& mean, Tn& rstd) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check(y.size() == x.size() && mean.size() == m && rstd.size() == m && (!gamma || gamma->size() == c) &&
              (!beta || beta->size() == c),
          "layer_norm_forward", x);
    const T* g = gamma ? gamma->data() : nullptr;
    const T* b = beta ? beta->data() : nullptr;
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      T* o = y.data() + i * c;
      T mu, var;
      row_moments(r, c, mu, var);
      const T rs = T(1) / std::sqrt(var + eps);
      mean[i] = mu;
      rstd[i] = rs;
      if (g && b) for (Index k = 0; k < c; ++k) o[k] = (r[k] - mu) * rs * g[k] + b[k];
      else if (g) for (Index k = 0; k < c; ++k) o[k] = (r[k] - mu) * rs * g[k];
      else if (b) for (Index k = 0; k < c; ++k) o[k] = (r[k] - mu) * rs + b[k];
      else for (Index k = 0; k < c; ++k) o[k] = (r[k] - mu) * rs;
    }
  }

  static void layer_norm_backward(const Tn& x, const Tn& mean, const Tn& rstd, const Tn* gamma, const Tn& dy,
                                  Tn* dgamma, Tn* dbeta, Tn* dx) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check(dy.size() == x.size() && mean.size() == m && rstd.size() == m && (!dx || dx->size() == x.size()) &&
              (!gamma || gamma->size() == c) && (!dgamma || dgamma->size() == c) && (!dbeta || dbeta->size() == c),
          "layer_norm_backward", x);
    const T* g = gamma ? gamma->data() : nullptr;
    T* dg = dgamma ? dgamma->data() : nullptr;
    T* db = dbeta ? dbeta->data() : nullptr;
    const T inv_c = T(1) / static_cast<T>(c);
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      const T* d = dy.data() + i * c;
      const T mu = mean[i], rs = rstd[i];
      if (dg)
        for (Index k = 0; k < c; ++k) dg[k] += d[k] * (r[k] - mu) * rs;
      if (db)
        for (Index k = 0; k < c; ++k) db[k] += d[k];
      if (!dx) continue;
      // sums of g = dy gamma and of g xhat over the row, in kLanes partial sums
      T s1[kLanes] = {}, s2[kLanes] = {};
      const Index full = c / kLanes * kLanes;
      for (Index k0 = 0; k0 < full; k0 += kLanes)
        for (int j = 0; j < kLanes; ++j) {
          const Index k = k0 + j;
          const T gk = g ? d[k] * g[k] : d[k];
          s1[j] += gk;
          s2[j] += gk * (r[k] - mu) * rs;
        }
      T a = 0, bsum = 0;
      for (int j = 0; j < kLanes; ++j) {
        a += s1[j];
        bsum += s2[j];
      }
      for (Index k = full; k < c; ++k) {
        const T gk = g ? d[k] * g[k] : d[k];
        a += gk;
        bsum += gk * (r[k] - mu) * rs;
      }
      const T mg = a * inv_c, mgx = bsum * inv_c;
      T* o = dx->data() + i * c;
      if (g) for (Index k = 0; k < c; ++k) o[k] = rs * (d[k] * g[k] - mg - (r[k] - mu) * rs * mgx);
      else for (Index k = 0; k < c; ++k) o[k] = rs * (d[k] - mg - (r[k] - mu) * rs * mgx);
    }
  }

 private:
  static void check(bool ok, const char* what, const Tn& x) {
    if (!ok) throw ShapeError(std::string(what) + ": tensor sizes do not match input " + x.shape().str());
  }
};

}  // namespace fastnn
