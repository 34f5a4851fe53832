#pragma once
/// \file ops.hpp
/// The device contract. Layers, losses, metrics, optimizers and the model are written once
/// against `Ops<T, D>` and the few hooks listed below; only the files of a backend know which
/// device they run on. The CPU backend (Eigen) is backend/cpu/ops.hpp, the CUDA one
/// backend/cuda/ops.hpp (cuBLAS and fastnn's kernels).
///
/// A backend for a new device `Dev` provides, in new files only:
///
///  1. core:    `struct Dev { static constexpr const char* name(); };`, `Allocator<Dev>`
///              (allocate / deallocate), and the free functions `copy_into(src, dst)` (same
///              device), `device_set_zero(t)` and `copy_across(src, dst)` (to and from Cpu),
///              found by argument-dependent lookup (see core/tensor.hpp).
///  2. backend: `Ops<T, Dev>`, every member listed below (backend/<dev>/ops.hpp).
///  3. layers:  the per-device parts of the layers that have them: `detail::RnnImpl<T, Dev>`
///              (layers/recurrent.hpp), `detail::BidirMerge<T, Dev>` and `detail::BidirFused<T, Dev>`
///              (layers/bidirectional.hpp), in layers/<dev>/.
///  4. model:   `detail::StepRunner<Dev>` (model/step_runner.hpp): runs a training step eagerly
///              or replays a captured one, in model/<dev>/.
///  5. an umbrella header including all of the above (as fastnn/cuda.hpp does for Cuda).
/// Every hook's primary template is a compile error ("no ... for this device"), so a translation
/// unit that forgets a backend header fails to compile instead of silently taking another path.
///
/// Members of Ops<T, D> (all tensors on D; a matrix is a tensor viewed as [dim(0), rest];
/// "rows" of a prediction y are its elements grouped by the last axis: R = size / K, K = last
/// extent; `stats` is a Tensor<double, D> of accumulators and `slot` the index to add into):
///
///  math
///   gemm(ta, tb, alpha, A, B, beta, C[, p, threads])
///                                               C = alpha op(A) op(B) + beta C; p the precision; threads >= 2
///                                               lets the CPU split a large product on two threads
///   add_row_vector(Y, b)                        Y[i, :] += b
///   accumulate_column_sums(dY, db)              db += sum_i dY[i, :]
///   activate(a, Y)                              Y = a(Y) in place (row softmax for Softmax)
///   activation_backward(a, Y, dY)               dY = dL/dz given y = a(z) and dL/dy, in place
///                                               (not gelu, swish: their derivative needs z)
///   activation_backward_input(a, Z, dY)         dY *= a'(Z) from the pre-activation Z, in place
///   dropout(in, out, key, threshold, scale)     out = in * scale where hash::bits32(key, i)
///                                               >= threshold, else 0 (core/hash.hpp)
///   fill(t, v)
///   mul(a, b, y)                                y = a * b elementwise (y may alias a or b)
///   extremum(largest, a, b, y)                  y = max(a, b) (or min) elementwise
///   extremum_grad(x, y, dy, taken, dx)          dx = dy where x == y and taken == 0 (then taken = 1),
///                                               else 0: the first input equal to a max / min takes it
///   copy_block(rows, width, src, ss, so, dst, ds, do, acc)
///                                               dst[r ds + do + k] (+)= src[r ss + so + k]: the blocks
///                                               of a concatenation and of its gradient's split
///  data
///   gather_rows<U>(src, idx, begin, count, dst) dst[j] = src[idx[begin + j]] for j < count,
///                                               rows of any element type U (float, double, int32)
///   embedding_lookup(table, ids, y)             y[i, :] = table[ids[i], :], ids: token ids held
///                                               as T, checked to be in range by the caller
///   embedding_grad(dy, ids, dtable)             dtable[ids[i], :] += dy[i, :]
///  losses (row loss summed into stats[slot]; the gradient written when dy is not null,
///          dy = grad_scale * d(row loss)/dy)
///   softmax_xent(z, labels, dz*, s, stats, slot)            lse(z) - z[label]
///   softmax_xent_dense(z, t, dz*, s, stats, slot)           sum_k t_k (lse(z) - z_k)
///   sigmoid_xent(z, t, dz*, s, stats, slot)                 mean_k max(z,0) - z t + log(1 + e^-|z|)
///   pointwise_loss(kind, y, t, dy*, s, stats, slot)         mean_k f(y_k, t_k), PointwiseLoss
///  metrics (row value summed into stats[slot])
///   metric_labels(y, labels, stats, slot)                   argmax(y) == label
///   metric_targets(kind, y, t, threshold, stats, slot)      MetricKind
///  optimizers (one fused pass over the flat parameter buffer)
///   sgd_update, adam_update, rmsprop_update     see optim/optimizer.hpp; the rate is a one-element
///                                               tensor on the device (read there, never baked in)
///   sum_squares(g, stats, slot)                 stats[slot] += sum g^2 (double, fixed order)
///   check_norms_finite(stats, count, opt, b)    NonFiniteError for a non-finite stats[0, count), or
///                                               deferred to clip_by_norm (the guard below)
///   clip_by_norm(g, stats, slot, clip, batch)   g *= clip / max(sqrt(stats[slot]), clip)
///   clip_by_value(g, clip), scale(t, s), axpy(a, x, y)   clamp; t *= s (s a value, or a
///                                               one-element tensor read on the device); y += a x
///  the non-finite guard of training
///   reset_nonfinite()                           start of an epoch
///   step_finite(stats, slot, grads, batch)      after a step: false when the running loss
///                                               stats[slot] or a gradient is not finite now; a
///                                               device that defers the check records the batch
///                                               and returns true
///   throw_if_nonfinite(epoch)                   NonFiniteError for a recorded batch (deferred)
///   all_finite(t)                               false if any element is NaN or infinite
///  transfers and synchronisation
///   synchronize()                               waits for queued work

