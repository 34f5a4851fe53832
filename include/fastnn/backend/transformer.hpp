#pragma once
/// \file transformer.hpp
/// The device contract of the Transformer layers (layers/layer_norm.hpp, layers/position.hpp):
/// `TransformerOps<T, D>`, beside Ops<T, D> (backend/ops.hpp). The CPU backend is
/// backend/cpu/transformer.hpp, the CUDA one backend/cuda/transformer.hpp (included by
/// fastnn/transformer.hpp when FASTNN_WITH_CUDA is defined); a device without one cannot
/// instantiate LayerNormalization (the primary template is a compile error).
///
/// x is viewed as rows [m, c] (c = its last extent). Members of TransformerOps<T, D>:
///
///   layer_norm_forward(x, eps, gamma*, beta*, y, mean, rstd)
///       per row: mean = sum x / c, var = sum (x - mean)^2 / c (biased), rstd = 1 / sqrt(var + eps),
///       y = (x - mean) rstd gamma + beta (gamma 1 and beta 0 when null); mean and rstd [m] are kept
///       for the backward pass
///   layer_norm_backward(x, mean, rstd, gamma*, dy, dgamma*, dbeta*, dx*)
///       dgamma += sum_rows dy xhat, dbeta += sum_rows dy (when not null), xhat = (x - mean) rstd;
///       dx (when not null) written: rstd (g - mean_row(g) - xhat mean_row(g xhat)), g = dy gamma

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

/// The device primitives of the Transformer layers; see the file comment. Specialised per device.
template <class T, class D>
struct TransformerOps {
  static_assert(dependent_false<D>::value,
                "no TransformerOps<T, D> for this device (for Cuda: include fastnn/transformer.hpp or "
                "fastnn/backend/cuda/transformer.hpp)");
};

}  // namespace fastnn
