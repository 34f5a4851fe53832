// Finite-difference gradient checks, in double, for every layer and the loss.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

using namespace fastnn;
using fastnn::testing::build_standalone;
using fastnn::testing::check_gradients;

namespace {

constexpr double kTol = 1e-6;

Tensor<double, Cpu> random_tensor(const Shape& s, Rng& rng, double lo = -1, double hi = 1) {
  Tensor<double, Cpu> t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = rng.uniform(lo, hi);
  return t;
}

void expect_gradients_match(Layer<double, Cpu>& layer, const Shape& in, Index batch, std::uint64_t seed) {
  Rng rng(seed);
  auto storage = build_standalone(layer, in, rng);
  // Perturb the parameters away from their initial values (zero biases would hide bias bugs).
  for (Index i = 0; i < storage.first.size(); ++i) storage.first[i] += rng.uniform(-0.3, 0.3);
  auto x = random_tensor(in.prepend(batch), rng);
  auto errs = check_gradients(layer, x, rng);
  ASSERT_EQ(errs.size(), layer.parameters().size() + 1);
  for (const auto& e : errs) {
    EXPECT_LT(e.rel_error, kTol) << layer.type_name() << " " << e.name << " max abs diff " << e.max_abs_diff;
  }
}

}  // namespace

class DenseGrad : public ::testing::TestWithParam<Activation> {};

TEST_P(DenseGrad, MatchesFiniteDifferences) {
  Dense<double> d(DenseOptions(7).activation(GetParam()));
  expect_gradients_match(d, Shape{5}, 4, 11);
}

INSTANTIATE_TEST_SUITE_P(AllActivations, DenseGrad,
                         ::testing::Values(Activation::Linear, Activation::Relu, Activation::Tanh,
                                           Activation::Sigmoid, Activation::Softmax),
                         [](const ::testing::TestParamInfo<Activation>& i) { return to_string(i.param); });

TEST(DenseGrad, WithoutBiasAndRank3Input) {
  Dense<double> d(DenseOptions(3).use_bias(false));
  expect_gradients_match(d, Shape{6}, 2, 5);
}

struct LstmCase {
  Activation recurrent;
  bool return_sequences;
  bool go_backwards;
};

class LstmGrad : public ::testing::TestWithParam<LstmCase> {};

TEST_P(LstmGrad, MatchesFiniteDifferences) {
  auto c = GetParam();
  LSTM<double> l(LSTMOptions(6).recurrent_activation(c.recurrent).return_sequences(c.return_sequences).go_backwards(c.go_backwards));
  expect_gradients_match(l, Shape{4, 5}, 3, 21);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, LstmGrad,
    ::testing::Values(LstmCase{Activation::Sigmoid, false, false}, LstmCase{Activation::Sigmoid, true, false},
                      LstmCase{Activation::HardSigmoid, false, false}, LstmCase{Activation::HardSigmoid, true, false},
                      LstmCase{Activation::Sigmoid, true, true}, LstmCase{Activation::HardSigmoid, false, true}),
    [](const ::testing::TestParamInfo<LstmCase>& i) {
      return to_string(i.param.recurrent) + (i.param.return_sequences ? "_seq" : "_last") +
             (i.param.go_backwards ? "_backwards" : "");
    });

class BidirGrad : public ::testing::TestWithParam<std::tuple<MergeMode, bool>> {};

TEST_P(BidirGrad, MatchesFiniteDifferences) {
  auto [mode, seq] = GetParam();
  for (int threads : {1, 2}) {
    Bidirectional<double> b(LSTMOptions(5).return_sequences(seq), mode);
    b.set_threads(threads);
    expect_gradients_match(b, Shape{4, 3}, 3, 31);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, BidirGrad,
                         ::testing::Combine(::testing::Values(MergeMode::Concat, MergeMode::Sum, MergeMode::Mul,
                                                              MergeMode::Ave),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<MergeMode, bool>>& i) {
                           return to_string(std::get<0>(i.param)) + (std::get<1>(i.param) ? "_seq" : "_last");
                         });

TEST(LossGrad, SoftmaxCrossEntropyMatchesFiniteDifferences) {
  Rng rng(3);
  auto z = random_tensor(Shape{6, 10}, rng, -5, 5);
  Tensor<std::int32_t, Cpu> y(Shape{6});
  for (Index i = 0; i < 6; ++i) y[i] = static_cast<std::int32_t>(rng.below(10));
  Tensor<double, Cpu> dz;
  softmax_cross_entropy(z, y, &dz);
  std::vector<double> a, n;
  const double h = 1e-6;
  for (Index i = 0; i < z.size(); ++i) {
    const double old = z[i];
    z[i] = old + h;
    const double lp = softmax_cross_entropy(z, y);
    z[i] = old - h;
    const double lm = softmax_cross_entropy(z, y);
    z[i] = old;
    n.push_back((lp - lm) / (2 * h));
    a.push_back(dz[i]);
  }
  EXPECT_LT(fastnn::testing::rel_error(a, n), kTol);
}

TEST(Loss, StableForHugeLogitsAndMatchesDefinition) {
  Tensor<double, Cpu> z(Shape{2, 3});
  const double v[] = {1000, 0, -1000, 1, 2, 3};
  std::copy(v, v + 6, z.data());
  Tensor<std::int32_t, Cpu> y(Shape{2});
  y[0] = 0;
  y[1] = 1;
  const double l = softmax_cross_entropy(z, y);
  // row 0: logsumexp = 1000 (+ tiny) -> loss ~ 0; row 1: log(e^1 + e^2 + e^3) - 2
  const double row1 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 2.0;
  EXPECT_TRUE(std::isfinite(l));
  EXPECT_NEAR(l, row1 / 2, 1e-12);
  EXPECT_DOUBLE_EQ(accuracy(z, y), 0.5);
}
