#pragma once
// Helpers shared by the CUDA parity tests: random tensors, normwise comparison, a layer built
// identically on both devices, small models and data sets, and a self-deleting directory. Every
// test that needs a GPU starts with FASTNN_REQUIRE_CUDA(), so the suite passes (skipped) on a
// machine without one.

#include <gtest/gtest.h>

#include "../test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include "fastnn/fastnn.hpp"

/// Skips the current test, with the reason, when no CUDA device is usable.
#define FASTNN_REQUIRE_CUDA()                                                                \
  do {                                                                                       \
    if (!fastnn::cuda::device_available())                                                   \
      GTEST_SKIP() << "no CUDA device: " << fastnn::cuda::device_unavailable_reason();       \
  } while (0)

namespace fastnn_test {

using fastnn::Cpu;
using fastnn::Cuda;
using fastnn::Index;
using fastnn::Shape;
using fastnn::Tensor;

/// Relative tolerance of the float parity tests (TF32 disabled).
constexpr double kRtolFloat = 1e-4;

/// The name of a Bidirectional fusion mode, for test names.
inline std::string mode_name(fastnn::cuda::BidirMode m) {
  switch (m) {
    case fastnn::cuda::BidirMode::TwoStreams: return "two_streams";
    case fastnn::cuda::BidirMode::CudnnBidirectional: return "cudnn_bidirectional";
    case fastnn::cuda::BidirMode::Generic: return "generic";
  }
  return "?";
}

/// Normwise relative comparison: max_i |got_i - ref_i| <= rtol * max_i |ref_i| (and both finite).
template <class T, class D>
::testing::AssertionResult close(const Tensor<T, Cpu>& ref, const Tensor<T, D>& got_any, double rtol) {
  Tensor<T, Cpu> got;
  if constexpr (std::is_same<D, Cpu>::value) got = got_any;
  else got = fastnn::to_device<Cpu>(got_any);
  if (ref.size() != got.size())
    return ::testing::AssertionFailure() << "sizes differ: " << ref.shape().str() << " vs " << got.shape().str();
  double scale = 0, err = 0;
  Index worst = 0;
  for (Index i = 0; i < ref.size(); ++i) {
    const double r = static_cast<double>(ref[i]), g = static_cast<double>(got[i]);
    if (!std::isfinite(r) || !std::isfinite(g))
      return ::testing::AssertionFailure() << "non-finite value at " << i << ": ref " << r << ", got " << g;
    scale = std::max(scale, std::abs(r));
    if (std::abs(r - g) > err) {
      err = std::abs(r - g);
      worst = i;
    }
  }
  const double limit = rtol * std::max(scale, 1e-30);
  if (err <= limit || (scale == 0 && err == 0)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |diff| " << err << " at element " << worst << " (ref "
                                       << static_cast<double>(ref[worst]) << ", got " << static_cast<double>(got[worst])
                                       << ") exceeds " << rtol << " * max|ref| = " << limit;
}

template <class T>
::testing::AssertionResult bit_equal(const Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  if (a.size() && std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) != 0) {
    for (Index i = 0; i < a.size(); ++i)
      if (std::memcmp(a.data() + i, b.data() + i, sizeof(T)) != 0)
        return ::testing::AssertionFailure() << "first difference at element " << i;
  }
  return ::testing::AssertionSuccess();
}

/// The same layer on the CPU and on the GPU, with identical parameters (random, not the
/// initialisers' zeros, so that biases are exercised) and identical non-zero gradient buffers
/// (so that backward's accumulation is checked as well).
template <class T>
struct LayerPair {
  std::unique_ptr<fastnn::Layer<T, Cpu>> cpu;
  std::unique_ptr<fastnn::Layer<T, Cuda>> gpu;
  Tensor<T, Cpu> pc, gc;
  Tensor<T, Cuda> pg, gg;
};

template <class T, class Make>
LayerPair<T> make_layer_pair(Make&& make, const Shape& in, std::uint64_t seed) {
  LayerPair<T> p;
  p.cpu = make(Cpu{});
  p.gpu = make(Cuda{});
  p.cpu->set_name("layer");
  p.gpu->set_name("layer");
  p.cpu->build(in);
  p.gpu->build(in);
  const Index n = p.cpu->param_count();
  fastnn::Rng rng(seed);
  p.pc = random_tensor<T>(Shape{n}, rng, -0.5, 0.5);
  p.gc = random_tensor<T>(Shape{n}, rng, -0.1, 0.1);
  p.cpu->bind_parameters(p.pc, p.gc);
  p.pg = fastnn::to_device<Cuda>(p.pc);
  p.gg = fastnn::to_device<Cuda>(p.gc);
  p.gpu->bind_parameters(p.pg, p.gg);
  return p;
}

/// Runs forward and backward on both devices and checks output, input gradient and parameter
/// gradients (each parameter separately, by name).
template <class T>
void check_layer_parity(LayerPair<T>& p, const Shape& batch_in, std::uint64_t seed, double rtol,
                        fastnn::Mode mode = fastnn::Mode::Train) {
  fastnn::Rng rng(seed);
  Tensor<T, Cpu> x = random_tensor<T>(batch_in, rng);
  Tensor<T, Cuda> xg = fastnn::to_device<Cuda>(x);
  Tensor<T, Cpu> y;
  Tensor<T, Cuda> yg;
  p.cpu->forward(x, y, mode);
  p.gpu->forward(xg, yg, mode);
  ASSERT_EQ(y.shape().str(), yg.shape().str());
  EXPECT_TRUE(close(y, yg, rtol)) << "forward output";
  if (mode != fastnn::Mode::Train) return;
  Tensor<T, Cpu> dy = random_tensor<T>(y.shape(), rng);
  Tensor<T, Cuda> dyg = fastnn::to_device<Cuda>(dy);
  Tensor<T, Cpu> dx;
  Tensor<T, Cuda> dxg;
  p.cpu->backward(x, y, dy, &dx);
  p.gpu->backward(xg, yg, dyg, &dxg);
  ASSERT_EQ(dx.shape().str(), dxg.shape().str());
  EXPECT_TRUE(close(dx, dxg, rtol)) << "input gradient";
  const auto& pc = p.cpu->parameters();
  const auto& pgpu = p.gpu->parameters();
  ASSERT_EQ(pc.size(), pgpu.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    EXPECT_EQ(pc[i].name, pgpu[i].name);
    EXPECT_TRUE(close(pc[i].grad, pgpu[i].grad, rtol)) << "gradient of " << pc[i].name;
  }
}

/// n random samples [6, 5] (bytes / 255) with 4 classes (for training-step parity, not
/// learnability).
inline fastnn::Dataset<float, Cpu> random_dataset(Index n, std::uint64_t seed) {
  fastnn::Rng rng(seed);
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(n * 6 * 5)), labels(static_cast<std::size_t>(n));
  for (auto& v : pixels) v = static_cast<std::uint8_t>(rng.below(256));
  for (auto& v : labels) v = static_cast<std::uint8_t>(rng.below(4));
  return fastnn::make_dataset(pixels, labels, Shape{6, 5}, 4);
}

/// The CPU tests' learnable toy problem (test_util.hpp's toy_data).
inline fastnn::Dataset<float, Cpu> toy_classes(std::size_t n, std::uint32_t seed) { return toy_data(n, seed); }

/// n random sequences x [n, steps, f] with float targets [n, steps, k] that depend on them (a
/// per-step regression: t = tanh of a fixed mix of the running input).
inline fastnn::Dataset<float, Cpu> sequence_regression(Index n, Index steps, Index f, Index k, std::uint64_t seed) {
  fastnn::Rng rng(seed);
  Tensor<float, Cpu> x = random_tensor<float>(Shape{n, steps, f}, rng);
  Tensor<float, Cpu> t(Shape{n, steps, k});
  for (Index i = 0; i < n; ++i) {
    std::vector<double> run(static_cast<std::size_t>(k), 0.0);
    for (Index s = 0; s < steps; ++s)
      for (Index j = 0; j < k; ++j) {
        double v = 0;
        for (Index c = 0; c < f; ++c) v += x[(i * steps + s) * f + c] * (((c + j) % 3) - 1.0);
        run[static_cast<std::size_t>(j)] = 0.5 * run[static_cast<std::size_t>(j)] + v;
        t[(i * steps + s) * k + j] = static_cast<float>(std::tanh(run[static_cast<std::size_t>(j)]));
      }
  }
  return fastnn::make_dataset(x, t);
}

/// n random sequences x [n, steps, f] with one class label per step [n, steps] (below
/// `classes`; the label of a step is the sign pattern of its first two features).
inline fastnn::Dataset<float, Cpu> sequence_labels(Index n, Index steps, Index f, int classes, std::uint64_t seed) {
  fastnn::Rng rng(seed);
  Tensor<float, Cpu> x = random_tensor<float>(Shape{n, steps, f}, rng);
  Tensor<std::int32_t, Cpu> labels(Shape{n, steps});
  for (Index i = 0; i < n * steps; ++i) {
    const int a = x[i * f] > 0 ? 1 : 0, b = f > 1 && x[i * f + 1] > 0 ? 2 : 0;
    labels[i] = static_cast<std::int32_t>((a + b) % classes);
  }
  return fastnn::make_dataset(x, labels, classes);
}

/// Bidirectional(LSTM(12)) -> Dense(4, softmax) on [6, 5], seed 7, compiled with `opt`.
inline fastnn::Sequential<float, Cpu> small_model(std::unique_ptr<fastnn::Optimizer<float, Cpu>> opt) {
  fastnn::Sequential<float, Cpu> m;
  m.add<fastnn::Bidirectional>(fastnn::LSTMOptions(12));
  m.add<fastnn::Dense>(fastnn::DenseOptions(4).activation(fastnn::Activation::Softmax));
  m.build(Shape{6, 5}, 7);
  m.compile(std::move(opt));
  return m;
}

/// How far a metric of two runs may differ: `rtol` relative for continuous ones; a counting
/// metric (an accuracy) may also differ by one arg-max that rounding flipped near a tie (the
/// training runs themselves differ by rounding).
inline double metric_tolerance(const std::string& name, double ref, double rtol) {
  const bool counts = name.find("acc") != std::string::npos;
  return (counts ? 0.02 : 1e-6) + rtol * std::abs(ref);
}

/// Per-epoch loss, val_loss and every metric of two training runs agree (see
/// metric_tolerance).
inline void expect_same_history(const fastnn::History& ref, const fastnn::History& got, double rtol) {
  ASSERT_EQ(ref.epochs.size(), got.epochs.size());
  for (std::size_t e = 0; e < ref.epochs.size(); ++e) {
    const auto& a = ref.epochs[e];
    const auto& b = got.epochs[e];
    EXPECT_NEAR(b.loss, a.loss, rtol * std::abs(a.loss)) << "loss, epoch " << e + 1;
    if (!std::isnan(a.val_loss)) {
      EXPECT_NEAR(b.val_loss, a.val_loss, rtol * std::abs(a.val_loss)) << "val_loss, epoch " << e + 1;
    }
    ASSERT_EQ(a.metrics.size(), b.metrics.size());
    for (std::size_t i = 0; i < a.metrics.size(); ++i) {
      EXPECT_EQ(a.metrics[i].first, b.metrics[i].first);
      EXPECT_NEAR(b.metrics[i].second, a.metrics[i].second,
                  metric_tolerance(a.metrics[i].first, a.metrics[i].second, rtol))
          << a.metrics[i].first << ", epoch " << e + 1;
    }
    ASSERT_EQ(a.val_metrics.size(), b.val_metrics.size());
    for (std::size_t i = 0; i < a.val_metrics.size(); ++i)
      EXPECT_NEAR(b.val_metrics[i].second, a.val_metrics[i].second,
                  metric_tolerance(a.val_metrics[i].first, a.val_metrics[i].second, rtol))
          << a.val_metrics[i].first << ", epoch " << e + 1;
  }
}

/// Trains `cpu` and a GPU copy of it (made first) for 2 epochs, batch 16, on `data`; the
/// per-epoch losses and metrics and the final weights must agree within `rtol`.
inline void expect_gpu_trains_like_cpu(fastnn::Sequential<float, Cpu>& cpu, const fastnn::Dataset<float, Cpu>& data,
                                       double rtol = kRtolFloat) {
  auto gpu = cpu.to<Cuda>();
  auto data_g = data.to<Cuda>();
  auto opts = fastnn::FitOptions().epochs(2).batch_size(16).verbose(0);
  fastnn::History hc = cpu.fit(data, opts, &data);
  fastnn::History hg = gpu.fit(data_g, opts, &data_g);
  expect_same_history(hc, hg, rtol);
  EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), rtol));
}

/// The CPU tests' temporary directory (test_util.hpp).
using ScratchDir = TempDir;

}  // namespace fastnn_test
