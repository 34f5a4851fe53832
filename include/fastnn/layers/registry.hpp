#pragma once
/// \file registry.hpp
/// The layer registry: creates an unbuilt layer on any device from its type name and config()
/// (as recorded in weights files and checkpoints). Used to move a model between devices, to
/// load a model from a file and to check a file's recorded architecture. Every built-in layer
/// is registered; a user's own layer joins with
///
///   fastnn::LayerRegistry<float, fastnn::Cpu>::instance().add("MyLayer",
///       [](const fastnn::Config& c, const std::string& where) { return std::make_unique<MyLayer>(...); });

#include <memory>
#include <string>

#include "fastnn/core/options.hpp"
#include "fastnn/core/registry.hpp"
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/dense.hpp"
#include "fastnn/layers/dropout.hpp"
#include "fastnn/layers/embedding.hpp"
#include "fastnn/layers/flatten.hpp"
#include "fastnn/layers/gru.hpp"
#include "fastnn/layers/lstm.hpp"
#include "fastnn/layers/masking.hpp"
#include "fastnn/layers/simple_rnn.hpp"

namespace fastnn {

template <class T, class D>
class LayerRegistry : public detail::Registry<Layer<T, D>> {
  using Base = detail::Registry<Layer<T, D>>;

 public:
  /// The process-wide registry, holding the built-in layers from the start.
  static LayerRegistry& instance() {
    static LayerRegistry r;
    return r;
  }

 private:
  LayerRegistry() : Base("layer type", "", "layer of type ") {
    this->add("Dense", Base::template from_options<Dense<T, D>, DenseOptions>());
    this->add("Dropout", Base::template from_options<Dropout<T, D>, DropoutOptions>());
    this->add("LSTM", Base::template from_options<LSTM<T, D>, LSTMOptions>());
    this->add("GRU", Base::template from_options<GRU<T, D>, GRUOptions>());
    this->add("SimpleRNN", Base::template from_options<SimpleRNN<T, D>, SimpleRNNOptions>());
    this->add("Embedding", Base::template from_options<Embedding<T, D>, EmbeddingOptions>());
    this->add("Masking", Base::template from_options<Masking<T, D>, MaskingOptions>());
    this->add("Flatten", [](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
      if (!c.empty()) throw MismatchError(where + ": unknown option '" + c.begin()->first.substr(0, 64) + "'");
      return std::make_unique<Flatten<T, D>>();
    });
    // Bidirectional: {"merge_mode", "layer": wrapped type, "layer.<option>": the wrapped layer's}
    this->add("Bidirectional", [this](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
      Config inner;
      std::string type;
      MergeMode mode = MergeMode::Concat;
      bool has_mode = false;
      for (const auto& kv : c) {
        if (kv.first.rfind("layer.", 0) == 0) inner[kv.first.substr(6)] = kv.second;
        else if (kv.first == "layer") type = kv.second;
        else if (kv.first == "merge_mode") {
          if (!from_string(kv.second, mode))
            throw MismatchError(where + ": 'merge_mode' must be concat, sum, mul or ave, got '" +
                                kv.second.substr(0, 64) + "'");
          has_mode = true;
        } else {
          throw MismatchError(where + ": unknown option '" + kv.first.substr(0, 64) + "'");
        }
      }
      if (type.empty()) throw MismatchError(where + ": configuration lacks 'layer'");
      if (!has_mode) throw MismatchError(where + ": configuration lacks 'merge_mode'");
      auto l = this->make(type, inner);
      auto* r = dynamic_cast<RecurrentLayer<T, D>*>(l.get());
      if (!r) throw MismatchError(where + ": wrapped layer " + type.substr(0, 64) + " is not recurrent");
      l.release();
      return std::make_unique<Bidirectional<T, D>>(std::unique_ptr<RecurrentLayer<T, D>>(r), mode);
    });
  }
};

/// An unbuilt layer of `type` with options `config` (LayerRegistry<T, D>::instance().make).
template <class T, class D>
std::unique_ptr<Layer<T, D>> make_layer(const std::string& type, const LayerConfig& config) {
  return LayerRegistry<T, D>::instance().make(type, config);
}

}  // namespace fastnn
