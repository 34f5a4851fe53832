// CPU-vs-GPU parity of the spatial layers (fastnn/vision.hpp; SpatialOps<T, Cuda> in
// backend/cuda/conv.hpp): forward output, input gradient and parameter gradients on identical
// weights and inputs, relative tolerance 1e-4 in float with TF32 disabled (the default), for each
// option family (Conv1D/2D with valid, same (symmetric and asymmetric) and causal padding,
// strides, dilation, groups; max and average pooling with valid and same padding and ties;
// global pooling with sequence lengths; BatchNormalization in training and inference with its
// moving statistics; Permute, Reshape, Activation), then a small CNN trained two epochs on both
// devices. Skipped without a CUDA device.

#include "cuda_test_util.hpp"

#include "fastnn/vision.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

template <class T, class D>
using LayerPtr = std::unique_ptr<Layer<T, D>>;

/// Sets the same sequence lengths on both layers of a pair.
void set_lengths(LayerPair<float>& p, const std::vector<std::int32_t>& lengths) {
  p.cpu->set_input_lengths(make_lengths(lengths));
  p.gpu->set_input_lengths(make_lengths(lengths));
}

/// Forward and backward parity on a given input (not a random one).
void check_parity_on(LayerPair<float>& p, const Tensor<float, Cpu>& x, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<float, Cuda> xg = to_device<Cuda>(x);
  Tensor<float, Cpu> y, dx;
  Tensor<float, Cuda> yg, dxg;
  p.cpu->forward(x, y, Mode::Train);
  p.gpu->forward(xg, yg, Mode::Train);
  EXPECT_TRUE(close(y, yg, kRtolFloat)) << "forward output";
  Tensor<float, Cpu> dy = random_tensor<float>(y.shape(), rng);
  Tensor<float, Cuda> dyg = to_device<Cuda>(dy);
  p.cpu->backward(x, y, dy, &dx);
  p.gpu->backward(xg, yg, dyg, &dxg);
  EXPECT_TRUE(close(dx, dxg, kRtolFloat)) << "input gradient";
}

// ---- Conv1D ------------------------------------------------------------------------------------

struct Conv1DCase {
  const char* name;
  Index filters, kernel, strides, dilation, groups;
  Padding padding;
  Activation act;
};

class CudaConv1D : public ::testing::TestWithParam<Conv1DCase> {};

TEST_P(CudaConv1D, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const Conv1DCase c = GetParam();
  const Conv1DOptions o = Conv1DOptions(c.filters, c.kernel)
                              .strides(c.strides)
                              .dilation_rate(c.dilation)
                              .groups(c.groups)
                              .padding(c.padding)
                              .activation(c.act);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<Conv1D<float, decltype(tag)>>(o);
  };
  auto p = make_layer_pair<float>(make, Shape{11, 6}, 3);
  check_layer_parity(p, Shape{5, 11, 6}, 4, kRtolFloat);
}

INSTANTIATE_TEST_SUITE_P(
    Options, CudaConv1D,
    ::testing::Values(Conv1DCase{"valid", 7, 3, 1, 1, 1, Padding::Valid, Activation::Linear},
                      Conv1DCase{"same_odd", 5, 3, 1, 1, 1, Padding::Same, Activation::Relu},
                      Conv1DCase{"same_even_asymmetric", 5, 4, 1, 1, 1, Padding::Same, Activation::Tanh},
                      Conv1DCase{"same_strided", 4, 3, 2, 1, 1, Padding::Same, Activation::Linear},
                      Conv1DCase{"causal", 4, 3, 1, 1, 1, Padding::Causal, Activation::Linear},
                      Conv1DCase{"causal_dilated", 4, 3, 1, 2, 1, Padding::Causal, Activation::Relu},
                      Conv1DCase{"causal_strided_dilated", 4, 2, 2, 3, 1, Padding::Causal, Activation::Linear},
                      Conv1DCase{"valid_strided_dilated", 3, 3, 2, 2, 1, Padding::Valid, Activation::Linear},
                      Conv1DCase{"groups", 6, 3, 1, 1, 3, Padding::Same, Activation::Linear},
                      Conv1DCase{"depthwise", 12, 2, 1, 1, 6, Padding::Valid, Activation::Sigmoid}),
    [](const ::testing::TestParamInfo<Conv1DCase>& i) { return std::string(i.param.name); });

