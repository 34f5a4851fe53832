#pragma once
/// \file weights.hpp
/// Model weights as safetensors files (see docs/weights-format.md).
///
/// Every parameter is one tensor, named as in Sequential::named_parameters() and shaped as the
/// layer declares it (Keras layout):
///
///   bidirectional.forward_lstm.kernel            [features, 4*units]   gates i, f, c, o
///   bidirectional.forward_lstm.recurrent_kernel  [units, 4*units]
///   bidirectional.forward_lstm.bias              [4*units]
///   bidirectional.backward_lstm.{kernel, recurrent_kernel, bias}
///   dense.kernel [in, units], dense.bias [units]
///
/// `__metadata__` records the architecture, so that loading into a different model is caught:
///
///   fastnn.format          "weights" (or "checkpoint", see checkpoint.hpp)
///   fastnn.format_version  "1"
///   fastnn.version         the fastnn version that wrote the file
///   fastnn.dtype           "F32" or "F64"
///   fastnn.input_shape     per-sample input shape, JSON: [28,28]
///   fastnn.layers          JSON: [{"name":"bidirectional","type":"Bidirectional","config":{...}},...]
///   fastnn.crc32           CRC-32 of the file (see safetensors.hpp)
///
/// Loading validates the file (FormatError), then checks the recorded architecture and every
/// tensor against the model (MismatchError naming the layer or tensor), reads everything into
/// host memory, and only then writes into the model: a failed load leaves the model unchanged.
/// A safetensors file without fastnn metadata (written by another tool) is accepted when its
/// tensors match the model's names, shapes and dtype exactly.
///
/// Everything here is generic over the device D: parameters travel through to_device<Cpu> and
/// to_device<D>.

#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastnn/config.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/io/safetensors.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/layers/registry.hpp"
#include "fastnn/model/sequential.hpp"

namespace fastnn {

template <class T, class D>
class Model;

namespace io {

/// Metadata keys and values (see the file comment).
inline constexpr const char* kFormatKey = "fastnn.format";
inline constexpr const char* kFormatVersionKey = "fastnn.format_version";
inline constexpr const char* kVersionKey = "fastnn.version";
inline constexpr const char* kDtypeKey = "fastnn.dtype";
inline constexpr const char* kInputShapeKey = "fastnn.input_shape";
inline constexpr const char* kLayersKey = "fastnn.layers";
/// A graph model's record (io/graph_weights.hpp): {"inputs": [...], "nodes": [...], "outputs": [...]}.
inline constexpr const char* kGraphKey = "fastnn.graph";
inline constexpr const char* kWeightsFormat = "weights";
inline constexpr const char* kCheckpointFormat = "checkpoint";
inline constexpr int kFormatVersion = 1;
/// Prefix of the optimizer-state tensors of a checkpoint.
inline constexpr const char* kOptimizerPrefix = "optimizer.";
/// Checkpoint tensors of callbacks' state (EarlyStopping's best weights): callback.<state name>.weights.
inline constexpr const char* kCallbackPrefix = "callback.";

/// One layer as recorded in a file: its name in the model, type_name() and config().
struct LayerRecord {
  std::string name, type;
  LayerConfig config;
};

/// The architecture recorded in a file.
struct ModelRecord {
  std::string dtype;              ///< "F32", "F64"
  std::vector<Index> input_shape; ///< per sample (a graph's first input)
  std::vector<LayerRecord> layers;
  /// A graph model's inputs, calls and outputs as JSON text (io/graph_weights.hpp); empty for a Sequential.
  std::string graph;
};

namespace detail {

/// Largest metadata value parsed as JSON (an architecture is ~200 bytes per layer).
inline constexpr std::size_t kMaxJsonMetadata = std::size_t{1} << 20;

/// Parses a JSON text found in metadata key `key`; FormatError when it is too long, nested
/// deeper than `max_depth` or not valid JSON.
inline nlohmann::json parse_metadata_json(const std::string& path, const std::string& key, const std::string& text,
                                          int max_depth) {
  const std::string field = "__metadata__." + key;
  if (text.size() > kMaxJsonMetadata)
    throw FormatError(path, field, std::to_string(text.size()) + " bytes, above the limit of " +
                                       std::to_string(kMaxJsonMetadata));
  if (text.find('\0') != std::string::npos) throw FormatError(path, field, "contains a NUL byte");
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) throw FormatError(path, field, "JSON nested deeper than " + std::to_string(max_depth));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path, field, std::string("invalid JSON: ") + e.what());
  }
}

