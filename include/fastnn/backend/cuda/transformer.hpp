#pragma once
/// \file transformer.hpp
/// TransformerOps<T, Cuda>: the GPU primitives of the Transformer layers (the contract is in
/// backend/transformer.hpp; the semantics are those of backend/cpu/transformer.hpp, to rounding).
/// Host code only: the kernels are fastnn's own, in kernels.cu.
///
///  - Forward is one fused kernel: one warp per row computes the row's mean and variance in a
///    single pass (Welford's update per lane in double, the 32 lanes merged by Chan et al.'s
///    formula through warp shuffles) and writes the normalised, scaled and shifted row, its mean
///    and its 1 / sqrt(var + eps).
///  - Backward is two kernels: the input gradient (one warp per row, both row sums in double
///    through warp shuffles, then the row written) and the gamma and beta gradients (column sums
///    over the rows in a fixed order, accumulated in double: deterministic, without atomics).
///  - No workspace and no per-call allocation: the layer owns mean and rstd. Nothing is copied
///    to or from the host, so the calls may be captured in a CUDA graph.
///  - MultiHeadAttention's computation, Attention, is detail::CudaAttention (backend/cuda/attention.hpp):
///    cuBLAS GEMMs and strided-batched GEMMs around fastnn's fused masked-softmax kernels.

#include <string>

#include "fastnn/backend/cuda/attention.hpp"
#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/transformer.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

template <class T>
struct TransformerOps<T, Cuda> {
  using Tn = Tensor<T, Cuda>;
  /// MultiHeadAttention's computation (backend/cuda/attention.hpp).
  using Attention = detail::CudaAttention<T>;

  static void layer_norm_forward(const Tn& x, T eps, const Tn* gamma, const Tn* beta, Tn& y, Tn& mean, Tn& rstd) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check(y.size() == x.size() && mean.size() == m && rstd.size() == m && (!gamma || gamma->size() == c) &&
              (!beta || beta->size() == c),
          "layer_norm_forward", x);
    cuda::kernels::layer_norm_forward(x.data(), eps, gamma ? gamma->data() : nullptr, beta ? beta->data() : nullptr,
                                      y.data(), mean.data(), rstd.data(), m, c, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("layer_norm_forward");
  }

  static void layer_norm_backward(const Tn& x, const Tn& mean, const Tn& rstd, const Tn* gamma, const Tn& dy,
                                  Tn* dgamma, Tn* dbeta, Tn* dx) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check(dy.size() == x.size() && mean.size() == m && rstd.size() == m && (!dx || dx->size() == x.size()) &&
              (!gamma || gamma->size() == c) && (!dgamma || dgamma->size() == c) && (!dbeta || dbeta->size() == c),
          "layer_norm_backward", x);
    cuda::kernels::layer_norm_backward(x.data(), mean.data(), rstd.data(), gamma ? gamma->data() : nullptr, dy.data(),
                                       dgamma ? dgamma->data() : nullptr, dbeta ? dbeta->data() : nullptr,
                                       dx ? dx->data() : nullptr, m, c, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("layer_norm_backward");
  }

 private:
  static void check(bool ok, const char* what, const Tn& x) {
    if (!ok) throw ShapeError(std::string(what) + ": tensor sizes do not match input " + x.shape().str());
  }
};

}  // namespace fastnn
