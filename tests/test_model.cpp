// Sequential end to end: summary, training on small data, determinism, Bidirectional's
// reverse half, shape errors.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include <sstream>

using namespace fastnn;

namespace {

Sequential<float> reference_model(std::uint64_t seed, int threads = 1) {
  Sequential<float> m;
  m.add<Bidirectional>(LSTMOptions(128));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.set_threads(threads);
  m.build({28, 28}, seed);
  m.compile(std::make_unique<SGD<float>>(0.5, 0.9, true));
  return m;
}

// A learnable synthetic task: class k lights up rows 2k..2k+2 of an 20x8 "image" plus noise.
Dataset<float, Cpu> synthetic(Index n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::uint8_t> px(static_cast<std::size_t>(n * 20 * 8)), lb(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    const int k = static_cast<int>(rng.below(10));
    lb[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(k);
    for (Index r = 0; r < 20; ++r)
      for (Index c = 0; c < 8; ++c) {
        const bool on = r >= 2 * k && r < 2 * k + 2;
        px[static_cast<std::size_t>((i * 20 + r) * 8 + c)] =
            static_cast<std::uint8_t>(on ? 150 + rng.below(100) : rng.below(90));
      }
  }
  return make_dataset(px, lb, {20, 8}, 10);
}

Sequential<float> small_model(std::uint64_t seed, int threads) {
  Sequential<float> m;
  m.add<Bidirectional>(LSTMOptions(16));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.set_threads(threads);
  m.build({20, 8}, seed);
  m.compile(std::make_unique<SGD<float>>(0.5, 0.9, true));
  return m;
}

}  // namespace

TEST(Summary, ReferenceModelCounts) {
  auto m = reference_model(1);
  std::ostringstream os;
  m.summary(os);
  const std::string s = os.str();
  EXPECT_NE(s.find("bidirectional (Bidirectional)"), std::string::npos) << s;
  EXPECT_NE(s.find("(None, 256)"), std::string::npos) << s;
  EXPECT_NE(s.find("160768"), std::string::npos) << s;
  EXPECT_NE(s.find("(None, 10)"), std::string::npos) << s;
  EXPECT_NE(s.find("2570"), std::string::npos) << s;
  EXPECT_NE(s.find("Total params: 163,338"), std::string::npos) << s;
  EXPECT_EQ(m.param_count(), 163338);
  EXPECT_EQ(m.layer(0).param_count(), 160768);
  EXPECT_EQ(m.layer(1).param_count(), 2570);
}

TEST(Parameters, StableQualifiedNamesInOneContiguousBuffer) {
  auto m = reference_model(1);
  auto ps = m.named_parameters();
  std::vector<std::string> names;
  for (auto& p : ps) names.push_back(p.name);
  std::vector<std::string> want{"bidirectional.forward_lstm.kernel",  "bidirectional.forward_lstm.recurrent_kernel",
                                "bidirectional.forward_lstm.bias",    "bidirectional.backward_lstm.kernel",
                                "bidirectional.backward_lstm.recurrent_kernel", "bidirectional.backward_lstm.bias",
                                "dense.kernel", "dense.bias"};
  EXPECT_EQ(names, want);
  const float* base = m.flat_parameters().data();
  Index off = 0;
  for (auto& p : ps) {
    EXPECT_EQ(p.value.data(), base + off) << p.name;
    off += p.value.size();
  }
  EXPECT_EQ(off, m.param_count());
}

TEST(Training, SmallDataAccuracyRisesFarAboveChance) {
  auto train = synthetic(1024, 1), test = synthetic(256, 2);
  auto m = small_model(5, 2);
  auto before = m.evaluate(test);
  auto h = m.fit(train, FitOptions().epochs(4).batch_size(32).verbose(0), &test);
  ASSERT_EQ(h.epochs.size(), 4u);
  EXPECT_LT(before.accuracy, 0.3);
  EXPECT_GT(h.last().val_accuracy, 0.9);  // chance is 0.1
  EXPECT_LT(h.last().loss, h.epochs.front().loss);
}

TEST(Determinism, SameSeedAndThreadsGiveBitIdenticalRuns) {
  auto train = synthetic(512, 3), test = synthetic(128, 4);
  for (int threads : {1, 2}) {
    auto a = small_model(9, threads), b = small_model(9, threads);
    auto ha = a.fit(train, FitOptions().epochs(2).batch_size(50).verbose(0), &test);
    auto hb = b.fit(train, FitOptions().epochs(2).batch_size(50).verbose(0), &test);
    for (std::size_t e = 0; e < 2; ++e) {
      EXPECT_EQ(ha.epochs[e].loss, hb.epochs[e].loss);
      EXPECT_EQ(ha.epochs[e].val_loss, hb.epochs[e].val_loss);
    }
    ASSERT_EQ(a.param_count(), b.param_count());
    EXPECT_EQ(0, std::memcmp(a.flat_parameters().data(), b.flat_parameters().data(),
                             sizeof(float) * static_cast<std::size_t>(a.param_count())));
  }
  // a different seed gives a different run
  auto c = small_model(10, 1), d = small_model(9, 1);
  auto hc = c.fit(train, FitOptions().epochs(1).batch_size(50).verbose(0));
  auto hd = d.fit(train, FitOptions().epochs(1).batch_size(50).verbose(0));
  EXPECT_NE(hc.epochs[0].loss, hd.epochs[0].loss);
}

TEST(Determinism, OneAndTwoThreadsAgree) {
  // The two directions are independent, so running them concurrently changes nothing.
  auto train = synthetic(256, 3);
  auto a = small_model(9, 1), b = small_model(9, 2);
  auto ha = a.fit(train, FitOptions().epochs(1).batch_size(64).verbose(0));
  auto hb = b.fit(train, FitOptions().epochs(1).batch_size(64).verbose(0));
  EXPECT_EQ(ha.epochs[0].loss, hb.epochs[0].loss);
}

TEST(Bidirectional, ReverseHalfEqualsPlainLstmOnReversedSequence) {
  for (bool seq : {false, true}) {
    Rng rng(4);
    Bidirectional<double> bi(LSTMOptions(6).return_sequences(seq));
    auto st = fastnn::testing::build_standalone(bi, Shape{5, 3}, rng, "bi");
    LSTM<double> plain(LSTMOptions(6).return_sequences(seq));
    auto st2 = fastnn::testing::build_standalone(plain, Shape{5, 3}, rng, "plain");
    // copy the backward half's weights into the plain LSTM
    auto& bw = bi.backward_layer().parameters();
    for (std::size_t i = 0; i < 3; ++i) copy_into(bw[i].value, plain.parameters()[i].value);
    Tensor<double, Cpu> x(Shape{2, 5, 3}), xr(Shape{2, 5, 3});
    for (Index i = 0; i < x.size(); ++i) x[i] = rng.uniform(-1, 1);
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 5; ++t)
        for (Index f = 0; f < 3; ++f) xr[(b * 5 + t) * 3 + f] = x[(b * 5 + (4 - t)) * 3 + f];
    Tensor<double, Cpu> y, yp;
    bi.forward(x, y, Mode::Infer);
    plain.forward(xr, yp, Mode::Infer);
    const Index S = seq ? 5 : 1;
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < S; ++t)
        for (Index j = 0; j < 6; ++j) {
          // bidirectional output at time t (input order) = plain output at reversed time
          const Index tp = seq ? 4 - t : 0;
          EXPECT_NEAR(y[((b * S + t) * 12) + 6 + j], yp[(b * S + tp) * 6 + j], 1e-14);
        }
  }
}