/// The metadata value of `key`; FormatError when missing.
inline const std::string& require_meta(const SafetensorsReader& r, const std::string& key) {
  auto it = r.metadata().find(key);
  if (it == r.metadata().end()) throw FormatError(r.path(), "__metadata__." + key, "missing");
  return it->second;
}

/// A decimal integer in [lo, hi]; FormatError otherwise.
inline std::int64_t parse_int(const SafetensorsReader& r, const std::string& key, const std::string& s,
                              std::int64_t lo, std::int64_t hi) {
  std::int64_t v = 0;
  const bool ok = parse_number(s, v);
  if (!ok || v < lo || v > hi)
    throw FormatError(r.path(), "__metadata__." + key,
                      "'" + printable(s) + "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

inline std::string shape_str(const std::vector<std::uint64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
inline std::vector<std::uint64_t> to_u64(const Shape& s) {
  std::vector<std::uint64_t> v;
  for (int i = 0; i < s.rank(); ++i) v.push_back(static_cast<std::uint64_t>(s[i]));
  return v;
}

/// A host copy of a device tensor (the tensor itself on the CPU: no copy).
template <class T, class D>
Tensor<T, Cpu> to_host(const Tensor<T, D>& t) {
  if constexpr (std::is_same<D, Cpu>::value) return t;
  else return to_device<Cpu>(t);
}

/// Joins mismatch problems into one MismatchError message (at most 8 listed).
inline void throw_mismatch(const std::string& path, const std::vector<std::string>& problems) {
  if (problems.empty()) return;
  std::string msg = path + ": does not match the model: ";
  for (std::size_t i = 0; i < problems.size() && i < 8; ++i) msg += (i ? "; " : "") + problems[i];
  if (problems.size() > 8) msg += "; and " + std::to_string(problems.size() - 8) + " more";
  throw MismatchError(msg);
}

}  // namespace detail

/// The architecture of a graph model (defined in io/graph_weights.hpp, included by fastnn/graph.hpp).
template <class T, class D>
ModelRecord describe(const Model<T, D>& model);

/// The architecture of a built model, as recorded in its files.
template <class T, class D>
ModelRecord describe(const Sequential<T, D>& model) {
  ModelRecord r;
  r.dtype = dtype_name(dtype_of<T>());
  r.input_shape = model.input_shape().to_vector();
  for (std::size_t i = 0; i < model.num_layers(); ++i) {
    const auto& l = model.layer(i);
    r.layers.push_back({l.name(), l.type_name(), l.config()});
  }
  return r;
}

/// Writes `rec` and the format keys into `w`'s metadata.
inline void write_model_record(SafetensorsWriter& w, const ModelRecord& rec, const char* format) {
  w.set_metadata(kFormatKey, format);
  w.set_metadata(kFormatVersionKey, std::to_string(kFormatVersion));
  w.set_metadata(kVersionKey, FASTNN_VERSION_STRING);
  w.set_metadata(kDtypeKey, rec.dtype);
  w.set_metadata(kInputShapeKey, nlohmann::json(rec.input_shape).dump());
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : rec.layers) {
    nlohmann::json c = nlohmann::json::object();
    for (const auto& kv : l.config) c[kv.first] = kv.second;
    layers.push_back({{"name", l.name}, {"type", l.type}, {"config", c}});
  }
  w.set_metadata(kLayersKey, layers.dump());
  if (!rec.graph.empty()) w.set_metadata(kGraphKey, rec.graph);
}

/// Whether the file was written by fastnn (has `fastnn.format`).
inline bool has_model_record(const SafetensorsReader& r) { return r.metadata().count(kFormatKey) != 0; }

/// The file's format ("weights" or "checkpoint"), after checking `fastnn.format_version`.
/// FormatError when missing or unknown.
inline std::string read_format(const SafetensorsReader& r) {
  const std::string f = detail::require_meta(r, kFormatKey);
  if (f != kWeightsFormat && f != kCheckpointFormat)
    throw FormatError(r.path(), std::string("__metadata__.") + kFormatKey,
                      "'" + detail::printable(f) + "' is not a fastnn format (weights, checkpoint)");
  const auto v = detail::parse_int(r, kFormatVersionKey, detail::require_meta(r, kFormatVersionKey), 1,
                                   std::numeric_limits<int>::max());
  if (v > kFormatVersion)
    throw FormatError(r.path(), std::string("__metadata__.") + kFormatVersionKey,
                      "version " + std::to_string(v) + " was written by a newer fastnn; this one reads version " +
                          std::to_string(kFormatVersion));
  if (!r.has_checksum())
    throw FormatError(r.path(), std::string("__metadata__.") + kChecksumKey, "missing (fastnn always writes it)");
  return f;
}

/// Parses the architecture recorded in a fastnn file. FormatError when it is malformed.
inline ModelRecord read_model_record(const SafetensorsReader& r) {
  const std::string& path = r.path();
  read_format(r);
  ModelRecord rec;
  rec.dtype = detail::require_meta(r, kDtypeKey);
  DType dt;
  if (!dtype_from_name(rec.dtype, dt) || (dt != DType::F32 && dt != DType::F64))
    throw FormatError(path, std::string("__metadata__.") + kDtypeKey, "'" + detail::printable(rec.dtype) + "' is not F32 or F64");

  const std::string in_field = std::string("__metadata__.") + kInputShapeKey;
  nlohmann::json in = detail::parse_metadata_json(path, kInputShapeKey, detail::require_meta(r, kInputShapeKey), 1);
  if (!in.is_array() || in.empty() || in.size() > static_cast<std::size_t>(Shape::kMaxRank))
    throw FormatError(path, in_field, "expected an array of 1 to " + std::to_string(Shape::kMaxRank) + " extents");
  for (const auto& e : in) {
    if (!e.is_number_unsigned() || e.get<std::uint64_t>() == 0 || e.get<std::uint64_t>() > (std::uint64_t{1} << 30))
      throw FormatError(path, in_field, "extent " + e.dump() + " is not an integer in [1, 2^30]");
    rec.input_shape.push_back(static_cast<Index>(e.get<std::uint64_t>()));
  }

  const std::string l_field = std::string("__metadata__.") + kLayersKey;
  nlohmann::json layers = detail::parse_metadata_json(path, kLayersKey, detail::require_meta(r, kLayersKey), 3);
  if (!layers.is_array() || layers.empty()) throw FormatError(path, l_field, "expected a non-empty array of layers");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const std::string where = l_field + "[" + std::to_string(i) + "]";
    if (!l.is_object() || l.size() != 3 || !l.contains("name") || !l.contains("type") || !l.contains("config") ||
        !l["name"].is_string() || !l["type"].is_string() || !l["config"].is_object())
      throw FormatError(path, where, "expected {\"name\": string, \"type\": string, \"config\": object}");
    LayerRecord lr;
    lr.name = l["name"].get<std::string>();
    lr.type = l["type"].get<std::string>();
    for (auto it = l["config"].begin(); it != l["config"].end(); ++it) {
      if (!it.value().is_string()) throw FormatError(path, where + ".config." + detail::printable(it.key()), "is not a string");
      lr.config[it.key()] = it.value().get<std::string>();
    }
    rec.layers.push_back(std::move(lr));
  }
  auto g = r.metadata().find(kGraphKey);  // checked in depth where a graph is rebuilt (io/graph_weights.hpp)
  if (g != r.metadata().end()) rec.graph = detail::parse_metadata_json(path, kGraphKey, g->second, 4).dump();
  return rec;
}

