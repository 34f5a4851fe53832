#pragma once
/// \file kernels.cuh
/// Host-callable launchers of fastnn's own CUDA kernels (declarations only: plain C++ that the
/// ordinary compiler reads). The kernels themselves are in kernels.cu, compiled by nvcc into
/// the small static library of the fastnn::cuda CMake target, with explicit instantiations for
/// float and double (fill also for int32, int64 and uint8; gather_rows copies bytes, for any
/// element type). Every launcher enqueues on `s` and returns at once; launch errors are reported
/// by the caller's FASTNN_CUDA_CHECK_LAUNCH.
///
/// Matrices are row-major; `rows x cols` means a tensor viewed as [dim(0), rest].

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastnn {
namespace cuda {
namespace kernels {

using idx_t = std::int64_t;

/// p[i] = v for i < n (instantiated for float, double, int32, int64 and uint8).
template <class T>
void fill(T* p, idx_t n, T v, cudaStream_t s);

/// y[i, j] += b[j].
template <class T>
void add_row_vector(T* y, const T* b, idx_t rows, idx_t cols, cudaStream_t s);

/// db[j] += sum_i dy[i, j].
template <class T>
void column_sums_add(const T* dy, T* db, idx_t rows, idx_t cols, cudaStream_t s);

/// y = a(y) in place; `act` is static_cast<int>(fastnn::Activation); Softmax is per row.
template <class T>
void activate(int act, T* y, idx_t rows, idx_t cols, cudaStream_t s);

/// dy = dL/dz from y = a(z) and dy = dL/dy, in place.
template <class T>
void activation_backward(int act, const T* y, T* dy, idx_t rows, idx_t cols, cudaStream_t s);

/// dx *= a'(x) from the pre-activation x, in place (element-wise activations; gelu and swish need it).
template <class T>
void activation_backward_input(int act, const T* x, T* dx, idx_t n, cudaStream_t s);

/// dst row j = src row idx[begin + j] for j < count, rows of `row_bytes` bytes (any element
/// type). When `step` is not null, begin is read on the device as *step * count (a CUDA graph's
/// replay takes the next batch).
void gather_rows(const void* src, const std::int32_t* idx, idx_t begin, idx_t count, idx_t row_bytes, void* dst,
                 const idx_t* step, cudaStream_t s);

// ---- losses and metrics ------------------------------------------------------------------------
// Each adds one sum to *stat (a double on the device) and is deterministic: one block of threads,
// each taking rows (or elements) tid, tid + blockDim, ..., then a reduction in a fixed order.
// Rows are the elements grouped by the last axis: z [rows, k]. When the gradient pointer is not
// null it is written (not added to). The formulas are those of backend/cpu/ops.hpp.

/// Softmax cross-entropy with class indices: *stat += sum_i lse(z_i) - z_i[labels[i]];
/// dz = grad_scale * (softmax(z) - onehot(label)).
template <class T>
void softmax_xent(const T* z, const std::int32_t* labels, T* dz, idx_t rows, idx_t k, T grad_scale, double* stat,
                  cudaStream_t s);

/// Softmax cross-entropy with target distributions t [rows, k]: *stat += sum_i sum_j
/// t_ij (lse(z_i) - z_ij); dz = grad_scale * (softmax(z) sum_j t_ij - t).
template <class T>
void softmax_xent_dense(const T* z, const T* t, T* dz, idx_t rows, idx_t k, T grad_scale, double* stat,
                        cudaStream_t s);

/// Sigmoid cross-entropy on logits over n elements, rows of k: *stat += (sum_e max(z,0) - z t +
/// log(1 + exp(-|z|))) / k; dz = grad_scale * (sigmoid(z) - t) / k.
template <class T>
void sigmoid_xent(const T* z, const T* t, T* dz, idx_t n, idx_t k, T grad_scale, double* stat, cudaStream_t s);

/// Element-wise loss `kind` (static_cast<int>(fastnn::PointwiseLoss)) over n elements, rows of k:
/// *stat += (sum_e f(y, t)) / k; dy = grad_scale * f'(y, t) / k.
template <class T>
void pointwise_loss(int kind, const T* y, const T* t, T* dy, idx_t n, idx_t k, T grad_scale, double* stat,
                    cudaStream_t s);

/// *stat += the number of rows of y [rows, k] whose first arg-max is the label.
template <class T>
void metric_labels(const T* y, const std::int32_t* labels, idx_t rows, idx_t k, double* stat, cudaStream_t s);

/// *stat += the sum over rows of metric `kind` (static_cast<int>(fastnn::MetricKind)) of y
/// against t, both [rows, k]; `threshold` is BinaryAccuracy's.
template <class T>
void metric_targets(int kind, const T* y, const T* t, idx_t rows, idx_t k, T threshold, double* stat,
                    cudaStream_t s);

/// Optimizer updates over flat buffers (formulas in backend/cpu/ops.hpp). The rate is read from device memory
/// (`rate`, one element written before the step or the graph replay), so a captured update bakes in no rate.
/// When `guard` is not null and *guard != 0x7fffffff the update is skipped (a NaN/Inf was found in this step).
template <class T>
void sgd_update(T* p, const T* g, T* v, idx_t n, const T* rate, T momentum, bool nesterov, const int* guard,
                cudaStream_t s);
template <class T>
void adam_update(T* p, const T* g, T* m, T* v, idx_t n, const T* rate, T b1, T b2, T eps, const int* guard,
                 cudaStream_t s);
template <class T>
void rmsprop_update(T* p, const T* g, T* a, idx_t n, const T* rate, T rho, T eps, const int* guard, cudaStream_t s);

/// Gradient transforms of the optimizers (optim/optimizer.hpp). sum_squares: *acc += sum of g^2 in double, in a
/// fixed order. clip_by_norm: g *= clip / max(sqrt(*sq), clip); a non-finite norm instead records
/// min(*guard, 2 * batch + 1) (batch read as *step + 1 when `step` is not null), so that the update is skipped.
template <class T>
void sum_squares(const T* g, idx_t n, double* acc, cudaStream_t s);
template <class T>
void clip_by_norm(T* g, idx_t n, const double* sq, T clip, int batch, int* guard, const idx_t* step, cudaStream_t s);
/// g = min(max(g, -clip), clip).
template <class T>
void clip_by_value(T* g, idx_t n, T clip, cudaStream_t s);
/// p *= f.
template <class T>
void scale(T* p, idx_t n, T f, cudaStream_t s);
/// p *= *f, the factor read from device memory.
template <class T>
void scale_by(T* p, idx_t n, const T* f, cudaStream_t s);
/// y += a x.
template <class T>
void axpy(T a, const T* x, T* y, idx_t n, cudaStream_t s);
/// y[i] = a[i] b[i] (y may be a or b).
template <class T>
void mul(const T* a, const T* b, T* y, idx_t n, cudaStream_t s);
/// y[i] = max(a[i], b[i]) (min when not `largest`; y may be a or b).
template <class T>
void extremum(bool largest, const T* a, const T* b, T* y, idx_t n, cudaStream_t s);
/// dx[i] = dy[i] where taken[i] == 0 and x[i] == y[i] (then taken[i] = 1), else 0.
template <class T>
void extremum_grad(const T* x, const T* y, const T* dy, T* taken, T* dx, idx_t n, cudaStream_t s);
/// dst[r * dst_stride + dst_off + k] = (+= with accumulate) src[r * src_stride + src_off + k], r < rows, k < width.
template <class T>
void copy_block(idx_t rows, idx_t width, const T* src, idx_t src_stride, idx_t src_off, T* dst, idx_t dst_stride,
                idx_t dst_off, bool accumulate, cudaStream_t s);

/// *flag = 1 if any of p[0..n) is NaN or infinite (flag is left alone otherwise).
template <class T>
void flag_nonfinite(const T* p, idx_t n, int* flag, cudaStream_t s);

/// Deferred finite check of one training step: *guard = min(*guard, 2 * batch) when *loss (the
/// running loss) is not finite, min(*guard, 2 * batch + 1) when a gradient is not. When `step`
/// is not null, batch is read on the device as *step + 1 (a CUDA graph's replay).
template <class T>
void check_step_finite(const double* loss, const T* grads, idx_t n, int batch, int* guard, const idx_t* step,
                       cudaStream_t s);

/// *p += 1 (one thread): advances the step counter at the end of a captured training step.
void increment(idx_t* p, cudaStream_t s);

/// dst[j, i, :] = src[rev0 ? d0-1-i : i, rev1 ? d1-1-j : j, :] with src [d0, d1, inner] and
/// dst [d1, d0, inner]: batch-major <-> time-major, optionally reversing time.
template <class T>
void swap01(const T* src, T* dst, idx_t d0, idx_t d1, idx_t inner, bool rev0, bool rev1, cudaStream_t s);

/// Batch-major x [B, S, inner] to time-major xt [S, B, inner] for sequences of per-sample
/// lengths L_b (`lengths`: device [B], or null for all S): xt[t, b] = x[b, reverse ? L_b-1-t : t]
/// for t < L_b, and 0 for the padded steps t >= L_b (reversal within each sample's length).
template <class T>
void to_time_major(const T* x, T* xt, idx_t B, idx_t S, idx_t inner, const std::int32_t* lengths, bool reverse,
                   cudaStream_t s);

/// The inverse of to_time_major: x[b, t] = xt[reverse ? L_b-1-t : t, b] for t < L_b, 0 for
/// t >= L_b.
template <class T>
void from_time_major(const T* xt, T* x, idx_t B, idx_t S, idx_t inner, const std::int32_t* lengths, bool reverse,
                     cudaStream_t s);

/// Where the parameters of a recurrent layer of up to two directions are: kernel [F, G*H],
/// recurrent kernel [H, G*H] and bias ([G*H], or [2, G*H] for a GRU with reset_after) of
/// direction d at w[d], u[d], b[d]; wn, un, bn their element counts.
template <class T>
struct RnnParamPtrs {
  T* w[2];
  T* u[2];
  T* b[2];
  idx_t wn;  ///< F * G*H
  idx_t un;  ///< H * G*H
  idx_t bn;  ///< G*H, or 2 * G*H
};

/// ws[j] = source element map[j] of the parameters (0 where map[j] < 0). Source index m counts
/// through direction 0's kernel, recurrent kernel and bias, then direction 1's.
template <class T>
void pack_rnn_weights(RnnParamPtrs<T> src, const std::int32_t* map, T* ws, idx_t n, cudaStream_t s);

/// grad(map[j]) += dws[j] for map[j] >= 0 (the map is one-to-one, so no atomics).
template <class T>
void unpack_add_rnn_grads(const T* dws, const std::int32_t* map, RnnParamPtrs<T> dst, idx_t n, cudaStream_t s);

/// One LSTM step of B streams (gate order i, f, c, o): z [B, 4H] = x W + h U (without bias),
/// b [4H]; c and h [B, H] are updated in place: c = f c + i g, h = o tanh(c).
template <class T>
void lstm_step(const T* z, const T* b, T* h, T* c, idx_t B, idx_t H, cudaStream_t s);

/// One GRU step (reset_after, gate order z, r, h) of B streams: zx [B, 3H] = x W and
/// rh [B, 3H] = h U (without biases), b [2, 3H] (input, recurrent); h [B, H] updated in place.
template <class T>
void gru_step(const T* zx, const T* rh, const T* b, T* h, idx_t B, idx_t H, cudaStream_t s);

/// One SimpleRNN step of B streams: h = a(z + b), z [B, H] = x W + h U, a = relu or tanh.
template <class T>
void simple_rnn_step(const T* z, const T* b, T* h, idx_t B, idx_t H, bool relu, cudaStream_t s);

/// Bidirectional merge (mode: 0 concat, 1 sum, 2 mul, 3 ave) of yf [B, S, H] and yb [B, S, H]
/// (yb in processing order, i.e. reversed in time within each sample's length L_b) into
/// y [B, S, H or 2H]; `lengths`: device [B], or null for all S; steps t >= L_b are 0.
template <class T>
void bidir_merge(int mode, idx_t B, idx_t S, idx_t H, const T* yf, const T* yb, T* y, const std::int32_t* lengths,
                 cudaStream_t s);

/// The inverse of bidir_merge for gradients: dyf, dyb (dyb in processing order) from dy; the
/// padded steps t >= L_b of both are 0.
template <class T>
void bidir_split(int mode, idx_t B, idx_t S, idx_t H, const T* dy, const T* yf, const T* yb, T* dyf, T* dyb,
                 const std::int32_t* lengths, cudaStream_t s);

/// y[i, :] = table[ids[i], :] for i < n, table [V, E] (ids: token ids held as T; an id outside
/// [0, V) is clamped into it, so that no id reads out of bounds).
template <class T>
void embedding_lookup(const T* table, idx_t V, idx_t E, const T* ids, idx_t n, T* y, cudaStream_t s);

/// dtable[ids[i], :] += dy[i, :] for i < n (atomic adds; ids clamped as in embedding_lookup).
template <class T>
void embedding_grad(const T* dy, const T* ids, idx_t n, T* dtable, idx_t V, idx_t E, cudaStream_t s);

/// out[i] = in[i] * scale where fastnn::hash::bits32(key, i) >= threshold, else 0.
template <class T>
void dropout(const T* in, T* out, idx_t n, std::uint64_t key, std::uint32_t threshold, T scale, cudaStream_t s);

/// acc[i] += a[i].
template <class T>
void add_inplace(const T* a, T* acc, idx_t n, cudaStream_t s);

// ---- spatial layers (backend/cuda/conv.hpp) -----------------------------------------------------
// Channels-last tensors; the formulas are those of backend/cpu/conv.hpp. `lengths` (device [n], or
// null for every sample at full length) are the per-sample steps of a 1-D input (h == 1).

/// Where the windows of a pooling layer lie (fastnn::ConvGeometry without dilation): input
/// [n, h, w, c], output [n, oh, ow, c], window kh x kw, strides sh, sw, padding pt rows on top
/// and pl columns on the left.
struct PoolGeometry {
  idx_t n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow;
};

/// y [n, oh, ow, c] = each window's maximum (max != 0) or mean over its real elements; with
/// lengths, sample b's input ends at lengths[b] and its outputs from ceil(lengths[b] / sw) on are 0.
template <class T>
void pool_forward(bool max, const PoolGeometry& g, const T* x, T* y, const std::int32_t* lengths, cudaStream_t s);

/// dx [n, h, w, c] (written) = dL/dx given dy: each input element gathers, window by window in
/// scan order, its share of the average or the gradient of the windows whose first maximum it is.
template <class T>
void pool_backward(bool max, const PoolGeometry& g, const T* x, const T* dy, T* dx, const std::int32_t* lengths,
                   cudaStream_t s);

/// y [n, c] = the max or mean of x [n, steps, c] over each sample's first lengths[b] steps.
template <class T>
void global_pool_forward(bool max, const T* x, T* y, idx_t n, idx_t steps, idx_t c, const std::int32_t* lengths,
                         cudaStream_t s);

/// dx [n, steps, c] (written; 0 on the padded steps) = dL/dx given dy [n, c]; the max's gradient
/// goes to the first maximum.
template <class T>
void global_pool_backward(bool max, const T* x, const T* dy, T* dx, idx_t n, idx_t steps, idx_t c,
                          const std::int32_t* lengths, cudaStream_t s);

/// y = x [n, steps, inner] with the steps t >= lengths[b] set to 0 (y may be x).
template <class T>
void mask_steps(const T* x, T* y, idx_t n, idx_t steps, idx_t inner, const std::int32_t* lengths, cudaStream_t s);

/// The most per-sample axes of permute.
constexpr int kMaxPermuteRank = 8;
/// A permutation of the per-sample axes: output axis j has extent out_dims[j] and walks the input
/// with stride src_stride[j] (elements).
struct PermuteDims {
  int rank;
  idx_t out_dims[kMaxPermuteRank];
  idx_t src_stride[kMaxPermuteRank];
};

/// y[b] = x[b] with its per-sample axes permuted as `d` says, for n samples of `per` elements.
template <class T>
void permute(const T* x, T* y, idx_t n, idx_t per, const PermuteDims& d, cudaStream_t s);

/// xp [n, hp, wp, c] = x [n, h, w, c] placed at row `top`, column `left`, zeros around it.
template <class T>
void pad_nhwc(const T* x, T* xp, idx_t n, idx_t h, idx_t w, idx_t c, idx_t top, idx_t left, idx_t hp, idx_t wp,
              cudaStream_t s);

/// x [n, h, w, c] = the window of xp [n, hp, wp, c] at row `top`, column `left` (pad_nhwc's adjoint).
template <class T>
void crop_nhwc(const T* xp, T* x, idx_t n, idx_t h, idx_t w, idx_t c, idx_t top, idx_t left, idx_t hp, idx_t wp,
               cudaStream_t s);

/// Per-channel mean and biased variance of x [m, c], summed in double in a fixed order.
template <class T>
void batch_norm_moments(const T* x, T* mean, T* var, idx_t m, idx_t c, cudaStream_t s);

/// y [m, c] = gamma (x - mean) / sqrt(var + eps) + beta per channel (gamma 1, beta 0 when null).
template <class T>
void batch_norm_apply(const T* x, const T* mean, const T* var, T eps, const T* gamma, const T* beta, T* y, idx_t m,
                      idx_t c, cudaStream_t s);

/// dgamma += sum dy xhat and dbeta += sum dy (when not null); dx (when not null) written:
/// a / m (m dy - sum dy - xhat sum(dy xhat)) with `batch_stats`, else a dy; a = gamma / sqrt(var + eps).
template <class T>
void batch_norm_backward(const T* x, const T* mean, const T* var, T eps, const T* gamma, const T* dy, T* dgamma,
                         T* dbeta, T* dx, idx_t m, idx_t c, bool batch_stats, cudaStream_t s);

/// Layer normalisation of the rows of x [m, c], fused: one warp per row computes the row's mean and
/// biased variance in one pass (Welford's update per lane in double, the lanes merged by Chan et al.'s
/// formula), then writes y = (x - mean) rstd gamma + beta (gamma 1, beta 0 when null), mean[i] and
/// rstd[i] = 1 / sqrt(var + eps).
template <class T>
void layer_norm_forward(const T* x, T eps, const T* gamma, const T* beta, T* y, T* mean, T* rstd, idx_t m, idx_t c,
                        cudaStream_t s);

/// Gradients of layer_norm_forward given dy: dx (when not null) written by one warp per row,
/// rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma and sums in double; dgamma += sum dy xhat
/// and dbeta += sum dy (when not null) over the rows, per column in a fixed order (deterministic).
template <class T>
void layer_norm_backward(const T* x, const T* mean, const T* rstd, const T* gamma, const T* dy, T* dgamma, T* dbeta,
                         T* dx, idx_t m, idx_t c, cudaStream_t s);

// ---- multi-head attention (backend/cuda/attention.hpp) ------------------------------------------

/// The rows of a batch of attention score matrices [batch, heads, tq, tk] (row r = (b heads + h) tq + i) and their
/// masking: row r attends to the keys j < n_r, n_r = key_lengths[b] (tk when null), min(n_r, i + 1) when `causal`;
/// the query steps i >= query_lengths[b] (none when null) are padded rows, of n_r = 0. Dropout keeps element
/// r tk + j iff fastnn::hash::bits32(key, r tk + j) >= threshold (all when threshold is 0). Lengths are device [batch].
struct AttentionRows {
  idx_t batch, heads, tq, tk;
  const std::int32_t* query_lengths;
  const std::int32_t* key_lengths;
  bool causal;
  std::uint64_t key;
  std::uint32_t threshold;
};

/// Fused masked softmax of the scores s, one warp per row: p = exp(s - max) / sum over the row's keys j < n_r
/// (max and sum over those keys only), 0 for j >= n_r and on padded rows; pd (when not null) = p * scale where
/// dropout keeps the element, else 0. p may be s.
template <class T>
void attention_softmax_forward(const AttentionRows& a, const T* s, T* p, T* pd, T scale, cudaStream_t st);

/// Its backward pass, in place on g (dL/dpd on entry, dL/ds on return), one warp per row: dp = g * scale where
/// dropout keeps the element, else 0 (dp = g without dropout); g = p (dp - sum_{j < n_r} p dp) for j < n_r, and 0
/// for j >= n_r and on padded rows.
template <class T>
void attention_softmax_backward(const AttentionRows& a, const T* p, T* g, T scale, cudaStream_t st);

}  // namespace kernels
}  // namespace cuda
}  // namespace fastnn
