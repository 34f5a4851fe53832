#pragma once
/// \file vision.hpp
/// The spatial layers, opt-in: Conv1D/2D (layers/conv.hpp), pooling (layers/pooling.hpp),
/// BatchNormalization (layers/batch_norm.hpp), Reshape, Permute and Activation
/// (layers/reshape.hpp). Including this header also adds them to the layer registry for float and
/// double (layers/spatial_registry.hpp) before main() runs, so that models holding them save, load
/// and print like the others, and their ONNX exporters to io::export_onnx (io/onnx_spatial.hpp).
/// When FASTNN_WITH_CUDA is defined (the fastnn::cuda CMake target), it also brings their GPU
/// primitives (backend/cuda/conv.hpp: cuDNN convolutions, fastnn's kernels for the rest) and
/// registers them for Cuda, so that Sequential<T, Cuda> holds them and Sequential::to<Cuda>()
/// moves them. fastnn/fastnn.hpp leaves them out, so that a program without them does not compile
/// them.

#include "fastnn/fastnn.hpp"
#include "fastnn/io/onnx_spatial.hpp"
#include "fastnn/layers/batch_norm.hpp"
#include "fastnn/layers/conv.hpp"
#include "fastnn/layers/pooling.hpp"
#include "fastnn/layers/reshape.hpp"
#include "fastnn/layers/spatial_registry.hpp"
#if defined(FASTNN_WITH_CUDA)
#include "fastnn/backend/cuda/conv.hpp"
#endif

namespace fastnn {
namespace detail {
/// Registers the spatial layers and their ONNX exporters once per program (an inline variable: one
/// instance however many translation units include this header).
inline const bool spatial_layers_registered = register_spatial_layers<float>() && register_spatial_layers<double>() &&
                                              io::register_spatial_onnx_exporters<float>() &&
                                              io::register_spatial_onnx_exporters<double>()
#if defined(FASTNN_WITH_CUDA)
                                              && register_spatial_layers<float, Cuda>() &&
                                              register_spatial_layers<double, Cuda>()
#endif
    ;
}  // namespace detail
}  // namespace fastnn
