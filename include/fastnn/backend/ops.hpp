#pragma once
/// \file ops.hpp
/// `Ops<T, D>`: the device-specific primitives that generic code (Dense, Sequential, losses,
/// optimizers) is written against. One specialisation per device: backend/cpu/ops.hpp (Eigen)
/// and backend/cuda/ops.hpp (cuBLAS and fastnn's kernels).
///
/// Every specialisation provides (all tensors on D; matrices are tensors viewed as
/// [dim(0), product of the rest]):
///   gemm(ta, tb, alpha, A, B, beta, C)           C = alpha op(A) op(B) + beta C
///   add_row_vector(Y, b)                         Y[i, :] += b
///   accumulate_column_sums(dY, db)               db += sum_i dY[i, :]
///   activate(a, Y)                               Y = a(Y) in place (row softmax for Softmax)
///   activation_backward(a, Y, dY)                dY = dL/dz given y = a(z) and dL/dy, in place
///   gather_scaled(src_u8, idx, begin, count, scale, X, labels_src, labels)
///                                                X[j] = scale * src[idx[begin + j]], labels too
///   softmax_xent(logits, labels, dlogits*, grad_scale, stats)
///                                                stats[0] += sum of -log softmax(z)[y],
///                                                stats[1] += number of argmax(z) == y,
///                                                dlogits = grad_scale * (softmax(z) - onehot(y))
///   sgd / adam / rmsprop updates over flat buffers (see optim/)
///   all_finite(t)                                false if any element is NaN or infinite
///   dropout(in, out, key, threshold, scale)      out = in * scale where hash::bits32(key, i)
///                                                >= threshold, else 0 (core/hash.hpp)
///   fill(t, v), synchronize()
/// Transfers between devices are the free function to_device<D2>(tensor) (core/tensor.hpp).

namespace fastnn {

template <class T, class D>
struct Ops;

}  // namespace fastnn
