#pragma once
/// \file graph_weights.hpp
/// Graph models (model/graph.hpp) in weights files: io::save_weights(model, path) and io::load_weights(model, path)
/// take a Model as they take a Sequential (io/weights.hpp), and io::load_graph_model rebuilds a Model from a file
/// of either kind (a Sequential's file becomes a chain).
///
/// The file's metadata records the layers as for a Sequential (`fastnn.layers`: name, type, config, in the order of
/// their parameters; `fastnn.input_shape`: the first input's shape) and the graph in `fastnn.graph`:
///
///   {"inputs":  [{"name": "x", "shape": [6, 5]}, ...],
///    "nodes":   [{"layer": "lstm", "inbound": ["x"]}, {"layer": "add", "inbound": ["x", "lstm[0]"]}, ...],
///    "outputs": ["dense[0]"]}
///
/// A node is one call of a layer; a tensor is an input's name or "<layer>[<k>]", the output of the layer's k-th call.
/// Parameter names are those of a Sequential (`<layer>.<parameter>`), so PyTorch reads them alike.
///
/// A nested model (a Model called as a layer: ModelLayer, type "Functional") is one layer of `fastnn.layers`, its
/// parameters named `<layer>.<inner layer>.<parameter>`. The node of its first call carries its graph as JSON text,
/// the same record with the nested model's layers ("trainable": false on a frozen one; JSON text keeps each level
/// within the depth limit of 4):
///
///   {"layer": "block", "inbound": ["x"], "graph": "{\"inputs\": [...], \"layers\": [{\"name\": \"lstm\",
///    \"type\": \"LSTM\", \"config\": {...}}, ...], \"nodes\": [...], \"outputs\": [...]}"}
///
/// Models nest at most kMaxGraphNesting deep, and a graph makes at most kMaxGraphCalls layer calls counting those
/// of a nested model at each of its calls.
///
/// A hostile record is a FormatError naming the field (`__metadata__.fastnn.graph.nodes[3]`) and the node: a node
/// reading a tensor that is neither an input nor an earlier node's output (an unknown name, a cycle, a missing input),
/// an unknown layer, more than kMaxGraphNodes nodes or kMaxGraphInputs inputs, JSON nested deeper than 4, more
/// parameters than the file holds, or a graph that does not build (wrong shapes, an unused input or layer). In a
/// nested graph the field goes on (`...nodes[0].graph.nodes[2]`); models nested deeper than kMaxGraphNesting (a
/// depth bomb), a graph on a layer that is no model, or a model's first call without its graph are FormatErrors
/// naming the node.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastnn/io/weights.hpp"
#include "fastnn/model/graph.hpp"

