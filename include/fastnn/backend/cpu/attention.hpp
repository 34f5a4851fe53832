#pragma once
/// \file attention.hpp
/// The CPU computation of MultiHeadAttention (layers/attention.hpp): `detail::CpuAttention<T>`.
///
/// Shapes: query q [B, Tq, Fq], key k [B, Tk, Fk], value v [B, Tk, Fv]; H heads, key_dim kd,
/// value_dim vd, output width O. Kernels are row-major [F, H * kd] (Keras's [F, H, kd]) and
/// [H * vd, O] (Keras's [H, vd, O]).
///
/// Forward:
///   Q = (q Wq + bq) / sqrt(kd)   [B Tq, H kd]     one GEMM over the whole batch
///   K = k Wk + bk, V = v Wv + bv [B Tk, H kd], [B Tk, H vd]
///   per sample b and head h, on one [Tq, Tk] workspace per thread (one thread, or two: set_threads):
///     S = Q_bh K_bh^T, P = masked softmax of S's rows, Pd = dropout(P), O_bh = Pd V_bh
///   y = O Wo + bo, and y = 0 at the padded query steps.
/// The softmax of row i runs over the keys j < n_i, n_i = key length (min i + 1 when causal); the
/// others get probability 0. Its log-sum-exp is kept per row ([B, H, Tq]), so that backward()
/// recomputes P from S instead of storing B H [Tq, Tk] matrices: one score matrix and one gradient
/// matrix per thread exist at any time. Padded query rows are all zero, so they take no gradient.
/// Dropout keeps element ((b H + h) Tq + i) Tk + j of P iff hash::bits32(key, index) >= threshold
/// (the rule of Ops::dropout), recomputed in backward().
///
/// Every product runs on cpu_gemm (backend/cpu/gemm.hpp); workspaces are tensors that grow to the
/// largest batch and are then reused, so a step after the first allocates nothing. The call's structs
/// (AttentionDims, AttentionWeights, AttentionGrads, AttentionMask) are in backend/transformer.hpp; this
/// class is TransformerOps<T, Cpu>::Attention (backend/cpu/transformer.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>

#include "fastnn/backend/cpu/gemm.hpp"
#include "fastnn/backend/transformer.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/thread.hpp"

namespace fastnn {
namespace detail {

/// r[0, n) = exp(r - shift), n >= 1; returns the sum of the results. Float on an x86 path: vectorised (vexp2, about
/// 1.3 ulp); otherwise std::exp.
template <class T>
T exp_shifted(T* r, Index n, T shift) {
#if FASTNN_X86_DISPATCH
  if constexpr (std::is_same<T, float>::value) {
    if (auto* f = path_kernel(&x86_avx2::exp_shifted, &x86_avx512::exp_shifted)) return f(n, r, shift);
  }
#endif
  T sum = 0;
  for (Index j = 0; j < n; ++j) {
    r[j] = std::exp(r[j] - shift);
    sum += r[j];
  }
  return sum;
}

/// Numerically stable softmax of r[0, n) in place (n >= 1): subtracts the row's maximum before exp. Returns the
/// maximum and the sum of the exponentials, whose log-sum-exp the backward pass keeps.
template <class T>
std::pair<T, T> softmax_in_place(T* r, Index n) {
  T mx = r[0];
  for (Index j = 1; j < n; ++j) mx = std::max(mx, r[j]);
  const T sum = exp_shifted(r, n, mx);
  const T rs = T(1) / sum;
#if FASTNN_X86_DISPATCH
  if constexpr (std::is_same<T, float>::value) {
    if (auto* f = path_kernel(&x86_avx2::scale_row, &x86_avx512::scale_row)) {
      f(n, r, rs);
      return {mx, sum};
    }
  }
#endif
  for (Index j = 0; j < n; ++j) r[j] *= rs;
  return {mx, sum};
}

/// MultiHeadAttention on the CPU (see the file comment).
template <class T>
class CpuAttention {
  using Tn = Tensor<T, Cpu>;
  struct Scratch {
    Tn s, gs;
  };

 public:
  /// With n >= 2, the (sample, head) pairs are split between the calling thread and one worker thread.
  void set_threads(int n) { threads_ = n < 1 ? 1 : n; }

