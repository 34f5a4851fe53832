// The Transformer layers (fastnn/transformer.hpp): LayerNormalization against a two-pass
// reference in double (and in float on rows with a large mean), finite-difference gradients
// (double, relative error < 1e-6) with and without center and scale; PositionEmbedding and
// SinePositionEncoding against KerasHub's definitions, their gradients and the too-long input;
// masked batches against each sample alone at its own length; the registry, weights and
// checkpoint round trips; the ONNX export's typed behaviour.
#include <fastnn/graph.hpp>
#include <fastnn/transformer.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "test_util.hpp"

using namespace fastnn;
using fastnn::testing::build_standalone;
using fastnn::testing::check_gradients;
using fastnn_test::make_lengths;
using fastnn_test::random_tensor;

// Every heap allocation of this program is counted: a Tensor's storage comes with a shared_ptr
// control block from operator new, so a step that allocates a tensor shows here.
namespace {
std::atomic<long> g_allocations{0};
}  // namespace
// (Not inlined: GCC would otherwise see free() on the result of operator new at the call sites.)
[[gnu::noinline]] void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

constexpr double kTol = 1e-6;

/// Finite-difference check of the input and every parameter of `layer`; returns the largest
/// relative error (printed per tensor, for the record).
double expect_gradients(Layer<double, Cpu>& layer, const Shape& in, Index batch, std::uint64_t seed,
                        double lo = -1, double hi = 1) {
  Rng rng(seed);
  auto storage = build_standalone(layer, in, rng);
  for (Index i = 0; i < storage.first.size(); ++i) storage.first[i] += rng.uniform(-0.3, 0.3);
  auto x = random_tensor(in.prepend(batch), rng, lo, hi);
  auto errs = check_gradients(layer, x, rng);
  EXPECT_EQ(errs.size(), layer.parameters().size() + 1);
  double worst = 0;
  for (const auto& e : errs) {
    EXPECT_LT(e.rel_error, kTol) << layer.type_name() << " " << e.name << " max abs diff " << e.max_abs_diff;
    std::printf("  FD %s %s %s: relative error %.3g\n", layer.type_name().c_str(), in.str().c_str(), e.name.c_str(),
                e.rel_error);
    worst = std::max(worst, e.rel_error);
  }
  return worst;
}

/// Two-pass mean and biased variance of r[0, c) in double.
void reference_moments(const double* r, Index c, double& mean, double& var) {
  mean = 0;
  for (Index k = 0; k < c; ++k) mean += r[k];
  mean /= static_cast<double>(c);
  var = 0;
  for (Index k = 0; k < c; ++k) var += (r[k] - mean) * (r[k] - mean);
  var /= static_cast<double>(c);
}

}  // namespace

// ---- LayerNormalization -------------------------------------------------------------------------

TEST(LayerNorm, ForwardMatchesTheFormula) {
  for (Index c : {1, 3, 8, 13, 37, 64}) {
    LayerNormalization<double> ln(LayerNormalizationOptions().epsilon(1e-3));
    Rng rng(static_cast<std::uint64_t>(c));
    auto st = build_standalone(ln, Shape{4, c}, rng);
    Tensor<double, Cpu>& gamma = ln.parameters()[0].value;
    Tensor<double, Cpu>& beta = ln.parameters()[1].value;
    for (Index k = 0; k < c; ++k) {
      EXPECT_EQ(gamma[k], 1.0);  // Keras's initial values
      EXPECT_EQ(beta[k], 0.0);
      gamma[k] = rng.uniform(0.5, 1.5);
      beta[k] = rng.uniform(-1, 1);
    }
    auto x = random_tensor(Shape{3, 4, c}, rng, -2, 5);
    Tensor<double, Cpu> y;
    ln.forward(x, y, Mode::Infer);
    ASSERT_EQ(y.shape(), x.shape());
    for (Index row = 0; row < 12; ++row) {
      double mean, var;
      reference_moments(x.data() + row * c, c, mean, var);
      for (Index k = 0; k < c; ++k)
        ASSERT_NEAR(y[row * c + k], gamma[k] * (x[row * c + k] - mean) / std::sqrt(var + 1e-3) + beta[k], 1e-12)
            << "c " << c << " row " << row << " k " << k;
    }
  }
}

