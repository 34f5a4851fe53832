#pragma once
/// \file onnx.hpp
/// io::export_onnx(model, path): a trained CPU model as an ONNX file (opset 17, IR version 8) for
/// ONNX Runtime and other ONNX clients.
///
///   io::export_onnx(model, "model.onnx");
///
/// The graph takes `input` [N, input shape...] (float; N is a dynamic dimension "batch") and,
/// for a model whose recurrent layers take per-sample lengths, `sequence_lens` [N] (int32); it
/// returns `output` [N, output shape...] with the last layer's activation applied (predict()'s
/// values). Layers:
///   * Dense: MatMul + Add and the activation (Relu, Tanh, Sigmoid, HardSigmoid, Softmax on the
///     last axis);
///   * LSTM, GRU, SimpleRNN: ONNX LSTM / GRU / RNN on time-major input (Transpose around them),
///     Keras gate order mapped to ONNX's (LSTM i,f,c,o -> i,o,f,c; GRU z,r,h is ONNX's z,r,h with
///     linear_before_reset for reset_after), go_backwards as direction "reverse";
///   * Bidirectional: direction "bidirectional", merge modes concat, sum, mul and ave through
///     ONNX ops;
///   * Embedding: Gather (ids cast to int64), with mask_zero the lengths computed in the graph;
///   * Masking: the padded steps zeroed and the lengths computed in the graph;
///   * Dropout: nothing (inference); Flatten: Reshape.
/// Every value in the graph is channels-last, as in fastnn, so Flatten and Dense read the same order.
/// Every layer is exported by the exporter registered for its type name (onnx_detail::LayerExporters,
/// register_onnx_exporter): the layers above are registered here; the spatial layers (Conv1D/2D,
/// pooling, BatchNormalization, Reshape, Permute, Activation) register from io/onnx_spatial.hpp,
/// which fastnn/vision.hpp includes, and the merge layers from io/onnx_graph.hpp (the export of
/// graph models, which fastnn/graph.hpp includes), the Transformer layers (LayerNormalization, the position
/// layers, MultiHeadAttention) from io/onnx_transformer.hpp, which fastnn/transformer.hpp includes, so that
/// this header does not compile them for programs without them. An exporter gets every input of a call
/// and the lengths of each (CallLengths), and says what the output's lengths are where they are not the
/// inputs' (output_lengths).
/// A layer or option ONNX cannot express is an UnsupportedError naming the layer, thrown before
/// anything is written; the file is written atomically (io/atomic_file.hpp), so a failed export
/// leaves no file behind.
///
/// The protobuf wire format of the few messages needed (ModelProto, GraphProto, NodeProto,
/// AttributeProto, TensorProto, ValueInfoProto) is written here, field numbers as in onnx.proto.
/// Each layer's options are read from its typed options struct (Dense::options() and the like),
/// never parsed from its config() text, so the export does not depend on the global locale.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/config.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/io/atomic_file.hpp"
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/dense.hpp"
#include "fastnn/layers/embedding.hpp"
#include "fastnn/layers/gru.hpp"
#include "fastnn/layers/lstm.hpp"
#include "fastnn/layers/masking.hpp"
#include "fastnn/layers/simple_rnn.hpp"
#include "fastnn/model/sequential.hpp"

namespace fastnn {
namespace io {
namespace onnx_detail {

/// A protobuf message being written: fields appended in order.
class Message {
 public:
  const std::string& bytes() const { return buf_; }
  void varint_field(int field, std::uint64_t v) {
    key(field, 0);
    varint(v);
  }
  void int_field(int field, std::int64_t v) { varint_field(field, static_cast<std::uint64_t>(v)); }
  void bytes_field(int field, const std::string& s) {
    key(field, 2);
    varint(s.size());
    buf_ += s;
  }
  void message_field(int field, const Message& m) { bytes_field(field, m.buf_); }
  void float_field(int field, float v) {
    key(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);  // little-endian hosts (x86, ARM)
    buf_.append(b, 4);
  }
  void packed_ints(int field, const std::vector<std::int64_t>& v) {
    Message p;
    for (std::int64_t x : v) p.varint(static_cast<std::uint64_t>(x));
    bytes_field(field, p.buf_);
  }

