// Dropout (layers/dropout.hpp): Keras semantics (inverted dropout in training, identity in
// inference), the drop rate, a mask that is a pure function of the key (so backward and a
// finite-difference check see the same mask), reproducible and resumable training, the
// layer's configuration in weights files, and bad options.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "fastnn/fastnn.hpp"
#include "fastnn/testing/gradcheck.hpp"
#include "test_util.hpp"

namespace {

using namespace fastnn;
using fastnn_test::TempDir;
using fastnn_test::toy_data;

Tensor<float, Cpu> ramp(const Shape& s) {
  Tensor<float, Cpu> t(s);
  for (Index i = 0; i < t.size(); ++i) t[i] = 0.5f + static_cast<float>(i % 97);  // never zero
  return t;
}

struct Standalone {
  explicit Standalone(double rate, const Shape& in = Shape{64}) : layer(DropoutOptions(rate)) {
    layer.set_name("dropout");
    EXPECT_EQ(layer.build(in), in);
    EXPECT_EQ(layer.param_count(), 0);
  }
  Dropout<float> layer;
};

TEST(Dropout, MaskBitsAreSplitMix64) {
  // SplitMix64 seeded with 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f
  // (the published reference sequence): bits32(0, i) is the high half of output i + 1. The
  // masks must never change silently, or resumed runs would draw other masks.
  EXPECT_EQ(hash::bits32(0, 0), 0xe220a839u);
  EXPECT_EQ(hash::bits32(0, 1), 0x6e789e6au);
  EXPECT_EQ(hash::bits32(0, 2), 0x06c45d18u);
}

TEST(Dropout, InferenceIsTheIdentity) {
  Standalone s(0.5);
  s.layer.set_noise_key(1);
  auto x = ramp(Shape{32, 64});
  Tensor<float, Cpu> y;
  s.layer.forward(x, y, Mode::Infer);
  ASSERT_EQ(y.shape(), x.shape());
  for (Index i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << i;
}

TEST(Dropout, DropsTheRateAndScalesTheRest) {
  for (double rate : {0.1, 0.5, 0.8}) {
    Standalone s(rate, Shape{1000});
    s.layer.set_noise_key(42);
    auto x = ramp(Shape{200, 1000});
    Tensor<float, Cpu> y;
    s.layer.forward(x, y, Mode::Train);
    const float scale = static_cast<float>(1.0 / (1.0 - rate));
    Index dropped = 0;
    for (Index i = 0; i < x.size(); ++i) {
      if (y[i] == 0.0f) ++dropped;
      else ASSERT_EQ(y[i], x[i] * scale) << "element " << i;
    }
    const double n = static_cast<double>(x.size()), p = static_cast<double>(dropped) / n;
    const double sigma = std::sqrt(rate * (1 - rate) / n);
    EXPECT_NEAR(p, rate, 5 * sigma) << "rate " << rate;  // 200,000 Bernoulli draws
  }
}

TEST(Dropout, RateZeroIsTheIdentityEvenInTraining) {
  Standalone s(0.0);
  EXPECT_FALSE(s.layer.stochastic());
  s.layer.set_noise_key(3);
  auto x = ramp(Shape{4, 64});
  Tensor<float, Cpu> y;
  s.layer.forward(x, y, Mode::Train);
  for (Index i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]);
}

TEST(Dropout, TheMaskIsAFunctionOfTheKeyAndBackwardUsesIt) {
  Standalone s(0.5);
  auto x = ramp(Shape{16, 64});
  Tensor<float, Cpu> y1, y2, y3;
  s.layer.set_noise_key(7);
  s.layer.forward(x, y1, Mode::Train);
  s.layer.forward(x, y2, Mode::Train);  // same key: same mask
  s.layer.set_noise_key(8);
  s.layer.forward(x, y3, Mode::Train);  // another key: another mask
  Index same = 0;
  for (Index i = 0; i < x.size(); ++i) {
    ASSERT_EQ(y1[i], y2[i]);
    same += (y1[i] == 0.0f) == (y3[i] == 0.0f);
  }
  EXPECT_LT(same, x.size() * 3 / 4);  // independent masks agree on about half the elements
  // backward of key 8: zero exactly where y3 is zero, dy * 2 elsewhere
  Tensor<float, Cpu> dy(x.shape()), dx;
  for (Index i = 0; i < dy.size(); ++i) dy[i] = 1.0f + static_cast<float>(i % 5);
  s.layer.backward(x, y3, dy, &dx);
  for (Index i = 0; i < x.size(); ++i) ASSERT_EQ(dx[i], y3[i] == 0.0f ? 0.0f : dy[i] * 2.0f) << i;
}

TEST(Dropout, GradientMatchesFiniteDifferences) {
  Dropout<double> d(DropoutOptions(0.3));
  Rng rng(5);
  auto storage = fastnn::testing::build_standalone(d, Shape{4, 6}, rng, "dropout");
  d.set_noise_key(99);
  Tensor<double, Cpu> x(Shape{3, 4, 6});
  for (Index i = 0; i < x.size(); ++i) x[i] = rng.uniform(-1, 1);
  auto errs = fastnn::testing::check_gradients(d, x, rng);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_LT(errs[0].rel_error, 1e-8) << "max abs diff " << errs[0].max_abs_diff;
}

TEST(Dropout, BadOptionsAndShapesAreRefused) {
  for (double r : {-0.1, 1.0, 1.5, std::numeric_limits<double>::quiet_NaN()})
    EXPECT_THROW(Dropout<float>{DropoutOptions(r)}, ArgumentError) << r;
  Standalone s(0.2, Shape{8, 4});
  Tensor<float, Cpu> x(Shape{2, 4, 8}), y;
  try {
    s.layer.forward(x, y, Mode::Train);
    FAIL() << "no ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("dropout (Dropout): expected input [batch, 8, 4], got [2, 4, 8]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW((make_layer<float, Cpu>("Dropout", {{"rate", "1"}, {"seed", "0"}})), MismatchError);
  EXPECT_THROW((make_layer<float, Cpu>("Dropout", {{"rate", "0.2x"}, {"seed", "0"}})), MismatchError);
  EXPECT_THROW((make_layer<float, Cpu>("Dropout", {{"rate", "0.2"}, {"seed", "-1"}})), MismatchError);
  EXPECT_THROW((make_layer<float, Cpu>("Dropout", {{"rate", "0.2"}})), MismatchError);
}

// ---- in a model ------------------------------------------------------------------------------

void build_model(Sequential<float>& m, double rate, std::uint64_t seed, std::uint64_t dropout_seed = 0) {
  m.add<Bidirectional>(LSTMOptions(16));
  m.add<Dropout>(DropoutOptions(rate).seed(dropout_seed));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, seed);
  m.compile(std::make_unique<Adam<float>>(0.02));
}

TEST(DropoutModel, TrainsReproduciblyAndEvaluatesWithoutDropout) {
  auto data = toy_data(512, 1);
  auto opts = FitOptions().epochs(10).batch_size(32).verbose(0);
  Sequential<float> a, b, c, none;
  build_model(a, 0.3, 11);
  build_model(b, 0.3, 11);
  build_model(c, 0.3, 11, /*dropout_seed=*/1);
  build_model(none, 0.0, 11);
  const History ha = a.fit(data, opts, &data), hb = b.fit(data, opts, &data), hc = c.fit(data, opts, &data),
                hn = none.fit(data, opts, &data);
  for (std::size_t e = 0; e < ha.epochs.size(); ++e) {
    EXPECT_EQ(ha.epochs[e].loss, hb.epochs[e].loss);  // same seeds: bit-identical
    EXPECT_EQ(ha.epochs[e].val_loss, hb.epochs[e].val_loss);
  }
  EXPECT_NE(ha.last().loss, hc.last().loss);  // another dropout seed: other masks
  EXPECT_NE(ha.last().loss, hn.last().loss);  // rate 0: no masks
  EXPECT_GT(ha.last().val_accuracy, 0.9) << "the toy problem is learnable with dropout";
  EXPECT_GT(hn.last().val_accuracy, 0.9) << "and without";
  // inference is deterministic (no dropout): two evaluations agree exactly
  EXPECT_EQ(a.evaluate(data).loss, a.evaluate(data).loss);
  std::ostringstream os;
  a.summary(os);
  EXPECT_NE(os.str().find("dropout (Dropout)"), std::string::npos) << os.str();
}

TEST(DropoutModel, ResumeFromACheckpointIsBitIdentical) {
  TempDir dir;
  auto data = toy_data(256, 2);
  Sequential<float> whole, first, resumed;
  build_model(whole, 0.4, 5);
  build_model(first, 0.4, 5);
  whole.fit(data, FitOptions().epochs(3).batch_size(32).verbose(0));
  first.fit(data, FitOptions().epochs(1).batch_size(32).verbose(0));
  io::save_checkpoint(first, dir.file("ck.safetensors"));
  build_model(resumed, 0.4, 5);
  io::load_checkpoint(resumed, dir.file("ck.safetensors"));
  resumed.fit(data, FitOptions().epochs(3).initial_epoch(resumed.epochs_done()).batch_size(32).verbose(0));
  const auto pw = whole.flat_parameters(), pr = resumed.flat_parameters();
  ASSERT_EQ(pw.size(), pr.size());
  for (Index i = 0; i < pw.size(); ++i) ASSERT_EQ(pw[i], pr[i]) << "parameter " << i;
}

TEST(DropoutModel, ItsConfigurationTravelsWithTheWeights) {
  TempDir dir;
  Sequential<float> m, same, other;
  build_model(m, 0.25, 3, 9);
  io::save_weights(m, dir.file("w.safetensors"));
  build_model(same, 0.25, 4, 9);
  EXPECT_NO_THROW(io::load_weights(same, dir.file("w.safetensors")));
  build_model(other, 0.5, 3, 9);
  EXPECT_THROW(io::load_weights(other, dir.file("w.safetensors")), MismatchError);  // another rate
  auto copy = m.to<Cpu>();
  EXPECT_EQ(copy.layer(1).config(), m.layer(1).config());
}

}  // namespace
