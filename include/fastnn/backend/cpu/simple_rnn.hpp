#pragma once
/// \file simple_rnn.hpp
/// The CPU SimpleRNN kernel: h_t = a(x_t W + h_{t-1} U + b), a = tanh or relu; W [F, H],
/// U [H, H], b [H]. One GEMM for the input projection of all steps, one per step for the
/// running samples, one per step backward; dW, dU, db and dx after the loop. Layout and variable
/// lengths as in the LSTM kernel (rnn_base.hpp).

#include <cstdint>

#include "fastnn/backend/cpu/rnn_base.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

template <class T>
class CpuSimpleRnnKernel {
 public:
  void forward(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* y) {
    d_ = d;
    plan_.make(d.batch, d.steps, d.lengths);
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, N = plan_.total();
    xt_.resize(Shape{N, F});
    hs_.resize(Shape{B + N, H});
    plan_.pack(x, F, d.go_backwards, xt_.data());
    MatMap<T> A(hs_.data() + B * H, N, H);  // pre-activations, then h, in place
    A.noalias() = xt_.matrix() * CMatMap<T>(w, F, H);
    A.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b, H);
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    CMatMap<T> U(u, H, H);
    for (Index t = 0; t < S; ++t) {
      const Index n = plan_.active(t);
      MatMap<T> At(hs_.data() + (B + plan_.off(t)) * H, n, H);
      if (t > 0) At.noalias() += CMatMap<T>(hs_.data() + (B + plan_.off(t - 1)) * H, n, H) * U;
      activate(At.data(), n * H, d.activation);
    }
    plan_.outputs(hs_.data(), H, d.return_sequences, y);
  }

  void backward(const T* dy, const T* w, const T* u, T* dw, T* du, T* db, T* dx) {
    const RnnDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, N = plan_.total();
    da_.resize(Shape{N, H});
    dh_.resize(Shape{B, H});
    dh_.set_zero();
    CMatMap<T> U(u, H, H);
    for (Index t = S - 1; t >= 0; --t) {
      plan_.add_output_grad(dy, H, d.return_sequences, t, dh_.data());
      const Index n = plan_.active(t), o0 = plan_.off(t);
      ArrMap<T> da(da_.data() + o0 * H, n * H);
      CArrMap<T> h(hs_.data() + (B + o0) * H, n * H);
      CArrMap<T> dh(dh_.data(), n * H);
      if (d.activation == Activation::Relu) da = dh * (h > T(0)).template cast<T>();
      else da = dh * (T(1) - h * h);
      if (t > 0)
        MatMap<T>(dh_.data(), n, H).noalias() = CMatMap<T>(da_.data() + o0 * H, n, H) * U.transpose();
    }
    CMatMap<T> dA(da_.data(), N, H);
    MatMap<T>(dw, F, H).noalias() += xt_.matrix().transpose() * dA;
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, H) += dA.colwise().sum();
    const Index R = N - plan_.off(1);
    if (S > 1 && R > 0)
      MatMap<T>(du, H, H).noalias() += CMatMap<T>(plan_.previous_states(hs_.data(), H, hp_), R, H).transpose() *
                                       CMatMap<T>(da_.data() + plan_.off(1) * H, R, H);
    if (dx) {
      dxt_.resize(Shape{N, F});
      dxt_.matrix().noalias() = dA * CMatMap<T>(w, F, H).transpose();
      plan_.unpack(dxt_.data(), F, d.go_backwards, dx);
    }
  }

  /// One step for a batch of streams: x [B, F]; h [B, H] read and updated in place.
  static void step(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* h, Tensor<T, Cpu>& z) {
    const Index B = d.batch, F = d.features, H = d.units;
    z.resize(Shape{B, H});
    MatMap<T> A(z.data(), B, H);
    A.noalias() = CMatMap<T>(x, B, F) * CMatMap<T>(w, F, H);
    A.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b, H);
    A.noalias() += CMatMap<T>(h, B, H) * CMatMap<T>(u, H, H);
    activate(z.data(), B * H, d.activation);
    std::copy(z.data(), z.data() + B * H, h);
  }

 private:
  static void activate(T* a, Index n, Activation act) {
    ArrMap<T> v(a, n);
    if (act == Activation::Relu) v = v.max(T(0));
    else v = v.tanh();
  }

  RnnDims d_;
  PackedPlan plan_;
  Tensor<T, Cpu> xt_, hs_, da_, dh_, dxt_, hp_;
};

}  // namespace detail
}  // namespace fastnn