/// Compares a file's architecture with a model's; MismatchError naming the differing layer.
inline void check_model_record(const std::string& path, const ModelRecord& file, const ModelRecord& model) {
  using detail::printable;
  std::vector<std::string> p;
  if (file.dtype != model.dtype)
    p.push_back("the file holds " + printable(file.dtype) + " weights, the model is " + model.dtype);
  if (file.input_shape != model.input_shape)
    p.push_back("input shape " + Shape(file.input_shape).str() + " in the file, " + Shape(model.input_shape).str() +
                " in the model");
  if (file.layers.size() != model.layers.size())
    p.push_back(std::to_string(file.layers.size()) + " layers in the file, " + std::to_string(model.layers.size()) +
                " in the model");
  if (file.graph != model.graph)
    p.push_back(file.graph.empty() ? std::string("the file holds a Sequential model, the model is a graph")
                : model.graph.empty() ? std::string("the file holds a graph model, the model is a Sequential")
                                      : "the graph differs: the file has " + printable(file.graph.substr(0, 200)) +
                                            ", the model " + model.graph.substr(0, 200));
  for (std::size_t i = 0; i < file.layers.size() && i < model.layers.size(); ++i) {
    const auto& f = file.layers[i];
    const auto& m = model.layers[i];
    const std::string where = "layer " + std::to_string(i) + " ('" + m.name + "', " + m.type + ")";
    if (f.type != m.type || f.name != m.name) {
      p.push_back(where + ": the file has '" + printable(f.name) + "' of type " + printable(f.type));
      continue;
    }
    for (const auto& kv : m.config) {
      auto it = f.config.find(kv.first);
      if (it == f.config.end()) p.push_back(where + ": '" + kv.first + "' is missing from the file");
      else if (it->second != kv.second)
        p.push_back(where + ": " + kv.first + " is '" + printable(it->second) + "' in the file, '" + kv.second +
                    "' in the model");
    }
    for (const auto& kv : f.config)
      if (!m.config.count(kv.first)) p.push_back(where + ": the file has an unknown option '" + printable(kv.first) + "'");
  }
  detail::throw_mismatch(path, p);
}

