#pragma once
/// \file gru.hpp
/// The CPU GRU kernel, both of Keras's forms (backend/rnn.hpp has the equations; gate order
/// z, r, h in the column blocks of W [F, 3H] and U [H, 3H]).
///
/// reset_after (bias [2, 3H]): the input projection x W + b[0] of every step is one GEMM before
/// the loop; each step is one GEMM h U + b[1] for the running samples and one fused pass over the
/// gates. Backward: one GEMM per step for dh_{t-1}; dW, dU, both biases and dx are single GEMMs
/// over all steps after the loop.
/// Without reset_after (bias [3H]): each step needs r before the candidate's recurrent GEMM, so
/// it is two GEMMs per step (h [Uz Ur], then (r * h) Uh), and backward two as well.
/// Layout and variable lengths as in the LSTM kernel (rnn_base.hpp).

#include <cstdint>

#include "fastnn/backend/cpu/gemm.hpp"
#include "fastnn/backend/cpu/rnn_base.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

template <class T>
class CpuGruKernel {
 public:
  /// x [B, S, F]; w [F, 3H]; u [H, 3H]; b [2, 3H] (reset_after) or [3H]; y [B, H] or [B, S, H].
  void forward(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* y) {
    d_ = d;
    plan_.make(d.batch, d.steps, d.lengths);
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G = 3 * H, N = plan_.total();
    xt_.resize(Shape{N, F});
    zx_.resize(Shape{N, G});
    hs_.resize(Shape{B + N, H});
    plan_.pack(x, F, d.go_backwards, xt_.data());
    const Precision P = d.precision;
    for (Index r = 0; r < N; ++r) std::copy(b, b + G, zx_.data() + r * G);
    cpu_gemm(false, false, N, G, F, T(1), xt_.data(), F, w, G, T(1), zx_.data(), G, P);
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    if (d.reset_after) {
      rh_.resize(Shape{N, G});
      upack_.pack(u, G, false, H, G, P);
      for (Index t = 0; t < S; ++t) {
        const Index n = plan_.active(t);
        T* rt = rh_.data() + plan_.off(t) * G;
        for (Index r = 0; r < n; ++r) std::copy(b + G, b + 2 * G, rt + r * G);
        if (t > 0) upack_.gemm(n, T(1), hs_.data() + (B + plan_.off(t - 1)) * H, H, false, T(1), rt, G);
        if (d.recurrent == Activation::HardSigmoid) step_after<true>(t);
        else step_after<false>(t);
      }
    } else {
      rh_.resize(Shape{N, H});  // r * h_{t-1}, for dU of the candidate
      for (Index t = 0; t < S; ++t) {
        if (d.recurrent == Activation::HardSigmoid) step_before<true>(t, u);
        else step_before<false>(t, u);
      }
    }
    plan_.outputs(hs_.data(), H, d.return_sequences, y);
  }

