// The recurrent family on the CPU: GRU (both reset_after forms), SimpleRNN, LSTM, Embedding and
// Masking; gradient checks in double against finite differences (alone, in Bidirectional,
// stacked; with and without per-sample lengths), masked batches against each sample run alone
// at its own length, streaming against the full-sequence forward, and the typed errors.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include "gradient_util.hpp"
#include "test_util.hpp"

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using namespace fastnn;
using fastnn::testing::build_standalone;

namespace {

using fastnn_test::make_lengths;
using fastnn_test::random_tensor;

/// Two layers chained as one (with lengths flowing between them), for gradient checks of
/// stacked recurrent layers.
class Stack : public Layer<double, Cpu> {
 public:
  Stack(std::unique_ptr<Layer<double, Cpu>> a, std::unique_ptr<Layer<double, Cpu>> b) : a_(std::move(a)), b_(std::move(b)) {}
  std::string type_name() const override { return "Stack"; }
  LayerConfig config() const override { return {}; }
  std::unique_ptr<Layer<double, Cpu>> clone_unbuilt() const override {
    return std::make_unique<Stack>(a_->clone_unbuilt(), b_->clone_unbuilt());
  }
  void set_name(const std::string& n) override {
    name_ = n;
    a_->set_name(n + ".a");
    b_->set_name(n + ".b");
  }
  Shape build(const Shape& in) override {
    input_shape_ = in;
    output_shape_ = b_->build(a_->build(in));
    return output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    auto s = a_->param_specs();
    for (auto p : b_->param_specs()) s.push_back(p);
    return s;
  }
  void bind_parameters(const Tensor<double, Cpu>& v, const Tensor<double, Cpu>& g) override {
    const Index na = a_->param_count(), nb = b_->param_count();
    a_->bind_parameters(v.view(0, Shape{na}), g.view(0, Shape{na}));
    b_->bind_parameters(v.view(na, Shape{nb}), g.view(na, Shape{nb}));
    params_ = a_->parameters();
    for (auto& p : b_->parameters()) params_.push_back(p);
  }
  void initialize(Rng& rng) override {
    a_->initialize(rng);
    b_->initialize(rng);
  }
  void set_input_lengths(const Lengths& l) override {
    in_lengths_ = l;
    a_->set_input_lengths(l);
  }
  Lengths output_lengths() const override { return b_->output_lengths(); }
  void forward(const Tensor<double, Cpu>& x, Tensor<double, Cpu>& y, Mode m) override {
    a_->forward(x, mid_, m);
    b_->set_input_lengths(a_->output_lengths());
    b_->forward(mid_, y, m);
  }
  void backward(const Tensor<double, Cpu>& x, const Tensor<double, Cpu>& y, const Tensor<double, Cpu>& dy,
                Tensor<double, Cpu>* dx) override {
    b_->backward(mid_, y, dy, &dmid_);
    a_->backward(x, mid_, dmid_, dx);
  }

 private:
  std::unique_ptr<Layer<double, Cpu>> a_, b_;
  Tensor<double, Cpu> mid_, dmid_;
};

/// The shared finite-difference check (gradient_util.hpp) with per-sample lengths, and optionally
/// without the input's gradient or with drawn token ids as input.
void expect_gradients_match(Layer<double, Cpu>& layer, const Shape& in, Index batch, std::uint64_t seed,
                            const Lengths& lengths = Lengths(), bool check_input = true,
                            std::function<Tensor<double, Cpu>(Rng&)> input = nullptr) {
  fastnn_test::GradCheck opt;
  opt.lengths = lengths;
  opt.check_input = check_input;
  opt.input = std::move(input);
  fastnn_test::expect_layer_gradients(layer, in, batch, seed, opt);
}

const Lengths kLengths = make_lengths({5, 2, 4, 1});  // batch 4, steps 5

struct RnnCase {
  std::string name;
  std::function<std::unique_ptr<RecurrentLayer<double, Cpu>>(bool seq, bool back)> make;
};

std::vector<RnnCase> rnn_cases() {
  return {
      {"GRU", [](bool s, bool b) { return std::make_unique<GRU<double>>(GRUOptions(4).return_sequences(s).go_backwards(b)); }},
      {"GRU_reset_before",
       [](bool s, bool b) {
         return std::make_unique<GRU<double>>(GRUOptions(4).reset_after(false).return_sequences(s).go_backwards(b));
       }},
      {"GRU_hard_sigmoid",
       [](bool s, bool b) {
         return std::make_unique<GRU<double>>(
             GRUOptions(4).recurrent_activation(Activation::HardSigmoid).return_sequences(s).go_backwards(b));
       }},
      {"SimpleRNN_tanh",
       [](bool s, bool b) {
         return std::make_unique<SimpleRNN<double>>(SimpleRNNOptions(4).return_sequences(s).go_backwards(b));
       }},
      {"SimpleRNN_relu",
       [](bool s, bool b) {
         return std::make_unique<SimpleRNN<double>>(
             SimpleRNNOptions(4).activation(Activation::Relu).return_sequences(s).go_backwards(b));
       }},
      {"LSTM", [](bool s, bool b) { return std::make_unique<LSTM<double>>(LSTMOptions(4).return_sequences(s).go_backwards(b)); }},
  };
}

}  // namespace