/// Checks the file's parameter tensors against the model's (missing, extra, mis-shaped or of
/// another dtype: MismatchError naming the tensors) and reads them into host tensors, in
/// named_parameters() order. Tensors named optimizer.* are left to the caller when
/// `allow_optimizer` is set.
template <class T, class D, template <class, class> class M>
std::vector<Tensor<T, Cpu>> stage_parameters(const SafetensorsReader& r, const M<T, D>& model, bool allow_optimizer) {
  using detail::printable;
  const auto params = model.named_parameters();
  std::vector<std::string> p;
  std::set<std::string> names;
  for (const auto& prm : params) {
    names.insert(prm.name);
    const TensorEntry* e = r.find(prm.name);
    if (!e) {
      p.push_back("tensor '" + prm.name + "' " + prm.value.shape().str() + " is missing from the file");
      continue;
    }
    const auto want = detail::to_u64(prm.value.shape());
    if (e->shape != want)
      p.push_back("tensor '" + prm.name + "' has shape " + detail::shape_str(e->shape) + " in the file, " +
                  prm.value.shape().str() + " in the model");
    else if (e->dtype != dtype_of<T>())
      p.push_back("tensor '" + prm.name + "' is " + dtype_name(e->dtype) + " in the file, the model is " +
                  dtype_name(dtype_of<T>()));
  }
  const std::string opt = kOptimizerPrefix;
  for (const auto& e : r.tensors()) {
    if (names.count(e.name)) continue;
    if (allow_optimizer && e.name.compare(0, opt.size(), opt) == 0) continue;
    if (allow_optimizer && e.name.compare(0, std::char_traits<char>::length(kCallbackPrefix), kCallbackPrefix) == 0)
      continue;
    p.push_back("tensor '" + printable(e.name) + "' " + detail::shape_str(e.shape) +
                " in the file is not a parameter of the model");
  }
  detail::throw_mismatch(r.path(), p);
  std::vector<Tensor<T, Cpu>> host;
  host.reserve(params.size());
  for (const auto& prm : params) {
    Tensor<T, Cpu> h(prm.value.shape());
    const TensorEntry* e = r.find(prm.name);
    r.read(*e, h.data(), static_cast<std::size_t>(h.size()));
    host.push_back(h);
  }
  return host;
}

/// Validates `r` against `model` (architecture when recorded, then every tensor) and returns
/// the staged parameters; does not touch the model.
template <class T, class D, template <class, class> class M>
std::vector<Tensor<T, Cpu>> check_and_stage(const SafetensorsReader& r, const M<T, D>& model) {
  bool optimizer_ok = false;
  if (has_model_record(r)) {
    const ModelRecord rec = read_model_record(r);
    optimizer_ok = r.metadata().at(kFormatKey) == kCheckpointFormat;
    check_model_record(r.path(), rec, describe(model));
  }
  return stage_parameters(r, model, optimizer_ok);
}

