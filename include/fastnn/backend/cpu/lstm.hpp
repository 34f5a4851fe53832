#pragma once
/// \file lstm.hpp
/// The CPU LSTM kernel. The math (Keras's LSTM, gate order i, f, c, o):
///
///   z_t = x_t W + h_{t-1} U + b                 W [F, 4H], U [H, 4H], b [4H]
///   i = r(z_i)   f = r(z_f)   g = tanh(z_c)   o = r(z_o)      r = sigmoid or hard_sigmoid
///   c_t = f * c_{t-1} + i * g                   h_t = o * tanh(c_t)
///
/// Speed: the input projection of ALL time steps is one GEMM before the loop; each
/// step is one [B, H] x [H, 4H] GEMM plus one fused pass over the gates; backward mirrors it with
/// one [B, 4H] x [4H, H] GEMM per step, and the weight gradients dW, dU, db and the input
/// gradient are single GEMMs over all time steps after the loop. Work buffers are kept between
/// calls and only grow, so the step loop never allocates. Data is time-major and packed inside
/// the kernel (rnn_base.hpp): with sequences of different lengths, each step only computes the
/// samples still running.

#include <cstdint>

#include "fastnn/backend/cpu/rnn_base.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

template <class T>
class CpuLstmKernel {
 public:
  /// x: [B, S, F] batch-major; w: kernel [F, 4H]; u: recurrent kernel [H, 4H]; b: [4H].
  /// y: [B, H], or [B, S, H] with return_sequences (in processing order when go_backwards).
  void forward(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* y) {
    d_ = d;
    plan_.make(d.batch, d.steps, d.lengths);
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G4 = 4 * H, N = plan_.total();
    xt_.resize(Shape{N, F});
    gates_.resize(Shape{N, G4});
    hs_.resize(Shape{B + N, H});
    cs_.resize(Shape{B + N, H});
    tc_.resize(Shape{N, H});
    plan_.pack(x, F, d.go_backwards, xt_.data());
    MatMap<T> Z(gates_.data(), N, G4);
    CMatMap<T> W(w, F, G4), U(u, H, G4);
    Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>> bias(b, G4);
    Z.noalias() = xt_.matrix() * W;  // input projection of every step at once
    Z.rowwise() += bias;
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    std::fill(cs_.data(), cs_.data() + B * H, T(0));
    for (Index t = 0; t < S; ++t) {
      const Index n = plan_.active(t);
      MatMap<T> Zt(gates_.data() + plan_.off(t) * G4, n, G4);
      if (t > 0) Zt.noalias() += CMatMap<T>(hs_.data() + (B + plan_.off(t - 1)) * H, n, H) * U;
      if (d.recurrent == Activation::HardSigmoid) step_forward<true>(t);
      else step_forward<false>(t);
    }
    plan_.outputs(hs_.data(), H, d.return_sequences, y);
  }