// ---- gradient checks --------------------------------------------------------------------------

class RecurrentGrad : public ::testing::TestWithParam<std::tuple<int, bool, bool, bool>> {};

TEST_P(RecurrentGrad, MatchesFiniteDifferences) {
  const auto [which, seq, back, masked] = GetParam();
  auto l = rnn_cases()[static_cast<std::size_t>(which)].make(seq, back);
  expect_gradients_match(*l, Shape{5, 3}, 4, 100 + static_cast<std::uint64_t>(which), masked ? kLengths : Lengths());
}

INSTANTIATE_TEST_SUITE_P(
    Cells, RecurrentGrad,
    ::testing::Combine(::testing::Range(0, 6), ::testing::Bool(), ::testing::Bool(), ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<int, bool, bool, bool>>& i) {
      return rnn_cases()[static_cast<std::size_t>(std::get<0>(i.param))].name + (std::get<1>(i.param) ? "_seq" : "_last") +
             (std::get<2>(i.param) ? "_backwards" : "") + (std::get<3>(i.param) ? "_masked" : "");
    });

class BidirectionalGrad : public ::testing::TestWithParam<std::tuple<int, MergeMode, bool>> {};

TEST_P(BidirectionalGrad, MaskedMatchesFiniteDifferences) {
  const auto [which, mode, seq] = GetParam();
  Bidirectional<double> b(rnn_cases()[static_cast<std::size_t>(which)].make(seq, false), mode);
  expect_gradients_match(b, Shape{5, 3}, 4, 200 + static_cast<std::uint64_t>(which), kLengths);
}

INSTANTIATE_TEST_SUITE_P(Modes, BidirectionalGrad,
                         ::testing::Combine(::testing::Values(0, 1, 3, 5),
                                            ::testing::Values(MergeMode::Concat, MergeMode::Sum, MergeMode::Mul,
                                                              MergeMode::Ave),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, MergeMode, bool>>& i) {
                           return rnn_cases()[static_cast<std::size_t>(std::get<0>(i.param))].name + "_" +
                                  to_string(std::get<1>(i.param)) + (std::get<2>(i.param) ? "_seq" : "_last");
                         });

class StackedGrad : public ::testing::TestWithParam<std::tuple<int, bool>> {};

// A recurrent layer with return_sequences into another one, and a Bidirectional into a
// recurrent layer, with lengths flowing from the first into the second.
TEST_P(StackedGrad, MatchesFiniteDifferences) {
  const auto [which, masked] = GetParam();
  const auto cases = rnn_cases();
  const auto& c = cases[static_cast<std::size_t>(which)];
  Stack s(c.make(true, false), c.make(false, false));
  expect_gradients_match(s, Shape{5, 3}, 4, 300 + static_cast<std::uint64_t>(which), masked ? kLengths : Lengths());
  Stack bs(std::make_unique<Bidirectional<double>>(c.make(true, false)), c.make(true, true));
  expect_gradients_match(bs, Shape{5, 3}, 4, 400 + static_cast<std::uint64_t>(which), masked ? kLengths : Lengths());
}

INSTANTIATE_TEST_SUITE_P(Cells, StackedGrad, ::testing::Combine(::testing::Values(0, 1, 3, 5), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& i) {
                           return rnn_cases()[static_cast<std::size_t>(std::get<0>(i.param))].name +
                                  (std::get<1>(i.param) ? "_masked" : "");
                         });

Tensor<double, Cpu> random_ids(Index n, Index steps, Index vocab, Rng& rng, bool pad) {
  Tensor<double, Cpu> x(Shape{n, steps});
  for (Index i = 0; i < n; ++i) {
    const Index len = pad ? 1 + static_cast<Index>(rng.uniform(0, 1) * static_cast<double>(steps - 1) + 0.5) : steps;
    for (Index t = 0; t < steps; ++t)
      x[i * steps + t] = t < len ? static_cast<double>(1 + static_cast<Index>(rng.uniform(0, 1) * static_cast<double>(vocab - 2))) : 0.0;
  }
  return x;
}

