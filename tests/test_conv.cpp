// The spatial layers (fastnn/vision.hpp): Conv1D/2D and the pooling layers against direct
// nested-loop references in double, on every CPU path; finite-difference gradients (double,
// relative error < 1e-6) for every layer and option; BatchNormalization's statistics and
// modes; sequence lengths; the registry round trip; a small CNN that trains; the typed errors.
#include <fastnn/vision.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "gradient_util.hpp"
#include "test_util.hpp"

using namespace fastnn;
using fastnn::testing::build_standalone;
using fastnn::testing::check_gradients;
using fastnn_test::expect_layer_gradients;
using fastnn_test::random_tensor;

namespace {

// ---- direct references ------------------------------------------------------------------------

struct Win {
  Index out = 0, before = 0;
};
/// TensorFlow's placement of windows, written out independently of the library.
Win place(Index in, Index k, Index s, Index d, Padding p) {
  const Index eff = (k - 1) * d + 1;
  if (p == Padding::Valid) return {in >= eff ? (in - eff) / s + 1 : 0, 0};
  const Index out = (in + s - 1) / s;
  if (p == Padding::Causal) return {out, eff - 1};
  const Index total = std::max<Index>((out - 1) * s + eff - in, 0);
  return {out, total / 2};
}

double act(Activation a, double z) {
  switch (a) {
    case Activation::Linear: return z;
    case Activation::Tanh: return std::tanh(z);
    case Activation::Relu: return z > 0 ? z : 0;
    case Activation::Gelu: return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
    case Activation::Swish: return z / (1 + std::exp(-z));
    case Activation::Softplus: return std::log(1 + std::exp(z));
    default: ADD_FAILURE() << "reference activation"; return 0;
  }
}

/// x [n, h, w, c], kernel [kh, kw, c / groups, f], bias [f] (or empty) -> y [n, oh, ow, f].
std::vector<double> ref_conv(const std::vector<double>& x, Index n, Index h, Index w, Index c, const std::vector<double>& k,
                             const std::vector<double>& bias, Index kh, Index kw, Index f, Index sh, Index sw, Index dh,
                             Index dw, Index groups, Padding p, Activation a, Index& oh, Index& ow) {
  const Win wy = place(h, kh, sh, dh, p == Padding::Causal ? Padding::Valid : p);
  const Win wx = place(w, kw, sw, dw, p);
  oh = wy.out;
  ow = wx.out;
  const Index cg = c / groups, fg = f / groups;
  std::vector<double> y(static_cast<std::size_t>(n * oh * ow * f));
  for (Index b = 0; b < n; ++b)
    for (Index oy = 0; oy < oh; ++oy)
      for (Index ox = 0; ox < ow; ++ox)
        for (Index o = 0; o < f; ++o) {
          const Index g = o / fg;
          double s = bias.empty() ? 0.0 : bias[o];
          for (Index i = 0; i < kh; ++i)
            for (Index j = 0; j < kw; ++j)
              for (Index ci = 0; ci < cg; ++ci) {
                const Index iy = oy * sh - wy.before + i * dh, ix = ox * sw - wx.before + j * dw;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                s += x[((b * h + iy) * w + ix) * c + g * cg + ci] * k[((i * kw + j) * cg + ci) * f + o];
              }
          y[((b * oh + oy) * ow + ox) * f + o] = act(a, s);
        }
  return y;
}

struct ConvCase {
  int rank;
  Index h, w, c, f, kh, kw, sh, sw, dh, dw, groups;
  Padding pad;
  Activation a;
  bool bias;
};

std::string case_name(const ConvCase& k) {
  std::string s = std::to_string(k.rank) + "d_" + to_string(k.pad) + "_k" + std::to_string(k.kh) + "x" +
                  std::to_string(k.kw) + "_s" + std::to_string(k.sh) + "x" + std::to_string(k.sw) + "_d" +
                  std::to_string(k.dh) + "x" + std::to_string(k.dw) + "_g" + std::to_string(k.groups) + "_" +
                  to_string(k.a) + (k.bias ? "" : "_nobias");
  return s;
}

template <class T>
std::unique_ptr<Layer<T, Cpu>> make_conv(const ConvCase& k) {
  if (k.rank == 1)
    return std::make_unique<Conv1D<T>>(Conv1DOptions(k.f, k.kw).strides(k.sw).dilation_rate(k.dw).padding(k.pad)
                                           .groups(k.groups).activation(k.a).use_bias(k.bias));
  return std::make_unique<Conv2D<T>>(Conv2DOptions(k.f, Size2(k.kh, k.kw)).strides(Size2(k.sh, k.sw))
                                         .dilation_rate(Size2(k.dh, k.dw)).padding(k.pad).groups(k.groups)
                                         .activation(k.a).use_bias(k.bias));
}
Shape conv_input(const ConvCase& k) { return k.rank == 1 ? Shape{k.w, k.c} : Shape{k.h, k.w, k.c}; }

const std::vector<ConvCase> kConvCases = {
    {1, 1, 9, 3, 4, 1, 3, 1, 1, 1, 1, 1, Padding::Valid, Activation::Linear, true},
    {1, 1, 9, 2, 3, 1, 3, 1, 2, 1, 1, 1, Padding::Same, Activation::Tanh, true},
    {1, 1, 8, 3, 2, 1, 4, 1, 1, 1, 1, 1, Padding::Same, Activation::Linear, true},
    {1, 1, 10, 2, 3, 1, 3, 1, 1, 1, 2, 1, Padding::Causal, Activation::Linear, true},
    {1, 1, 10, 2, 2, 1, 2, 1, 3, 1, 1, 1, Padding::Causal, Activation::Tanh, false},
    {1, 1, 11, 4, 6, 1, 2, 1, 2, 1, 2, 2, Padding::Valid, Activation::Linear, true},
    {2, 6, 5, 2, 3, 1, 3, 3, 1, 1, 1, 1, Padding::Valid, Activation::Linear, true},
    {2, 7, 6, 3, 4, 1, 3, 2, 2, 1, 1, 1, Padding::Same, Activation::Tanh, true},
    {2, 7, 7, 4, 4, 1, 3, 2, 1, 1, 2, 1, Padding::Valid, Activation::Linear, true},
    {2, 8, 6, 4, 6, 1, 2, 2, 2, 2, 1, 1, Padding::Same, Activation::Linear, false},
    {2, 6, 7, 3, 6, 1, 3, 3, 1, 2, 1, 3, Padding::Same, Activation::Tanh, true},
    {2, 5, 5, 4, 8, 1, 1, 1, 1, 1, 1, 4, Padding::Valid, Activation::Linear, true},
    {2, 5, 6, 2, 3, 1, 3, 3, 1, 1, 1, 1, Padding::Same, Activation::Gelu, true},
    {1, 1, 9, 2, 3, 1, 3, 1, 1, 1, 1, 1, Padding::Causal, Activation::Swish, true},
    {2, 4, 5, 2, 2, 1, 2, 2, 1, 1, 1, 1, Padding::Valid, Activation::Softplus, true},
};

}  // namespace