TEST(CudaConv1DLengths, CausalAndSameWithLengthsMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  for (Padding pad : {Padding::Causal, Padding::Same}) {
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      return std::make_unique<Conv1D<float, decltype(tag)>>(Conv1DOptions(4, 3).padding(pad).strides(2));
    };
    auto p = make_layer_pair<float>(make, Shape{9, 3}, 5);
    set_lengths(p, {9, 4, 1});
    check_layer_parity(p, Shape{3, 9, 3}, 6, kRtolFloat);
  }
}

TEST(CudaConv1D, NoBiasMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<Conv1D<float, decltype(tag)>>(Conv1DOptions(5, 3).use_bias(false));
  };
  auto p = make_layer_pair<float>(make, Shape{8, 4}, 7);
  check_layer_parity(p, Shape{4, 8, 4}, 8, kRtolFloat);
}

// ---- Conv2D ------------------------------------------------------------------------------------

struct Conv2DCase {
  const char* name;
  Index filters;
  Size2 kernel, strides, dilation;
  Index groups;
  Padding padding;
};

class CudaConv2D : public ::testing::TestWithParam<Conv2DCase> {};

TEST_P(CudaConv2D, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const Conv2DCase c = GetParam();
  const Conv2DOptions o = Conv2DOptions(c.filters, c.kernel)
                              .strides(c.strides)
                              .dilation_rate(c.dilation)
                              .groups(c.groups)
                              .padding(c.padding)
                              .activation(Activation::Relu);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<Conv2D<float, decltype(tag)>>(o);
  };
  auto p = make_layer_pair<float>(make, Shape{9, 8, 4}, 9);
  check_layer_parity(p, Shape{3, 9, 8, 4}, 10, kRtolFloat);
}

INSTANTIATE_TEST_SUITE_P(
    Options, CudaConv2D,
    ::testing::Values(Conv2DCase{"valid", 5, Size2(3), Size2(1), Size2(1), 1, Padding::Valid},
                      Conv2DCase{"valid_rect", 5, Size2(2, 3), Size2(1), Size2(1), 1, Padding::Valid},
                      Conv2DCase{"same_3x3", 6, Size2(3), Size2(1), Size2(1), 1, Padding::Same},
                      Conv2DCase{"same_2x2_asymmetric", 6, Size2(2), Size2(1), Size2(1), 1, Padding::Same},
                      Conv2DCase{"same_strided_asymmetric", 4, Size2(3), Size2(2), Size2(1), 1, Padding::Same},
                      Conv2DCase{"same_4x2_strided", 4, Size2(4, 2), Size2(2, 3), Size2(1), 1, Padding::Same},
                      Conv2DCase{"valid_strided", 4, Size2(3), Size2(2), Size2(1), 1, Padding::Valid},
                      Conv2DCase{"dilated", 3, Size2(3), Size2(1), Size2(2), 1, Padding::Valid},
                      Conv2DCase{"same_dilated", 3, Size2(2, 3), Size2(1), Size2(2, 1), 1, Padding::Same},
                      Conv2DCase{"groups", 6, Size2(3), Size2(1), Size2(1), 2, Padding::Same},
                      Conv2DCase{"depthwise", 8, Size2(3), Size2(2), Size2(1), 4, Padding::Valid}),
    [](const ::testing::TestParamInfo<Conv2DCase>& i) { return std::string(i.param.name); });

TEST(CudaConv2D, OddBatchSizesReuseAndReplanCorrectly) {
  FASTNN_REQUIRE_CUDA();
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<Conv2D<float, decltype(tag)>>(Conv2DOptions(4, 3).padding(Padding::Same));
  };
  auto p = make_layer_pair<float>(make, Shape{6, 6, 2}, 11);
  for (Index n : {4, 1, 4, 7}) check_layer_parity(p, Shape{n, 6, 6, 2}, 12 + static_cast<std::uint64_t>(n), kRtolFloat);
}

// ---- pooling -----------------------------------------------------------------------------------

struct PoolCase {
  const char* name;
  bool max;
  Size2 pool, strides;
  Padding padding;
};

class CudaPool2D : public ::testing::TestWithParam<PoolCase> {};

TEST_P(CudaPool2D, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const PoolCase c = GetParam();
  const Pool2DOptions o = Pool2DOptions(c.pool).strides(c.strides).padding(c.padding);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    if (c.max) return std::make_unique<MaxPooling2D<float, D>>(o);
    return std::make_unique<AveragePooling2D<float, D>>(o);
  };
  auto p = make_layer_pair<float>(make, Shape{7, 8, 3}, 13);
  check_layer_parity(p, Shape{3, 7, 8, 3}, 14, kRtolFloat);
}

