// The fast CPU LSTM against a plain, obviously-correct implementation written from the
// equations: per sample, per step, scalar loops, in double. Forward output and every gradient
// of the float fast path must match within 1e-5 (relative to the tensor's magnitude).
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "test_util.hpp"

using namespace fastnn;
using fastnn_test::IsaScope;

namespace {

struct RefLstm {
  Index B, S, F, H;
  bool hard, seq, back;
  std::vector<double> W, U, b;  // [F,4H], [H,4H], [4H]

  double ract(double z) const {
    return hard ? std::min(1.0, std::max(0.0, 0.2 * z + 0.5)) : 1.0 / (1.0 + std::exp(-z));
  }
  double ract_grad(double y) const { return hard ? ((y > 0 && y < 1) ? 0.2 : 0.0) : y * (1 - y); }

  // forward keeping every intermediate; returns y
  struct Tape {
    std::vector<std::vector<double>> i, f, g, o, c, h;  // per (b, t) vectors of H; c/h index t+1
  };
  std::vector<double> forward(const std::vector<double>& x, std::vector<Tape>& tapes) const {
    std::vector<double> y(static_cast<std::size_t>(B * (seq ? S : 1) * H));
    tapes.assign(static_cast<std::size_t>(B), Tape{});
    for (Index bb = 0; bb < B; ++bb) {
      Tape& tp = tapes[static_cast<std::size_t>(bb)];
      std::vector<double> h(H, 0.0), c(H, 0.0);
      tp.c.push_back(c);
      tp.h.push_back(h);
      for (Index t = 0; t < S; ++t) {
        const Index st = back ? S - 1 - t : t;
        std::vector<double> z(4 * H);
        for (Index j = 0; j < 4 * H; ++j) {
          double s = b[j];
          for (Index k = 0; k < F; ++k) s += x[(bb * S + st) * F + k] * W[k * 4 * H + j];
          for (Index k = 0; k < H; ++k) s += h[k] * U[k * 4 * H + j];
          z[j] = s;
        }
        std::vector<double> vi(H), vf(H), vg(H), vo(H);
        for (Index j = 0; j < H; ++j) {
          vi[j] = ract(z[j]);
          vf[j] = ract(z[H + j]);
          vg[j] = std::tanh(z[2 * H + j]);
          vo[j] = ract(z[3 * H + j]);
          c[j] = vf[j] * c[j] + vi[j] * vg[j];
          h[j] = vo[j] * std::tanh(c[j]);
        }
        tp.i.push_back(vi);
        tp.f.push_back(vf);
        tp.g.push_back(vg);
        tp.o.push_back(vo);
        tp.c.push_back(c);
        tp.h.push_back(h);
        if (seq)
          for (Index j = 0; j < H; ++j) y[(bb * S + t) * H + j] = h[j];
      }
      if (!seq)
        for (Index j = 0; j < H; ++j) y[bb * H + j] = h[j];
    }
    return y;
  }

  void backward(const std::vector<double>& x, const std::vector<Tape>& tapes, const std::vector<double>& dy,
                std::vector<double>& dW, std::vector<double>& dU, std::vector<double>& db,
                std::vector<double>& dx) const {
    dW.assign(W.size(), 0);
    dU.assign(U.size(), 0);
    db.assign(b.size(), 0);
    dx.assign(x.size(), 0);
    for (Index bb = 0; bb < B; ++bb) {
      const Tape& tp = tapes[static_cast<std::size_t>(bb)];
      std::vector<double> dh(H, 0.0), dc(H, 0.0);
      for (Index t = S - 1; t >= 0; --t) {
        const Index st = back ? S - 1 - t : t;
        for (Index j = 0; j < H; ++j) {
          if (seq) dh[j] += dy[(bb * S + t) * H + j];
          else if (t == S - 1) dh[j] += dy[bb * H + j];
        }
        std::vector<double> dz(4 * H);
        const auto& vi = tp.i[t];
        const auto& vf = tp.f[t];
        const auto& vg = tp.g[t];
        const auto& vo = tp.o[t];
        const auto& cp = tp.c[t];
        const auto& cc = tp.c[t + 1];
        for (Index j = 0; j < H; ++j) {
          const double tc = std::tanh(cc[j]);
          const double dcj = dc[j] + dh[j] * vo[j] * (1 - tc * tc);
          dz[j] = dcj * vg[j] * ract_grad(vi[j]);
          dz[H + j] = dcj * cp[j] * ract_grad(vf[j]);
          dz[2 * H + j] = dcj * vi[j] * (1 - vg[j] * vg[j]);
          dz[3 * H + j] = dh[j] * tc * ract_grad(vo[j]);
          dc[j] = dcj * vf[j];
        }
        const auto& hp = tp.h[t];
        for (Index j = 0; j < 4 * H; ++j) {
          db[j] += dz[j];
          for (Index k = 0; k < F; ++k) {
            dW[k * 4 * H + j] += x[(bb * S + st) * F + k] * dz[j];
            dx[(bb * S + st) * F + k] += W[k * 4 * H + j] * dz[j];
          }
          for (Index k = 0; k < H; ++k) dU[k * 4 * H + j] += hp[k] * dz[j];
        }
        for (Index k = 0; k < H; ++k) {
          double s = 0;
          for (Index j = 0; j < 4 * H; ++j) s += U[k * 4 * H + j] * dz[j];
          dh[k] = s;
        }
      }
    }
  }
};

double max_rel(const float* a, const std::vector<double>& ref) {
  double scale = 0, diff = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::fabs(ref[i]));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - ref[i]));
  }
  return diff / std::max(scale, 1e-30);
}

