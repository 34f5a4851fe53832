#pragma once
/// \file graph.hpp
/// Opt-in: Keras's functional API (model/graph.hpp: Input, call, apply, Model) and the merge layers
/// (layers/merge.hpp: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate). Including it registers
/// the merge layers with LayerRegistry (for float and double, on the CPU and, with FASTNN_WITH_CUDA, on CUDA).
/// io/graph_weights.hpp saves and loads graph models; io/onnx_graph.hpp exports them to ONNX (io::export_onnx).
/// A program that builds only Sequential models does not include it and does not compile it.

#include "fastnn/fastnn.hpp"
#include "fastnn/io/graph_weights.hpp"
#include "fastnn/io/onnx_graph.hpp"
#include "fastnn/layers/merge.hpp"
#include "fastnn/layers/registry.hpp"
#include "fastnn/model/graph.hpp"

namespace fastnn {

/// Adds the merge layers to LayerRegistry<T, D>; returns true.
template <class T, class D = Cpu>
bool register_merge_layers() {
  using R = LayerRegistry<T, D>;
  using Base = detail::Registry<Layer<T, D>>;
  R& r = R::instance();
  for (MergeOp op : {MergeOp::Add, MergeOp::Subtract, MergeOp::Multiply, MergeOp::Average, MergeOp::Maximum,
                     MergeOp::Minimum})
    r.add(to_string(op), [op](const Config& c, const std::string& where) -> std::unique_ptr<Layer<T, D>> {
      if (!c.empty()) throw MismatchError(where + ": unknown option '" + c.begin()->first.substr(0, 64) + "'");
      return std::make_unique<ElementwiseMerge<T, D>>(op);
    });
  r.add("Concatenate", Base::template from_options<Concatenate<T, D>, ConcatenateOptions>());
  return true;
}

namespace detail {
inline const bool merge_layers_registered = register_merge_layers<float>() && register_merge_layers<double>()
#if defined(FASTNN_WITH_CUDA)
                                            && register_merge_layers<float, Cuda>() &&
                                            register_merge_layers<double, Cuda>()
#endif
    ;
}  // namespace detail

}  // namespace fastnn
