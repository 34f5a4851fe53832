#pragma once
/// \file torch_defaults.hpp
/// PyTorch's default initialisation as one named choice, so that a model ported from PyTorch starts the same way:
///
///   Dense      nn.Linear: kernel and bias U(-1/sqrt(in), 1/sqrt(in)), `in` the input features
///              (kaiming_uniform with a = sqrt(5) has exactly that bound)
///   LSTM, GRU, SimpleRNN   nn.LSTM / nn.GRU / nn.RNN: every weight and bias U(-1/sqrt(units), 1/sqrt(units));
///              PyTorch holds two biases per gate (b_ih + b_hh) where an LSTM, a SimpleRNN and a GRU without
///              reset_after hold one: that bias is the sum of two independent draws (uniform_fan_in(draws=2)), so it
///              has the distribution of PyTorch's b_ih + b_hh; a GRU with reset_after holds both ([2, 3H]), each
///              drawn once. An LSTM's unit_forget_bias is turned off (PyTorch has none).
///   Embedding  nn.Embedding: N(0, 1) (random_normal(mean=0,stddev=1))
///   Bidirectional          its wrapped layer's, for both directions
///
/// Other layers have no weights to initialise and are unchanged. Applies to a layer's options
/// (`torch_defaults(DenseOptions(10))`), a configuration, an unbuilt or built layer (a fresh unbuilt copy) and a
/// whole model (torch_defaults_into). The values drawn are PyTorch's distributions, not its random stream.

#include <memory>
#include <string>

#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/registry.hpp"

namespace fastnn {
namespace init {

inline DenseOptions torch_defaults(DenseOptions o) {
  return o.kernel_initializer(Initializer::uniform_fan_in()).bias_initializer(Initializer::uniform_fan_in());
}
inline LSTMOptions torch_defaults(LSTMOptions o) {
  o.kernel_initializer(Initializer::uniform_fan_in()).recurrent_initializer(Initializer::uniform_fan_in());
  return o.bias_initializer(Initializer::uniform_fan_in(2)).unit_forget_bias(false);
}
inline GRUOptions torch_defaults(GRUOptions o) {
  o.kernel_initializer(Initializer::uniform_fan_in()).recurrent_initializer(Initializer::uniform_fan_in());
  return o.bias_initializer(Initializer::uniform_fan_in(o.reset_after() ? 1 : 2));
}
inline SimpleRNNOptions torch_defaults(SimpleRNNOptions o) {
  o.kernel_initializer(Initializer::uniform_fan_in()).recurrent_initializer(Initializer::uniform_fan_in());
  return o.bias_initializer(Initializer::uniform_fan_in(2));
}
inline EmbeddingOptions torch_defaults(EmbeddingOptions o) {
  return o.embeddings_initializer(Initializer::random_normal(0.0, 1.0));
}

/// The configuration `c` of a layer of `type` with PyTorch's initialisers (unchanged for a layer without any).
inline Config torch_defaults(const std::string& type, Config c) {
  const std::string one = Initializer::uniform_fan_in().text(), two = Initializer::uniform_fan_in(2).text();
  if (type == "Dense") {
    c["kernel_initializer"] = c["bias_initializer"] = one;
  } else if (type == "LSTM" || type == "GRU" || type == "SimpleRNN") {
    c["kernel_initializer"] = c["recurrent_initializer"] = one;
    const auto ra = c.find("reset_after");
    c["bias_initializer"] = type == "GRU" && ra != c.end() && ra->second == "true" ? one : two;
    if (type == "LSTM") c["unit_forget_bias"] = "false";
  } else if (type == "Embedding") {
    c["embeddings_initializer"] = Initializer::random_normal(0.0, 1.0).text();
  } else if (type == "Bidirectional") {
    const auto it = c.find("layer");
    if (it == c.end()) return c;
    Config inner, out;
    for (const auto& kv : c) {
      if (kv.first.rfind("layer.", 0) == 0) inner[kv.first.substr(6)] = kv.second;
      else out[kv.first] = kv.second;
    }
    for (const auto& kv : torch_defaults(it->second, inner)) out["layer." + kv.first] = kv.second;
    return out;
  }
  return c;
}

/// A fresh, unbuilt copy of `layer` (built or not) with PyTorch's initialisers, made by the layer registry (a layer
/// of a type the registry does not know is a MismatchError).
template <class T, class D>
std::unique_ptr<Layer<T, D>> torch_defaults(const Layer<T, D>& layer) {
  return make_layer<T, D>(layer.type_name(), torch_defaults(layer.type_name(), layer.config()));
}

/// Adds to `dst` (an empty, unbuilt model: Sequential or alike) a copy of every layer of `src` with PyTorch's
/// initialisers; build `dst` to draw its weights.
template <class Model>
void torch_defaults_into(const Model& src, Model& dst) {
  for (std::size_t i = 0; i < src.num_layers(); ++i) dst.add(torch_defaults(src.layer(i)));
}

}  // namespace init
}  // namespace fastnn