 private:
  void key(int field, int wire) { varint(static_cast<std::uint64_t>(field) << 3 | static_cast<std::uint64_t>(wire)); }
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      buf_ += static_cast<char>((v & 0x7F) | 0x80);
      v >>= 7;
    }
    buf_ += static_cast<char>(v);
  }
  std::string buf_;
};

// onnx.proto enums
enum : int { kFloat = 1, kInt32 = 6, kInt64 = 7 };
enum : int { kAttrFloat = 1, kAttrInt = 2, kAttrString = 3, kAttrFloats = 6, kAttrInts = 7, kAttrStrings = 8 };

/// One node attribute.
struct Attr {
  Message m;
  static Attr i(const std::string& name, std::int64_t v) {
    Attr a = named(name, kAttrInt);
    a.m.int_field(3, v);
    return a;
  }
  static Attr f(const std::string& name, float v) {
    Attr a = named(name, kAttrFloat);
    a.m.float_field(2, v);
    return a;
  }
  static Attr s(const std::string& name, const std::string& v) {
    Attr a = named(name, kAttrString);
    a.m.bytes_field(4, v);
    return a;
  }
  static Attr ints(const std::string& name, const std::vector<std::int64_t>& v) {
    Attr a = named(name, kAttrInts);
    for (auto x : v) a.m.int_field(8, x);
    return a;
  }
  static Attr floats(const std::string& name, const std::vector<float>& v) {
    Attr a = named(name, kAttrFloats);
    for (float x : v) a.m.float_field(7, x);
    return a;
  }
  static Attr strings(const std::string& name, const std::vector<std::string>& v) {
    Attr a = named(name, kAttrStrings);
    for (const auto& x : v) a.m.bytes_field(9, x);
    return a;
  }

 private:
  static Attr named(const std::string& name, int type) {
    Attr a;
    a.m.bytes_field(1, name);
    a.m.int_field(20, type);
    return a;
  }
};

/// The graph being built: nodes, initializers, inputs and outputs.
class Graph {
 public:
  /// A new value name, unique in the graph.
  std::string fresh(const std::string& hint) { return hint + "_" + std::to_string(counter_++); }

  /// Adds a node; returns its first output.
  std::string node(const std::string& op, const std::vector<std::string>& in, std::vector<std::string> out,
                   const std::vector<Attr>& attrs = {}) {
    if (out.empty()) out.push_back(fresh(op));
    Message n;
    for (const auto& x : in) n.bytes_field(1, x);
    for (const auto& y : out) n.bytes_field(2, y);
    n.bytes_field(3, fresh(op + "_node"));
    n.bytes_field(4, op);
    for (const auto& a : attrs) n.message_field(5, a.m);
    graph_.message_field(1, n);
    return out[0];
  }
  /// A float initializer of shape `dims`. The same name again with the same values (a layer called
  /// at several places) is the one initializer; with other values it is an ArgumentError.
  std::string floats(const std::string& name, const std::vector<std::int64_t>& dims, const std::vector<float>& v) {
    Message t;
    t.packed_ints(1, dims);
    t.int_field(2, kFloat);
    t.bytes_field(8, name);
    t.bytes_field(9, std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
    const auto it = init_index_.find(name);
    if (it != init_index_.end()) {
      if (inits_[it->second].bytes() != t.bytes())
        throw ArgumentError("export_onnx: two different initializers named '" + name + "' (two layers of one name?)");
      return name;
    }
    init_index_[name] = inits_.size();
    inits_.push_back(t);
    return name;
  }
  /// An int64 initializer (shapes, axes).
  std::string int64s(const std::string& hint, const std::vector<std::int64_t>& v) {
    const std::string name = fresh(hint);
    Message t;
    t.packed_ints(1, {static_cast<std::int64_t>(v.size())});
    t.int_field(2, kInt64);
    t.bytes_field(8, name);
    t.bytes_field(9, std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(std::int64_t)));
    inits_.push_back(t);
    return name;
  }
  /// A graph input or output: `dims` with -1 for the dynamic batch dimension.
  void io(bool input, const std::string& name, int elem_type, const std::vector<std::int64_t>& dims) {
    Message shape;
    for (auto d : dims) {
      Message dim;
      if (d < 0) dim.bytes_field(2, "batch");
      else dim.int_field(1, d);
      shape.message_field(1, dim);
    }
    Message tensor;
    tensor.int_field(1, elem_type);
    tensor.message_field(2, shape);
    Message type;
    type.message_field(1, tensor);
    Message vi;
    vi.bytes_field(1, name);
    vi.message_field(2, type);
    (input ? inputs_ : outputs_).push_back(vi);
  }
  /// The ModelProto.
  std::string model(const std::string& name) const {
    Message g = graph_;
    g.bytes_field(2, name);
    for (const auto& t : inits_) g.message_field(5, t);
    for (const auto& i : inputs_) g.message_field(11, i);
    for (const auto& o : outputs_) g.message_field(12, o);
    Message opset;
    opset.bytes_field(1, "");
    opset.int_field(2, 17);
    Message m;
    m.int_field(1, 8);  // IR version 8 (ONNX 1.10+), opset 17 below
    m.bytes_field(2, "fastnn");
    m.bytes_field(3, std::to_string(FASTNN_VERSION_MAJOR) + "." + std::to_string(FASTNN_VERSION_MINOR) + "." +
                         std::to_string(FASTNN_VERSION_PATCH));
    m.message_field(7, g);
    m.message_field(8, opset);
    return m.bytes();
  }