class ConvTest : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvTest, MatchesDirectReference) {
  const ConvCase k = GetParam();
  auto layer = make_conv<double>(k);
  Rng rng(7);
  auto storage = build_standalone(*layer, conv_input(k), rng);
  for (Index i = 0; i < storage.first.size(); ++i) storage.first[i] += rng.uniform(-0.2, 0.2);
  const Index n = 3;
  auto x = random_tensor(conv_input(k).prepend(n), rng);
  Tensor<double, Cpu> y;
  layer->forward(x, y, Mode::Infer);
  const auto& ps = layer->parameters();
  std::vector<double> xv(x.data(), x.data() + x.size()), kv(ps[0].value.data(), ps[0].value.data() + ps[0].value.size());
  std::vector<double> bv;
  if (k.bias) bv.assign(ps[1].value.data(), ps[1].value.data() + ps[1].value.size());
  Index oh = 0, ow = 0;
  auto ref = ref_conv(xv, n, k.rank == 1 ? 1 : k.h, k.w, k.c, kv, bv, k.rank == 1 ? 1 : k.kh, k.kw, k.f,
                      k.rank == 1 ? 1 : k.sh, k.sw, k.rank == 1 ? 1 : k.dh, k.dw, k.groups, k.pad, k.a, oh, ow);
  const Shape want = k.rank == 1 ? Shape{n, ow, k.f} : Shape{n, oh, ow, k.f};
  ASSERT_EQ(y.shape(), want);
  double worst = 0;
  for (Index i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(y[i] - ref[static_cast<std::size_t>(i)]));
  EXPECT_LT(worst, 1e-12);
}

TEST_P(ConvTest, GradientsMatchFiniteDifferences) {
  const ConvCase k = GetParam();
  auto layer = make_conv<double>(k);
  expect_layer_gradients(*layer, conv_input(k), 2, 19);
}

INSTANTIATE_TEST_SUITE_P(Cases, ConvTest, ::testing::ValuesIn(kConvCases),
                         [](const ::testing::TestParamInfo<ConvCase>& i) { return case_name(i.param); });

// Every CPU path (float GEMM kernels) against the double reference.
TEST(ConvIsa, EveryPathMatchesReference) {
  const std::vector<Isa> all = {Isa::Baseline, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::AmxBf16};
  int paths = 0;
  for (Isa isa : all) {
    if (isa > detected_cpu_isa()) continue;
    set_cpu_isa(isa);
    ++paths;
    for (const ConvCase& k : {kConvCases[1], kConvCases[5], kConvCases[7], kConvCases[10]}) {
      auto layer = make_conv<float>(k);
      Rng rng(3);
      auto storage = build_standalone(*layer, conv_input(k), rng);
      const Index n = 4;
      auto x = random_tensor<float>(conv_input(k).prepend(n), rng);
      Tensor<float, Cpu> y, dx;
      layer->forward(x, y, Mode::Train);
      const auto& ps = layer->parameters();
      std::vector<double> xv(x.data(), x.data() + x.size()), kv(ps[0].value.data(), ps[0].value.data() + ps[0].value.size());
      std::vector<double> bv;
      if (k.bias) bv.assign(ps[1].value.data(), ps[1].value.data() + ps[1].value.size());
      Index oh = 0, ow = 0;
      auto ref = ref_conv(xv, n, k.rank == 1 ? 1 : k.h, k.w, k.c, kv, bv, k.rank == 1 ? 1 : k.kh, k.kw, k.f,
                          k.rank == 1 ? 1 : k.sh, k.sw, k.rank == 1 ? 1 : k.dh, k.dw, k.groups, k.pad, k.a, oh, ow);
      double worst = 0;
      for (Index i = 0; i < y.size(); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(y[i]) - ref[static_cast<std::size_t>(i)]));
      EXPECT_LT(worst, 1e-5) << isa_name(isa) << " " << case_name(k);
      // backward on this path runs and gives the float version of the double layer's gradient
      Tensor<float, Cpu> dy = Tensor<float, Cpu>::zeros(y.shape());
      for (Index i = 0; i < dy.size(); ++i) dy[i] = 1.0f;
      layer->backward(x, y, dy, &dx);
      EXPECT_EQ(dx.shape(), x.shape());
      EXPECT_TRUE(dx.array().isFinite().all());
    }
  }
  reset_cpu_isa();
  EXPECT_GE(paths, 1);
}

