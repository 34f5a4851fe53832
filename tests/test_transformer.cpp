// The Transformer layers (fastnn/transformer.hpp): LayerNormalization against a two-pass
// reference in double (and in float on rows with a large mean), finite-difference gradients
// (double, relative error < 1e-6) with and without center and scale; PositionEmbedding and
// SinePositionEncoding against KerasHub's definitions, their gradients and the too-long input;
// masked batches against each sample alone at its own length; the registry, weights and
// checkpoint round trips; the ONNX export's typed behaviour; streaming a causal encoder step by step
// (AttentionStream) against its full forward.
#include <fastnn/graph.hpp>
#include <fastnn/layers/reshape.hpp>
#include <fastnn/transformer.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <optional>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gradient_util.hpp"
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

using fastnn_test::kGradTol;

/// The shared finite-difference check (gradient_util.hpp) on inputs in [lo, hi), each tensor's
/// error printed for the record; returns the largest relative error.
double expect_gradients(Layer<double, Cpu>& layer, const Shape& in, Index batch, std::uint64_t seed,
                        double lo = -1, double hi = 1) {
  fastnn_test::GradCheck opt;
  opt.lo = lo;
  opt.hi = hi;
  opt.print = true;
  return fastnn_test::expect_layer_gradients(layer, in, batch, seed, opt);
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

namespace {

/// The bytes of `path`.
std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

/// How often `what` occurs in `bytes`.
int occurrences(const std::string& bytes, const std::string& what) {
  int k = 0;
  for (std::size_t at = bytes.find(what); at != std::string::npos; at = bytes.find(what, at + 1)) ++k;
  return k;
}

}  // namespace

TEST(TransformerOnnx, MultiHeadAttentionExportsAsMatMulSoftmaxWithItsMasksInTheGraph) {
  fastnn_test::TempDir dir;
  {  // self-attention, no lengths, not causal: no mask at all
    auto x = Input<float>({5, 6}, "x");
    auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(2, 3));
    Model<float> m({x}, {a}, 1);
    io::export_onnx(m, dir.file("plain.onnx"));
    const std::string b = file_bytes(dir.file("plain.onnx"));
    EXPECT_NE(b.find("Softmax"), std::string::npos);
    EXPECT_GE(occurrences(b, "MatMul_node"), 6);  // 4 projections and 2 products
    for (const char* w : {"query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel", "value_bias",
                          "output_kernel", "output_bias"})
      EXPECT_NE(b.find(std::string("multi_head_attention.") + w), std::string::npos) << w;
    EXPECT_EQ(b.find("Where"), std::string::npos);
    EXPECT_EQ(b.find("LessOrEqual"), std::string::npos);
  }
  {  // causal with lengths: key padding (Less on the key's lengths), the causal LessOrEqual, padded queries zeroed
    auto x = Input<float>({5, 6}, "x");
    auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(2, 3).use_causal_mask(true));
    Model<float> m({x}, {a}, 1);
    io::export_onnx(m, dir.file("causal.onnx"), true);
    const std::string b = file_bytes(dir.file("causal.onnx"));
    EXPECT_NE(b.find("LessOrEqual"), std::string::npos);
    EXPECT_EQ(occurrences(b, "Where_node"), 3);  // the scores, the probabilities, the padded query steps
    EXPECT_GE(occurrences(b, "x_sequence_lens"), 3);  // the graph input and the key and query masks
  }
  {  // (query, value, key) without biases: the key's kernel from the key's features
    auto q = Input<float>({3, 4}, "q");
    auto v = Input<float>({6, 5}, "v");
    auto k = Input<float>({6, 2}, "k");
    auto a = apply<MultiHeadAttention>({q, v, k}, MultiHeadAttentionOptions(2, 3).use_bias(false).output_shape(7));
    Model<float> m({q, v, k}, {a}, 1);
    io::export_onnx(m, dir.file("cross.onnx"), true);
    const std::string b = file_bytes(dir.file("cross.onnx"));
    EXPECT_EQ(b.find("_bias"), std::string::npos);
    EXPECT_NE(b.find("k_sequence_lens"), std::string::npos);
  }
}

TEST(TransformerOnnx, AnotherClassNamedMultiHeadAttentionIsRefusedNamingIt) {
  struct FakeAttention : fastnn_test::PassThrough<FakeAttention, float, Cpu> {
    std::string type_name() const override { return "MultiHeadAttention"; }
  };
  FakeAttention l;
  l.set_name("fake_mha");
  io::onnx_detail::Graph g;
  io::onnx_detail::CallLengths lens{{"", ""}, std::nullopt};
  try {
    io::onnx_detail::LayerExporters<float>::instance().of(l)(g, l, {"q", "v"}, {Shape{3, 4}, Shape{3, 4}}, lens);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'fake_mha' (MultiHeadAttention)"), std::string::npos) << e.what();
  }
}

// ---- MultiHeadAttention ----------------------------------------------------------------------------------------

