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

// ---- the trainer's controls ---------------------------------------------------------------------------------

namespace {

std::vector<float> weights_of(const Sequential<float>& m) {
  const auto& p = m.flat_parameters();
  return std::vector<float>(p.data(), p.data() + p.size());
}

/// Records the flat weights at the end of every epoch (the run's own view of them, through the context).
struct WeightRecorder : Callback {
  std::vector<std::vector<double>> at_epoch_end;
  void on_epoch_end(const EpochLogs&) override { at_epoch_end.push_back(context()->get_weights()); }
};

}  // namespace

TEST(Trainer, TrainOnBatchLoopEqualsFitWithoutShuffling) {
  auto d = synthetic(200, 21);
  auto a = small_model(3, 1), b = small_model(3, 1);
  a.fit(d, FitOptions().epochs(1).batch_size(50).shuffle(false).verbose(0));
  double sum = 0;
  for (Index s = 0; s < d.size(); s += 50) {
    auto r = b.train_on_batch(d.x.rows(s, s + 50), d.labels.rows(s, s + 50));
    sum += r.loss;
  }
  EXPECT_TRUE(std::isfinite(sum));
  EXPECT_EQ(a.optimizer()->iterations(), b.optimizer()->iterations());
  EXPECT_EQ(weights_of(a), weights_of(b));
  // compute_gradients + apply_gradients is the same step again
  auto c = small_model(3, 1);
  for (Index s = 0; s < d.size(); s += 50) {
    c.compute_gradients(d.x.rows(s, s + 50), d.labels.rows(s, s + 50));
    c.apply_gradients();
  }
  EXPECT_EQ(weights_of(a), weights_of(c));
}

TEST(Trainer, FrozenLayerKeepsItsWeightsAndSummaryCountsIt) {
  auto d = synthetic(200, 22);
  Sequential<float> m;
  m.add<Bidirectional>(LSTMOptions(16));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.build({20, 8}, 4);
  m.layer(0).set_trainable(false);
  m.compile(std::make_unique<Adam<float>>(0.01));
  const auto before = weights_of(m);
  m.fit(d, FitOptions().epochs(1).batch_size(40).verbose(0));
  const auto after = weights_of(m);
  const std::size_t frozen = static_cast<std::size_t>(m.layer(0).param_count());
  EXPECT_TRUE(std::equal(before.begin(), before.begin() + static_cast<std::ptrdiff_t>(frozen), after.begin()));
  EXPECT_FALSE(std::equal(before.begin() + static_cast<std::ptrdiff_t>(frozen), before.end(),
                          after.begin() + static_cast<std::ptrdiff_t>(frozen)));
  // no optimizer state for the frozen layer
  for (auto& s : m.optimizer()->state()) EXPECT_EQ(s.second.size(), m.layer(1).param_count()) << s.first;
  std::ostringstream os;
  m.summary(os);
  EXPECT_NE(os.str().find("Trainable params: 330"), std::string::npos) << os.str();
  EXPECT_NE(os.str().find("Non-trainable params: 3,200"), std::string::npos) << os.str();
  // the flag changed after compile(): a typed error before any step
  m.layer(0).set_trainable(true);
  EXPECT_THROW(m.fit(d, FitOptions().epochs(1).verbose(0)), ArgumentError);
  EXPECT_EQ(weights_of(m), after);
}