  /// Accumulates dw, du, db and writes dx (if not null) from dy (shaped like y).
  void backward(const T* dy, const T* w, const T* u, T* dw, T* du, T* db, T* dx) {
    const RnnDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G4 = 4 * H, N = plan_.total();
    dgates_.resize(Shape{N, G4});
    dh_.resize(Shape{B, H});
    dc_.resize(Shape{B, H});
    dh_.set_zero();
    dc_.set_zero();
    CMatMap<T> W(w, F, G4), U(u, H, G4);
    for (Index t = S - 1; t >= 0; --t) {
      plan_.add_output_grad(dy, H, d.return_sequences, t, dh_.data());  // dh += dL/dh_t from the output
      if (d.recurrent == Activation::HardSigmoid) step_backward<true>(t);
      else step_backward<false>(t);
      if (t > 0) {
        const Index n = plan_.active(t);
        MatMap<T> dH(dh_.data(), n, H);
        dH.noalias() = CMatMap<T>(dgates_.data() + plan_.off(t) * G4, n, G4) * U.transpose();
      }
    }
    CMatMap<T> dZ(dgates_.data(), N, G4);
    MatMap<T> dW(dw, F, G4), dU(du, H, G4);
    dW.noalias() += xt_.matrix().transpose() * dZ;
    // h_{t-1} for the rows of steps >= 1 (h_{-1} = 0 contributes nothing)
    const Index R = N - plan_.off(1);
    if (S > 1 && R > 0) {
      CMatMap<T> Hprev(plan_.previous_states(hs_.data(), H, hp_), R, H);
      CMatMap<T> dZ1(dgates_.data() + plan_.off(1) * G4, R, G4);
      dU.noalias() += Hprev.transpose() * dZ1;
    }
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, G4) += dZ.colwise().sum();
    if (dx) {
      dxt_.resize(Shape{N, F});
      dxt_.matrix().noalias() = dZ * W.transpose();
      plan_.unpack(dxt_.data(), F, d.go_backwards, dx);
    }
  }

  /// One step for a batch of streams: x [B, F]; h, c [B, H] are read and updated in place;
  /// z is scratch. Computed as forward() computes a step.
  static void step(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* h, T* c,
                   Tensor<T, Cpu>& z) {
    const Index B = d.batch, F = d.features, H = d.units, G4 = 4 * H;
    z.resize(Shape{B, G4});
    MatMap<T> Z(z.data(), B, G4);
    Z.noalias() = CMatMap<T>(x, B, F) * CMatMap<T>(w, F, G4);
    Z.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b, G4);
    Z.noalias() += CMatMap<T>(h, B, H) * CMatMap<T>(u, H, G4);
    for (Index bb = 0; bb < B; ++bb) {
      T* zr = z.data() + bb * G4;
      ArrMap<T> i(zr, H), f(zr + H, H), g(zr + 2 * H, H), o(zr + 3 * H, H);
      if (d.recurrent == Activation::HardSigmoid) {
        gate_act<T, true>(i), gate_act<T, true>(f), gate_act<T, true>(o);
      } else {
        gate_act<T, false>(i), gate_act<T, false>(f), gate_act<T, false>(o);
      }
      g = g.tanh();
      ArrMap<T> cc(c + bb * H, H), hh(h + bb * H, H);
      cc = f * cc + i * g;
      hh = o * cc.tanh();
    }
  }

 private:
  template <bool Hard>
  void step_forward(Index t) {
    const Index B = d_.batch, H = d_.units, G4 = 4 * H;
    const Index o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
    for (Index j = 0; j < plan_.active(t); ++j) {
      T* z = gates_.data() + (o0 + j) * G4;
      ArrMap<T> i(z, H), f(z + H, H), g(z + 2 * H, H), o(z + 3 * H, H);
      gate_act<T, Hard>(i);
      gate_act<T, Hard>(f);
      g = g.tanh();
      gate_act<T, Hard>(o);
      CArrMap<T> cprev(cs_.data() + (p0 + j) * H, H);
      ArrMap<T> c(cs_.data() + (B + o0 + j) * H, H);
      ArrMap<T> tc(tc_.data() + (o0 + j) * H, H);
      ArrMap<T> h(hs_.data() + (B + o0 + j) * H, H);
      c = f * cprev + i * g;
      tc = c.tanh();
      h = o * tc;
    }
  }

  template <bool Hard>
  void step_backward(Index t) {
    const Index B = d_.batch, H = d_.units, G4 = 4 * H;
    const Index o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
    for (Index j = 0; j < plan_.active(t); ++j) {
      const T* z = gates_.data() + (o0 + j) * G4;
      CArrMap<T> i(z, H), f(z + H, H), g(z + 2 * H, H), o(z + 3 * H, H);
      CArrMap<T> cprev(cs_.data() + (p0 + j) * H, H);
      CArrMap<T> tc(tc_.data() + (o0 + j) * H, H);
      ArrMap<T> dh(dh_.data() + j * H, H), dc(dc_.data() + j * H, H);
      T* dz = dgates_.data() + (o0 + j) * G4;
      ArrMap<T> di(dz, H), df(dz + H, H), dg(dz + 2 * H, H), dout(dz + 3 * H, H);
      dc += dh * o * (T(1) - tc * tc);
      dout = dh * tc * gate_grad<T, Hard>(o);
      di = dc * g * gate_grad<T, Hard>(i);
      dg = dc * i * (T(1) - g * g);
      df = dc * cprev * gate_grad<T, Hard>(f);
      dc *= f;  // carried to step t-1
    }
  }

  RnnDims d_;
  PackedPlan plan_;
  Tensor<T, Cpu> xt_, gates_, hs_, cs_, tc_, dgates_, dh_, dc_, dxt_, hp_;
};

}  // namespace detail
}  // namespace fastnn