// The CPU convolution runs the batch in chunks of samples and, with set_threads(2), in two halves
// on two threads: the example's two layers (several chunks per half) and two small cases, with an
// odd batch, against the same layer run one sample at a time (forward, kernel and bias gradients,
// input gradient), and two threads against one thread; two threads twice give the same bits.
TEST(ConvThreads, TwoThreadsAndChunksMatchOneSampleAtATime) {
  struct Case {
    Shape in;
    Conv2DOptions opt;
  };
  const std::vector<Case> cases = {
      {Shape{28, 28, 1}, Conv2DOptions(32, 3).padding(Padding::Same)},
      {Shape{14, 14, 32}, Conv2DOptions(64, 3).padding(Padding::Same).activation(Activation::Relu)},
      {Shape{7, 6, 4}, Conv2DOptions(6, Size2(3, 2)).strides(2).groups(2).activation(Activation::Tanh)},
      {Shape{9, 9, 3}, Conv2DOptions(5, 3).dilation_rate(2).use_bias(false)},
  };
  auto rel = [](const Tensor<float, Cpu>& a, const Tensor<float, Cpu>& b) {
    double diff = 0, scale = 1e-30;
    for (Index i = 0; i < a.size(); ++i) {
      diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
      scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    return diff / scale;
  };
  for (const Case& k : cases) {
    const Index n = 9;
    Conv2D<float> one(k.opt), two(k.opt);
    Rng rng(11);
    auto s1 = build_standalone(one, k.in, rng);
    auto s2 = build_standalone(two, k.in, rng);
    for (Index i = 0; i < s1.first.size(); ++i) s2.first[i] = s1.first[i] = static_cast<float>(rng.uniform(-0.3, 0.3));
    two.set_threads(2);
    auto x = random_tensor<float>(k.in.prepend(n), rng);
    Tensor<float, Cpu> y1, y2, dx1, dx2;
    one.forward(x, y1, Mode::Train);
    two.forward(x, y2, Mode::Train);
    auto dy = random_tensor<float>(y1.shape(), rng);
    one.backward(x, y1, dy, &dx1);
    two.backward(x, y2, dy, &dx2);
    const std::string what = k.in.str();
    EXPECT_LT(rel(y2, y1), 1e-5) << what;
    EXPECT_LT(rel(s2.second, s1.second), 1e-5) << what;
    EXPECT_LT(rel(dx2, dx1), 1e-5) << what;
    // one sample at a time: one chunk each, the gradients summed over the samples
    Conv2D<float> single(k.opt);
    auto s3 = build_standalone(single, k.in, rng);
    for (Index i = 0; i < s1.first.size(); ++i) s3.first[i] = s1.first[i];
    Tensor<float, Cpu> ys(y1.shape()), dxs(x.shape()), yb, dxb;
    const Index in_per = x.size() / n, out_per = y1.size() / n;
    for (Index b = 0; b < n; ++b) {
      Tensor<float, Cpu> xb = x.view(b * in_per, k.in.prepend(1)).clone();
      single.forward(xb, yb, Mode::Train);
      Tensor<float, Cpu> dyb = dy.view(b * out_per, yb.shape()).clone();
      single.backward(xb, yb, dyb, &dxb);
      std::copy(yb.data(), yb.data() + out_per, ys.data() + b * out_per);
      std::copy(dxb.data(), dxb.data() + in_per, dxs.data() + b * in_per);
    }
    EXPECT_LT(rel(y1, ys), 1e-5) << what;
    EXPECT_LT(rel(s1.second, s3.second), 1e-5) << what;
    EXPECT_LT(rel(dx1, dxs), 1e-5) << what;
    // two threads again: the same bits
    Tensor<float, Cpu> g2 = s2.second.clone(), y3, dx3;
    s2.second.set_zero();
    two.forward(x, y3, Mode::Train);
    two.backward(x, y3, dy, &dx3);
    for (Index i = 0; i < y2.size(); ++i) ASSERT_EQ(y3[i], y2[i]) << what;
    for (Index i = 0; i < g2.size(); ++i) ASSERT_EQ(s2.second[i], g2[i]) << what;
    for (Index i = 0; i < dx2.size(); ++i) ASSERT_EQ(dx3[i], dx2[i]) << what;
  }
}

// ---- pooling ----------------------------------------------------------------------------------

namespace {

struct PoolCase {
  int rank;
  bool max;
  Index h, w, c, ph, pw, sh, sw;  // sh = sw = 0: strides = pool_size
  Padding pad;
};

std::unique_ptr<Layer<double, Cpu>> make_pool(const PoolCase& k) {
  if (k.rank == 1) {
    const auto o = Pool1DOptions(k.pw).strides(k.sw).padding(k.pad);
    if (k.max) return std::make_unique<MaxPooling1D<double>>(o);
    return std::make_unique<AveragePooling1D<double>>(o);
  }
  const auto o = Pool2DOptions(Size2(k.ph, k.pw)).strides(Size2(k.sh, k.sw)).padding(k.pad);
  if (k.max) return std::make_unique<MaxPooling2D<double>>(o);
  return std::make_unique<AveragePooling2D<double>>(o);
}

std::vector<double> ref_pool(const PoolCase& k, const Tensor<double, Cpu>& x, Index n, Index& oh, Index& ow) {
  const Index h = k.rank == 1 ? 1 : k.h, ph = k.rank == 1 ? 1 : k.ph;
  const Index sh = k.rank == 1 ? 1 : (k.sh ? k.sh : k.ph), sw = k.sw ? k.sw : k.pw;
  const Win wy = place(h, ph, sh, 1, k.pad), wx = place(k.w, k.pw, sw, 1, k.pad);
  oh = wy.out;
  ow = wx.out;
  std::vector<double> y(static_cast<std::size_t>(n * oh * ow * k.c));
  for (Index b = 0; b < n; ++b)
    for (Index oy = 0; oy < oh; ++oy)
      for (Index ox = 0; ox < ow; ++ox)
        for (Index ch = 0; ch < k.c; ++ch) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          Index count = 0;
          for (Index i = 0; i < ph; ++i)
            for (Index j = 0; j < k.pw; ++j) {
              const Index iy = oy * sh - wy.before + i, ix = ox * sw - wx.before + j;
              if (iy < 0 || iy >= h || ix < 0 || ix >= k.w) continue;
              const double v = x[((b * h + iy) * k.w + ix) * k.c + ch];
              best = std::max(best, v);
              sum += v;
              ++count;
            }
          y[((b * oh + oy) * ow + ox) * k.c + ch] = k.max ? best : sum / static_cast<double>(count);
        }
  return y;
}

const std::vector<PoolCase> kPoolCases = {
    {1, true, 1, 9, 3, 1, 2, 0, 0, Padding::Valid},  {1, false, 1, 9, 2, 1, 3, 0, 2, Padding::Same},
    {1, true, 1, 7, 2, 1, 3, 0, 1, Padding::Same},   {1, false, 1, 8, 2, 1, 3, 0, 1, Padding::Valid},
    {2, true, 6, 6, 2, 2, 2, 0, 0, Padding::Valid},  {2, false, 7, 5, 2, 3, 3, 2, 2, Padding::Same},
    {2, true, 5, 7, 3, 2, 3, 1, 2, Padding::Same},   {2, false, 6, 6, 2, 3, 3, 1, 1, Padding::Valid},
};

std::string pool_name(const PoolCase& k) {
  return std::to_string(k.rank) + "d_" + (k.max ? "max_" : "avg_") + to_string(k.pad) + "_p" + std::to_string(k.ph) +
         "x" + std::to_string(k.pw) + "_s" + std::to_string(k.sh) + "x" + std::to_string(k.sw);
}

}  // namespace

