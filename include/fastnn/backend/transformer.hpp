#pragma once
/// \file transformer.hpp
/// The device contract of the Transformer layers (layers/layer_norm.hpp, layers/position.hpp,
/// layers/attention.hpp): `TransformerOps<T, D>`, beside Ops<T, D> (backend/ops.hpp). The CPU backend is
/// backend/cpu/transformer.hpp, the CUDA one backend/cuda/transformer.hpp (included by
/// fastnn/transformer.hpp when FASTNN_WITH_CUDA is defined); a device without one cannot
/// instantiate LayerNormalization or MultiHeadAttention (the primary template is a compile error).
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
///   Attention
///       the class that computes MultiHeadAttention on D (detail::CpuAttention, backend/cpu/attention.hpp;
///       detail::CudaAttention, backend/cuda/attention.hpp), so that the layer is written once. An object
///       owns its workspaces (grown to the largest batch, then reused) and keeps what backward needs:
///         set_threads(n)
///             how many host threads it may use (the GPU's ignores it)
///         forward(AttentionDims, AttentionWeights<T>, AttentionMask, q*, k*, v*, y*, Precision)
///             y [B, Tq, O] = MultiHeadAttention of the query q [B, Tq, Fq], key k [B, Tk, Fk] and value
///             v [B, Tk, Fv] (device pointers; k may be v); the key steps beyond the key lengths and, when
///             causal, those after the query step get probability 0; dropout on the probabilities keeps
///             element ((b H + h) Tq + i) Tk + j iff hash::bits32(key, that index) >= threshold; the query
///             steps beyond the query lengths output 0. The lengths in AttentionMask are host arrays.
///         backward(AttentionWeights<T>, AttentionGrads<T>, q*, k*, v*, dy*, dq*, dk*, dv*, Precision)
///             after forward() on the same inputs: accumulates the weight gradients, writes the input
///             gradients that are not null (dk == dv: both summed there); the padded query steps of dy
///             are ignored
///       Both have the CPU's semantics (backend/cpu/attention.hpp) to rounding.

#include <cstdint>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

/// Sizes of one MultiHeadAttention call: batch, query and key steps, heads, key_dim, value_dim, the query's,
/// key's and value's features and the output width.
struct AttentionDims {
  Index batch = 0, tq = 0, tk = 0, heads = 0, key_dim = 0, value_dim = 0;
  Index fq = 0, fk = 0, fv = 0, out = 0;
};

/// Weights of MultiHeadAttention (on the layer's device); biases are null without use_bias.
template <class T>
struct AttentionWeights {
  const T *wq = nullptr, *bq = nullptr, *wk = nullptr, *bk = nullptr, *wv = nullptr, *bv = nullptr;
  const T *wo = nullptr, *bo = nullptr;
};

/// Gradients of the weights (accumulated into); biases null without use_bias.
template <class T>
struct AttentionGrads {
  T *wq = nullptr, *bq = nullptr, *wk = nullptr, *bk = nullptr, *wv = nullptr, *bv = nullptr;
  T *wo = nullptr, *bo = nullptr;
};

/// The masking and dropout of one call. The lengths are host arrays on every device.
struct AttentionMask {
  const std::int32_t* query_lengths = nullptr;  ///< [B], null: full length
  const std::int32_t* key_lengths = nullptr;    ///< [B], null: full length
  bool causal = false;
  std::uint32_t threshold = 0;  ///< dropout: keep iff bits32(key, i) >= threshold; 0 keeps all
  std::uint64_t key = 0;
  double scale = 1;  ///< dropout: the kept probabilities' factor, 1 / (1 - rate)
};

}  // namespace detail

/// The device primitives of the Transformer layers; see the file comment. Specialised per device.
template <class T, class D>
struct TransformerOps {
  static_assert(dependent_false<D>::value,
                "no TransformerOps<T, D> for this device (for Cuda: include fastnn/transformer.hpp or "
                "fastnn/backend/cuda/transformer.hpp)");
};

}  // namespace fastnn