TEST(EmbeddingGrad, MatchesFiniteDifferences) {
  Embedding<double> e(EmbeddingOptions(9, 4));
  expect_gradients_match(e, Shape{6}, 3, 7, Lengths(), /*check_input=*/false,
                         [](Rng& rng) { return random_ids(3, 6, 9, rng, false); });
}

// Embedding(mask_zero) into a recurrent layer: the mask's lengths reach the recurrent layer.
TEST(EmbeddingGrad, MaskZeroIntoGruAndBidirectionalLstm) {
  Stack s(std::make_unique<Embedding<double>>(EmbeddingOptions(9, 3).mask_zero(true)),
          std::make_unique<GRU<double>>(GRUOptions(4)));
  expect_gradients_match(s, Shape{6}, 4, 8, Lengths(), false, [](Rng& rng) { return random_ids(4, 6, 9, rng, true); });
  Stack b(std::make_unique<Embedding<double>>(EmbeddingOptions(9, 3).mask_zero(true)),
          std::make_unique<Bidirectional<double>>(LSTMOptions(3).return_sequences(true)));
  expect_gradients_match(b, Shape{6}, 4, 9, Lengths(), false, [](Rng& rng) { return random_ids(4, 6, 9, rng, true); });
}

TEST(MaskingGrad, IntoSimpleRnn) {
  Stack s(std::make_unique<Masking<double>>(MaskingOptions().mask_value(0.0)),
          std::make_unique<SimpleRNN<double>>(SimpleRNNOptions(4).return_sequences(true)));
  // the input is not perturbed: a padded step moved off mask_value would become real
  expect_gradients_match(s, Shape{5, 3}, 3, 10, Lengths(), false, [](Rng& rng) {
    auto x = random_tensor(Shape{3, 5, 3}, rng);
    for (Index t = 3; t < 5; ++t)
      for (Index f = 0; f < 3; ++f) x[(0 * 5 + t) * 3 + f] = 0.0;  // sample 0: length 3
    for (Index f = 0; f < 3; ++f) x[(2 * 5 + 4) * 3 + f] = 0.0;    // sample 2: length 4
    return x;
  });
}

// ---- masked batches equal each sample alone -----------------------------------------------------

class MaskedEqualsUnpadded : public ::testing::TestWithParam<std::tuple<int, bool, bool, bool>> {};

TEST_P(MaskedEqualsUnpadded, OutputsAndGradients) {
  const auto [which, seq, back, bidir] = GetParam();
  const auto cases = rnn_cases();
  const auto& c = cases[static_cast<std::size_t>(which)];
  const Index B = 4, S = 5, F = 3;
  auto make = [&]() -> std::unique_ptr<Layer<double, Cpu>> {
    if (bidir) return std::make_unique<Bidirectional<double>>(c.make(seq, false), MergeMode::Concat);
    return c.make(seq, back);
  };
  Rng rng(500 + static_cast<std::uint64_t>(which));
  auto batched = make();
  auto storage = build_standalone(*batched, Shape{S, F}, rng);
  for (Index i = 0; i < storage.first.size(); ++i) storage.first[i] += rng.uniform(-0.3, 0.3);
  auto x = random_tensor(Shape{B, S, F}, rng);
  // garbage in the padding must not matter
  for (Index b = 0; b < B; ++b)
    for (Index t = kLengths[b]; t < S; ++t)
      for (Index f = 0; f < F; ++f) x[(b * S + t) * F + f] = 100.0 * rng.uniform(-1, 1);
  Tensor<double, Cpu> y, dx;
  batched->set_input_lengths(kLengths);
  batched->forward(x, y, Mode::Train);
  auto dy = random_tensor(y.shape(), rng);
  storage.second.set_zero();
  batched->backward(x, y, dy, &dx);
  Tensor<double, Cpu> grads_sum = Tensor<double, Cpu>::zeros(storage.second.shape());

  const Index out_per_step = y.size() / B / (seq ? S : 1);
  for (Index b = 0; b < B; ++b) {
    const Index len = kLengths[b];
    auto alone = make();
    alone->set_name("alone");
    alone->build(Shape{len, F});
    Tensor<double, Cpu> g = Tensor<double, Cpu>::zeros(storage.second.shape());
    alone->bind_parameters(storage.first, g);
    Tensor<double, Cpu> xb = x.view(b * S * F, Shape{1, len, F}).clone(), yb, dxb;
    alone->forward(xb, yb, Mode::Train);
    Tensor<double, Cpu> dyb(yb.shape());
    for (Index i = 0; i < dyb.size(); ++i) dyb[i] = dy[b * (y.size() / B) + i];  // the first len steps of dy
    alone->backward(xb, yb, dyb, &dxb);
    grads_sum.array() += g.array();
    for (Index i = 0; i < yb.size(); ++i)
      ASSERT_NEAR(y[b * (y.size() / B) + i], yb[i], 1e-12) << "sample " << b << " output " << i;
    if (seq) {  // padded outputs are zero
      for (Index i = len * out_per_step; i < S * out_per_step; ++i) ASSERT_EQ(y[b * S * out_per_step + i], 0.0);
    }
    for (Index i = 0; i < len * F; ++i) ASSERT_NEAR(dx[b * S * F + i], dxb[i], 1e-12) << "sample " << b;
    for (Index i = len * F; i < S * F; ++i) ASSERT_EQ(dx[b * S * F + i], 0.0) << "padding got a gradient";
  }
  for (Index i = 0; i < grads_sum.size(); ++i) ASSERT_NEAR(storage.second[i], grads_sum[i], 1e-11) << "parameter " << i;
}

