#pragma once
/// \file onnx_graph.hpp
/// io::export_onnx(model, path, sequence_lens): a graph model (model/graph.hpp, Model<T, Cpu>) as an
/// ONNX file, written like the Sequential export of io/onnx.hpp (opset 17, IR version 8, atomically;
/// UnsupportedError naming the layer it cannot express, before anything is written).
///
///   io::export_onnx(model, "model.onnx");
///
/// The ONNX graph has one float input per model input, named as the input (input_name(i)), of shape
/// [N, input shape...] with N the dynamic dimension "batch"; with `sequence_lens`, every input of
/// rank 2 or more (steps, then features) also gets `<input name>_sequence_lens` [N] (int32), the
/// per-sample lengths of predict()'s `lengths` for that input. It has one output per model output,
/// named after the layer whose call makes it (onnx_output_names: `<layer>`, or `<layer>_call<k>`
/// for the layer's call k > 0), [N, output shape...], predict()'s values.
///
/// The layer calls are exported in the model's call order (call_records(), a topological order), each
/// by the exporter registered for its layer's type name (io/onnx.hpp's registry, the same as the
/// Sequential export's), given the ONNX values of the call's inputs. A layer called at several
/// places exports its weights once: its calls read the same initializers. Lengths flow as in
/// predict(): a call reads the lengths of each of its inputs (onnx_detail::CallLengths) and its output
/// has the elementwise Min of them unless its layer says otherwise (Embedding(mask_zero) and Masking make
/// new ones, the global poolings consume them, MultiHeadAttention's output has the query's).
///
/// A nested model (model/graph.hpp: a Model called as a layer) is inlined: its layers' calls are exported in its
/// call order at each call of the model, named "<model>.<layer>", so that its weights are one set of initializers
/// however often it is called; lengths flow into it per input and out of it as out of its output's call.
///
/// The merge layers (layers/merge.hpp) register here: Add -> Add, Subtract -> Sub, Multiply -> Mul
/// (chained over the inputs in order, as fastnn sums them), Average -> Sum then Div by the input
/// count, Maximum -> Max, Minimum -> Min, Concatenate(axis) -> Concat on the per-sample axis + 1
/// (the batch is ONNX's axis 0).

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "fastnn/io/onnx.hpp"
#include "fastnn/layers/merge.hpp"
#include "fastnn/model/graph.hpp"