TEST(Trainer, EarlyStoppingRestoresTheBestEpochsWeights) {
  auto train = synthetic(300, 23), val = synthetic(100, 24);
  // min_delta larger than any change: only the first epoch improves, so the run stops after 1 + patience epochs
  // and the weights go back to epoch 1's.
  auto m = small_model(6, 1);
  EarlyStopping es(EarlyStoppingOptions().monitor("val_loss").patience(2).min_delta(100).restore_best_weights(true));
  WeightRecorder rec;
  auto h = m.fit(train, FitOptions().epochs(10).batch_size(50).verbose(0).callback(&rec).callback(&es), &val);
  ASSERT_EQ(h.epochs.size(), 3u);
  EXPECT_EQ(es.stopped_epoch(), 3);
  EXPECT_EQ(es.best_epoch(), 1);
  ASSERT_EQ(rec.at_epoch_end.size(), 3u);
  const auto w = weights_of(m);
  ASSERT_EQ(w.size(), rec.at_epoch_end[0].size());
  for (std::size_t i = 0; i < w.size(); ++i) ASSERT_EQ(static_cast<double>(w[i]), rec.at_epoch_end[0][i]) << i;
  EXPECT_NE(rec.at_epoch_end[2], rec.at_epoch_end[0]);

  // patience 1, min_delta 0: the stop epoch and the best epoch follow Keras's rule applied to the logged losses.
  auto m2 = small_model(7, 1);
  EarlyStopping es2(EarlyStoppingOptions().monitor("val_loss").patience(1).restore_best_weights(true));
  WeightRecorder rec2;
  auto h2 = m2.fit(train, FitOptions().epochs(6).batch_size(50).verbose(0).callback(&rec2).callback(&es2), &val);
  double best = INFINITY;
  int best_epoch = 0, wait = 0, stop = 0;
  for (std::size_t e = 0; e < h2.epochs.size() && !stop; ++e) {
    ++wait;
    if (h2.epochs[e].val_loss < best) {
      best = h2.epochs[e].val_loss;
      best_epoch = static_cast<int>(e) + 1;
      wait = 0;
    } else if (wait >= 1 && e > 0) {
      stop = static_cast<int>(e) + 1;
    }
  }
  EXPECT_EQ(es2.stopped_epoch(), stop);
  EXPECT_EQ(static_cast<int>(h2.epochs.size()), stop ? stop : 6);
  EXPECT_EQ(es2.best_epoch(), best_epoch);
  const auto w2 = weights_of(m2);
  const auto& want = rec2.at_epoch_end[static_cast<std::size_t>(best_epoch - 1)];
  for (std::size_t i = 0; i < w2.size(); ++i) ASSERT_EQ(static_cast<double>(w2[i]), want[i]) << i;
}

TEST(Trainer, ClassWeightsAreSampleWeightsAndWeightTheMean) {
  auto d = synthetic(120, 25);
  std::map<int, double> cw;
  for (int k = 0; k < 10; ++k) cw[k] = 0.5 + 0.25 * k;
  Tensor<double, Cpu> sw(Shape{d.size()});
  for (Index i = 0; i < d.size(); ++i) sw[i] = cw[d.labels[i]];
  auto a = small_model(8, 1), b = small_model(8, 1), c = small_model(8, 1);
  auto ha = a.fit(d, FitOptions().epochs(1).batch_size(40).verbose(0).class_weight(cw));
  auto dw = d;
  dw.with_sample_weights(sw);
  auto hb = b.fit(dw, FitOptions().epochs(1).batch_size(40).verbose(0));
  EXPECT_EQ(ha.epochs[0].loss, hb.epochs[0].loss);
  EXPECT_EQ(weights_of(a), weights_of(b));
  auto hc = c.fit(d, FitOptions().epochs(1).batch_size(40).verbose(0));
  EXPECT_NE(weights_of(a), weights_of(c));
  // Keras: the loss of a batch is sum(w_i l_i) / sum(w_i) over its samples; metrics are unweighted.
  auto e = small_model(8, 1);
  const Index n = 40;
  auto x = d.x.rows(0, n);
  auto y = d.labels.rows(0, n);
  auto per = e.test_on_batch(x, y);
  Tensor<double, Cpu> w1(Shape{n});
  for (Index i = 0; i < n; ++i) w1[i] = 1.0;
  auto f = small_model(8, 1);
  auto r1 = f.train_on_batch(x, y, Lengths(), w1);
  EXPECT_NEAR(r1.loss, per.loss, 1e-6);
  // bad input: a class that does not exist, a weight count that does not match
  auto g = small_model(8, 1);
  const auto w0 = weights_of(g);
  EXPECT_THROW(g.fit(d, FitOptions().epochs(1).verbose(0).class_weight({{10, 1.0}})), ArgumentError);
  EXPECT_THROW(dw.with_sample_weights(Tensor<double, Cpu>(Shape{d.size() - 1})), ArgumentError);
  EXPECT_EQ(weights_of(g), w0);
  EXPECT_EQ(g.optimizer()->iterations(), 0);
}