namespace {

/// A built, bound and initialised MultiHeadAttention<T> on per-sample input shapes `shapes`, its weights moved off
/// their initial values (biases away from 0). Keep the returned storage alive as long as the layer.
template <class T>
std::pair<Tensor<T, Cpu>, Tensor<T, Cpu>> build_mha(MultiHeadAttention<T>& l, const std::vector<Shape>& shapes,
                                                    Rng& rng, const std::string& name = "mha") {
  l.set_name(name);
  l.build_inputs(shapes);
  const Index n = l.param_count();
  Tensor<T, Cpu> v = Tensor<T, Cpu>::zeros(Shape{n}), g = Tensor<T, Cpu>::zeros(Shape{n});
  l.bind_parameters(v, g);
  l.initialize(rng);
  for (Index i = 0; i < n; ++i) v[i] += static_cast<T>(rng.uniform(-0.3, 0.3));
  return {v, g};
}

struct MhaCase {
  const char* name;
  MultiHeadAttentionOptions opt;
  std::vector<Shape> shapes;          // query, value[, key]
  bool self = false;                  // query and value are one tensor
  std::vector<std::int32_t> qlens;    // empty: full length
  std::vector<std::int32_t> klens;    // lengths of the value (and key)
};

/// Finite-difference check (L = sum(y r)) of every input and parameter of a MultiHeadAttention<double>; returns the
/// largest relative error and prints each.
double mha_gradients(const MhaCase& c, Index batch, std::uint64_t seed) {
  Rng rng(seed);
  MultiHeadAttention<double> l(c.opt);
  auto st = build_mha(l, c.shapes, rng);
  std::vector<Tensor<double, Cpu>> xs;
  for (std::size_t i = 0; i < c.shapes.size(); ++i)
    xs.push_back(c.self && i == 1 ? xs[0] : random_tensor(c.shapes[i].prepend(batch), rng));
  std::vector<Lengths> lens(c.shapes.size());
  if (!c.qlens.empty()) lens[0] = make_lengths(c.qlens);
  if (!c.klens.empty())
    for (std::size_t i = 1; i < lens.size(); ++i) lens[i] = make_lengths(c.klens);
  l.set_inputs_lengths(lens);
  l.set_noise_key(99);
  std::vector<const Tensor<double, Cpu>*> xp;
  for (const auto& x : xs) xp.push_back(&x);
  Tensor<double, Cpu> y;
  l.forward_inputs(xp, y, Mode::Train);
  const Tensor<double, Cpu> r = random_tensor(y.shape(), rng);
  auto loss = [&]() {
    Tensor<double, Cpu> yy;
    l.forward_inputs(xp, yy, Mode::Train);
    double s = 0;
    for (Index i = 0; i < yy.size(); ++i) s += yy[i] * r[i];
    return s;
  };
  std::vector<Tensor<double, Cpu>> dxs(xs.size());
  std::vector<Tensor<double, Cpu>*> dp;
  for (auto& d : dxs) dp.push_back(&d);
  st.second.set_zero();
  l.forward_inputs(xp, y, Mode::Train);
  l.backward_inputs(xp, y, r, dp);
  const double h = 1e-5;
  double worst = 0;
  auto report = [&](const std::string& what, const std::vector<double>& a, const std::vector<double>& n) {
    double mx = 0, nn = 0;
    const double e = fastnn::testing::rel_error(a, n, &mx);
    for (double v : n) nn = std::max(nn, std::fabs(v));
    if (what == "mha.key_bias") {
      // Each row's softmax is invariant to the key bias (it adds q . bk to all scores of the row): its gradient is
      // 0, so there is no relative error to take; both must be 0 to rounding.
      EXPECT_LT(nn, 1e-9) << c.name;
      EXPECT_LT(mx, 1e-9) << c.name;
      std::printf("  FD MultiHeadAttention %s %s: zero gradient, max abs diff %.3g\n", c.name, what.c_str(), mx);
      return;
    }
    EXPECT_LT(e, kGradTol) << c.name << " " << what << " max abs diff " << mx;
    std::printf("  FD MultiHeadAttention %s %s: relative error %.3g\n", c.name, what.c_str(), e);
    worst = std::max(worst, e);
  };
  auto numeric = [&](double* v) {
    const double keep = *v;
    *v = keep + h;
    const double lp = loss();
    *v = keep - h;
    const double lm = loss();
    *v = keep;
    return (lp - lm) / (2 * h);
  };
  const char* names[] = {"query", "value", "key"};
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (c.self && i == 1) continue;
    std::vector<double> a, n;
    for (Index k = 0; k < xs[i].size(); ++k) {
      double g = dxs[i][k];
      if (c.self && i == 0) g += dxs[1][k];
      a.push_back(g);
      n.push_back(numeric(&xs[i][k]));
    }
    report(c.self && i == 0 ? "query=value" : names[i], a, n);
  }
  for (const auto& p : l.parameters()) {
    std::vector<double> a, n;
    for (Index k = 0; k < p.value.size(); ++k) {
      a.push_back(p.grad[k]);
      n.push_back(numeric(const_cast<double*>(p.value.data()) + k));
    }
    report(p.name, a, n);
  }
  return worst;
}

}  // namespace

TEST(MultiHeadAttention, Gradients) {
  const std::vector<MhaCase> cases = {
      {"self", MultiHeadAttentionOptions(2, 3), {Shape{4, 5}, Shape{4, 5}}, true, {}, {}},
      {"self causal", MultiHeadAttentionOptions(2, 3).use_causal_mask(true), {Shape{4, 5}, Shape{4, 5}}, true, {}, {}},
      {"self causal padded", MultiHeadAttentionOptions(3, 2).use_causal_mask(true), {Shape{5, 4}, Shape{5, 4}},
       true, {5, 2, 3}, {5, 2, 3}},
      {"cross", MultiHeadAttentionOptions(2, 3), {Shape{3, 5}, Shape{6, 4}}, false, {}, {}},
      {"cross key padded", MultiHeadAttentionOptions(2, 3), {Shape{3, 5}, Shape{6, 4}}, false, {3, 1, 2},
       {6, 2, 4}},
      {"cross with key, no bias, value_dim 4, output 7",
       MultiHeadAttentionOptions(2, 3).value_dim(4).use_bias(false).output_shape(7),
       {Shape{3, 5}, Shape{6, 4}, Shape{6, 2}}, false, {}, {4, 6, 1}},
      {"self value_dim 2, dropout 0.3", MultiHeadAttentionOptions(2, 3).value_dim(2).dropout(0.3),
       {Shape{4, 5}, Shape{4, 5}}, true, {4, 3, 4}, {4, 3, 4}},
  };
  double worst = 0;
  std::uint64_t seed = 300;
  for (const auto& c : cases) worst = std::max(worst, mha_gradients(c, 3, seed++));
  std::printf("  MultiHeadAttention: largest FD relative error %.3g\n", worst);
}