 private:
  Message graph_;  // nodes (field 1) as they come
  std::vector<Message> inits_, inputs_, outputs_;
  std::map<std::string, std::size_t> init_index_;  // initializer name -> its index in inits_
  int counter_ = 0;
};

/// The ONNX name of a recurrent operator's activation `a`.
inline std::string onnx_activation(Activation a, const std::string& layer) {
  switch (a) {
    case Activation::Tanh: return "Tanh";
    case Activation::Sigmoid: return "Sigmoid";
    case Activation::Relu: return "Relu";
    case Activation::HardSigmoid: return "HardSigmoid";  // ONNX's default alpha 0.2, beta 0.5 are Keras's
    default: break;
  }
  throw UnsupportedError("export_onnx: layer '" + layer + "': activation '" + to_string(a) +
                         "' has no ONNX equivalent inside a recurrent operator");
}

/// Applies activation `a` to `x`.
inline std::string activate(Graph& g, const std::string& x, Activation a) {
  switch (a) {
    case Activation::Linear: return x;
    case Activation::Relu: return g.node("Relu", {x}, {});
    case Activation::Tanh: return g.node("Tanh", {x}, {});
    case Activation::Sigmoid: return g.node("Sigmoid", {x}, {});
    case Activation::HardSigmoid:
      return g.node("HardSigmoid", {x}, {}, {Attr::f("alpha", 0.2f), Attr::f("beta", 0.5f)});
    case Activation::Softmax: return g.node("Softmax", {x}, {}, {Attr::i("axis", -1)});
    case Activation::Softplus: return g.node("Softplus", {x}, {});
    case Activation::Swish: return g.node("Mul", {x, g.node("Sigmoid", {x}, {})}, {});
    case Activation::Gelu: {  // x (1 + erf(x / sqrt(2))) / 2
      const std::string r = g.floats(g.fresh("inv_sqrt2"), {}, {0.70710678118654752440f});
      const std::string one = g.floats(g.fresh("one"), {}, {1.0f}), half = g.floats(g.fresh("half"), {}, {0.5f});
      const std::string e = g.node("Add", {g.node("Erf", {g.node("Mul", {x, r}, {})}, {}), one}, {});
      return g.node("Mul", {g.node("Mul", {x, e}, {}), half}, {});
    }
  }
  throw UnsupportedError("export_onnx: activation '" + to_string(a) + "'");
}

/// `l` as the built-in layer class L (whose options the export reads); UnsupportedError naming the
/// layer when it is another class of the same type name.
template <class L, class T>
const L& as_builtin(const Layer<T, Cpu>& l) {
  if (const auto* p = dynamic_cast<const L*>(&l)) return *p;
  throw UnsupportedError("export_onnx: layer '" + l.name() + "' (" + l.type_name() +
                         ") is not fastnn's built-in layer of that type");
}

/// What the export needs of a recurrent layer's options.
struct RecurrentSpec {
  std::string cell;  ///< "LSTM", "GRU", "SimpleRNN"
  Index units = 0;
  bool return_sequences = false, go_backwards = false, reset_after = false;
  Activation activation = Activation::Tanh, recurrent_activation = Activation::Sigmoid;
};

template <class T>
RecurrentSpec recurrent_spec(const Layer<T, Cpu>& l, const std::string& who) {
  RecurrentSpec r;
  if (const auto* p = dynamic_cast<const LSTM<T, Cpu>*>(&l)) {
    const LSTMOptions& o = p->options();
    r = {"LSTM", o.units(), o.return_sequences(), o.go_backwards(), false, o.activation(), o.recurrent_activation()};
  } else if (const auto* p = dynamic_cast<const GRU<T, Cpu>*>(&l)) {
    const GRUOptions& o = p->options();
    r = {"GRU", o.units(), o.return_sequences(), o.go_backwards(), o.reset_after(), o.activation(),
         o.recurrent_activation()};
  } else if (const auto* p = dynamic_cast<const SimpleRNN<T, Cpu>*>(&l)) {
    const SimpleRNNOptions& o = p->options();
    r = {"SimpleRNN", o.units(), o.return_sequences(), o.go_backwards(), false, o.activation(), Activation::Sigmoid};
  } else {
    throw UnsupportedError("export_onnx: layer '" + who + "': recurrent cell '" + l.type_name() + "'");
  }
  return r;
}

/// The ONNX weights of one direction of a recurrent layer from Keras's kernel [F, G H],
/// recurrent_kernel [H, G H] and bias ([G H], or [2, G H] for GRU's reset_after): W [G H, F],
/// R [G H, H], B [2 G H], gates reordered by `order` (ONNX gate k = Keras gate order[k]).
template <class T>
void direction_weights(const std::vector<Parameter<T, Cpu>>& p, std::size_t first, Index F, Index H,
                       const std::vector<int>& order, std::vector<float>& W, std::vector<float>& R,
                       std::vector<float>& B) {
  const Index G = static_cast<Index>(order.size());
  const Tensor<T, Cpu>& k = p[first].value;
  const Tensor<T, Cpu>& rk = p[first + 1].value;
  const Tensor<T, Cpu>& b = p[first + 2].value;
  const bool two = b.size() == 2 * G * H;
  for (Index gi = 0; gi < G; ++gi) {
    const Index src = order[static_cast<std::size_t>(gi)];
    for (Index j = 0; j < H; ++j) {
      for (Index f = 0; f < F; ++f) W.push_back(static_cast<float>(k[f * G * H + src * H + j]));
      for (Index h = 0; h < H; ++h) R.push_back(static_cast<float>(rk[h * G * H + src * H + j]));
    }
  }
  std::vector<float> wb, rb;
  for (Index gi = 0; gi < G; ++gi) {
    const Index src = order[static_cast<std::size_t>(gi)];
    for (Index j = 0; j < H; ++j) {
      wb.push_back(static_cast<float>(b[src * H + j]));
      rb.push_back(two ? static_cast<float>(b[G * H + src * H + j]) : 0.0f);
    }
  }
  B.insert(B.end(), wb.begin(), wb.end());
  B.insert(B.end(), rb.begin(), rb.end());
}

/// A recurrent layer (or Bidirectional over one) on x [N, S, F] -> its output.
template <class T>
std::string recurrent(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in, const std::string& lens,
                      bool bidirectional) {
  const Bidirectional<T, Cpu>* bi = bidirectional ? &as_builtin<Bidirectional<T, Cpu>>(l) : nullptr;
  const RecurrentSpec spec = recurrent_spec(bi ? bi->forward_layer() : l, l.name());
  const std::string& cell = spec.cell;
  const MergeMode merge = bi ? bi->merge_mode() : MergeMode::Concat;
  const Index F = in[1], H = spec.units;
  const bool seq = spec.return_sequences;
  const bool backwards = spec.go_backwards;
  std::string op;
  std::vector<int> order;
  std::vector<Attr> attrs{Attr::i("hidden_size", H)};
  const std::string act = onnx_activation(spec.activation, l.name());
  if (cell == "LSTM") {
    op = "LSTM";
    order = {0, 3, 1, 2};  // ONNX i, o, f, c from Keras i, f, c, o
    const std::string ra = onnx_activation(spec.recurrent_activation, l.name());
    attrs.push_back(Attr::strings("activations", bidirectional ? std::vector<std::string>{ra, act, act, ra, act, act}
                                                                : std::vector<std::string>{ra, act, act}));
  } else if (cell == "GRU") {
    op = "GRU";
    order = {0, 1, 2};  // z, r, h in both
    const std::string ra = onnx_activation(spec.recurrent_activation, l.name());
    attrs.push_back(Attr::strings("activations", bidirectional ? std::vector<std::string>{ra, act, ra, act}
                                                                : std::vector<std::string>{ra, act}));
    if (spec.reset_after) attrs.push_back(Attr::i("linear_before_reset", 1));
  } else if (cell == "SimpleRNN") {
    op = "RNN";
    order = {0};
    attrs.push_back(Attr::strings("activations", bidirectional ? std::vector<std::string>{act, act}
                                                                : std::vector<std::string>{act}));
  } else {
    throw UnsupportedError("export_onnx: layer '" + l.name() + "': recurrent cell '" + cell + "'");
  }
  if (bidirectional) {
    if (backwards) throw UnsupportedError("export_onnx: layer '" + l.name() + "': Bidirectional over go_backwards");
    attrs.push_back(Attr::s("direction", "bidirectional"));
  } else if (backwards) {
    attrs.push_back(Attr::s("direction", "reverse"));
  }
  const Index dirs = bidirectional ? 2 : 1;
  const Index G = static_cast<Index>(order.size());
  std::vector<float> W, R, B;
  const auto& p = l.parameters();
  for (Index d = 0; d < dirs; ++d) direction_weights(p, static_cast<std::size_t>(3 * d), F, H, order, W, R, B);
  const std::string base = l.name();
  const std::string w = g.floats(base + ".W", {dirs, G * H, F}, W);
  const std::string r = g.floats(base + ".R", {dirs, G * H, H}, R);
  const std::string b = g.floats(base + ".B", {dirs, 2 * G * H}, B);
  const std::string xt = g.node("Transpose", {x}, {}, {Attr::ints("perm", {1, 0, 2})});  // [S, N, F]
  const std::string y = g.fresh(op + "_Y"), yh = g.fresh(op + "_Y_h");
  g.node(op, {xt, w, r, b, lens}, {y, yh}, attrs);
  if (!seq) {  // Y_h [dirs, N, H] -> [N, dirs * H] (concat); other merges below
    if (!bidirectional) return g.node("Squeeze", {yh, g.int64s("axes", {0})}, {});
    if (merge == MergeMode::Concat) {
      const std::string t = g.node("Transpose", {yh}, {}, {Attr::ints("perm", {1, 0, 2})});
      return g.node("Reshape", {t, g.int64s("shape", {0, -1})}, {});
    }
    const std::string h0 = g.node("Gather", {yh, g.int64s("i", {0})}, {}, {Attr::i("axis", 0)});
    const std::string h1 = g.node("Gather", {yh, g.int64s("i", {1})}, {}, {Attr::i("axis", 0)});
    std::string m;
    if (merge == MergeMode::Sum) m = g.node("Add", {h0, h1}, {});
    else if (merge == MergeMode::Mul) m = g.node("Mul", {h0, h1}, {});
    else m = g.node("Mul", {g.node("Add", {h0, h1}, {}), g.floats(g.fresh("half"), {}, {0.5f})}, {});  // ave
    return g.node("Squeeze", {m, g.int64s("axes", {0})}, {});
  }
  // return_sequences: Y [S, dirs, N, H] -> [N, S, dirs * H] (concat) or merged -> [N, S, H]
  if (!bidirectional) {
    std::string sq = g.node("Squeeze", {y, g.int64s("axes", {1})}, {});  // [S, N, H]
    if (backwards) {
      // ONNX's "reverse" direction writes step t's output at t; Keras's go_backwards returns the
      // outputs in processing order, last real step first, padding still at the end.
      if (lens.empty()) {
        const std::int64_t before_first = std::numeric_limits<std::int64_t>::min();
        sq = g.node("Slice",
                    {sq, g.int64s("starts", {-1}), g.int64s("ends", {before_first}), g.int64s("axes", {0}),
                     g.int64s("steps", {-1})},
                    {});
      } else {
        sq = g.node("ReverseSequence", {sq, g.node("Cast", {lens}, {}, {Attr::i("to", kInt64)})}, {},
                    {Attr::i("batch_axis", 1), Attr::i("time_axis", 0)});
      }
    }
    return g.node("Transpose", {sq}, {}, {Attr::ints("perm", {1, 0, 2})});
  }
  const std::string t = g.node("Transpose", {y}, {}, {Attr::ints("perm", {2, 0, 1, 3})});  // [N, S, 2, H]
  switch (merge) {
    case MergeMode::Concat: return g.node("Reshape", {t, g.int64s("shape", {0, 0, -1})}, {});
    case MergeMode::Sum: return g.node("ReduceSum", {t, g.int64s("axes", {2})}, {}, {Attr::i("keepdims", 0)});
    case MergeMode::Mul:
      return g.node("ReduceProd", {t}, {}, {Attr::ints("axes", {2}), Attr::i("keepdims", 0)});
    case MergeMode::Ave:
      return g.node("ReduceMean", {t}, {}, {Attr::ints("axes", {2}), Attr::i("keepdims", 0)});
  }
  throw UnsupportedError("export_onnx: layer '" + l.name() + "': merge_mode '" + to_string(merge) + "'");
}

/// The per-sample lengths of one layer call: int32 [N] values, an empty name where every sample has the
/// full length.
struct CallLengths {
  std::vector<std::string> inputs;    ///< the lengths of each input of the call, in order
  std::optional<std::string> output;  ///< the output's, where the exporter sets them (see output_lengths)
};

/// The lengths of a call's output: those its exporter set (Embedding with mask_zero and Masking make new
/// ones, a global pooling consumes them, MultiHeadAttention passes the query's), else, as fastnn's layers by
/// default, the smallest of the inputs' (their elementwise Min, one node when they differ).
inline std::string output_lengths(Graph& g, const CallLengths& c) {
  if (c.output) return *c.output;
  std::vector<std::string> ls;
  for (const std::string& l : c.inputs)
    if (!l.empty() && std::find(ls.begin(), ls.end(), l) == ls.end()) ls.push_back(l);
  return ls.empty() ? std::string() : ls.size() == 1 ? ls[0] : g.node("Min", ls, {});
}

/// Exports one call of a layer: adds its nodes to `g` reading the values `xs` (one per input of
/// the call; per-sample shapes `in`; lengths `lens.inputs`) and returns the value of the call's
/// output, setting `lens.output` where its lengths are not the default (output_lengths). Single-
/// and multi-input layers (the merge layers, MultiHeadAttention) register exporters of this one kind.
template <class T>
using LayerExporter = std::function<std::string(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                                                const std::vector<Shape>& in, CallLengths& lens)>;

/// The exporter of a single-input layer: value `x` of per-sample shape `in`, lengths `lens`.
template <class T>
using UnaryLayerExporter = std::function<std::string(Graph& g, const Layer<T, Cpu>& l, const std::string& x,
                                                     const Shape& in, const std::string& lens)>;

/// `f` as a LayerExporter (the output keeps the input's lengths): refuses a call on several inputs.
template <class T>
LayerExporter<T> unary_exporter(UnaryLayerExporter<T> f) {
  return [f = std::move(f)](Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                            const std::vector<Shape>& in, CallLengths& lens) {
    if (xs.size() != 1 || in.size() != 1 || lens.inputs.size() != 1)
      throw UnsupportedError("export_onnx: layer '" + l.name() + "' (" + l.type_name() +
                             ") takes one input, called on " + std::to_string(xs.size()));
    return f(g, l, xs[0], in[0], lens.inputs[0]);
  };
}

/// The steps 0, 1, ..., steps - 1 (int64 [steps]).
inline std::string step_range(Graph& g, Index steps) {
  std::vector<std::int64_t> r(static_cast<std::size_t>(steps));
  for (Index t = 0; t < steps; ++t) r[static_cast<std::size_t>(t)] = t;
  return g.int64s("steps", r);
}

/// Which steps are real (bool [N, steps]: step t < lengths[n]) for the lengths value `lens` (int32 [N]).
inline std::string real_steps(Graph& g, const std::string& lens, Index steps) {
  const std::string l64 = g.node("Cast", {lens}, {}, {Attr::i("to", kInt64)});
  const std::string column = g.node("Unsqueeze", {l64, g.int64s("axes", {1})}, {});  // [N, 1]
  return g.node("Less", {step_range(g, steps), column}, {});
}

template <class T>
class LayerExporters;
template <class T>
void add_builtin_exporters(LayerExporters<T>& r);

/// The exporters, keyed by layer type name: the built-in layers' (Dense, the recurrent layers,
/// Bidirectional, Embedding, Masking, Dropout, Flatten) are there from the start; others register
/// with register_onnx_exporter (io/onnx_spatial.hpp, io/onnx_graph.hpp, io/onnx_transformer.hpp).
template <class T>
class LayerExporters {
 public:
  static LayerExporters& instance() {
    static LayerExporters r;
    return r;
  }
  /// Registers (or replaces) the exporter of `type`.
  void add(const std::string& type, LayerExporter<T> f) {
    std::lock_guard<std::mutex> lock(mutex_);
    exporters_[type] = std::move(f);
  }
  /// The exporter of `type`, or an empty function.
  LayerExporter<T> find(const std::string& type) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = exporters_.find(type);
    return it == exporters_.end() ? LayerExporter<T>() : it->second;
  }
  /// The exporter of `l`'s type; UnsupportedError naming the layer when none is registered.
  LayerExporter<T> of(const Layer<T, Cpu>& l) const {
    LayerExporter<T> f = find(l.type_name());
    if (!f) throw UnsupportedError("export_onnx: layer '" + l.name() + "' (" + l.type_name() + ") has no ONNX export");
    return f;
  }

