// Optimizer steps against hand-computed values of the documented formulas; initializer
// properties.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include <cmath>

using namespace fastnn;

namespace {

// p = [1, -2], g = [0.5, 0.25] for two steps (g the same both times).
struct Fixture {
  Tensor<double, Cpu> p{Shape{2}}, g{Shape{2}};
  Fixture() {
    p[0] = 1;
    p[1] = -2;
    g[0] = 0.5;
    g[1] = 0.25;
  }
};

}  // namespace

TEST(SGD, PlainStep) {
  Fixture f;
  SGD<double> opt(0.1);
  opt.attach(f.p, f.g);
  opt.step();
  EXPECT_DOUBLE_EQ(f.p[0], 1 - 0.1 * 0.5);
  EXPECT_DOUBLE_EQ(f.p[1], -2 - 0.1 * 0.25);
}

TEST(SGD, NesterovTwoStepsKerasFormula) {
  Fixture f;
  SGD<double> opt(0.5, 0.9, true);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  // v1 = -lr g; p1 = p0 + m v1 - lr g; v2 = m v1 - lr g; p2 = p1 + m v2 - lr g
  for (int i = 0; i < 2; ++i) {
    const double p0 = i == 0 ? 1 : -2, g = i == 0 ? 0.5 : 0.25;
    const double v1 = -0.5 * g, p1 = p0 + 0.9 * v1 - 0.5 * g;
    const double v2 = 0.9 * v1 - 0.5 * g, p2 = p1 + 0.9 * v2 - 0.5 * g;
    EXPECT_NEAR(f.p[i], p2, 1e-15);
    EXPECT_NEAR(opt.state()[0].second[i], v2, 1e-15);
  }
}

TEST(SGD, ClassicalMomentumAndDecay) {
  Fixture f;
  SGD<double> opt(0.2, 0.5, false, /*decay=*/0.1);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  const double lr1 = 0.2, lr2 = 0.2 / (1 + 0.1 * 1);
  const double v1 = -lr1 * 0.5, v2 = 0.5 * v1 - lr2 * 0.5;
  EXPECT_NEAR(f.p[0], 1 + v1 + v2, 1e-15);
  EXPECT_EQ(opt.iterations(), 2);
}

TEST(Adam, TwoStepsKerasFormula) {
  Fixture f;
  Adam<double> opt(0.01, 0.9, 0.999, 1e-7);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  for (int i = 0; i < 2; ++i) {
    double p = i == 0 ? 1 : -2, g = i == 0 ? 0.5 : 0.25, m = 0, v = 0;
    for (int t = 1; t <= 2; ++t) {
      const double lr_t = 0.01 * std::sqrt(1 - std::pow(0.999, t)) / (1 - std::pow(0.9, t));
      m = 0.9 * m + 0.1 * g;
      v = 0.999 * v + 0.001 * g * g;
      p -= lr_t * m / (std::sqrt(v) + 1e-7);
    }
    EXPECT_NEAR(f.p[i], p, 1e-14);
  }
}

TEST(RMSprop, TwoStepsKerasFormula) {
  Fixture f;
  RMSprop<double> opt(0.01, 0.9, 1e-7);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  double p = 1, a = 0;
  for (int t = 0; t < 2; ++t) {
    a = 0.9 * a + 0.1 * 0.25;
    p -= 0.01 * 0.5 / (std::sqrt(a) + 1e-7);
  }
  EXPECT_NEAR(f.p[0], p, 1e-14);
}

TEST(Optimizer, RejectsBadHyperParameters) {
  EXPECT_THROW(SGD<float>(-1.0), ArgumentError);
  EXPECT_THROW(SGD<float>(0.1, 1.5), ArgumentError);
  EXPECT_THROW(Adam<float>(0.1, 1.0), ArgumentError);
  EXPECT_THROW(RMSprop<float>(0.1, 0.9, 0.0), ArgumentError);
  SGD<float> s(0.1);
  EXPECT_THROW(s.step(), ArgumentError);  // not attached
}

TEST(Init, OrthogonalRecurrentKernelHasOrthonormalRows) {
  Rng rng(7);
  Tensor<double, Cpu> u(Shape{128, 512});
  init::orthogonal(u, rng);
  auto m = u.matrix();
  Eigen::MatrixXd gram = m * m.transpose();
  EXPECT_LT((gram - Eigen::MatrixXd::Identity(128, 128)).cwiseAbs().maxCoeff(), 1e-12);
  // tall case: orthonormal columns
  Tensor<double, Cpu> v(Shape{20, 6});
  init::orthogonal(v, rng);
  Eigen::MatrixXd g2 = v.matrix().transpose() * v.matrix();
  EXPECT_LT((g2 - Eigen::MatrixXd::Identity(6, 6)).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(Init, GlorotUniformBoundsAndSpread) {
  Rng rng(9);
  Tensor<double, Cpu> w(Shape{28, 512});
  init::glorot_uniform(w, 28, 512, rng);
  const double limit = std::sqrt(6.0 / (28 + 512));
  EXPECT_LE(w.array().abs().maxCoeff(), limit);
  EXPECT_GT(w.array().abs().maxCoeff(), 0.95 * limit);   // fills the range
  EXPECT_NEAR(w.array().mean(), 0.0, 0.05 * limit);
  // variance of U(-l, l) is l^2 / 3
  const double var = (w.array() - w.array().mean()).square().mean();
  EXPECT_NEAR(var, limit * limit / 3, 0.05 * limit * limit / 3);
}

TEST(Init, LstmUnitForgetBias) {
  Rng rng(1);
  LSTM<float> l(LSTMOptions(4));
  auto st = fastnn::testing::build_standalone(l, Shape{3, 2}, rng);
  const auto& b = l.parameters()[2].value;
  for (Index j = 0; j < 16; ++j) EXPECT_EQ(b[j], (j >= 4 && j < 8) ? 1.0f : 0.0f) << j;
}

TEST(Rng, StateRoundTripAndPortableStreams) {
  Rng a(123);
  a.normal();  // leaves a spare normal in the state
  Rng b;
  b.set_state(a.state());
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(a.next_u64(), b.next_u64());
    EXPECT_EQ(a.normal(), b.normal());
  }
  EXPECT_THROW(b.set_state("garbage"), ArgumentError);
  // mt19937_64 is fully specified: the 10000th output for the default seed is fixed.
  std::mt19937_64 ref;
  ref.discard(9999);
  EXPECT_EQ(ref(), 9981545732273789042ULL);
}