TEST(MultiHeadAttention, MatchesAReferenceAndDropoutChangesOnlyTraining) {
  // A direct evaluation of the formula (Keras's call) in double.
  const Index B = 2, Tq = 3, Tk = 4, F = 5, H = 2, kd = 3, vd = 2, O = 5;
  Rng rng(7);
  MultiHeadAttention<double> l(MultiHeadAttentionOptions(H, kd).value_dim(vd));
  auto st = build_mha(l, {Shape{Tq, F}, Shape{Tk, F}}, rng);
  auto q = random_tensor(Shape{B, Tq, F}, rng), v = random_tensor(Shape{B, Tk, F}, rng);
  Tensor<double, Cpu> y;
  l.forward_inputs({&q, &v}, y, Mode::Infer);
  const auto& p = l.parameters();
  const double* wq = p[0].value.data(); const double* bq = p[1].value.data();
  const double* wk = p[2].value.data(); const double* bk = p[3].value.data();
  const double* wv = p[4].value.data(); const double* bv = p[5].value.data();
  const double* wo = p[6].value.data(); const double* bo = p[7].value.data();
  Tensor<double, Cpu> scores;
  l.attention_scores(scores);
  ASSERT_EQ(scores.shape(), (Shape{B, H, Tq, Tk}));
  double worst = 0, worst_scores = 0;
  for (Index b = 0; b < B; ++b) {
    std::vector<double> o(static_cast<std::size_t>(Tq * H * vd), 0.0);
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < Tq; ++i) {
        std::vector<double> s(static_cast<std::size_t>(Tk));
        double mx = -1e300;
        for (Index j = 0; j < Tk; ++j) {
          double dot = 0;
          for (Index e = 0; e < kd; ++e) {
            double qe = bq[h * kd + e], ke = bk[h * kd + e];
            for (Index f = 0; f < F; ++f) {
              qe += q[(b * Tq + i) * F + f] * wq[f * H * kd + h * kd + e];
              ke += v[(b * Tk + j) * F + f] * wk[f * H * kd + h * kd + e];
            }
            dot += qe * ke;
          }
          s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(kd));
          mx = std::max(mx, s[static_cast<std::size_t>(j)]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (Index j = 0; j < Tk; ++j)
          worst_scores = std::max(worst_scores, std::fabs(s[static_cast<std::size_t>(j)] / sum -
                                                          scores[((b * H + h) * Tq + i) * Tk + j]));
        for (Index j = 0; j < Tk; ++j)
          for (Index e = 0; e < vd; ++e) {
            double ve = bv[h * vd + e];
            for (Index f = 0; f < F; ++f) ve += v[(b * Tk + j) * F + f] * wv[f * H * vd + h * vd + e];
            o[static_cast<std::size_t>(i * H * vd + h * vd + e)] += s[static_cast<std::size_t>(j)] / sum * ve;
          }
      }
    for (Index i = 0; i < Tq; ++i)
      for (Index c = 0; c < O; ++c) {
        double ref = bo[c];
        for (Index k = 0; k < H * vd; ++k) ref += o[static_cast<std::size_t>(i * H * vd + k)] * wo[k * O + c];
        worst = std::max(worst, std::fabs(ref - y[(b * Tq + i) * O + c]));
      }
  }
  std::printf("  MultiHeadAttention vs the formula: max abs difference %.3g, attention scores %.3g\n", worst,
              worst_scores);
  EXPECT_LT(worst, 1e-12);
  EXPECT_LT(worst_scores, 1e-14);
  // dropout: inference is unchanged, training differs and depends on the key only
  MultiHeadAttention<double> d(MultiHeadAttentionOptions(H, kd).value_dim(vd).dropout(0.5));
  d.set_name("mha");
  d.build_inputs({Shape{Tq, F}, Shape{Tk, F}});
  Tensor<double, Cpu> g0 = Tensor<double, Cpu>::zeros(st.second.shape());
  d.bind_parameters(st.first, g0);
  EXPECT_TRUE(d.stochastic());
  EXPECT_FALSE(l.stochastic());
  Tensor<double, Cpu> yi, yt1, yt2, yt3;
  d.forward_inputs({&q, &v}, yi, Mode::Infer);
  for (Index i = 0; i < y.size(); ++i) ASSERT_EQ(yi[i], y[i]);
  d.set_noise_key(1);
  d.forward_inputs({&q, &v}, yt1, Mode::Train);
  d.forward_inputs({&q, &v}, yt2, Mode::Train);
  d.set_noise_key(2);
  d.forward_inputs({&q, &v}, yt3, Mode::Train);
  double d12 = 0, d13 = 0, d1i = 0;
  for (Index i = 0; i < y.size(); ++i) {
    d12 = std::max(d12, std::fabs(yt1[i] - yt2[i]));
    d13 = std::max(d13, std::fabs(yt1[i] - yt3[i]));
    d1i = std::max(d1i, std::fabs(yt1[i] - yi[i]));
  }
  EXPECT_EQ(d12, 0.0);
  EXPECT_GT(d13, 1e-3);
  EXPECT_GT(d1i, 1e-3);
  // the scores of a training call are the probabilities before dropout
  Tensor<double, Cpu> dropped_scores;
  d.attention_scores(dropped_scores);
  for (Index i = 0; i < scores.size(); ++i) ASSERT_DOUBLE_EQ(dropped_scores[i], scores[i]);
}

TEST(MultiHeadAttention, AttentionScoresFollowTheMasks) {
  // Causal self-attention with padded steps: row i of a real query step sums to 1 over the keys j <= i that are
  // real and is 0 elsewhere; the rows of padded query steps are 0. Before any call: a typed error.
  const Index B = 3, T = 5, F = 4, H = 2;
  Rng rng(12);
  MultiHeadAttention<double> l(MultiHeadAttentionOptions(H, 3).use_causal_mask(true));
  auto st = build_mha(l, {Shape{T, F}, Shape{T, F}}, rng);
  Tensor<double, Cpu> scores;
  EXPECT_THROW(l.attention_scores(scores), ArgumentError);
  auto x = random_tensor(Shape{B, T, F}, rng);
  const Lengths lens = make_lengths({5, 2, 4});
  l.set_inputs_lengths({lens, lens});
  Tensor<double, Cpu> y;
  l.forward_inputs({&x, &x}, y, Mode::Infer);
  l.attention_scores(scores);
  ASSERT_EQ(scores.shape(), (Shape{B, H, T, T}));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < T; ++i) {
        double sum = 0;
        for (Index j = 0; j < T; ++j) {
          const double p = scores[((b * H + h) * T + i) * T + j];
          const bool attended = i < lens[b] && j <= i && j < lens[b];
          if (attended) EXPECT_GT(p, 0.0);
          else EXPECT_EQ(p, 0.0) << "sample " << b << " head " << h << " query " << i << " key " << j;
          sum += p;
        }
        EXPECT_NEAR(sum, i < lens[b] ? 1.0 : 0.0, 1e-15);
      }
  EXPECT_EQ(scores[0 * T * T + 0 * T + 0], 1.0);  // the first query step attends to itself alone
}

TEST(MultiHeadAttention, FloatIsStableOnLargeScores) {
  // Inputs up to 60, so large scores: the max-shifted softmax stays finite in float and agrees with double.
  const auto opts = MultiHeadAttentionOptions(2, 4).use_causal_mask(true);
  Rng rng(17);
  MultiHeadAttention<double> ld(opts);
  auto sd = build_mha(ld, {Shape{5, 6}, Shape{5, 6}}, rng);
  MultiHeadAttention<float> lf(opts);
  lf.set_name("mha");
  lf.build_inputs({Shape{5, 6}, Shape{5, 6}});
  Tensor<float, Cpu> wf(sd.first.shape()), gf = Tensor<float, Cpu>::zeros(sd.first.shape());
  for (Index i = 0; i < wf.size(); ++i) wf[i] = static_cast<float>(sd.first[i]);
  lf.bind_parameters(wf, gf);
  auto xd = random_tensor(Shape{2, 5, 6}, rng, -60, 60);
  Tensor<float, Cpu> xf(xd.shape());
  for (Index i = 0; i < xd.size(); ++i) xf[i] = static_cast<float>(xd[i]);
  Tensor<double, Cpu> yd;
  Tensor<float, Cpu> yf;
  ld.forward_inputs({&xd, &xd}, yd, Mode::Infer);
  lf.forward_inputs({&xf, &xf}, yf, Mode::Infer);
  double worst = 0, scale = 0;
  for (Index i = 0; i < yd.size(); ++i) {
    ASSERT_TRUE(std::isfinite(yf[i])) << i;
    worst = std::max(worst, std::fabs(yd[i] - static_cast<double>(yf[i])));
    scale = std::max(scale, std::fabs(yd[i]));
  }
  std::printf("  MultiHeadAttention float vs double on large scores: max abs difference %.3g (outputs up to %.3g)\n",
              worst, scale);
  EXPECT_LT(worst, 1e-3 * scale);
}