TEST(LayerNorm, FloatStatisticsAreStableOnALargeMean) {
  // rows of 1e3 + u, u in [-1, 1]: a one-pass sum of squares in float (E[x^2] - E[x]^2, terms near
  // 1e6 whose float spacing is 0.06) would lose most of the variance, about 0.33
  const Index c = 300;
  LayerNormalization<float> ln(LayerNormalizationOptions().epsilon(1e-6));
  Rng rng(5);
  auto st = build_standalone(ln, Shape{c}, rng);
  Tensor<float, Cpu> x(Shape{6, c});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(1e3 + rng.uniform(-1, 1));
  Tensor<float, Cpu> y;
  ln.forward(x, y, Mode::Infer);
  double worst = 0;
  for (Index row = 0; row < 6; ++row) {
    std::vector<double> r(static_cast<std::size_t>(c));
    for (Index k = 0; k < c; ++k) r[static_cast<std::size_t>(k)] = static_cast<double>(x[row * c + k]);
    double mean, var;
    reference_moments(r.data(), c, mean, var);
    for (Index k = 0; k < c; ++k)
      worst = std::max(worst, std::fabs(static_cast<double>(y[row * c + k]) -
                                        (r[static_cast<std::size_t>(k)] - mean) / std::sqrt(var + 1e-6)));
  }
  std::printf("  float LayerNorm on rows of mean 1e3, spread 1: max abs error %.3g\n", worst);
  EXPECT_LT(worst, 5e-4);  // x - mean itself is rounded to float spacing 6e-5 near 1e3
}

TEST(LayerNorm, GradientsWithAndWithoutCenterAndScale) {
  double worst = 0;
  for (bool center : {true, false})
    for (bool scale : {true, false}) {
      LayerNormalization<double> ln(LayerNormalizationOptions().center(center).scale(scale).epsilon(1e-3));
      worst = std::max(worst, expect_gradients(ln, Shape{3, 11}, 4, 10 + 2 * center + scale));
      EXPECT_EQ(ln.parameters().size(), static_cast<std::size_t>(center) + static_cast<std::size_t>(scale));
    }
  LayerNormalization<double> wide;  // more than one block of lanes, a tail, rank 1 per sample
  worst = std::max(worst, expect_gradients(wide, Shape{21}, 5, 20, -3, 2));
  LayerNormalization<double> deep;  // rank 3 per sample
  worst = std::max(worst, expect_gradients(deep, Shape{2, 3, 9}, 2, 21));
  std::printf("  LayerNormalization: largest FD relative error %.3g\n", worst);
}

TEST(LayerNorm, BackwardAccumulatesParameterGradients) {
  LayerNormalization<double> ln;
  Rng rng(3);
  auto st = build_standalone(ln, Shape{5, 6}, rng);
  auto x = random_tensor(Shape{2, 5, 6}, rng);
  Tensor<double, Cpu> y, dx;
  ln.forward(x, y, Mode::Train);
  auto dy = random_tensor(y.shape(), rng);
  ln.backward(x, y, dy, &dx);
  const Tensor<double, Cpu> once = st.second.clone();
  ln.backward(x, y, dy, &dx);
  for (Index i = 0; i < once.size(); ++i) EXPECT_NEAR(st.second[i], 2 * once[i], 1e-12);
  // the input gradient of each row sums to zero (the mean is subtracted)
  for (Index row = 0; row < 10; ++row) {
    double s = 0;
    for (Index k = 0; k < 6; ++k) s += dx[row * 6 + k];
    EXPECT_NEAR(s, 0.0, 1e-12);
  }
}

TEST(LayerNorm, NoAllocationAfterTheFirstStep) {
  LayerNormalization<float> ln;
  PositionEmbedding<float> pe(PositionEmbeddingOptions(9));
  SinePositionEncoding<float> sp;
  Rng rng(2);
  auto s1 = build_standalone(ln, Shape{9, 24}, rng, "ln");
  auto s2 = build_standalone(pe, Shape{9, 24}, rng, "pe");
  auto s3 = build_standalone(sp, Shape{9, 24}, rng, "sp");
  auto x = random_tensor<float>(Shape{16, 9, 24}, rng);
  auto small = random_tensor<float>(Shape{5, 9, 24}, rng);  // a smaller last batch reuses the workspaces
  Tensor<float, Cpu> y, dy = random_tensor<float>(Shape{16, 9, 24}, rng), dx;
  Tensor<float, Cpu> dys = random_tensor<float>(Shape{5, 9, 24}, rng);
  Layer<float, Cpu>* layers[] = {&ln, &pe, &sp};
  for (Layer<float, Cpu>* l : layers) {  // the first step allocates the workspaces
    l->forward(x, y, Mode::Train);
    l->backward(x, y, dy, &dx);
  }
  const long before = g_allocations.load();
  for (int step = 0; step < 3; ++step)
    for (Layer<float, Cpu>* l : layers) {
      l->forward(x, y, Mode::Train);
      l->backward(x, y, dy, &dx);
      l->forward(small, y, Mode::Train);
      l->backward(small, y, dys, &dx);
    }
  EXPECT_EQ(g_allocations.load() - before, 0);
  // the counter does count: a fresh output tensor allocates
  Tensor<float, Cpu> fresh;
  ln.forward(x, fresh, Mode::Train);
  EXPECT_GT(g_allocations.load() - before, 0);
}

