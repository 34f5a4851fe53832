// CPU-vs-GPU parity of every loss (value and gradient, through loss_value) and every metric
// (through detail::accumulate_metric, which the model uses, and Ops<T, Cuda> directly), on
// identical inputs: relative tolerance 1e-4 in float, 1e-10 in double; counts of hits exactly.
// Rows are the elements grouped by the last axis, so per-step shapes [N, steps, K] are covered
// beside [N, K]. Skipped without a CUDA device.

#include "cuda_test_util.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

template <class T>
double rtol_of() {
  return std::is_same<T, float>::value ? kRtolFloat : 1e-10;
}

/// Rows of random distributions over the last axis (each row sums to 1).
template <class T>
Tensor<T, Cpu> distributions(const Shape& s, Rng& rng) {
  Tensor<T, Cpu> t = random_tensor<T>(s, rng, 0.05, 1.0);
  const Index k = s[s.rank() - 1];
  for (Index r = 0; r < t.size() / k; ++r) {
    T sum = 0;
    for (Index j = 0; j < k; ++j) sum += t[r * k + j];
    for (Index j = 0; j < k; ++j) t[r * k + j] /= sum;
  }
  return t;
}

/// One-hot rows over the last axis.
template <class T>
Tensor<T, Cpu> one_hot(const Shape& s, Rng& rng) {
  Tensor<T, Cpu> t = Tensor<T, Cpu>::zeros(s);
  const Index k = s[s.rank() - 1];
  for (Index r = 0; r < t.size() / k; ++r) t[r * k + static_cast<Index>(rng.below(static_cast<std::uint32_t>(k)))] = 1;
  return t;
}

/// Values in {0, 1}.
template <class T>
Tensor<T, Cpu> binary(const Shape& s, Rng& rng) {
  Tensor<T, Cpu> t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(rng.below(2));
  return t;
}

Tensor<std::int32_t, Cpu> labels_for(const Shape& y, Rng& rng) {
  const Index k = y[y.rank() - 1];
  Tensor<std::int32_t, Cpu> l(y.drop_back());
  for (Index i = 0; i < l.size(); ++i) l[i] = static_cast<std::int32_t>(rng.below(static_cast<std::uint32_t>(k)));
  return l;
}

// ---- losses -----------------------------------------------------------------------------------

template <class T>
void expect_loss_parity(const Loss& loss, const Tensor<T, Cpu>& y, const Tensor<std::int32_t, Cpu>& labels, bool fused,
                        const std::string& what) {
  SCOPED_TRACE(what);
  const double rtol = rtol_of<T>();
  Tensor<T, Cpu> dy;
  const double ref = loss_value(loss, y, labels, &dy, fused);
  const Tensor<T, Cuda> yg = to_device<Cuda>(y);
  const Tensor<std::int32_t, Cuda> lg = to_device<Cuda>(labels);
  Tensor<T, Cuda> dyg;
  const double got = loss_value(loss, yg, lg, &dyg, fused);
  ASSERT_TRUE(std::isfinite(ref));
  EXPECT_NEAR(got, ref, rtol * std::abs(ref)) << "loss value";
  ASSERT_EQ(dyg.shape(), y.shape());
  EXPECT_TRUE(close(dy, dyg, rtol)) << "gradient";
  EXPECT_NEAR(loss_value(loss, yg, lg, nullptr, fused), ref, rtol * std::abs(ref)) << "loss value without gradient";
}

template <class T>
void expect_loss_parity(const Loss& loss, const Tensor<T, Cpu>& y, const Tensor<T, Cpu>& targets, bool fused,
                        const std::string& what) {
  SCOPED_TRACE(what);
  const double rtol = rtol_of<T>();
  Tensor<T, Cpu> dy;
  const double ref = loss_value(loss, y, targets, &dy, fused);
  const Tensor<T, Cuda> yg = to_device<Cuda>(y), tg = to_device<Cuda>(targets);
  Tensor<T, Cuda> dyg;
  const double got = loss_value(loss, yg, tg, &dyg, fused);
  ASSERT_TRUE(std::isfinite(ref));
  EXPECT_NEAR(got, ref, rtol * std::abs(ref)) << "loss value";
  ASSERT_EQ(dyg.shape(), y.shape());
  EXPECT_TRUE(close(dy, dyg, rtol)) << "gradient";
  EXPECT_NEAR(loss_value(loss, yg, tg, nullptr, fused), ref, rtol * std::abs(ref)) << "loss value without gradient";
}

