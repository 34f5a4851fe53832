#pragma once
/// \file onnx_transformer.hpp
/// The ONNX exporters of the Transformer layers, registered by type name into io::export_onnx's
/// exporter registry (io/onnx.hpp) by register_transformer_onnx_exporters<T>(); fastnn/transformer.hpp
/// calls it for float and double before main() runs.
///   * LayerNormalization: ONNX LayerNormalization (opset 17) on axis -1 with its epsilon; Scale
///     is gamma (ones when scale=false, the input is required), B is beta (left out when center=false);
///   * PositionEmbedding: Gather of the table's first `steps` rows, Expand to the input's shape;
///   * SinePositionEncoding: the table [steps, features] as a constant, Expand to the input's shape.
/// The position layers return the positions only (as KerasHub): the Add that joins them to the
/// token embeddings is the graph's merge layer (io/onnx_graph.hpp). Per-sample lengths pass
/// through all three.

#include <cstdint>
#include <string>
#include <vector>

#include "fastnn/io/onnx.hpp"
#include "fastnn/layers/layer_norm.hpp"
#include "fastnn/layers/position.hpp"

namespace fastnn {
namespace io {
namespace onnx_detail {

template <class T>
std::vector<float> as_floats(const Tensor<T, Cpu>& t, Index count) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (Index i = 0; i < count; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(t[i]);
  return v;
}

template <class T>
std::string export_layer_norm(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                              const std::string&) {
  const LayerNormalizationOptions& o = as_builtin<LayerNormalization<T, Cpu>>(l).options();
  const Index c = in[in.rank() - 1];
  const auto& p = l.parameters();
  const std::string scale = o.scale() ? g.floats(l.name() + ".gamma", {c}, as_floats(p[0].value, c))
                                      : g.floats(l.name() + ".gamma_ones", {c}, std::vector<float>(c, 1.0f));
  std::vector<std::string> inputs{x, scale};
  if (o.center()) inputs.push_back(g.floats(l.name() + ".beta", {c}, as_floats(p[o.scale() ? 1 : 0].value, c)));
  return g.node("LayerNormalization", inputs, {},
                {Attr::i("axis", -1), Attr::f("epsilon", static_cast<float>(o.epsilon()))});
}

template <class T>
std::string export_position_embedding(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                                      const std::string&) {
  const PositionEmbeddingOptions& o = as_builtin<PositionEmbedding<T, Cpu>>(l).options();
  const Index steps = in[in.rank() - 2], f = in[in.rank() - 1];
  const Tensor<T, Cpu>& e = l.parameters()[0].value;
  const std::string table = g.floats(l.name() + ".embeddings", {o.sequence_length(), f}, as_floats(e, e.size()));
  std::vector<std::int64_t> positions(static_cast<std::size_t>(steps));
  for (Index t = 0; t < steps; ++t) positions[static_cast<std::size_t>(t)] = t;
  const std::string rows = g.node("Gather", {table, g.int64s("positions", positions)}, {}, {Attr::i("axis", 0)});
  return g.node("Expand", {rows, g.node("Shape", {x}, {})}, {});
}

template <class T>
std::string export_sine_position(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                                 const std::string&) {
  const SinePositionEncodingOptions& o = as_builtin<SinePositionEncoding<T, Cpu>>(l).options();
  const Index steps = in[in.rank() - 2], f = in[in.rank() - 1];
  const Tensor<float, Cpu> t = sine_position_table<float>(steps, f, o.max_wavelength());
  const std::string table = g.floats(l.name() + ".table", {steps, f}, as_floats(t, t.size()));
  return g.node("Expand", {table, g.node("Shape", {x}, {})}, {});
}

}  // namespace onnx_detail

/// Registers the Transformer layers' ONNX exporters (see the file comment), for Sequential and
/// graph models; returns true.
template <class T>
bool register_transformer_onnx_exporters() {
  using namespace onnx_detail;
  register_onnx_unary_exporter<T>("LayerNormalization", export_layer_norm<T>);
  register_onnx_unary_exporter<T>("PositionEmbedding", export_position_embedding<T>);
  register_onnx_unary_exporter<T>("SinePositionEncoding", export_sine_position<T>);
  return true;
}

}  // namespace io
}  // namespace fastnn
