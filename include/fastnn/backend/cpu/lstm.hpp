#pragma once
/// \file lstm.hpp
/// The CPU LSTM kernel. The math (Keras's LSTM, gate order i, f, c, o):
///
///   z_t = x_t W + h_{t-1} U + b                 W [F, 4H], U [H, 4H], b [4H]
///   i = r(z_i)   f = r(z_f)   g = tanh(z_c)   o = r(z_o)      r = sigmoid or hard_sigmoid
///   c_t = f * c_{t-1} + i * g                   h_t = o * tanh(c_t)
///
/// Speed: each step is one product [x_t, h_{t-1}] [W; U] ([n, F + H] x [F + H, 4H], [W; U]
/// packed once per call) and one fused pass over the gates that also adds the bias; backward
/// mirrors it with one dZ_t U^T product per step, and the weight gradients d[W; U] and db and the
/// input gradient are single products over all steps after the loop. Work buffers are kept
/// between calls and only grow, so the step loop never allocates. Data is time-major and packed
/// inside the kernel (rnn_base.hpp): with sequences of different lengths, each step only computes
/// the samples still running. The products go through cpu_gemm (gemm.hpp); on the AVX2 / AVX-512
/// paths the gate passes are the vector kernels of x86_kernels.inl (which also sum db while they
/// write dZ), else Eigen. Inference (train = false) keeps only the current step's gates and
/// tanh(c) (backward is what needs them all), so they stay in cache from one step to the next.

#include <cstdint>

#include "fastnn/backend/cpu/gemm.hpp"
#include "fastnn/backend/cpu/rnn_base.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

template <class T>
class CpuLstmKernel {
 public:
  /// x: [B, S, F] batch-major; w: kernel [F, 4H]; u: recurrent kernel [H, 4H]; b: [4H].
  /// y: [B, H], or [B, S, H] with return_sequences (in processing order when go_backwards).
  /// train: keep what backward needs.
  void forward(const RnnDims& d, const T* x, const T* w, const T* u, const T* b, T* y, bool train = true) {
    d_ = d;
    train_ = train;
    plan_.make(d.batch, d.steps, d.lengths);
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units, G4 = 4 * H, N = plan_.total();
    const Index FH = F + H;
    xh_.resize(Shape{N, FH});
    gates_.resize(Shape{train ? N : B, G4});
    hs_.resize(Shape{B + N, H});
    cs_.resize(Shape{B + N, H});
    tc_.resize(Shape{train ? N : B, H});
    plan_.pack(x, F, d.go_backwards, xh_.data(), FH);
    isa_ = cpu_isa();
    const Precision P = d.precision;
    // [W; U]: z_t = [x_t, h_{t-1}] [W; U] is one product per step. The model's flat parameter
    // buffer holds U right after W, which then needs no copy.
    const T* wu = w;
    if (u != w + F * G4) {
      wu_.resize(Shape{FH, G4});
      std::copy(w, w + F * G4, wu_.data());
      std::copy(u, u + H * G4, wu_.data() + F * G4);
      wu = wu_.data();
    }
    // One sample: every product has one row, which reads [W; U] in place (cpu_gemm); packing it
    // would cost as much as a step.
    const bool one_row = B == 1 && P == Precision::F32;
    if (!one_row) wupack_.pack(wu, G4, false, FH, G4, P);
    std::fill(hs_.data(), hs_.data() + B * H, T(0));
    std::fill(cs_.data(), cs_.data() + B * H, T(0));
    for (Index t = 0; t < S; ++t) {
      const Index n = plan_.active(t), o0 = plan_.off(t);
      for (Index j = 0; j < n; ++j) {  // h_{t-1} beside x_t (zero at t = 0)
        T* dst = xh_.data() + (o0 + j) * FH + F;
        if (t == 0) std::fill(dst, dst + H, T(0));
        else std::copy_n(hs_.data() + (B + plan_.off(t - 1) + j) * H, H, dst);
      }
      const T* xh = xh_.data() + o0 * FH;
      T* z = gates_.data() + step_row(t) * G4;
      if (one_row) cpu_gemm(false, false, n, G4, FH, T(1), xh, FH, wu, G4, T(0), z, G4);
      else wupack_.gemm(n, T(1), xh, FH, false, T(0), z, G4);
      if (d.recurrent == Activation::HardSigmoid) step_forward<true>(t, b);
      else step_forward<false>(t, b);
    }
    plan_.outputs(hs_.data(), H, d.return_sequences, y);
  }

