// Losses and metrics: finite-difference gradient checks in double for every loss, values
// against their definitions, Keras's semantics (fusion, from_logits, per-step rows), and the
// metrics.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include "test_util.hpp"

#include <cmath>
#include <functional>

using namespace fastnn;

namespace {

constexpr double kTol = 1e-6;

using fastnn_test::random_tensor;

/// Rows of random distributions (each row sums to 1).
Tensor<double, Cpu> random_distributions(const Shape& s, Rng& rng) {
  auto t = random_tensor(s, rng, 0.05, 1.0);
  const Index k = s[s.rank() - 1];
  for (Index r = 0; r < t.size() / k; ++r) {
    double sum = 0;
    for (Index j = 0; j < k; ++j) sum += t[r * k + j];
    for (Index j = 0; j < k; ++j) t[r * k + j] /= sum;
  }
  return t;
}

/// Central differences of f at y against the analytic gradient g; norm-wise relative error.
double grad_error(Tensor<double, Cpu> y, const Tensor<double, Cpu>& g, const std::function<double(const Tensor<double, Cpu>&)>& f) {
  std::vector<double> a, n;
  const double h = 1e-6;
  for (Index i = 0; i < y.size(); ++i) {
    const double old = y[i];
    y[i] = old + h;
    const double lp = f(y);
    y[i] = old - h;
    const double lm = f(y);
    y[i] = old;
    n.push_back((lp - lm) / (2 * h));
    a.push_back(g[i]);
  }
  return fastnn::testing::rel_error(a, n);
}

double check_labels(const Loss& loss, const Shape& shape, bool fused, std::uint64_t seed) {
  Rng rng(seed);
  auto y = random_tensor(shape, rng, -4, 4);
  const Index k = shape[shape.rank() - 1];
  Tensor<std::int32_t, Cpu> labels(shape.drop_back());
  for (Index i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(rng.below(static_cast<std::uint32_t>(k)));
  Tensor<double, Cpu> dy;
  loss_value(loss, y, labels, &dy, fused);
  return grad_error(y, dy, [&](const Tensor<double, Cpu>& v) { return loss_value(loss, v, labels, nullptr, fused); });
}

double check_targets(const Loss& loss, const Tensor<double, Cpu>& y, const Tensor<double, Cpu>& t, bool fused) {
  Tensor<double, Cpu> dy;
  loss_value(loss, y, t, &dy, fused);
  return grad_error(y, dy, [&](const Tensor<double, Cpu>& v) { return loss_value(loss, v, t, nullptr, fused); });
}

double sigmoid(double z) { return 1 / (1 + std::exp(-z)); }

}  // namespace

// ---- gradient checks ----------------------------------------------------------------------------

TEST(LossGrad, SparseCategoricalCrossentropyFromLogits) {
  EXPECT_LT(check_labels(SparseCategoricalCrossentropy(true), Shape{6, 10}, false, 3), kTol);
}
TEST(LossGrad, SparseCategoricalCrossentropyFusedWithSoftmax) {
  EXPECT_LT(check_labels(SparseCategoricalCrossentropy(), Shape{5, 4}, true, 4), kTol);
}
TEST(LossGrad, SparseCategoricalCrossentropyPerStep) {
  EXPECT_LT(check_labels(SparseCategoricalCrossentropy(true), Shape{3, 4, 5}, false, 5), kTol);
}
TEST(LossGrad, CategoricalCrossentropyFromLogitsSoftTargets) {
  Rng rng(6);
  auto y = random_tensor(Shape{4, 6}, rng, -3, 3);
  EXPECT_LT(check_targets(CategoricalCrossentropy(true), y, random_distributions(Shape{4, 6}, rng), false), kTol);
}
TEST(LossGrad, CategoricalCrossentropyFusedPerStep) {
  Rng rng(7);
  auto y = random_tensor(Shape{2, 3, 5}, rng, -3, 3);
  EXPECT_LT(check_targets(CategoricalCrossentropy(), y, random_distributions(Shape{2, 3, 5}, rng), true), kTol);
}
TEST(LossGrad, BinaryCrossentropyFromLogits) {
  Rng rng(8);
  auto y = random_tensor(Shape{5, 3}, rng, -4, 4);
  EXPECT_LT(check_targets(BinaryCrossentropy(true), y, random_tensor(Shape{5, 3}, rng, 0, 1), false), kTol);
}
TEST(LossGrad, BinaryCrossentropyFusedWithSigmoid) {
  Rng rng(9);
  auto y = random_tensor(Shape{4, 2}, rng, -4, 4);
  EXPECT_LT(check_targets(BinaryCrossentropy(), y, random_tensor(Shape{4, 2}, rng, 0, 1), true), kTol);
}
TEST(LossGrad, BinaryCrossentropyOnProbabilities) {
  Rng rng(10);
  auto y = random_tensor(Shape{4, 3}, rng, 0.05, 0.95);
  EXPECT_LT(check_targets(BinaryCrossentropy(), y, random_tensor(Shape{4, 3}, rng, 0, 1), false), kTol);
}
TEST(LossGrad, MeanSquaredError) {
  Rng rng(11);
  auto y = random_tensor(Shape{3, 4, 2}, rng, -2, 2);
  EXPECT_LT(check_targets(MeanSquaredError(), y, random_tensor(Shape{3, 4, 2}, rng, -2, 2), false), kTol);
}
TEST(LossGrad, MeanAbsoluteError) {
  Rng rng(12);
  auto y = random_tensor(Shape{6, 3}, rng, -2, 2);
  EXPECT_LT(check_targets(MeanAbsoluteError(), y, random_tensor(Shape{6, 3}, rng, -2, 2), false), kTol);
}

// ---- values against the definitions ---------------------------------------------------------------

TEST(LossValue, SparseCategoricalCrossentropyIsStableForHugeLogits) {
  Tensor<double, Cpu> z(Shape{2, 3});
  const double v[] = {1000, 0, -1000, 1, 2, 3};
  std::copy(v, v + 6, z.data());
  Tensor<std::int32_t, Cpu> y(Shape{2});
  y[0] = 0;
  y[1] = 1;
  const double l = loss_value(SparseCategoricalCrossentropy(true), z, y);
  const double row1 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 2.0;
  EXPECT_TRUE(std::isfinite(l));
  EXPECT_NEAR(l, row1 / 2, 1e-12);
}

TEST(LossValue, CategoricalCrossentropyIsMinusSumTLogSoftmax) {
  Rng rng(13);
  auto z = random_tensor(Shape{3, 4}, rng, -2, 2);
  auto t = random_distributions(Shape{3, 4}, rng);
  double want = 0;
  for (Index r = 0; r < 3; ++r) {
    double se = 0;
    for (Index j = 0; j < 4; ++j) se += std::exp(z[r * 4 + j]);
    for (Index j = 0; j < 4; ++j) want -= t[r * 4 + j] * std::log(std::exp(z[r * 4 + j]) / se);
  }
  EXPECT_NEAR(loss_value(CategoricalCrossentropy(true), z, t), want / 3, 1e-12);
  // one-hot targets give the sparse loss
  Tensor<double, Cpu> onehot = Tensor<double, Cpu>::zeros(Shape{3, 4});
  Tensor<std::int32_t, Cpu> labels(Shape{3});
  for (Index r = 0; r < 3; ++r) {
    labels[r] = static_cast<std::int32_t>(r);
    onehot[r * 4 + r] = 1;
  }
  EXPECT_NEAR(loss_value(CategoricalCrossentropy(true), z, onehot), loss_value(SparseCategoricalCrossentropy(true), z, labels),
              1e-12);
}

TEST(LossValue, BinaryCrossentropyLogitsProbabilitiesAndClipping) {
  Rng rng(14);
  auto z = random_tensor(Shape{4, 3}, rng, -3, 3);
  auto t = random_tensor(Shape{4, 3}, rng, 0, 1);
  Tensor<double, Cpu> p(z.shape());
  double want = 0;
  for (Index i = 0; i < z.size(); ++i) {
    p[i] = sigmoid(z[i]);
    want += -(t[i] * std::log(p[i]) + (1 - t[i]) * std::log(1 - p[i]));
  }
  want /= static_cast<double>(z.size());  // mean over units, then over rows
  EXPECT_NEAR(loss_value(BinaryCrossentropy(true), z, t), want, 1e-12);
  EXPECT_NEAR(loss_value(BinaryCrossentropy(), z, t, nullptr, /*fused=*/true), want, 1e-12);
  EXPECT_NEAR(loss_value(BinaryCrossentropy(), p, t), want, 1e-9);
  // a probability of exactly 0 with target 1 is clipped to 1e-7 (finite loss, no gradient)
  Tensor<double, Cpu> p0 = Tensor<double, Cpu>::zeros(Shape{1, 1});
  Tensor<double, Cpu> t1(Shape{1, 1});
  t1[0] = 1;
  Tensor<double, Cpu> d;
  EXPECT_NEAR(loss_value(BinaryCrossentropy(), p0, t1, &d), -std::log(1e-7), 1e-9);
  EXPECT_EQ(d[0], 0.0);
}

TEST(LossValue, MeanSquaredAndAbsoluteErrorAverageUnitsThenRows) {
  Tensor<double, Cpu> y(Shape{2, 2}), t(Shape{2, 2});
  const double yv[] = {1, 2, 3, 4}, tv[] = {0, 0, 5, 1};
  std::copy(yv, yv + 4, y.data());
  std::copy(tv, tv + 4, t.data());
  EXPECT_DOUBLE_EQ(loss_value(MeanSquaredError(), y, t), ((1 + 4) / 2.0 + (4 + 9) / 2.0) / 2);
  EXPECT_DOUBLE_EQ(loss_value(MeanAbsoluteError(), y, t), ((1 + 2) / 2.0 + (2 + 3) / 2.0) / 2);
}

TEST(LossValue, WrongTargetsAreTypedErrors) {
  Tensor<double, Cpu> y(Shape{2, 3});
  y.set_zero();
  Tensor<std::int32_t, Cpu> labels(Shape{3});
  labels.set_zero();
  EXPECT_THROW(loss_value(SparseCategoricalCrossentropy(true), y, labels), ShapeError);
  EXPECT_THROW(loss_value(MeanSquaredError(), y, labels), ArgumentError);
  Tensor<double, Cpu> t(Shape{2, 2});
  EXPECT_THROW(loss_value(MeanSquaredError(), y, t), ShapeError);
  // probabilities without a softmax to fuse: Keras's categorical cross-entropies need one here
  Tensor<std::int32_t, Cpu> l2(Shape{2});
  l2.set_zero();
  EXPECT_THROW(loss_value(SparseCategoricalCrossentropy(), y, l2), ArgumentError);
}

TEST(Loss, ConfigRoundTripAndUnknownNames) {
  for (const Loss& l : {Loss(SparseCategoricalCrossentropy(true)), Loss(CategoricalCrossentropy()),
                        Loss(BinaryCrossentropy(true)), Loss(MeanSquaredError()), Loss(MeanAbsoluteError())})
    EXPECT_EQ(Loss::from_config(l.type_name(), l.config(), "test"), l) << l.type_name();
  EXPECT_THROW(Loss::from_config("Huber", {}, "test"), MismatchError);
  EXPECT_THROW(Loss::from_config("MeanSquaredError", {{"from_logits", "true"}}, "test"), MismatchError);
  EXPECT_THROW(Loss::from_config("BinaryCrossentropy", {}, "test"), MismatchError);
  EXPECT_THROW(Loss::from_config("BinaryCrossentropy", {{"from_logits", "yes"}}, "test"), MismatchError);
}

// ---- metrics -----------------------------------------------------------------------------------

TEST(Metrics, AccuracyKindsAndTies) {
  Tensor<double, Cpu> y(Shape{3, 3});
  const double v[] = {0.1, 0.7, 0.2, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0};  // row 1 ties: the first maximum counts
  std::copy(v, v + 9, y.data());
  Tensor<std::int32_t, Cpu> labels(Shape{3});
  labels[0] = 1;
  labels[1] = 1;
  labels[2] = 2;
  Tensor<double, Cpu> stats = Tensor<double, Cpu>::zeros(Shape{3});
  Ops<double, Cpu>::metric_labels(y, labels, stats, 0);
  EXPECT_EQ(stats[0], 2.0);
  Tensor<double, Cpu> t = Tensor<double, Cpu>::zeros(Shape{3, 3});
  t[1] = 1;  // row 0 -> class 1 (hit)
  t[3] = 1;  // row 1 -> class 0 (hit: first maximum)
  t[7] = 1;  // row 2 -> class 1 (miss)
  Ops<double, Cpu>::metric_targets(MetricKind::CategoricalAccuracy, y, t, 0, stats, 1);
  EXPECT_EQ(stats[1], 2.0);
  Ops<double, Cpu>::metric_targets(MetricKind::BinaryAccuracy, y, t, 0.5, stats, 2);
  // row 0: (0,1,0) vs (0,1,0) -> 1; row 1: (0,0,0) vs (1,0,0) -> 2/3; row 2: (0,0,1) vs (0,1,0) -> 1/3
  EXPECT_NEAR(stats[2], 1 + 2.0 / 3 + 1.0 / 3, 1e-12);
}

TEST(Metrics, NamesResolveByLoss) {
  EXPECT_EQ(Metric("accuracy").resolve(SparseCategoricalCrossentropy(), 10), Metric::Kind::SparseCategoricalAccuracy);
  EXPECT_EQ(Metric("acc").resolve(CategoricalCrossentropy(), 10), Metric::Kind::CategoricalAccuracy);
  EXPECT_EQ(Metric("accuracy").resolve(BinaryCrossentropy(), 4), Metric::Kind::BinaryAccuracy);
  EXPECT_EQ(Metric("mae").resolve(MeanSquaredError(), 4), Metric::Kind::MeanAbsoluteError);
  EXPECT_THROW(Metric("mae").resolve(SparseCategoricalCrossentropy(), 4), ArgumentError);
  EXPECT_THROW(Metric("f1"), ArgumentError);
}

// ---- the losses in a model ------------------------------------------------------------------------

namespace {

/// x [n, 4, 3] uniform; a linear target per step: t = x W (3 -> 2), so LSTM -> Dense can learn it.
Dataset<float, Cpu> sequence_regression(Index n, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<float, Cpu> x(Shape{n, 4, 3}), t(Shape{n, 4, 2});
  const float w[3][2] = {{0.5f, -0.3f}, {0.2f, 0.8f}, {-0.6f, 0.1f}};
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1, 1));
  for (Index r = 0; r < n * 4; ++r)
    for (Index k = 0; k < 2; ++k) {
      float s = 0;
      for (Index j = 0; j < 3; ++j) s += x[r * 3 + j] * w[j][k];
      t[r * 2 + k] = s;
    }
  return make_dataset(x, t);
}

}  // namespace

