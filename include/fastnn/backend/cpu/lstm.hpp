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
/// calls and only grow, so the step loop never allocates. Data is time-major inside the kernel.

#include <cstdint>

#include "fastnn/core/tensor.hpp"
#include "fastnn/core/activation.hpp"

namespace fastnn {
namespace detail {

template <class T>
using ArrT = Eigen::Array<T, Eigen::Dynamic, 1>;
template <class T>
using ArrMap = Eigen::Map<ArrT<T>>;
template <class T>
using CArrMap = Eigen::Map<const ArrT<T>>;
template <class T>
using MatMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using CMatMap = Eigen::Map<const RowMatrix<T>>;

/// Sizes and flags of one LSTM run.
struct LstmDims {
  Index batch = 0, steps = 0, features = 0, units = 0;
  bool return_sequences = false;
  bool go_backwards = false;
  Activation recurrent = Activation::Sigmoid;
};

template <class T>
class CpuLstmKernel {
 public:
  /// x: [B, T, F] batch-major; w: kernel [F, 4H]; u: recurrent kernel [H, 4H]; b: [4H].
  /// y: [B, H], or [B, T, H] with return_sequences (in processing order when go_backwards).
  void forward(const LstmDims& d, const T* x, const T* w, const T* u, const T* b, T* y) {
    d_ = d;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G4 = 4 * H;
    xt_.resize(Shape{S * B, F});
    gates_.resize(Shape{S * B, G4});
    hs_.resize(Shape{(S + 1) * B, H});
    cs_.resize(Shape{(S + 1) * B, H});
    tc_.resize(Shape{S * B, H});
    // time-major copy of the input, reversed in time for go_backwards
    for (Index t = 0; t < S; ++t) {
      const Index src_t = d.go_backwards ? S - 1 - t : t;
      for (Index bb = 0; bb < B; ++bb) {
        const T* s = x + (bb * S + src_t) * F;
        std::copy(s, s + F, xt_.data() + (t * B + bb) * F);
      }
    }
    MatMap<T> Z(gates_.data(), S * B, G4);
    CMatMap<T> W(w, F, G4), U(u, H, G4);
    Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>> bias(b, G4);
    Z.noalias() = xt_.matrix() * W;  // input projection of every step at once
    Z.rowwise() += bias;
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    std::fill(cs_.data(), cs_.data() + B * H, T(0));
    for (Index t = 0; t < S; ++t) {
      MatMap<T> Zt(gates_.data() + t * B * G4, B, G4);
      CMatMap<T> Hprev(hs_.data() + t * B * H, B, H);
      if (t > 0) Zt.noalias() += Hprev * U;
      switch (d.recurrent) {
        case Activation::HardSigmoid: step_forward<true>(t); break;
        default: step_forward<false>(t); break;
      }
    }
    if (d.return_sequences) {
      for (Index t = 0; t < S; ++t)
        for (Index bb = 0; bb < B; ++bb) {
          const T* h = hs_.data() + ((t + 1) * B + bb) * H;
          std::copy(h, h + H, y + (bb * S + t) * H);
        }
    } else {
      const T* h = hs_.data() + S * B * H;
      std::copy(h, h + B * H, y);
    }
  }

