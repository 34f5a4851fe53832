#pragma once
/// \file onnx_transformer.hpp
/// The ONNX exporters of the Transformer layers, registered by type name into io::export_onnx's
/// exporter registry (io/onnx.hpp) by register_transformer_onnx_exporters<T>(); fastnn/transformer.hpp
/// calls it for float and double before main() runs.
///   * LayerNormalization: ONNX LayerNormalization (opset 17) on axis -1 with its epsilon; Scale
///     is gamma (ones when scale=false, the input is required), B is beta (left out when center=false);
///   * PositionEmbedding: Gather of the table's first `steps` rows, Expand to the input's shape;
///   * SinePositionEncoding: the table [steps, features] as a constant, Expand to the input's shape.
///   * MultiHeadAttention on (query, value[, key]), as MatMul / Softmax (see export_attention).
/// The position layers return the positions only (as KerasHub): the Add that joins them to the
/// token embeddings is the graph's merge layer (io/onnx_graph.hpp). Per-sample lengths pass
/// through the first three; MultiHeadAttention's output has the query's.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fastnn/io/onnx.hpp"
#include "fastnn/layers/attention.hpp"
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

/// MultiHeadAttention (layers/attention.hpp) on query [N, Tq, Fq], value [N, Tk, Fv] and key [N, Tk, Fk] (the
/// value when the call has two inputs), with H heads of key_dim kd and value_dim vd:
///   Q = (query Wq + bq) / sqrt(kd), K = key Wk + bk, V = value Wv + bv   (MatMul, Add; kernels [F, H kd])
///   reshaped to heads and transposed: Q [N, H, Tq, kd], K^T [N, H, kd, Tk], V [N, H, Tk, vd]
///   S = Q K^T [N, H, Tq, Tk]; where the mask is false S = the lowest float, P = Softmax(S) on the keys, and
///   P = 0 where the mask is false (a row without keys gives 0, not NaN)
///   O = P V -> [N, Tq, H vd] (Transpose, Reshape); y = O Wo + bo [N, Tq, output_shape]
/// The mask (bool, broadcast to [N, 1, Tq, Tk]) is built in the graph: key step j < the key's length (the
/// value's when the key input has none), from its sequence_lens; and with use_causal_mask j <= i for query
/// step i. As in fastnn, the output at the query steps beyond the query's length is 0 (Where), and the
/// output's lengths are the query's. Dropout is the identity (inference).
template <class T>
std::string export_attention(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                             const std::vector<Shape>& in, CallLengths& lens) {
  const MultiHeadAttention<T, Cpu>& mha = as_builtin<MultiHeadAttention<T, Cpu>>(l);
  const MultiHeadAttentionOptions& o = mha.options();
  const std::string who = "export_onnx: layer '" + l.name() + "' (MultiHeadAttention)";
  if ((xs.size() != 2 && xs.size() != 3) || in.size() != xs.size() || lens.inputs.size() != xs.size())
    throw UnsupportedError(who + ": takes (query, value) or (query, value, key), called on " +
                           std::to_string(xs.size()) + " inputs");
  for (const Shape& s : in)
    if (s.rank() != 2)
      throw UnsupportedError(who + ": expected inputs [batch, steps, features], got per-sample shape " + s.str());
  const bool has_key = xs.size() == 3;
  const Index tq = in[0][0], fq = in[0][1], tk = in[1][0], fv = in[1][1], fk = has_key ? in[2][1] : fv;
  const Index h = o.num_heads(), kd = o.key_dim(), vd = mha.value_dim();
  const Index out = o.output_shape() ? o.output_shape() : fq;
  const bool bias = o.use_bias();
  // Keras's order: query, key, value, output; each kernel followed by its bias with use_bias.
  const auto& p = l.parameters();
  auto kernel = [&](int role) -> const Tensor<T, Cpu>& {
    return p[static_cast<std::size_t>(bias ? 2 * role : role)].value;
  };
  if (p.size() != (bias ? 8u : 4u) || kernel(0).size() != fq * h * kd || kernel(1).size() != fk * h * kd ||
      kernel(2).size() != fv * h * vd || kernel(3).size() != h * vd * out)
    throw UnsupportedError(who + ": its weights do not fit query " + in[0].str() + ", value " + in[1].str() +
                           (has_key ? ", key " + in[2].str() : std::string()) + " (per sample)");
  // x [N, T, F] W [F, n] (+ b [n]), the weights of `role` named "<layer>.<what>_kernel" / "_bias"
  auto project = [&](const std::string& x, int role, const std::string& what, Index f, Index n) {
    const Tensor<T, Cpu>& w = kernel(role);
    const std::string wn = g.floats(l.name() + "." + what + "_kernel", {f, n}, as_floats(w, w.size()));
    std::string y = g.node("MatMul", {x, wn}, {});
    if (bias) {
      const Tensor<T, Cpu>& b = p[static_cast<std::size_t>(2 * role + 1)].value;
      y = g.node("Add", {y, g.floats(l.name() + "." + what + "_bias", {n}, as_floats(b, b.size()))}, {});
    }
    return y;
  };
  // [N, T, H d] -> [N, H, T, d] (perm {0, 2, 1, 3}) or [N, H, d, T] (perm {0, 2, 3, 1})
  auto heads = [&](const std::string& x, Index t, Index d, const std::vector<std::int64_t>& perm) {
    const std::string r = g.node("Reshape", {x, g.int64s("shape", {0, t, h, d})}, {});
    return g.node("Transpose", {r}, {}, {Attr::ints("perm", perm)});
  };
  const std::string& query = xs[0];
  const std::string& value = xs[1];
  const std::string& key = has_key ? xs[2] : xs[1];
  const T inv = T(1) / std::sqrt(static_cast<T>(kd));  // as fastnn, which scales the biased projection
  const std::string scale = g.floats(g.fresh("inv_sqrt_key_dim"), {}, {static_cast<float>(inv)});
  const std::string q = heads(g.node("Mul", {project(query, 0, "query", fq, h * kd), scale}, {}), tq, kd, {0, 2, 1, 3});
  const std::string kt = heads(project(key, 1, "key", fk, h * kd), tk, kd, {0, 2, 3, 1});
  const std::string v = heads(project(value, 2, "value", fv, h * vd), tk, vd, {0, 2, 1, 3});
  std::string s = g.node("MatMul", {q, kt}, {});  // [N, H, Tq, Tk]

  const std::string& query_lens = lens.inputs[0];
  const std::string& key_lens = has_key && !lens.inputs[2].empty() ? lens.inputs[2] : lens.inputs[1];
  std::string mask;
  if (!key_lens.empty())  // [N, 1, 1, Tk]
    mask = g.node("Unsqueeze", {real_steps(g, key_lens, tk), g.int64s("axes", {1, 2})}, {});
  if (o.use_causal_mask()) {  // [Tq, Tk]: key step j <= query step i
    const std::string rows = g.node("Unsqueeze", {step_range(g, tq), g.int64s("axes", {1})}, {});
    const std::string causal = g.node("LessOrEqual", {step_range(g, tk), rows}, {});
    mask = mask.empty() ? causal : g.node("And", {mask, causal}, {});
  }
  std::string prob;
  if (mask.empty()) {
    prob = g.node("Softmax", {s}, {}, {Attr::i("axis", -1)});
  } else {
    const std::string lowest = g.floats(g.fresh("lowest"), {}, {std::numeric_limits<float>::lowest()});
    const std::string zero = g.floats(g.fresh("zero"), {}, {0.0f});
    s = g.node("Where", {mask, s, lowest}, {});
    prob = g.node("Where", {mask, g.node("Softmax", {s}, {}, {Attr::i("axis", -1)}), zero}, {});
  }
  const std::string heads_out = g.node("MatMul", {prob, v}, {});  // [N, H, Tq, vd]
  const std::string merged = g.node(
      "Reshape", {g.node("Transpose", {heads_out}, {}, {Attr::ints("perm", {0, 2, 1, 3})}),
                  g.int64s("shape", {0, tq, h * vd})},
      {});
  std::string y = project(merged, 3, "output", h * vd, out);  // [N, Tq, out]
  if (!query_lens.empty()) {
    const std::string real = g.node("Unsqueeze", {real_steps(g, query_lens, tq), g.int64s("axes", {2})}, {});
    y = g.node("Where", {real, y, g.floats(g.fresh("zero"), {}, {0.0f})}, {});
  }
  lens.output = query_lens;
  return y;
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
  register_onnx_exporter<T>("MultiHeadAttention", export_attention<T>);
  return true;
}

}  // namespace io
}  // namespace fastnn
