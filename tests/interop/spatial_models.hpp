// The spatial models that both the PyTorch interop check (tests/interop/spatial_export.cpp) and
// the ONNX export check (tests/onnx/test_onnx_export.cpp) run: each is built, moved off its
// initialisation and trained a few steps on random data, so that the BatchNormalization layers
// hold moving statistics away from 0 and 1 and every bias is non-zero.
#pragma once

#include <fastnn/vision.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spatial_models {

using Model = fastnn::Sequential<float>;

struct Spec {
  std::string name;
  fastnn::Shape input;  // per sample
  void (*add_layers)(Model&);
};

/// (a) The Fashion-MNIST CNN (examples' fashion_cnn): two Conv2D(3x3, same) + BatchNormalization +
/// Activation(relu) + MaxPooling2D(2) blocks, Flatten, Dense(128, relu), Dense(10, softmax).
inline void fashion_cnn(Model& m) {
  using namespace fastnn;
  m.add<Conv2D>(Conv2DOptions(32, 3).padding(Padding::Same));
  m.add<BatchNormalization>();
  m.add<ActivationLayer>(ActivationOptions(Activation::Relu));
  m.add<MaxPooling2D>(Pool2DOptions(2));
  m.add<Conv2D>(Conv2DOptions(64, 3).padding(Padding::Same));
  m.add<BatchNormalization>(BatchNormalizationOptions().momentum(0.9));
  m.add<ActivationLayer>(ActivationOptions(Activation::Relu));
  m.add<MaxPooling2D>(Pool2DOptions(2));
  m.add<Flatten>();
  m.add<Dense>(DenseOptions(128).activation(Activation::Relu));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
}

/// (b) Conv1D causal with dilation 2, Conv1D strides 2 same (on 20 steps: padding 0 before, 1
/// after), GlobalAveragePooling1D, Dense(softmax).
inline void conv1d(Model& m) {
  using namespace fastnn;
  m.add<Conv1D>(Conv1DOptions(8, 3).padding(Padding::Causal).dilation_rate(2).activation(Activation::Relu));
  m.add<Conv1D>(Conv1DOptions(12, 3).strides(2).padding(Padding::Same).activation(Activation::Tanh));
  m.add<GlobalAveragePooling1D>();
  m.add<Dense>(DenseOptions(5).activation(Activation::Softmax));
}

/// (c) Conv2D groups 2, valid, strides 2; AveragePooling2D(3, strides 2, same: asymmetric padding
/// of the columns); BatchNormalization; GlobalMaxPooling2D; Dense(softmax).
inline void grouped(Model& m) {
  using namespace fastnn;
  m.add<Conv2D>(Conv2DOptions(8, 3).groups(2).strides(2).activation(Activation::Relu));
  m.add<AveragePooling2D>(Pool2DOptions(3).strides(2).padding(Padding::Same));
  m.add<BatchNormalization>(BatchNormalizationOptions().momentum(0.8).epsilon(1e-2));
  m.add<GlobalMaxPooling2D>();
  m.add<Dense>(DenseOptions(6).activation(Activation::Softmax));
}

/// (d) The other options: a dilated (gelu) and a strided Conv2D with non-square kernels and same padding,
/// MaxPooling2D same (asymmetric), Permute, Reshape, MaxPooling1D same, AveragePooling1D
/// valid with strides 1, BatchNormalization on a sequence, Activation(sigmoid), a grouped Conv1D
/// without bias (swish), Activation(softplus), GlobalMaxPooling1D, Dense(softmax).
inline void misc(Model& m) {
  using namespace fastnn;
  m.add<Conv2D>(Conv2DOptions(6, Size2(3, 2)).padding(Padding::Same).dilation_rate(Size2(1, 2))
                    .activation(Activation::Gelu));
  m.add<Conv2D>(Conv2DOptions(6, Size2(2, 3)).padding(Padding::Same).strides(Size2(2, 1))
                    .activation(Activation::Tanh));
  m.add<MaxPooling2D>(Pool2DOptions(Size2(2, 3)).padding(Padding::Same));
  m.add<Permute>(PermuteOptions({2, 1, 3}));
  m.add<Reshape>(ReshapeOptions({4, -1}));
  m.add<MaxPooling1D>(Pool1DOptions(2).strides(1).padding(Padding::Same));
  m.add<AveragePooling1D>(Pool1DOptions(2).strides(1));
  m.add<BatchNormalization>(BatchNormalizationOptions().momentum(0.7));
  m.add<ActivationLayer>(ActivationOptions(Activation::Sigmoid));
  m.add<Conv1D>(Conv1DOptions(6, 2).groups(3).use_bias(false).padding(Padding::Same).activation(Activation::Swish));
  m.add<ActivationLayer>(ActivationOptions(Activation::Softplus));
  m.add<GlobalMaxPooling1D>();
  m.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
}

inline std::vector<Spec> specs() {
  return {{"fashion_cnn", fastnn::Shape{28, 28, 1}, fashion_cnn},
          {"conv1d", fastnn::Shape{20, 6}, conv1d},
          {"grouped", fastnn::Shape{15, 13, 4}, grouped},
          {"misc", fastnn::Shape{12, 11, 3}, misc}};
}

/// n inputs of `shape` uniform in [lo, hi).
inline fastnn::Tensor<float, fastnn::Cpu> uniform(fastnn::Index n, const fastnn::Shape& shape, fastnn::Rng& rng,
                                                  double lo = -1, double hi = 1) {
  fastnn::Tensor<float, fastnn::Cpu> x(shape.prepend(n));
  for (fastnn::Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(lo, hi));
  return x;
}

/// The model of `s`, built with `seed`, every parameter moved by uniform noise in [-0.05, 0.05],
/// then trained (Adam, sparse categorical cross-entropy) for 3 epochs of 8 batches of 32 random
/// inputs with random labels: the BatchNormalization layers' moving statistics move away from 0
/// and 1.
inline std::unique_ptr<Model> trained(const Spec& s, std::uint64_t seed) {
  using namespace fastnn;
  auto m = std::make_unique<Model>();
  s.add_layers(*m);
  m->build(s.input, seed);
  Rng rng(seed * 7919 + 13);
  Tensor<float, Cpu>& p = m->flat_parameters();
  for (Index i = 0; i < p.size(); ++i) p[i] += static_cast<float>(rng.uniform(-0.05, 0.05));
  const Index n = 256;
  const int classes = static_cast<int>(m->output_shape()[0]);
  Tensor<std::int32_t, Cpu> labels(Shape{n});
  for (Index i = 0; i < n; ++i) labels[i] = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(classes)));
  m->compile(std::make_unique<Adam<float>>(0.005));
  m->fit(make_dataset(uniform(n, s.input, rng, 0, 1), labels, classes),
         FitOptions().epochs(3).batch_size(32).verbose(0));
  return m;
}

}  // namespace spatial_models