namespace fastnn {
namespace io {

inline constexpr std::size_t kMaxGraphNodes = 4096;
inline constexpr std::size_t kMaxGraphInputs = 64;
/// Models nested in models (the outer model's graph is depth 0).
inline constexpr int kMaxGraphNesting = 8;
/// Layer calls of a graph with each call of a nested model counted as the calls of its graph.
inline constexpr std::size_t kMaxGraphCalls = 4 * kMaxGraphNodes;

namespace detail {

template <class T, class D>
nlohmann::json nested_graph_record(const ModelLayer<T, D>& m);

/// The record of a graph: its inputs, nodes and outputs (see the file comment); a node calling a nested model
/// (ModelLayer) for the first time carries the nested graph as JSON text in "graph", with its layers.
template <class T, class D, class Calls>
nlohmann::json graph_record(const std::vector<std::string>& input_names, const std::vector<Shape>& input_shapes,
                            const std::vector<const Layer<T, D>*>& layers, const Calls& calls,
                            const std::vector<int>& outputs) {
  std::vector<std::string> tensor;
  nlohmann::json inputs = nlohmann::json::array();
  for (std::size_t i = 0; i < input_names.size(); ++i) {
    const auto dims = input_shapes[i].to_vector();
    inputs.push_back({{"name", input_names[i]}, {"shape", std::vector<std::uint64_t>(dims.begin(), dims.end())}});
    tensor.push_back(input_names[i]);
  }
  nlohmann::json nodes = nlohmann::json::array();
  for (const auto& c : calls) {
    const Layer<T, D>& l = *layers.at(c.layer);
    nlohmann::json in = nlohmann::json::array();
    for (int t : c.inputs) in.push_back(tensor.at(static_cast<std::size_t>(t)));
    nlohmann::json node = {{"layer", l.name()}, {"inbound", in}};
    if (const auto* nested = dynamic_cast<const ModelLayer<T, D>*>(&l); nested && c.call_index == 0)
      node["graph"] = nested_graph_record(*nested).dump();
    nodes.push_back(node);
    tensor.push_back(l.name() + "[" + std::to_string(c.call_index) + "]");
  }
  nlohmann::json outs = nlohmann::json::array();
  for (int t : outputs) outs.push_back(tensor.at(static_cast<std::size_t>(t)));
  return nlohmann::json{{"inputs", inputs}, {"nodes", nodes}, {"outputs", outs}};
}

/// A nested model's graph record, with its layers: {"inputs", "layers": [{"name", "type", "config"}], "nodes",
/// "outputs"}.
template <class T, class D>
nlohmann::json nested_graph_record(const ModelLayer<T, D>& m) {
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  for (std::size_t i = 0; i < m.num_model_inputs(); ++i) {
    names.push_back(m.model_input_name(i));
    shapes.push_back(m.model_input_shape(i));
  }
  std::vector<const Layer<T, D>*> layers;
  nlohmann::json records = nlohmann::json::array();
  for (std::size_t i = 0; i < m.num_model_layers(); ++i) {
    const Layer<T, D>& l = m.model_layer(i);
    layers.push_back(&l);
    nlohmann::json rec = {{"name", l.name()}, {"type", l.type_name()}, {"config", l.config()}};
    if (!l.trainable()) rec["trainable"] = false;
    records.push_back(rec);
  }
  nlohmann::json g = graph_record(names, shapes, layers, m.call_records(), {m.output_tensor()});
  g["layers"] = records;
  return g;
}

/// Rebuilds the symbolic graph of a graph record, and the models nested in it, checking every field (see the file
/// comment); FormatError naming the field of the node.
template <class T, class D>
class GraphLoader {
  using Sym = SymbolicTensor<T, D>;

 public:
  /// `limit`: the most parameter values the file can hold.
  GraphLoader(std::string path, std::uint64_t limit) : path_(std::move(path)), limit_(limit) {}