class PoolTest : public ::testing::TestWithParam<PoolCase> {};

TEST_P(PoolTest, MatchesDirectReference) {
  const PoolCase k = GetParam();
  auto layer = make_pool(k);
  Rng rng(5);
  const Shape in = k.rank == 1 ? Shape{k.w, k.c} : Shape{k.h, k.w, k.c};
  auto storage = build_standalone(*layer, in, rng);
  auto x = random_tensor(in.prepend(2), rng);
  Tensor<double, Cpu> y;
  layer->forward(x, y, Mode::Infer);
  Index oh = 0, ow = 0;
  auto ref = ref_pool(k, x, 2, oh, ow);
  ASSERT_EQ(y.shape(), k.rank == 1 ? (Shape{2, ow, k.c}) : (Shape{2, oh, ow, k.c}));
  for (Index i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], ref[static_cast<std::size_t>(i)], 1e-14) << i;
}

TEST_P(PoolTest, GradientsMatchFiniteDifferences) {
  const PoolCase k = GetParam();
  auto layer = make_pool(k);
  expect_layer_gradients(*layer, k.rank == 1 ? Shape{k.w, k.c} : Shape{k.h, k.w, k.c}, 2, 23);
}

INSTANTIATE_TEST_SUITE_P(Cases, PoolTest, ::testing::ValuesIn(kPoolCases),
                         [](const ::testing::TestParamInfo<PoolCase>& i) { return pool_name(i.param); });

TEST(Pool, MaxTiesSendTheGradientToTheFirstMaximum) {
  MaxPooling2D<double> p(Pool2DOptions(2));
  p.set_name("pool");
  p.build(Shape{2, 4, 1});
  Tensor<double, Cpu> x(Shape{1, 2, 4, 1}), y, dx;
  const double v[] = {3, 3, 1, 5, 3, 2, 5, 5};  // window 1: three 3s (first at 0); window 2: three 5s (first at 3)
  for (int i = 0; i < 8; ++i) x[i] = v[i];
  p.forward(x, y, Mode::Train);
  ASSERT_EQ(y.shape(), (Shape{1, 1, 2, 1}));
  EXPECT_EQ(y[0], 3);
  EXPECT_EQ(y[1], 5);
  Tensor<double, Cpu> dy(y.shape());
  dy[0] = 1.5;
  dy[1] = -2;
  p.backward(x, y, dy, &dx);
  const double want[] = {1.5, 0, 0, -2, 0, 0, 0, 0};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(dx[i], want[i]) << i;
  // 1-D: the same rule along the steps
  MaxPooling1D<double> q(Pool1DOptions(3).strides(1));
  q.set_name("pool1d");
  q.build(Shape{4, 1});
  Tensor<double, Cpu> x1(Shape{1, 4, 1}), y1, d1;
  for (int i = 0; i < 4; ++i) x1[i] = 2;
  q.forward(x1, y1, Mode::Train);
  Tensor<double, Cpu> g1(y1.shape());
  g1[0] = 1;
  g1[1] = 10;
  q.backward(x1, y1, g1, &d1);
  EXPECT_EQ(d1[0], 1);
  EXPECT_EQ(d1[1], 10);
  EXPECT_EQ(d1[2], 0);
  EXPECT_EQ(d1[3], 0);
}

TEST(Pool, AverageSameDividesByRealElements) {
  AveragePooling1D<double> p(Pool1DOptions(3).strides(1).padding(Padding::Same));
  p.set_name("avg");
  p.build(Shape{3, 1});
  Tensor<double, Cpu> x(Shape{1, 3, 1}), y;
  x[0] = 3;
  x[1] = 6;
  x[2] = 9;
  p.forward(x, y, Mode::Infer);
  EXPECT_DOUBLE_EQ(y[0], 4.5);  // (3 + 6) / 2, not / 3
  EXPECT_DOUBLE_EQ(y[1], 6);
  EXPECT_DOUBLE_EQ(y[2], 7.5);
}

// ---- global pooling ---------------------------------------------------------------------------

TEST(GlobalPool, ForwardAndGradients) {
  GlobalAveragePooling1D<double> a1;
  GlobalMaxPooling1D<double> m1;
  GlobalAveragePooling2D<double> a2;
  GlobalMaxPooling2D<double> m2;
  expect_layer_gradients(a1, Shape{5, 3}, 3, 31);
  expect_layer_gradients(m1, Shape{5, 3}, 3, 32);
  expect_layer_gradients(a2, Shape{3, 4, 2}, 2, 33);
  expect_layer_gradients(m2, Shape{3, 4, 2}, 2, 34);
  Rng rng(1);
  auto x = random_tensor(Shape{2, 3, 4, 2}, rng);
  Tensor<double, Cpu> ya, ym;
  a2.forward(x, ya, Mode::Infer);
  m2.forward(x, ym, Mode::Infer);
  ASSERT_EQ(ya.shape(), (Shape{2, 2}));
  for (Index b = 0; b < 2; ++b)
    for (Index c = 0; c < 2; ++c) {
      double s = 0, mx = -1e300;
      for (Index i = 0; i < 12; ++i) {
        s += x[(b * 12 + i) * 2 + c];
        mx = std::max(mx, x[(b * 12 + i) * 2 + c]);
      }
      EXPECT_NEAR(ya[b * 2 + c], s / 12, 1e-14);
      EXPECT_EQ(ym[b * 2 + c], mx);
    }
}

