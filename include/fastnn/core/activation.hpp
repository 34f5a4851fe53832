#pragma once
/// \file activation.hpp
/// Activation functions by name, shared by the layers, the losses and the device backends.

#include <string>

#include "fastnn/core/error.hpp"

namespace fastnn {

/// Element-wise (or, for softmax, row-wise) activation. Keras's definitions:
///   gelu(x) = x Phi(x) = x (1 + erf(x / sqrt(2))) / 2  (Keras's default, approximate=False), computed as
///             x erfc(-x / sqrt(2)) / 2, which keeps its relative accuracy for x < 0
///   swish(x) = x sigmoid(x)     softplus(x) = log(1 + exp(x))
enum class Activation { Linear, Relu, Tanh, Sigmoid, HardSigmoid, Softmax, Gelu, Swish, Softplus };

/// Whether the derivative of `a` needs its input, not only its output (gelu, swish): a layer that applies it keeps
/// the pre-activation for backward (Ops::activation_backward_input).
inline bool activation_needs_input(Activation a) { return a == Activation::Gelu || a == Activation::Swish; }

/// Keras's name of an activation ("linear", "relu", "tanh", "sigmoid", "hard_sigmoid", "softmax", "gelu", "swish",
/// "softplus").
inline std::string to_string(Activation a) {
  switch (a) {
    case Activation::Linear: return "linear";
    case Activation::Relu: return "relu";
    case Activation::Tanh: return "tanh";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::HardSigmoid: return "hard_sigmoid";
    case Activation::Softmax: return "softmax";
    case Activation::Gelu: return "gelu";
    case Activation::Swish: return "swish";
    case Activation::Softplus: return "softplus";
  }
  return "?";
}

/// Parses a Keras activation name into `out`; false for an unknown name.
inline bool from_string(const std::string& s, Activation& out) {
  for (Activation a : {Activation::Linear, Activation::Relu, Activation::Tanh, Activation::Sigmoid,
                       Activation::HardSigmoid, Activation::Softmax, Activation::Gelu, Activation::Swish,
                       Activation::Softplus})
    if (to_string(a) == s) {
      out = a;
      return true;
    }
  return false;
}

/// Parses a Keras activation name; throws ArgumentError listing the valid names.
inline Activation activation_from_string(const std::string& s) {
  Activation a = Activation::Linear;
  if (from_string(s, a)) return a;
  throw ArgumentError("unknown activation '" + s +
                      "' (expected linear, relu, tanh, sigmoid, hard_sigmoid, softmax, gelu, swish or softplus)");
}

}  // namespace fastnn
