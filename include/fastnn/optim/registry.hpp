#pragma once
/// \file registry.hpp
/// The optimizer registry: creates an optimizer on any device from its type name and config()
/// (as recorded in checkpoints). Used to move a model between devices and to resume from a
/// checkpoint. SGD, Adam and RMSprop are registered; a user's own optimizer joins with
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
  /// The process-wide registry, holding SGD, Adam and RMSprop from the start.
  static OptimizerRegistry& instance() {
    static OptimizerRegistry r;
    return r;
  }

 private:
  OptimizerRegistry() : Base("optimizer", " (SGD, Adam, RMSprop)", "optimizer ") {
    this->add("SGD", Base::template from_options<SGD<T, D>, SGDOptions>());
    this->add("Adam", Base::template from_options<Adam<T, D>, AdamOptions>());
    this->add("RMSprop", Base::template from_options<RMSprop<T, D>, RMSpropOptions>());
  }
};

/// An optimizer of `type` with options `config` (OptimizerRegistry<T, D>::instance().make).
template <class T, class D>
std::unique_ptr<Optimizer<T, D>> make_optimizer(const std::string& type, const Config& config) {
  return OptimizerRegistry<T, D>::instance().make(type, config);
}

}  // namespace fastnn
