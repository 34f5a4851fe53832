#pragma once
/// \file vision.hpp
/// The spatial layers, opt-in: Conv1D/2D (layers/conv.hpp), pooling (layers/pooling.hpp),
/// BatchNormalization (layers/batch_norm.hpp), Reshape, Permute and Activation
/// (layers/reshape.hpp), CPU only. Including this header also adds them to the layer registry
/// for float and double (layers/spatial_registry.hpp) before main() runs, so that models holding
/// them save, load and print like the others, and their ONNX exporters to io::export_onnx
/// (io/onnx_spatial.hpp). fastnn/fastnn.hpp leaves them out, so that a
/// program without them does not compile them.

#include "fastnn/fastnn.hpp"
#include "fastnn/io/onnx_spatial.hpp"
#include "fastnn/layers/batch_norm.hpp"
#include "fastnn/layers/conv.hpp"
#include "fastnn/layers/pooling.hpp"
#include "fastnn/layers/reshape.hpp"
#include "fastnn/layers/spatial_registry.hpp"

namespace fastnn {
namespace detail {
/// Registers the spatial layers and their ONNX exporters once per program (an inline variable: one
/// instance however many translation units include this header).
inline const bool spatial_layers_registered = register_spatial_layers<float>() && register_spatial_layers<double>() &&
                                              io::register_spatial_onnx_exporters<float>() &&
                                              io::register_spatial_onnx_exporters<double>();
}  // namespace detail
}  // namespace fastnn
