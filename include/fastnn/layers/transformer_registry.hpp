#pragma once
/// \file transformer_registry.hpp
/// Adds the Transformer layers (LayerNormalization, PositionEmbedding, SinePositionEncoding,
/// MultiHeadAttention) to LayerRegistry<T, D>, so that config() round-trips through make_layer, weights files and
/// checkpoints holding them load, and Sequential::to<D>() re-creates them on device D. D needs
/// TransformerOps<T, D> (backend/cpu/transformer.hpp; backend/cuda/transformer.hpp for Cuda).
/// They are opt-in: include fastnn/transformer.hpp, which registers them for float and double (on
/// the CPU, and on the GPU when FASTNN_WITH_CUDA is defined) before main() runs, or call
/// register_transformer_layers<T, D>() yourself. Registering twice replaces the same factories.

#include "fastnn/core/options.hpp"
#include "fastnn/layers/attention.hpp"
#include "fastnn/layers/layer_norm.hpp"
#include "fastnn/layers/position.hpp"
#include "fastnn/layers/registry.hpp"

namespace fastnn {

/// Adds the Transformer layers to LayerRegistry<T, D> (see the file comment); returns true.
template <class T, class D = Cpu>
bool register_transformer_layers() {
  using Base = detail::Registry<Layer<T, D>>;
  LayerRegistry<T, D>& r = LayerRegistry<T, D>::instance();
  r.add("LayerNormalization", Base::template from_options<LayerNormalization<T, D>, LayerNormalizationOptions>());
  r.add("PositionEmbedding", Base::template from_options<PositionEmbedding<T, D>, PositionEmbeddingOptions>());
  r.add("SinePositionEncoding",
        Base::template from_options<SinePositionEncoding<T, D>, SinePositionEncodingOptions>());
  r.add("MultiHeadAttention",
        Base::template from_options<MultiHeadAttention<T, D>, MultiHeadAttentionOptions>());
  return true;
}

}  // namespace fastnn