TEST(LayerNorm, OptionsNamesAndTypedErrors) {
  LayerNormalization<float> ln;
  EXPECT_EQ(ln.config().at("axis"), "-1");
  EXPECT_EQ(ln.config().at("epsilon"), "0.001");
  EXPECT_EQ(ln.config().at("center"), "true");
  EXPECT_EQ(ln.config().at("scale"), "true");
  ln.set_name("ln");
  ln.build(Shape{7, 4});
  const auto specs = ln.param_specs();
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].name, "gamma");
  EXPECT_EQ(specs[1].name, "beta");
  EXPECT_EQ(specs[0].shape, Shape{4});
  EXPECT_TRUE(ln.per_step());
  EXPECT_THROW(LayerNormalization<float>(LayerNormalizationOptions().epsilon(0)), ArgumentError);
  LayerNormalization<float> axis1(LayerNormalizationOptions().axis(1));
  axis1.set_name("ax");
  try {
    axis1.build(Shape{7, 4});
    FAIL() << "axis 1 of [-1, 7, 4] accepted";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("ax (LayerNormalization)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[batch, 7, 4]"), std::string::npos) << e.what();
  }
  LayerNormalization<float> axis2(LayerNormalizationOptions().axis(2));
  EXPECT_NO_THROW(axis2.build(Shape{7, 4}));  // the last axis, counted with the batch axis
  // a batch of another shape than the built one
  Tensor<float, Cpu> bad(Shape{2, 7, 5}), y;
  try {
    ln.forward(bad, y, Mode::Infer);
    FAIL() << "[2, 7, 5] accepted by a layer built for [7, 4]";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("ln (LayerNormalization)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 7, 5]"), std::string::npos) << e.what();
  }
}

// ---- PositionEmbedding and SinePositionEncoding ------------------------------------------------------

TEST(PositionEmbedding, ReturnsTheTableBroadcastToTheInput) {
  PositionEmbedding<double> pe(PositionEmbeddingOptions(10));
  Rng rng(7);
  auto st = build_standalone(pe, Shape{6, 4}, rng, "pos");
  ASSERT_EQ(pe.parameters().size(), 1u);
  EXPECT_EQ(pe.parameters()[0].name, "pos.embeddings");
  EXPECT_EQ(pe.parameters()[0].value.shape(), (Shape{10, 4}));
  // glorot_uniform over fans (10, 4): limit sqrt(6 / 14)
  const double limit = std::sqrt(6.0 / 14.0);
  double spread = 0;
  for (Index i = 0; i < st.first.size(); ++i) {
    EXPECT_LE(std::fabs(st.first[i]), limit);
    spread = std::max(spread, std::fabs(st.first[i]));
  }
  EXPECT_GT(spread, 0.5 * limit);
  auto x = random_tensor(Shape{3, 6, 4}, rng);
  Tensor<double, Cpu> y;
  pe.forward(x, y, Mode::Infer);
  ASSERT_EQ(y.shape(), x.shape());
  for (Index b = 0; b < 3; ++b)
    for (Index i = 0; i < 24; ++i) ASSERT_EQ(y[b * 24 + i], st.first[i]);  // rows 0..5 of the table
  EXPECT_FALSE(pe.per_step());
}