template <class T>
void every_loss_matches_cpu() {
  Rng rng(11);
  for (const Shape& s : {Shape{37, 10}, Shape{7, 5, 6}, Shape{3, 1}}) {
    const std::string shape = s.str();
    const Tensor<T, Cpu> z = random_tensor<T>(s, rng, -6, 6);
    const Tensor<std::int32_t, Cpu> labels = labels_for(s, rng);
    expect_loss_parity(SparseCategoricalCrossentropy(), z, labels, true, "SCCE fused with softmax " + shape);
    expect_loss_parity(SparseCategoricalCrossentropy(true), z, labels, false, "SCCE from logits " + shape);

    const Tensor<T, Cpu> dist = distributions<T>(s, rng), hot = one_hot<T>(s, rng);
    const Tensor<T, Cpu> soft = random_tensor<T>(s, rng, 0, 1);  // rows not summing to 1
    expect_loss_parity(CategoricalCrossentropy(true), z, dist, false, "CCE from logits, distributions " + shape);
    expect_loss_parity(CategoricalCrossentropy(true), z, soft, false, "CCE from logits, unnormalised " + shape);
    expect_loss_parity(CategoricalCrossentropy(), z, hot, true, "CCE fused with softmax, one-hot " + shape);

    const Tensor<T, Cpu> t01 = random_tensor<T>(s, rng, 0, 1), bits = binary<T>(s, rng);
    expect_loss_parity(BinaryCrossentropy(true), z, t01, false, "BCE from logits " + shape);
    expect_loss_parity(BinaryCrossentropy(), z, bits, true, "BCE fused with sigmoid " + shape);
    // probabilities, with values on and beyond the clipping bounds (zero gradient there)
    Tensor<T, Cpu> p = random_tensor<T>(s, rng, 0.001, 0.999);
    p[0] = T(0);
    if (p.size() > 1) p[1] = T(1);
    if (p.size() > 2) p[2] = static_cast<T>(1e-9);
    expect_loss_parity(BinaryCrossentropy(), p, t01, false, "BCE on probabilities " + shape);

    const Tensor<T, Cpu> y = random_tensor<T>(s, rng, -2, 2), t = random_tensor<T>(s, rng, -2, 2);
    expect_loss_parity(MeanSquaredError(), y, t, false, "MSE " + shape);
    expect_loss_parity(MeanAbsoluteError(), y, t, false, "MAE " + shape);
  }
}

TEST(CudaLoss, EveryLossMatchesCpuInFloat) {
  FASTNN_REQUIRE_CUDA();
  every_loss_matches_cpu<float>();
}

TEST(CudaLoss, EveryLossMatchesCpuInDouble) {
  FASTNN_REQUIRE_CUDA();
  every_loss_matches_cpu<double>();
}

TEST(CudaLoss, AddsOnlyItsSlot) {
  FASTNN_REQUIRE_CUDA();
  Rng rng(12);
  const Tensor<float, Cpu> z = random_tensor<float>(Shape{300, 10}, rng, -6, 6);
  const Tensor<std::int32_t, Cpu> labels = labels_for(z.shape(), rng);
  const Tensor<float, Cpu> t = random_tensor<float>(z.shape(), rng, 0, 1);
  Tensor<double, Cpu> init(Shape{3});
  init[0] = 1.5;
  init[1] = -2;
  init[2] = 7;
  Tensor<double, Cpu> sc = init.clone();
  Tensor<double, Cuda> sg = to_device<Cuda>(init);
  Tensor<float, Cpu> dz(z.shape());
  Tensor<float, Cuda> dzg(z.shape());
  const Tensor<float, Cuda> zg = to_device<Cuda>(z), tg = to_device<Cuda>(t);
  Ops<float, Cpu>::softmax_xent(z, labels, &dz, 0.25f, sc, 1);
  Ops<float, Cuda>::softmax_xent(zg, to_device<Cuda>(labels), &dzg, 0.25f, sg, 1);
  Ops<float, Cpu>::pointwise_loss(PointwiseLoss::MeanSquaredError, z, t, nullptr, 1.0f, sc, 1);
  Ops<float, Cuda>::pointwise_loss(PointwiseLoss::MeanSquaredError, zg, tg, nullptr, 1.0f, sg, 1);
  const auto got = to_device<Cpu>(sg);
  EXPECT_EQ(got[0], 1.5);
  EXPECT_EQ(got[2], 7.0);
  EXPECT_NEAR(got[1], sc[1], kRtolFloat * std::abs(sc[1]));
  EXPECT_TRUE(close(dz, dzg, kRtolFloat));
  // shapes that do not fit are refused before anything runs on the device
  Tensor<double, Cuda> one = Tensor<double, Cuda>::zeros(Shape{1});
  const Tensor<std::int32_t, Cuda> lg = to_device<Cuda>(labels);
  const Tensor<float, Cuda> short_targets = to_device<Cuda>(random_tensor<float>(Shape{3}, rng));
  EXPECT_THROW((Ops<float, Cuda>::softmax_xent(zg, lg, nullptr, 1.0f, one, 1)), ShapeError);
  EXPECT_THROW((Ops<float, Cuda>::sigmoid_xent(zg, short_targets, nullptr, 1.0f, one, 0)), ShapeError);
}