TEST(Errors, ShapeMismatchesNameTheLayer) {
  auto m = reference_model(1);
  auto bad = make_dataset(std::vector<std::uint8_t>(2 * 27 * 28), {1, 2}, {27, 28}, 10);
  try {
    m.fit(bad, FitOptions().verbose(0));
    FAIL() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[27, 28]"), std::string::npos) << e.what();
  }
  LSTM<float> l(LSTMOptions(4));
  EXPECT_THROW(l.build(Shape{28}), ShapeError);
  Dense<float> d(DenseOptions(3));
  d.set_name("dense_x");
  try {
    d.build(Shape{});  // Dense needs at least a feature axis
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("dense_x"), std::string::npos);
  }
  EXPECT_THROW(LSTM<float>(LSTMOptions(0)), ArgumentError);
  EXPECT_THROW(LSTM<float>(LSTMOptions(3).recurrent_activation(Activation::Relu)), ArgumentError);
  EXPECT_THROW(make_dataset({1, 2, 3}, {1}, {2}, 10), ArgumentError);
  EXPECT_THROW(make_dataset({1, 2}, {11}, {2}, 10), ArgumentError);
  Sequential<float> empty;
  EXPECT_THROW(empty.build({2}), ArgumentError);
}

TEST(Model, PredictGivesProbabilitiesAndToCpuCopies) {
  auto m = small_model(3, 1);
  Tensor<float, Cpu> x(Shape{3, 20, 8});
  Rng rng(2);
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform());
  auto p = m.predict(x, 2);
  ASSERT_EQ(p.shape(), (Shape{3, 10}));
  for (Index i = 0; i < 3; ++i) {
    double s = 0;
    for (Index j = 0; j < 10; ++j) {
      EXPECT_GE(p[i * 10 + j], 0.0f);
      s += p[i * 10 + j];
    }
    EXPECT_NEAR(s, 1.0, 1e-5);
  }
  auto c = m.to<Cpu>();
  auto q = c.predict(x);
  for (Index i = 0; i < p.size(); ++i) EXPECT_EQ(p[i], q[i]);
}