TEST(MultiHeadAttention, MaskedEqualsUnpadded) {
  // A padded batch with query and key lengths against each sample alone at its own lengths: real outputs, the
  // gradients of every input at its real steps and the parameter gradients agree; padded query steps output 0;
  // padded steps of every input get gradient 0.
  const Index B = 4, Tq = 5, Tk = 6, Fq = 4, Fv = 3, Fk = 5;
  const std::vector<std::int32_t> ql = {5, 2, 4, 1}, kl = {6, 3, 1, 4};
  for (bool causal : {false, true})
    for (bool with_key : {false, true}) {
      const Index tk = causal ? Tq : Tk;
      auto opts = MultiHeadAttentionOptions(2, 3).value_dim(2).use_causal_mask(causal);
      std::vector<Shape> shapes = {Shape{Tq, Fq}, Shape{tk, Fv}};
      if (with_key) shapes.push_back(Shape{tk, Fk});
      std::vector<std::int32_t> klens = causal ? ql : kl;
      Rng rng(500 + 2 * causal + with_key);
      MultiHeadAttention<double> l(opts);
      auto st = build_mha(l, shapes, rng);
      std::vector<Tensor<double, Cpu>> xs;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        xs.push_back(random_tensor(shapes[i].prepend(B), rng));
        const Index T = shapes[i][0], F = shapes[i][1];
        const auto& lens = i == 0 ? ql : klens;
        for (Index b = 0; b < B; ++b)  // garbage in the padding must not matter
          for (Index t = lens[static_cast<std::size_t>(b)]; t < T; ++t)
            for (Index f = 0; f < F; ++f) xs[i][(b * T + t) * F + f] = 100.0 * rng.uniform(-1, 1);
      }
      std::vector<Lengths> lens = {make_lengths(ql), make_lengths(klens)};
      if (with_key) lens.push_back(make_lengths(klens));
      l.set_inputs_lengths(lens);
      EXPECT_EQ(l.output_lengths().size(), B);
      for (Index b = 0; b < B; ++b) EXPECT_EQ(l.output_lengths()[b], ql[static_cast<std::size_t>(b)]);
      std::vector<const Tensor<double, Cpu>*> xp;
      for (auto& x : xs) xp.push_back(&x);
      Tensor<double, Cpu> y;
      l.forward_inputs(xp, y, Mode::Train);
      const Index O = y.dim(2);
      auto dy = random_tensor(y.shape(), rng);  // nonzero at the padded query steps too: they must be ignored
      std::vector<Tensor<double, Cpu>> dxs(xs.size());
      std::vector<Tensor<double, Cpu>*> dp;
      for (auto& d : dxs) dp.push_back(&d);
      l.backward_inputs(xp, y, dy, dp);
      double worst = 0, padded = 0;
      auto diff = [&worst](double a, double b) { worst = std::max(worst, std::fabs(a - b)); };
      Tensor<double, Cpu> g_sum = Tensor<double, Cpu>::zeros(st.second.shape());
      for (Index b = 0; b < B; ++b) {
        const Index lq = ql[static_cast<std::size_t>(b)], lk = klens[static_cast<std::size_t>(b)];
        MultiHeadAttention<double> alone(opts);
        alone.set_name("mha");
        std::vector<Shape> s1 = {Shape{lq, Fq}, Shape{lk, Fv}};
        if (with_key) s1.push_back(Shape{lk, Fk});
        if (causal && lq != lk) continue;  // (never: causal uses the query's lengths for the keys)
        alone.build_inputs(s1);
        Tensor<double, Cpu> g = Tensor<double, Cpu>::zeros(st.second.shape());
        alone.bind_parameters(st.first, g);
        std::vector<Tensor<double, Cpu>> xb;
        for (std::size_t i = 0; i < xs.size(); ++i) {
          const Index T = shapes[i][0], F = shapes[i][1];
          xb.push_back(xs[i].view(b * T * F, Shape{1, s1[i][0], F}).clone());
        }
        std::vector<const Tensor<double, Cpu>*> xbp;
        for (auto& x : xb) xbp.push_back(&x);
        Tensor<double, Cpu> yb;
        alone.forward_inputs(xbp, yb, Mode::Train);
        Tensor<double, Cpu> dyb(yb.shape());
        for (Index i = 0; i < dyb.size(); ++i) dyb[i] = dy[b * Tq * O + i];
        std::vector<Tensor<double, Cpu>> dxb(xb.size());
        std::vector<Tensor<double, Cpu>*> dbp;
        for (auto& d : dxb) dbp.push_back(&d);
        alone.backward_inputs(xbp, yb, dyb, dbp);
        for (Index i = 0; i < yb.size(); ++i) diff(y[b * Tq * O + i], yb[i]);
        for (Index i = lq * O; i < Tq * O; ++i) padded = std::max(padded, std::fabs(y[b * Tq * O + i]));
        for (std::size_t k = 0; k < xs.size(); ++k) {
          const Index T = shapes[k][0], F = shapes[k][1], len = s1[k][0];
          for (Index i = 0; i < len * F; ++i) diff(dxs[k][b * T * F + i], dxb[k][i]);
          for (Index i = len * F; i < T * F; ++i) padded = std::max(padded, std::fabs(dxs[k][b * T * F + i]));
        }
        g_sum.array() += g.array();
      }
      for (Index i = 0; i < g_sum.size(); ++i) diff(st.second[i], g_sum[i]);
      std::printf("  masked vs unpadded, MultiHeadAttention%s%s: max abs difference %.3g, padded max %.3g\n",
                  causal ? " causal" : "", with_key ? " with key" : "", worst, padded);
      EXPECT_LT(worst, 1e-12) << causal << with_key;
      EXPECT_EQ(padded, 0.0) << causal << with_key;
    }
}

TEST(MultiHeadAttention, CausalOutputAtStepTIsThePrefixRun) {
  const Index T = 7, F = 6;
  Rng rng(31);
  const auto opts = MultiHeadAttentionOptions(3, 4).use_causal_mask(true);
  MultiHeadAttention<double> l(opts);
  auto st = build_mha(l, {Shape{T, F}, Shape{T, F}}, rng);
  auto x = random_tensor(Shape{2, T, F}, rng);
  Tensor<double, Cpu> y;
  l.forward_inputs({&x, &x}, y, Mode::Infer);
  double worst = 0;
  for (Index t = 0; t < T; ++t) {
    MultiHeadAttention<double> pre(opts);
    pre.set_name("mha");
    pre.build_inputs({Shape{t + 1, F}, Shape{t + 1, F}});
    Tensor<double, Cpu> g = Tensor<double, Cpu>::zeros(st.second.shape());
    pre.bind_parameters(st.first, g);
    Tensor<double, Cpu> xp(Shape{2, t + 1, F}), yp;
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < (t + 1) * F; ++i) xp[b * (t + 1) * F + i] = x[b * T * F + i];
    pre.forward_inputs({&xp, &xp}, yp, Mode::Infer);
    for (Index b = 0; b < 2; ++b)
      for (Index f = 0; f < F; ++f)
        worst = std::max(worst, std::fabs(y[(b * T + t) * F + f] - yp[(b * (t + 1) + t) * F + f]));
  }
  std::printf("  MultiHeadAttention causal: step t vs the prefix [0, t] run, max abs difference %.3g\n", worst);
  EXPECT_LT(worst, 1e-13);
  // and without the mask the first step does see the future
  MultiHeadAttention<double> full(MultiHeadAttentionOptions(3, 4));
  full.set_name("mha");
  full.build_inputs({Shape{T, F}, Shape{T, F}});
  Tensor<double, Cpu> g = Tensor<double, Cpu>::zeros(st.second.shape());
  full.bind_parameters(st.first, g);
  Tensor<double, Cpu> yf;
  full.forward_inputs({&x, &x}, yf, Mode::Infer);
  EXPECT_GT(std::fabs(yf[0] - y[0]), 1e-6);
}

