#pragma once
/// \file registry.hpp
/// The layer registry: creates an unbuilt layer on any device from its type name and config()
/// (as recorded in weights files and checkpoints). Used to move a model between devices, to
/// load a model from a file and to check a file's recorded architecture. Every built-in layer
/// is registered; a user's own layer joins with
///
///   fastnn::LayerRegistry<float, fastnn::Cpu>::instance().add("MyLayer",
///       [](const fastnn::Config& c, const std::string& where) { return std::make_unique<MyLayer>(...); });

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "fastnn/core/options.hpp"
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/dense.hpp"
#include "fastnn/layers/dropout.hpp"
#include "fastnn/layers/flatten.hpp"
#include "fastnn/layers/lstm.hpp"

namespace fastnn {

template <class T, class D>
class LayerRegistry {
 public:
  /// Makes a layer from its config; `where` names the layer for error messages.
  using Factory = std::function<std::unique_ptr<Layer<T, D>>(const Config&, const std::string& where)>;

  /// The process-wide registry, holding the built-in layers from the start.
  static LayerRegistry& instance() {
    static LayerRegistry r;
    return r;
  }

  /// Registers (or replaces) the factory of `type`. Thread-safe.
  void add(const std::string& type, Factory f) {
    std::lock_guard<std::mutex> lock(mutex_);
    factories_[type] = std::move(f);
  }
  bool contains(const std::string& type) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return factories_.count(type) != 0;
  }

  /// A fresh, unbuilt layer of `type` with options `c`. Throws MismatchError for an unknown
  /// type or a bad config (missing, unknown or malformed option, or a value the layer refuses).
  std::unique_ptr<Layer<T, D>> make(const std::string& type, const Config& c) const {
    Factory f;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = factories_.find(type);
      if (it == factories_.end()) throw MismatchError("unknown layer type '" + type.substr(0, 64) + "'");
      f = it->second;
    }
    const std::string where = "layer of type " + type;
    try {
      return f(c, where);
    } catch (const ArgumentError& e) {
      throw MismatchError(where + ": " + e.what());
    }
  }

 private:
  /// A factory for a layer constructed from an options struct declared with FASTNN_OPTIONS.
  template <template <class, class> class L, class Options>
  static Factory from_options() {
    return [](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
      Options o;
      options_from_config(o, c, where);
      return std::make_unique<L<T, D>>(o);
    };
  }

  LayerRegistry() {
    factories_["Dense"] = from_options<Dense, DenseOptions>();
    factories_["Dropout"] = from_options<Dropout, DropoutOptions>();
    factories_["LSTM"] = from_options<LSTM, LSTMOptions>();
    factories_["Flatten"] = [](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
      if (!c.empty()) throw MismatchError(where + ": unknown option '" + c.begin()->first.substr(0, 64) + "'");
      return std::make_unique<Flatten<T, D>>();
    };
    // Bidirectional: {"merge_mode", "layer": wrapped type, "layer.<option>": the wrapped layer's}
    factories_["Bidirectional"] = [this](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
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
      auto l = make(type, inner);
      auto* r = dynamic_cast<RecurrentLayer<T, D>*>(l.get());
      if (!r) throw MismatchError(where + ": wrapped layer " + type.substr(0, 64) + " is not recurrent");
      l.release();
      return std::make_unique<Bidirectional<T, D>>(std::unique_ptr<RecurrentLayer<T, D>>(r), mode);
    };
  }

  mutable std::mutex mutex_;
  std::map<std::string, Factory> factories_;
};

/// An unbuilt layer of `type` with options `config` (LayerRegistry<T, D>::instance().make).
template <class T, class D>
std::unique_ptr<Layer<T, D>> make_layer(const std::string& type, const LayerConfig& config) {
  return LayerRegistry<T, D>::instance().make(type, config);
}

}  // namespace fastnn