  /// Runs the forward pass (see the file comment) into y [B, Tq, O], keeping what backward() needs.
  void forward(const AttentionDims& d, const AttentionWeights<T>& w, const AttentionMask& m, const T* q, const T* k,
               const T* v, T* y, Precision p) {
    d_ = d;
    m_ = m;
    const Index hk = d.heads * d.key_dim, hv = d.heads * d.value_dim;
    qp_.resize(Shape{d.batch * d.tq, hk});
    kp_.resize(Shape{d.batch * d.tk, hk});
    vp_.resize(Shape{d.batch * d.tk, hv});
    o_.resize(Shape{d.batch * d.tq, hv});
    lse_.resize(Shape{d.batch * d.heads * d.tq});
    for (int i = 0; i < (threads_ >= 2 ? 2 : 1); ++i) scratch_[i].s.resize(Shape{d.tq, d.tk});
    const T inv = T(1) / std::sqrt(static_cast<T>(d.key_dim));
    project(d.batch * d.tq, d.fq, hk, q, w.wq, w.bq, qp_.data(), p);
    qp_.array() *= inv;
    project(d.batch * d.tk, d.fk, hk, k, w.wk, w.bk, kp_.data(), p);
    project(d.batch * d.tk, d.fv, hv, v, w.wv, w.bv, vp_.data(), p);
    run_pairs(false, p);
    project(d.batch * d.tq, hv, d.out, o_.data(), w.wo, w.bo, y, p);
    zero_padded_queries(y, d.out);
  }

  /// The attention probabilities of the last forward() [B, H, Tq, Tk] into `out` (before dropout; 0 for the masked
  /// keys and on padded query rows), recomputed from the kept projections and log-sum-exps.
  void scores(T* out) {
    Scratch& sc = scratch_[0];
    sc.s.resize(Shape{d_.tq, d_.tk});
    for (Index b = 0; b < d_.batch; ++b)
      for (Index h = 0; h < d_.heads; ++h) {
        scores(b, h, sc);
        probabilities(b, h, sc);
        std::copy(sc.s.data(), sc.s.data() + sc.s.size(), out + (b * d_.heads + h) * d_.tq * d_.tk);
      }
  }

  /// Given dy [B, Tq, O], accumulates the weight gradients into g and writes the input gradients dq, dk, dv
  /// (each may be null). With `dk == dv` (key and value the same tensor) both contributions are summed there.
  void backward(const AttentionWeights<T>& w, const AttentionGrads<T>& g, const T* q, const T* k, const T* v,
                const T* dy, T* dq, T* dk, T* dv, Precision p) {
    const AttentionDims& d = d_;
    const Index hk = d.heads * d.key_dim, hv = d.heads * d.value_dim;
    const Index nq = d.batch * d.tq, nk = d.batch * d.tk;
    dy_.resize(Shape{nq, d.out});
    std::copy(dy, dy + nq * d.out, dy_.data());
    zero_padded_queries(dy_.data(), d.out);
    dqp_.resize(Shape{nq, hk});
    dkp_.resize(Shape{nk, hk});
    dvp_.resize(Shape{nk, hv});
    do_.resize(Shape{nq, hv});
    for (int i = 0; i < (threads_ >= 2 ? 2 : 1); ++i) scratch_[i].gs.resize(Shape{d.tq, d.tk});
    // output projection
    cpu_gemm(true, false, hv, d.out, nq, T(1), o_.data(), hv, dy_.data(), d.out, T(1), g.wo, d.out, p, threads_);
    if (g.bo) column_sums(dy_.data(), nq, d.out, g.bo);
    cpu_gemm(false, true, nq, hv, d.out, T(1), dy_.data(), d.out, w.wo, d.out, T(0), do_.data(), hv, p, threads_);
    run_pairs(true, p);
    // input projections
    project_backward(nq, d.fq, hk, q, w.wq, dqp_.data(), g.wq, g.bq, dq, false, p);
    project_backward(nk, d.fk, hk, k, w.wk, dkp_.data(), g.wk, g.bk, dk, false, p);
    project_backward(nk, d.fv, hv, v, w.wv, dvp_.data(), g.wv, g.bv, dv, dv != nullptr && dv == dk, p);
  }

 private:
  T dropout_scale() const { return m_.threshold ? static_cast<T>(m_.scale) : T(1); }