TEST(MultiHeadAttention, TwoThreadsGiveTheSameBits) {
  const auto opts = MultiHeadAttentionOptions(3, 4).value_dim(5).dropout(0.25).use_causal_mask(true);
  Rng rng(41);
  MultiHeadAttention<float> one(opts), two(opts);
  auto st = build_mha(one, {Shape{6, 8}, Shape{6, 8}}, rng);
  two.set_name("mha");
  two.build_inputs({Shape{6, 8}, Shape{6, 8}});
  Tensor<float, Cpu> g2 = Tensor<float, Cpu>::zeros(st.second.shape());
  two.bind_parameters(st.first, g2);
  two.set_threads(2);
  auto q = random_tensor<float>(Shape{5, 6, 8}, rng), v = random_tensor<float>(Shape{5, 6, 8}, rng);
  auto dy = random_tensor<float>(Shape{5, 6, 8}, rng);
  const std::vector<Lengths> lens = {make_lengths({6, 3, 1, 5, 2}), make_lengths({6, 3, 1, 5, 2})};
  Tensor<float, Cpu> y1, y2, dq1, dq2, dv1, dv2;
  for (auto* l : {&one, &two}) {
    l->set_inputs_lengths(lens);
    l->set_noise_key(3);
  }
  one.forward_inputs({&q, &v}, y1, Mode::Train);
  two.forward_inputs({&q, &v}, y2, Mode::Train);
  one.backward_inputs({&q, &v}, y1, dy, {&dq1, &dv1});
  two.backward_inputs({&q, &v}, y2, dy, {&dq2, &dv2});
  for (Index i = 0; i < y1.size(); ++i) ASSERT_EQ(y1[i], y2[i]) << i;
  for (Index i = 0; i < dq1.size(); ++i) ASSERT_EQ(dq1[i], dq2[i]) << i;
  for (Index i = 0; i < dv1.size(); ++i) ASSERT_EQ(dv1[i], dv2[i]) << i;
  for (Index i = 0; i < g2.size(); ++i) ASSERT_EQ(st.second[i], g2[i]) << i;
}

TEST(MultiHeadAttention, NoAllocationAfterTheFirstStep) {
  for (int threads : {1, 2}) {
    MultiHeadAttention<float> l(MultiHeadAttentionOptions(4, 8).value_dim(6).dropout(0.2).use_causal_mask(true));
    l.set_threads(threads);
    Rng rng(2);
    auto st = build_mha(l, {Shape{9, 24}, Shape{9, 24}}, rng);
    auto x = random_tensor<float>(Shape{16, 9, 24}, rng);
    auto small = random_tensor<float>(Shape{5, 9, 24}, rng);
    const Lengths big_l = make_lengths(std::vector<std::int32_t>(16, 7));
    const Lengths small_l = make_lengths({9, 1, 4, 8, 2});
    Tensor<float, Cpu> y, dy = random_tensor<float>(Shape{16, 9, 24}, rng), dq, dv;
    Tensor<float, Cpu> dys = random_tensor<float>(Shape{5, 9, 24}, rng);
    std::vector<const Tensor<float, Cpu>*> xb = {&x, &x}, xs = {&small, &small};
    std::vector<Tensor<float, Cpu>*> dxs = {&dq, &dv};
    const std::vector<Lengths> lb = {big_l, big_l}, ls = {small_l, small_l};
    l.set_inputs_lengths(lb);
    l.set_noise_key(1);
    l.forward_inputs(xb, y, Mode::Train);
    l.backward_inputs(xb, y, dy, dxs);
    const long before = g_allocations.load();
    for (int step = 0; step < 3; ++step) {
      l.set_noise_key(static_cast<std::uint64_t>(step));
      l.set_inputs_lengths(lb);
      l.forward_inputs(xb, y, Mode::Train);
      l.backward_inputs(xb, y, dy, dxs);
      l.set_inputs_lengths(ls);
      l.forward_inputs(xs, y, Mode::Train);
      l.backward_inputs(xs, y, dys, dxs);
    }
    EXPECT_EQ(g_allocations.load() - before, 0) << threads << " threads";
    Tensor<float, Cpu> fresh;
    l.set_inputs_lengths(lb);
    l.forward_inputs(xb, fresh, Mode::Train);
    EXPECT_GT(g_allocations.load() - before, 0);
  }
}

TEST(MultiHeadAttention, TypedErrorsNameTheLayerAndShapes) {
  auto expect_msg = [](auto&& f, const std::vector<std::string>& parts) {
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const std::exception& e) {
      const std::string m = e.what();
      for (const auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << m << " (looking for " << p << ")";
    }
  };
  {
    MultiHeadAttention<float> l(MultiHeadAttentionOptions(2, 0));
    l.set_name("att");
    EXPECT_THROW(l.build_inputs({Shape{4, 8}, Shape{4, 8}}), ArgumentError);
    expect_msg([&] { l.build_inputs({Shape{4, 8}, Shape{4, 8}}); }, {"att (MultiHeadAttention)", "key_dim 0",
                                                                       "[batch, 4, 8]"});
  }
  {
    MultiHeadAttention<float> l(MultiHeadAttentionOptions(2, 4).use_causal_mask(true));
    l.set_name("att");
    EXPECT_THROW(l.build_inputs({Shape{4, 8}, Shape{6, 8}}), ShapeError);
    expect_msg([&] { l.build_inputs({Shape{4, 8}, Shape{6, 8}}); },
               {"att (MultiHeadAttention)", "use_causal_mask", "[batch, 4, 8]", "[batch, 6, 8]"});
    EXPECT_NO_THROW(l.build_inputs({Shape{6, 3}, Shape{6, 8}}));
  }
  {
    MultiHeadAttention<float> l(MultiHeadAttentionOptions(2, 4));
    l.set_name("att");
    EXPECT_THROW(l.build_inputs({Shape{4, 8}, Shape{6, 8}, Shape{5, 8}}), ShapeError);
    EXPECT_THROW(l.build_inputs({Shape{4, 8}}), ShapeError);
    EXPECT_THROW(l.build(Shape{4, 8}), ArgumentError);
    EXPECT_THROW(l.build_inputs({Shape{8}, Shape{6, 8}}), ShapeError);
  }
  {  // the batch sizes are known only when it runs
    MultiHeadAttention<float> l(MultiHeadAttentionOptions(2, 4));
    Rng rng(1);
    auto st = build_mha(l, {Shape{4, 8}, Shape{6, 8}}, rng, "att");
    auto q = random_tensor<float>(Shape{3, 4, 8}, rng), v = random_tensor<float>(Shape{2, 6, 8}, rng);
    Tensor<float, Cpu> y;
    EXPECT_THROW(l.forward_inputs({&q, &v}, y, Mode::Infer), ShapeError);
    expect_msg([&] { l.forward_inputs({&q, &v}, y, Mode::Infer); },
               {"att (MultiHeadAttention)", "[3, 4, 8]", "[2, 6, 8]", "batch"});
    auto v3 = random_tensor<float>(Shape{3, 6, 8}, rng);
    EXPECT_NO_THROW(l.forward_inputs({&q, &v3}, y, Mode::Infer));
    EXPECT_EQ(y.shape(), (Shape{3, 4, 8}));
  }
  EXPECT_THROW(MultiHeadAttention<float>(MultiHeadAttentionOptions(2, 4).dropout(1.0)), ArgumentError);
  // in a graph the error names the call as well
  auto q = Input<float>({4, 8}, "q");
  auto v = Input<float>({6, 8}, "v");
  expect_msg([&] { apply<MultiHeadAttention>({q, v}, MultiHeadAttentionOptions(2, 4).use_causal_mask(true)); },
             {"multi_head_attention", "use_causal_mask", "[batch, 4, 8]", "[batch, 6, 8]"});
}