  /// Accumulates dw, du, db and writes dx (if not null) from dy (shaped like y).
  void backward(const T* dy, const T* w, const T* u, T* dw, T* du, T* db, T* dx) {
    if (!train_)
      throw ArgumentError((d_.layer.empty() ? "LSTM" : d_.layer) + ": backward needs a forward pass in Mode::Train before it");
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
    // d[W; U] += [X, H_prev]^T dZ: one product when the two gradients are adjacent (as a model's
    // flat parameters are), else one for each
    const Index FH = F + H;
    if (du == dw + F * G4) {
      cpu_gemm(true, false, FH, G4, N, T(1), xh_.data(), FH, dgates_.data(), G4, T(1), dw, G4, P);
    } else {
      cpu_gemm(true, false, F, G4, N, T(1), xh_.data(), FH, dgates_.data(), G4, T(1), dw, G4, P);
      cpu_gemm(true, false, H, G4, N, T(1), xh_.data() + F, FH, dgates_.data(), G4, T(1), du, G4, P);
    }
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
  /// Adds the bias b to the step's pre-activations and runs the cell.
  template <bool Hard>
  void step_forward(Index t, const T* b) {
    const Index B = d_.batch, H = d_.units, G4 = 4 * H;
    const Index o0 = plan_.off(t), p0 = t == 0 ? 0 : B + plan_.off(t - 1), r0 = step_row(t);
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (vector_gates()) {
        auto* f = isa_ == Isa::Avx2 ? &x86_avx2::lstm_forward_rows<Hard> : &x86_avx512::lstm_forward_rows<Hard>;
        f(plan_.active(t), H, gates_.data() + r0 * G4, b, cs_.data() + p0 * H, cs_.data() + (B + o0) * H,
          tc_.data() + r0 * H, hs_.data() + (B + o0) * H);
        return;
      }
    }
#endif
    MatMap<T>(gates_.data() + r0 * G4, plan_.active(t), G4).rowwise() +=
        Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b, G4);
    for (Index j = 0; j < plan_.active(t); ++j) {
      T* z = gates_.data() + (r0 + j) * G4;
      ArrMap<T> i(z, H), f(z + H, H), g(z + 2 * H, H), o(z + 3 * H, H);
      gate_act<T, Hard>(i);
      gate_act<T, Hard>(f);
      g = g.tanh();
      gate_act<T, Hard>(o);
      CArrMap<T> cprev(cs_.data() + (p0 + j) * H, H);
      ArrMap<T> c(cs_.data() + (B + o0 + j) * H, H);
      ArrMap<T> tc(tc_.data() + (r0 + j) * H, H);
      ArrMap<T> h(hs_.data() + (B + o0 + j) * H, H);
      c = f * cprev + i * g;
      tc = c.tanh();
      h = o * tc;
    }
  }

  /// The first row of step t's gates and tanh(c): all steps are kept for training, one for inference.
  Index step_row(Index t) const { return train_ ? plan_.off(t) : 0; }

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
  bool train_ = true;
  PackedB<T> wupack_, utpack_;
  Tensor<T, Cpu> xh_, wu_, gates_, hs_, cs_, tc_, dgates_, dh_, dc_, dxt_;
};

}  // namespace detail
}  // namespace fastnn