TEST(LossInModel, RegressionWithMseLearnsPerStepTargets) {
  auto train = sequence_regression(512, 1), val = sequence_regression(128, 2);
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(16).return_sequences(true));
  m.add<Dense>(DenseOptions(2));
  m.build({4, 3}, 7);
  m.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError(), {"mae"});
  const double before = m.evaluate(val).loss;
  History h = m.fit(train, FitOptions().epochs(15).batch_size(32).verbose(0), &val);
  EXPECT_LT(h.last().val_loss, before / 10);
  EXPECT_TRUE(std::isfinite(h.last().metric("mae")));
  EXPECT_TRUE(std::isfinite(h.last().metric("val_mae")));
  EXPECT_TRUE(std::isnan(h.last().accuracy));
  const auto r = m.evaluate(val);
  EXPECT_NEAR(r.loss, h.last().val_loss, 1e-9);
  EXPECT_NEAR(r.metric("mae"), h.last().metric("val_mae"), 1e-9);
}

TEST(LossInModel, BinaryCrossentropyFusesSigmoidAndPredictReturnsProbabilities) {
  Rng rng(3);
  const Index n = 256;
  Tensor<float, Cpu> x(Shape{n, 4}), t(Shape{n, 2});
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < 4; ++j) x[i * 4 + j] = static_cast<float>(rng.uniform(-1, 1));
    t[i * 2] = x[i * 4] + x[i * 4 + 1] > 0 ? 1.0f : 0.0f;  // two independent labels (multi-label)
    t[i * 2 + 1] = x[i * 4 + 2] > 0.2f ? 1.0f : 0.0f;
  }
  auto data = make_dataset(x, t);
  Sequential<float> m;
  m.add<Dense>(DenseOptions(8).activation(Activation::Tanh));
  m.add<Dense>(DenseOptions(2).activation(Activation::Sigmoid));
  m.build({4}, 5);
  m.compile(std::make_unique<Adam<float>>(0.05), BinaryCrossentropy(), {"accuracy"});
  EXPECT_TRUE(m.loss_fused());
  History h = m.fit(data, FitOptions().epochs(30).batch_size(32).verbose(0));
  EXPECT_GT(h.last().accuracy, 0.9);
  const auto p = m.predict(x);
  for (Index i = 0; i < p.size(); ++i) ASSERT_TRUE(p[i] > 0 && p[i] < 1);
  // the same model unfused (BinaryCrossentropy on the sigmoid's output) gives the same loss
  const double fused = m.evaluate(data).loss;
  auto probs = m.predict(x);
  EXPECT_NEAR(loss_value(BinaryCrossentropy(), probs, t), fused, 1e-4);
}

