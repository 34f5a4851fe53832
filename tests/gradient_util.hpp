#pragma once
// The finite-difference check of one layer that the layer suites share: builds the layer alone,
// moves its parameters away from their initial values (zero biases would hide bias bugs), draws
// an input and compares every gradient with central differences (fastnn/testing/gradcheck.hpp).

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>

#include "fastnn/testing/gradcheck.hpp"
#include "test_util.hpp"

namespace fastnn_test {

/// Largest relative error accepted between an analytic gradient and central differences (double).
constexpr double kGradTol = 1e-6;

struct GradCheck {
  bool perturb = true;                       // add uniform(-0.3, 0.3) to every parameter
  double lo = -1, hi = 1;                    // the input's range (when `input` is empty)
  fastnn::Lengths lengths;                   // per-sample lengths given to the layer (none: every step real)
  bool check_input = true;                   // also check the gradient with respect to the input
  std::function<fastnn::Tensor<double, fastnn::Cpu>(fastnn::Rng&)> input;  // draws the input instead
  bool print = false;                        // print each tensor's error, for the record
};

/// Checks the input (unless opt.check_input is false) and every trainable parameter of `layer` on a
/// batch of `batch` samples of shape `in`; a non-trainable parameter (BatchNormalization's moving
/// statistics) is not a function the layer differentiates and is skipped. Returns the largest
/// relative error.
inline double expect_layer_gradients(fastnn::Layer<double, fastnn::Cpu>& layer, const fastnn::Shape& in,
                                     fastnn::Index batch, std::uint64_t seed, const GradCheck& opt = GradCheck()) {
  fastnn::Rng rng(seed);
  auto storage = fastnn::testing::build_standalone(layer, in, rng);
  if (opt.perturb)
    for (fastnn::Index i = 0; i < storage.first.size(); ++i) storage.first[i] += rng.uniform(-0.3, 0.3);
  auto x = opt.input ? opt.input(rng) : random_tensor(in.prepend(batch), rng, opt.lo, opt.hi);
  layer.set_input_lengths(opt.lengths);
  const auto errs = fastnn::testing::check_gradients(layer, x, rng, 1e-6, 400, opt.check_input);
  const std::size_t first_param = opt.check_input ? 1 : 0;
  EXPECT_EQ(errs.size(), layer.parameters().size() + first_param);
  const auto specs = layer.param_specs();
  double worst = 0;
  for (std::size_t i = 0; i < errs.size(); ++i) {
    if (i >= first_param && i - first_param < specs.size() && !specs[i - first_param].trainable) continue;
    const auto& e = errs[i];
    EXPECT_LT(e.rel_error, kGradTol) << layer.type_name() << " " << e.name << " max abs diff " << e.max_abs_diff;
    if (opt.print)
      std::printf("  FD %s %s %s: relative error %.3g\n", layer.type_name().c_str(), in.str().c_str(),
                  e.name.c_str(), e.rel_error);
    worst = std::max(worst, e.rel_error);
  }
  return worst;
}

}  // namespace fastnn_test