INSTANTIATE_TEST_SUITE_P(
    Options, CudaPool2D,
    ::testing::Values(PoolCase{"max_valid", true, Size2(2), Size2(0), Padding::Valid},
                      PoolCase{"max_same", true, Size2(2), Size2(0), Padding::Same},
                      PoolCase{"max_same_overlapping", true, Size2(3), Size2(2), Padding::Same},
                      PoolCase{"max_valid_stride1", true, Size2(3, 2), Size2(1), Padding::Valid},
                      PoolCase{"avg_valid", false, Size2(2), Size2(0), Padding::Valid},
                      PoolCase{"avg_same", false, Size2(2), Size2(0), Padding::Same},
                      PoolCase{"avg_same_overlapping", false, Size2(3), Size2(2), Padding::Same},
                      PoolCase{"avg_same_stride1", false, Size2(3, 2), Size2(1), Padding::Same}),
    [](const ::testing::TestParamInfo<PoolCase>& i) { return std::string(i.param.name); });

TEST(CudaPool, MaxTiesGoToTheFirstMaximumAsOnTheCpu) {
  FASTNN_REQUIRE_CUDA();
  for (Index stride : {1, 2}) {
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      const Pool2DOptions o = Pool2DOptions(3).strides(stride).padding(Padding::Same);
      return std::make_unique<MaxPooling2D<float, decltype(tag)>>(o);
    };
    auto p = make_layer_pair<float>(make, Shape{6, 5, 2}, 15);
    Rng rng(16);
    Tensor<float, Cpu> x(Shape{2, 6, 5, 2});
    for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.below(3)) * 0.5f;  // many ties
    check_parity_on(p, x, 17);
  }
}

TEST(CudaPool, OneDimensionalWithLengthsMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  for (bool max : {true, false}) {
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      using D = decltype(tag);
      const Pool1DOptions o = Pool1DOptions(3).strides(2).padding(Padding::Same);
      if (max) return std::make_unique<MaxPooling1D<float, D>>(o);
      return std::make_unique<AveragePooling1D<float, D>>(o);
    };
    auto p = make_layer_pair<float>(make, Shape{10, 3}, 18);
    check_layer_parity(p, Shape{3, 10, 3}, 19, kRtolFloat);
    set_lengths(p, {10, 5, 2});
    check_layer_parity(p, Shape{3, 10, 3}, 20, kRtolFloat);
  }
}

TEST(CudaGlobalPool, AllKindsMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  auto run = [&](auto make, const Shape& in, const Shape& batch) {
    auto p = make_layer_pair<float>(make, in, 21);
    check_layer_parity(p, batch, 22, kRtolFloat);
  };
  auto gap1 = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<GlobalAveragePooling1D<float, decltype(tag)>>();
  };
  auto gmp1 = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<GlobalMaxPooling1D<float, decltype(tag)>>();
  };
  auto gap2 = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<GlobalAveragePooling2D<float, decltype(tag)>>();
  };
  auto gmp2 = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<GlobalMaxPooling2D<float, decltype(tag)>>();
  };
  run(gap1, Shape{7, 5}, Shape{4, 7, 5});
  run(gmp1, Shape{7, 5}, Shape{4, 7, 5});
  run(gap2, Shape{4, 3, 6}, Shape{4, 4, 3, 6});
  run(gmp2, Shape{4, 3, 6}, Shape{4, 4, 3, 6});
}

TEST(CudaGlobalPool, OneDimensionalWithLengthsMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  for (bool max : {true, false}) {
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      using D = decltype(tag);
      if (max) return std::make_unique<GlobalMaxPooling1D<float, D>>();
      return std::make_unique<GlobalAveragePooling1D<float, D>>();
    };
    auto p = make_layer_pair<float>(make, Shape{8, 5}, 23);
    set_lengths(p, {8, 3, 1, 6});
    check_layer_parity(p, Shape{4, 8, 5}, 24, kRtolFloat);
  }
}

// ---- BatchNormalization ------------------------------------------------------------------------

