#pragma once
/// \file registry.hpp
/// The optimizer registry: creates an optimizer on any device from its type name and config()
/// (as recorded in checkpoints). Used to move a model between devices and to resume from a
/// checkpoint. SGD, Adam and RMSprop are registered; a user's own optimizer joins with
/// `OptimizerRegistry<T, D>::instance().add("MyOpt", factory)`.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "fastnn/core/options.hpp"
#include "fastnn/optim/optimizer.hpp"

namespace fastnn {

template <class T, class D>
class OptimizerRegistry {
 public:
  using Factory = std::function<std::unique_ptr<Optimizer<T, D>>(const Config&, const std::string& where)>;

  static OptimizerRegistry& instance() {
    static OptimizerRegistry r;
    return r;
  }
  /// Registers (or replaces) the factory of `type`. Thread-safe.
  void add(const std::string& type, Factory f) {
    std::lock_guard<std::mutex> lock(mutex_);
    factories_[type] = std::move(f);
  }

  /// A fresh optimizer (no state) of `type` with options `c`. Throws MismatchError for an unknown
  /// type or a bad config (missing, unknown or malformed option, or a value out of range).
  std::unique_ptr<Optimizer<T, D>> make(const std::string& type, const Config& c) const {
    Factory f;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = factories_.find(type);
      if (it == factories_.end())
        throw MismatchError("unknown optimizer '" + type.substr(0, 64) + "' (SGD, Adam, RMSprop)");
      f = it->second;
    }
    const std::string where = "optimizer " + type;
    try {
      return f(c, where);
    } catch (const ArgumentError& e) {
      throw MismatchError(where + ": " + e.what());
    }
  }

 private:
  template <template <class, class> class O, class Options>
  static Factory from_options() {
    return [](const Config& c, const std::string& where) -> std::unique_ptr<Optimizer<T, D>> {
      Options o;
      options_from_config(o, c, where);
      return std::make_unique<O<T, D>>(o);
    };
  }
  OptimizerRegistry() {
    factories_["SGD"] = from_options<SGD, SGDOptions>();
    factories_["Adam"] = from_options<Adam, AdamOptions>();
    factories_["RMSprop"] = from_options<RMSprop, RMSpropOptions>();
  }

  mutable std::mutex mutex_;
  std::map<std::string, Factory> factories_;
};

/// An optimizer of `type` with options `config` (OptimizerRegistry<T, D>::instance().make).
template <class T, class D>
std::unique_ptr<Optimizer<T, D>> make_optimizer(const std::string& type, const Config& config) {
  return OptimizerRegistry<T, D>::instance().make(type, config);
}

}  // namespace fastnn
