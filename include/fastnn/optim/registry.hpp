#pragma once
/// \file registry.hpp
/// The optimizer registry: creates an optimizer on any device from its type name and config()
/// (as recorded in checkpoints). Used to move a model between devices and to resume from a
/// checkpoint. SGD, Adam, AdamW and RMSprop are registered; a user's own optimizer joins with
/// `OptimizerRegistry<T, D>::instance().add("MyOpt", factory)`.

#include <memory>
#include <string>

#include "fastnn/core/options.hpp"
#include "fastnn/core/registry.hpp"
#include "fastnn/optim/optimizer.hpp"

namespace fastnn {

template <class T, class D>
class OptimizerRegistry : public detail::Registry<Optimizer<T, D>> {
  using Base = detail::Registry<Optimizer<T, D>>;

 public:
  /// The process-wide registry, holding SGD, Adam, AdamW and RMSprop from the start.
  static OptimizerRegistry& instance() {
    static OptimizerRegistry r;
    return r;
  }

 private:
  OptimizerRegistry() : Base("optimizer", " (SGD, Adam, AdamW, RMSprop)", "optimizer ") {
    this->add("SGD", with_optional<SGD<T, D>, SGDOptions>());
    this->add("Adam", with_optional<Adam<T, D>, AdamOptions>());
    this->add("AdamW", with_optional<AdamW<T, D>, AdamWOptions>());
    this->add("RMSprop", with_optional<RMSprop<T, D>, RMSpropOptions>());
  }
  /// from_options, with the clipping and weight-decay options taking their defaults where the config (a
  /// checkpoint written before they existed, or Optimizer::config(), which leaves out defaults) lacks them.
  template <class Made, class Options>
  static typename Base::Factory with_optional() {
    return [](const Config& c, const std::string& where) -> std::unique_ptr<Optimizer<T, D>> {
      Config full = c;
      for (const auto& kv : options_to_config(Options()))
        if (detail::optional_optimizer_option(kv.first) && !full.count(kv.first)) full.insert(kv);
      Options o;
      options_from_config(o, full, where);
      return std::make_unique<Made>(o);
    };
  }
};

/// An optimizer of `type` with options `config` (OptimizerRegistry<T, D>::instance().make).
template <class T, class D>
std::unique_ptr<Optimizer<T, D>> make_optimizer(const std::string& type, const Config& config) {
  return OptimizerRegistry<T, D>::instance().make(type, config);
}

}  // namespace fastnn