INSTANTIATE_TEST_SUITE_P(Cells, MaskedEqualsUnpadded,
                         ::testing::Combine(::testing::Range(0, 6), ::testing::Bool(), ::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool, bool, bool>>& i) {
                           return rnn_cases()[static_cast<std::size_t>(std::get<0>(i.param))].name +
                                  (std::get<1>(i.param) ? "_seq" : "_last") + (std::get<2>(i.param) ? "_backwards" : "") +
                                  (std::get<3>(i.param) ? "_bidirectional" : "");
                         });

// ---- streaming ------------------------------------------------------------------------------------

namespace {

Sequential<float> stream_model(bool last_state) {
  Sequential<float> m;
  m.add<Embedding>(EmbeddingOptions(20, 6));
  m.add<GRU>(GRUOptions(8).return_sequences(true));
  m.add<LSTM>(LSTMOptions(7).return_sequences(true));
  m.add<SimpleRNN>(SimpleRNNOptions(5).return_sequences(!last_state));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build(Shape{12}, 3);
  return m;
}

Tensor<float, Cpu> float_ids(Index n, Index steps, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<float, Cpu> x(Shape{n, steps});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(1 + static_cast<Index>(rng.uniform(0, 1) * 18.0));
  return x;
}

}  // namespace

// Inference keeps only the current step's gates; its outputs must be training's, bit for bit,
// with and without lengths, forwards and backwards, per step and last output.
TEST(LstmInference, EqualsTrainingForwardAndRefusesBackward) {
  for (bool backwards : {false, true})
    for (bool seq : {false, true})
      for (bool masked : {false, true}) {
        Rng rng(31);
        LSTM<float> l(LSTMOptions(20).go_backwards(backwards).return_sequences(seq));
        auto storage = build_standalone(l, Shape{5, 3}, rng);
        for (Index i = 0; i < storage.first.size(); ++i) storage.first[i] += static_cast<float>(rng.uniform(-0.3, 0.3));
        Tensor<float, Cpu> x = random_tensor<float>(Shape{4, 5, 3}, rng), y_train, y_infer, dy;
        l.set_input_lengths(masked ? kLengths : Lengths());
        l.forward(x, y_train, Mode::Train);
        l.forward(x, y_infer, Mode::Infer);
        ASSERT_EQ(y_train.shape(), y_infer.shape());
        for (Index i = 0; i < y_train.size(); ++i)
          ASSERT_EQ(y_train[i], y_infer[i]) << "output " << i << " backwards " << backwards << " seq " << seq
                                            << " masked " << masked;
        dy = Tensor<float, Cpu>::zeros(y_infer.shape());
        try {
          l.backward(x, y_infer, dy, nullptr);
          ADD_FAILURE() << "backward after an inference forward did not throw";
        } catch (const ArgumentError& e) {
          EXPECT_NE(std::string(e.what()).find("Mode::Train"), std::string::npos) << e.what();
        }
      }
}