  /// Builds graph `g` (at field `at` under __metadata__.fastnn.graph, nested `depth` models deep) whose layers are
  /// `records`. Returns its layer calls, a nested model's counted as its graph's.
  std::size_t build(const nlohmann::json& g, const std::vector<LayerRecord>& records, const std::string& at,
                    int depth, std::vector<Sym>& inputs, std::vector<Sym>& outputs) {
    if (!g.is_object() || !g.contains("inputs") || !g.contains("nodes") || !g.contains("outputs") ||
        !g["inputs"].is_array() || !g["nodes"].is_array() || !g["outputs"].is_array())
      throw fail(at, "expected {\"inputs\": [...], \"nodes\": [...], \"outputs\": [...]}");
    if (g["inputs"].empty() || g["inputs"].size() > kMaxGraphInputs)
      throw fail(at + ".inputs", "expected 1 to " + std::to_string(kMaxGraphInputs) + " inputs, got " +
                                     std::to_string(g["inputs"].size()));
    if (g["nodes"].empty() || g["nodes"].size() > kMaxGraphNodes)
      throw fail(at + ".nodes", "expected 1 to " + std::to_string(kMaxGraphNodes) + " nodes, got " +
                                    std::to_string(g["nodes"].size()));
    if (g["outputs"].empty() || g["outputs"].size() > kMaxGraphInputs)
      throw fail(at + ".outputs", "expected 1 to " + std::to_string(kMaxGraphInputs) + " outputs");

    std::map<std::string, Sym> tensors;
    for (std::size_t i = 0; i < g["inputs"].size(); ++i) {
      const auto& in = g["inputs"][i];
      const std::string where = at + ".inputs[" + std::to_string(i) + "]";
      if (!in.is_object() || !in.contains("name") || !in.contains("shape") || !in["name"].is_string() ||
          !in["shape"].is_array())
        throw fail(where, "expected {\"name\": string, \"shape\": [extents]}");
      const std::string name = in["name"].get<std::string>();
      if (name.empty() || name.size() > 256) throw fail(where, "an input name of 1 to 256 characters");
      if (tensors.count(name)) throw fail(where, "input '" + detail::printable(name) + "' is listed twice");
      const auto& sh = in["shape"];
      if (sh.empty() || sh.size() > static_cast<std::size_t>(Shape::kMaxRank))
        throw fail(where, "expected 1 to " + std::to_string(Shape::kMaxRank) + " extents");
      std::vector<Index> dims;
      for (const auto& e : sh) {
        if (!e.is_number_unsigned() || e.get<std::uint64_t>() == 0 ||
            e.get<std::uint64_t>() > (std::uint64_t{1} << 30))
          throw fail(where, "extent " + e.dump() + " is not an integer in [1, 2^30]");
        dims.push_back(static_cast<Index>(e.get<std::uint64_t>()));
      }
      auto x = Input<T, D>(Shape(dims), name);
      tensors[name] = x;
      inputs.push_back(x);
    }

    std::map<std::string, const LayerRecord*> by_name;
    for (const auto& l : records) by_name[l.name] = &l;
    std::map<std::string, std::shared_ptr<Layer<T, D>>> layers;
    std::map<std::string, std::size_t> nested_calls;  // a nested model's calls, per call of it
    std::map<std::string, int> calls;
    std::size_t count = 0;
    for (std::size_t k = 0; k < g["nodes"].size(); ++k) {
      const auto& n = g["nodes"][k];
      const std::string where = at + ".nodes[" + std::to_string(k) + "]";
      if (!n.is_object() || !n.contains("layer") || !n.contains("inbound") || !n["layer"].is_string() ||
          !n["inbound"].is_array() || n["inbound"].empty() || n["inbound"].size() > kMaxGraphInputs)
        throw fail(where, "expected {\"layer\": string, \"inbound\": [1 to " + std::to_string(kMaxGraphInputs) +
                              " tensor names]}");
      const std::string name = n["layer"].get<std::string>();
      auto rec_it = by_name.find(name);
      if (rec_it == by_name.end())
        throw fail(where, "node calls layer '" + detail::printable(name) + "', which " + layers_record(depth) +
                              " does not list");
      std::vector<Sym> in;
      for (const auto& t : n["inbound"]) {
        if (!t.is_string()) throw fail(where, "node of '" + name + "': an inbound tensor is not a name");
        auto it = tensors.find(t.get<std::string>());
        if (it == tensors.end())
          throw fail(where, "node of '" + name + "' reads '" + detail::printable(t.get<std::string>()) +
                                "', which is neither an input nor the output of an earlier node");
        in.push_back(it->second);
      }
      const bool functional = rec_it->second->type == "Functional";
      auto& layer = layers[name];
      if (n.contains("graph")) {
        if (!functional)
          throw fail(where, "node of '" + name + "' carries a graph, but the layer is a " +
                                detail::printable(rec_it->second->type));
        if (layer) throw fail(where, "node of '" + name + "' carries a graph again (only the first call does)");
        if (depth + 1 > kMaxGraphNesting)
          throw fail(where, "node of '" + name + "' nests models deeper than " + std::to_string(kMaxGraphNesting));
        if (!n["graph"].is_string()) throw fail(where, "node of '" + name + "': the graph is not JSON text");
        layer = nested(name, n["graph"].get<std::string>(), where, depth + 1, nested_calls[name]);
      } else if (functional && !layer) {
        throw fail(where, "node of '" + name + "' (Functional) calls the model first and carries no graph");
      }
      count += functional ? nested_calls[name] : 1;
      if (count > kMaxGraphCalls)
        throw fail(where, "the graph makes more than " + std::to_string(kMaxGraphCalls) +
                              " layer calls, counting those of nested models at each call");
      try {
        if (!layer) {
          layer = make_layer<T, D>(rec_it->second->type, rec_it->second->config);
          layer->set_name(name);
          // Bound the parameters by the file size before anything of that size is allocated.
          auto probe = layer->clone_unbuilt();
          probe->set_name(name);
          std::vector<Shape> shapes;
          for (const auto& x : in) shapes.push_back(x.shape());
          probe->build_inputs(shapes);
          for (const auto& spec : probe->param_specs()) {
            std::uint64_t c = 1;
            for (int d = 0; d < spec.shape.rank(); ++d) {
              const auto e = static_cast<std::uint64_t>(spec.shape[d]);
              c = (e != 0 && c > limit_ / e) ? limit_ + 1 : c * e;
            }
            total_ = total_ + c > limit_ ? limit_ + 1 : total_ + c;
          }
          if (total_ > limit_) throw fail(where, "the layers declare more parameters than the file holds");
        }
        tensors[name + "[" + std::to_string(calls[name]++) + "]"] = call(layer, in);
      } catch (const IoError&) {  // FormatError included
        throw;
      } catch (const Error& e) {
        throw fail(where, "cannot call '" + detail::printable(name) + "': " + e.what());
      }
    }
    for (const auto& l : records)
      if (!layers.count(l.name))
        throw fail(at + ".nodes", "layer '" + detail::printable(l.name) + "' is listed in " + layers_record(depth) +
                                      " but never called");
    for (std::size_t i = 0; i < g["outputs"].size(); ++i) {
      const auto& o = g["outputs"][i];
      const std::string where = at + ".outputs[" + std::to_string(i) + "]";
      if (!o.is_string() || !tensors.count(o.get<std::string>()))
        throw fail(where, "names no input or node output: " + o.dump().substr(0, 100));
      outputs.push_back(tensors[o.get<std::string>()]);
    }
    return count;
  }

