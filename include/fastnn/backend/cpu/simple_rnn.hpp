#pragma once
/// \file simple_rnn.hpp
/// The CPU SimpleRNN kernel: h_t = a(x_t W + h_{t-1} U + b), a = tanh or relu; W [F, H],
/// U [H, H], b [H]. One GEMM for the input projection of all steps, one per step for the
/// running samples, one per step backward; dW, dU, db and dx after the loop. Layout and variable
/// lengths as in the LSTM kernel (rnn_base.hpp).

#include <cstdint>

#include "fastnn/backend/cpu/gemm.hpp"
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
    const Precision P = d.precision;
    T* a = hs_.data() + B * H;  // pre-activations, then h, in place
    for (Index r = 0; r < N; ++r) std::copy(b, b + H, a + r * H);
    cpu_gemm(false, false, N, H, F, T(1), xt_.data(), F, w, H, T(1), a, H, P);
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    upack_.pack(u, H, false, H, H, P);
    for (Index t = 0; t < S; ++t) {
      const Index n = plan_.active(t);
      T* at = hs_.data() + (B + plan_.off(t)) * H;
      if (t > 0) upack_.gemm(n, T(1), hs_.data() + (B + plan_.off(t - 1)) * H, H, false, T(1), at, H);
      activate(at, n * H, d.activation);
    }
    plan_.outputs(hs_.data(), H, d.return_sequences, y);
  }

  void backward(const T* dy, const T* w, const T* u, T* dw, T* du, T* db, T* dx) {
    const RnnDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, N = plan_.total();
    da_.resize(Shape{N, H});
    dh_.resize(Shape{B, H});
    dh_.set_zero();
    const Precision P = d.precision;
    utpack_.pack(u, H, true, H, H, P);
    for (Index t = S - 1; t >= 0; --t) {
      plan_.add_output_grad(dy, H, d.return_sequences, t, dh_.data());
      const Index n = plan_.active(t), o0 = plan_.off(t);
      ArrMap<T> da(da_.data() + o0 * H, n * H);
      CArrMap<T> h(hs_.data() + (B + o0) * H, n * H);
      CArrMap<T> dh(dh_.data(), n * H);
      if (d.activation == Activation::Relu) da = dh * (h > T(0)).template cast<T>();
      else da = dh * (T(1) - h * h);
      if (t > 0) utpack_.gemm(n, T(1), da_.data() + o0 * H, H, false, T(0), dh_.data(), H);
    }
    CMatMap<T> dA(da_.data(), N, H);
    cpu_gemm(true, false, F, H, N, T(1), xt_.data(), F, da_.data(), H, T(1), dw, H, P);
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, H) += dA.colwise().sum();
    const Index R = N - plan_.off(1);
    if (S > 1 && R > 0)
      cpu_gemm(true, false, H, H, R, T(1), plan_.previous_states(hs_.data(), H, hp_), H,
               da_.data() + plan_.off(1) * H, H, T(1), du, H, P);
    if (dx) {
      dxt_.resize(Shape{N, F});
      cpu_gemm(false, true, N, F, H, T(1), da_.data(), H, w, H, T(0), dxt_.data(), F, P);
      plan_.unpack(dxt_.data(), F, d.go_backwards, dx);
    }
  }

  /// One step for a batch of streams: x [B, F]; h [B, H] read and updated in place.
  static void step(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* h, Tensor<T, Cpu>& z) {
    const Index B = d.batch, F = d.features, H = d.units;
    z.resize(Shape{B, H});
    for (Index r = 0; r < B; ++r) std::copy(b, b + H, z.data() + r * H);
    cpu_gemm(false, false, B, H, F, T(1), x, F, w, H, T(1), z.data(), H, d.precision);
    cpu_gemm(false, false, B, H, H, T(1), h, H, u, H, T(1), z.data(), H, d.precision);
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
  PackedB<T> upack_, utpack_;
  Tensor<T, Cpu> xt_, hs_, da_, dh_, dxt_, hp_;
};

}  // namespace detail
}  // namespace fastnn
