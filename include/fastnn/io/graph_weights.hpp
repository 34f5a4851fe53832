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
/// A hostile record is a FormatError naming the field (`__metadata__.fastnn.graph.nodes[3]`) and the node: a node
/// reading a tensor that is neither an input nor an earlier node's output (an unknown name, a cycle, a missing input),
/// an unknown layer, more than kMaxGraphNodes nodes or kMaxGraphInputs inputs, JSON nested deeper than 4, more
/// parameters than the file holds, or a graph that does not build (wrong shapes, an unused input or layer).

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

template <class T, class D>
ModelRecord describe(const Model<T, D>& model) {
  ModelRecord r;
  r.dtype = dtype_name(dtype_of<T>());
  r.input_shape = model.input_shape(0).to_vector();
  for (std::size_t i = 0; i < model.num_layers(); ++i) {
    const auto& l = model.layer(i);
    r.layers.push_back({l.name(), l.type_name(), l.config()});
  }
  const auto calls = model.call_records();
  std::vector<std::string> tensor;
  nlohmann::json inputs = nlohmann::json::array();
  for (std::size_t i = 0; i < model.num_inputs(); ++i) {
    const auto dims = model.input_shape(i).to_vector();
    inputs.push_back({{"name", model.input_name(i)}, {"shape", std::vector<std::uint64_t>(dims.begin(), dims.end())}});
    tensor.push_back(model.input_name(i));
  }
  nlohmann::json nodes = nlohmann::json::array();
  for (const auto& c : calls) {
    const std::string& name = model.layer(c.layer).name();
    nlohmann::json in = nlohmann::json::array();
    for (int t : c.inputs) in.push_back(tensor.at(static_cast<std::size_t>(t)));
    nodes.push_back({{"layer", name}, {"inbound", in}});
    tensor.push_back(name + "[" + std::to_string(c.call_index) + "]");
  }
  nlohmann::json outputs = nlohmann::json::array();
  for (int t : model.output_tensors()) outputs.push_back(tensor.at(static_cast<std::size_t>(t)));
  r.graph = nlohmann::json{{"inputs", inputs}, {"nodes", nodes}, {"outputs", outputs}}.dump();
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
  const std::string field = std::string("__metadata__.") + kGraphKey;
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
  auto fail = [&](const std::string& where, const std::string& what) -> FormatError {
    return FormatError(path, field + where, what);
  };
  if (!g.is_object() || !g.contains("inputs") || !g.contains("nodes") || !g.contains("outputs") ||
      !g["inputs"].is_array() || !g["nodes"].is_array() || !g["outputs"].is_array())
    throw fail("", "expected {\"inputs\": [...], \"nodes\": [...], \"outputs\": [...]}");
  if (g["inputs"].empty() || g["inputs"].size() > kMaxGraphInputs)
    throw fail(".inputs", "expected 1 to " + std::to_string(kMaxGraphInputs) + " inputs, got " +
                              std::to_string(g["inputs"].size()));
  if (g["nodes"].empty() || g["nodes"].size() > kMaxGraphNodes)
    throw fail(".nodes", "expected 1 to " + std::to_string(kMaxGraphNodes) + " nodes, got " +
                             std::to_string(g["nodes"].size()));
  if (g["outputs"].empty() || g["outputs"].size() > kMaxGraphInputs)
    throw fail(".outputs", "expected 1 to " + std::to_string(kMaxGraphInputs) + " outputs");

  std::map<std::string, SymbolicTensor<T, D>> tensors;
  std::vector<SymbolicTensor<T, D>> inputs, outputs;
  for (std::size_t i = 0; i < g["inputs"].size(); ++i) {
    const auto& in = g["inputs"][i];
    const std::string where = ".inputs[" + std::to_string(i) + "]";
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
      if (!e.is_number_unsigned() || e.get<std::uint64_t>() == 0 || e.get<std::uint64_t>() > (std::uint64_t{1} << 30))
        throw fail(where, "extent " + e.dump() + " is not an integer in [1, 2^30]");
      dims.push_back(static_cast<Index>(e.get<std::uint64_t>()));
    }
    auto x = Input<T, D>(Shape(dims), name);
    tensors[name] = x;
    inputs.push_back(x);
  }

  std::map<std::string, const LayerRecord*> records;
  for (const auto& l : rec.layers) records[l.name] = &l;
  std::map<std::string, std::shared_ptr<Layer<T, D>>> layers;
  std::map<std::string, int> calls;
  const std::uint64_t limit = r.file_size() / sizeof(T);
  std::uint64_t total = 0;
  for (std::size_t k = 0; k < g["nodes"].size(); ++k) {
    const auto& n = g["nodes"][k];
    const std::string where = ".nodes[" + std::to_string(k) + "]";
    if (!n.is_object() || !n.contains("layer") || !n.contains("inbound") || !n["layer"].is_string() ||
        !n["inbound"].is_array() || n["inbound"].empty() || n["inbound"].size() > kMaxGraphInputs)
      throw fail(where, "expected {\"layer\": string, \"inbound\": [1 to " + std::to_string(kMaxGraphInputs) +
                            " tensor names]}");
    const std::string name = n["layer"].get<std::string>();
    auto rec_it = records.find(name);
    if (rec_it == records.end())
      throw fail(where, "node calls layer '" + detail::printable(name) + "', which fastnn.layers does not list");
    std::vector<SymbolicTensor<T, D>> in;
    for (const auto& t : n["inbound"]) {
      if (!t.is_string()) throw fail(where, "node of '" + name + "': an inbound tensor is not a name");
      auto it = tensors.find(t.get<std::string>());
      if (it == tensors.end())
        throw fail(where, "node of '" + name + "' reads '" + detail::printable(t.get<std::string>()) +
                              "', which is neither an input nor the output of an earlier node");
      in.push_back(it->second);
    }
    try {
      auto& layer = layers[name];
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
            c = (e != 0 && c > limit / e) ? limit + 1 : c * e;
          }
          total = total + c > limit ? limit + 1 : total + c;
        }
        if (total > limit) throw fail(where, "the layers declare more parameters than the file holds");
      }
      tensors[name + "[" + std::to_string(calls[name]++) + "]"] = call(layer, in);
    } catch (const IoError&) {  // FormatError included
      throw;
    } catch (const Error& e) {
      throw fail(where, "cannot call '" + detail::printable(name) + "': " + e.what());
    }
  }
  for (const auto& l : rec.layers)
    if (!layers.count(l.name))
      throw fail(".nodes", "layer '" + detail::printable(l.name) + "' is listed in fastnn.layers but never called");
  for (std::size_t i = 0; i < g["outputs"].size(); ++i) {
    const auto& o = g["outputs"][i];
    const std::string where = ".outputs[" + std::to_string(i) + "]";
    if (!o.is_string() || !tensors.count(o.get<std::string>()))
      throw fail(where, "names no input or node output: " + o.dump().substr(0, 100));
    outputs.push_back(tensors[o.get<std::string>()]);
  }
  std::unique_ptr<Model<T, D>> model;
  try {
    model = std::make_unique<Model<T, D>>(inputs, outputs, 0);
  } catch (const Error& e) {
    throw fail("", std::string("cannot build the model: ") + e.what());
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