 private:
  static std::string layers_record(int depth) { return depth == 0 ? "fastnn.layers" : "the graph's layers"; }
  FormatError fail(const std::string& where, const std::string& what) const {
    return FormatError(path_, std::string("__metadata__.") + kGraphKey + where, what);
  }

  /// The nested model `name` recorded as JSON text `text` at field `where`; `calls`: its graph's layer calls.
  std::shared_ptr<Layer<T, D>> nested(const std::string& name, const std::string& text, const std::string& where,
                                      int depth, std::size_t& calls) {
    const std::string at = where + ".graph";
    const nlohmann::json g = detail::parse_metadata_json(path_, std::string(kGraphKey) + at, text, 4);
    if (!g.is_object() || !g.contains("layers") || !g["layers"].is_array() || g["layers"].empty() ||
        g["layers"].size() > kMaxGraphNodes)
      throw fail(at, "the graph of '" + detail::printable(name) + "' has no \"layers\": [1 to " +
                         std::to_string(kMaxGraphNodes) + " {\"name\", \"type\", \"config\"}]");
    std::vector<LayerRecord> records;
    std::set<std::string> seen, frozen;
    for (std::size_t i = 0; i < g["layers"].size(); ++i) {
      const auto& l = g["layers"][i];
      const std::string lw = at + ".layers[" + std::to_string(i) + "]";
      if (!l.is_object() || !l.contains("name") || !l.contains("type") || !l.contains("config") ||
          !l["name"].is_string() || !l["type"].is_string() || !l["config"].is_object())
        throw fail(lw, "expected {\"name\": string, \"type\": string, \"config\": {...}}");
      LayerRecord r;
      r.name = l["name"].get<std::string>();
      r.type = l["type"].get<std::string>();
      if (r.name.empty() || r.name.size() > 256) throw fail(lw, "a layer name of 1 to 256 characters");
      if (!seen.insert(r.name).second) throw fail(lw, "layer '" + detail::printable(r.name) + "' is listed twice");
      if (l.contains("trainable")) {
        if (!l["trainable"].is_boolean()) throw fail(lw, "\"trainable\" is not true or false");
        if (!l["trainable"].get<bool>()) frozen.insert(r.name);
      }
      for (const auto& kv : l["config"].items()) {
        if (!kv.value().is_string()) throw fail(lw, "config value '" + detail::printable(kv.key()) + "' is not text");
        r.config[kv.key()] = kv.value().get<std::string>();
      }
      records.push_back(std::move(r));
    }
    std::vector<Sym> inputs, outputs;
    calls = build(g, records, at, depth, inputs, outputs);
    try {
      Model<T, D> m(inputs, outputs, 0, name);
      for (const auto& f : frozen) m.get_layer(f).set_trainable(false);
      auto layer = m.as_layer();
      layer->set_name(name);
      return layer;
    } catch (const Error& e) {
      throw fail(at, "cannot build the model '" + detail::printable(name) + "': " + e.what());
    }
  }