TEST(Streaming, StepByStepEqualsFullSequenceAtEveryStep) {
  const Sequential<float> m = stream_model(false);
  const Index B = 3, S = 12;
  auto x = float_ids(B, S, 5);
  auto full = m.predict(x);  // [B, S, 3]
  ASSERT_EQ(full.shape(), (Shape{B, S, 3}));
  Stream<float> s = m.make_stream(B);
  for (int round = 0; round < 2; ++round) {  // the second round after reset()
    for (Index t = 0; t < S; ++t) {
      Tensor<float, Cpu> xt(Shape{B});
      for (Index b = 0; b < B; ++b) xt[b] = x[b * S + t];
      const auto& y = m.step(xt, s);
      ASSERT_EQ(y.shape(), (Shape{B, 3}));
      for (Index b = 0; b < B; ++b)
        for (Index k = 0; k < 3; ++k) ASSERT_NEAR(y[b * 3 + k], full[(b * S + t) * 3 + k], 1e-6) << "step " << t;
    }
    s.reset();
  }
}

// Without return_sequences, step t gives what the full forward gives for the sequence cut
// after step t, i.e. with length t + 1.
TEST(Streaming, LastStateEqualsMaskedForwardOfThePrefix) {
  const Sequential<float> m = stream_model(true);
  const Index B = 2, S = 12;
  auto x = float_ids(B, S, 6);
  Stream<float> s = m.make_stream(B);
  for (Index t = 0; t < S; ++t) {
    Tensor<float, Cpu> xt(Shape{B});
    for (Index b = 0; b < B; ++b) xt[b] = x[b * S + t];
    const auto y = s.step(xt).clone();
    auto ref = m.predict(x, 128, make_lengths({static_cast<std::int32_t>(t + 1), static_cast<std::int32_t>(t + 1)}));
    for (Index i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-6) << "step " << t;
  }
}

TEST(Streaming, RefusesWhatNeedsTheWholeSequence) {
  Sequential<float> m;
  m.add<Bidirectional>(GRUOptions(4));
  m.add<Dense>(DenseOptions(2));
  m.build(Shape{5, 3}, 1);
  EXPECT_THROW(m.make_stream(), UnsupportedError);
  GRU<float> g(GRUOptions(3).go_backwards(true));
  Rng rng(1);
  auto st = build_standalone(g, Shape{4, 2}, rng);
  auto state = g.make_state(1);
  Tensor<float, Cpu> xt = Tensor<float, Cpu>::zeros(Shape{1, 2}), yt;
  EXPECT_THROW(g.step(xt, yt, state), UnsupportedError);
}

// ---- lengths and ids: typed errors ----------------------------------------------------------------

TEST(Lengths, ZeroOrAboveStepsAreTypedErrorsNamingTheSample) {
  GRU<float> g(GRUOptions(3));
  Rng rng(2);
  auto st = build_standalone(g, Shape{4, 2}, rng);
  Tensor<float, Cpu> x = Tensor<float, Cpu>::zeros(Shape{3, 4, 2}), y;
  for (auto bad : {make_lengths({4, 0, 2}), make_lengths({4, 5, 2})}) {
    g.set_input_lengths(bad);
    try {
      g.forward(x, y, Mode::Infer);
      FAIL() << "no error";
    } catch (const ArgumentError& e) {
      EXPECT_NE(std::string(e.what()).find("sample 1"), std::string::npos) << e.what();
    }
  }
  Tensor<float, Cpu> xs(Shape{2, 4, 2});
  auto d = make_dataset(xs, Tensor<float, Cpu>::zeros(Shape{2, 1}));
  EXPECT_THROW(d.with_lengths(make_lengths({4, 7})), ArgumentError);
  EXPECT_THROW(d.with_lengths(make_lengths({4})), ShapeError);
}

TEST(EmbeddingErrors, IdAtOrAboveVocabNamesSampleAndPosition) {
  Sequential<float> m;
  m.add<Embedding>(EmbeddingOptions(10, 4));
  m.add<GRU>(GRUOptions(3));
  m.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  m.build(Shape{5}, 1);
  m.compile(std::make_unique<Adam<float>>());
  Tensor<std::int32_t, Cpu> tok = Tensor<std::int32_t, Cpu>::zeros(Shape{3, 5});
  for (Index i = 0; i < tok.size(); ++i) tok[i] = 1;
  tok[2 * 5 + 3] = 10;
  Tensor<std::int32_t, Cpu> labels = Tensor<std::int32_t, Cpu>::zeros(Shape{3});
  auto d = make_dataset<float>(tok, labels, 2);
  try {
    m.fit(d, FitOptions().epochs(1).verbose(0));
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("token 10 of sample 2 at position 3"), std::string::npos) << w;
  }
  try {
    m.predict(d.x);
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("sample 2"), std::string::npos) << e.what();
  }
  // the layer alone, fed directly: the batch row is named, nothing is read out of bounds
  Embedding<float> e(EmbeddingOptions(10, 4));
  Rng rng(3);
  auto st = build_standalone(e, Shape{5}, rng);
  Tensor<float, Cpu> y;
  Tensor<float, Cpu> x = d.x.clone();
  x[4] = -1.0f;
  EXPECT_THROW(e.forward(x, y, Mode::Infer), ArgumentError);
  x[4] = 1.5f;
  EXPECT_THROW(e.forward(x, y, Mode::Infer), ArgumentError);
}