TEST(LossInModel, CompileRefusesAProbabilityLossWithoutSoftmax) {
  Sequential<float> m;
  m.add<Dense>(DenseOptions(3));
  m.build({4}, 1);
  EXPECT_THROW(m.compile(std::make_unique<SGD<float>>(0.1), SparseCategoricalCrossentropy(), {"accuracy"}), ArgumentError);
  EXPECT_NO_THROW(m.compile(std::make_unique<SGD<float>>(0.1), SparseCategoricalCrossentropy(true), {"accuracy"}));
  EXPECT_THROW(m.compile(std::make_unique<SGD<float>>(0.1), MeanSquaredError(), {"sparse_categorical_accuracy"}),
               ArgumentError);
}

TEST(LossInModel, DataOfTheWrongKindIsATypedError) {
  Sequential<float> m;
  m.add<Dense>(DenseOptions(3));
  m.build({4}, 1);
  m.compile(std::make_unique<SGD<float>>(0.1), MeanSquaredError());
  Tensor<float, Cpu> x = Tensor<float, Cpu>::zeros(Shape{8, 4});
  Tensor<std::int32_t, Cpu> labels = Tensor<std::int32_t, Cpu>::zeros(Shape{8});
  EXPECT_THROW(m.fit(make_dataset(x, labels, 3), FitOptions().verbose(0)), ArgumentError);
  Tensor<float, Cpu> t = Tensor<float, Cpu>::zeros(Shape{8, 2});
  EXPECT_THROW(m.fit(make_dataset(x, t), FitOptions().verbose(0)), ShapeError);
  Tensor<std::int32_t, Cpu> bad = Tensor<std::int32_t, Cpu>::zeros(Shape{8});
  bad[5] = 3;
  try {
    make_dataset(x, bad, 3);
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("sample 5"), std::string::npos) << e.what();
  }
  t[2 * 2 + 1] = NAN;
  try {
    make_dataset(x, t);
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("sample 2"), std::string::npos) << e.what();
  }
}

TEST(LossInModel, PerStepClassificationWithLabelsPerStep) {
  Rng rng(8);
  const Index n = 256, steps = 5;
  Tensor<float, Cpu> x(Shape{n, steps, 2});
  Tensor<std::int32_t, Cpu> y(Shape{n, steps});
  for (Index i = 0; i < n * steps; ++i) {
    x[i * 2] = static_cast<float>(rng.uniform(-1, 1));
    x[i * 2 + 1] = static_cast<float>(rng.uniform(-1, 1));
    y[i] = x[i * 2] > 0 ? 1 : 0;  // the class of each step is the sign of its first feature
  }
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(8).return_sequences(true));
  m.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  m.build({steps, 2}, 3);
  m.compile(std::make_unique<Adam<float>>(0.02), SparseCategoricalCrossentropy(), {"accuracy"});
  History h = m.fit(make_dataset(x, y, 2), FitOptions().epochs(20).batch_size(32).verbose(0));
  EXPECT_GT(h.last().accuracy, 0.9);
}