TEST(MultiHeadAttention, RegistryRoundTripsTheOptions) {
  MultiHeadAttention<double> l(MultiHeadAttentionOptions(3, 5).value_dim(2).dropout(0.1).use_bias(false)
                                   .output_shape(7).use_causal_mask(true).seed(4)
                                   .kernel_initializer(init::Initializer::random_normal(0, 0.02)));
  const LayerConfig c = l.config();
  auto m = make_layer<double, Cpu>("MultiHeadAttention", c);
  EXPECT_EQ(m->type_name(), "MultiHeadAttention");
  EXPECT_EQ(m->config(), c);
  const std::vector<Shape> in = {Shape{4, 6}, Shape{4, 3}, Shape{4, 2}};
  l.set_name("a");
  m->set_name("a");
  EXPECT_EQ(m->build_inputs(in), l.build_inputs(in));
  EXPECT_EQ(l.build_inputs(in), (Shape{4, 7}));
  const auto s1 = l.param_specs(), s2 = m->param_specs();
  ASSERT_EQ(s1.size(), 4u);  // no biases
  ASSERT_EQ(s1.size(), s2.size());
  for (std::size_t i = 0; i < s1.size(); ++i) {
    EXPECT_EQ(s1[i].shape, s2[i].shape);
    EXPECT_EQ(s1[i].name, s2[i].name);
  }
  EXPECT_EQ(s1[0].shape, (Shape{6, 3, 5}));
  EXPECT_EQ(s1[1].shape, (Shape{2, 3, 5}));
  EXPECT_EQ(s1[2].shape, (Shape{3, 3, 2}));
  EXPECT_EQ(s1[3].shape, (Shape{3, 2, 7}));
  EXPECT_EQ((MultiHeadAttention<double>(MultiHeadAttentionOptions(2, 4)).param_specs().size()), 8u);
  EXPECT_TRUE((make_layer<float, Cpu>("MultiHeadAttention", c) != nullptr));
}

namespace {

/// A Transformer encoder block as a graph: MHA(x, x) + x -> LayerNormalization -> Dense(ff, gelu) -> Dense(F)
/// + itself -> LayerNormalization.
template <class T>
Model<T> encoder_block(Index steps, Index features, Index ff, bool causal, std::uint64_t seed) {
  auto x = Input<T>({steps, features}, "x");
  auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(2, 4).use_causal_mask(causal));
  auto h = apply<LayerNormalization>(apply<Add>({x, a}), LayerNormalizationOptions());
  auto f = apply<Dense>(apply<Dense>(h, DenseOptions(ff).activation(Activation::Gelu)), DenseOptions(features));
  auto y = apply<LayerNormalization>(apply<Add>({h, f}), LayerNormalizationOptions());
  return Model<T>({x}, {y}, seed);
}

}  // namespace

TEST(MultiHeadAttention, EncoderBlockGradientsInDouble) {
  for (bool causal : {false, true}) {
    Model<double> m = encoder_block<double>(4, 6, 8, causal, 5);
    Rng rng(8);
    Tensor<double, Cpu>& w = m.flat_parameters();
    for (Index i = 0; i < w.size(); ++i) w[i] += rng.uniform(-0.2, 0.2);
    auto x = random_tensor(Shape{3, 4, 6}, rng);
    const std::vector<Lengths> lens = {make_lengths({4, 2, 3})};
    const auto r = random_tensor(Shape{3, 4, 6}, rng);
    auto loss = [&]() {
      const auto& ys = m.forward_train({x}, lens);
      double s = 0;
      for (Index i = 0; i < ys[0].size(); ++i) s += ys[0][i] * r[i];
      return s;
    };
    loss();
    m.backward_train({r});
    const std::vector<double> a(m.flat_gradients().data(), m.flat_gradients().data() + w.size());
    std::vector<double> n;
    const double h = 1e-5;
    for (Index i = 0; i < w.size(); ++i) {
      const double keep = w[i];
      w[i] = keep + h;
      const double lp = loss();
      w[i] = keep - h;
      const double lm = loss();
      w[i] = keep;
      n.push_back((lp - lm) / (2 * h));
    }
    double mx = 0;
    const double e = fastnn::testing::rel_error(a, n, &mx);
    std::printf("  FD encoder block%s (%zu parameters): relative error %.3g\n", causal ? " causal" : "", n.size(), e);
    EXPECT_LT(e, kGradTol) << "max abs diff " << mx;
  }
}

TEST(MultiHeadAttention, EncoderBlockTrainsWithFit) {
  // Target: each step's features replaced by the mean over the sequence (needs attention across steps).
  const Index n = 128, T = 6, F = 8;
  Rng rng(21);
  Dataset<float, Cpu> d;
  d.x = random_tensor<float>(Shape{n, T, F}, rng);
  d.targets = Tensor<float, Cpu>(Shape{n, T, F});
  for (Index b = 0; b < n; ++b)
    for (Index f = 0; f < F; ++f) {
      float s = 0;
      for (Index t = 0; t < T; ++t) s += d.x[(b * T + t) * F + f];
      for (Index t = 0; t < T; ++t) d.targets[(b * T + t) * F + f] = s / static_cast<float>(T);
    }
  auto x = Input<float>({T, F}, "x");
  auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(2, 8));
  auto h = apply<LayerNormalization>(apply<Add>({x, a}), LayerNormalizationOptions());
  auto f = apply<Dense>(apply<Dense>(h, DenseOptions(16).activation(Activation::Gelu)), DenseOptions(F));
  auto y = apply<Dense>(apply<LayerNormalization>(apply<Add>({h, f}), LayerNormalizationOptions()), DenseOptions(F));
  Model<float> m({x}, {y}, 3);
  m.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError());
  const History hist = m.fit(d, FitOptions().epochs(15).batch_size(32).verbose(0));
  const double first = hist.epochs.front().loss, last = hist.epochs.back().loss;
  std::printf("  encoder block fit: loss %.4f -> %.4f\n", first, last);
  EXPECT_LT(last, 0.5 * first);
  // the weights round-trip through a file
  fastnn_test::TempDir dir;
  io::save_weights(m, dir.file("mha.safetensors"));
  auto back = io::load_graph_model<float, Cpu>(dir.file("mha.safetensors"));
  const Tensor<float, Cpu> p1 = m.predict(d.x), p2 = back->predict(d.x);
  for (Index i = 0; i < p1.size(); ++i) ASSERT_EQ(p1[i], p2[i]);
  // the trained model exports to ONNX (ONNX Runtime runs such models in tests/onnx: OnnxModels.Write)
  ASSERT_NO_THROW(io::export_onnx(m, dir.file("mha.onnx"), true));
  const std::string bytes = file_bytes(dir.file("mha.onnx"));
  EXPECT_NE(bytes.find("multi_head_attention.query_kernel"), std::string::npos);
  EXPECT_NE(bytes.find("x_sequence_lens"), std::string::npos);
}

