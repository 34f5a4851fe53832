#pragma once
/// \file attention.hpp
/// The GPU computation of MultiHeadAttention (layers/attention.hpp): `detail::CudaAttention<T>`, which is
/// TransformerOps<T, Cuda>::Attention (backend/cuda/transformer.hpp). Host code; its semantics are those of
/// detail::CpuAttention (backend/cpu/attention.hpp), to rounding, with the same shapes and names:
///
///   Q = (q Wq + bq) / sqrt(kd), K = k Wk + bk, V = v Wv + bv     cuBLAS GEMMs over the whole batch
///   Qh, Kh, Vh = Q, K, V rearranged head-major [B H, T, d]       fastnn's permute kernel
///   S = Qh Kh^T                                                  one cuBLAS strided-batched GEMM, B H matrices
///   P = masked softmax of S's rows, Pd = dropout(P)              fastnn's fused kernel (kernels.cu)
///   Oh = Pd Vh, O = Oh rearranged back to [B Tq, H vd]           strided-batched GEMM, permute
///   y = O Wo + bo, 0 at the padded query steps                   GEMM, bias kernel, mask_steps kernel
///
/// Unlike the CPU, which keeps one score matrix per thread and recomputes P in backward(), P (and Pd, with
/// dropout) [B H, Tq, Tk] is kept from forward() to backward(). The dropout mask is the CPU's: element
/// ((b H + h) Tq + i) Tk + j of P is kept iff hash::bits32(key, that index) >= threshold, which is the element's
/// offset in the head-major P. Backward runs the same products transposed; the softmax gradient
/// dS = P (dP - rowsum(dP P)) is the second fused kernel, 0 on the padded query rows and the masked keys.
///
/// Every buffer is a tensor owned by the object that grows to the largest batch and is then reused: a call
/// after the first with no larger batch allocates nothing and waits for nothing, so a training step may be
/// captured in a CUDA graph. Per-sample lengths are copied to the device (into owned buffers) on every
/// forward(); a call with lengths while a graph is being captured throws DeviceError, as the other layers
/// with lengths do. GEMMs follow the backend's TF32 switch (cuda::set_allow_tf32) through the context's
/// cuBLAS handle; bf16 precision is refused (UnsupportedError), as by Ops<T, Cuda>::gemm.

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/transformer.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