#include <cstdint>
#include <string>

#include "fastnn/core/activation.hpp"

namespace fastnn {

/// False for every type; makes a static_assert depend on a template parameter.
template <class>
struct dependent_false {
  static constexpr bool value = false;
};

/// The device primitives; see the file comment. Specialised per device.
template <class T, class D>
struct Ops {
  static_assert(dependent_false<D>::value,
                "no Ops<T, D> for this device: include the device's backend header (fastnn/cuda.hpp for Cuda)");
};

/// Losses computed element by element: row loss = mean over the last axis of f(y, t).
enum class PointwiseLoss {
  MeanSquaredError,   ///< f = (y - t)^2
  MeanAbsoluteError,  ///< f = |y - t|
  BinaryCrossentropy  ///< f = -(t log p + (1 - t) log(1 - p)), p = clip(y, eps, 1 - eps), eps = 1e-7
};

/// Metrics against float targets; row value = what is listed.
enum class MetricKind {
  CategoricalAccuracy,  ///< argmax(y) == argmax(t)  (first maximum on ties)
  BinaryAccuracy,       ///< mean over the last axis of (y > threshold) == t
  MeanAbsoluteError     ///< mean over the last axis of |y - t|
};

/// The clipping epsilon of the probability-space cross-entropy (Keras's backend epsilon).
constexpr double kProbabilityEpsilon = 1e-7;

/// A layer's activation on its output y (in place), for layers that apply one after a product (Dense, the
/// convolutions): where the derivative needs the input (activation_needs_input: gelu, swish) and `keep` is set
/// (training), the pre-activation is copied into `pre` first, for activation_grad.
template <class T, class D, class Tn>
void activate_keeping_input(Activation a, Tn& y, Tn& pre, bool keep) {
  if (keep && activation_needs_input(a)) {
    pre.resize(y.shape());
    copy_into(y, pre);
  }
  Ops<T, D>::activate(a, y);
}
/// dz = dL/dz from dL/dy in place, for y = a(z) applied by activate_keeping_input: from the kept pre-activation
/// where the derivative needs it, else from the output y.
template <class T, class D, class Tn>
void activation_grad(Activation a, const Tn& y, const Tn& pre, Tn& dz) {
  if (activation_needs_input(a)) Ops<T, D>::activation_backward_input(a, pre.reshaped(dz.shape()), dz);
  else Ops<T, D>::activation_backward(a, y, dz);
}

}  // namespace fastnn
