#pragma once
/// \file registry.hpp
/// A thread-safe map from a type name to a factory that makes an object from its Config: the
/// common part of the layer registry (layers/registry.hpp) and the optimizer registry
/// (optim/registry.hpp).

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "fastnn/core/error.hpp"
#include "fastnn/core/options.hpp"

namespace fastnn {
namespace detail {

template <class Product>
class Registry {
 public:
  /// Makes an object from its config; `where` names it for error messages.
  using Factory = std::function<std::unique_ptr<Product>(const Config&, const std::string& where)>;

  /// Messages: "unknown <what> '<type>'<known>" for an unknown type (e.g. what = "optimizer",
  /// known = " (SGD, Adam, RMSprop)"), and errors in a config start with "<where><type>: "
  /// (e.g. where = "layer of type ").
  Registry(std::string what, std::string known, std::string where)
      : what_(std::move(what)), known_(std::move(known)), where_(std::move(where)) {}

  /// Registers (or replaces) the factory of `type`.
  void add(const std::string& type, Factory f) {
    std::lock_guard<std::mutex> lock(mutex_);
    factories_[type] = std::move(f);
  }
  bool contains(const std::string& type) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return factories_.count(type) != 0;
  }

  /// A fresh object of `type` with options `c`. Throws MismatchError for an unknown type or a
  /// bad config (missing, unknown or malformed option, or a value the object refuses).
  std::unique_ptr<Product> make(const std::string& type, const Config& c) const {
    Factory f;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = factories_.find(type);
      if (it == factories_.end()) throw MismatchError("unknown " + what_ + " '" + type.substr(0, 64) + "'" + known_);
      f = it->second;
    }
    const std::string where = where_ + type;
    try {
      return f(c, where);
    } catch (const ArgumentError& e) {
      throw MismatchError(where + ": " + e.what());
    }
  }

  /// A factory for a `Made` constructed from an options struct declared with FASTNN_OPTIONS.
  template <class Made, class Options>
  static Factory from_options() {
    return [](const Config& c, const std::string& where) -> std::unique_ptr<Product> {
      Options o;
      options_from_config(o, c, where);
      return std::make_unique<Made>(o);
    };
  }

 private:
  std::string what_, known_, where_;
  mutable std::mutex mutex_;
  std::map<std::string, Factory> factories_;
};

}  // namespace detail
}  // namespace fastnn
