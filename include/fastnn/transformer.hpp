#pragma once
/// \file transformer.hpp
/// The Transformer layers, opt-in: LayerNormalization (layers/layer_norm.hpp), PositionEmbedding
/// and SinePositionEncoding (layers/position.hpp), MultiHeadAttention (layers/attention.hpp; CUDA:
/// compiled, not run on a GPU). Including this header also adds them to the
/// layer registry for float and double (layers/transformer_registry.hpp) before main() runs, so
/// that models holding them save, load and print like the others, and their ONNX exporters to
/// io::export_onnx (io/onnx_transformer.hpp). When FASTNN_WITH_CUDA is defined (the fastnn::cuda
/// CMake target), it also brings their GPU primitives (backend/cuda/transformer.hpp: fastnn's
/// fused layer-normalisation and masked-softmax kernels, cuBLAS strided-batched GEMMs for the
/// attention) and registers them for Cuda. fastnn/fastnn.hpp leaves them
/// out, so that a program without them does not compile them. The position layers return the
/// positions only (as KerasHub); add them to the token embeddings with the Add layer of
/// fastnn/graph.hpp.

#include "fastnn/fastnn.hpp"
#include "fastnn/io/onnx_transformer.hpp"
#include "fastnn/layers/attention.hpp"
#include "fastnn/layers/layer_norm.hpp"
#include "fastnn/layers/position.hpp"
#include "fastnn/layers/transformer_registry.hpp"
#if defined(FASTNN_WITH_CUDA)
#include "fastnn/backend/cuda/transformer.hpp"
#endif

namespace fastnn {
namespace detail {
/// Registers the Transformer layers and their ONNX exporters once per program (an inline variable:
/// one instance however many translation units include this header).
inline const bool transformer_layers_registered =
    register_transformer_layers<float>() && register_transformer_layers<double>() &&
    io::register_transformer_onnx_exporters<float>() && io::register_transformer_onnx_exporters<double>()
#if defined(FASTNN_WITH_CUDA)
    && register_transformer_layers<float, Cuda>() && register_transformer_layers<double, Cuda>()
#endif
    ;
}  // namespace detail
}  // namespace fastnn