TEST(CudaLoss, LabelOutOfRangeGivesNaNNotAStrayRead) {
  FASTNN_REQUIRE_CUDA();
  Tensor<float, Cuda> z = Tensor<float, Cuda>::zeros(Shape{2, 3});
  Tensor<std::int32_t, Cpu> l(Shape{2});
  l[0] = 1;
  l[1] = 3;
  EXPECT_TRUE(std::isnan(loss_value(SparseCategoricalCrossentropy(true), z, to_device<Cuda>(l))));
}

// ---- metrics ----------------------------------------------------------------------------------

struct MetricCase {
  Metric::Kind kind;
  bool fused;
  Activation act;
  std::string name;
};

/// stats = [0.25, 0.5, 0.75] on both devices, the metric added into slot 1; returns the three.
template <class T, class D>
Tensor<double, Cpu> run_metric(const MetricCase& c, const Tensor<T, Cpu>& y, const Tensor<std::int32_t, Cpu>& labels,
                               const Tensor<T, Cpu>& targets) {
  Tensor<double, Cpu> init(Shape{3});
  init[0] = 0.25;
  init[1] = 0.5;
  init[2] = 0.75;
  Tensor<double, D> stats = to_device<D>(init);
  Tensor<T, D> scratch;
  Tensor<std::int32_t, D> l = labels.empty() ? Tensor<std::int32_t, D>() : to_device<D>(labels);
  Tensor<T, D> t = targets.empty() ? Tensor<T, D>() : to_device<D>(targets);
  detail::accumulate_metric(c.kind, to_device<D>(y), l, t, c.fused, c.act, scratch, stats, 1);
  return to_device<Cpu>(stats);
}

template <class T>
void expect_metric_parity(const MetricCase& c, const Tensor<T, Cpu>& y, const Tensor<std::int32_t, Cpu>& labels,
                          const Tensor<T, Cpu>& targets) {
  SCOPED_TRACE(c.name + " " + y.shape().str());
  const auto ref = run_metric<T, Cpu>(c, y, labels, targets);
  const auto got = run_metric<T, Cuda>(c, y, labels, targets);
  EXPECT_EQ(got[0], 0.25);
  EXPECT_EQ(got[2], 0.75);
  if (c.kind == Metric::Kind::MeanAbsoluteError)
    EXPECT_NEAR(got[1], ref[1], rtol_of<T>() * std::abs(ref[1]));
  else
    EXPECT_EQ(got[1], ref[1]);  // counts of hits (BinaryAccuracy: hits / K, the same divisions)
}

