#pragma once
/// \file summary.hpp
/// The model's summary() table (Keras's layer names come from detail::snake_case, core/parse.hpp).

#include <cctype>
#include <ostream>
#include <string>
#include <vector>

#include "fastnn/core/parse.hpp"
#include "fastnn/core/shape.hpp"

namespace fastnn {
namespace detail {

/// One row of the summary table.
struct SummaryRow {
  std::string name, type;
  Shape output_shape;
  Index params = 0;
  bool trainable = true;
  Index frozen = 0;  ///< parameters never trained, even when the layer is (ParamSpec::trainable)
  std::string connected;  ///< a graph's "Connected to": the tensors the call reads
};

/// Keras-style table: layer (type), output shape, parameter count, totals; with `connections` (a graph), Keras's
/// "Connected to" column.
inline void print_summary(std::ostream& os, const std::vector<SummaryRow>& rows,
                          const std::string& model_name = "sequential", bool connections = false) {
  auto pad = [](const std::string& s, std::size_t w) { return s.size() + 1 >= w ? s + " " : s + std::string(w - s.size(), ' '); };
  auto grouped = [](Index n) {
    std::string d = std::to_string(n), r;
    for (std::size_t i = 0; i < d.size(); ++i) {
      if (i && (d.size() - i) % 3 == 0) r += ',';
      r += d[i];
    }
    return r;
  };
  const std::size_t width = connections ? 98 : 65;
  const std::string rule(width, '_'), dbl(width, '=');
  os << "Model: \"" << model_name << "\"\n" << rule << "\n";
  os << pad("Layer (type)", 29) << pad("Output Shape", 26)
     << (connections ? pad("Param #", 12) + "Connected to\n" : std::string("Param #\n")) << dbl << "\n";
  Index total = 0, trainable = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    std::string shape = "(None";
    for (int k = 0; k < r.output_shape.rank(); ++k) shape += ", " + std::to_string(r.output_shape[k]);
    shape += ")";
    os << pad(r.name + " (" + r.type + ")", 29) << pad(shape, 26);
    if (connections) os << pad(std::to_string(r.params), 12) << r.connected << "\n";
    else os << r.params << "\n";
    os << (i + 1 < rows.size() ? rule : dbl) << "\n";
    total += r.params;
    if (r.trainable) trainable += r.params - r.frozen;
  }
  os << "Total params: " << grouped(total) << "\n";
  os << "Trainable params: " << grouped(trainable) << "\n";
  os << "Non-trainable params: " << grouped(total - trainable) << "\n" << rule << "\n";
}

}  // namespace detail
}  // namespace fastnn