// ---- Streaming a causal encoder (model/stream.hpp) ---------------------------------------------------------

namespace {

enum class Pos { Embedding, Sine };

struct EncoderSpec {
  bool tokens = false;  // Embedding of token ids, else Dense of features
  Pos pos = Pos::Embedding;
  Index pos_length = 0;  // PositionEmbedding's sequence_length (0: the steps)
  bool causal = true;
  bool with_key = false;  // MultiHeadAttention on {query, value, key} (three step-aligned tensors)
};

constexpr Index kVocab = 11, kFeatures = 5, kOut = 3;

/// A causal encoder of `steps` steps: tokens (Embedding) or features (Dense) + position (Add), MultiHeadAttention
/// 'attn' with a residual, LayerNormalization, a gelu feed-forward with a residual, LayerNormalization, and a per-step
/// Dense output; the weights moved off their initial values (the biases away from 0).
template <class T>
std::unique_ptr<Model<T>> causal_encoder(Index steps, const EncoderSpec& spec, std::uint64_t seed) {
  auto x = spec.tokens ? Input<T>({steps}, "ids") : Input<T>({steps, kFeatures}, "x");
  auto e = spec.tokens ? apply<Embedding>(x, EmbeddingOptions(kVocab, 8)) : apply<Dense>(x, DenseOptions(8));
  std::shared_ptr<Layer<T, Cpu>> pos;
  if (spec.pos == Pos::Embedding)
    pos = std::make_shared<PositionEmbedding<T, Cpu>>(PositionEmbeddingOptions(spec.pos_length ? spec.pos_length
                                                                                                 : steps));
  else
    pos = std::make_shared<SinePositionEncoding<T, Cpu>>();
  pos->set_name("pos");
  auto h0 = apply<Add>({e, call(pos, e)});
  auto mha = std::make_shared<MultiHeadAttention<T, Cpu>>(
      MultiHeadAttentionOptions(2, 4).value_dim(3).use_causal_mask(spec.causal));
  mha->set_name("attn");
  auto a = spec.with_key ? call(mha, {h0, e, apply<LayerNormalization>(h0, LayerNormalizationOptions())})
                         : call(mha, {h0, h0});
  auto h = apply<LayerNormalization>(apply<Add>({h0, a}), LayerNormalizationOptions());
  auto f = apply<Dense>(apply<Dense>(h, DenseOptions(16).activation(Activation::Gelu)), DenseOptions(8));
  auto y =
      apply<Dense>(apply<LayerNormalization>(apply<Add>({h, f}), LayerNormalizationOptions()), DenseOptions(kOut));
  auto m = std::make_unique<Model<T>>(std::vector<SymbolicTensor<T, Cpu>>{x}, std::vector<SymbolicTensor<T, Cpu>>{y},
                                      seed);
  Rng rng(seed + 1);
  Tensor<T, Cpu>& w = m->flat_parameters();
  for (Index i = 0; i < w.size(); ++i) w[i] += static_cast<T>(rng.uniform(-0.2, 0.2));
  return m;
}

/// Inputs [batch, steps] of token ids or [batch, steps, features].
template <class T>
Tensor<T, Cpu> encoder_inputs(bool tokens, Index batch, Index steps, Rng& rng) {
  if (!tokens) return random_tensor<T>(Shape{batch, steps, kFeatures}, rng);
  Tensor<T, Cpu> x(Shape{batch, steps});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<T>(static_cast<Index>(rng.uniform(0, kVocab - 0.01)));
  return x;
}

/// Step t of every row of x [batch, steps, ...]: [batch, ...].
template <class T>
Tensor<T, Cpu> step_of(const Tensor<T, Cpu>& x, Index t) {
  const Index batch = x.dim(0), steps = x.dim(1), per = x.size() / (batch * steps);
  Shape s = x.shape().drop_front().drop_front().prepend(batch);
  Tensor<T, Cpu> xt(s);
  for (Index b = 0; b < batch; ++b)
    for (Index k = 0; k < per; ++k) xt[b * per + k] = x[(b * steps + t) * per + k];
  return xt;
}

/// The largest |stream step t - full[:, t, :]| over `steps` steps of `stream` on x (from its current state).
template <class T>
double stream_vs_full(Stream<T>& stream, const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& full, Index steps) {
  double worst = 0;
  const Index batch = x.dim(0), S = full.dim(1), out = full.dim(2);
  for (Index t = 0; t < steps; ++t) {
    const Tensor<T, Cpu>& y = stream.step(step_of(x, t));
    EXPECT_EQ(y.shape(), (Shape{batch, out}));
    for (Index b = 0; b < batch; ++b)
      for (Index k = 0; k < out; ++k)
        worst = std::max(worst, std::fabs(static_cast<double>(y[b * out + k]) -
                                          static_cast<double>(full[(b * S + t) * out + k])));
  }
  return worst;
}

template <class T>
void expect_stream_equals_full(double tol, const char* type) {
  const Index B = 3, S = 7;
  const std::vector<std::pair<const char*, EncoderSpec>> specs = {
      {"tokens + PositionEmbedding", {true, Pos::Embedding, 0, true, false}},
      {"features + PositionEmbedding, {query, value, key}", {false, Pos::Embedding, 9, true, true}},
      {"features + SinePositionEncoding", {false, Pos::Sine, 0, true, false}},
  };
  for (const auto& [name, spec] : specs) {
    const auto mp = causal_encoder<T>(S, spec, 7);
    const Model<T>& m = *mp;
    Rng rng(3);
    const Tensor<T, Cpu> x1 = encoder_inputs<T>(spec.tokens, B, S, rng), x2 = encoder_inputs<T>(spec.tokens, B, S, rng);
    const Tensor<T, Cpu> f1 = m.predict(x1), f2 = m.predict(x2);
    ASSERT_EQ(f1.shape(), (Shape{B, S, kOut}));
    auto stream = m.make_stream(B);
    const double d1 = stream_vs_full(stream, x1, f1, S);
    EXPECT_EQ(stream.steps_taken(), S);
    stream.reset();
    const double d2 = stream_vs_full(stream, x2, f2, S);
    std::printf("  stream vs full forward, %s, %s: max abs difference %.3g, after reset() %.3g\n", type, name, d1,
                d2);
    EXPECT_LT(d1, tol) << name;
    EXPECT_LT(d2, tol) << name;
    // the rows are independent streams: row 1 alone gives row 1
    auto one = m.make_stream(1);
    Tensor<T, Cpu> x1_row = Tensor<T, Cpu>(x1.shape().drop_front().prepend(1));
    for (Index i = 0; i < x1_row.size(); ++i) x1_row[i] = x1[x1_row.size() + i];
    Tensor<T, Cpu> f1_row(Shape{1, S, kOut});
    for (Index i = 0; i < f1_row.size(); ++i) f1_row[i] = f1[f1_row.size() + i];
    EXPECT_LT(stream_vs_full(one, x1_row, f1_row, S), tol) << name;
  }
}

}  // namespace