struct Case {
  Index B, S, F, H;
  bool hard, seq, back;
};

/// Forces a CPU kernel path for one test; skips the test where the CPU lacks it.
/// Each case on every kernel path (backend/cpu/isa.hpp), in float (1e-5) and, on the paths with
/// bfloat16 products, in bf16 mixed precision (bf16 rounding of every product input: 3e-2).
class FastVsReference : public ::testing::TestWithParam<std::tuple<Case, Isa, Precision>> {};

TEST_P(FastVsReference, ForwardAndAllGradientsWithinTolerance) {
  const Case c = std::get<0>(GetParam());
  const Isa isa = std::get<1>(GetParam());
  const Precision prec = std::get<2>(GetParam());
  if (isa > detected_cpu_isa()) GTEST_SKIP() << "this CPU has no " << isa_name(isa) << " path";
  if (prec == Precision::BF16 && isa < Isa::Avx512Bf16) GTEST_SKIP() << "no bf16 products on " << isa_name(isa);
  IsaScope scope(isa);
  const double tol = prec == Precision::BF16 ? 3e-2 : 1e-5;
  Rng rng(c.B * 1000 + c.H);
  LSTM<float> l(LSTMOptions(c.H)
                    .recurrent_activation(c.hard ? Activation::HardSigmoid : Activation::Sigmoid)
                    .return_sequences(c.seq)
                    .go_backwards(c.back));
  auto storage = fastnn::testing::build_standalone(l, Shape{c.S, c.F}, rng);
  l.set_precision(prec);
  for (Index i = 0; i < storage.first.size(); ++i) storage.first[i] += static_cast<float>(rng.uniform(-0.1, 0.1));
  Tensor<float, Cpu> x(Shape{c.B, c.S, c.F});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(0, 1));
  Tensor<float, Cpu> y;
  l.forward(x, y, Mode::Train);
  Tensor<float, Cpu> dy(y.shape()), dx;
  for (Index i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(rng.uniform(-1, 1));
  l.backward(x, y, dy, &dx);

  RefLstm ref{c.B, c.S, c.F, c.H, c.hard, c.seq, c.back, {}, {}, {}};
  auto& p = l.parameters();
  ref.W.assign(p[0].value.data(), p[0].value.data() + p[0].value.size());
  ref.U.assign(p[1].value.data(), p[1].value.data() + p[1].value.size());
  ref.b.assign(p[2].value.data(), p[2].value.data() + p[2].value.size());
  std::vector<double> xd(x.data(), x.data() + x.size()), dyd(dy.data(), dy.data() + dy.size());
  std::vector<RefLstm::Tape> tapes;
  auto yr = ref.forward(xd, tapes);
  std::vector<double> dW, dU, db, dxr;
  ref.backward(xd, tapes, dyd, dW, dU, db, dxr);

  EXPECT_LT(max_rel(y.data(), yr), tol) << "forward";
  EXPECT_LT(max_rel(dx.data(), dxr), tol) << "input gradient";
  EXPECT_LT(max_rel(p[0].grad.data(), dW), tol) << "kernel gradient";
  EXPECT_LT(max_rel(p[1].grad.data(), dU), tol) << "recurrent kernel gradient";
  EXPECT_LT(max_rel(p[2].grad.data(), db), tol) << "bias gradient";
  if (prec == Precision::BF16) {  // and bf16 is really in use: the float result differs
    l.set_precision(Precision::F32);
    Tensor<float, Cpu> y32;
    l.forward(x, y32, Mode::Train);
    double d = 0;
    for (Index i = 0; i < y.size(); ++i) d = std::max(d, static_cast<double>(std::fabs(y[i] - y32[i])));
    if (c.F * c.H > 1) {
      EXPECT_GT(d, 0.0) << "bf16 forward equals the float one bit for bit";
    }
  }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, Isa, Precision>>& info) {
  const Case& c = std::get<0>(info.param);
  return "B" + std::to_string(c.B) + "S" + std::to_string(c.S) + "F" + std::to_string(c.F) + "H" + std::to_string(c.H) +
         (c.hard ? "_hard" : "") + (c.seq ? "_seq" : "") + (c.back ? "_back" : "") + "_" +
         isa_name(std::get<1>(info.param)) + "_" + to_string(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, FastVsReference,
                         ::testing::Combine(::testing::Values(Case{1, 1, 1, 1, false, false, false},
                                                              Case{3, 5, 4, 7, false, true, false},
                                                              Case{8, 28, 28, 16, false, false, false},
                                                              Case{5, 6, 3, 9, true, false, true},
                                                              Case{16, 28, 28, 128, false, false, false},
                                                              Case{4, 7, 10, 33, true, true, false}),
                                            ::testing::Values(Isa::Baseline, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16,
                                                              Isa::AmxBf16),
                                            ::testing::Values(Precision::F32, Precision::BF16)),
                         case_name);

}  // namespace