  std::string path_;
  std::uint64_t limit_ = 0, total_ = 0;
};

}  // namespace detail

template <class T, class D>
ModelRecord describe(const Model<T, D>& model) {
  ModelRecord r;
  r.dtype = dtype_name(dtype_of<T>());
  r.input_shape = model.input_shape(0).to_vector();
  std::vector<const Layer<T, D>*> layers;
  for (std::size_t i = 0; i < model.num_layers(); ++i) {
    const auto& l = model.layer(i);
    r.layers.push_back({l.name(), l.type_name(), l.config()});
    layers.push_back(&l);
  }
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  for (std::size_t i = 0; i < model.num_inputs(); ++i) {
    names.push_back(model.input_name(i));
    shapes.push_back(model.input_shape(i));
  }
  r.graph = detail::graph_record(names, shapes, layers, model.call_records(), model.output_tensors()).dump();
  return r;
}

/// Re-creates the graph model recorded in a fastnn weights file (a graph's, or a Sequential's as a chain) on device
/// D and loads its weights. T must be the file's dtype. See the file comment for what is checked.
template <class T, class D = Cpu>
std::unique_ptr<Model<T, D>> load_graph_model(const std::string& path) {
  SafetensorsReader r(path);
  if (!has_model_record(r))
    throw FormatError(path, std::string("__metadata__.") + kFormatKey,
                      "missing: not written by fastnn, the architecture is unknown");
  const ModelRecord rec = read_model_record(r);
  if (rec.dtype != dtype_name(dtype_of<T>()))
    throw MismatchError(path + ": the file holds " + rec.dtype + " weights, the model type is " +
                        dtype_name(dtype_of<T>()));
  nlohmann::json g;
  if (rec.graph.empty()) {  // a Sequential's file: a chain from one input
    nlohmann::json nodes = nlohmann::json::array();
    std::string prev = "input";
    for (const auto& l : rec.layers) {
      nodes.push_back({{"layer", l.name}, {"inbound", {prev}}});
      prev = l.name + "[0]";
    }
    std::vector<std::uint64_t> shape(rec.input_shape.begin(), rec.input_shape.end());
    g = {{"inputs", {{{"name", "input"}, {"shape", shape}}}}, {"nodes", nodes}, {"outputs", {prev}}};
  } else {
    g = nlohmann::json::parse(rec.graph);  // valid JSON of depth <= 4: read_model_record checked it
  }
  std::vector<SymbolicTensor<T, D>> inputs, outputs;
  detail::GraphLoader<T, D>(path, r.file_size() / sizeof(T)).build(g, rec.layers, "", 0, inputs, outputs);
  std::unique_ptr<Model<T, D>> model;
  try {
    model = std::make_unique<Model<T, D>>(inputs, outputs, 0);
  } catch (const Error& e) {
    throw FormatError(path, std::string("__metadata__.") + kGraphKey, std::string("cannot build the model: ") +
                                                                          e.what());
  }
  ModelRecord mine = describe(*model);
  if (rec.graph.empty()) mine.graph.clear();  // a Sequential's file holds no graph record
  check_model_record(path, rec, mine);
  auto host = stage_parameters(r, *model, r.metadata().at(kFormatKey) == kCheckpointFormat);
  auto params = model->named_parameters();
  for (std::size_t i = 0; i < params.size(); ++i) copy_from_host(host[i], params[i].value);
  return model;
}

}  // namespace io
}  // namespace fastnn