  /// Accumulates dw, du, db and writes dx (if not null) from dy (shaped like y).
  void backward(const T* dy, const T* w, const T* u, T* dw, T* du, T* db, T* dx) {
    const RnnDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G = 3 * H, N = plan_.total();
    dzx_.resize(Shape{N, G});
    dh_.resize(Shape{B, H});
    dh_.set_zero();
    const Precision P = d.precision;
    if (d.reset_after) {
      drh_.resize(Shape{N, G});
      utpack_.pack(u, G, true, G, H, P);  // op = U^T [3H, H]
    }
    else drh_.resize(Shape{B, H});
    for (Index t = S - 1; t >= 0; --t) {
      plan_.add_output_grad(dy, H, d.return_sequences, t, dh_.data());
      const Index n = plan_.active(t);
      const bool hard = d.recurrent == Activation::HardSigmoid;
      if (d.reset_after) {
        if (hard) back_after<true>(t);
        else back_after<false>(t);
        // dh_{t-1} = dh * z (done in back_after) + dRh U^T
        if (t > 0) utpack_.gemm(n, T(1), drh_.data() + plan_.off(t) * G, G, false, T(1), dh_.data(), H);
      } else {
        if (hard) back_before<true>(t, u);
        else back_before<false>(t, u);
      }
    }
    CMatMap<T> dZx(dzx_.data(), N, G);
    cpu_gemm(true, false, F, G, N, T(1), xt_.data(), F, dzx_.data(), G, T(1), dw, G, P);
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, G) += dZx.colwise().sum();
    const Index R = N - plan_.off(1);
    if (d.reset_after) {
      CMatMap<T> dRh(drh_.data(), N, G);
      Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db + G, G) += dRh.colwise().sum();
      if (S > 1 && R > 0)
        cpu_gemm(true, false, H, G, R, T(1), plan_.previous_states(hs_.data(), H, hp_), H,
                 drh_.data() + plan_.off(1) * G, G, T(1), du, G, P);
    } else if (S > 1 && R > 0) {
      CMatMap<T> Hprev(plan_.previous_states(hs_.data(), H, hp_), R, H);
      const T* dz1 = dzx_.data() + plan_.off(1) * G;
      BlockMap<T>(du, H, 2 * H, Eigen::OuterStride<>(G)).noalias() +=
          Hprev.transpose() * CBlockMap<T>(dz1, R, 2 * H, Eigen::OuterStride<>(G));
      BlockMap<T>(du + 2 * H, H, H, Eigen::OuterStride<>(G)).noalias() +=
          CMatMap<T>(rh_.data() + plan_.off(1) * H, R, H).transpose() *
          CBlockMap<T>(dz1 + 2 * H, R, H, Eigen::OuterStride<>(G));
    }
    if (dx) {
      dxt_.resize(Shape{N, F});
      cpu_gemm(false, true, N, F, G, T(1), dzx_.data(), G, w, G, T(0), dxt_.data(), F, P);
      plan_.unpack(dxt_.data(), F, d.go_backwards, dx);
    }
  }

  /// One step for a batch of streams: x [B, F]; h [B, H] is read and updated in place; z is
  /// scratch. Computed as forward() computes a step.
  static void step(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* h, Tensor<T, Cpu>& z) {
    const Index B = d.batch, F = d.features, H = d.units, G = 3 * H;
    z.resize(Shape{2 * B, G});
    for (Index r = 0; r < B; ++r) std::copy(b, b + G, z.data() + r * G);
    cpu_gemm(false, false, B, G, F, T(1), x, F, w, G, T(1), z.data(), G, d.precision);
    CMatMap<T> Hp(h, B, H);
    const bool hard = d.recurrent == Activation::HardSigmoid;
    if (d.reset_after) {
      for (Index r = 0; r < B; ++r) std::copy(b + G, b + 2 * G, z.data() + (B + r) * G);
      cpu_gemm(false, false, B, G, H, T(1), h, H, u, G, T(1), z.data() + B * G, G, d.precision);
      for (Index j = 0; j < B; ++j)
        if (hard) cell_after<true>(z.data() + j * G, z.data() + (B + j) * G, h + j * H, h + j * H, H);
        else cell_after<false>(z.data() + j * G, z.data() + (B + j) * G, h + j * H, h + j * H, H);
    } else {
      BlockMap<T>(z.data(), B, 2 * H, Eigen::OuterStride<>(G)).noalias() +=
          Hp * CBlockMap<T>(u, H, 2 * H, Eigen::OuterStride<>(G));
      T* rh = z.data() + B * G;  // [B, H]
      for (Index j = 0; j < B; ++j) {
        ArrMap<T> zr(z.data() + j * G + H, H);
        if (hard) gate_act<T, true>(zr);
        else gate_act<T, false>(zr);
        ArrMap<T>(rh + j * H, H) = zr * CArrMap<T>(h + j * H, H);
      }
      BlockMap<T>(z.data() + 2 * H, B, H, Eigen::OuterStride<>(G)).noalias() +=
          CMatMap<T>(rh, B, H) * CBlockMap<T>(u + 2 * H, H, H, Eigen::OuterStride<>(G));
      for (Index j = 0; j < B; ++j) {
        T* zr = z.data() + j * G;
        ArrMap<T> zz(zr, H), nn(zr + 2 * H, H);
        if (hard) gate_act<T, true>(zz);
        else gate_act<T, false>(zz);
        nn = nn.tanh();
        ArrMap<T> hh(h + j * H, H);
        hh = zz * hh + (T(1) - zz) * nn;
      }
    }
  }

 private:
  /// reset_after cell on one row: zx [3H] (pre-activations, becomes z, r, n), rh [3H] (h U + c),
  /// hprev -> hout.
  template <bool Hard>
  static void cell_after(T* zx, const T* rh, const T* hprev, T* hout, Index H) {
    ArrMap<T> z(zx, H), r(zx + H, H), n(zx + 2 * H, H);
    z += CArrMap<T>(rh, H);
    r += CArrMap<T>(rh + H, H);
    gate_act<T, Hard>(z);
    gate_act<T, Hard>(r);
    n = (n + r * CArrMap<T>(rh + 2 * H, H)).tanh();
    ArrMap<T>(hout, H) = z * CArrMap<T>(hprev, H) + (T(1) - z) * n;
  }

  template <bool Hard>
  void step_after(Index t) {
    const Index B = d_.batch, H = d_.units, G = 3 * H;
    const Index o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
    for (Index j = 0; j < plan_.active(t); ++j)
      cell_after<Hard>(zx_.data() + (o0 + j) * G, rh_.data() + (o0 + j) * G, hs_.data() + (p0 + j) * H,
                       hs_.data() + (B + o0 + j) * H, H);
  }

  template <bool Hard>
  void step_before(Index t, const T* u) {
    const Index B = d_.batch, H = d_.units, G = 3 * H;
    const Index n = plan_.active(t), o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
    T* zt = zx_.data() + o0 * G;
    if (t > 0)
      BlockMap<T>(zt, n, 2 * H, Eigen::OuterStride<>(G)).noalias() +=
          CMatMap<T>(hs_.data() + p0 * H, n, H) * CBlockMap<T>(u, H, 2 * H, Eigen::OuterStride<>(G));
    for (Index j = 0; j < n; ++j) {
      ArrMap<T> r(zt + j * G + H, H);
      gate_act<T, Hard>(r);
      ArrMap<T>(rh_.data() + (o0 + j) * H, H) = r * CArrMap<T>(hs_.data() + (p0 + j) * H, H);
    }
    if (t > 0)
      BlockMap<T>(zt + 2 * H, n, H, Eigen::OuterStride<>(G)).noalias() +=
          CMatMap<T>(rh_.data() + o0 * H, n, H) * CBlockMap<T>(u + 2 * H, H, H, Eigen::OuterStride<>(G));
    for (Index j = 0; j < n; ++j) {
      ArrMap<T> z(zt + j * G, H), c(zt + j * G + 2 * H, H);
      gate_act<T, Hard>(z);
      c = c.tanh();
      ArrMap<T>(hs_.data() + (B + o0 + j) * H, H) = z * CArrMap<T>(hs_.data() + (p0 + j) * H, H) + (T(1) - z) * c;
    }
  }

  /// reset_after, step t: dzx rows (input-side pre-activation gradients), drh rows (the
  /// recurrent side's), and dh <- dh * z (the direct part of dh_{t-1}).
  template <bool Hard>
  void back_after(Index t) {
    const Index B = d_.batch, H = d_.units, G = 3 * H;
    const Index o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
    for (Index j = 0; j < plan_.active(t); ++j) {
      const T* g = zx_.data() + (o0 + j) * G;
      CArrMap<T> z(g, H), r(g + H, H), n(g + 2 * H, H);
      CArrMap<T> rhn(rh_.data() + (o0 + j) * G + 2 * H, H);
      CArrMap<T> hprev(hs_.data() + (p0 + j) * H, H);
      ArrMap<T> dh(dh_.data() + j * H, H);
      T* dg = dzx_.data() + (o0 + j) * G;
      T* dr = drh_.data() + (o0 + j) * G;
      ArrMap<T> dz(dg, H), drr(dg + H, H), dn(dg + 2 * H, H);
      dn = dh * (T(1) - z) * (T(1) - n * n);
      dz = dh * (hprev - n) * gate_grad<T, Hard>(z);
      drr = dn * rhn * gate_grad<T, Hard>(r);
      ArrMap<T>(dr, H) = dz;
      ArrMap<T>(dr + H, H) = drr;
      ArrMap<T>(dr + 2 * H, H) = dn * r;
      dh *= z;
    }
  }

  /// Without reset_after, step t: dzx rows and dh_{t-1} into dh.
  template <bool Hard>
  void back_before(Index t, const T* u) {
    const Index B = d_.batch, H = d_.units, G = 3 * H;
    const Index n = plan_.active(t), o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
    T* dzt = dzx_.data() + o0 * G;
    for (Index j = 0; j < n; ++j) {
      const T* g = zx_.data() + (o0 + j) * G;
      CArrMap<T> z(g, H), c(g + 2 * H, H);
      CArrMap<T> hprev(hs_.data() + (p0 + j) * H, H);
      ArrMap<T> dh(dh_.data() + j * H, H);
      ArrMap<T> dz(dzt + j * G, H), dc(dzt + j * G + 2 * H, H);
      dc = dh * (T(1) - z) * (T(1) - c * c);
      dz = dh * (hprev - c) * gate_grad<T, Hard>(z);
      dh *= z;
    }
    if (t == 0) {  // h_{-1} = 0: no reset-gate gradient, and dh_{-1} is not needed
      for (Index j = 0; j < n; ++j) ArrMap<T>(dzt + j * G + H, H).setZero();
      return;
    }
    // d(r * h) = dc Uh^T, then dr and the rest of dh_{t-1}
    MatMap<T> drh(drh_.data(), n, H);
    drh.noalias() = CBlockMap<T>(dzt + 2 * H, n, H, Eigen::OuterStride<>(G)) *
                    CBlockMap<T>(u + 2 * H, H, H, Eigen::OuterStride<>(G)).transpose();
    for (Index j = 0; j < n; ++j) {
      CArrMap<T> r(zx_.data() + (o0 + j) * G + H, H);
      CArrMap<T> hprev(hs_.data() + (p0 + j) * H, H);
      CArrMap<T> d(drh_.data() + j * H, H);
      ArrMap<T>(dzt + j * G + H, H) = d * hprev * gate_grad<T, Hard>(r);
      ArrMap<T>(dh_.data() + j * H, H) += d * r;
    }
    MatMap<T>(dh_.data(), n, H).noalias() +=
        CBlockMap<T>(dzt, n, 2 * H, Eigen::OuterStride<>(G)) *
        CBlockMap<T>(u, H, 2 * H, Eigen::OuterStride<>(G)).transpose();
  }

  RnnDims d_;
  PackedPlan plan_;
  PackedB<T> upack_, utpack_;
  Tensor<T, Cpu> xt_, zx_, rh_, hs_, dzx_, drh_, dh_, dxt_, hp_;
};

}  // namespace detail
}  // namespace fastnn