  /// Accumulates dw, du, db and writes dx (if not null) from dy (shaped like y).
  void backward(const T* dy, const T* w, const T* u, T* dw, T* du, T* db, T* dx) {
    const LstmDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G4 = 4 * H;
    dgates_.resize(Shape{S * B, G4});
    dh_.resize(Shape{B, H});
    dc_.resize(Shape{B, H});
    dh_.set_zero();
    dc_.set_zero();
    CMatMap<T> W(w, F, G4), U(u, H, G4);
    for (Index t = S - 1; t >= 0; --t) {
      // dh += dL/dh_t coming from the output
      if (d.return_sequences) {
        for (Index bb = 0; bb < B; ++bb) {
          ArrMap<T> dh(dh_.data() + bb * H, H);
          dh += CArrMap<T>(dy + (bb * S + t) * H, H);
        }
      } else if (t == S - 1) {
        ArrMap<T>(dh_.data(), B * H) += CArrMap<T>(dy, B * H);
      }
      switch (d.recurrent) {
        case Activation::HardSigmoid: step_backward<true>(t); break;
        default: step_backward<false>(t); break;
      }
      if (t > 0) {
        MatMap<T> dH(dh_.data(), B, H);
        CMatMap<T> dZt(dgates_.data() + t * B * G4, B, G4);
        dH.noalias() = dZt * U.transpose();
      }
    }
    CMatMap<T> dZ(dgates_.data(), S * B, G4);
    MatMap<T> dW(dw, F, G4), dU(du, H, G4);
    dW.noalias() += xt_.matrix().transpose() * dZ;
    // h_{t-1} for t = 1..S-1 (h_{-1} = 0 contributes nothing)
    if (S > 1) {
      CMatMap<T> Hprev(hs_.data() + B * H, (S - 1) * B, H);
      CMatMap<T> dZ1(dgates_.data() + B * G4, (S - 1) * B, G4);
      dU.noalias() += Hprev.transpose() * dZ1;
    }
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, G4) += dZ.colwise().sum();
    if (dx) {
      dxt_.resize(Shape{S * B, F});
      dxt_.matrix().noalias() = dZ * W.transpose();
      for (Index t = 0; t < S; ++t) {
        const Index dst_t = d.go_backwards ? S - 1 - t : t;
        for (Index bb = 0; bb < B; ++bb) {
          const T* s = dxt_.data() + (t * B + bb) * F;
          std::copy(s, s + F, dx + (bb * S + dst_t) * F);
        }
      }
    }
  }

 private:
  template <bool Hard>
  static void ract(ArrMap<T> z) {
    if constexpr (Hard) z = (T(0.2) * z + T(0.5)).max(T(0)).min(T(1));
    else z = T(1) / (T(1) + (-z).exp());
  }
  template <bool Hard, class A>
  static auto ract_grad(const A& y) {
    if constexpr (Hard) return ((y > T(0)) && (y < T(1))).template cast<T>() * T(0.2);
    else return y * (T(1) - y);
  }

  template <bool Hard>
  void step_forward(Index t) {
    const Index B = d_.batch, H = d_.units, G4 = 4 * H;
    for (Index bb = 0; bb < B; ++bb) {
      T* z = gates_.data() + (t * B + bb) * G4;
      ArrMap<T> i(z, H), f(z + H, H), g(z + 2 * H, H), o(z + 3 * H, H);
      ract<Hard>(i);
      ract<Hard>(f);
      g = g.tanh();
      ract<Hard>(o);
      CArrMap<T> cprev(cs_.data() + (t * B + bb) * H, H);
      ArrMap<T> c(cs_.data() + ((t + 1) * B + bb) * H, H);
      ArrMap<T> tc(tc_.data() + (t * B + bb) * H, H);
      ArrMap<T> h(hs_.data() + ((t + 1) * B + bb) * H, H);
      c = f * cprev + i * g;
      tc = c.tanh();
      h = o * tc;
    }
  }

  template <bool Hard>
  void step_backward(Index t) {
    const Index B = d_.batch, H = d_.units, G4 = 4 * H;
    for (Index bb = 0; bb < B; ++bb) {
      const T* z = gates_.data() + (t * B + bb) * G4;
      CArrMap<T> i(z, H), f(z + H, H), g(z + 2 * H, H), o(z + 3 * H, H);
      CArrMap<T> cprev(cs_.data() + (t * B + bb) * H, H);
      CArrMap<T> tc(tc_.data() + (t * B + bb) * H, H);
      ArrMap<T> dh(dh_.data() + bb * H, H), dc(dc_.data() + bb * H, H);
      T* dz = dgates_.data() + (t * B + bb) * G4;
      ArrMap<T> di(dz, H), df(dz + H, H), dg(dz + 2 * H, H), dout(dz + 3 * H, H);
      dc += dh * o * (T(1) - tc * tc);
      dout = dh * tc * ract_grad<Hard>(o);
      di = dc * g * ract_grad<Hard>(i);
      dg = dc * i * (T(1) - g * g);
      df = dc * cprev * ract_grad<Hard>(f);
      dc *= f;  // carried to step t-1
    }
  }

  LstmDims d_;
  Tensor<T, Cpu> xt_, gates_, hs_, cs_, tc_, dgates_, dh_, dc_, dxt_;
};

}  // namespace detail
}  // namespace fastnn