TEST(GlobalPool, LengthsCountOnlyRealSteps) {
  for (bool max : {false, true}) {
    std::unique_ptr<Layer<double, Cpu>> l;
    if (max) l = std::make_unique<GlobalMaxPooling1D<double>>();
    else l = std::make_unique<GlobalAveragePooling1D<double>>();
    l->set_name("g");
    l->build(Shape{4, 1});
    Tensor<double, Cpu> x(Shape{2, 4, 1}), y, dx;
    const double v[] = {1, 2, 100, 100, 4, 8, 6, 2};
    for (int i = 0; i < 8; ++i) x[i] = v[i];
    l->set_input_lengths(fastnn_test::make_lengths({2, 4}));
    EXPECT_TRUE(l->output_lengths().empty());
    l->forward(x, y, Mode::Train);
    EXPECT_DOUBLE_EQ(y[0], max ? 2 : 1.5);
    EXPECT_DOUBLE_EQ(y[1], max ? 8 : 5);
    Tensor<double, Cpu> dy(y.shape());
    dy[0] = 1;
    dy[1] = 1;
    l->backward(x, y, dy, &dx);
    EXPECT_EQ(dx[2], 0);  // padded steps get no gradient
    EXPECT_EQ(dx[3], 0);
    EXPECT_DOUBLE_EQ(dx[0], max ? 0 : 0.5);
    EXPECT_DOUBLE_EQ(dx[1], max ? 1 : 0.5);
  }
}

// ---- sequence lengths through Conv1D and 1-D pooling ------------------------------------------

TEST(Lengths, Conv1DAndPoolingCarryThem) {
  for (Padding pad : {Padding::Causal, Padding::Same}) {
    Conv1D<double> c(Conv1DOptions(2, 3).strides(2).padding(pad));
    Rng rng(4);
    auto storage = build_standalone(c, Shape{7, 2}, rng);
    c.set_input_lengths(fastnn_test::make_lengths({3, 7}));
    const Lengths out = c.output_lengths();
    ASSERT_EQ(out.size(), 2);
    EXPECT_EQ(out[0], 2);  // ceil(3 / 2)
    EXPECT_EQ(out[1], 4);
    // the padded steps' values do not matter, and get no gradient
    auto x = random_tensor(Shape{2, 7, 2}, rng);
    auto x2 = x.clone();
    for (Index t = 3; t < 7; ++t)
      for (Index k = 0; k < 2; ++k) x2[(0 * 7 + t) * 2 + k] = 50;
    Tensor<double, Cpu> y1, y2, dx;
    c.forward(x, y1, Mode::Train);
    c.forward(x2, y2, Mode::Train);
    for (Index t = 0; t < 2; ++t)
      for (Index k = 0; k < 2; ++k) EXPECT_EQ(y1[t * 2 + k], y2[t * 2 + k]) << to_string(pad);
    Tensor<double, Cpu> dy(y2.shape());
    for (Index i = 0; i < dy.size(); ++i) dy[i] = 1;
    for (auto& p : c.parameters()) p.grad.set_zero();
    c.backward(x2, y2, dy, &dx);
    for (Index t = 3; t < 7; ++t) EXPECT_EQ(dx[t * 2], 0);
    // the kernel gradient ignores padded outputs: the same with dy zero there
    Tensor<double, Cpu> g1 = c.parameters()[0].grad.clone();
    Tensor<double, Cpu> dy0 = dy.clone();
    for (Index t = 2; t < 4; ++t)
      for (Index k = 0; k < 2; ++k) dy0[t * 2 + k] = 0;
    for (auto& p : c.parameters()) p.grad.set_zero();
    c.backward(x2, y2, dy0, &dx);
    for (Index i = 0; i < g1.size(); ++i) EXPECT_NEAR(g1[i], c.parameters()[0].grad[i], 1e-12);
  }
  MaxPooling1D<double> p(Pool1DOptions(2).padding(Padding::Same));
  p.set_name("p");
  p.build(Shape{5, 1});
  p.set_input_lengths(fastnn_test::make_lengths({3, 5}));
  EXPECT_EQ(p.output_lengths()[0], 2);
  EXPECT_EQ(p.output_lengths()[1], 3);
  Tensor<double, Cpu> x(Shape{2, 5, 1}), y, dx;
  const double v[] = {1, 2, 3, 99, 99, 1, 2, 3, 4, 5};
  for (int i = 0; i < 10; ++i) x[i] = v[i];
  p.forward(x, y, Mode::Train);
  EXPECT_EQ(y[1], 3);  // window [2, 4) stops at the length 3: the padded 99 is not picked
  EXPECT_EQ(y[2], 0);
  Tensor<double, Cpu> dy = Tensor<double, Cpu>::zeros(y.shape());
  for (Index i = 0; i < dy.size(); ++i) dy[i] = 1;
  p.backward(x, y, dy, &dx);
  EXPECT_EQ(dx[3], 0);
  EXPECT_EQ(dx[4], 0);
  // valid padding and 2-D layers refuse partial lengths
  Conv1D<double> v1(Conv1DOptions(2, 3));
  Rng rng(2);
  auto st = build_standalone(v1, Shape{7, 2}, rng);
  EXPECT_THROW(v1.set_input_lengths(fastnn_test::make_lengths({3, 7})), ArgumentError);
  EXPECT_NO_THROW(v1.set_input_lengths(fastnn_test::make_lengths({7, 7})));
}

// ---- BatchNormalization -----------------------------------------------------------------------