 private:
  LayerExporters() { add_builtin_exporters(*this); }
  mutable std::mutex mutex_;
  std::map<std::string, LayerExporter<T>> exporters_;
};

template <class T>
std::string export_dense(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape&, const std::string&) {
  const DenseOptions& o = as_builtin<Dense<T, Cpu>>(l).options();
  const auto& p = l.parameters();
  const Tensor<T, Cpu>& k = p[0].value;
  std::vector<float> kv(k.data(), k.data() + k.size());
  std::string y = g.node("MatMul", {x, g.floats(l.name() + ".kernel", {k.dim(0), k.dim(1)}, kv)}, {});
  if (p.size() > 1) {
    const Tensor<T, Cpu>& b = p[1].value;
    const std::vector<float> bv(b.data(), b.data() + b.size());
    y = g.node("Add", {y, g.floats(l.name() + ".bias", {b.dim(0)}, bv)}, {});
  }
  return activate(g, y, o.activation());
}

template <class T>
std::string export_embedding(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                             const std::vector<Shape>&, CallLengths& lens) {
  const EmbeddingOptions& o = as_builtin<Embedding<T, Cpu>>(l).options();
  const Tensor<T, Cpu>& e = l.parameters()[0].value;
  const std::string ids = g.node("Cast", {xs.at(0)}, {}, {Attr::i("to", kInt64)});
  const std::string y = g.node("Gather", {g.floats(l.name() + ".embeddings", {e.dim(0), e.dim(1)},
                                                   std::vector<float>(e.data(), e.data() + e.size())),
                                          ids},
                               {}, {Attr::i("axis", 0)});
  if (o.mask_zero()) {  // lengths: the ids before the first 0 (padding is trailing)
    const std::string real = g.node("Not", {g.node("Equal", {ids, g.int64s("zero", {0})}, {})}, {});
    lens.output = g.node("ReduceSum", {g.node("Cast", {real}, {}, {Attr::i("to", kInt32)}), g.int64s("axes", {1})},
                         {}, {Attr::i("keepdims", 0)});
  }
  return y;
}