TEST(CudaBatchNorm, TrainingAndInferenceMatchCpuWithTheSameMovingStatistics) {
  FASTNN_REQUIRE_CUDA();
  for (bool scale : {true, false}) {
    const BatchNormalizationOptions o = BatchNormalizationOptions().momentum(0.9).scale(scale).center(scale);
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      return std::make_unique<BatchNormalization<float, decltype(tag)>>(o);
    };
    auto p = make_layer_pair<float>(make, Shape{5, 4, 37}, 25);
    // moving_variance must be positive for inference
    Tensor<float, Cpu> params = p.pc.clone();
    for (Index i = params.size() - 37; i < params.size(); ++i) params[i] = 0.5f + std::abs(params[i]);
    copy_into(params, p.pc);
    copy_across(params, p.pg);
    check_layer_parity(p, Shape{6, 5, 4, 37}, 26, kRtolFloat, Mode::Train);
    EXPECT_TRUE(close(p.pc, p.pg, kRtolFloat)) << "moving statistics after a training step";
    check_layer_parity(p, Shape{6, 5, 4, 37}, 27, kRtolFloat, Mode::Infer);
    // backward with the moving statistics (a frozen layer in training)
    p.cpu->set_trainable(false);
    p.gpu->set_trainable(false);
    check_layer_parity(p, Shape{3, 5, 4, 37}, 28, kRtolFloat, Mode::Train);
    EXPECT_TRUE(close(p.pc, p.pg, kRtolFloat)) << "a frozen layer keeps its moving statistics";
  }
}

// ---- Permute, Reshape, Activation --------------------------------------------------------------

TEST(CudaReshaping, PermuteReshapeAndActivationMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  auto perm = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<Permute<float, decltype(tag)>>(PermuteOptions({3, 1, 2}));
  };
  auto p1 = make_layer_pair<float>(perm, Shape{4, 5, 6}, 29);
  check_layer_parity(p1, Shape{3, 4, 5, 6}, 30, kRtolFloat);
  auto resh = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<Reshape<float, decltype(tag)>>(ReshapeOptions({-1, 10}));
  };
  auto p2 = make_layer_pair<float>(resh, Shape{4, 5, 6}, 31);
  check_layer_parity(p2, Shape{3, 4, 5, 6}, 32, kRtolFloat);
  auto act = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<ActivationLayer<float, decltype(tag)>>(ActivationOptions(Activation::Softmax));
  };
  auto p3 = make_layer_pair<float>(act, Shape{4, 6}, 33);
  check_layer_parity(p3, Shape{3, 4, 6}, 34, kRtolFloat);
}

// ---- a small CNN trained on both devices -------------------------------------------------------

/// n random images [8, 8, 2] with 3 classes (for training-step parity, not learnability).
Dataset<float, Cpu> random_images(Index n, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<float, Cpu> x = random_tensor<float>(Shape{n, 8, 8, 2}, rng);
  Tensor<std::int32_t, Cpu> labels(Shape{n});
  for (Index i = 0; i < n; ++i) labels[i] = static_cast<std::int32_t>(rng.below(3));
  return make_dataset(x, labels, 3);
}

TEST(CudaSmallCnn, TwoEpochsGiveTheCpuHistory) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float, Cpu> m;
  m.add<Conv2D>(Conv2DOptions(4, 3).padding(Padding::Same).activation(Activation::Relu));
  m.add<BatchNormalization>(BatchNormalizationOptions());
  m.add<MaxPooling2D>(Pool2DOptions(2));
  m.add<Conv2D>(Conv2DOptions(6, 2).padding(Padding::Same).strides(2));
  m.add<AveragePooling2D>(Pool2DOptions(2).strides(1).padding(Padding::Same));
  m.add<GlobalAveragePooling2D>();
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({8, 8, 2}, 35);
  m.compile(std::make_unique<Adam<float>>(0.01));
  const auto data = random_images(80, 36);
  expect_gpu_trains_like_cpu(m, data);
}

TEST(CudaSmallCnn, OneDimensionalModelMovesToTheGpuThroughTheRegistry) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float, Cpu> m;
  m.add<Reshape>(ReshapeOptions({6, 5}));
  m.add<Conv1D>(Conv1DOptions(8, 3).padding(Padding::Causal).dilation_rate(2).activation(Activation::Relu));
  m.add<MaxPooling1D>(Pool1DOptions(2).padding(Padding::Same));
  m.add<Permute>(PermuteOptions({2, 1}));
  m.add<GlobalMaxPooling1D>();
  m.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  m.build({6, 5}, 37);
  m.compile(std::make_unique<Adam<float>>(0.01));
  expect_gpu_trains_like_cpu(m, random_dataset(64, 38));
}

}  // namespace