TEST(BatchNorm, TrainingFormulaAndMovingStatistics) {
  BatchNormalization<double> bn(BatchNormalizationOptions().momentum(0.9).epsilon(1e-3));
  Rng rng(9);
  auto st = build_standalone(bn, Shape{3, 2}, rng);
  ASSERT_EQ(bn.parameters().size(), 4u);
  EXPECT_FALSE(bn.param_specs()[2].trainable);
  EXPECT_FALSE(bn.param_specs()[3].trainable);
  EXPECT_TRUE(bn.param_specs()[0].trainable);
  EXPECT_EQ(bn.parameters()[3].value[0], 1);  // moving_variance starts at 1
  auto& gamma = bn.parameters()[0].value;
  auto& beta = bn.parameters()[1].value;
  gamma[0] = 1.5;
  gamma[1] = 0.5;
  beta[0] = 0.25;
  beta[1] = -1;
  auto x = random_tensor(Shape{4, 3, 2}, rng, -2, 3);
  Tensor<double, Cpu> y;
  bn.forward(x, y, Mode::Train);
  for (Index c = 0; c < 2; ++c) {
    double m = 0, v = 0;
    for (Index i = 0; i < 12; ++i) m += x[i * 2 + c];
    m /= 12;
    for (Index i = 0; i < 12; ++i) v += (x[i * 2 + c] - m) * (x[i * 2 + c] - m);
    v /= 12;  // biased
    for (Index i = 0; i < 12; ++i)
      EXPECT_NEAR(y[i * 2 + c], gamma[c] * (x[i * 2 + c] - m) / std::sqrt(v + 1e-3) + beta[c], 1e-12);
    EXPECT_NEAR(bn.parameters()[2].value[c], 0.1 * m, 1e-12);
    EXPECT_NEAR(bn.parameters()[3].value[c], 0.9 + 0.1 * v, 1e-12);
  }
  // inference: the moving statistics, which do not move
  const double mm = bn.parameters()[2].value[1], mv = bn.parameters()[3].value[1];
  bn.forward(x, y, Mode::Infer);
  EXPECT_NEAR(y[1], gamma[1] * (x[1] - mm) / std::sqrt(mv + 1e-3) + beta[1], 1e-12);
  EXPECT_EQ(bn.parameters()[2].value[1], mm);
  // set_trainable(false): inference mode even in training, no update
  bn.set_trainable(false);
  bn.forward(x, y, Mode::Train);
  EXPECT_NEAR(y[1], gamma[1] * (x[1] - mm) / std::sqrt(mv + 1e-3) + beta[1], 1e-12);
  EXPECT_EQ(bn.parameters()[2].value[1], mm);
  EXPECT_EQ(bn.parameters()[3].value[1], mv);
}

TEST(BatchNorm, GradientsInTrainingAndInference) {
  BatchNormalization<double> train;
  expect_layer_gradients(train, Shape{3, 4}, 5, 41);
  for (auto& p : train.parameters()) {
    if (p.name.find("moving") == std::string::npos) continue;
    for (Index i = 0; i < p.grad.size(); ++i) EXPECT_EQ(p.grad[i], 0) << p.name;
  }
  BatchNormalization<double> frozen(BatchNormalizationOptions().momentum(0.5));
  frozen.set_trainable(false);
  expect_layer_gradients(frozen, Shape{4}, 6, 42);
  for (auto& p : frozen.parameters()) {
    if (p.name.find("moving") == std::string::npos) continue;
    for (Index i = 0; i < p.grad.size(); ++i) EXPECT_EQ(p.grad[i], 0) << p.name;
  }
  BatchNormalization<double> bare(BatchNormalizationOptions().center(false).scale(false));
  expect_layer_gradients(bare, Shape{2, 2, 3}, 3, 43);
  EXPECT_EQ(bare.parameters().size(), 2u);
  BatchNormalization<double> only_scale(BatchNormalizationOptions().center(false));
  expect_layer_gradients(only_scale, Shape{3}, 4, 44);
}

// ---- Reshape, Permute, Activation -------------------------------------------------------------

TEST(Rearrange, ReshapePermuteActivation) {
  Reshape<double> r(ReshapeOptions({-1, 4}));
  expect_layer_gradients(r, Shape{2, 3, 2}, 2, 51);
  EXPECT_EQ(r.output_shape(), (Shape{3, 4}));
  Permute<double> p(PermuteOptions({3, 1, 2}));
  expect_layer_gradients(p, Shape{2, 3, 4}, 2, 52);
  EXPECT_EQ(p.output_shape(), (Shape{4, 2, 3}));
  Rng rng(3);
  auto x = random_tensor(Shape{2, 2, 3, 4}, rng);
  Tensor<double, Cpu> y;
  p.forward(x, y, Mode::Infer);
  for (Index b = 0; b < 2; ++b)
    for (Index i = 0; i < 2; ++i)
      for (Index j = 0; j < 3; ++j)
        for (Index k = 0; k < 4; ++k) EXPECT_EQ(y[((b * 4 + k) * 2 + i) * 3 + j], x[((b * 2 + i) * 3 + j) * 4 + k]);
  for (Activation a : {Activation::Tanh, Activation::Sigmoid, Activation::Softmax, Activation::Gelu,
                       Activation::Swish, Activation::Softplus}) {
    ActivationLayer<double> l(a);
    expect_layer_gradients(l, Shape{3, 4}, 2, 53);
  }
  // gelu, swish and softplus against their definitions (softplus stable at large |x|)
  for (Activation a : {Activation::Gelu, Activation::Swish, Activation::Softplus}) {
    ActivationLayer<double> l(a);
    l.set_name("activation");
    l.build(Shape{5});
    Tensor<double, Cpu> x(Shape{1, 5}), y;
    const double v[] = {-3.0, -0.5, 0.0, 0.7, 4.0};
    for (Index i = 0; i < 5; ++i) x[i] = v[i];
    l.forward(x, y, Mode::Infer);
    for (Index i = 0; i < 5; ++i) EXPECT_NEAR(y[i], act(a, v[i]), 1e-15) << to_string(a) << "(" << v[i] << ")";
  }
  {
    ActivationLayer<double> l(Activation::Softplus);
    l.build(Shape{2});
    Tensor<double, Cpu> x(Shape{1, 2}), y;
    x[0] = 800;
    x[1] = -800;
    l.forward(x, y, Mode::Infer);
    EXPECT_EQ(y[0], 800.0);
    EXPECT_GE(y[1], 0.0);
    EXPECT_LT(y[1], 1e-300);
  }
  EXPECT_EQ(activation_from_string("gelu"), Activation::Gelu);
  EXPECT_EQ(activation_from_string("swish"), Activation::Swish);
  EXPECT_EQ(activation_from_string("softplus"), Activation::Softplus);
  EXPECT_THROW(Reshape<double>(ReshapeOptions({-1, -1})), ArgumentError);
  Reshape<double> bad(ReshapeOptions({5}));
  bad.set_name("reshape");
  EXPECT_THROW(bad.build(Shape{2, 3}), ShapeError);
  EXPECT_THROW(Permute<double>(PermuteOptions({1, 1})), ArgumentError);
}

// ---- registry ---------------------------------------------------------------------------------