TEST(EmbeddingErrors, MaskZeroNeedsTrailingPaddingAndOneToken) {
  Embedding<float> e(EmbeddingOptions(10, 2).mask_zero(true));
  Rng rng(4);
  auto st = build_standalone(e, Shape{4}, rng);
  Tensor<float, Cpu> y;
  Tensor<float, Cpu> x = Tensor<float, Cpu>::zeros(Shape{2, 4});
  x[0] = 3, x[1] = 4;        // sample 0: length 2
  x[4] = 5, x[5] = 0, x[6] = 6;  // sample 1: a token after padding
  try {
    e.forward(x, y, Mode::Infer);
    FAIL() << "no error";
  } catch (const ArgumentError& err) {
    EXPECT_NE(std::string(err.what()).find("batch row 1 at position 2 follows padding"), std::string::npos) << err.what();
  }
  x[6] = 0;
  e.forward(x, y, Mode::Infer);
  const Lengths l = e.output_lengths();
  ASSERT_EQ(l.size(), 2);
  EXPECT_EQ(l[0], 2);
  EXPECT_EQ(l[1], 1);
  x[4] = 0;  // sample 1: all padding
  EXPECT_THROW(e.forward(x, y, Mode::Infer), ArgumentError);
}

TEST(MaskingErrors, RealStepAfterPaddingIsNamed) {
  Masking<float> mk;
  Rng rng(5);
  auto st = build_standalone(mk, Shape{3, 2}, rng);
  Tensor<float, Cpu> x = Tensor<float, Cpu>::zeros(Shape{1, 3, 2}), y;
  x[0] = 1;  // step 0 real, step 1 padded, step 2 real
  x[4] = 1;
  try {
    mk.forward(x, y, Mode::Infer);
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("step 2 of batch row 0"), std::string::npos) << e.what();
  }
}

// ---- whole models ---------------------------------------------------------------------------------

// Embedding(mask_zero) -> Bidirectional(GRU) -> Dense(softmax) learns a task that needs the
// lengths: the class is the LAST real token's parity, so a model that read the padding as data
// (or stopped at the padded end) would be at chance.
TEST(Models, MaskedBidirectionalGruLearnsTheLastRealToken) {
  const Index N = 512, S = 8;
  Rng rng(11);
  Tensor<std::int32_t, Cpu> tok = Tensor<std::int32_t, Cpu>::zeros(Shape{N, S});
  Tensor<std::int32_t, Cpu> labels(Shape{N});
  for (Index i = 0; i < N; ++i) {
    const Index len = 1 + static_cast<Index>(rng.uniform(0, 1) * (S - 1));
    for (Index t = 0; t < len; ++t) tok[i * S + t] = 1 + static_cast<std::int32_t>(rng.uniform(0, 1) * 9.99);
    labels[i] = tok[i * S + len - 1] % 2;
  }
  auto data = make_dataset<float>(tok, labels, 2);
  Sequential<float> m;
  m.add<Embedding>(EmbeddingOptions(11, 8).mask_zero(true));
  m.add<Bidirectional>(GRUOptions(16));
  m.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  m.build(Shape{S}, 2);
  m.compile(std::make_unique<Adam<float>>(0.01));
  auto h = m.fit(data, FitOptions().epochs(25).batch_size(32).verbose(0));
  EXPECT_GT(h.epochs.back().accuracy, 0.95);
  // predict agrees with the per-sample computation: a sample padded further gives the same output
  auto p = m.predict(data.x.rows(0, 4));
  Sequential<float> wide;
  wide.add<Embedding>(EmbeddingOptions(11, 8).mask_zero(true));
  wide.add<Bidirectional>(GRUOptions(16));
  wide.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  wide.build(Shape{S + 5}, 2);
  copy_into(m.flat_parameters(), wide.flat_parameters());
  Tensor<float, Cpu> xw = Tensor<float, Cpu>::zeros(Shape{4, S + 5});
  for (Index i = 0; i < 4; ++i)
    for (Index t = 0; t < S; ++t) xw[i * (S + 5) + t] = data.x[i * S + t];
  auto pw = wide.predict(xw);
  for (Index i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], pw[i], 1e-5);
}