template <class T>
void every_metric_matches_cpu() {
  Rng rng(21);
  for (const Shape& s : {Shape{64, 5}, Shape{9, 7, 4}, Shape{33, 1}}) {
    // values on a coarse grid: many ties, so the first arg-max rule is exercised
    Tensor<T, Cpu> coarse(s), coarse_t(s);
    for (Index i = 0; i < coarse.size(); ++i) coarse[i] = static_cast<T>(rng.below(3));
    for (Index i = 0; i < coarse_t.size(); ++i) coarse_t[i] = static_cast<T>(rng.below(2));
    const Tensor<std::int32_t, Cpu> labels = labels_for(s, rng);
    const Tensor<std::int32_t, Cpu> none;
    const Tensor<T, Cpu> no_targets;
    expect_metric_parity<T>({Metric::Kind::SparseCategoricalAccuracy, false, Activation::Linear, "sparse_categorical"},
                            coarse, labels, no_targets);
    expect_metric_parity<T>({Metric::Kind::SparseCategoricalAccuracy, true, Activation::Softmax, "sparse_fused"},
                            random_tensor<T>(s, rng), labels, no_targets);
    expect_metric_parity<T>({Metric::Kind::CategoricalAccuracy, false, Activation::Linear, "categorical"}, coarse,
                            none, coarse_t);
    expect_metric_parity<T>({Metric::Kind::CategoricalAccuracy, true, Activation::Softmax, "categorical_fused"},
                            random_tensor<T>(s, rng), none, one_hot<T>(s, rng));
    // binary accuracy: values exactly at the thresholds 0.5 (unfused) and 0 (fused with sigmoid)
    Tensor<T, Cpu> grid(s);
    for (Index i = 0; i < grid.size(); ++i) grid[i] = static_cast<T>(0.25 * (static_cast<double>(rng.below(5)) - 1));
    const Tensor<T, Cpu> bits = binary<T>(s, rng);
    expect_metric_parity<T>({Metric::Kind::BinaryAccuracy, false, Activation::Linear, "binary"}, grid, none, bits);
    expect_metric_parity<T>({Metric::Kind::BinaryAccuracy, true, Activation::Sigmoid, "binary_fused"}, grid, none,
                            bits);
    const Tensor<T, Cpu> y = random_tensor<T>(s, rng, -3, 3), t = random_tensor<T>(s, rng, -1, 1);
    expect_metric_parity<T>({Metric::Kind::MeanAbsoluteError, false, Activation::Linear, "mae"}, y, none, t);
    // fused: the activation is applied (into the scratch tensor) before the error is taken
    expect_metric_parity<T>({Metric::Kind::MeanAbsoluteError, true, Activation::Sigmoid, "mae_fused_sigmoid"}, y, none,
                            t);
    expect_metric_parity<T>({Metric::Kind::MeanAbsoluteError, true, Activation::Softmax, "mae_fused_softmax"}, y, none,
                            distributions<T>(s, rng));
  }
}

TEST(CudaMetric, EveryMetricMatchesCpuInFloat) {
  FASTNN_REQUIRE_CUDA();
  every_metric_matches_cpu<float>();
}

TEST(CudaMetric, EveryMetricMatchesCpuInDouble) {
  FASTNN_REQUIRE_CUDA();
  every_metric_matches_cpu<double>();
}

TEST(CudaMetric, FirstArgMaxOnTiesAndThresholdIsStrict) {
  FASTNN_REQUIRE_CUDA();
  // row 0: ties at 0 and 2 (first wins: 0); row 1: all equal (0); row 2: maximum last (2)
  Tensor<float, Cpu> y(Shape{3, 3});
  const float v[] = {5, 1, 5, 2, 2, 2, 0, 1, 3};
  std::copy(v, v + 9, y.data());
  Tensor<std::int32_t, Cpu> l(Shape{3});
  l[0] = 0;
  l[1] = 0;
  l[2] = 2;
  Tensor<double, Cuda> stats = Tensor<double, Cuda>::zeros(Shape{2});
  Ops<float, Cuda>::metric_labels(to_device<Cuda>(y), to_device<Cuda>(l), stats, 0);
  // binary accuracy at threshold 2: (y > 2) is {1,0,1, 0,0,0, 0,0,1}, against t = (y >= 2)
  Tensor<float, Cpu> t(Shape{3, 3});
  for (Index i = 0; i < 9; ++i) t[i] = y[i] >= 2 ? 1.0f : 0.0f;
  Ops<float, Cuda>::metric_targets(MetricKind::BinaryAccuracy, to_device<Cuda>(y), to_device<Cuda>(t), 2.0f, stats, 1);
  const auto h = to_device<Cpu>(stats);
  EXPECT_EQ(h[0], 3.0);
  // rows: 3/3, 0/3 (the three 2s are not > 2, their targets are 1), 3/3
  EXPECT_EQ(h[1], 2.0);
}

}  // namespace
