#pragma once
/// \file ops.hpp
/// Ops<T, Cuda>: the primitives of backend/ops.hpp on an NVIDIA GPU. GEMMs go to cuBLAS
/// (row-major tensors through the usual transpose identity: C^T = op(B)^T op(A)^T in cuBLAS's
/// column-major view), everything else to fastnn's kernels (kernels.cuh). All work is queued on
/// this thread's stream (cuda::context()); only all_finite(), the deferred finite check's
/// read-back (throw_if_nonfinite) and synchronize() wait for the device. Every member of the
/// contract has the CPU's semantics (backend/cpu/ops.hpp), to rounding.

#include <cstdint>
#include <string>
#include <type_traits>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/precision.hpp"

namespace fastnn {

template <class T>
struct Ops<T, Cuda> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "Ops<T, Cuda> exists for float and double");
  using Tn = Tensor<T, Cuda>;

  /// C = alpha op(A) op(B) + beta C, each tensor viewed as [dim(0), rest].
  /// `p` must be F32: bfloat16 products are CPU-only (cuBLAS runs float, or TF32 when enabled).
  /// `threads` is the CPU's option and has no effect here.
  static void gemm(bool ta, bool tb, T alpha, const Tn& A, const Tn& B, T beta, Tn& C,
                   Precision p = Precision::F32, int /*threads*/ = 1) {
    if (p != Precision::F32) throw UnsupportedError("gemm: bf16 precision runs on the CPU only");
    const Index ar = rows(A), ac = cols(A), br = rows(B), bc = cols(B);
    const Index m = ta ? ac : ar, k = ta ? ar : ac;
    const Index kb = tb ? bc : br, n = tb ? br : bc;
    if (k != kb || rows(C) != m || cols(C) != n)
      throw ShapeError("gemm: op(A) " + std::to_string(m) + "x" + std::to_string(k) + ", op(B) " +
                       std::to_string(kb) + "x" + std::to_string(n) + " and C " + C.shape().str() + " do not fit");
    if (m == 0 || n == 0) return;
    if (k == 0) {
      if (beta == T(0)) C.set_zero();
      else if (beta != T(1)) throw ShapeError("gemm: empty inner dimension with beta != 0, 1");
      return;
    }
    auto h = cuda::context().cublas();
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int M = to_int(n), N = to_int(m), K = to_int(k);
    const int lda = to_int(bc), ldb = to_int(ac), ldc = to_int(n);
    if constexpr (std::is_same<T, float>::value)
      FASTNN_CUBLAS_CHECK(cublasSgemm(h, opb, opa, M, N, K, &alpha, B.data(), lda, A.data(), ldb, &beta, C.data(), ldc));
    else
      FASTNN_CUBLAS_CHECK(cublasDgemm(h, opb, opa, M, N, K, &alpha, B.data(), lda, A.data(), ldb, &beta, C.data(), ldc));
  }

  static void add_row_vector(Tn& Y, const Tn& b) {
    if (cols(Y) != b.size())
      throw ShapeError("add_row_vector: " + Y.shape().str() + " and bias " + b.shape().str());
    cuda::kernels::add_row_vector(Y.data(), b.data(), rows(Y), cols(Y), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("add_row_vector");
  }

  static void accumulate_column_sums(const Tn& dY, Tn& db) {
    if (cols(dY) != db.size())
      throw ShapeError("accumulate_column_sums: " + dY.shape().str() + " and " + db.shape().str());
    cuda::kernels::column_sums_add(dY.data(), db.data(), rows(dY), cols(dY), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("column_sums_add");
  }

  static void activate(Activation a, Tn& Y) {
    cuda::kernels::activate(static_cast<int>(a), Y.data(), rows(Y), cols(Y), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("activate");
  }

  /// dX *= a'(X) from the pre-activation X (see the CPU's).
  static void activation_backward_input(Activation a, const Tn& X, Tn& dX) {
    if (X.size() != dX.size())
      throw ShapeError("activation_backward_input: " + X.shape().str() + " and " + dX.shape().str());
    if (a == Activation::Softmax) throw ArgumentError("activation_backward_input: softmax is not element-wise");
    cuda::kernels::activation_backward_input(static_cast<int>(a), X.data(), dX.data(), X.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("activation_backward_input");
  }
  static void activation_backward(Activation a, const Tn& Y, Tn& dY) {
    if (activation_needs_input(a))
      throw ArgumentError("activation_backward: " + to_string(a) +
                          "'s derivative needs its input (activation_backward_input)");
    if (Y.size() != dY.size())
      throw ShapeError("activation_backward: " + Y.shape().str() + " and " + dY.shape().str());
    cuda::kernels::activation_backward(static_cast<int>(a), Y.data(), dY.data(), rows(Y), cols(Y), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("activation_backward");
  }

  /// dst[j, ...] = src[idx[begin + j], ...] for j < count: rows of any element type U (float,
  /// double, int32; one byte-copy kernel). While a training step is captured into a CUDA graph
  /// (model/cuda/step_runner.hpp), begin is read on the device (step index * count) so that each
  /// replay takes the next batch. Throws ShapeError when [begin, begin + count) does not fit in
  /// idx or the rows do not fit in dst.
  template <class U>
  static void gather_rows(const Tensor<U, Cuda>& src, const Tensor<std::int32_t, Cuda>& idx, Index begin, Index count,
                          Tensor<U, Cuda>& dst) {
    const Index inner = src.shape().inner();
    if (count < 0 || begin < 0 || begin + count > idx.size() || dst.size() < count * inner)
      throw ShapeError("gather_rows: rows [" + std::to_string(begin) + ", " + std::to_string(begin + count) + ") of " +
                       std::to_string(idx.size()) + " indices, from " + src.shape().str() + " into " +
                       dst.shape().str());
    cuda::kernels::gather_rows(src.data(), idx.data(), begin, count,
                               static_cast<cuda::kernels::idx_t>(sizeof(U)) * inner, dst.data(),
                               cuda::context().capture_step(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("gather_rows");
  }

  /// y[i, :] = table[ids[i], :] for every element i of ids (token ids held as T, checked to be
  /// integers in [0, rows of table) by the caller; the kernel clamps any other value into that
  /// range, so no id can read out of bounds).
  static void embedding_lookup(const Tn& table, const Tn& ids, Tn& y) {
    const Index E = cols(table), V = rows(table);
    if (y.size() != ids.size() * E)
      throw ShapeError("embedding_lookup: " + std::to_string(ids.size()) + " ids into a table " + table.shape().str() +
                       " need " + std::to_string(ids.size() * E) + " outputs, got " + y.shape().str());
    cuda::kernels::embedding_lookup(table.data(), V, E, ids.data(), ids.size(), y.data(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("embedding_lookup");
  }
  /// dtable[ids[i], :] += dy[i, :] for every element i of ids (atomic adds: rows of repeated ids
  /// are summed in no fixed order; ids clamped as in embedding_lookup).
  static void embedding_grad(const Tn& dy, const Tn& ids, Tn& dtable) {
    const Index E = cols(dtable), V = rows(dtable);
    if (dy.size() != ids.size() * E)
      throw ShapeError("embedding_grad: " + std::to_string(ids.size()) + " ids into a table " + dtable.shape().str() +
                       " need " + std::to_string(ids.size() * E) + " output gradients, got " + dy.shape().str());
    cuda::kernels::embedding_grad(dy.data(), ids.data(), ids.size(), dtable.data(), V, E, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("embedding_grad");
  }

  // ---- losses: y viewed as rows [R, K] over its last axis (see backend/ops.hpp) -------------
  // Each adds one double into stats[slot] on the device (deterministically) and, when the
  // gradient is not null, writes it; nothing waits for the device.

  /// Softmax cross-entropy with class indices: row loss lse(z) - z[label];
  /// dz = s (softmax(z) - onehot(label)). A label outside [0, K) gives a NaN loss.
  static void softmax_xent(const Tn& logits, const Tensor<std::int32_t, Cuda>& labels, Tn* dlogits, T s,
                           Tensor<double, Cuda>& stats, Index slot) {
    const Index k = last(logits), n = row_count(logits);
    if (labels.size() != n) throw ShapeError("softmax_xent: " + std::to_string(labels.size()) + " labels " +
                                             labels.shape().str() + " for logits " + logits.shape().str());
    check_loss("softmax_xent", logits, dlogits, stats, slot);
    cuda::kernels::softmax_xent(logits.data(), labels.data(), dlogits ? dlogits->data() : nullptr, n, k, s,
                                stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("softmax_xent");
  }

  /// Softmax cross-entropy with target distributions t: row loss sum_k t_k (lse(z) - z_k);
  /// dz = s (softmax(z) sum(t) - t).
  static void softmax_xent_dense(const Tn& logits, const Tn& targets, Tn* dlogits, T s, Tensor<double, Cuda>& stats,
                                 Index slot) {
    same_shape(logits, targets, "softmax_xent_dense");
    check_loss("softmax_xent_dense", logits, dlogits, stats, slot);
    cuda::kernels::softmax_xent_dense(logits.data(), targets.data(), dlogits ? dlogits->data() : nullptr,
                                      row_count(logits), last(logits), s, stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("softmax_xent_dense");
  }

  /// Sigmoid cross-entropy on logits: row loss mean_k max(z,0) - z t + log(1 + exp(-|z|));
  /// dz = s (sigmoid(z) - t) / K.
  static void sigmoid_xent(const Tn& logits, const Tn& targets, Tn* dlogits, T s, Tensor<double, Cuda>& stats,
                           Index slot) {
    same_shape(logits, targets, "sigmoid_xent");
    check_loss("sigmoid_xent", logits, dlogits, stats, slot);
    cuda::kernels::sigmoid_xent(logits.data(), targets.data(), dlogits ? dlogits->data() : nullptr, logits.size(),
                                last(logits), s, stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("sigmoid_xent");
  }

  /// Element-wise losses (PointwiseLoss): row loss mean_k f(y, t); dy = s f'(y, t) / K. The
  /// binary cross-entropy clips y to [1e-7, 1 - 1e-7] and has zero gradient outside.
  static void pointwise_loss(PointwiseLoss kind, const Tn& y, const Tn& targets, Tn* dy, T s,
                             Tensor<double, Cuda>& stats, Index slot) {
    same_shape(y, targets, "pointwise_loss");
    check_loss("pointwise_loss", y, dy, stats, slot);
    cuda::kernels::pointwise_loss(static_cast<int>(kind), y.data(), targets.data(), dy ? dy->data() : nullptr,
                                  y.size(), last(y), s, stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("pointwise_loss");
  }

  // ---- metrics --------------------------------------------------------------------------------

  /// Sparse categorical accuracy: adds the number of rows whose first arg-max is the label.
  static void metric_labels(const Tn& y, const Tensor<std::int32_t, Cuda>& labels, Tensor<double, Cuda>& stats,
                            Index slot) {
    const Index n = row_count(y);
    if (labels.size() != n)
      throw ShapeError("metric_labels: " + std::to_string(labels.size()) + " labels " + labels.shape().str() +
                       " for a prediction " + y.shape().str());
    check_slot("metric_labels", stats, slot);
    cuda::kernels::metric_labels(y.data(), labels.data(), n, last(y), stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("metric_labels");
  }

  /// Metrics against float targets (MetricKind), summed over rows; first arg-max on ties.
  static void metric_targets(MetricKind kind, const Tn& y, const Tn& targets, T threshold, Tensor<double, Cuda>& stats,
                             Index slot) {
    same_shape(y, targets, "metric_targets");
    check_slot("metric_targets", stats, slot);
    cuda::kernels::metric_targets(static_cast<int>(kind), y.data(), targets.data(), row_count(y), last(y), threshold,
                                  stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("metric_targets");
  }

  static void sgd_update(Tn& p, const Tn& g, Tn& v, const Tn& rate, T momentum, bool nesterov) {
    same_size(p, g, "sgd_update");
    if (momentum != T(0)) same_size(p, v, "sgd_update");
    scalar(rate, "sgd_update");
    cuda::kernels::sgd_update(p.data(), g.data(), momentum != T(0) ? v.data() : nullptr, p.size(), rate.data(),
                              momentum, nesterov, cuda::context().guard(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("sgd_update");
  }
  static void adam_update(Tn& p, const Tn& g, Tn& m, Tn& v, const Tn& rate, T b1, T b2, T eps) {
    same_size(p, g, "adam_update");
    same_size(p, m, "adam_update");
    same_size(p, v, "adam_update");
    scalar(rate, "adam_update");
    cuda::kernels::adam_update(p.data(), g.data(), m.data(), v.data(), p.size(), rate.data(), b1, b2, eps,
                               cuda::context().guard(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("adam_update");
  }
  static void rmsprop_update(Tn& p, const Tn& g, Tn& a, const Tn& rate, T rho, T eps) {
    same_size(p, g, "rmsprop_update");
    same_size(p, a, "rmsprop_update");
    scalar(rate, "rmsprop_update");
    cuda::kernels::rmsprop_update(p.data(), g.data(), a.data(), p.size(), rate.data(), rho, eps,
                                  cuda::context().guard(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("rmsprop_update");
  }

  // ---- gradient transforms (optim/optimizer.hpp) --------------------------------------------
  static void sum_squares(const Tn& g, Tensor<double, Cuda>& stats, Index slot) {
    check_slot("sum_squares", stats, slot);
    cuda::kernels::sum_squares(g.data(), g.size(), stats.data() + slot, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("sum_squares");
  }
  /// Deferred: clip_by_norm records a non-finite norm in the guard, and throw_if_nonfinite reports it.
  static void check_norms_finite(const Tensor<double, Cuda>&, Index, const char*, long) {}
  static void clip_by_norm(Tn& g, const Tensor<double, Cuda>& stats, Index slot, T clip, long batch) {
    check_slot("clip_by_norm", stats, slot);
    cuda::kernels::clip_by_norm(g.data(), g.size(), stats.data() + slot, clip, static_cast<int>(batch),
                                cuda::context().guard(), cuda::context().capture_step(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("clip_by_norm");
  }
  static void clip_by_value(Tn& g, T clip) {
    cuda::kernels::clip_by_value(g.data(), g.size(), clip, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("clip_by_value");
  }
  static void scale(Tn& t, T f) {
    cuda::kernels::scale(t.data(), t.size(), f, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("scale");
  }
  /// t *= f[0], read on the device (a per-step scalar of the optimizer).
  static void scale(Tn& t, const Tn& f) {
    scalar(f, "scale");
    cuda::kernels::scale_by(t.data(), t.size(), f.data(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("scale");
  }
  static void axpy(T a, const Tn& x, Tn& y) {
    same_size(x, y, "axpy");
    cuda::kernels::axpy(a, x.data(), y.data(), y.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("axpy");
  }
  static void mul(const Tn& a, const Tn& b, Tn& y) {
    same_size(a, y, "mul");
    same_size(b, y, "mul");
    cuda::kernels::mul(a.data(), b.data(), y.data(), y.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("mul");
  }
  static void extremum(bool largest, const Tn& a, const Tn& b, Tn& y) {
    same_size(a, y, "extremum");
    same_size(b, y, "extremum");
    cuda::kernels::extremum(largest, a.data(), b.data(), y.data(), y.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("extremum");
  }
  static void extremum_grad(const Tn& x, const Tn& y, const Tn& dy, Tn& taken, Tn& dx) {
    same_size(x, y, "extremum_grad");
    same_size(dy, y, "extremum_grad");
    same_size(taken, y, "extremum_grad");
    same_size(dx, y, "extremum_grad");
    cuda::kernels::extremum_grad(x.data(), y.data(), dy.data(), taken.data(), dx.data(), y.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("extremum_grad");
  }
  static void copy_block(Index rows, Index width, const Tn& src, Index src_stride, Index src_off, Tn& dst,
                         Index dst_stride, Index dst_off, bool accumulate) {
    cuda::kernels::copy_block(rows, width, src.data(), src_stride, src_off, dst.data(), dst_stride, dst_off,
                              accumulate, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("copy_block");
  }

  /// False if any element is NaN or infinite. Waits for the device.
  static bool all_finite(const Tn& t) {
    if (t.empty()) return true;
    Tensor<int, Cpu> h(Shape{1});
    h[0] = 0;
    Tensor<int, Cuda> flag = to_device<Cuda>(h);
    cuda::kernels::flag_nonfinite(t.data(), t.size(), flag.data(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("flag_nonfinite");
    return to_device<Cpu>(flag)[0] == 0;
  }

  /// Dropout's mask, the same as on the CPU (core/hash.hpp).
  static void dropout(const Tn& in, Tn& out, std::uint64_t key, std::uint32_t threshold, T scale) {
    if (in.size() != out.size()) throw ShapeError("dropout: " + in.shape().str() + " and " + out.shape().str());
    cuda::kernels::dropout(in.data(), out.data(), in.size(), key, threshold, scale, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("dropout");
  }

  static void fill(Tn& t, T v) {
    cuda::kernels::fill(t.data(), t.size(), v, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("fill");
  }
  /// Waits for all work queued on this thread's stream; throws DeviceError for a fault in it.
  static void synchronize() { FASTNN_CUDA_CHECK(cudaStreamSynchronize(cuda::stream())); }

  // ---- deferred finite check of training (used by Sequential::fit on the GPU) ---------------
  // The CPU checks the loss and the gradients after every batch; on the GPU that would cost
  // host synchronisations per batch. Instead a kernel records the first bad batch in a device
  // word (cuda::Context::guard()), the optimizer kernels stop updating once it is set (so the
  // parameters keep their values from before the bad step, as on the CPU), and fit() reads the
  // word when it synchronises anyway (progress updates and the end of each epoch).

  /// Clears the record (start of an epoch).
  static void reset_nonfinite() {
    cuda::kernels::fill(cuda::context().guard(), 1, cuda::Context::kNoNonFinite, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("reset_nonfinite");
  }
  /// Enqueues the check of one training step: records batch `batch` if the running loss
  /// stats[slot] or any gradient is not finite (while a step is captured into a CUDA graph,
  /// `batch` is read on the device). Returns true at once: the answer comes from
  /// throw_if_nonfinite.
  static bool step_finite(const Tensor<double, Cuda>& stats, Index slot, const Tn& grads, long batch) {
    check_slot("step_finite", stats, slot);
    cuda::kernels::check_step_finite(stats.data() + slot, grads.data(), grads.size(), static_cast<int>(batch),
                                     cuda::context().guard(), cuda::context().capture_step(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("check_step_finite");
    return true;
  }
  /// Throws NonFiniteError naming the first bad batch of `epoch`, if any (waits for the device).
  static void throw_if_nonfinite(int epoch) {
    int code = cuda::Context::kNoNonFinite;
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(&code, cuda::context().guard(), sizeof code, cudaMemcpyDeviceToHost,
                                      cuda::stream()));
    FASTNN_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    if (code == cuda::Context::kNoNonFinite) return;
    reset_nonfinite();
    throw NonFiniteError(std::string("non-finite ") + ((code & 1) ? "gradient" : "loss") + " at epoch " +
                         std::to_string(epoch) + ", batch " + std::to_string(code / 2) +
                         " (found on the GPU; the parameters keep their values from before that batch)");
  }

 private:
  static Index rows(const Tn& t) { return t.rank() == 0 ? 1 : t.dim(0); }
  static Index cols(const Tn& t) { return t.rank() == 0 ? 1 : t.shape().inner(); }
  /// K, the extent of the last axis, and R = size / K: the rows of the losses and metrics.
  static Index last(const Tn& t) { return t.rank() == 0 ? 1 : t.dim(t.rank() - 1); }
  static Index row_count(const Tn& t) {
    const Index k = last(t);
    return k == 0 ? 0 : t.size() / k;
  }
  /// Targets must have one value per element of the prediction.
  static void same_shape(const Tn& y, const Tn& t, const char* what) {
    if (y.size() != t.size())
      throw ShapeError(std::string(what) + ": targets " + t.shape().str() + " for a prediction " + y.shape().str());
  }
  static void check_slot(const char* what, const Tensor<double, Cuda>& stats, Index slot) {
    if (slot < 0 || slot >= stats.size())
      throw ShapeError(std::string(what) + ": slot " + std::to_string(slot) + " of " + std::to_string(stats.size()) +
                       " accumulators");
  }
  static void check_loss(const char* what, const Tn& y, const Tn* dy, const Tensor<double, Cuda>& stats, Index slot) {
    if (dy && dy->size() != y.size())
      throw ShapeError(std::string(what) + ": gradient " + dy->shape().str() + " for " + y.shape().str());
    check_slot(what, stats, slot);
  }
  static int to_int(Index v) {
    if (v > 0x7fffffff) throw ShapeError("gemm: dimension " + std::to_string(v) + " exceeds cuBLAS's int range");
    return static_cast<int>(v);
  }
  static void scalar(const Tn& s, const char* what) {
    if (s.size() != 1) throw ShapeError(std::string(what) + ": expected a one-element scalar, got " + s.shape().str());
  }
  static void same_size(const Tn& a, const Tn& b, const char* what) {
    if (a.size() != b.size())
      throw ShapeError(std::string(what) + ": buffers of " + std::to_string(a.size()) + " and " +
                       std::to_string(b.size()) + " elements");
  }
};

}  // namespace fastnn