  /// Runs every (sample, head) pair, forward or backward: all on this thread, or with threads >= 2 the second
  /// half on the shared helper thread when it is free (each pair writes its own slices and uses its thread's
  /// scratch, so the results do not depend on the split).
  void run_pairs(bool back, Precision p) {
    const Index n = d_.batch * d_.heads;
    back_ = back;
    precision_ = p;
    HelperLease lease;
    if (threads_ < 2 || n < 2 || !lease) {
      run_range(0, 0, n);
      return;
    }
    split_ = n / 2;
    lease.worker().run_alongside([this] { run_range(1, split_, d_.batch * d_.heads); },
                                 [this] { run_range(0, 0, split_); });
  }
  void run_range(int slot, Index lo, Index hi) {
    Scratch& sc = scratch_[slot];
    for (Index t = lo; t < hi; ++t) {
      if (back_) backward_pair(t / d_.heads, t % d_.heads, sc);
      else forward_pair(t / d_.heads, t % d_.heads, sc);
    }
  }
  void forward_pair(Index b, Index h, Scratch& sc) {
    const Index hv = d_.heads * d_.value_dim;
    scores(b, h, sc);
    softmax_forward(b, h, sc);
    cpu_gemm(false, false, d_.tq, d_.value_dim, d_.tk, T(1), sc.s.data(), d_.tk,
             vp_.data() + b * d_.tk * hv + h * d_.value_dim, hv, T(0), o_.data() + b * d_.tq * hv + h * d_.value_dim,
             hv, precision_);
  }
  void backward_pair(Index b, Index h, Scratch& sc) {
    const AttentionDims& d = d_;
    const Precision p = precision_;
    const Index hk = d.heads * d.key_dim, hv = d.heads * d.value_dim;
    const Index qo = b * d.tq * hk + h * d.key_dim, ko = b * d.tk * hk + h * d.key_dim;
    const Index vo = b * d.tk * hv + h * d.value_dim, oo = b * d.tq * hv + h * d.value_dim;
    const T inv = T(1) / std::sqrt(static_cast<T>(d.key_dim));
    scores(b, h, sc);
    probabilities(b, h, sc);  // s = P
    dropped(b, h, sc);        // gs = Pd
    cpu_gemm(true, false, d.tk, d.value_dim, d.tq, T(1), sc.gs.data(), d.tk, do_.data() + oo, hv, T(0),
             dvp_.data() + vo, hv, p);
    cpu_gemm(false, true, d.tq, d.tk, d.value_dim, T(1), do_.data() + oo, hv, vp_.data() + vo, hv, T(0),
             sc.gs.data(), d.tk, p);
    softmax_backward(b, h, sc);  // gs = dS
    cpu_gemm(false, false, d.tq, d.key_dim, d.tk, inv, sc.gs.data(), d.tk, kp_.data() + ko, hk, T(0),
             dqp_.data() + qo, hk, p);
    cpu_gemm(true, false, d.tk, d.key_dim, d.tq, T(1), sc.gs.data(), d.tk, qp_.data() + qo, hk, T(0),
             dkp_.data() + ko, hk, p);
  }
  Index query_length(Index b) const { return m_.query_lengths ? m_.query_lengths[b] : d_.tq; }
  Index key_length(Index b) const { return m_.key_lengths ? m_.key_lengths[b] : d_.tk; }
  /// The number of keys row i of sample b attends to.
  Index keys_of_row(Index b, Index i) const {
    const Index n = key_length(b);
    return m_.causal ? std::min(n, i + 1) : n;
  }
  /// y[j] = dropout of x[j] for the n elements from (b, h, i, 0) of the mask, element ((b H + h) Tq + i) Tk + j.
  void drop(Index b, Index h, Index i, Index n, const T* x, T* y) const {
    const auto first = static_cast<std::uint64_t>(((b * d_.heads + h) * d_.tq + i) * d_.tk);
    apply_dropout(n, m_.key, first, m_.threshold, dropout_scale(), x, y);
  }

  /// out [rows, n] = x [rows, f] W [f, n] (+ bias).
  void project(Index rows, Index f, Index n, const T* x, const T* w, const T* bias, T* out, Precision p) const {
    cpu_gemm(false, false, rows, n, f, T(1), x, f, w, n, T(0), out, n, p, threads_);
    if (!bias) return;
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < n; ++c) out[r * n + c] += bias[c];
  }
  /// dW += x^T dout, db += column sums of dout, dx = dout W^T (added to dx when `add`).
  void project_backward(Index rows, Index f, Index n, const T* x, const T* w, const T* dout, T* dw, T* db, T* dx,
                        bool add, Precision p) const {
    cpu_gemm(true, false, f, n, rows, T(1), x, f, dout, n, T(1), dw, n, p, threads_);
    if (db) column_sums(dout, rows, n, db);
    if (dx) cpu_gemm(false, true, rows, f, n, T(1), dout, n, w, n, add ? T(1) : T(0), dx, f, p, threads_);
  }
  static void column_sums(const T* x, Index rows, Index n, T* acc) {
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < n; ++c) acc[c] += x[r * n + c];
  }
  void zero_padded_queries(T* y, Index width) const {
    if (!m_.query_lengths) return;
    for (Index b = 0; b < d_.batch; ++b)
      std::fill(y + (b * d_.tq + query_length(b)) * width, y + (b + 1) * d_.tq * width, T(0));
  }