TEST(PositionEmbedding, Gradients) {
  PositionEmbedding<double> pe(PositionEmbeddingOptions(9));
  const double worst = expect_gradients(pe, Shape{5, 3}, 4, 30);
  std::printf("  PositionEmbedding: largest FD relative error %.3g\n", worst);
  // rows beyond the input's steps get no gradient; the input none
  PositionEmbedding<double> p2(PositionEmbeddingOptions(8));
  Rng rng(31);
  auto st = build_standalone(p2, Shape{2, 3, 5}, rng);
  auto x = random_tensor(Shape{4, 2, 3, 5}, rng);
  Tensor<double, Cpu> y, dx;
  p2.forward(x, y, Mode::Train);
  auto dy = random_tensor(y.shape(), rng);
  p2.backward(x, y, dy, &dx);
  for (Index t = 0; t < 3; ++t)
    for (Index k = 0; k < 5; ++k) {
      double s = 0;
      for (Index r = 0; r < 8; ++r) s += dy[(r * 3 + t) * 5 + k];
      EXPECT_NEAR(st.second[t * 5 + k], s, 1e-12);
    }
  for (Index i = 15; i < st.second.size(); ++i) EXPECT_EQ(st.second[i], 0.0);
  for (Index i = 0; i < dx.size(); ++i) EXPECT_EQ(dx[i], 0.0);
}