TEST(Trainer, ValidationSplitHoldsOutTheLastFractionBeforeShuffling) {
  auto d = synthetic(200, 26);
  auto a = small_model(9, 1), b = small_model(9, 1);
  auto ha = a.fit(d, FitOptions().epochs(2).batch_size(32).verbose(0).validation_split(0.25));
  auto train = d.slice(0, 150), val = d.slice(150, 200);
  auto hb = b.fit(train, FitOptions().epochs(2).batch_size(32).verbose(0), &val);
  ASSERT_EQ(ha.epochs.size(), 2u);
  for (std::size_t e = 0; e < 2; ++e) {
    EXPECT_EQ(ha.epochs[e].loss, hb.epochs[e].loss);
    EXPECT_EQ(ha.epochs[e].val_loss, hb.epochs[e].val_loss);
  }
  auto c = small_model(9, 1);
  EXPECT_THROW(c.fit(d, FitOptions().epochs(1).verbose(0).validation_split(0.25), &val), ArgumentError);
  EXPECT_THROW(c.fit(d, FitOptions().epochs(1).verbose(0).validation_split(1.0)), ArgumentError);
}

TEST(Trainer, BadOptionsAreTypedErrorsBeforeAnyStep) {
  auto d = synthetic(100, 27);
  auto m = small_model(10, 1);
  const auto w0 = weights_of(m);
  EarlyStopping es(EarlyStoppingOptions().monitor("val_accuracy"));
  try {
    m.fit(d, FitOptions().epochs(1).verbose(0).callback(&es));
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("val_accuracy"), std::string::npos) << e.what();
  }
  EXPECT_THROW(m.optimizer()->set_learning_rate(-1), ArgumentError);
  EXPECT_THROW(m.optimizer()->set_learning_rate(NAN), ArgumentError);
  EXPECT_THROW(EarlyStopping(EarlyStoppingOptions().patience(-1)), ArgumentError);
  EXPECT_THROW(ReduceLROnPlateau(ReduceLROnPlateauOptions().factor(1.5)), ArgumentError);
  EXPECT_EQ(weights_of(m), w0);
  EXPECT_EQ(m.optimizer()->iterations(), 0);
}

TEST(Trainer, LearningRateSchedulerAndReduceLROnPlateauChangeTheRate) {
  auto train = synthetic(100, 28), val = synthetic(50, 29);
  auto m = small_model(11, 1);
  std::vector<double> seen;
  LearningRateScheduler sched([&](int epoch, double lr) {
    seen.push_back(lr);
    return epoch == 0 ? lr : lr * 0.5;
  });
  m.fit(train, FitOptions().epochs(3).batch_size(50).verbose(0).callback(&sched));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_DOUBLE_EQ(seen[0], 0.5);
  EXPECT_DOUBLE_EQ(seen[1], 0.5);
  EXPECT_DOUBLE_EQ(seen[2], 0.25);
  EXPECT_DOUBLE_EQ(m.optimizer()->learning_rate(), 0.125);
  // patience 0 and an improvement threshold nothing reaches: the rate drops after every epoch but the first
  auto m2 = small_model(11, 1);
  ReduceLROnPlateau rop(ReduceLROnPlateauOptions().monitor("val_loss").patience(0).factor(0.5).min_delta(100));
  m2.fit(train, FitOptions().epochs(3).batch_size(50).verbose(0).callback(&rop), &val);
  EXPECT_DOUBLE_EQ(m2.optimizer()->learning_rate(), 0.125);
}
