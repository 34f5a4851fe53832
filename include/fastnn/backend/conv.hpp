#pragma once
/// \file conv.hpp
/// The device contract of the spatial layers (layers/conv.hpp, layers/pooling.hpp,
/// layers/batch_norm.hpp, layers/reshape.hpp): `SpatialOps<T, D>`, beside Ops<T, D>
/// (backend/ops.hpp). The CPU backend is backend/cpu/conv.hpp, the CUDA one backend/cuda/conv.hpp
/// (included by fastnn/vision.hpp when FASTNN_WITH_CUDA is defined); a device without one cannot
/// instantiate those layers (the primary template is a compile error).
///
/// Tensors are channels-last. A 1-D input [batch, steps, channels] is handled as a 2-D one
/// [batch, 1, steps, channels], so one geometry describes both. Members of SpatialOps<T, D>:
///
///   conv_forward(g, x, w, y, col, p)            y = conv(x, w), no bias; col: workspace
///   conv_backward(g, x, w, dy, dw, dx*, col, dcol, p)
///                                               dw += conv_filter_grad; dx = conv_data_grad
///   pool_forward(kind, g, x, y)                 max or average pooling
///   pool_backward(kind, g, x, dy, dx)           dx = dL/dx (written, not accumulated)
///   global_pool_forward(kind, x, lengths, y)    x [n, s, c] -> y [n, c] over each sample's
///                                               first lengths[i] steps (all with empty lengths)
///   global_pool_backward(kind, x, lengths, dy, dx)
///   batch_norm_*                                see backend/cpu/conv.hpp
///   mask_steps(x, lengths, y)                   y = x [n, s, ...] with the padded steps zeroed
///   permute(x, perm, y)                         y = x with its per-sample axes permuted

#include <string>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

/// Where a convolution or a pooling window lies on a channels-last input [n, h, w, c]:
/// output [n, oh, ow, filters]; window kh x kw with strides sh, sw and dilations dh, dw; the
/// input is padded with pt rows on top and pl columns on the left (the rest of the padding lies
/// at the bottom and on the right, implied by oh and ow).
struct ConvGeometry {
  Index n = 0, h = 0, w = 0, c = 0;
  Index kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  Index pt = 0, pl = 0;
  Index oh = 0, ow = 0;
  Index groups = 1, filters = 0;
  /// Rows of the im2col matrix: n * oh * ow.
  Index rows() const { return n * oh * ow; }
  /// Columns of one group of the im2col matrix: kh * kw * c / groups.
  Index group_cols() const { return kh * kw * (c / groups); }
};

/// Max: the largest element of each window (padding never wins); its gradient goes to the first
/// largest element in scan order (window rows, then columns). Average: the mean of the real
/// elements of each window (padding is not counted, as in Keras and TensorFlow).
enum class PoolKind { Max, Average };

/// The device primitives of the spatial layers; see the file comment. Specialised per device.
template <class T, class D>
struct SpatialOps {
  static_assert(dependent_false<D>::value,
                "no SpatialOps<T, D> for this device (for Cuda: include fastnn/vision.hpp or "
                "fastnn/backend/cuda/conv.hpp)");
};

}  // namespace fastnn