/// MultiHeadAttention on the GPU (see the file comment).
template <class T>
class CudaAttention {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "CudaAttention exists for float and double");
  using Tn = Tensor<T, Cuda>;
  using Lens = Tensor<std::int32_t, Cuda>;

 public:
  /// Host threads do not apply on the GPU.
  void set_threads(int) {}

  /// Runs the forward pass (see the file comment) into y [B, Tq, O], keeping what backward() needs.
  void forward(const AttentionDims& d, const AttentionWeights<T>& w, const AttentionMask& m, const T* q, const T* k,
               const T* v, T* y, Precision p) {
    check_precision(p);
    d_ = d;
    m_ = m;
    const Index hk = d.heads * d.key_dim, hv = d.heads * d.value_dim;
    const Index nq = d.batch * d.tq, nk = d.batch * d.tk, bh = d.batch * d.heads;
    upload_lengths(m);
    qp_.resize(Shape{nq, hk});
    kp_.resize(Shape{nk, hk});
    vp_.resize(Shape{nk, hv});
    qh_.resize(Shape{bh, d.tq, d.key_dim});
    kh_.resize(Shape{bh, d.tk, d.key_dim});
    vh_.resize(Shape{bh, d.tk, d.value_dim});
    p_.resize(Shape{bh, d.tq, d.tk});
    if (m.threshold) pd_.resize(Shape{bh, d.tq, d.tk});
    oh_.resize(Shape{bh, d.tq, d.value_dim});
    o_.resize(Shape{nq, hv});
    cudaStream_t s = cuda::stream();
    project(nq, d.fq, hk, q, w.wq, w.bq, qp_.data());
    cuda::kernels::scale(qp_.data(), nq * hk, T(1) / std::sqrt(static_cast<T>(d.key_dim)), s);
    FASTNN_CUDA_CHECK_LAUNCH("scale");
    project(nk, d.fk, hk, k, w.wk, w.bk, kp_.data());
    project(nk, d.fv, hv, v, w.wv, w.bv, vp_.data());
    to_heads(qp_.data(), qh_.data(), d.tq, d.key_dim);
    to_heads(kp_.data(), kh_.data(), d.tk, d.key_dim);
    to_heads(vp_.data(), vh_.data(), d.tk, d.value_dim);
    // S = Qh Kh^T into p_, then P in place (and Pd into pd_ with dropout)
    gemm(false, true, d.tq, d.tk, d.key_dim, T(1), qh_.data(), d.key_dim, d.tq * d.key_dim, kh_.data(), d.key_dim,
         d.tk * d.key_dim, T(0), p_.data(), d.tk, d.tq * d.tk, bh);
    cuda::kernels::attention_softmax_forward(rows(), p_.data(), p_.data(), m.threshold ? pd_.data() : nullptr,
                                             dropout_scale(), s);
    FASTNN_CUDA_CHECK_LAUNCH("attention_softmax_forward");
    gemm(false, false, d.tq, d.value_dim, d.tk, T(1), dropped(), d.tk, d.tq * d.tk, vh_.data(), d.value_dim,
         d.tk * d.value_dim, T(0), oh_.data(), d.value_dim, d.tq * d.value_dim, bh);
    from_heads(oh_.data(), o_.data(), d.tq, d.value_dim);
    project(nq, hv, d.out, o_.data(), w.wo, w.bo, y);
    if (qlen_ptr_) {
      cuda::kernels::mask_steps(y, y, d.batch, d.tq, d.out, qlen_ptr_, s);
      FASTNN_CUDA_CHECK_LAUNCH("mask_steps");
    }
  }

  /// The attention probabilities of the last forward() [B, H, Tq, Tk] into `out` (device memory; before dropout, 0
  /// for the masked keys and on padded query rows): a copy of P.
  void scores(T* out) {
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(out, p_.data(), sizeof(T) * static_cast<std::size_t>(p_.size()),
                                      cudaMemcpyDeviceToDevice, cuda::stream()));
  }

  /// Given dy [B, Tq, O], accumulates the weight gradients into g and writes the input gradients dq, dk, dv
  /// (each may be null). With `dk == dv` (key and value the same tensor) both contributions are summed there.
  void backward(const AttentionWeights<T>& w, const AttentionGrads<T>& g, const T* q, const T* k, const T* v,
                const T* dy, T* dq, T* dk, T* dv, Precision p) {
    check_precision(p);
    const AttentionDims& d = d_;
    const Index hk = d.heads * d.key_dim, hv = d.heads * d.value_dim;
    const Index nq = d.batch * d.tq, nk = d.batch * d.tk, bh = d.batch * d.heads;
    cudaStream_t s = cuda::stream();
    const T* dyz = dy;  // dy with the padded query steps zeroed
    if (qlen_ptr_) {
      dy_.resize(Shape{nq, d.out});
      cuda::kernels::mask_steps(dy, dy_.data(), d.batch, d.tq, d.out, qlen_ptr_, s);
      FASTNN_CUDA_CHECK_LAUNCH("mask_steps");
      dyz = dy_.data();
    }
    do_.resize(Shape{nq, hv});
    ds_.resize(Shape{bh, d.tq, d.tk});
    dqh_.resize(Shape{bh, d.tq, d.key_dim});
    dkh_.resize(Shape{bh, d.tk, d.key_dim});
    dvh_.resize(Shape{bh, d.tk, d.value_dim});
    // backward needs neither forward's projections before their head-major rearrangement nor its head-major
    // context: their buffers take the gradients
    T* doh = oh_.data();
    T* dqp = qp_.data();
    T* dkp = kp_.data();
    T* dvp = vp_.data();
    // output projection
    gemm(true, false, hv, d.out, nq, T(1), o_.data(), hv, 0, dyz, d.out, 0, T(1), g.wo, d.out, 0, 1);
    if (g.bo) column_sums(dyz, nq, d.out, g.bo);
    gemm(false, true, nq, hv, d.out, T(1), dyz, d.out, 0, w.wo, d.out, 0, T(0), do_.data(), hv, 0, 1);
    to_heads(do_.data(), doh, d.tq, d.value_dim);
    // dVh = Pd^T dOh, dPd = dOh Vh^T, dS, dQh = dS Kh / sqrt(kd), dKh = dS^T Qh
    gemm(true, false, d.tk, d.value_dim, d.tq, T(1), dropped(), d.tk, d.tq * d.tk, doh, d.value_dim,
         d.tq * d.value_dim, T(0), dvh_.data(), d.value_dim, d.tk * d.value_dim, bh);
    gemm(false, true, d.tq, d.tk, d.value_dim, T(1), doh, d.value_dim, d.tq * d.value_dim, vh_.data(), d.value_dim,
         d.tk * d.value_dim, T(0), ds_.data(), d.tk, d.tq * d.tk, bh);
    cuda::kernels::attention_softmax_backward(rows(), p_.data(), ds_.data(), dropout_scale(), s);
    FASTNN_CUDA_CHECK_LAUNCH("attention_softmax_backward");
    const T inv = T(1) / std::sqrt(static_cast<T>(d.key_dim));
    gemm(false, false, d.tq, d.key_dim, d.tk, inv, ds_.data(), d.tk, d.tq * d.tk, kh_.data(), d.key_dim,
         d.tk * d.key_dim, T(0), dqh_.data(), d.key_dim, d.tq * d.key_dim, bh);
    gemm(true, false, d.tk, d.key_dim, d.tq, T(1), ds_.data(), d.tk, d.tq * d.tk, qh_.data(), d.key_dim,
         d.tq * d.key_dim, T(0), dkh_.data(), d.key_dim, d.tk * d.key_dim, bh);
    from_heads(dqh_.data(), dqp, d.tq, d.key_dim);
    from_heads(dkh_.data(), dkp, d.tk, d.key_dim);
    from_heads(dvh_.data(), dvp, d.tk, d.value_dim);
    // input projections
    project_backward(nq, d.fq, hk, q, w.wq, dqp, g.wq, g.bq, dq, false);
    project_backward(nk, d.fk, hk, k, w.wk, dkp, g.wk, g.bk, dk, false);
    project_backward(nk, d.fv, hv, v, w.wv, dvp, g.wv, g.bv, dv, dv != nullptr && dv == dk);
  }

 private:
  static void check_precision(Precision p) {
    if (p != Precision::F32)
      throw UnsupportedError("MultiHeadAttention: bf16 precision runs on the CPU only (the GPU computes in float or "
                             "double)");
  }
  T dropout_scale() const { return m_.threshold ? static_cast<T>(m_.scale) : T(1); }
  /// The probabilities the values are weighted with: Pd with dropout, else P.
  const T* dropped() const { return m_.threshold ? pd_.data() : p_.data(); }

  /// Copies the call's host lengths into qlen_ and klen_ (null pointers where the call has none).
  void upload_lengths(const AttentionMask& m) {
    qlen_ptr_ = upload(m.query_lengths, qlen_);
    klen_ptr_ = upload(m.key_lengths, klen_);
  }
  const std::int32_t* upload(const std::int32_t* host, Lens& buf) const {
    if (!host) return nullptr;
    if (cuda::context().capturing())
      throw DeviceError("MultiHeadAttention: a batch with per-sample lengths cannot be captured in a CUDA graph (its "
                        "lengths change from batch to batch); run such a model without graph capture");
    buf.resize(Shape{d_.batch});
    FASTNN_CUDA_CHECK(cudaMemcpyAsync(buf.data(), host, sizeof(std::int32_t) * static_cast<std::size_t>(d_.batch),
                                      cudaMemcpyHostToDevice, cuda::stream()));
    return buf.data();
  }
  cuda::kernels::AttentionRows rows() const {
    cuda::kernels::AttentionRows a{};
    a.batch = d_.batch;
    a.heads = d_.heads;
    a.tq = d_.tq;
    a.tk = d_.tk;
    a.query_lengths = qlen_ptr_;
    a.key_lengths = klen_ptr_;
    a.causal = m_.causal;
    a.key = m_.key;
    a.threshold = m_.threshold;
    return a;
  }

  /// x [B T, H dh] (row-major) to xh [B H, T, dh].
  void to_heads(const T* x, T* xh, Index steps, Index dh) const {
    cuda::kernels::PermuteDims p{};
    p.rank = 3;
    p.out_dims[0] = d_.heads;
    p.out_dims[1] = steps;
    p.out_dims[2] = dh;
    p.src_stride[0] = dh;
    p.src_stride[1] = d_.heads * dh;
    p.src_stride[2] = 1;
    cuda::kernels::permute(x, xh, d_.batch, steps * d_.heads * dh, p, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("permute");
  }
  /// xh [B H, T, dh] to x [B T, H dh].
  void from_heads(const T* xh, T* x, Index steps, Index dh) const {
    cuda::kernels::PermuteDims p{};
    p.rank = 3;
    p.out_dims[0] = steps;
    p.out_dims[1] = d_.heads;
    p.out_dims[2] = dh;
    p.src_stride[0] = dh;
    p.src_stride[1] = steps * dh;
    p.src_stride[2] = 1;
    cuda::kernels::permute(xh, x, d_.batch, steps * d_.heads * dh, p, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("permute");
  }

  /// Row-major C_i = alpha op(A_i) op(B_i) + beta C_i for i < count, op(A_i) [m, k], op(B_i) [k, n], the matrices
  /// i at A + i sa, B + i sb, C + i sc with leading dimensions (row strides) lda, ldb, ldc. cuBLAS is column-major:
  /// it computes C^T = op(B)^T op(A)^T, which reads the row-major arrays as they are.
  static void gemm(bool ta, bool tb, Index m, Index n, Index k, T alpha, const T* A, Index lda, Index sa, const T* B,
                   Index ldb, Index sb, T beta, T* C, Index ldc, Index sc, Index count) {
    if (m <= 0 || n <= 0 || count <= 0) return;
    auto h = cuda::context().cublas();
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int M = to_int(n), N = to_int(m), K = to_int(k), la = to_int(lda), lb = to_int(ldb), lc = to_int(ldc);
    if (count == 1) {
      if constexpr (std::is_same<T, float>::value)
        FASTNN_CUBLAS_CHECK(cublasSgemm(h, opb, opa, M, N, K, &alpha, B, lb, A, la, &beta, C, lc));
      else
        FASTNN_CUBLAS_CHECK(cublasDgemm(h, opb, opa, M, N, K, &alpha, B, lb, A, la, &beta, C, lc));
      return;
    }
    const long long stride_a = sa, stride_b = sb, stride_c = sc;
    const int batches = to_int(count);
    if constexpr (std::is_same<T, float>::value)
      FASTNN_CUBLAS_CHECK(cublasSgemmStridedBatched(h, opb, opa, M, N, K, &alpha, B, lb, stride_b, A, la, stride_a,
                                                    &beta, C, lc, stride_c, batches));
    else
      FASTNN_CUBLAS_CHECK(cublasDgemmStridedBatched(h, opb, opa, M, N, K, &alpha, B, lb, stride_b, A, la, stride_a,
                                                    &beta, C, lc, stride_c, batches));
  }
  static int to_int(Index v) {
    if (v > 0x7fffffff)
      throw ShapeError("MultiHeadAttention: GEMM dimension " + std::to_string(v) + " exceeds cuBLAS's int range");
    return static_cast<int>(v);
  }

  /// out [rows, n] = x [rows, f] W [f, n] (+ bias).
  static void project(Index rows, Index f, Index n, const T* x, const T* w, const T* bias, T* out) {
    gemm(false, false, rows, n, f, T(1), x, f, 0, w, n, 0, T(0), out, n, 0, 1);
    if (!bias) return;
    cuda::kernels::add_row_vector(out, bias, rows, n, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("add_row_vector");
  }
  /// dW += x^T dout, db += column sums of dout, dx = dout W^T (added to dx when `add`).
  static void project_backward(Index rows, Index f, Index n, const T* x, const T* w, const T* dout, T* dw, T* db,
                               T* dx, bool add) {
    gemm(true, false, f, n, rows, T(1), x, f, 0, dout, n, 0, T(1), dw, n, 0, 1);
    if (db) column_sums(dout, rows, n, db);
    if (dx) gemm(false, true, rows, f, n, T(1), dout, n, 0, w, n, 0, add ? T(1) : T(0), dx, f, 0, 1);
  }
  static void column_sums(const T* x, Index rows, Index n, T* acc) {
    cuda::kernels::column_sums_add(x, acc, rows, n, cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("column_sums_add");
  }

  AttentionDims d_;
  AttentionMask m_;
  Lens qlen_, klen_;
  const std::int32_t* qlen_ptr_ = nullptr;
  const std::int32_t* klen_ptr_ = nullptr;
  Tn qp_, kp_, vp_, qh_, kh_, vh_, p_, pd_, oh_, o_;
  Tn dy_, do_, ds_, dqh_, dkh_, dvh_;
};

}  // namespace detail
}  // namespace fastnn