/// Writes every parameter of `model` and its architecture to `path` (atomically).
/// Throws ArgumentError if the model is not built, IoError if the file cannot be written.
/// M: Sequential or (with fastnn/graph.hpp) Model.
template <class T, class D, template <class, class> class M>
void save_weights(const M<T, D>& model, const std::string& path) {
  if (!model.built()) throw ArgumentError("save_weights: call build() first");
  SafetensorsWriter w;
  write_model_record(w, describe(model), kWeightsFormat);
  std::vector<Tensor<T, Cpu>> host;
  const auto params = model.named_parameters();
  host.reserve(params.size());
  for (const auto& prm : params) {
    host.push_back(detail::to_host(prm.value));
    w.add<T>(prm.name, detail::to_u64(prm.value.shape()), host.back().data());
  }
  w.write(path);
}

/// Loads weights written by save_weights (or the weights of a checkpoint, or a foreign
/// safetensors file with matching names and shapes) into the built `model`. All-or-nothing.
/// Throws IoError, FormatError (malformed file) or MismatchError (another model).
template <class T, class D, template <class, class> class M>
void load_weights(M<T, D>& model, const std::string& path) {
  if (!model.built()) throw ArgumentError("load_weights: call build() first");
  SafetensorsReader r(path);
  auto host = check_and_stage(r, model);
  auto params = model.named_parameters();
  for (std::size_t i = 0; i < params.size(); ++i) copy_from_host(host[i], params[i].value);
}

/// Re-creates the model recorded in a fastnn weights or checkpoint file (layers, input shape)
/// on device D and loads its weights. T must be the file's dtype. The parameter count implied
/// by the recorded architecture is checked against the file size before anything is allocated.
template <class T, class D = Cpu>
Sequential<T, D> load_model(const std::string& path) {
  SafetensorsReader r(path);
  if (!has_model_record(r))
    throw FormatError(path, std::string("__metadata__.") + kFormatKey, "missing: not written by fastnn, the architecture is unknown");
  const ModelRecord rec = read_model_record(r);
  if (rec.dtype != dtype_name(dtype_of<T>()))
    throw MismatchError(path + ": the file holds " + rec.dtype + " weights, the model type is " + dtype_name(dtype_of<T>()));
  if (!rec.graph.empty())
    throw MismatchError(path + ": the file holds a graph model; load it with io::load_graph_model "
                        "(<fastnn/graph.hpp>)");
  Sequential<T, D> model;
  try {
    // Build a throw-away copy of each layer to bound the parameter count by the file size.
    const std::uint64_t limit = r.file_size() / sizeof(T);
    std::uint64_t total = 0;
    Shape s(rec.input_shape);
    for (const auto& l : rec.layers) {
      auto layer = make_layer<T, D>(l.type, l.config);
      layer->set_name(l.name);  // wrappers derive their inner layers' names from it
      s = layer->build(s);
      for (const auto& spec : layer->param_specs()) {
        std::uint64_t n = 1;
        for (int k = 0; k < spec.shape.rank(); ++k) {
          const auto d = static_cast<std::uint64_t>(spec.shape[k]);
          if (d != 0 && n > limit / d) n = limit + 1;
          else n *= d;
        }
        total = total + n > limit ? limit + 1 : total + n;
      }
      if (total > limit)
        throw FormatError(path, std::string("__metadata__.") + kLayersKey,
                          "the layers declare more parameters than the file holds");
    }
    for (const auto& l : rec.layers) model.add(make_layer<T, D>(l.type, l.config));
    model.build(Shape(rec.input_shape), 0);
  } catch (const IoError&) {
    throw;
  } catch (const Error& e) {
    throw FormatError(path, std::string("__metadata__.") + kLayersKey, std::string("cannot build the model: ") + e.what());
  }
  auto host = check_and_stage(r, model);
  auto params = model.named_parameters();
  for (std::size_t i = 0; i < params.size(); ++i) copy_from_host(host[i], params[i].value);
  return model;
}

}  // namespace io
}  // namespace fastnn
