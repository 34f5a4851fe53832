#pragma once
/// \file gradcheck.hpp
/// Finite-difference gradient checking for any Layer<double, Cpu> (dlib's test_layer, mlpack's
/// CheckGradient). The scalar checked is L = sum(y * r) for a fixed random r, so dL/dy = r:
/// backward(r) must give the same dL/dx and dL/dparam as central differences
/// (L(v + h) - L(v - h)) / 2h. The error reported per tensor is the norm-wise relative error
/// ||analytic - numeric|| / max(||analytic|| + ||numeric||, tiny).

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fastnn/layers/layer.hpp"

namespace fastnn {
namespace testing {

/// Relative error of one tensor's gradient.
struct GradError {
  std::string name;  ///< "input" or the parameter's name
  double rel_error = 0;
  double max_abs_diff = 0;
};

inline double rel_error(const std::vector<double>& a, const std::vector<double>& n, double* max_abs = nullptr) {
  double diff = 0, na = 0, nn = 0, mx = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - n[i]) * (a[i] - n[i]);
    na += a[i] * a[i];
    nn += n[i] * n[i];
    mx = std::max(mx, std::fabs(a[i] - n[i]));
  }
  if (max_abs) *max_abs = mx;
  return std::sqrt(diff) / std::max(std::sqrt(na) + std::sqrt(nn), 1e-300);
}

/// Checks the input gradient and every parameter gradient of `layer` (built, bound and
/// initialised) at input `x`. `max_checks` limits how many elements of each tensor are
/// perturbed (spread evenly). Returns one GradError per tensor, the input's first unless
/// `check_input` is false (an Embedding's integer ids have no gradient).
inline std::vector<GradError> check_gradients(Layer<double, Cpu>& layer, const Tensor<double, Cpu>& x, Rng& rng,
                                              double h = 1e-6, Index max_checks = 400, bool check_input = true) {
  Tensor<double, Cpu> y, dx;
  layer.forward(x, y, Mode::Train);
  Tensor<double, Cpu> r(y.shape());
  for (Index i = 0; i < r.size(); ++i) r[i] = rng.uniform(-1, 1);
  for (auto& p : layer.parameters()) p.grad.set_zero();
  layer.backward(x, y, r, &dx);

  auto loss = [&](const Tensor<double, Cpu>& xin) {
    Tensor<double, Cpu> yy;
    layer.forward(xin, yy, Mode::Train);
    double s = 0;
    for (Index i = 0; i < yy.size(); ++i) s += yy[i] * r[i];
    return s;
  };
  auto numeric = [&](double* v, Index n, const Tensor<double, Cpu>& xin, const double* analytic,
                     std::vector<double>& a, std::vector<double>& nm) {
    const Index stride = std::max<Index>(1, n / max_checks);
    for (Index i = 0; i < n; i += stride) {
      const double old = v[i];
      v[i] = old + h;
      const double lp = loss(xin);
      v[i] = old - h;
      const double lm = loss(xin);
      v[i] = old;
      nm.push_back((lp - lm) / (2 * h));
      a.push_back(analytic[i]);
    }
  };
  std::vector<GradError> out;
  if (check_input) {
    Tensor<double, Cpu> xc = x.clone();
    std::vector<double> a, nm;
    numeric(xc.data(), xc.size(), xc, dx.data(), a, nm);
    GradError e{"input", 0, 0};
    e.rel_error = rel_error(a, nm, &e.max_abs_diff);
    out.push_back(e);
  }
  for (auto& p : layer.parameters()) {
    Tensor<double, Cpu> g = p.grad.clone();  // analytic, before perturbation runs overwrite state
    std::vector<double> a, nm;
    numeric(p.value.data(), p.value.size(), x, g.data(), a, nm);
    GradError e{p.name, 0, 0};
    e.rel_error = rel_error(a, nm, &e.max_abs_diff);
    out.push_back(e);
  }
  return out;
}

/// Builds `layer` for per-sample `input_shape`, binds fresh storage and initialises it.
/// Returns the storage (keep it alive as long as the layer).
template <class T>
std::pair<Tensor<T, Cpu>, Tensor<T, Cpu>> build_standalone(Layer<T, Cpu>& layer, const Shape& input_shape,
                                                            Rng& rng, const std::string& name = "layer") {
  layer.set_name(name);
  layer.build(input_shape);
  const Index n = layer.param_count();
  Tensor<T, Cpu> v = Tensor<T, Cpu>::zeros(Shape{n}), g = Tensor<T, Cpu>::zeros(Shape{n});
  layer.bind_parameters(v, g);
  layer.initialize(rng);
  return {v, g};
}

}  // namespace testing
}  // namespace fastnn
