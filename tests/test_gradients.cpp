// Finite-difference gradient checks, in double, for every layer (the losses: test_losses.cpp).
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include "gradient_util.hpp"
#include "test_util.hpp"

using namespace fastnn;
using fastnn::testing::build_standalone;
using fastnn_test::random_tensor;

using fastnn_test::expect_layer_gradients;

class DenseGrad : public ::testing::TestWithParam<Activation> {};

TEST_P(DenseGrad, MatchesFiniteDifferences) {
  Dense<double> d(DenseOptions(7).activation(GetParam()));
  expect_layer_gradients(d, Shape{5}, 4, 11);
}

INSTANTIATE_TEST_SUITE_P(AllActivations, DenseGrad,
                         ::testing::Values(Activation::Linear, Activation::Relu, Activation::Tanh,
                                           Activation::Sigmoid, Activation::Softmax, Activation::Gelu,
                                           Activation::Swish, Activation::Softplus),
                         [](const ::testing::TestParamInfo<Activation>& i) { return to_string(i.param); });

TEST(DenseGrad, WithoutBias) {
  Dense<double> d(DenseOptions(3).use_bias(false));
  expect_layer_gradients(d, Shape{6}, 2, 5);
}

// Dense on [batch, steps, features] applies the same weights to every step (Keras's last-axis
// semantics), with and without an activation, softmax included (row-wise over the last axis).
class DenseSeqGrad : public ::testing::TestWithParam<Activation> {};

TEST_P(DenseSeqGrad, MatchesFiniteDifferences) {
  Dense<double> d(DenseOptions(4).activation(GetParam()));
  expect_layer_gradients(d, Shape{5, 6}, 3, 17);
  EXPECT_EQ(d.output_shape(), (Shape{5, 4}));
}

INSTANTIATE_TEST_SUITE_P(Rank3, DenseSeqGrad, ::testing::Values(Activation::Linear, Activation::Tanh, Activation::Softmax),
                         [](const ::testing::TestParamInfo<Activation>& i) { return to_string(i.param); });

TEST(DenseSeq, EachStepEqualsDenseOnThatStepAlone) {
  Rng rng(4);
  Dense<double> seq(DenseOptions(3).activation(Activation::Softmax));
  auto storage = build_standalone(seq, Shape{4, 5}, rng);
  Dense<double> one(DenseOptions(3).activation(Activation::Softmax));
  one.build(Shape{5});
  one.bind_parameters(storage.first, storage.second);
  auto x = random_tensor(Shape{2, 4, 5}, rng);
  Tensor<double, Cpu> y, yt;
  seq.forward(x, y, Mode::Infer);
  ASSERT_EQ(y.shape(), (Shape{2, 4, 3}));
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 4; ++t) {
      Tensor<double, Cpu> xt = x.view((b * 4 + t) * 5, Shape{1, 5});
      one.forward(xt, yt, Mode::Infer);
      for (Index k = 0; k < 3; ++k) EXPECT_DOUBLE_EQ(y[(b * 4 + t) * 3 + k], yt[k]);
    }
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
  expect_layer_gradients(l, Shape{4, 5}, 3, 21);
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
    expect_layer_gradients(b, Shape{4, 3}, 3, 31);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, BidirGrad,
                         ::testing::Combine(::testing::Values(MergeMode::Concat, MergeMode::Sum, MergeMode::Mul,
                                                              MergeMode::Ave),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<MergeMode, bool>>& i) {
                           return to_string(std::get<0>(i.param)) + (std::get<1>(i.param) ? "_seq" : "_last");
                         });