/// Masking: a step is padding when all its features equal mask_value; its output is zeroed and
/// the lengths (padding is trailing) count the real steps.
template <class T>
std::string export_masking(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                           const std::vector<Shape>&, CallLengths& lens) {
  const float v = static_cast<float>(as_builtin<Masking<T, Cpu>>(l).options().mask_value());
  const std::string& x = xs.at(0);
  const std::string mask_value = g.floats(g.fresh("mask_value"), {}, {v});
  const std::string differs = g.node("Not", {g.node("Equal", {x, mask_value}, {})}, {});
  const std::string real = g.node("ReduceMax", {g.node("Cast", {differs}, {}, {Attr::i("to", kFloat)})}, {},
                                  {Attr::ints("axes", {2}), Attr::i("keepdims", 1)});  // [N, S, 1]
  const std::string y = g.node("Mul", {x, real}, {});
  lens.output = g.node("Cast", {g.node("ReduceSum", {real, g.int64s("axes", {1, 2})}, {}, {Attr::i("keepdims", 0)})},
                       {}, {Attr::i("to", kInt32)});
  return y;
}

template <class T>
void add_builtin_exporters(LayerExporters<T>& r) {
  r.add("Dense", unary_exporter<T>(export_dense<T>));
  for (const char* type : {"LSTM", "GRU", "SimpleRNN", "Bidirectional"}) {
    const bool bi = std::string(type) == "Bidirectional";
    r.add(type, unary_exporter<T>([bi](Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                                       const std::string& lens) { return recurrent(g, l, x, in, lens, bi); }));
  }
  r.add("Embedding", export_embedding<T>);
  r.add("Masking", export_masking<T>);
  r.add("Dropout", unary_exporter<T>([](Graph&, const Layer<T, Cpu>&, const std::string& x, const Shape&,
                                        const std::string&) { return x; }));  // identity at inference
  r.add("Flatten", unary_exporter<T>([](Graph& g, const Layer<T, Cpu>&, const std::string& x, const Shape&,
                                        const std::string&) {
          return g.node("Reshape", {x, g.int64s("shape", {0, -1})}, {});
        }));
}

