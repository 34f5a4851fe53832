#pragma once
/// \file clip.hpp
/// Gradient clipping for loops of one's own, with LibTorch's semantics (torch.nn.utils.clip_grad_norm_ and
/// clip_grad_value_), over the trainable ranges of a flat gradient buffer (core/parameter.hpp):
///
///   model.compute_gradients(x, y);
///   const double norm = clip_grad_norm(model, 1.0);   // the norm before clipping
///   model.apply_gradients();
///
/// The model overloads take any model with flat_gradients() and parameter_layout() (Sequential). The sums and the
/// scaling run on the gradients' device through Ops (the optimizer's clipping uses the same primitives); only the
/// norm comes back to the host.

#include <cmath>
#include <string>
#include <vector>

#include "fastnn/backend/ops.hpp"
#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/parameter.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

inline void check_clip_argument(double v, const char* fn, const char* name) {
  if (!(v >= 0) || !std::isfinite(v))
    throw ArgumentError(std::string(fn) + ": " + name + " must be finite and >= 0, got " + format_number(v));
}

inline std::vector<ParamRange> whole(Index n) { return {ParamRange{"", 0, n, true}}; }

}  // namespace detail

/// Scales the trainable gradients so that their global L2 norm is at most `max_norm`, as
/// torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), applied when below 1. Returns the norm
/// before clipping (the squares summed in double, range by range). An empty layout means the whole buffer.
/// NonFiniteError (nothing changed) when the norm is not finite; ArgumentError for a negative or NaN max_norm.
template <class T, class D>
double clip_grad_norm(Tensor<T, D>& grads, std::vector<ParamRange> layout, double max_norm) {
  detail::check_clip_argument(max_norm, "clip_grad_norm", "max_norm");
  if (layout.empty()) layout = detail::whole(grads.size());
  Tensor<double, D> sq(Shape{1});
  Ops<double, D>::fill(sq, 0.0);
  for (const auto& r : layout)
    if (r.trainable && r.size > 0) Ops<T, D>::sum_squares(grads.view(r.offset, Shape{r.size}), sq, 0);
  const double norm = std::sqrt(to_device<Cpu>(sq)[0]);
  if (!std::isfinite(norm)) throw NonFiniteError("clip_grad_norm: the gradients' norm is " + format_number(norm));
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    for (const auto& r : layout)
      if (r.trainable && r.size > 0) {
        Tensor<T, D> g = grads.view(r.offset, Shape{r.size});
        Ops<T, D>::scale(g, static_cast<T>(coef));
      }
  return norm;
}

/// Clamps every trainable gradient to [-clip_value, clip_value], as torch.nn.utils.clip_grad_value_.
template <class T, class D>
void clip_grad_value(Tensor<T, D>& grads, std::vector<ParamRange> layout, double clip_value) {
  detail::check_clip_argument(clip_value, "clip_grad_value", "clip_value");
  if (layout.empty()) layout = detail::whole(grads.size());
  for (const auto& r : layout)
    if (r.trainable && r.size > 0) {
      Tensor<T, D> g = grads.view(r.offset, Shape{r.size});
      Ops<T, D>::clip_by_value(g, static_cast<T>(clip_value));
    }
}

/// clip_grad_norm over a model's trainable parameters (after compute_gradients()).
template <class Model>
auto clip_grad_norm(Model& m, double max_norm) -> decltype(m.flat_gradients(), m.parameter_layout(), double()) {
  return clip_grad_norm(m.flat_gradients(), m.parameter_layout(), max_norm);
}
/// clip_grad_value over a model's trainable parameters.
template <class Model>
auto clip_grad_value(Model& m, double clip_value) -> decltype(m.flat_gradients(), m.parameter_layout(), void()) {
  clip_grad_value(m.flat_gradients(), m.parameter_layout(), clip_value);
}

}  // namespace fastnn
