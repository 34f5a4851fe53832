#pragma once
/// \file factory.hpp
/// Re-creates a layer from its type name and config on any device. Used to move a model
/// between devices and to check a checkpoint's recorded architecture.

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
  if (type == "Dropout") {
    const std::string& r = cfg(c, "rate", where);
    const std::string& sd = cfg(c, "seed", where);
    double rate = -1;
    unsigned long long seed = 0;
    try {
      std::size_t pos = 0;
      rate = std::stod(r, &pos);
      if (pos != r.size()) throw std::invalid_argument(r);
    } catch (const std::exception&) {
      throw MismatchError(where + ": 'rate' is not a number: '" + r + "'");
    }
    if (!(rate >= 0.0 && rate < 1.0)) throw MismatchError(where + ": 'rate' must be in [0, 1), got '" + r + "'");
    try {
      std::size_t pos = 0;
      if (sd.empty() || sd[0] == '-') throw std::invalid_argument(sd);
      seed = std::stoull(sd, &pos);
      if (pos != sd.size()) throw std::invalid_argument(sd);
    } catch (const std::exception&) {
      throw MismatchError(where + ": 'seed' is not an unsigned integer: '" + sd + "'");
    }
    return std::make_unique<Dropout<T, D>>(DropoutOptions(rate).seed(seed));
  }
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
