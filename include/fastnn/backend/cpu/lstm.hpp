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
/// samples still running. The products go through cpu_gemm (gemm.hpp), U packed once per call
/// for all steps; on the AVX2 / AVX-512 paths the gate passes are the vector kernels of
/// x86_kernels.inl (which also sum db while they write dZ), else Eigen.

#include <cstdint>

#include "fastnn/backend/cpu/gemm.hpp"
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
    isa_ = cpu_isa();
    const Precision P = d.precision;
    for (Index r = 0; r < N; ++r) std::copy(b, b + G4, gates_.data() + r * G4);
    cpu_gemm(false, false, N, G4, F, T(1), xt_.data(), F, w, G4, T(1), gates_.data(), G4, P);  // every step at once
    upack_.pack(u, G4, false, H, G4, P);
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    std::fill(cs_.data(), cs_.data() + B * H, T(0));
    for (Index t = 0; t < S; ++t) {
      const Index n = plan_.active(t);
      if (t > 0) upack_.gemm(n, T(1), hs_.data() + (B + plan_.off(t - 1)) * H, H, false, T(1),
                             gates_.data() + plan_.off(t) * G4, G4);
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
    const Precision P = d.precision;
    const bool vec = vector_gates();
    utpack_.pack(u, G4, true, G4, H, P);  // op = U^T [4H, H]
    for (Index t = S - 1; t >= 0; --t) {
      plan_.add_output_grad(dy, H, d.return_sequences, t, dh_.data());  // dh += dL/dh_t from the output
      if (d.recurrent == Activation::HardSigmoid) step_backward<true>(t, db);
      else step_backward<false>(t, db);
      if (t > 0)
        utpack_.gemm(plan_.active(t), T(1), dgates_.data() + plan_.off(t) * G4, G4, false, T(0), dh_.data(), H);
    }
    cpu_gemm(true, false, F, G4, N, T(1), xt_.data(), F, dgates_.data(), G4, T(1), dw, G4, P);
    // h_{t-1} for the rows of steps >= 1 (h_{-1} = 0 contributes nothing)
    const Index R = N - plan_.off(1);
    if (S > 1 && R > 0)
      cpu_gemm(true, false, H, G4, R, T(1), plan_.previous_states(hs_.data(), H, hp_), H,
               dgates_.data() + plan_.off(1) * G4, G4, T(1), du, G4, P);
    if (!vec) Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, G4) += CMatMap<T>(dgates_.data(), N, G4).colwise().sum();
    if (dx) {
      dxt_.resize(Shape{N, F});
      cpu_gemm(false, true, N, F, G4, T(1), dgates_.data(), G4, w, G4, T(0), dxt_.data(), F, P);
      plan_.unpack(dxt_.data(), F, d.go_backwards, dx);
    }
  }

  /// One step for a batch of streams: x [B, F]; h, c [B, H] are read and updated in place;
  /// z is scratch. Computed as forward() computes a step.
  static void step(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* h, T* c,
                   Tensor<T, Cpu>& z) {
    const Index B = d.batch, F = d.features, H = d.units, G4 = 4 * H;
    z.resize(Shape{B, G4});
    for (Index r = 0; r < B; ++r) std::copy(b, b + G4, z.data() + r * G4);
    cpu_gemm(false, false, B, G4, F, T(1), x, F, w, G4, T(1), z.data(), G4, d.precision);
    cpu_gemm(false, false, B, G4, H, T(1), h, H, u, G4, T(1), z.data(), G4, d.precision);
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
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (vector_gates()) {
        auto* f = isa_ == Isa::Avx2 ? &x86_avx2::lstm_forward_rows<Hard> : &x86_avx512::lstm_forward_rows<Hard>;
        f(plan_.active(t), H, gates_.data() + o0 * G4, cs_.data() + p0 * H, cs_.data() + (B + o0) * H,
          tc_.data() + o0 * H, hs_.data() + (B + o0) * H);
        return;
      }
    }
#endif
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

  /// Whether the gate passes run as the x86 vector kernels (float on the AVX2 / AVX-512 paths).
  bool vector_gates() const { return std::is_same<T, float>::value && isa_ != Isa::Baseline; }

  /// Also adds the step's dZ rows into db on the vector path.
  template <bool Hard>
  void step_backward(Index t, T* db) {
    const Index B = d_.batch, H = d_.units, G4 = 4 * H;
    const Index o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1);
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (vector_gates()) {
        auto* f = isa_ == Isa::Avx2 ? &x86_avx2::lstm_backward_rows<Hard> : &x86_avx512::lstm_backward_rows<Hard>;
        f(plan_.active(t), H, gates_.data() + o0 * G4, cs_.data() + p0 * H, tc_.data() + o0 * H, dh_.data(),
          dc_.data(), dgates_.data() + o0 * G4, db);
        return;
      }
    }
#endif
    (void)db;
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
  Isa isa_ = Isa::Baseline;
  PackedB<T> upack_, utpack_;
  Tensor<T, Cpu> xt_, gates_, hs_, cs_, tc_, dgates_, dh_, dc_, dxt_, hp_;
};

}  // namespace detail
}  // namespace fastnn