TEST(Registry, EveryLayerRoundTripsThroughConfig) {
  std::vector<std::pair<std::unique_ptr<Layer<double, Cpu>>, Shape>> ls;
  ls.emplace_back(std::make_unique<Conv1D<double>>(Conv1DOptions(4, 3).strides(2).padding(Padding::Causal)
                                                       .dilation_rate(2).groups(2).activation(Activation::Relu)
                                                       .use_bias(false)), Shape{9, 4});
  ls.emplace_back(std::make_unique<Conv2D<double>>(Conv2DOptions(6, Size2(3, 2)).strides(Size2(2, 1))
                                                       .padding(Padding::Same).dilation_rate(Size2(1, 2)).groups(3)
                                                       .kernel_initializer(init::Initializer::he_normal())),
                  Shape{7, 6, 3});
  ls.emplace_back(std::make_unique<MaxPooling1D<double>>(Pool1DOptions(3).strides(2).padding(Padding::Same)),
                  Shape{8, 2});
  ls.emplace_back(std::make_unique<AveragePooling2D<double>>(Pool2DOptions(Size2(2, 3))), Shape{6, 6, 2});
  ls.emplace_back(std::make_unique<MaxPooling2D<double>>(Pool2DOptions(2).strides(Size2(1, 2))), Shape{6, 6, 2});
  ls.emplace_back(std::make_unique<AveragePooling1D<double>>(Pool1DOptions(2)), Shape{8, 2});
  ls.emplace_back(std::make_unique<GlobalAveragePooling1D<double>>(), Shape{5, 3});
  ls.emplace_back(std::make_unique<GlobalMaxPooling1D<double>>(), Shape{5, 3});
  ls.emplace_back(std::make_unique<GlobalAveragePooling2D<double>>(), Shape{2, 5, 3});
  ls.emplace_back(std::make_unique<GlobalMaxPooling2D<double>>(), Shape{2, 5, 3});
  ls.emplace_back(std::make_unique<BatchNormalization<double>>(BatchNormalizationOptions().momentum(0.8)
                                                                   .epsilon(1e-5).center(false)), Shape{4, 3});
  ls.emplace_back(std::make_unique<Reshape<double>>(ReshapeOptions({3, -1})), Shape{4, 3});
  ls.emplace_back(std::make_unique<Permute<double>>(PermuteOptions({2, 1})), Shape{4, 3});
  ls.emplace_back(std::make_unique<ActivationLayer<double>>(Activation::Tanh), Shape{4, 3});
  for (auto& [l, in] : ls) {
    const LayerConfig c = l->config();
    auto m = make_layer<double, Cpu>(l->type_name(), c);
    EXPECT_EQ(m->type_name(), l->type_name());
    EXPECT_EQ(m->config(), c) << l->type_name();
    l->set_name("a");
    m->set_name("a");
    EXPECT_EQ(m->build(in), l->build(in)) << l->type_name();
    const auto s1 = l->param_specs(), s2 = m->param_specs();
    ASSERT_EQ(s1.size(), s2.size());
    for (std::size_t i = 0; i < s1.size(); ++i) {
      EXPECT_EQ(s1[i].shape, s2[i].shape);
      EXPECT_EQ(s1[i].trainable, s2[i].trainable);
    }
    EXPECT_TRUE((make_layer<float, Cpu>(l->type_name(), c) != nullptr));
  }
  // a sample of the recorded text
  Conv2D<double> c2(Conv2DOptions(8, Size2(3, 5)).strides(2));
  EXPECT_EQ(c2.config().at("kernel_size"), "3,5");
  EXPECT_EQ(c2.config().at("strides"), "2,2");
  EXPECT_EQ(c2.config().at("padding"), "valid");
  Config bad = c2.config();
  bad["padding"] = "full";
  EXPECT_THROW((make_layer<double, Cpu>("Conv2D", bad)), MismatchError);
}

// ---- a small CNN ------------------------------------------------------------------------------

namespace {
/// 8x8 one-channel images of three classes: a bright 3x3 blob in the top-left, top-right or
/// bottom half, on noise.
void blobs(Index n, std::uint64_t seed, Tensor<float, Cpu>& x, Tensor<std::int32_t, Cpu>& labels) {
  Rng rng(seed);
  x = Tensor<float, Cpu>(Shape{n, 8, 8, 1});
  labels = Tensor<std::int32_t, Cpu>(Shape{n});
  for (Index i = 0; i < n; ++i) {
    const int cls = static_cast<int>(i % 3);
    labels[i] = cls;
    for (Index p = 0; p < 64; ++p) x[i * 64 + p] = static_cast<float>(rng.uniform(0, 0.3));
    const Index r0 = cls == 2 ? 5 : 0 + static_cast<Index>(rng.uniform(0, 2)), c0 = cls == 1 ? 5 : 0;
    for (Index r = r0; r < r0 + 3; ++r)
      for (Index c = c0; c < c0 + 3; ++c) x[i * 64 + r * 8 + c] += 1.0f;
  }
}
}  // namespace

