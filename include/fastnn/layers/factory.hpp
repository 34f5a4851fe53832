#pragma once
/// \file factory.hpp
/// Re-creates a layer from its type name and config on any device. Used to move a model
/// between devices and to check a checkpoint's recorded architecture.

#include <cstdint>
#include <memory>
#include <string>

#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/dense.hpp"
#include "fastnn/layers/dropout.hpp"
#include "fastnn/layers/flatten.hpp"
#include "fastnn/layers/lstm.hpp"

namespace fastnn {
namespace detail {

inline const std::string& cfg(const LayerConfig& c, const std::string& key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end()) throw MismatchError(where + ": configuration lacks '" + key + "'");
  return it->second;
}
inline Index cfg_index(const LayerConfig& c, const std::string& key, const std::string& where) {
  const std::string& v = cfg(c, key, where);
  try {
    std::size_t pos = 0;
    long long n = std::stoll(v, &pos);
    if (pos != v.size() || n <= 0 || n > (1LL << 30)) throw std::invalid_argument(v);
    return static_cast<Index>(n);
  } catch (const std::exception&) {
    throw MismatchError(where + ": '" + key + "' is not a positive integer: '" + v + "'");
  }
}
inline bool cfg_bool(const LayerConfig& c, const std::string& key, const std::string& where) {
  const std::string& v = cfg(c, key, where);
  if (v == "true") return true;
  if (v == "false") return false;
  throw MismatchError(where + ": '" + key + "' must be true or false, got '" + v + "'");
}

/// A number in [0, 1) (a rate).
inline double cfg_unit_rate(const LayerConfig& c, const std::string& key, const std::string& where) {
  const std::string& v = cfg(c, key, where);
  double x = -1;
  try {
    std::size_t pos = 0;
    x = std::stod(v, &pos);
    if (pos != v.size()) throw std::invalid_argument(v);
  } catch (const std::exception&) {
    throw MismatchError(where + ": '" + key + "' is not a number: '" + v + "'");
  }
  if (!(x >= 0.0 && x < 1.0)) throw MismatchError(where + ": '" + key + "' must be in [0, 1), got '" + v + "'");
  return x;
}
/// An unsigned 64-bit integer (a seed).
inline std::uint64_t cfg_u64(const LayerConfig& c, const std::string& key, const std::string& where) {
  const std::string& v = cfg(c, key, where);
  try {
    std::size_t pos = 0;
    if (v.empty() || v[0] == '-') throw std::invalid_argument(v);
    const unsigned long long n = std::stoull(v, &pos);
    if (pos != v.size()) throw std::invalid_argument(v);
    return n;
  } catch (const std::exception&) {
    throw MismatchError(where + ": '" + key + "' is not an unsigned integer: '" + v + "'");
  }
}

}  // namespace detail

/// Builds an unbuilt layer of `type` ("Dense", "Dropout", "Flatten", "LSTM", "Bidirectional") from `config` (as
/// produced by Layer::config()). Throws MismatchError for an unknown type or a bad config.
template <class T, class D>
std::unique_ptr<Layer<T, D>> make_layer(const std::string& type, const LayerConfig& c) {
  using detail::cfg;
  const std::string where = "layer of type " + type;
  if (type == "Dense") {
    DenseOptions o(detail::cfg_index(c, "units", where));
    o.activation(activation_from_string(cfg(c, "activation", where)));
    o.use_bias(detail::cfg_bool(c, "use_bias", where));
    return std::make_unique<Dense<T, D>>(o);
  }
  if (type == "Flatten") {
    if (!c.empty()) throw MismatchError(where + ": unexpected configuration key '" + c.begin()->first + "'");
    return std::make_unique<Flatten<T, D>>();
  }
  if (type == "Dropout")
    return std::make_unique<Dropout<T, D>>(
        DropoutOptions(detail::cfg_unit_rate(c, "rate", where)).seed(detail::cfg_u64(c, "seed", where)));
  if (type == "LSTM") {
    LSTMOptions o(detail::cfg_index(c, "units", where));
    o.recurrent_activation(activation_from_string(cfg(c, "recurrent_activation", where)));
    o.return_sequences(detail::cfg_bool(c, "return_sequences", where));
    o.unit_forget_bias(detail::cfg_bool(c, "unit_forget_bias", where));
    o.go_backwards(detail::cfg_bool(c, "go_backwards", where));
    return std::make_unique<LSTM<T, D>>(o);
  }
  if (type == "Bidirectional") {
    LayerConfig inner;
    for (const auto& kv : c)
      if (kv.first.rfind("layer.", 0) == 0) inner[kv.first.substr(6)] = kv.second;
    auto l = make_layer<T, D>(cfg(c, "layer", where), inner);
    auto* r = dynamic_cast<RecurrentLayer<T, D>*>(l.get());
    if (!r) throw MismatchError(where + ": wrapped layer is not recurrent");
    l.release();
    return std::make_unique<Bidirectional<T, D>>(std::unique_ptr<RecurrentLayer<T, D>>(r),
                                                 merge_mode_from_string(cfg(c, "merge_mode", where)));
  }
  throw MismatchError("unknown layer type '" + type + "'");
}

}  // namespace fastnn