namespace fastnn {
namespace io {
namespace onnx_detail {

/// Add, Subtract, Multiply, Average, Maximum, Minimum.
template <class T>
std::string export_elementwise_merge(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                                     const std::vector<Shape>&, CallLengths&) {
  const MergeOp op = as_builtin<ElementwiseMerge<T, Cpu>>(l).op();
  if (xs.size() < 2)
    throw UnsupportedError("export_onnx: layer '" + l.name() + "' (" + l.type_name() + ") called on " +
                           std::to_string(xs.size()) + " input");
  auto chain = [&](const char* onnx_op) {
    std::string y = xs[0];
    for (std::size_t i = 1; i < xs.size(); ++i) y = g.node(onnx_op, {y, xs[i]}, {});
    return y;
  };
  switch (op) {
    case MergeOp::Add: return chain("Add");
    case MergeOp::Subtract: return g.node("Sub", {xs[0], xs[1]}, {});
    case MergeOp::Multiply: return chain("Mul");
    case MergeOp::Average: {
      const std::string n = g.floats(g.fresh("count"), {}, {static_cast<float>(xs.size())});
      return g.node("Div", {g.node("Sum", xs, {}), n}, {});
    }
    case MergeOp::Maximum: return g.node("Max", xs, {});
    case MergeOp::Minimum: return g.node("Min", xs, {});
  }
  throw UnsupportedError("export_onnx: layer '" + l.name() + "': merge '" + to_string(op) + "'");
}

/// Concatenate(axis): Concat on the per-sample axis + 1.
template <class T>
std::string export_concatenate(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                               const std::vector<Shape>& in, CallLengths&) {
  const Index axis = as_builtin<Concatenate<T, Cpu>>(l).options().axis();
  const Index r = in.at(0).rank();
  const Index a = axis < 0 ? r + axis : axis - 1;  // the per-sample axis, as Concatenate::build_inputs
  if (a < 0 || a >= r)
    throw UnsupportedError("export_onnx: layer '" + l.name() + "' (Concatenate): axis " + std::to_string(axis) +
                           " is outside the per-sample shape " + in[0].str());
  return g.node("Concat", xs, {}, {Attr::i("axis", a + 1)});
}

/// [-1 (batch), shape...].
inline std::vector<std::int64_t> batch_dims(const Shape& s) {
  std::vector<std::int64_t> d{-1};
  for (Index i = 0; i < s.rank(); ++i) d.push_back(s[i]);
  return d;
}

/// The calls of nested model `m` (model/graph.hpp: ModelLayer, built) inlined into `g`: its layers export as if
/// they were the outer model's, named `prefix` + their name (so that their initializers are "<model>.<layer>.*",
/// shared by every call of the model). `xs`, `in`, `in_lens`: the values, shapes and lengths of its inputs.
/// Returns the output's value; `out_lens` and `out_shape` receive its lengths and shape.
template <class T>
std::string export_nested(Graph& g, const ModelLayer<T, Cpu>& m, const std::string& prefix,
                          const std::vector<std::string>& xs, const std::vector<Shape>& in,
                          const std::vector<std::string>& in_lens, std::string& out_lens, Shape& out_shape) {
  std::vector<std::string> value = xs, lens = in_lens;
  std::vector<Shape> shape = in;
  const LayerExporters<T>& exporters = LayerExporters<T>::instance();
  for (const auto& rec : m.call_records()) {
    const Layer<T, Cpu>& l = m.built_layer(rec.layer);
    std::vector<std::string> cx;
    std::vector<Shape> cin;
    CallLengths cl;
    for (int t : rec.inputs) {
      const std::size_t k = static_cast<std::size_t>(t);
      cx.push_back(value.at(k));
      cin.push_back(shape.at(k));
      cl.inputs.push_back(lens.at(k));
    }
    std::string call_lens;
    Shape out;
    if (const auto* nested = dynamic_cast<const ModelLayer<T, Cpu>*>(&l)) {
      value.push_back(export_nested(g, *nested, prefix + l.name() + ".", cx, cin, cl.inputs, call_lens, out));
    } else {
      // A copy named prefix + name, holding the layer's weights.
      auto r = l.clone_unbuilt();
      r->set_name(prefix + l.name());
      out = r->build_inputs(cin);
      Tensor<T, Cpu> w(Shape{r->param_count()});
      Index off = 0;
      for (const auto& p : l.parameters()) {
        Tensor<T, Cpu> dst = w.view(off, p.value.shape());
        copy_into(p.value, dst);
        off += p.value.size();
      }
      r->bind_parameters(w, w);
      value.push_back(exporters.of(*r)(g, *r, cx, cin, cl));
      call_lens = output_lengths(g, cl);
    }
    lens.push_back(call_lens);
    shape.push_back(out);
  }
  const std::size_t o = static_cast<std::size_t>(m.output_tensor());
  out_lens = lens.at(o);
  out_shape = shape.at(o);
  return value.at(o);
}

}  // namespace onnx_detail

/// Registers the merge layers' ONNX exporters (see the file comment); returns true.
template <class T>
bool register_merge_onnx_exporters() {
  using namespace onnx_detail;
  for (MergeOp op : {MergeOp::Add, MergeOp::Subtract, MergeOp::Multiply, MergeOp::Average, MergeOp::Maximum,
                     MergeOp::Minimum})
    register_onnx_exporter<T>(to_string(op), export_elementwise_merge<T>);
  register_onnx_exporter<T>("Concatenate", export_concatenate<T>);
  return true;
}

namespace onnx_detail {
inline const bool merge_onnx_exporters_registered =
    register_merge_onnx_exporters<float>() && register_merge_onnx_exporters<double>();
}  // namespace onnx_detail

/// The ONNX names of `model`'s outputs, in order: the name of the layer whose call makes the output,
/// `<layer>_call<k>` for the layer's call k > 0, and a suffix `_<j>` where that name is taken (by an
/// input, a layer or an earlier output).
template <class T>
std::vector<std::string> onnx_output_names(const Model<T, Cpu>& model) {
  std::set<std::string> taken;
  for (std::size_t i = 0; i < model.num_inputs(); ++i) taken.insert(model.input_name(i));
  for (std::size_t i = 0; i < model.num_layers(); ++i) taken.insert(model.layer(i).name());
  const auto records = model.call_records();
  std::vector<std::string> names;
  std::set<std::string> own;
  for (int t : model.output_tensors()) {
    const auto& rec = records.at(static_cast<std::size_t>(t) - model.num_inputs());
    const std::string& layer = model.layer(rec.layer).name();
    std::string name = rec.call_index > 0 ? layer + "_call" + std::to_string(rec.call_index) : layer;
    auto is_free = [&](const std::string& s) {  // a call 0 may take its own layer's name
      return !own.count(s) && ((rec.call_index == 0 && s == layer) || !taken.count(s));
    };
    if (!is_free(name)) {
      int j = 1;
      while (!is_free(name + "_" + std::to_string(j))) ++j;
      name += "_" + std::to_string(j);
    }
    own.insert(name);
    names.push_back(name);
  }
  return names;
}

/// Writes the graph model `model` to `path` as ONNX (see the file comment). Throws UnsupportedError
/// naming the layer it cannot express, before writing anything. With `sequence_lens`, every input
/// of rank 2 or more has a lengths input `<input name>_sequence_lens` [N] (int32).
template <class T>
void export_onnx(const Model<T, Cpu>& model, const std::string& path, bool sequence_lens = false) {
  using namespace onnx_detail;
  Graph g;
  const std::size_t ni = model.num_inputs();
  std::vector<std::string> value, lens;  // per tensor (as numbered by call_records()): its ONNX value, lengths
  std::vector<Shape> shape;              // per tensor: its per-sample shape
  for (std::size_t i = 0; i < ni; ++i) {
    const std::string& name = model.input_name(i);
    value.push_back(name);
    shape.push_back(model.input_shape(i));
    g.io(true, name, kFloat, batch_dims(shape.back()));
    lens.emplace_back();
    if (sequence_lens && shape.back().rank() >= 2) {
      lens.back() = name + "_sequence_lens";
      g.io(true, lens.back(), kInt32, {-1});
    }
  }
  const LayerExporters<T>& exporters = LayerExporters<T>::instance();
  const auto records = model.call_records();
  for (const auto& rec : records) {
    const Layer<T, Cpu>& l = model.layer(rec.layer);
    std::vector<std::string> xs;
    std::vector<Shape> in;
    CallLengths cl;
    for (int t : rec.inputs) {
      const std::size_t k = static_cast<std::size_t>(t);
      xs.push_back(value.at(k));
      in.push_back(shape.at(k));
      cl.inputs.push_back(lens.at(k));
    }
    if (const auto* nested = dynamic_cast<const ModelLayer<T, Cpu>*>(&l)) {  // inlined, its inputs' lengths apart
      std::string out_lens;
      Shape out;
      value.push_back(export_nested(g, *nested, l.name() + ".", xs, in, cl.inputs, out_lens, out));
      lens.push_back(out_lens);
      shape.push_back(out);
      continue;
    }
    const LayerExporter<T> f = exporters.of(l);
    value.push_back(f(g, l, xs, in, cl));
    lens.push_back(output_lengths(g, cl));  // by default the smallest of the inputs' (see output_lengths)
    shape.push_back(l.clone_unbuilt()->build_inputs(in));
  }
  const std::vector<std::string> names = onnx_output_names(model);
  for (std::size_t k = 0; k < names.size(); ++k) {
    const std::size_t t = static_cast<std::size_t>(model.output_tensors()[k]);
    g.node("Identity", {value.at(t)}, {names[k]});
    g.io(false, names[k], kFloat, batch_dims(shape.at(t)));
  }
  write_model(g, path);
}

}  // namespace io
}  // namespace fastnn
