#pragma once
/// \file activation.hpp
/// Activation functions by name, shared by the layers, the losses and the device backends.

#include <string>

#include "fastnn/core/error.hpp"

namespace fastnn {

/// Element-wise (or, for softmax, row-wise) activation.
enum class Activation { Linear, Relu, Tanh, Sigmoid, HardSigmoid, Softmax };

/// Keras's name of an activation ("linear", "relu", "tanh", "sigmoid", "hard_sigmoid", "softmax").
inline std::string to_string(Activation a) {
  switch (a) {
    case Activation::Linear: return "linear";
    case Activation::Relu: return "relu";
    case Activation::Tanh: return "tanh";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::HardSigmoid: return "hard_sigmoid";
    case Activation::Softmax: return "softmax";
  }
  return "?";
}

/// Parses a Keras activation name into `out`; false for an unknown name.
inline bool from_string(const std::string& s, Activation& out) {
  for (Activation a : {Activation::Linear, Activation::Relu, Activation::Tanh, Activation::Sigmoid,
                       Activation::HardSigmoid, Activation::Softmax})
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
                      "' (expected linear, relu, tanh, sigmoid, hard_sigmoid or softmax)");
}

}  // namespace fastnn