/// Writes the model `g` to `path` atomically.
inline void write_model(const Graph& g, const std::string& path) {
  const std::string bytes = g.model("fastnn");
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace onnx_detail

/// Registers `f` as the ONNX exporter of layers whose type_name() is `type` (replacing an earlier
/// one, built-in ones included); export_onnx looks every layer up by its type name. Returns true.
template <class T>
bool register_onnx_exporter(const std::string& type, onnx_detail::LayerExporter<T> f) {
  onnx_detail::LayerExporters<T>::instance().add(type, std::move(f));
  return true;
}
/// The same for the exporter of a single-input layer.
template <class T>
bool register_onnx_unary_exporter(const std::string& type, onnx_detail::UnaryLayerExporter<T> f) {
  return register_onnx_exporter<T>(type, onnx_detail::unary_exporter<T>(std::move(f)));
}

/// Writes `model` (built, on the CPU) to `path` as ONNX (see the file comment). Throws
/// UnsupportedError naming the layer it cannot express, before writing anything.
/// With `sequence_lens`, the graph has a second input `sequence_lens` [N] (int32): each
/// sample's real length, as the `lengths` argument of predict().
template <class T>
void export_onnx(const Sequential<T, Cpu>& model, const std::string& path, bool sequence_lens = false) {
  using namespace onnx_detail;
  if (!model.built()) throw ArgumentError("export_onnx: call build() first");
  Graph g;
  std::vector<std::int64_t> in_dims{-1};
  for (Index d = 0; d < model.input_shape().rank(); ++d) in_dims.push_back(model.input_shape()[d]);
  g.io(true, "input", kFloat, in_dims);
  std::string x = "input", lens;
  if (sequence_lens) {
    g.io(true, "sequence_lens", kInt32, {-1});
    lens = "sequence_lens";
  }
  Shape s = model.input_shape();
  const LayerExporters<T>& exporters = LayerExporters<T>::instance();
  for (std::size_t i = 0; i < model.num_layers(); ++i) {
    const Layer<T, Cpu>& l = model.layer(i);
    CallLengths c{{lens}, std::nullopt};
    x = exporters.of(l)(g, l, {x}, {s}, c);
    lens = output_lengths(g, c);
    s = l.output_shape();
  }
  std::vector<std::int64_t> out_dims{-1};
  for (Index d = 0; d < model.output_shape().rank(); ++d) out_dims.push_back(model.output_shape()[d]);
  g.node("Identity", {x}, {"output"});
  g.io(false, "output", kFloat, out_dims);
  write_model(g, path);
}

}  // namespace io
}  // namespace fastnn
