#pragma once
/// \file ops.hpp
/// Ops<T, Cuda>: the primitives of backend/ops.hpp on an NVIDIA GPU. GEMMs go to cuBLAS
/// (row-major tensors through the usual transpose identity: C^T = op(B)^T op(A)^T in cuBLAS's
/// column-major view), everything else to fastnn's kernels (kernels.cuh). All work is queued on
/// this thread's stream (cuda::context()); only all_finite(), the deferred finite check's
/// read-back and synchronize() wait for the device.

#include <cstdint>
#include <string>
#include <type_traits>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/activation.hpp"

namespace fastnn {

template <class T>
struct Ops<T, Cuda> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "Ops<T, Cuda> exists for float and double");
  using Tn = Tensor<T, Cuda>;

  /// C = alpha op(A) op(B) + beta C, each tensor viewed as [dim(0), rest].
  static void gemm(bool ta, bool tb, T alpha, const Tn& A, const Tn& B, T beta, Tn& C) {
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

  static void activation_backward(Activation a, const Tn& Y, Tn& dY) {
    if (Y.size() != dY.size())
      throw ShapeError("activation_backward: " + Y.shape().str() + " and " + dY.shape().str());
    cuda::kernels::activation_backward(static_cast<int>(a), Y.data(), dY.data(), rows(Y), cols(Y), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("activation_backward");
  }

  /// X[j, :] = scale * src[idx[begin + j], :]; labels[j] = lsrc[idx[begin + j]] for j < count.
  /// While a training step is captured into a CUDA graph (graph.hpp), begin is read on the device
  /// (step index * count) so that each replay takes the next batch.
  static void gather_scaled(const Tensor<std::uint8_t, Cuda>& src, const Tensor<std::int32_t, Cuda>& idx, Index begin,
                            Index count, T scale, Tn& X, const Tensor<std::int32_t, Cuda>& lsrc,
                            Tensor<std::int32_t, Cuda>& labels) {
    if (begin < 0 || begin + count > idx.size() || X.size() < count * src.shape().inner() || labels.size() < count)
      throw ShapeError("gather_scaled: rows [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
                       ") of " + std::to_string(idx.size()) + " into " + X.shape().str());
    cuda::kernels::gather_scaled(src.data(), idx.data(), begin, count, src.shape().inner(), scale, X.data(),
                                 lsrc.data(), labels.data(), cuda::context().capture_step(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("gather_scaled");
  }

  /// Fused softmax cross-entropy (see backend/ops.hpp); stats is a device tensor of 2 doubles.
  static void softmax_xent(const Tn& logits, const Tensor<std::int32_t, Cuda>& labels, Tn* dlogits, T grad_scale,
                           Tensor<double, Cuda>& stats) {
    if (labels.size() != rows(logits) || stats.size() < 2 || (dlogits && dlogits->size() != logits.size()))
      throw ShapeError("softmax_xent: logits " + logits.shape().str() + ", labels " + labels.shape().str());
    cuda::kernels::softmax_xent(logits.data(), labels.data(), dlogits ? dlogits->data() : nullptr, rows(logits),
                                cols(logits), grad_scale, stats.data(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("softmax_xent");
  }

  static void sgd_update(Tn& p, const Tn& g, Tn& v, T lr, T momentum, bool nesterov) {
    same_size(p, g, "sgd_update");
    if (momentum != T(0)) same_size(p, v, "sgd_update");
    cuda::kernels::sgd_update(p.data(), g.data(), momentum != T(0) ? v.data() : nullptr, p.size(), lr, momentum,
                              nesterov, cuda::context().guard(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("sgd_update");
  }
  static void adam_update(Tn& p, const Tn& g, Tn& m, Tn& v, T lr_t, T b1, T b2, T eps) {
    same_size(p, g, "adam_update");
    same_size(p, m, "adam_update");
    same_size(p, v, "adam_update");
    cuda::kernels::adam_update(p.data(), g.data(), m.data(), v.data(), p.size(), lr_t, b1, b2, eps,
                               cuda::context().guard(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("adam_update");
  }
  static void rmsprop_update(Tn& p, const Tn& g, Tn& a, T lr, T rho, T eps) {
    same_size(p, g, "rmsprop_update");
    same_size(p, a, "rmsprop_update");
    cuda::kernels::rmsprop_update(p.data(), g.data(), a.data(), p.size(), lr, rho, eps, cuda::context().guard(),
                                  cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("rmsprop_update");
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
  /// Records batch `batch` if the running loss stats[0] or any gradient is not finite (while a
  /// step is captured into a CUDA graph, `batch` is read on the device).
  static void note_nonfinite(const Tensor<double, Cuda>& stats, const Tn& grads, long batch) {
    cuda::kernels::check_step_finite(stats.data(), grads.data(), grads.size(), static_cast<int>(batch),
                                     cuda::context().guard(), cuda::context().capture_step(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("check_step_finite");
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
  static int to_int(Index v) {
    if (v > 0x7fffffff) throw ShapeError("gemm: dimension " + std::to_string(v) + " exceeds cuBLAS's int range");
    return static_cast<int>(v);
  }
  static void same_size(const Tn& a, const Tn& b, const char* what) {
    if (a.size() != b.size())
      throw ShapeError(std::string(what) + ": buffers of " + std::to_string(a.size()) + " and " +
                       std::to_string(b.size()) + " elements");
  }
};

}  // namespace fastnn