TEST(SmallCnn, TrainsAndCountsMovingStatisticsAsNonTrainable) {
  Sequential<float> m;
  m.add<Conv2D>(Conv2DOptions(4, 3).padding(Padding::Same).activation(Activation::Relu));
  m.add<BatchNormalization>(BatchNormalizationOptions());
  m.add<MaxPooling2D>(Pool2DOptions(2));
  m.add<Conv2D>(Conv2DOptions(6, 3).activation(Activation::Relu));
  m.add<GlobalAveragePooling2D>();
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({8, 8, 1}, 5);
  m.compile(std::make_unique<Adam<float>>(0.02));
  std::ostringstream os;
  m.summary(os);
  // conv 4*9+4 = 40, BN 4*4 = 16 (8 of them moving), conv 6*4*9+6 = 222, dense 6*3+3 = 21
  EXPECT_NE(os.str().find("Total params: 299"), std::string::npos) << os.str();
  EXPECT_NE(os.str().find("Trainable params: 291"), std::string::npos) << os.str();
  EXPECT_NE(os.str().find("Non-trainable params: 8"), std::string::npos) << os.str();
  Tensor<float, Cpu> x;
  Tensor<std::int32_t, Cpu> y;
  blobs(48, 3, x, y);
  const auto& bn = m.layer(1).parameters();
  ASSERT_EQ(bn.size(), 4u);
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    const double loss = m.train_on_batch(x, y).loss;
    if (step == 0) first = loss;
    last = loss;
    for (Index i = 0; i < bn[2].grad.size(); ++i) ASSERT_EQ(bn[2].grad[i], 0.0f);
  }
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  // the moving statistics moved through forward(), not through the optimizer (mean of relu > 0)
  EXPECT_GT(bn[2].value[0] + bn[2].value[1] + bn[2].value[2] + bn[2].value[3], 0.0f);
  // the optimizer holds no state for them: the layout says so
  int frozen = 0;
  for (const auto& r : m.parameter_layout()) frozen += r.trainable ? 0 : 1;
  EXPECT_EQ(frozen, 2);
  // save and load: architecture and weights, moving statistics included
  fastnn_test::TempDir dir;
  io::save_weights(m, dir.file("cnn.safetensors"));
  auto back = io::load_model<float, Cpu>(dir.file("cnn.safetensors"));
  EXPECT_EQ(back.named_parameters().size(), m.named_parameters().size());
  EXPECT_EQ(back.layer(1).parameters()[3].value[0], bn[3].value[0]);
  const Tensor<float, Cpu> p1 = m.predict(x), p2 = back.predict(x);
  for (Index i = 0; i < p1.size(); ++i) EXPECT_EQ(p1[i], p2[i]);
}

// ---- bad input --------------------------------------------------------------------------------

TEST(BadInput, TypedErrorsNameTheLayerAndNumbers) {
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  auto built = [](Layer<double, Cpu>& l, const Shape& in) {
    l.set_name("conv");
    l.build(in);
  };
  {
    Conv2D<double> c(Conv2DOptions(4, 5));
    EXPECT_THROW(built(c, Shape{4, 6, 3}), ShapeError);
    const std::string m = msg([&] { built(c, Shape{4, 6, 3}); });
    EXPECT_NE(m.find("conv (Conv2D)"), std::string::npos) << m;
    EXPECT_NE(m.find("5x5"), std::string::npos) << m;
    EXPECT_NE(m.find("4x6"), std::string::npos) << m;
  }
  {
    Conv1D<double> c(Conv1DOptions(4, 3).dilation_rate(3));
    const std::string m = msg([&] { built(c, Shape{6, 2}); });
    EXPECT_NE(m.find("dilated to 7"), std::string::npos) << m;
    Conv1D<double> ok(Conv1DOptions(4, 3).dilation_rate(3).padding(Padding::Same));
    EXPECT_NO_THROW(built(ok, Shape{6, 2}));
  }
  EXPECT_THROW(Conv1D<double>(Conv1DOptions(4, 3).strides(0)), ArgumentError);
  EXPECT_THROW(Conv2D<double>(Conv2DOptions(4, 3).dilation_rate(Size2(1, 0))), ArgumentError);
  EXPECT_THROW(Conv1D<double>(Conv1DOptions(0, 3)), ArgumentError);
  {
    const std::string m = msg([] { Conv2D<double>(Conv2DOptions(6, 3).groups(4)); });
    EXPECT_NE(m.find("groups (4)"), std::string::npos) << m;
    EXPECT_NE(m.find("filters (6)"), std::string::npos) << m;
    Conv2D<double> c(Conv2DOptions(6, 3).groups(3));
    EXPECT_THROW(built(c, Shape{5, 5, 4}), ShapeError);
    const std::string m2 = msg([&] { built(c, Shape{5, 5, 4}); });
    EXPECT_NE(m2.find("input channels (4)"), std::string::npos) << m2;
  }
  EXPECT_THROW(Conv2D<double>(Conv2DOptions(4, 3).padding(Padding::Causal)), ArgumentError);
  {
    MaxPooling2D<double> p(Pool2DOptions(4));
    p.set_name("pool");
    const std::string m = msg([&] { p.build(Shape{3, 8, 2}); });
    EXPECT_NE(m.find("pool (MaxPooling2D)"), std::string::npos) << m;
    EXPECT_NE(m.find("4x4"), std::string::npos) << m;
    EXPECT_THROW(p.build(Shape{3, 8, 2}), ShapeError);
    EXPECT_THROW(MaxPooling1D<double>(Pool1DOptions(2).padding(Padding::Causal)), ArgumentError);
    EXPECT_THROW(AveragePooling1D<double>(Pool1DOptions(0)), ArgumentError);
  }
  {
    Conv2D<double> c(Conv2DOptions(4, 3));
    EXPECT_THROW(built(c, Shape{8, 3}), ShapeError);
    // The message names the layer and the shape it got, with the batch axis.
    auto names_the_shape = [](Layer<double, Cpu>& l) {
      try {
        l.build(Shape{8, 3});
        ADD_FAILURE() << "no error";
      } catch (const ShapeError& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("(" + l.type_name() + "): expected input [batch, height, width, channels], got [batch, 8, 3]"),
                  std::string::npos)
            << m;
      }
    };
    Conv2D<double> named_conv(Conv2DOptions(4, 3));
    names_the_shape(named_conv);
    MaxPooling2D<double> named_pool(Pool2DOptions(2));
    names_the_shape(named_pool);
    Conv1D<double> c1(Conv1DOptions(4, 3));
    EXPECT_THROW(built(c1, Shape{8, 8, 3}), ShapeError);
    GlobalAveragePooling2D<double> g;
    EXPECT_THROW(built(g, Shape{8, 3}), ShapeError);
    BatchNormalization<double> bn(BatchNormalizationOptions().axis(1));
    EXPECT_THROW(built(bn, Shape{8, 3}), ArgumentError);
    BatchNormalization<double> bn2(BatchNormalizationOptions().axis(2));
    EXPECT_NO_THROW(built(bn2, Shape{8, 3}));
  }
  {
    // wrong rank at forward time
    Conv1D<double> c(Conv1DOptions(2, 2));
    built(c, Shape{5, 2});
    Tensor<double, Cpu> x = Tensor<double, Cpu>::zeros(Shape{2, 5, 3}), y;
    EXPECT_THROW(c.forward(x, y, Mode::Infer), ShapeError);
  }
}