TEST(AttentionStream, StepsEqualTheFullForwardInDouble) { expect_stream_equals_full<double>(1e-12, "double"); }
TEST(AttentionStream, StepsEqualTheFullForwardInFloat) { expect_stream_equals_full<float>(1e-6, "float"); }

TEST(AttentionStream, TwoThreadsRunTheirOwnStreamsOnOneConstModel) {
  const Index B = 2, S = 8;
  const EncoderSpec spec{false, Pos::Embedding, 0, true, false};
  const auto mp = causal_encoder<float>(S, spec, 11);
  const Model<float>& m = *mp;
  Rng rng(4);
  const Tensor<float, Cpu> xa = encoder_inputs<float>(false, B, S, rng), xb = encoder_inputs<float>(false, B, S, rng);
  auto run = [&m, B, S](const Tensor<float, Cpu>& x, std::vector<float>& out) {
    auto s = m.make_stream(B);
    for (int round = 0; round < 20; ++round) {
      s.reset();
      out.clear();
      for (Index t = 0; t < S; ++t) {
        const Tensor<float, Cpu>& y = s.step(step_of(x, t));
        out.insert(out.end(), y.data(), y.data() + y.size());
      }
    }
  };
  std::vector<float> ya1, yb1, ya2, yb2;
  run(xa, ya1);
  run(xb, yb1);
  std::thread ta([&] { run(xa, ya2); });
  std::thread tb([&] { run(xb, yb2); });
  ta.join();
  tb.join();
  ASSERT_EQ(ya1.size(), static_cast<std::size_t>(B * S * kOut));
  for (std::size_t i = 0; i < ya1.size(); ++i) {
    ASSERT_EQ(ya1[i], ya2[i]) << i;
    ASSERT_EQ(yb1[i], yb2[i]) << i;
  }
  EXPECT_NE(ya1, yb1);
}

TEST(AttentionStream, LayersThatSeeLaterStepsAreRefusedNamingThem) {
  EncoderSpec spec;
  spec.causal = false;
  const auto mp = causal_encoder<double>(5, spec, 1);
  const Model<double>& m = *mp;
  try {
    m.make_stream(1);
    ADD_FAILURE() << "no error";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'attn' (MultiHeadAttention)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("use_causal_mask"), std::string::npos) << e.what();
  }
  // Cross-attention on a value that does not advance with the stream's steps: the last state of an LSTM, reshaped
  // into a memory of 5 steps.
  auto x = Input<double>({5, 4}, "x");
  auto memory = apply<Reshape>(apply<LSTM>(x, LSTMOptions(20)), ReshapeOptions({5, 4}));
  auto mha = std::make_shared<MultiHeadAttention<double, Cpu>>(MultiHeadAttentionOptions(2, 3).use_causal_mask(true));
  mha->set_name("cross");
  Model<double> m2(x, call(mha, {x, memory}), 1);
  try {
    m2.make_stream(1);
    ADD_FAILURE() << "no error";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'cross' (MultiHeadAttention)"), std::string::npos) << e.what();
  }
  // and the full forward of that model runs
  Rng rng(2);
  EXPECT_NO_THROW(m2.predict(random_tensor(Shape{2, 5, 4}, rng)));
}

TEST(AttentionStream, NoAllocationPerStepAfterTheFirst) {
  const Index B = 4, S = 8;
  for (Pos pos : {Pos::Embedding, Pos::Sine}) {
    EncoderSpec spec;
    spec.pos = pos;
    spec.pos_length = 2 * S;
    const auto mp = causal_encoder<float>(S, spec, 5);
    const Model<float>& m = *mp;
    Rng rng(6);
    const Tensor<float, Cpu> x = encoder_inputs<float>(false, B, S, rng);
    std::vector<Tensor<float, Cpu>> steps;
    for (Index t = 0; t < S; ++t) steps.push_back(step_of(x, t));
    steps.push_back(steps[0]);
    auto s = m.make_stream(B);
    s.step(steps[0]);
    const long before = g_allocations.load();
    for (Index t = 1; t < S; ++t) s.step(steps[static_cast<std::size_t>(t)]);
    s.reset();
    for (Index t = 0; t < S; ++t) s.step(steps[static_cast<std::size_t>(t)]);
    EXPECT_EQ(g_allocations.load() - before, 0);
    // the counter does count: a step beyond the capacity (the model's steps) grows the cache
    s.step(steps[S]);
    EXPECT_GT(g_allocations.load() - before, 0);
  }
}

TEST(AttentionStream, BeyondTheModelsStepsAsDocumented) {
  // Built for 5 steps, streamed for 12: the attention cache (and the sine table) double past 5 and 10, and the
  // steps equal the full forward of the same weights built for 12 steps. PositionEmbedding(12) then refuses step 13.
  const Index B = 2, S = 5, L = 12;
  for (Pos pos : {Pos::Embedding, Pos::Sine}) {
    EncoderSpec spec;
    spec.pos = pos;
    spec.pos_length = L;
    const auto mp = causal_encoder<double>(S, spec, 9);
    const Model<double>& m = *mp;
    const auto lp = causal_encoder<double>(L, spec, 9);
    Model<double>& longer = *lp;
    ASSERT_EQ(longer.flat_parameters().size(), m.flat_parameters().size());
    copy_into(m.flat_parameters(), longer.flat_parameters());
    Rng rng(10);
    const Tensor<double, Cpu> x = encoder_inputs<double>(false, B, L, rng);
    const Tensor<double, Cpu> full = longer.predict(x);
    auto s = m.make_stream(B);
    EXPECT_EQ(s.max_steps(), pos == Pos::Embedding ? L : 0);
    const double d = stream_vs_full(s, x, full, L);
    std::printf("  stream of %lld steps on a model of %lld, %s: max abs difference %.3g\n",
                static_cast<long long>(L), static_cast<long long>(S),
                pos == Pos::Embedding ? "PositionEmbedding" : "SinePositionEncoding", d);
    EXPECT_LT(d, 1e-12);
    if (pos == Pos::Embedding) {
      try {
        s.step(step_of(x, 0));
        ADD_FAILURE() << "no error";
      } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("'pos' (PositionEmbedding) has positions for 12 steps"),
                  std::string::npos)
            << e.what();
      }
      EXPECT_EQ(s.steps_taken(), L);
    } else {
      EXPECT_NO_THROW(s.step(step_of(x, 0)));
    }
    // reset() starts again at position 0
    s.reset();
    EXPECT_LT(stream_vs_full(s, x, full, 3), 1e-12);
  }
}