TEST(Models, DatasetLengthsReachTheRecurrentLayer) {
  // float sequences with lengths from the dataset: the target is the last real step's first
  // feature, which only a model that stops at each sample's length can copy
  const Index N = 256, S = 6;
  Rng rng(12);
  Tensor<float, Cpu> x(Shape{N, S, 2});
  Tensor<float, Cpu> y(Shape{N, 1});
  Lengths len(Shape{N});
  for (Index i = 0; i < N; ++i) {
    len[i] = 1 + static_cast<std::int32_t>(rng.uniform(0, 1) * (S - 1));
    for (Index k = 0; k < S * 2; ++k) x[i * S * 2 + k] = static_cast<float>(rng.uniform(-1, 1));
    y[i] = x[(i * S + len[i] - 1) * 2];
  }
  auto data = make_dataset(x, y);
  data.with_lengths(len);
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(16));
  m.add<Dense>(DenseOptions(1));
  m.build(Shape{S, 2}, 4);
  m.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError(), {"mae"});
  auto h = m.fit(data, FitOptions().epochs(40).batch_size(32).verbose(0));
  EXPECT_LT(h.epochs.back().loss, 0.01);
  auto r = m.evaluate(data);
  EXPECT_LT(r.loss, 0.01);
}

TEST(Models, SaveLoadRoundTripOfEveryNewLayer) {
  Sequential<float> m;
  m.add<Embedding>(EmbeddingOptions(20, 4).mask_zero(true));
  m.add<Bidirectional>(GRUOptions(5).return_sequences(true).reset_after(false), MergeMode::Ave);
  m.add<SimpleRNN>(SimpleRNNOptions(3).activation(Activation::Relu).return_sequences(true));
  m.add<GRU>(GRUOptions(4));
  m.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  m.build(Shape{7}, 9);
  const std::string path = ::testing::TempDir() + "/recurrent_roundtrip.safetensors";
  io::save_weights(m, path);
  auto loaded = io::load_model<float>(path);
  ASSERT_EQ(loaded.num_layers(), m.num_layers());
  Tensor<float, Cpu> x = float_ids(3, 7, 8);
  x[6] = 0;  // sample 0: length 6
  auto a = m.predict(x), b = loaded.predict(x);
  for (Index i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);
  EXPECT_EQ(m.layer(1).parameters()[2].value.shape(), (Shape{3 * 5}));  // reset_after=false: one bias
}

// ---- per-step losses over padded sequences ------------------------------------------------------

namespace {

/// Embedding(mask_zero) -> GRU(return_sequences) -> Dense(softmax) for sequences of `steps`.
Sequential<float> per_step_model(Index steps) {
  Sequential<float> m;
  m.add<Embedding>(EmbeddingOptions(10, 4).mask_zero(true));
  m.add<GRU>(GRUOptions(6).return_sequences(true));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build(Shape{steps}, 21);
  m.compile(std::make_unique<SGD<float>>(0.5));
  return m;
}

}  // namespace

