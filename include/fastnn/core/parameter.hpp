#pragma once
/// \file parameter.hpp
/// Named trainable parameters. A layer declares its parameters once (name and shape); the
/// owner (a model, or a wrapper such as Bidirectional) allocates ONE contiguous value buffer and
/// ONE gradient buffer for all of them and binds views into it. Optimizers therefore update a
/// whole model in one fused pass, checkpoints and device transfers walk the same named list,
/// and the CUDA backend can map the flat layout onto cuDNN's weight space.

#include <string>
#include <vector>

#include "fastnn/core/tensor.hpp"

namespace fastnn {

/// Name and shape of one parameter, as declared by a layer before storage exists. A parameter
/// that is not trainable (BatchNormalization's moving statistics, which the layer updates itself
/// in forward()) is never updated by the optimizer, holds no optimizer state, is counted as
/// non-trainable by summary(), and keeps a zero gradient; it is saved with the weights.
struct ParamSpec {
  std::string name;  ///< local name inside the layer ("kernel", "recurrent_kernel", "bias")
  Shape shape;
  bool trainable = true;
};

/// A parameter: its value and gradient are views into the owner's flat buffers.
template <class T, class D = Cpu>
struct Parameter {
  std::string name;  ///< fully qualified: "bidirectional.forward_lstm.kernel"
  Tensor<T, D> value;
  Tensor<T, D> grad;
  bool trainable = true;  ///< ParamSpec::trainable (the layer's own trainable flag is apart)
};

/// Where one parameter lies in the owner's flat buffers, and whether the optimizer updates it (its layer is
/// trainable and the parameter itself is).
struct ParamRange {
  std::string name;  ///< fully qualified, as Parameter::name
  Index offset = 0, size = 0;
  bool trainable = true;
};

/// Element count of the specs that are not trainable (ParamSpec::trainable).
inline Index non_trainable_numel(const std::vector<ParamSpec>& specs) {
  Index n = 0;
  for (const auto& s : specs)
    if (!s.trainable) n += s.shape.numel();
  return n;
}

/// Total element count of a list of specs.
inline Index numel(const std::vector<ParamSpec>& specs) {
  Index n = 0;
  for (const auto& s : specs) n += s.shape.numel();
  return n;
}

}  // namespace fastnn