TEST(PositionEmbedding, MoreStepsThanSequenceLengthIsAShapeErrorNamingTheLayer) {
  PositionEmbedding<float> pe(PositionEmbeddingOptions(5));
  pe.set_name("pos");
  try {
    pe.build(Shape{6, 4});
    FAIL() << "6 steps accepted with sequence_length 5";
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("pos (PositionEmbedding)"), std::string::npos) << m;
    EXPECT_NE(m.find("[batch, 6, 4]"), std::string::npos) << m;
    EXPECT_NE(m.find("sequence_length 5"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(pe.build(Shape{5, 4}));
  // in a model: build() names the layer too
  Sequential<float> m;
  m.add<PositionEmbedding>(PositionEmbeddingOptions(3));
  EXPECT_THROW(m.build({4, 2}), ShapeError);
  EXPECT_THROW(PositionEmbedding<float>(PositionEmbeddingOptions(0)), ArgumentError);
  PositionEmbedding<float> flat(PositionEmbeddingOptions(4));
  EXPECT_THROW(flat.build(Shape{4}), ShapeError);  // no steps axis
}

TEST(SinePositionEncoding, MatchesKerasHub) {
  // KerasHub: timescales = (1 / max_wavelength)^(2 (k // 2) / d); sin on even k, cos on odd k
  for (double wl : {10000.0, 50.0}) {
    SinePositionEncoding<double> sp(SinePositionEncodingOptions().max_wavelength(wl));
    Rng rng(1);
    auto st = build_standalone(sp, Shape{7, 6}, rng);
    EXPECT_EQ(sp.param_count(), 0);
    auto x = random_tensor(Shape{2, 7, 6}, rng);
    Tensor<double, Cpu> y;
    sp.forward(x, y, Mode::Infer);
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 7; ++t)
        for (Index k = 0; k < 6; ++k) {
          const double ts = std::pow(1.0 / wl, static_cast<double>(2 * (k / 2)) / 6.0);
          const double a = static_cast<double>(t) * ts;
          const double want = k % 2 == 0 ? std::sin(a) : std::cos(a);
          ASSERT_NEAR(y[(b * 7 + t) * 6 + k], want, 1e-14) << "t " << t << " k " << k;
        }
  }
  // a few values written out: position 1, d = 4, max_wavelength 10000 -> timescales 1, 1, 0.01, 0.01
  SinePositionEncoding<double> sp;
  Rng rng(2);
  auto st = build_standalone(sp, Shape{2, 4}, rng);
  const Tensor<double, Cpu>& t = sp.table();
  EXPECT_NEAR(t[0], 0.0, 1e-15);
  EXPECT_NEAR(t[1], 1.0, 1e-15);
  EXPECT_NEAR(t[4], std::sin(1.0), 1e-15);
  EXPECT_NEAR(t[5], std::cos(1.0), 1e-15);
  EXPECT_NEAR(t[6], std::sin(0.01), 1e-15);
  EXPECT_NEAR(t[7], std::cos(0.01), 1e-15);
  EXPECT_THROW(SinePositionEncoding<double>(SinePositionEncodingOptions().max_wavelength(0)), ArgumentError);
}

TEST(SinePositionEncoding, InputGradientIsZero) {
  SinePositionEncoding<double> sp;
  const double worst = expect_gradients(sp, Shape{4, 5}, 3, 40);
  EXPECT_EQ(worst, 0.0);
}

// ---- sequence lengths -----------------------------------------------------------------------------

namespace {

const std::vector<std::int32_t> kLens = {5, 2, 4, 1};

/// A layer (or a layer followed by a GRU) run on a padded batch with lengths against each sample
/// alone at its own length: real outputs, input gradients and parameter gradients agree to 1e-12.
/// dy is zero at the padded steps (what the layers after a per-step layer give them: a
/// recurrent layer's input gradient there is zero). Returns the largest difference.
double masked_equals_unpadded(const std::function<std::unique_ptr<Layer<double, Cpu>>()>& make, bool then_gru,
                              std::uint64_t seed) {
  const Index B = 4, S = 5, F = 6;
  Rng rng(seed);
  auto first = make();
  auto st = build_standalone(*first, Shape{S, F}, rng, "first");
  for (Index i = 0; i < st.first.size(); ++i) st.first[i] += rng.uniform(-0.3, 0.3);
  GRU<double> gru(GRUOptions(3).return_sequences(true));
  auto gst = build_standalone(gru, Shape{S, F}, rng, "gru");
  const Lengths lens = make_lengths(kLens);

  auto x = random_tensor(Shape{B, S, F}, rng);
  for (Index b = 0; b < B; ++b)  // garbage in the padding must not matter
    for (Index t = kLens[static_cast<std::size_t>(b)]; t < S; ++t)
      for (Index f = 0; f < F; ++f) x[(b * S + t) * F + f] = 100.0 * rng.uniform(-1, 1);
  // forward: first, then optionally the GRU
  Tensor<double, Cpu> h, y, dh, dx;
  first->set_input_lengths(lens);
  EXPECT_EQ(first->output_lengths().size(), B);
  first->forward(x, h, Mode::Train);
  if (then_gru) {
    gru.set_input_lengths(first->output_lengths());
    gru.forward(h, y, Mode::Train);
  } else {
    y = h;
  }
  auto dy = random_tensor(y.shape(), rng);
  const Index out_f = y.dim(2);
  for (Index b = 0; b < B; ++b)
    for (Index t = kLens[static_cast<std::size_t>(b)]; t < S; ++t)
      for (Index f = 0; f < out_f; ++f) dy[(b * S + t) * out_f + f] = 0.0;
  st.second.set_zero();
  gst.second.set_zero();
  if (then_gru) {
    gru.backward(h, y, dy, &dh);
    first->backward(x, h, dh, &dx);
  } else {
    first->backward(x, h, dy, &dx);
  }

  double worst = 0;
  auto diff = [&worst](double a, double b) { worst = std::max(worst, std::fabs(a - b)); };
  Tensor<double, Cpu> g_sum = Tensor<double, Cpu>::zeros(st.second.shape());
  Tensor<double, Cpu> gg_sum = Tensor<double, Cpu>::zeros(gst.second.shape());
  for (Index b = 0; b < B; ++b) {
    const Index len = kLens[static_cast<std::size_t>(b)];
    auto alone = make();
    alone->set_name("first");
    alone->build(Shape{len, F});
    Tensor<double, Cpu> g = Tensor<double, Cpu>::zeros(st.second.shape());
    alone->bind_parameters(st.first, g);
    GRU<double> gru1(GRUOptions(3).return_sequences(true));
    gru1.set_name("gru");
    gru1.build(Shape{len, F});
    Tensor<double, Cpu> gg = Tensor<double, Cpu>::zeros(gst.second.shape());
    gru1.bind_parameters(gst.first, gg);
    Tensor<double, Cpu> xb = x.view(b * S * F, Shape{1, len, F}).clone(), hb, yb, dhb, dxb;
    alone->forward(xb, hb, Mode::Train);
    if (then_gru) gru1.forward(hb, yb, Mode::Train);
    else yb = hb;
    Tensor<double, Cpu> dyb(yb.shape());
    for (Index i = 0; i < dyb.size(); ++i) dyb[i] = dy[b * S * out_f + i];
    if (then_gru) {
      gru1.backward(hb, yb, dyb, &dhb);
      alone->backward(xb, hb, dhb, &dxb);
    } else {
      alone->backward(xb, hb, dyb, &dxb);
    }
    for (Index i = 0; i < yb.size(); ++i) diff(y[b * S * out_f + i], yb[i]);
    for (Index i = 0; i < dxb.size(); ++i) diff(dx[b * S * F + i], dxb[i]);
    g_sum.array() += g.array();
    gg_sum.array() += gg.array();
  }
  for (Index i = 0; i < g_sum.size(); ++i) diff(st.second[i], g_sum[i]);
  if (then_gru)
    for (Index i = 0; i < gg_sum.size(); ++i) diff(gst.second[i], gg_sum[i]);
  return worst;
}

}  // namespace

TEST(TransformerLengths, MaskedEqualsUnpadded) {
  struct Case {
    const char* name;
    std::function<std::unique_ptr<Layer<double, Cpu>>()> make;
  };
  const std::vector<Case> cases = {
      {"LayerNormalization", [] { return std::make_unique<LayerNormalization<double>>(); }},
      {"LayerNormalization(center=false)",
       [] { return std::make_unique<LayerNormalization<double>>(LayerNormalizationOptions().center(false)); }},
      {"PositionEmbedding", [] { return std::make_unique<PositionEmbedding<double>>(PositionEmbeddingOptions(7)); }},
      {"SinePositionEncoding", [] { return std::make_unique<SinePositionEncoding<double>>(); }},
  };
  std::uint64_t seed = 60;
  for (const auto& c : cases)
    for (bool gru : {false, true}) {
      const double d = masked_equals_unpadded(c.make, gru, seed++);
      std::printf("  masked vs unpadded, %s%s: max abs difference %.3g\n", c.name, gru ? " -> GRU" : "", d);
      EXPECT_LT(d, 1e-12) << c.name << (gru ? " -> GRU" : "");
    }
}

TEST(TransformerLengths, PassThroughInAModel) {
  Sequential<float> m;
  m.add<Masking>(MaskingOptions().mask_value(0.0));
  m.add<LayerNormalization>(LayerNormalizationOptions());
  m.add<GRU>(GRUOptions(4));
  m.build({5, 3}, 2);
  Rng rng(8);
  auto x = random_tensor<float>(Shape{2, 5, 3}, rng);
  for (Index t = 2; t < 5; ++t)
    for (Index f = 0; f < 3; ++f) x[(0 * 5 + t) * 3 + f] = 0.0f;  // sample 0 has 2 steps
  const Tensor<float, Cpu> y = m.predict(x);
  const Tensor<float, Cpu> y0 = m.predict(x.view(0, Shape{1, 5, 3}).clone(), 1, make_lengths({2}));
  for (Index k = 0; k < 4; ++k) EXPECT_EQ(y[k], y0[k]);
  // without the Masking layer's lengths the padded steps would change sample 0's state
  Sequential<float> nomask;
  nomask.add<LayerNormalization>(LayerNormalizationOptions());
  nomask.add<GRU>(GRUOptions(4));
  nomask.build({5, 3}, 2);
  const Tensor<float, Cpu> full = nomask.predict(x.view(0, Shape{1, 5, 3}).clone());
  const Tensor<float, Cpu> two = nomask.predict(x.view(0, Shape{1, 5, 3}).clone(), 1, make_lengths({2}));
  double d = 0;
  for (Index k = 0; k < 4; ++k) d += std::fabs(static_cast<double>(full[k] - two[k]));
  EXPECT_GT(d, 1e-4);
}

// ---- registry and files ---------------------------------------------------------------------------

TEST(TransformerFiles, RegistryRoundTripsTheOptions) {
  std::vector<std::pair<std::unique_ptr<Layer<double, Cpu>>, Shape>> ls;
  ls.emplace_back(std::make_unique<LayerNormalization<double>>(
                      LayerNormalizationOptions().epsilon(1e-5).center(false).gamma_initializer(
                          init::Initializer::constant(0.5))),
                  Shape{4, 3});
  ls.emplace_back(std::make_unique<PositionEmbedding<double>>(
                      PositionEmbeddingOptions(9).initializer(init::Initializer::random_normal(0, 0.02))),
                  Shape{4, 3});
  ls.emplace_back(std::make_unique<SinePositionEncoding<double>>(SinePositionEncodingOptions().max_wavelength(500)),
                  Shape{4, 3});
  for (auto& [l, in] : ls) {
    const LayerConfig c = l->config();
    auto m = make_layer<double, Cpu>(l->type_name(), c);
    EXPECT_EQ(m->type_name(), l->type_name());
    EXPECT_EQ(m->config(), c) << l->type_name();
    l->set_name("a");
    m->set_name("a");
    EXPECT_EQ(m->build(in), l->build(in));
    const auto s1 = l->param_specs(), s2 = m->param_specs();
    ASSERT_EQ(s1.size(), s2.size());
    for (std::size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(s1[i].shape, s2[i].shape);
    EXPECT_TRUE((make_layer<float, Cpu>(l->type_name(), c) != nullptr));
  }
  Config bad = LayerNormalization<double>().config();
  bad["epsilon"] = "tiny";
  EXPECT_THROW((make_layer<double, Cpu>("LayerNormalization", bad)), MismatchError);
}

namespace {
Sequential<float> files_model() {
  Sequential<float> m;
  m.add<Dense>(DenseOptions(6));
  m.add<LayerNormalization>(LayerNormalizationOptions().epsilon(1e-5).center(false));
  m.add<GRU>(GRUOptions(5).return_sequences(true));
  m.add<LayerNormalization>(LayerNormalizationOptions().axis(2));
  m.add<Dense>(DenseOptions(3));
  return m;
}
}  // namespace

TEST(TransformerFiles, WeightsRoundTripWithTorchLayout) {
  Sequential<float> m = files_model();
  m.build({7, 4}, 3);
  Rng rng(4);
  for (Index i = 0; i < m.flat_parameters().size(); ++i)
    m.flat_parameters()[i] += static_cast<float>(rng.uniform(-0.2, 0.2));
  fastnn_test::TempDir dir;
  const std::string path = dir.file("ln.safetensors");
  io::save_weights(m, path);
  // torch.nn.LayerNorm(c).weight / .bias: [c] vectors named <layer>.gamma / <layer>.beta
  io::SafetensorsReader r(path);
  const io::TensorEntry* g = r.find("layer_normalization.gamma");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->shape, std::vector<std::uint64_t>{6});
  EXPECT_EQ(r.find("layer_normalization.beta"), nullptr);  // center=false
  ASSERT_NE(r.find("layer_normalization_1.gamma"), nullptr);
  ASSERT_NE(r.find("layer_normalization_1.beta"), nullptr);
  EXPECT_EQ(r.find("layer_normalization_1.beta")->shape, std::vector<std::uint64_t>{5});
  const std::vector<float> gv = r.read_vector<float>("layer_normalization.gamma");
  for (Index k = 0; k < 6; ++k) EXPECT_EQ(gv[static_cast<std::size_t>(k)], m.layer(1).parameters()[0].value[k]);

  auto back = io::load_model<float, Cpu>(path);
  ASSERT_EQ(back.num_layers(), m.num_layers());
  for (std::size_t i = 0; i < m.num_layers(); ++i) {
    EXPECT_EQ(back.layer(i).type_name(), m.layer(i).type_name());
    EXPECT_EQ(back.layer(i).config(), m.layer(i).config());
  }
  double eps = 0;
  ASSERT_TRUE(parse_number(back.layer(1).config().at("epsilon"), eps));
  EXPECT_EQ(eps, 1e-5);
  EXPECT_EQ(back.layer(1).config().at("center"), "false");
  auto x = random_tensor<float>(Shape{5, 7, 4}, rng);
  const Tensor<float, Cpu> p1 = m.predict(x), p2 = back.predict(x);
  for (Index i = 0; i < p1.size(); ++i) ASSERT_EQ(p1[i], p2[i]);
  // load_weights into a model built with another seed
  Sequential<float> other = files_model();
  other.build({7, 4}, 99);
  io::load_weights(other, path);
  const Tensor<float, Cpu> p3 = other.predict(x);
  for (Index i = 0; i < p1.size(); ++i) ASSERT_EQ(p1[i], p3[i]);
}

TEST(TransformerFiles, PositionLayersRoundTrip) {
  Sequential<float> m;
  m.add<PositionEmbedding>(PositionEmbeddingOptions(12));
  m.add<LayerNormalization>(LayerNormalizationOptions());
  m.add<SinePositionEncoding>(SinePositionEncodingOptions().max_wavelength(300));
  m.build({8, 4}, 5);
  fastnn_test::TempDir dir;
  io::save_weights(m, dir.file("p.safetensors"));
  io::SafetensorsReader r(dir.file("p.safetensors"));
  ASSERT_NE(r.find("position_embedding.embeddings"), nullptr);
  EXPECT_EQ(r.find("position_embedding.embeddings")->shape, (std::vector<std::uint64_t>{12, 4}));
  auto back = io::load_model<float, Cpu>(dir.file("p.safetensors"));
  EXPECT_EQ(back.layer(0).config().at("sequence_length"), "12");
  EXPECT_EQ(back.layer(2).config().at("max_wavelength"), "300");
  const auto& e1 = m.layer(0).parameters()[0].value;
  const auto& e2 = back.layer(0).parameters()[0].value;
  for (Index i = 0; i < e1.size(); ++i) ASSERT_EQ(e1[i], e2[i]);
  Rng rng(6);
  auto x = random_tensor<float>(Shape{2, 8, 4}, rng);
  const Tensor<float, Cpu> p1 = m.predict(x), p2 = back.predict(x);
  for (Index i = 0; i < p1.size(); ++i) ASSERT_EQ(p1[i], p2[i]);
}

TEST(TransformerFiles, CheckpointResumesBitIdentically) {
  Rng rng(11);
  auto x = random_tensor<float>(Shape{16, 7, 4}, rng);
  auto t = random_tensor<float>(Shape{16, 7, 3}, rng);
  auto make = [] {
    Sequential<float> m = files_model();
    m.build({7, 4}, 3);
    m.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError());
    return m;
  };
  Sequential<float> a = make();
  for (int s = 0; s < 3; ++s) a.train_on_batch(x, t);
  fastnn_test::TempDir dir;
  io::save_checkpoint(a, dir.file("c.safetensors"));
  Sequential<float> b = files_model();
  b.build({7, 4}, 77);
  b.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError());
  io::load_checkpoint(b, dir.file("c.safetensors"));
  for (int s = 0; s < 3; ++s) {
    const double la = a.train_on_batch(x, t).loss, lb = b.train_on_batch(x, t).loss;
    ASSERT_EQ(la, lb) << "step " << s;
  }
  for (Index i = 0; i < a.flat_parameters().size(); ++i) ASSERT_EQ(a.flat_parameters()[i], b.flat_parameters()[i]);
}

