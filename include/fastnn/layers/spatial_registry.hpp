#pragma once
/// \file spatial_registry.hpp
/// Adds the spatial layers (Conv1D/2D, the pooling layers, BatchNormalization, Reshape, Permute,
/// Activation) to LayerRegistry<T, D>, so that config() round-trips through make_layer, weights
/// files and checkpoints holding them load, and Sequential::to<D>() re-creates them on device D.
/// D needs SpatialOps<T, D> (backend/cpu/conv.hpp; backend/cuda/conv.hpp for Cuda), and every
/// translation unit that registers them compiles them, so they are opt-in: include
/// fastnn/vision.hpp, which registers them for float and double (on the CPU, and on the GPU
/// when FASTNN_WITH_CUDA is defined) before main() runs, or call register_spatial_layers<T, D>()
/// yourself. Registering twice replaces the same factories.

#include <memory>
#include <string>

#include "fastnn/core/options.hpp"
#include "fastnn/layers/batch_norm.hpp"
#include "fastnn/layers/conv.hpp"
#include "fastnn/layers/pooling.hpp"
#include "fastnn/layers/registry.hpp"
#include "fastnn/layers/reshape.hpp"

namespace fastnn {
namespace detail {

/// A factory for a layer without options (an empty configuration).
template <class L, class T, class D>
auto no_options_factory() {
  return [](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
    if (!c.empty()) throw MismatchError(where + ": unknown option '" + c.begin()->first.substr(0, 64) + "'");
    return std::make_unique<L>();
  };
}

}  // namespace detail

/// Adds the spatial layers to LayerRegistry<T, D> (see the file comment); returns true.
template <class T, class D = Cpu>
bool register_spatial_layers() {
  using R = LayerRegistry<T, D>;
  using Base = detail::Registry<Layer<T, D>>;
  R& r = R::instance();
  r.add("Conv1D", Base::template from_options<Conv1D<T, D>, Conv1DOptions>());
  r.add("Conv2D", Base::template from_options<Conv2D<T, D>, Conv2DOptions>());
  r.add("MaxPooling1D", Base::template from_options<MaxPooling1D<T, D>, Pool1DOptions>());
  r.add("MaxPooling2D", Base::template from_options<MaxPooling2D<T, D>, Pool2DOptions>());
  r.add("AveragePooling1D", Base::template from_options<AveragePooling1D<T, D>, Pool1DOptions>());
  r.add("AveragePooling2D", Base::template from_options<AveragePooling2D<T, D>, Pool2DOptions>());
  r.add("GlobalAveragePooling1D", detail::no_options_factory<GlobalAveragePooling1D<T, D>, T, D>());
  r.add("GlobalAveragePooling2D", detail::no_options_factory<GlobalAveragePooling2D<T, D>, T, D>());
  r.add("GlobalMaxPooling1D", detail::no_options_factory<GlobalMaxPooling1D<T, D>, T, D>());
  r.add("GlobalMaxPooling2D", detail::no_options_factory<GlobalMaxPooling2D<T, D>, T, D>());
  r.add("BatchNormalization", Base::template from_options<BatchNormalization<T, D>, BatchNormalizationOptions>());
  r.add("Reshape", Base::template from_options<Reshape<T, D>, ReshapeOptions>());
  r.add("Permute", Base::template from_options<Permute<T, D>, PermuteOptions>());
  r.add("Activation", Base::template from_options<ActivationLayer<T, D>, ActivationOptions>());
  return true;
}

}  // namespace fastnn