  /// sc.s = Q_bh K_bh^T (Q already scaled by 1 / sqrt(kd)).
  void scores(Index b, Index h, Scratch& sc) {
    const Index hk = d_.heads * d_.key_dim;
    cpu_gemm(false, true, d_.tq, d_.tk, d_.key_dim, T(1), qp_.data() + b * d_.tq * hk + h * d_.key_dim, hk,
             kp_.data() + b * d_.tk * hk + h * d_.key_dim, hk, T(0), sc.s.data(), d_.tk, precision_);
  }

  /// sc.s = dropout(masked softmax(sc.s)) in place, keeping each row's log-sum-exp in lse_.
  void softmax_forward(Index b, Index h, Scratch& sc) {
    const Index lq = query_length(b), tk = d_.tk;
    T* lse = lse_.data() + (b * d_.heads + h) * d_.tq;
    for (Index i = 0; i < d_.tq; ++i) {
      T* r = sc.s.data() + i * tk;
      if (i >= lq) {
        std::fill(r, r + tk, T(0));
        lse[i] = T(0);
        continue;
      }
      const Index n = keys_of_row(b, i);
      const auto [mx, sum] = softmax_in_place(r, n);
      std::fill(r + n, r + tk, T(0));
      lse[i] = mx + std::log(sum);
      if (m_.threshold) drop(b, h, i, n, r, r);
    }
  }

  /// sc.s = P from the scores in sc.s and the kept log-sum-exp (0 where masked and on padded query rows).
  void probabilities(Index b, Index h, Scratch& sc) {
    const Index lq = query_length(b), tk = d_.tk;
    const T* lse = lse_.data() + (b * d_.heads + h) * d_.tq;
    for (Index i = 0; i < d_.tq; ++i) {
      T* r = sc.s.data() + i * tk;
      const Index n = i < lq ? keys_of_row(b, i) : 0;
      if (n > 0) exp_shifted(r, n, lse[i]);
      std::fill(r + n, r + tk, T(0));
    }
  }

  /// sc.gs = dropout(sc.s) (a copy without dropout).
  void dropped(Index b, Index h, Scratch& sc) {
    if (!m_.threshold) {
      std::copy(sc.s.data(), sc.s.data() + sc.s.size(), sc.gs.data());
      return;
    }
    drop(b, h, 0, d_.tq * d_.tk, sc.s.data(), sc.gs.data());  // the rows of one (b, h) are consecutive elements
  }

  /// sc.gs = dS from sc.gs = dPd and sc.s = P: dP = dropout(dPd), dS = P (dP - sum_j P dP).
  void softmax_backward(Index b, Index h, Scratch& sc) {
    const Index lq = query_length(b), tk = d_.tk;
    for (Index i = 0; i < d_.tq; ++i) {
      T* g = sc.gs.data() + i * tk;
      const T* pr = sc.s.data() + i * tk;
      const Index n = i < lq ? keys_of_row(b, i) : 0;
      if (m_.threshold) drop(b, h, i, n, g, g);
      T dot = 0;
      for (Index j = 0; j < n; ++j) dot += pr[j] * g[j];
      for (Index j = 0; j < n; ++j) g[j] = pr[j] * (g[j] - dot);
      std::fill(g + n, g + tk, T(0));
    }
  }

  AttentionDims d_;
  AttentionMask m_;
  Tn qp_, kp_, vp_, o_, lse_;
  Tn dy_, dqp_, dkp_, dvp_, do_;
  Scratch scratch_[2];  // one per thread: the scores or probabilities, and their gradient
  int threads_ = 1;
  bool back_ = false;
  Precision precision_ = Precision::F32;
  Index split_ = 0;
};