// As Keras's masked losses: the padded steps of a per-step output count in neither the loss, the
// metrics nor the gradient. A batch padded with 3 extra steps (garbage labels there) evaluates
// and trains exactly like the same batch without them; and with lengths that differ per sample,
// the loss is the mean over the real steps of each sample evaluated alone.
TEST(Models, PerStepLossLeavesOutPaddedSteps) {
  const Index N = 6, S = 5, P = 3;
  Rng rng(31);
  Tensor<std::int32_t, Cpu> tn(Shape{N, S}), ln(Shape{N, S}), tw = Tensor<std::int32_t, Cpu>::zeros(Shape{N, S + P}),
                                                               lw(Shape{N, S + P});
  for (Index i = 0; i < N; ++i)
    for (Index t = 0; t < S + P; ++t) {
      const bool real = t < S;
      const auto tok = static_cast<std::int32_t>(1 + rng.below(9));
      const auto lab = static_cast<std::int32_t>(rng.below(3));
      if (real) tn[i * S + t] = tok, ln[i * S + t] = lab, tw[i * (S + P) + t] = tok;
      lw[i * (S + P) + t] = real ? lab : 2;
    }
  auto narrow = per_step_model(S), wide = per_step_model(S + P);
  copy_into(narrow.flat_parameters(), wide.flat_parameters());
  const auto dn = make_dataset<float>(tn, ln, 3), dw = make_dataset<float>(tw, lw, 3);
  const EvalResult en = narrow.evaluate(dn), ew = wide.evaluate(dw);
  EXPECT_NEAR(en.loss, ew.loss, 1e-6);
  EXPECT_NEAR(en.accuracy, ew.accuracy, 1e-9);
  const auto o = FitOptions().epochs(2).batch_size(4).shuffle(false).verbose(0);
  const History hn = narrow.fit(dn, o), hw = wide.fit(dw, o);
  EXPECT_NEAR(hn.last().loss, hw.last().loss, 1e-5);
  for (Index i = 0; i < narrow.param_count(); ++i)
    ASSERT_NEAR(narrow.flat_parameters()[i], wide.flat_parameters()[i], 1e-5) << "parameter " << i;

  // lengths 5, 1, 3, 2, 5, 4: the batch's loss is the real-step-weighted mean of each sample's
  const std::vector<Index> lens{5, 1, 3, 2, 5, 4};
  for (Index i = 0; i < N; ++i)
    for (Index t = lens[static_cast<std::size_t>(i)]; t < S; ++t) tn[i * S + t] = 0;
  const auto dv = make_dataset<float>(tn, ln, 3);
  double sum = 0, rows = 0;
  for (Index i = 0; i < N; ++i) {
    const Index len = lens[static_cast<std::size_t>(i)];
    auto alone = per_step_model(len);
    copy_into(narrow.flat_parameters(), alone.flat_parameters());
    Tensor<std::int32_t, Cpu> ta(Shape{1, len}), la(Shape{1, len});
    for (Index t = 0; t < len; ++t) ta[t] = tn[i * S + t], la[t] = ln[i * S + t];
    sum += alone.evaluate(make_dataset<float>(ta, la, 3)).loss * static_cast<double>(len);
    rows += static_cast<double>(len);
  }
  EXPECT_NEAR(narrow.evaluate(dv, 4).loss, sum / rows, 1e-6);
}

// The same with float targets and lengths from the dataset: garbage targets of 100 at the padded
// steps would dominate an unmasked mean squared error.
TEST(Models, PerStepMseWithDatasetLengths) {
  const Index N = 8, S = 4, P = 2;
  Rng rng(32);
  Tensor<float, Cpu> xn(Shape{N, S, 2}), yn(Shape{N, S, 1}), xw = Tensor<float, Cpu>::zeros(Shape{N, S + P, 2}),
                                                             yw(Shape{N, S + P, 1});
  Lengths lw(Shape{N});
  for (Index i = 0; i < N; ++i) {
    lw[i] = static_cast<std::int32_t>(S);
    for (Index t = 0; t < S + P; ++t) {
      const float a = static_cast<float>(rng.uniform(-1, 1)), b = static_cast<float>(rng.uniform(-1, 1));
      if (t < S) xn[(i * S + t) * 2] = xw[(i * (S + P) + t) * 2] = a, xn[(i * S + t) * 2 + 1] = xw[(i * (S + P) + t) * 2 + 1] = b;
      if (t < S) yn[i * S + t] = yw[i * (S + P) + t] = a - b;
      else yw[i * (S + P) + t] = 100.0f, xw[(i * (S + P) + t) * 2] = 7.0f;  // garbage padding
    }
  }
  auto model = [](Index steps) {
    Sequential<float> m;
    m.add<LSTM>(LSTMOptions(5).return_sequences(true));
    m.add<Dense>(DenseOptions(1));
    m.build(Shape{steps, 2}, 5);
    m.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError(), {"mae"});
    return m;
  };
  auto narrow = model(S), wide = model(S + P);
  copy_into(narrow.flat_parameters(), wide.flat_parameters());
  auto dn = make_dataset(xn, yn), dw = make_dataset(xw, yw);
  dw.with_lengths(lw);
  EXPECT_NEAR(narrow.evaluate(dn).loss, wide.evaluate(dw).loss, 1e-6);
  EXPECT_NEAR(narrow.evaluate(dn).metric("mae"), wide.evaluate(dw).metric("mae"), 1e-6);
  const auto o = FitOptions().epochs(3).batch_size(3).shuffle(false).verbose(0);
  narrow.fit(dn, o);
  wide.fit(dw, o);
  for (Index i = 0; i < narrow.param_count(); ++i)
    ASSERT_NEAR(narrow.flat_parameters()[i], wide.flat_parameters()[i], 1e-5) << "parameter " << i;
}