TEST(TransformerModel, TokenPlusPositionGraphTrains) {
  // KerasHub's usage: tokens + PositionEmbedding(tokens) -> LayerNormalization -> GRU -> classes.
  auto ids = Input<float>({6}, "ids");
  auto tok = apply<Embedding>(ids, EmbeddingOptions(12, 8));
  auto h = apply<Add>({tok, apply<PositionEmbedding>(tok, PositionEmbeddingOptions(6))});
  auto y = apply<Dense>(apply<GRU>(apply<LayerNormalization>(h, LayerNormalizationOptions()), GRUOptions(8)),
                        DenseOptions(2).activation(Activation::Softmax));
  Model<float> m({ids}, {y}, 3);
  m.compile(std::make_unique<Adam<float>>(0.02));
  // class: whether token 1 appears in the first half
  Rng rng(12);
  const Index n = 64;
  Tensor<float, Cpu> x(Shape{n, 6});
  Tensor<std::int32_t, Cpu> labels(Shape{n});
  for (Index i = 0; i < n; ++i) {
    for (Index s = 0; s < 6; ++s) x[i * 6 + s] = static_cast<float>(2 + static_cast<Index>(rng.uniform(0, 9.99)));
    labels[i] = static_cast<std::int32_t>(i % 2);
    if (i % 2) x[i * 6 + static_cast<Index>(rng.uniform(0, 2.99))] = 1.0f;
  }
  double first = 0, last = 0;
  for (int step = 0; step < 80; ++step) {
    const double loss = m.train_on_batch(x, labels).loss;
    if (step == 0) first = loss;
    last = loss;
  }
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  fastnn_test::TempDir dir;
  io::save_weights(m, dir.file("g.safetensors"));
  auto back = io::load_graph_model<float, Cpu>(dir.file("g.safetensors"));
  const Tensor<float, Cpu> p1 = m.predict(x), p2 = back->predict(x);
  for (Index i = 0; i < p1.size(); ++i) ASSERT_EQ(p1[i], p2[i]);
}

TEST(TransformerOnnx, ExportsAndRefusesNothingItSupports) {
  Sequential<float> m;
  m.add<LayerNormalization>(LayerNormalizationOptions().scale(false));
  m.add<PositionEmbedding>(PositionEmbeddingOptions(9));
  m.add<SinePositionEncoding>();
  m.build({5, 4}, 1);
  fastnn_test::TempDir dir;
  ASSERT_NO_THROW(io::export_onnx(m, dir.file("t.onnx")));
  std::ifstream f(dir.file("t.onnx"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(bytes.find("LayerNormalization"), std::string::npos);
  EXPECT_NE(bytes.find("Gather"), std::string::npos);
  EXPECT_NE(bytes.find("Expand"), std::string::npos);
  EXPECT_NE(bytes.find("layer_normalization.gamma_ones"), std::string::npos);
}