/// The keys and values a causal MultiHeadAttention has projected for the steps of `batch` streams so far (streaming,
/// model/stream.hpp), time-major: row t B + b of k [capacity B, H kd] and of v [capacity B, H vd] is step t of
/// stream b. With the scratch of one step (q, o, the scores s), it is allocated for `capacity` steps by reserve();
/// a step beyond the capacity doubles it (copying the cached rows), so that steps allocate nothing until then.
template <class T>
struct CpuAttentionCache {
  Tensor<T, Cpu> k, v, q, o, s;
  Index batch = 0, steps = 0, capacity = 0;

  /// Room for `capacity` steps (at least 1) of d.batch streams; forgets the cached steps.
  void reserve(const AttentionDims& d, Index cap) {
    batch = d.batch;
    steps = 0;
    capacity = std::max<Index>(cap, 1);
    k = Tensor<T, Cpu>(Shape{capacity * batch, d.heads * d.key_dim});
    v = Tensor<T, Cpu>(Shape{capacity * batch, d.heads * d.value_dim});
    q = Tensor<T, Cpu>(Shape{batch, d.heads * d.key_dim});
    o = Tensor<T, Cpu>(Shape{batch, d.heads * d.value_dim});
    s = Tensor<T, Cpu>(Shape{capacity});
  }
  void reset() { steps = 0; }

  /// Doubles the capacity, keeping the cached steps.
  void grow() {
    const Index cap = 2 * capacity;
    Tensor<T, Cpu> k2(Shape{cap * batch, k.dim(1)}), v2(Shape{cap * batch, v.dim(1)});
    std::copy(k.data(), k.data() + steps * batch * k.dim(1), k2.data());
    std::copy(v.data(), v.data() + steps * batch * v.dim(1), v2.data());
    k = k2;
    v = v2;
    s = Tensor<T, Cpu>(Shape{cap});
    capacity = cap;
  }
};

/// One causal self-attention step of the cache's d.batch streams: q, k, v are the current step of the query, key
/// and value [B, Fq], [B, Fk], [B, Fv]; y [B, O]. As CpuAttention::forward at the cache's next step t: Q = (q Wq +
/// bq) / sqrt(kd), the step's K and V rows are appended to the cache, and per stream and head the softmax of Q_bh
/// against the t + 1 cached keys weighs the cached values; y = O Wo + bo. The projections run on cpu_gemm (with
/// precision p); the products over the cached steps, whose count changes every step, are plain loops in T, so that
/// no GEMM workspace grows with the steps. d.tq and d.tk are not read.
template <class T>
void cpu_attention_step(const AttentionDims& d, const AttentionWeights<T>& w, const T* q, const T* k, const T* v,
                        T* y, CpuAttentionCache<T>& c, Precision p) {
  const Index B = d.batch, hk = d.heads * d.key_dim, hv = d.heads * d.value_dim;
  auto project = [&](const T* x, Index f, const T* wt, const T* bias, Index n, T* out, Index ldo) {
    cpu_gemm(false, false, B, n, f, T(1), x, f, wt, n, T(0), out, ldo, p);
    if (bias)
      for (Index r = 0; r < B; ++r)
        for (Index j = 0; j < n; ++j) out[r * ldo + j] += bias[j];
  };
  if (c.steps == c.capacity) c.grow();
  const Index t = c.steps, n = t + 1;
  project(q, d.fq, w.wq, w.bq, hk, c.q.data(), hk);
  c.q.array() *= T(1) / std::sqrt(static_cast<T>(d.key_dim));
  project(k, d.fk, w.wk, w.bk, hk, c.k.data() + t * B * hk, hk);
  project(v, d.fv, w.wv, w.bv, hv, c.v.data() + t * B * hv, hv);
  T* s = c.s.data();
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < d.heads; ++h) {
      const T* qr = c.q.data() + b * hk + h * d.key_dim;
      for (Index j = 0; j < n; ++j) {
        const T* kr = c.k.data() + (j * B + b) * hk + h * d.key_dim;
        T dot = 0;
        for (Index e = 0; e < d.key_dim; ++e) dot += qr[e] * kr[e];
        s[j] = dot;
      }
      softmax_in_place(s, n);
      T* orow = c.o.data() + b * hv + h * d.value_dim;
      std::fill(orow, orow + d.value_dim, T(0));
      for (Index j = 0; j < n; ++j) {
        const T pj = s[j];
        const T* vr = c.v.data() + (j * B + b) * hv + h * d.value_dim;
        for (Index e = 0; e < d.value_dim; ++e) orow[e] += pj * vr[e];
      }
    }
  c.steps = n;
  project(c.o.data(), hv, w.wo, w.bo, d.out, y, d.out);
}

}  // namespace detail
}  // namespace fastnn
