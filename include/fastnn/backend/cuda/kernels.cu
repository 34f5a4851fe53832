/// \file kernels.cu
/// fastnn's own CUDA kernels (compiled by nvcc into the fastnn::cuda target's static library).
/// The launchers are declared in kernels.cuh; the math mirrors backend/cpu/ops.hpp operation for
/// operation so that CPU and GPU agree to rounding.

#include "fastnn/backend/cuda/kernels.cuh"

#include <cmath>
#include <cstdint>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/hash.hpp"

namespace fastnn {
namespace cuda {
namespace kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kNoNonFinite = 0x7fffffff;

inline unsigned blocks_for(idx_t n) {
  idx_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > (idx_t{1} << 20)) b = idx_t{1} << 20;  // grid-stride loops cover the rest
  return static_cast<unsigned>(b);
}

#define FASTNN_GRID_STRIDE(i, n)                                                      \
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<idx_t>(blockDim.x) * gridDim.x)

template <class T>
__device__ inline T dev_exp(T x) {
  return exp(x);
}
template <>
__device__ inline float dev_exp<float>(float x) {
  return expf(x);
}
template <class T>
__device__ inline T dev_log(T x) {
  return log(x);
}
template <>
__device__ inline float dev_log<float>(float x) {
  return logf(x);
}
template <class T>
__device__ inline T dev_log1p(T x) {
  return log1p(x);
}
template <>
__device__ inline float dev_log1p<float>(float x) {
  return log1pf(x);
}
template <class T>
__device__ inline T dev_tanh(T x) {
  return tanh(x);
}
template <>
__device__ inline float dev_tanh<float>(float x) {
  return tanhf(x);
}
template <class T>
__device__ inline T dev_sqrt(T x) {
  return sqrt(x);
}
template <>
__device__ inline float dev_sqrt<float>(float x) {
  return sqrtf(x);
}

template <class T>
__global__ void fill_kernel(T* p, idx_t n, T v) {
  FASTNN_GRID_STRIDE(i, n) p[i] = v;
}

template <class T>
__global__ void add_row_vector_kernel(T* y, const T* b, idx_t rows, idx_t cols) {
  FASTNN_GRID_STRIDE(i, rows * cols) y[i] += b[i % cols];
}

template <class T>
__global__ void column_sums_add_kernel(const T* dy, T* db, idx_t rows, idx_t cols) {
  FASTNN_GRID_STRIDE(j, cols) {
    T acc = T(0);
    for (idx_t i = 0; i < rows; ++i) acc += dy[i * cols + j];
    db[j] += acc;
  }
}

template <class T>
__global__ void activate_kernel(int act, T* y, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) {
    T v = y[i];
    switch (static_cast<Activation>(act)) {
      case Activation::Relu: v = v > T(0) ? v : T(0); break;
      case Activation::Tanh: v = dev_tanh(v); break;
      case Activation::Sigmoid: v = T(1) / (T(1) + dev_exp(-v)); break;
      case Activation::HardSigmoid: {
        v = T(0.2) * v + T(0.5);
        v = v > T(0) ? v : T(0);
        v = v < T(1) ? v : T(1);
        break;
      }
      case Activation::Gelu: v = T(0.5) * v * erfc(v * T(-0.70710678118654752440)); break;
      case Activation::Swish: v = v / (T(1) + dev_exp(-v)); break;
      case Activation::Softplus: v = (v > T(0) ? v : T(0)) + log1p(dev_exp(v > T(0) ? -v : v)); break;
      default: break;
    }
    y[i] = v;
  }
}

template <class T>
__global__ void softmax_rows_kernel(T* y, idx_t rows, idx_t cols) {
  FASTNN_GRID_STRIDE(r, rows) {
    T* row = y + r * cols;
    T m = row[0];
    for (idx_t j = 1; j < cols; ++j) m = row[j] > m ? row[j] : m;
    T sum = T(0);
    for (idx_t j = 0; j < cols; ++j) {
      row[j] = dev_exp(row[j] - m);
      sum += row[j];
    }
    for (idx_t j = 0; j < cols; ++j) row[j] /= sum;
  }
}

template <class T>
__global__ void activation_backward_kernel(int act, const T* y, T* d, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) {
    const T v = y[i];
    switch (static_cast<Activation>(act)) {
      case Activation::Relu: d[i] = v > T(0) ? d[i] : T(0); break;
      case Activation::Tanh: d[i] *= T(1) - v * v; break;
      case Activation::Sigmoid: d[i] *= v * (T(1) - v); break;
      case Activation::HardSigmoid: d[i] = (v > T(0) && v < T(1)) ? d[i] * T(0.2) : T(0); break;
      case Activation::Softplus: d[i] *= T(1) - dev_exp(-v); break;
      default: break;
    }
  }
}

template <class T>
__global__ void activation_backward_input_kernel(int act, const T* x, T* d, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) {
    const T v = x[i];
    T g = T(1);
    switch (static_cast<Activation>(act)) {
      case Activation::Relu: g = v > T(0) ? T(1) : T(0); break;
      case Activation::Tanh: {
        const T t = dev_tanh(v);
        g = T(1) - t * t;
        break;
      }
      case Activation::Sigmoid: {
        const T s = T(1) / (T(1) + dev_exp(-v));
        g = s * (T(1) - s);
        break;
      }
      case Activation::HardSigmoid: g = (v > T(-2.5) && v < T(2.5)) ? T(0.2) : T(0); break;
      case Activation::Gelu:
        g = T(0.5) * erfc(v * T(-0.70710678118654752440)) +
            v * T(0.39894228040143267794) * dev_exp(T(-0.5) * v * v);
        break;
      case Activation::Swish: {
        const T s = T(1) / (T(1) + dev_exp(-v));
        g = s * (T(1) + v * (T(1) - s));
        break;
      }
      case Activation::Softplus: g = T(1) / (T(1) + dev_exp(-v)); break;
      default: break;
    }
    d[i] *= g;
  }
}

template <class T>
__global__ void softmax_backward_rows_kernel(const T* y, T* d, idx_t rows, idx_t cols) {
  FASTNN_GRID_STRIDE(r, rows) {
    const T* yr = y + r * cols;
    T* dr = d + r * cols;
    T dot = T(0);
    for (idx_t j = 0; j < cols; ++j) dot += yr[j] * dr[j];
    for (idx_t j = 0; j < cols; ++j) dr[j] = yr[j] * (dr[j] - dot);
  }
}

template <class W>
__global__ void gather_rows_kernel(const W* src, const std::int32_t* idx, idx_t begin, idx_t count, idx_t row_words,
                                   W* dst, const idx_t* step) {
  if (step) begin = *step * count;  // a CUDA graph's replay: the batch offset lives on the device
  FASTNN_GRID_STRIDE(e, count * row_words) {
    const idx_t j = e / row_words, w = e - j * row_words;
    dst[e] = src[static_cast<idx_t>(idx[begin + j]) * row_words + w];
  }
}

// ---- losses and metrics: one block, fixed reduction order (deterministic) ----------------------

/// The sum of `v` over the block (every thread gets it). blockDim.x must be kThreads.
__device__ inline double block_sum(double v) {
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  const double total = sh[0];
  __syncthreads();
  return total;
}

/// Index of the first maximum of r[0..k) (a NaN never replaces the running maximum), as Eigen's
/// maxCoeff on the CPU.
template <class T>
__device__ inline idx_t first_argmax(const T* r, idx_t k) {
  idx_t arg = 0;
  T m = r[0];
  for (idx_t j = 1; j < k; ++j)
    if (r[j] > m) {
      m = r[j];
      arg = j;
    }
  return arg;
}

/// log(sum_j exp(r_j)) = m + log(sum_j exp(r_j - m)), m = max_j r_j.
template <class T>
__device__ inline T row_lse(const T* r, idx_t k) {
  T m = r[0];
  for (idx_t j = 1; j < k; ++j) m = r[j] > m ? r[j] : m;
  T sum = T(0);
  for (idx_t j = 0; j < k; ++j) sum += dev_exp(r[j] - m);
  return m + dev_log(sum);
}

template <class T>
__global__ void softmax_xent_kernel(const T* z, const std::int32_t* labels, T* dz, idx_t rows, idx_t k, T grad_scale,
                                    double* stat) {
  double loss = 0;
  for (idx_t i = threadIdx.x; i < rows; i += blockDim.x) {
    const T* r = z + i * k;
    const T lse = row_lse(r, k);
    const idx_t y = labels[i];
    const bool valid = y >= 0 && y < k;  // a label out of range gives NaN, never a stray read
    loss += valid ? static_cast<double>(lse - r[y]) : static_cast<double>(NAN);
    if (dz) {
      T* d = dz + i * k;
      for (idx_t j = 0; j < k; ++j) d[j] = valid ? grad_scale * dev_exp(r[j] - lse) : T(NAN);
      if (valid) d[y] -= grad_scale;
    }
  }
  const double total = block_sum(loss);
  if (threadIdx.x == 0) *stat += total;
}

template <class T>
__global__ void softmax_xent_dense_kernel(const T* z, const T* t, T* dz, idx_t rows, idx_t k, T grad_scale,
                                          double* stat) {
  double loss = 0;
  for (idx_t i = threadIdx.x; i < rows; i += blockDim.x) {
    const T* r = z + i * k;
    const T* ti = t + i * k;
    const T lse = row_lse(r, k);
    T tsum = T(0), dot = T(0);
    for (idx_t j = 0; j < k; ++j) {
      tsum += ti[j];
      dot += ti[j] * r[j];
    }
    loss += static_cast<double>(lse * tsum - dot);
    if (dz) {
      T* d = dz + i * k;
      for (idx_t j = 0; j < k; ++j) d[j] = grad_scale * (dev_exp(r[j] - lse) * tsum - ti[j]);
    }
  }
  const double total = block_sum(loss);
  if (threadIdx.x == 0) *stat += total;
}

template <class T>
__global__ void sigmoid_xent_kernel(const T* z, const T* t, T* dz, idx_t n, idx_t k, T grad_scale, double* stat) {
  double loss = 0;
  for (idx_t i = threadIdx.x; i < n; i += blockDim.x) {
    const T zi = z[i], ti = t[i];
    const T a = zi < T(0) ? -zi : zi;
    loss += static_cast<double>((zi > T(0) ? zi : T(0)) - zi * ti + dev_log1p(dev_exp(-a)));
    if (dz) dz[i] = grad_scale * (T(1) / (T(1) + dev_exp(-zi)) - ti) / static_cast<T>(k);
  }
  const double total = block_sum(loss);
  if (threadIdx.x == 0) *stat += total / static_cast<double>(k);
}

template <class T>
__global__ void pointwise_loss_kernel(int kind, const T* y, const T* t, T* dy, idx_t n, idx_t k, T grad_scale,
                                      double* stat) {
  const T g = grad_scale / static_cast<T>(k);
  const T eps = static_cast<T>(kProbabilityEpsilon);
  double loss = 0;
  for (idx_t i = threadIdx.x; i < n; i += blockDim.x) {
    const T p = y[i], ti = t[i];
    const T e = p - ti;
    T f = T(0), d = T(0);
    switch (static_cast<PointwiseLoss>(kind)) {
      case PointwiseLoss::MeanSquaredError:
        f = e * e;
        d = T(2) * e;
        break;
      case PointwiseLoss::MeanAbsoluteError:
        f = e < T(0) ? -e : e;
        d = static_cast<T>((e > T(0)) - (e < T(0)));
        break;
      case PointwiseLoss::BinaryCrossentropy: {
        // q = min(max(p, eps), 1 - eps), written as std::max and std::min are (NaN stays NaN)
        T q = p < eps ? eps : p;
        q = (T(1) - eps) < q ? T(1) - eps : q;
        f = -(ti * dev_log(q) + (T(1) - ti) * dev_log(T(1) - q));
        d = (p > eps && p < T(1) - eps) ? (q - ti) / (q * (T(1) - q)) : T(0);
        break;
      }
    }
    loss += static_cast<double>(f);
    if (dy) dy[i] = g * d;
  }
  const double total = block_sum(loss);
  if (threadIdx.x == 0) *stat += total / static_cast<double>(k);
}

template <class T>
__global__ void metric_labels_kernel(const T* y, const std::int32_t* labels, idx_t rows, idx_t k, double* stat) {
  double hits = 0;
  for (idx_t i = threadIdx.x; i < rows; i += blockDim.x)
    hits += first_argmax(y + i * k, k) == static_cast<idx_t>(labels[i]) ? 1.0 : 0.0;
  const double total = block_sum(hits);
  if (threadIdx.x == 0) *stat += total;
}

template <class T>
__global__ void metric_targets_kernel(int kind, const T* y, const T* t, idx_t rows, idx_t k, T threshold,
                                      double* stat) {
  double sum = 0;
  for (idx_t i = threadIdx.x; i < rows; i += blockDim.x) {
    const T* r = y + i * k;
    const T* ti = t + i * k;
    switch (static_cast<MetricKind>(kind)) {
      case MetricKind::CategoricalAccuracy:
        sum += first_argmax(r, k) == first_argmax(ti, k) ? 1.0 : 0.0;
        break;
      case MetricKind::BinaryAccuracy: {
        double hits = 0;
        for (idx_t j = 0; j < k; ++j) hits += ((r[j] > threshold ? T(1) : T(0)) == ti[j]) ? 1.0 : 0.0;
        sum += hits / static_cast<double>(k);
        break;
      }
      case MetricKind::MeanAbsoluteError: {
        T a = T(0);
        for (idx_t j = 0; j < k; ++j) {
          const T e = r[j] - ti[j];
          a += e < T(0) ? -e : e;
        }
        sum += static_cast<double>(a) / static_cast<double>(k);
        break;
      }
    }
  }
  const double total = block_sum(sum);
  if (threadIdx.x == 0) *stat += total;
}

__device__ inline bool skip_update(const int* guard) { return guard && *guard != kNoNonFinite; }

template <class T>
__global__ void sgd_kernel(T* p, const T* g, T* v, idx_t n, const T* rate, T momentum, bool nesterov,
                           const int* guard) {
  if (skip_update(guard)) return;
  const T lr = *rate;
  FASTNN_GRID_STRIDE(i, n) {
    const T gi = g[i];
    if (momentum == T(0)) {
      p[i] -= lr * gi;
      continue;
    }
    const T vi = momentum * v[i] - lr * gi;
    v[i] = vi;
    if (nesterov) p[i] += momentum * vi - lr * gi;
    else p[i] += vi;
  }
}

template <class T>
__global__ void adam_kernel(T* p, const T* g, T* m, T* v, idx_t n, const T* rate, T b1, T b2, T eps,
                            const int* guard) {
  if (skip_update(guard)) return;
  const T lr_t = *rate;
  FASTNN_GRID_STRIDE(i, n) {
    const T gi = g[i];
    const T mi = b1 * m[i] + (T(1) - b1) * gi;
    const T vi = b2 * v[i] + (T(1) - b2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr_t * mi / (dev_sqrt(vi) + eps);
  }
}

template <class T>
__global__ void rmsprop_kernel(T* p, const T* g, T* a, idx_t n, const T* rate, T rho, T eps, const int* guard) {
  if (skip_update(guard)) return;
  const T lr = *rate;
  FASTNN_GRID_STRIDE(i, n) {
    const T gi = g[i];
    const T ai = rho * a[i] + (T(1) - rho) * (gi * gi);
    a[i] = ai;
    p[i] -= lr * gi / (dev_sqrt(ai) + eps);
  }
}

template <class T>
__global__ void flag_nonfinite_kernel(const T* p, idx_t n, int* flag) {
  FASTNN_GRID_STRIDE(i, n) {
    if (!isfinite(p[i])) *flag = 1;
  }
}

template <class T>
__global__ void check_step_finite_kernel(const double* loss, const T* g, idx_t n, int batch, int* guard,
                                         const idx_t* step) {
  if (step) batch = static_cast<int>(*step + 1);
  if (blockIdx.x == 0 && threadIdx.x == 0 && !isfinite(*loss)) atomicMin(guard, 2 * batch);
  FASTNN_GRID_STRIDE(i, n) {
    if (!isfinite(g[i])) atomicMin(guard, 2 * batch + 1);
  }
}

__global__ void increment_kernel(idx_t* p) { *p += 1; }

template <class T>
__global__ void swap01_kernel(const T* src, T* dst, idx_t d0, idx_t d1, idx_t inner, bool rev0, bool rev1) {
  FASTNN_GRID_STRIDE(e, d0 * d1 * inner) {
    const idx_t k = e % inner;
    const idx_t rest = e / inner;
    const idx_t i = rest % d0;  // dst is [d1, d0, inner]
    const idx_t j = rest / d0;
    const idx_t si = rev0 ? d0 - 1 - i : i;
    const idx_t sj = rev1 ? d1 - 1 - j : j;
    dst[e] = src[(si * d1 + sj) * inner + k];
  }
}

/// L_b of sample b, clamped into [0, S] (null lengths: every sample has S steps).
__device__ inline idx_t length_of(const std::int32_t* lengths, idx_t b, idx_t S) {
  if (!lengths) return S;
  const idx_t l = lengths[b];
  return l < 0 ? 0 : l > S ? S : l;
}

template <class T>
__global__ void to_time_major_kernel(const T* x, T* xt, idx_t B, idx_t S, idx_t inner, const std::int32_t* lengths,
                                     bool reverse) {
  FASTNN_GRID_STRIDE(e, S * B * inner) {
    const idx_t k = e % inner;
    const idx_t rest = e / inner;
    const idx_t b = rest % B, t = rest / B;  // xt is [S, B, inner]
    const idx_t len = length_of(lengths, b, S);
    if (t >= len) {
      xt[e] = T(0);
      continue;
    }
    const idx_t st = reverse ? len - 1 - t : t;
    xt[e] = x[(b * S + st) * inner + k];
  }
}

template <class T>
__global__ void from_time_major_kernel(const T* xt, T* x, idx_t B, idx_t S, idx_t inner, const std::int32_t* lengths,
                                       bool reverse) {
  FASTNN_GRID_STRIDE(e, B * S * inner) {
    const idx_t k = e % inner;
    const idx_t rest = e / inner;
    const idx_t t = rest % S, b = rest / S;  // x is [B, S, inner]
    const idx_t len = length_of(lengths, b, S);
    if (t >= len) {
      x[e] = T(0);
      continue;
    }
    const idx_t st = reverse ? len - 1 - t : t;
    x[e] = xt[(st * B + b) * inner + k];
  }
}

template <class T>
__device__ inline T* rnn_param_at(const RnnParamPtrs<T>& p, std::int32_t m) {
  const idx_t per_dir = p.wn + p.un + p.bn;
  const idx_t d = m / per_dir;
  idx_t r = m - d * per_dir;
  if (r < p.wn) return p.w[d] + r;
  r -= p.wn;
  if (r < p.un) return p.u[d] + r;
  return p.b[d] + (r - p.un);
}

template <class T>
__global__ void pack_rnn_weights_kernel(RnnParamPtrs<T> src, const std::int32_t* map, T* ws, idx_t n) {
  FASTNN_GRID_STRIDE(j, n) {
    const std::int32_t m = map[j];
    ws[j] = m < 0 ? T(0) : *rnn_param_at(src, m);
  }
}

template <class T>
__global__ void unpack_add_rnn_grads_kernel(const T* dws, const std::int32_t* map, RnnParamPtrs<T> dst, idx_t n) {
  FASTNN_GRID_STRIDE(j, n) {
    const std::int32_t m = map[j];
    if (m >= 0) *rnn_param_at(dst, m) += dws[j];
  }
}

template <class T>
__device__ inline T dev_sigmoid(T x) {
  return T(1) / (T(1) + dev_exp(-x));
}

template <class T>
__global__ void lstm_step_kernel(const T* z, const T* b, T* h, T* c, idx_t B, idx_t H) {
  FASTNN_GRID_STRIDE(e, B * H) {
    const idx_t j = e % H, r = e / H;
    const T* zr = z + r * 4 * H;
    const T i = dev_sigmoid(zr[j] + b[j]);
    const T f = dev_sigmoid(zr[H + j] + b[H + j]);
    const T g = dev_tanh(zr[2 * H + j] + b[2 * H + j]);
    const T o = dev_sigmoid(zr[3 * H + j] + b[3 * H + j]);
    const T cn = f * c[e] + i * g;
    c[e] = cn;
    h[e] = o * dev_tanh(cn);
  }
}

template <class T>
__global__ void gru_step_kernel(const T* zx, const T* rh, const T* b, T* h, idx_t B, idx_t H) {
  const idx_t G = 3 * H;
  FASTNN_GRID_STRIDE(e, B * H) {
    const idx_t j = e % H, r = e / H;
    const T* xr = zx + r * G;
    const T* hr = rh + r * G;
    const T z = dev_sigmoid(xr[j] + b[j] + hr[j] + b[G + j]);
    const T rr = dev_sigmoid(xr[H + j] + b[H + j] + hr[H + j] + b[G + H + j]);
    const T n = dev_tanh(xr[2 * H + j] + b[2 * H + j] + rr * (hr[2 * H + j] + b[G + 2 * H + j]));
    h[e] = z * h[e] + (T(1) - z) * n;
  }
}

template <class T>
__global__ void simple_rnn_step_kernel(const T* z, const T* b, T* h, idx_t B, idx_t H, bool relu) {
  FASTNN_GRID_STRIDE(e, B * H) {
    const T a = z[e] + b[e % H];
    h[e] = relu ? (a > T(0) ? a : T(0)) : dev_tanh(a);
  }
}

template <class T>
__global__ void bidir_merge_kernel(int mode, idx_t B, idx_t S, idx_t H, const T* yf, const T* yb, T* y,
                                   const std::int32_t* lengths) {
  const idx_t width = mode == 0 ? 2 * H : H;
  FASTNN_GRID_STRIDE(e, B * S * width) {
    const idx_t j = e % width;
    const idx_t bt = e / width;
    const idx_t t = bt % S, b = bt / S;
    const idx_t len = length_of(lengths, b, S);
    if (t >= len) {
      y[e] = T(0);
      continue;
    }
    const idx_t tr = len - 1 - t;
    if (mode == 0) {
      y[e] = j < H ? yf[(b * S + t) * H + j] : yb[(b * S + tr) * H + (j - H)];
      continue;
    }
    const T f = yf[(b * S + t) * H + j];
    const T r = yb[(b * S + tr) * H + j];
    switch (mode) {
      case 1: y[e] = f + r; break;
      case 2: y[e] = f * r; break;
      default: y[e] = T(0.5) * (f + r); break;
    }
  }
}

template <class T>
__global__ void bidir_split_kernel(int mode, idx_t B, idx_t S, idx_t H, const T* dy, const T* yf, const T* yb, T* dyf,
                                   T* dyb, const std::int32_t* lengths) {
  FASTNN_GRID_STRIDE(e, B * S * H) {
    const idx_t j = e % H;
    const idx_t bt = e / H;
    const idx_t t = bt % S, b = bt / S;
    const idx_t len = length_of(lengths, b, S);
    const idx_t fi = (b * S + t) * H + j;
    if (t >= len) {  // padding: no gradient into either direction (t -> len-1-t maps [0, len) onto itself)
      dyf[fi] = T(0);
      dyb[fi] = T(0);
      continue;
    }
    const idx_t tr = len - 1 - t;
    const idx_t ri = (b * S + tr) * H + j;
    if (mode == 0) {
      const T* g = dy + (b * S + t) * 2 * H;
      dyf[fi] = g[j];
      dyb[ri] = g[H + j];
      continue;
    }
    const T g = dy[(b * S + t) * H + j];
    switch (mode) {
      case 1: dyf[fi] = g; dyb[ri] = g; break;
      case 2: dyf[fi] = g * yb[ri]; dyb[ri] = g * yf[fi]; break;
      default: dyf[fi] = T(0.5) * g; dyb[ri] = T(0.5) * g; break;
    }
  }
}

/// Row of table for token id v (held as T), clamped into [0, V): a NaN or negative id gives 0.
template <class T>
__device__ inline idx_t embedding_row(T v, idx_t V) {
  if (!(v >= T(0))) return 0;
  if (v >= static_cast<T>(V - 1)) return V - 1;
  return static_cast<idx_t>(v);
}

template <class T>
__global__ void embedding_lookup_kernel(const T* table, idx_t V, idx_t E, const T* ids, idx_t n, T* y) {
  FASTNN_GRID_STRIDE(e, n * E) {
    const idx_t i = e / E, k = e - i * E;
    y[e] = table[embedding_row(ids[i], V) * E + k];
  }
}

template <class T>
__global__ void embedding_grad_kernel(const T* dy, const T* ids, idx_t n, T* dtable, idx_t V, idx_t E) {
  FASTNN_GRID_STRIDE(e, n * E) {
    const idx_t i = e / E, k = e - i * E;
    atomicAdd(dtable + embedding_row(ids[i], V) * E + k, dy[e]);
  }
}

template <class T>
__global__ void add_inplace_kernel(const T* a, T* acc, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) acc[i] += a[i];
}

template <class T>
__global__ void dropout_kernel(const T* in, T* out, idx_t n, std::uint64_t key, std::uint32_t threshold, T scale) {
  FASTNN_GRID_STRIDE(i, n) {
    out[i] = fastnn::hash::bits32(key, static_cast<std::uint64_t>(i)) >= threshold ? in[i] * scale : T(0);
  }
}

// ---- gradient transforms of the optimizers -------------------------------------------------------

/// *acc += sum of g^2 over one block in a fixed order (deterministic).
template <class T>
__global__ void sum_squares_kernel(const T* g, idx_t n, double* acc) {
  double v = 0;
  for (idx_t i = threadIdx.x; i < n; i += blockDim.x) v += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  const double total = block_sum(v);
  if (threadIdx.x == 0) *acc += total;
}

/// g *= clip / max(sqrt(*sq), clip); a non-finite norm records the batch in the guard (as a non-finite
/// gradient) and leaves g alone, and the update kernels then skip the step.
template <class T>
__global__ void clip_by_norm_kernel(T* g, idx_t n, const double* sq, T clip, int batch, int* guard,
                                    const idx_t* step) {
  const double norm = sqrt(*sq);
  if (!isfinite(norm)) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      if (step) batch = static_cast<int>(*step + 1);
      atomicMin(guard, 2 * batch + 1);
    }
    return;
  }
  if (!(norm > static_cast<double>(clip))) return;
  const T f = static_cast<T>(static_cast<double>(clip) / norm);
  FASTNN_GRID_STRIDE(i, n) g[i] *= f;
}

template <class T>
__global__ void clip_by_value_kernel(T* g, idx_t n, T clip) {
  FASTNN_GRID_STRIDE(i, n) g[i] = g[i] > clip ? clip : (g[i] < -clip ? -clip : g[i]);
}

template <class T>
__global__ void scale_kernel(T* p, idx_t n, T f) {
  FASTNN_GRID_STRIDE(i, n) p[i] *= f;
}

template <class T>
__global__ void scale_by_kernel(T* p, idx_t n, const T* f) {
  const T fv = *f;
  FASTNN_GRID_STRIDE(i, n) p[i] *= fv;
}

template <class T>
__global__ void mul_kernel(const T* a, const T* b, T* y, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) y[i] = a[i] * b[i];
}

template <class T>
__global__ void extremum_kernel(bool largest, const T* a, const T* b, T* y, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) {
    const T u = a[i], v = b[i];
    y[i] = largest ? (u > v ? u : v) : (u < v ? u : v);
  }
}

template <class T>
__global__ void extremum_grad_kernel(const T* x, const T* y, const T* dy, T* taken, T* dx, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) {
    const bool take = taken[i] == T(0) && x[i] == y[i];
    dx[i] = take ? dy[i] : T(0);
    if (take) taken[i] = T(1);
  }
}

template <class T>
__global__ void copy_block_kernel(idx_t rows, idx_t width, const T* src, idx_t src_stride, idx_t src_off, T* dst,
                                  idx_t dst_stride, idx_t dst_off, bool accumulate) {
  FASTNN_GRID_STRIDE(i, rows * width) {
    const idx_t r = i / width, k = i % width;
    const T v = src[r * src_stride + src_off + k];
    T& d = dst[r * dst_stride + dst_off + k];
    d = accumulate ? d + v : v;
  }
}

template <class T>
__global__ void axpy_kernel(T a, const T* x, T* y, idx_t n) {
  FASTNN_GRID_STRIDE(i, n) y[i] += a * x[i];
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

template <class T>
void fill(T* p, idx_t n, T v, cudaStream_t s) {
  if (n <= 0) return;
  fill_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, n, v);
}

template <class T>
void add_row_vector(T* y, const T* b, idx_t rows, idx_t cols, cudaStream_t s) {
  if (rows * cols <= 0) return;
  add_row_vector_kernel<T><<<blocks_for(rows * cols), kThreads, 0, s>>>(y, b, rows, cols);
}

template <class T>
void column_sums_add(const T* dy, T* db, idx_t rows, idx_t cols, cudaStream_t s) {
  if (cols <= 0) return;
  column_sums_add_kernel<T><<<blocks_for(cols), kThreads, 0, s>>>(dy, db, rows, cols);
}

template <class T>
void activate(int act, T* y, idx_t rows, idx_t cols, cudaStream_t s) {
  if (rows * cols <= 0 || act == static_cast<int>(Activation::Linear)) return;
  if (act == static_cast<int>(Activation::Softmax)) {
    softmax_rows_kernel<T><<<blocks_for(rows), kThreads, 0, s>>>(y, rows, cols);
    return;
  }
  activate_kernel<T><<<blocks_for(rows * cols), kThreads, 0, s>>>(act, y, rows * cols);
}

template <class T>
void activation_backward(int act, const T* y, T* dy, idx_t rows, idx_t cols, cudaStream_t s) {
  if (rows * cols <= 0 || act == static_cast<int>(Activation::Linear)) return;
  if (act == static_cast<int>(Activation::Softmax)) {
    softmax_backward_rows_kernel<T><<<blocks_for(rows), kThreads, 0, s>>>(y, dy, rows, cols);
    return;
  }
  activation_backward_kernel<T><<<blocks_for(rows * cols), kThreads, 0, s>>>(act, y, dy, rows * cols);
}

template <class T>
void activation_backward_input(int act, const T* x, T* dx, idx_t n, cudaStream_t s) {
  if (n <= 0 || act == static_cast<int>(Activation::Linear)) return;
  activation_backward_input_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(act, x, dx, n);
}

void gather_rows(const void* src, const std::int32_t* idx, idx_t begin, idx_t count, idx_t row_bytes, void* dst,
                 const idx_t* step, cudaStream_t s) {
  if (count <= 0 || row_bytes <= 0) return;
  // the widest word that divides the row and both addresses
  const auto aligned = [&](idx_t w) {
    return row_bytes % w == 0 && reinterpret_cast<std::uintptr_t>(src) % static_cast<std::uintptr_t>(w) == 0 &&
           reinterpret_cast<std::uintptr_t>(dst) % static_cast<std::uintptr_t>(w) == 0;
  };
  if (aligned(8)) {
    const idx_t words = row_bytes / 8;
    gather_rows_kernel<unsigned long long><<<blocks_for(count * words), kThreads, 0, s>>>(
        static_cast<const unsigned long long*>(src), idx, begin, count, words, static_cast<unsigned long long*>(dst),
        step);
  } else if (aligned(4)) {
    const idx_t words = row_bytes / 4;
    gather_rows_kernel<unsigned int><<<blocks_for(count * words), kThreads, 0, s>>>(
        static_cast<const unsigned int*>(src), idx, begin, count, words, static_cast<unsigned int*>(dst), step);
  } else {
    gather_rows_kernel<unsigned char><<<blocks_for(count * row_bytes), kThreads, 0, s>>>(
        static_cast<const unsigned char*>(src), idx, begin, count, row_bytes, static_cast<unsigned char*>(dst), step);
  }
}

template <class T>
void softmax_xent(const T* z, const std::int32_t* labels, T* dz, idx_t rows, idx_t k, T grad_scale, double* stat,
                  cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  softmax_xent_kernel<T><<<1, kThreads, 0, s>>>(z, labels, dz, rows, k, grad_scale, stat);
}

template <class T>
void softmax_xent_dense(const T* z, const T* t, T* dz, idx_t rows, idx_t k, T grad_scale, double* stat,
                        cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  softmax_xent_dense_kernel<T><<<1, kThreads, 0, s>>>(z, t, dz, rows, k, grad_scale, stat);
}

template <class T>
void sigmoid_xent(const T* z, const T* t, T* dz, idx_t n, idx_t k, T grad_scale, double* stat, cudaStream_t s) {
  if (n <= 0 || k <= 0) return;
  sigmoid_xent_kernel<T><<<1, kThreads, 0, s>>>(z, t, dz, n, k, grad_scale, stat);
}

template <class T>
void pointwise_loss(int kind, const T* y, const T* t, T* dy, idx_t n, idx_t k, T grad_scale, double* stat,
                    cudaStream_t s) {
  if (n <= 0 || k <= 0) return;
  pointwise_loss_kernel<T><<<1, kThreads, 0, s>>>(kind, y, t, dy, n, k, grad_scale, stat);
}

template <class T>
void metric_labels(const T* y, const std::int32_t* labels, idx_t rows, idx_t k, double* stat, cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  metric_labels_kernel<T><<<1, kThreads, 0, s>>>(y, labels, rows, k, stat);
}

template <class T>
void metric_targets(int kind, const T* y, const T* t, idx_t rows, idx_t k, T threshold, double* stat,
                    cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  metric_targets_kernel<T><<<1, kThreads, 0, s>>>(kind, y, t, rows, k, threshold, stat);
}

template <class T>
void sgd_update(T* p, const T* g, T* v, idx_t n, const T* rate, T momentum, bool nesterov, const int* guard,
                cudaStream_t s) {
  if (n <= 0) return;
  sgd_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, g, v, n, rate, momentum, nesterov, guard);
}

template <class T>
void adam_update(T* p, const T* g, T* m, T* v, idx_t n, const T* rate, T b1, T b2, T eps, const int* guard,
                 cudaStream_t s) {
  if (n <= 0) return;
  adam_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, g, m, v, n, rate, b1, b2, eps, guard);
}

template <class T>
void rmsprop_update(T* p, const T* g, T* a, idx_t n, const T* rate, T rho, T eps, const int* guard,
                    cudaStream_t s) {
  if (n <= 0) return;
  rmsprop_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, g, a, n, rate, rho, eps, guard);
}

template <class T>
void flag_nonfinite(const T* p, idx_t n, int* flag, cudaStream_t s) {
  if (n <= 0) return;
  flag_nonfinite_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, n, flag);
}

template <class T>
void check_step_finite(const double* loss, const T* grads, idx_t n, int batch, int* guard, const idx_t* step,
                       cudaStream_t s) {
  check_step_finite_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(loss, grads, n, batch, guard, step);
}

void increment(idx_t* p, cudaStream_t s) { increment_kernel<<<1, 1, 0, s>>>(p); }

template <class T>
void swap01(const T* src, T* dst, idx_t d0, idx_t d1, idx_t inner, bool rev0, bool rev1, cudaStream_t s) {
  const idx_t n = d0 * d1 * inner;
  if (n <= 0) return;
  swap01_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(src, dst, d0, d1, inner, rev0, rev1);
}

template <class T>
void to_time_major(const T* x, T* xt, idx_t B, idx_t S, idx_t inner, const std::int32_t* lengths, bool reverse,
                   cudaStream_t s) {
  const idx_t n = B * S * inner;
  if (n <= 0) return;
  to_time_major_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(x, xt, B, S, inner, lengths, reverse);
}

template <class T>
void from_time_major(const T* xt, T* x, idx_t B, idx_t S, idx_t inner, const std::int32_t* lengths, bool reverse,
                     cudaStream_t s) {
  const idx_t n = B * S * inner;
  if (n <= 0) return;
  from_time_major_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(xt, x, B, S, inner, lengths, reverse);
}

template <class T>
void pack_rnn_weights(RnnParamPtrs<T> src, const std::int32_t* map, T* ws, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  pack_rnn_weights_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(src, map, ws, n);
}

template <class T>
void unpack_add_rnn_grads(const T* dws, const std::int32_t* map, RnnParamPtrs<T> dst, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  unpack_add_rnn_grads_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(dws, map, dst, n);
}

template <class T>
void lstm_step(const T* z, const T* b, T* h, T* c, idx_t B, idx_t H, cudaStream_t s) {
  if (B * H <= 0) return;
  lstm_step_kernel<T><<<blocks_for(B * H), kThreads, 0, s>>>(z, b, h, c, B, H);
}

template <class T>
void gru_step(const T* zx, const T* rh, const T* b, T* h, idx_t B, idx_t H, cudaStream_t s) {
  if (B * H <= 0) return;
  gru_step_kernel<T><<<blocks_for(B * H), kThreads, 0, s>>>(zx, rh, b, h, B, H);
}

template <class T>
void simple_rnn_step(const T* z, const T* b, T* h, idx_t B, idx_t H, bool relu, cudaStream_t s) {
  if (B * H <= 0) return;
  simple_rnn_step_kernel<T><<<blocks_for(B * H), kThreads, 0, s>>>(z, b, h, B, H, relu);
}

template <class T>
void bidir_merge(int mode, idx_t B, idx_t S, idx_t H, const T* yf, const T* yb, T* y, const std::int32_t* lengths,
                 cudaStream_t s) {
  const idx_t n = B * S * (mode == 0 ? 2 * H : H);
  if (n <= 0) return;
  bidir_merge_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(mode, B, S, H, yf, yb, y, lengths);
}

template <class T>
void bidir_split(int mode, idx_t B, idx_t S, idx_t H, const T* dy, const T* yf, const T* yb, T* dyf, T* dyb,
                 const std::int32_t* lengths, cudaStream_t s) {
  const idx_t n = B * S * H;
  if (n <= 0) return;
  bidir_split_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(mode, B, S, H, dy, yf, yb, dyf, dyb, lengths);
}

template <class T>
void embedding_lookup(const T* table, idx_t V, idx_t E, const T* ids, idx_t n, T* y, cudaStream_t s) {
  if (n * E <= 0 || V <= 0) return;
  embedding_lookup_kernel<T><<<blocks_for(n * E), kThreads, 0, s>>>(table, V, E, ids, n, y);
}

template <class T>
void embedding_grad(const T* dy, const T* ids, idx_t n, T* dtable, idx_t V, idx_t E, cudaStream_t s) {
  if (n * E <= 0 || V <= 0) return;
  embedding_grad_kernel<T><<<blocks_for(n * E), kThreads, 0, s>>>(dy, ids, n, dtable, V, E);
}

template <class T>
void add_inplace(const T* a, T* acc, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  add_inplace_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(a, acc, n);
}

template <class T>
void dropout(const T* in, T* out, idx_t n, std::uint64_t key, std::uint32_t threshold, T scale, cudaStream_t s) {
  if (n <= 0) return;
  dropout_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(in, out, n, key, threshold, scale);
}

// ---- explicit instantiations ----------------------------------------------------------------

template <class T>
void sum_squares(const T* g, idx_t n, double* acc, cudaStream_t s) {
  if (n <= 0) return;
  sum_squares_kernel<T><<<1, kThreads, 0, s>>>(g, n, acc);
}
template <class T>
void clip_by_norm(T* g, idx_t n, const double* sq, T clip, int batch, int* guard, const idx_t* step,
                  cudaStream_t s) {
  if (n <= 0) return;
  clip_by_norm_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(g, n, sq, clip, batch, guard, step);
}
template <class T>
void clip_by_value(T* g, idx_t n, T clip, cudaStream_t s) {
  if (n <= 0) return;
  clip_by_value_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(g, n, clip);
}
template <class T>
void mul(const T* a, const T* b, T* y, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  mul_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(a, b, y, n);
}
template <class T>
void extremum(bool largest, const T* a, const T* b, T* y, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  extremum_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(largest, a, b, y, n);
}
template <class T>
void extremum_grad(const T* x, const T* y, const T* dy, T* taken, T* dx, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  extremum_grad_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(x, y, dy, taken, dx, n);
}
template <class T>
void copy_block(idx_t rows, idx_t width, const T* src, idx_t src_stride, idx_t src_off, T* dst, idx_t dst_stride,
                idx_t dst_off, bool accumulate, cudaStream_t s) {
  if (rows <= 0 || width <= 0) return;
  copy_block_kernel<T><<<blocks_for(rows * width), kThreads, 0, s>>>(rows, width, src, src_stride, src_off, dst,
                                                                     dst_stride, dst_off, accumulate);
}
template <class T>
void scale(T* p, idx_t n, T f, cudaStream_t s) {
  if (n <= 0) return;
  scale_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, n, f);
}
template <class T>
void scale_by(T* p, idx_t n, const T* f, cudaStream_t s) {
  if (n <= 0) return;
  scale_by_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(p, n, f);
}
template <class T>
void axpy(T a, const T* x, T* y, idx_t n, cudaStream_t s) {
  if (n <= 0) return;
  axpy_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(a, x, y, n);
}

template void fill<float>(float*, idx_t, float, cudaStream_t);
template void fill<double>(double*, idx_t, double, cudaStream_t);
template void fill<std::int32_t>(std::int32_t*, idx_t, std::int32_t, cudaStream_t);
template void fill<std::uint8_t>(std::uint8_t*, idx_t, std::uint8_t, cudaStream_t);
template void fill<std::int64_t>(std::int64_t*, idx_t, std::int64_t, cudaStream_t);

#define FASTNN_INSTANTIATE_MATH(T)                                                                             \
  template void add_row_vector<T>(T*, const T*, idx_t, idx_t, cudaStream_t);                                   \
  template void mul<T>(const T*, const T*, T*, idx_t, cudaStream_t);                                           \
  template void extremum<T>(bool, const T*, const T*, T*, idx_t, cudaStream_t);                                \
  template void extremum_grad<T>(const T*, const T*, const T*, T*, T*, idx_t, cudaStream_t);                   \
  template void copy_block<T>(idx_t, idx_t, const T*, idx_t, idx_t, T*, idx_t, idx_t, bool, cudaStream_t);     \
  template void column_sums_add<T>(const T*, T*, idx_t, idx_t, cudaStream_t);                                  \
  template void activate<T>(int, T*, idx_t, idx_t, cudaStream_t);                                              \
  template void activation_backward<T>(int, const T*, T*, idx_t, idx_t, cudaStream_t);                         \
  template void activation_backward_input<T>(int, const T*, T*, idx_t, cudaStream_t);                          \
  template void softmax_xent<T>(const T*, const std::int32_t*, T*, idx_t, idx_t, T, double*, cudaStream_t);    \
  template void softmax_xent_dense<T>(const T*, const T*, T*, idx_t, idx_t, T, double*, cudaStream_t);         \
  template void sigmoid_xent<T>(const T*, const T*, T*, idx_t, idx_t, T, double*, cudaStream_t);               \
  template void pointwise_loss<T>(int, const T*, const T*, T*, idx_t, idx_t, T, double*, cudaStream_t);        \
  template void metric_labels<T>(const T*, const std::int32_t*, idx_t, idx_t, double*, cudaStream_t);          \
  template void metric_targets<T>(int, const T*, const T*, idx_t, idx_t, T, double*, cudaStream_t);            \
  template void sgd_update<T>(T*, const T*, T*, idx_t, const T*, T, bool, const int*, cudaStream_t);           \
  template void adam_update<T>(T*, const T*, T*, T*, idx_t, const T*, T, T, T, const int*, cudaStream_t);      \
  template void rmsprop_update<T>(T*, const T*, T*, idx_t, const T*, T, T, const int*, cudaStream_t);          \
  template void flag_nonfinite<T>(const T*, idx_t, int*, cudaStream_t);                                        \
  template void check_step_finite<T>(const double*, const T*, idx_t, int, int*, const idx_t*, cudaStream_t);  \
  template void swap01<T>(const T*, T*, idx_t, idx_t, idx_t, bool, bool, cudaStream_t);                        \
  template void to_time_major<T>(const T*, T*, idx_t, idx_t, idx_t, const std::int32_t*, bool, cudaStream_t);   \
  template void from_time_major<T>(const T*, T*, idx_t, idx_t, idx_t, const std::int32_t*, bool, cudaStream_t); \
  template void pack_rnn_weights<T>(RnnParamPtrs<T>, const std::int32_t*, T*, idx_t, cudaStream_t);            \
  template void unpack_add_rnn_grads<T>(const T*, const std::int32_t*, RnnParamPtrs<T>, idx_t, cudaStream_t);   \
  template void lstm_step<T>(const T*, const T*, T*, T*, idx_t, idx_t, cudaStream_t);                          \
  template void gru_step<T>(const T*, const T*, const T*, T*, idx_t, idx_t, cudaStream_t);                     \
  template void simple_rnn_step<T>(const T*, const T*, T*, idx_t, idx_t, bool, cudaStream_t);                  \
  template void bidir_merge<T>(int, idx_t, idx_t, idx_t, const T*, const T*, T*, const std::int32_t*,          \
                               cudaStream_t);                                                                   \
  template void bidir_split<T>(int, idx_t, idx_t, idx_t, const T*, const T*, const T*, T*, T*,                 \
                               const std::int32_t*, cudaStream_t);                                              \
  template void embedding_lookup<T>(const T*, idx_t, idx_t, const T*, idx_t, T*, cudaStream_t);                \
  template void embedding_grad<T>(const T*, const T*, idx_t, T*, idx_t, idx_t, cudaStream_t);                  \
  template void add_inplace<T>(const T*, T*, idx_t, cudaStream_t);                                             \
  template void dropout<T>(const T*, T*, idx_t, std::uint64_t, std::uint32_t, T, cudaStream_t);                \
  template void sum_squares<T>(const T*, idx_t, double*, cudaStream_t);                                        \
  template void clip_by_norm<T>(T*, idx_t, const double*, T, int, int*, const idx_t*, cudaStream_t);           \
  template void clip_by_value<T>(T*, idx_t, T, cudaStream_t);                                                  \
  template void scale<T>(T*, idx_t, T, cudaStream_t);                                                          \
  template void scale_by<T>(T*, idx_t, const T*, cudaStream_t);                                                \
  template void axpy<T>(T, const T*, T*, idx_t, cudaStream_t);

FASTNN_INSTANTIATE_MATH(float)
FASTNN_INSTANTIATE_MATH(double)

#undef FASTNN_INSTANTIATE_MATH

// ---- spatial layers (backend/cuda/conv.hpp) -----------------------------------------------------

namespace {

/// The real rows [y0, y1) and columns [x0, x1) of window (oy, ox) of sample b (padding cut off;
/// columns end at `w`, the sample's length for a 1-D input with lengths).
struct Window {
  idx_t y0, y1, x0, x1;
  __device__ bool empty() const { return y1 <= y0 || x1 <= x0; }
};
__device__ inline Window pool_window(const PoolGeometry& g, idx_t oy, idx_t ox, idx_t w) {
  const idx_t ys = oy * g.sh - g.pt, xs = ox * g.sw - g.pl;
  Window r;
  r.y0 = ys > 0 ? ys : 0;
  r.y1 = ys + g.kh < g.h ? ys + g.kh : g.h;
  r.x0 = xs > 0 ? xs : 0;
  r.x1 = xs + g.kw < w ? xs + g.kw : w;
  return r;
}
/// Sample b's input width and number of output columns (ceil(length / sw) with lengths).
__device__ inline void sample_extent(const PoolGeometry& g, const std::int32_t* lengths, idx_t b, idx_t& w,
                                     idx_t& ow) {
  w = g.w;
  ow = g.ow;
  if (lengths) {
    w = lengths[b];
    const idx_t o = (w + g.sw - 1) / g.sw;
    ow = o < g.ow ? o : g.ow;
  }
}

template <class T>
__global__ void pool_forward_kernel(bool max, PoolGeometry g, const T* x, T* y, const std::int32_t* lengths) {
  const idx_t total = g.n * g.oh * g.ow * g.c;
  FASTNN_GRID_STRIDE(i, total) {
    const idx_t k = i % g.c;
    idx_t r = i / g.c;
    const idx_t ox = r % g.ow;
    r /= g.ow;
    const idx_t oy = r % g.oh, b = r / g.oh;
    idx_t w = 0, ow = 0;
    sample_extent(g, lengths, b, w, ow);
    const Window win = pool_window(g, oy, ox, w);
    if (ox >= ow || win.empty()) {
      y[i] = T(0);
      continue;
    }
    T acc = max ? -INFINITY : T(0);
    for (idx_t iy = win.y0; iy < win.y1; ++iy)
      for (idx_t ix = win.x0; ix < win.x1; ++ix) {
        const T v = x[((b * g.h + iy) * g.w + ix) * g.c + k];
        if (max) acc = v > acc ? v : acc;
        else acc += v;
      }
    y[i] = max ? acc : acc / static_cast<T>((win.y1 - win.y0) * (win.x1 - win.x0));
  }
}

/// One thread per input element: it visits the windows that contain it in scan order (as the CPU
/// adds them), so the sums are the CPU's, without atomics.
template <class T>
__global__ void pool_backward_kernel(bool max, PoolGeometry g, const T* x, const T* dy, T* dx,
                                     const std::int32_t* lengths) {
  const idx_t total = g.n * g.h * g.w * g.c;
  FASTNN_GRID_STRIDE(i, total) {
    const idx_t k = i % g.c;
    idx_t r = i / g.c;
    const idx_t ix = r % g.w;
    r /= g.w;
    const idx_t iy = r % g.h, b = r / g.h;
    idx_t w = 0, ow = 0;
    sample_extent(g, lengths, b, w, ow);
    T acc = T(0);
    if (ix < w) {
      // window oy holds row iy when oy sh - pt <= iy < oy sh - pt + kh
      const idx_t ay = iy + g.pt - g.kh + 1, ax = ix + g.pl - g.kw + 1;
      const idx_t oy0 = ay > 0 ? (ay + g.sh - 1) / g.sh : 0, ox0 = ax > 0 ? (ax + g.sw - 1) / g.sw : 0;
      idx_t oy1 = (iy + g.pt) / g.sh, ox1 = (ix + g.pl) / g.sw;
      if (oy1 > g.oh - 1) oy1 = g.oh - 1;
      if (ox1 > ow - 1) ox1 = ow - 1;
      for (idx_t oy = oy0; oy <= oy1; ++oy)
        for (idx_t ox = ox0; ox <= ox1; ++ox) {
          const Window win = pool_window(g, oy, ox, w);
          if (win.empty()) continue;
          const T d = dy[((b * g.oh + oy) * g.ow + ox) * g.c + k];
          if (!max) {
            acc += d / static_cast<T>((win.y1 - win.y0) * (win.x1 - win.x0));
            continue;
          }
          idx_t ay_arg = -1, ax_arg = -1;
          T best = -INFINITY;
          for (idx_t yy = win.y0; yy < win.y1; ++yy)
            for (idx_t xx = win.x0; xx < win.x1; ++xx) {
              const T v = x[((b * g.h + yy) * g.w + xx) * g.c + k];
              if (ay_arg < 0 || v > best) {
                best = v;
                ay_arg = yy;
                ax_arg = xx;
              }
            }
          if (ay_arg == iy && ax_arg == ix) acc += d;
        }
    }
    dx[i] = acc;
  }
}

template <class T>
__global__ void global_pool_forward_kernel(bool max, const T* x, T* y, idx_t n, idx_t steps, idx_t c,
                                           const std::int32_t* lengths) {
  FASTNN_GRID_STRIDE(i, n * c) {
    const idx_t b = i / c, k = i % c, len = lengths ? lengths[b] : steps;
    T acc = max ? -INFINITY : T(0);
    for (idx_t t = 0; t < len; ++t) {
      const T v = x[(b * steps + t) * c + k];
      if (max) acc = v > acc ? v : acc;
      else acc += v;
    }
    y[i] = max ? acc : acc / static_cast<T>(len);
  }
}

template <class T>
__global__ void global_pool_backward_kernel(bool max, const T* x, const T* dy, T* dx, idx_t n, idx_t steps, idx_t c,
                                            const std::int32_t* lengths) {
  FASTNN_GRID_STRIDE(i, n * c) {
    const idx_t b = i / c, k = i % c, len = lengths ? lengths[b] : steps;
    const T d = dy[i];
    idx_t arg = 0;
    if (max)
      for (idx_t t = 1; t < len; ++t)
        if (x[(b * steps + t) * c + k] > x[(b * steps + arg) * c + k]) arg = t;
    for (idx_t t = 0; t < steps; ++t) {
      T v = T(0);
      if (t < len) v = max ? (t == arg ? d : T(0)) : d / static_cast<T>(len);
      dx[(b * steps + t) * c + k] = v;
    }
  }
}

template <class T>
__global__ void mask_steps_kernel(const T* x, T* y, idx_t n, idx_t steps, idx_t inner, const std::int32_t* lengths) {
  FASTNN_GRID_STRIDE(i, n * steps * inner) {
    const idx_t t = i / inner % steps, b = i / (inner * steps);
    y[i] = t < lengths[b] ? x[i] : T(0);
  }
}

template <class T>
__global__ void permute_kernel(const T* x, T* y, idx_t n, idx_t per, PermuteDims d) {
  FASTNN_GRID_STRIDE(i, n * per) {
    const idx_t b = i / per;
    idx_t rem = i % per, at = 0;
    for (int j = d.rank - 1; j >= 0; --j) {
      at += rem % d.out_dims[j] * d.src_stride[j];
      rem /= d.out_dims[j];
    }
    y[i] = x[b * per + at];
  }
}

template <class T>
__global__ void pad_nhwc_kernel(const T* x, T* xp, idx_t n, idx_t h, idx_t w, idx_t c, idx_t top, idx_t left,
                                idx_t hp, idx_t wp) {
  FASTNN_GRID_STRIDE(i, n * hp * wp * c) {
    const idx_t k = i % c;
    idx_t r = i / c;
    const idx_t px = r % wp;
    r /= wp;
    const idx_t py = r % hp, b = r / hp, iy = py - top, ix = px - left;
    xp[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[((b * h + iy) * w + ix) * c + k] : T(0);
  }
}

template <class T>
__global__ void crop_nhwc_kernel(const T* xp, T* x, idx_t n, idx_t h, idx_t w, idx_t c, idx_t top, idx_t left,
                                 idx_t hp, idx_t wp) {
  FASTNN_GRID_STRIDE(i, n * h * w * c) {
    const idx_t k = i % c;
    idx_t r = i / c;
    const idx_t ix = r % w;
    r /= w;
    const idx_t iy = r % h, b = r / h;
    x[i] = xp[((b * hp + iy + top) * wp + ix + left) * c + k];
  }
}

// Batch norm: a block of kBnCols x kBnRows threads owns kBnCols channels; thread (tx, ty) sums rows
// ty, ty + kBnRows, ... of channel tx, then row 0 adds the kBnRows partial sums in order.
constexpr int kBnCols = 32, kBnRows = 16;

/// The sum over the block's rows of `v` for channel threadIdx.x, seen by every thread.
__device__ inline double bn_block_sum(double v, double (*part)[kBnCols], double* out) {
  part[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0) {
    double t = 0;
    for (int r = 0; r < kBnRows; ++r) t += part[r][threadIdx.x];
    out[threadIdx.x] = t;
  }
  __syncthreads();
  const double t = out[threadIdx.x];
  __syncthreads();
  return t;
}

template <class T>
__global__ void bn_moments_kernel(const T* x, T* mean, T* var, idx_t m, idx_t c) {
  __shared__ double part[kBnRows][kBnCols];
  __shared__ double out[kBnCols];
  const idx_t k = static_cast<idx_t>(blockIdx.x) * kBnCols + threadIdx.x;
  double s = 0;
  if (k < c)
    for (idx_t i = threadIdx.y; i < m; i += kBnRows) s += static_cast<double>(x[i * c + k]);
  const double mu = bn_block_sum(s, part, out) / static_cast<double>(m);
  double q = 0;
  if (k < c)
    for (idx_t i = threadIdx.y; i < m; i += kBnRows) {
      const double d = static_cast<double>(x[i * c + k]) - mu;
      q += d * d;
    }
  const double v = bn_block_sum(q, part, out);
  if (threadIdx.y == 0 && k < c) {
    mean[k] = static_cast<T>(mu);
    var[k] = static_cast<T>(v / static_cast<double>(m));
  }
}

template <class T>
__global__ void bn_apply_kernel(const T* x, const T* mean, const T* var, T eps, const T* gamma, const T* beta, T* y,
                                idx_t m, idx_t c) {
  FASTNN_GRID_STRIDE(i, m * c) {
    const idx_t k = i % c;
    const T a = (gamma ? gamma[k] : T(1)) / dev_sqrt(var[k] + eps);
    y[i] = (x[i] - mean[k]) * a + (beta ? beta[k] : T(0));
  }
}

template <class T>
__global__ void bn_backward_kernel(const T* x, const T* mean, const T* var, T eps, const T* gamma, const T* dy,
                                   T* dgamma, T* dbeta, T* dx, idx_t m, idx_t c, bool batch_stats) {
  __shared__ double part[kBnRows][kBnCols];
  __shared__ double out[kBnCols];
  const idx_t k = static_cast<idx_t>(blockIdx.x) * kBnCols + threadIdx.x;
  const bool real = k < c;
  const double inv = real ? 1.0 / sqrt(static_cast<double>(var[k] + eps)) : 0.0;
  const double mu = real ? static_cast<double>(mean[k]) : 0.0;
  double sd = 0, sdx = 0;
  if (real)
    for (idx_t i = threadIdx.y; i < m; i += kBnRows) {
      const double d = static_cast<double>(dy[i * c + k]);
      sd += d;
      sdx += d * (static_cast<double>(x[i * c + k]) - mu) * inv;
    }
  sd = bn_block_sum(sd, part, out);
  sdx = bn_block_sum(sdx, part, out);
  if (!real) return;
  if (threadIdx.y == 0) {
    if (dgamma) dgamma[k] += static_cast<T>(sdx);
    if (dbeta) dbeta[k] += static_cast<T>(sd);
  }
  if (!dx) return;
  const double a = (gamma ? static_cast<double>(gamma[k]) : 1.0) * inv, md = static_cast<double>(m);
  for (idx_t i = threadIdx.y; i < m; i += kBnRows) {
    const double d = static_cast<double>(dy[i * c + k]);
    const double xhat = (static_cast<double>(x[i * c + k]) - mu) * inv;
    dx[i * c + k] = static_cast<T>(batch_stats ? a / md * (md * d - sd - xhat * sdx) : a * d);
  }
}

}  // namespace

template <class T>
void pool_forward(bool max, const PoolGeometry& g, const T* x, T* y, const std::int32_t* lengths, cudaStream_t s) {
  const idx_t total = g.n * g.oh * g.ow * g.c;
  if (total <= 0) return;
  pool_forward_kernel<T><<<blocks_for(total), kThreads, 0, s>>>(max, g, x, y, lengths);
}

template <class T>
void pool_backward(bool max, const PoolGeometry& g, const T* x, const T* dy, T* dx, const std::int32_t* lengths,
                   cudaStream_t s) {
  const idx_t total = g.n * g.h * g.w * g.c;
  if (total <= 0) return;
  pool_backward_kernel<T><<<blocks_for(total), kThreads, 0, s>>>(max, g, x, dy, dx, lengths);
}

template <class T>
void global_pool_forward(bool max, const T* x, T* y, idx_t n, idx_t steps, idx_t c, const std::int32_t* lengths,
                         cudaStream_t s) {
  if (n * c <= 0) return;
  global_pool_forward_kernel<T><<<blocks_for(n * c), kThreads, 0, s>>>(max, x, y, n, steps, c, lengths);
}

template <class T>
void global_pool_backward(bool max, const T* x, const T* dy, T* dx, idx_t n, idx_t steps, idx_t c,
                          const std::int32_t* lengths, cudaStream_t s) {
  if (n * c <= 0) return;
  global_pool_backward_kernel<T><<<blocks_for(n * c), kThreads, 0, s>>>(max, x, dy, dx, n, steps, c, lengths);
}

template <class T>
void mask_steps(const T* x, T* y, idx_t n, idx_t steps, idx_t inner, const std::int32_t* lengths, cudaStream_t s) {
  const idx_t total = n * steps * inner;
  if (total <= 0) return;
  mask_steps_kernel<T><<<blocks_for(total), kThreads, 0, s>>>(x, y, n, steps, inner, lengths);
}

template <class T>
void permute(const T* x, T* y, idx_t n, idx_t per, const PermuteDims& d, cudaStream_t s) {
  if (n * per <= 0) return;
  permute_kernel<T><<<blocks_for(n * per), kThreads, 0, s>>>(x, y, n, per, d);
}

template <class T>
void pad_nhwc(const T* x, T* xp, idx_t n, idx_t h, idx_t w, idx_t c, idx_t top, idx_t left, idx_t hp, idx_t wp,
              cudaStream_t s) {
  const idx_t total = n * hp * wp * c;
  if (total <= 0) return;
  pad_nhwc_kernel<T><<<blocks_for(total), kThreads, 0, s>>>(x, xp, n, h, w, c, top, left, hp, wp);
}

template <class T>
void crop_nhwc(const T* xp, T* x, idx_t n, idx_t h, idx_t w, idx_t c, idx_t top, idx_t left, idx_t hp, idx_t wp,
               cudaStream_t s) {
  const idx_t total = n * h * w * c;
  if (total <= 0) return;
  crop_nhwc_kernel<T><<<blocks_for(total), kThreads, 0, s>>>(xp, x, n, h, w, c, top, left, hp, wp);
}

template <class T>
void batch_norm_moments(const T* x, T* mean, T* var, idx_t m, idx_t c, cudaStream_t s) {
  if (m <= 0 || c <= 0) return;
  const dim3 block(kBnCols, kBnRows);
  bn_moments_kernel<T><<<static_cast<unsigned>((c + kBnCols - 1) / kBnCols), block, 0, s>>>(x, mean, var, m, c);
}

template <class T>
void batch_norm_apply(const T* x, const T* mean, const T* var, T eps, const T* gamma, const T* beta, T* y, idx_t m,
                      idx_t c, cudaStream_t s) {
  if (m * c <= 0) return;
  bn_apply_kernel<T><<<blocks_for(m * c), kThreads, 0, s>>>(x, mean, var, eps, gamma, beta, y, m, c);
}

template <class T>
void batch_norm_backward(const T* x, const T* mean, const T* var, T eps, const T* gamma, const T* dy, T* dgamma,
                         T* dbeta, T* dx, idx_t m, idx_t c, bool batch_stats, cudaStream_t s) {
  if (m <= 0 || c <= 0) return;
  const dim3 block(kBnCols, kBnRows);
  bn_backward_kernel<T><<<static_cast<unsigned>((c + kBnCols - 1) / kBnCols), block, 0, s>>>(
      x, mean, var, eps, gamma, dy, dgamma, dbeta, dx, m, c, batch_stats);
}

#define FASTNN_INSTANTIATE_SPATIAL(T)                                                                           \
  template void pool_forward<T>(bool, const PoolGeometry&, const T*, T*, const std::int32_t*, cudaStream_t);    \
  template void pool_backward<T>(bool, const PoolGeometry&, const T*, const T*, T*, const std::int32_t*,        \
                                 cudaStream_t);                                                                 \
  template void global_pool_forward<T>(bool, const T*, T*, idx_t, idx_t, idx_t, const std::int32_t*,            \
                                       cudaStream_t);                                                           \
  template void global_pool_backward<T>(bool, const T*, const T*, T*, idx_t, idx_t, idx_t, const std::int32_t*, \
                                        cudaStream_t);                                                          \
  template void mask_steps<T>(const T*, T*, idx_t, idx_t, idx_t, const std::int32_t*, cudaStream_t);            \
  template void permute<T>(const T*, T*, idx_t, idx_t, const PermuteDims&, cudaStream_t);                       \
  template void pad_nhwc<T>(const T*, T*, idx_t, idx_t, idx_t, idx_t, idx_t, idx_t, idx_t, idx_t, cudaStream_t); \
  template void crop_nhwc<T>(const T*, T*, idx_t, idx_t, idx_t, idx_t, idx_t, idx_t, idx_t, idx_t, cudaStream_t); \
  template void batch_norm_moments<T>(const T*, T*, T*, idx_t, idx_t, cudaStream_t);                            \
  template void batch_norm_apply<T>(const T*, const T*, const T*, T, const T*, const T*, T*, idx_t, idx_t,      \
                                    cudaStream_t);                                                              \
  template void batch_norm_backward<T>(const T*, const T*, const T*, T, const T*, const T*, T*, T*, T*, idx_t,  \
                                       idx_t, bool, cudaStream_t);

FASTNN_INSTANTIATE_SPATIAL(float)
FASTNN_INSTANTIATE_SPATIAL(double)

#undef FASTNN_INSTANTIATE_SPATIAL

// Layer normalisation: a block of 32 x kLnWarps threads, one warp per row (rows grid-strided).
namespace {

constexpr int kLnWarps = 8;
constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__global__ void ln_forward_kernel(const T* x, T eps, const T* gamma, const T* beta, T* y, T* mean, T* rstd, idx_t m,
                                  idx_t c) {
  const int lane = static_cast<int>(threadIdx.x);
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * kLnWarps + threadIdx.y; i < m;
       i += static_cast<idx_t>(gridDim.x) * kLnWarps) {
    const T* r = x + i * c;
    double n = 0, mu = 0, q = 0;
    for (idx_t k = lane; k < c; k += 32) {  // Welford's update over this lane's elements
      const double v = static_cast<double>(r[k]);
      n += 1;
      const double d = v - mu;
      mu += d / n;
      q += d * (v - mu);
    }
    for (int off = 16; off > 0; off >>= 1) {  // Chan et al.: merge two partitions
      const double nb = __shfl_xor_sync(kFullMask, n, off);
      const double mb = __shfl_xor_sync(kFullMask, mu, off);
      const double qb = __shfl_xor_sync(kFullMask, q, off);
      const double nt = n + nb;
      if (nt > 0) {
        const double d = mb - mu;
        mu += d * nb / nt;
        q += qb + d * d * n * nb / nt;
        n = nt;
      }
    }
    mu = __shfl_sync(kFullMask, mu, 0);  // lane 0's result for every lane (the merge order differs by lane)
    q = __shfl_sync(kFullMask, q, 0);
    const double rs = 1.0 / sqrt(q / static_cast<double>(c) + static_cast<double>(eps));
    T* o = y + i * c;
    for (idx_t k = lane; k < c; k += 32) {
      const double v = (static_cast<double>(r[k]) - mu) * rs;
      o[k] = static_cast<T>(v * (gamma ? static_cast<double>(gamma[k]) : 1.0) +
                            (beta ? static_cast<double>(beta[k]) : 0.0));
    }
    if (lane == 0) {
      mean[i] = static_cast<T>(mu);
      rstd[i] = static_cast<T>(rs);
    }
  }
}

template <class T>
__global__ void ln_backward_input_kernel(const T* x, const T* mean, const T* rstd, const T* gamma, const T* dy, T* dx,
                                         idx_t m, idx_t c) {
  const int lane = static_cast<int>(threadIdx.x);
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * kLnWarps + threadIdx.y; i < m;
       i += static_cast<idx_t>(gridDim.x) * kLnWarps) {
    const T* r = x + i * c;
    const T* d = dy + i * c;
    const double mu = static_cast<double>(mean[i]), rs = static_cast<double>(rstd[i]);
    double sg = 0, sgx = 0;
    for (idx_t k = lane; k < c; k += 32) {
      const double g = static_cast<double>(d[k]) * (gamma ? static_cast<double>(gamma[k]) : 1.0);
      sg += g;
      sgx += g * (static_cast<double>(r[k]) - mu) * rs;
    }
    for (int off = 16; off > 0; off >>= 1) {  // a + b == b + a: every lane ends with the same sums
      sg += __shfl_xor_sync(kFullMask, sg, off);
      sgx += __shfl_xor_sync(kFullMask, sgx, off);
    }
    const double mg = sg / static_cast<double>(c), mgx = sgx / static_cast<double>(c);
    T* o = dx + i * c;
    for (idx_t k = lane; k < c; k += 32) {
      const double g = static_cast<double>(d[k]) * (gamma ? static_cast<double>(gamma[k]) : 1.0);
      o[k] = static_cast<T>(rs * (g - mg - (static_cast<double>(r[k]) - mu) * rs * mgx));
    }
  }
}

// dgamma, dbeta: the column sums of dy xhat and dy, as bn_backward_kernel's (kBnCols x kBnRows threads).
template <class T>
__global__ void ln_backward_params_kernel(const T* x, const T* mean, const T* rstd, const T* dy, T* dgamma, T* dbeta,
                                          idx_t m, idx_t c) {
  __shared__ double part[kBnRows][kBnCols];
  __shared__ double out[kBnCols];
  const idx_t k = static_cast<idx_t>(blockIdx.x) * kBnCols + threadIdx.x;
  double sd = 0, sdx = 0;
  if (k < c)
    for (idx_t i = threadIdx.y; i < m; i += kBnRows) {
      const double d = static_cast<double>(dy[i * c + k]);
      sd += d;
      sdx += d * (static_cast<double>(x[i * c + k]) - static_cast<double>(mean[i])) * static_cast<double>(rstd[i]);
    }
  sd = bn_block_sum(sd, part, out);
  sdx = bn_block_sum(sdx, part, out);
  if (threadIdx.y != 0 || k >= c) return;
  if (dgamma) dgamma[k] += static_cast<T>(sdx);
  if (dbeta) dbeta[k] += static_cast<T>(sd);
}

inline unsigned ln_row_blocks(idx_t m) {
  idx_t b = (m + kLnWarps - 1) / kLnWarps;
  if (b > 65535) b = 65535;  // the row loop covers the rest
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

}  // namespace

template <class T>
void layer_norm_forward(const T* x, T eps, const T* gamma, const T* beta, T* y, T* mean, T* rstd, idx_t m, idx_t c,
                        cudaStream_t s) {
  if (m <= 0 || c <= 0) return;
  ln_forward_kernel<T><<<ln_row_blocks(m), dim3(32, kLnWarps), 0, s>>>(x, eps, gamma, beta, y, mean, rstd, m, c);
}

template <class T>
void layer_norm_backward(const T* x, const T* mean, const T* rstd, const T* gamma, const T* dy, T* dgamma, T* dbeta,
                         T* dx, idx_t m, idx_t c, cudaStream_t s) {
  if (m <= 0 || c <= 0) return;
  if (dx) ln_backward_input_kernel<T><<<ln_row_blocks(m), dim3(32, kLnWarps), 0, s>>>(x, mean, rstd, gamma, dy, dx,
                                                                                      m, c);
  if (dgamma || dbeta)
    ln_backward_params_kernel<T><<<static_cast<unsigned>((c + kBnCols - 1) / kBnCols), dim3(kBnCols, kBnRows), 0, s>>>(
        x, mean, rstd, dy, dgamma, dbeta, m, c);
}

template void layer_norm_forward<float>(const float*, float, const float*, const float*, float*, float*, float*, idx_t,
                                        idx_t, cudaStream_t);
template void layer_norm_forward<double>(const double*, double, const double*, const double*, double*, double*,
                                         double*, idx_t, idx_t, cudaStream_t);
template void layer_norm_backward<float>(const float*, const float*, const float*, const float*, const float*, float*,
                                         float*, float*, idx_t, idx_t, cudaStream_t);
template void layer_norm_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                          double*, double*, double*, idx_t, idx_t, cudaStream_t);

// Multi-head attention's masked softmax: a block of 32 x kAttWarps threads, one warp per score row (rows
// grid-strided); each lane takes the columns lane, lane + 32, ...
namespace {

constexpr int kAttWarps = 8;

template <class T>
__device__ inline T warp_max(T v) {
  for (int off = 16; off > 0; off >>= 1) {
    const T o = __shfl_xor_sync(kFullMask, v, off);
    v = o > v ? o : v;
  }
  return v;
}

template <class T>
__device__ inline T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

/// The number of keys row r attends to (0 on a padded query row).
__device__ inline idx_t attention_keys(const AttentionRows& a, idx_t r) {
  const idx_t b = r / (a.heads * a.tq), i = r % a.tq;
  if (a.query_lengths && i >= static_cast<idx_t>(a.query_lengths[b])) return 0;
  idx_t n = a.key_lengths ? static_cast<idx_t>(a.key_lengths[b]) : a.tk;
  if (a.causal && n > i + 1) n = i + 1;
  return n;
}

__device__ inline bool attention_kept(const AttentionRows& a, idx_t e) {
  return fastnn::hash::bits32(a.key, static_cast<std::uint64_t>(e)) >= a.threshold;
}

template <class T>
__global__ void attention_softmax_forward_kernel(AttentionRows a, const T* s, T* p, T* pd, T scale) {
  const int lane = static_cast<int>(threadIdx.x);
  const idx_t rows = a.batch * a.heads * a.tq, tk = a.tk;
  for (idx_t r = static_cast<idx_t>(blockIdx.x) * kAttWarps + threadIdx.y; r < rows;
       r += static_cast<idx_t>(gridDim.x) * kAttWarps) {
    const idx_t n = attention_keys(a, r);
    const T* sr = s + r * tk;
    T mx = n > 0 ? sr[0] : T(0);
    for (idx_t j = lane; j < n; j += 32) mx = sr[j] > mx ? sr[j] : mx;
    mx = warp_max(mx);
    T sum = 0;
    for (idx_t j = lane; j < n; j += 32) sum += dev_exp(sr[j] - mx);
    sum = warp_sum(sum);
    const T rs = n > 0 ? T(1) / sum : T(0);
    T* pr = p + r * tk;
    T* dr = pd ? pd + r * tk : nullptr;
    for (idx_t j = lane; j < tk; j += 32) {
      const T v = j < n ? dev_exp(sr[j] - mx) * rs : T(0);  // sr[j] is read before pr[j] (possibly the same) is set
      pr[j] = v;
      if (dr) dr[j] = a.threshold == 0 || attention_kept(a, r * tk + j) ? v * scale : T(0);
    }
  }
}

template <class T>
__global__ void attention_softmax_backward_kernel(AttentionRows a, const T* p, T* g, T scale) {
  const int lane = static_cast<int>(threadIdx.x);
  const idx_t rows = a.batch * a.heads * a.tq, tk = a.tk;
  for (idx_t r = static_cast<idx_t>(blockIdx.x) * kAttWarps + threadIdx.y; r < rows;
       r += static_cast<idx_t>(gridDim.x) * kAttWarps) {
    const idx_t n = attention_keys(a, r);
    const T* pr = p + r * tk;
    T* gr = g + r * tk;
    T dot = 0;
    for (idx_t j = lane; j < n; j += 32) {
      const T dp = a.threshold == 0 ? gr[j] : (attention_kept(a, r * tk + j) ? gr[j] * scale : T(0));
      dot += pr[j] * dp;
    }
    dot = warp_sum(dot);
    for (idx_t j = lane; j < tk; j += 32) {
      T v = 0;
      if (j < n) {
        const T dp = a.threshold == 0 ? gr[j] : (attention_kept(a, r * tk + j) ? gr[j] * scale : T(0));
        v = pr[j] * (dp - dot);
      }
      gr[j] = v;
    }
  }
}

inline unsigned attention_row_blocks(idx_t rows) {
  idx_t b = (rows + kAttWarps - 1) / kAttWarps;
  if (b > 65535) b = 65535;  // the row loop covers the rest
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

}  // namespace

template <class T>
void attention_softmax_forward(const AttentionRows& a, const T* s, T* p, T* pd, T scale, cudaStream_t st) {
  const idx_t rows = a.batch * a.heads * a.tq;
  if (rows <= 0 || a.tk <= 0) return;
  attention_softmax_forward_kernel<T><<<attention_row_blocks(rows), dim3(32, kAttWarps), 0, st>>>(a, s, p, pd, scale);
}

template <class T>
void attention_softmax_backward(const AttentionRows& a, const T* p, T* g, T scale, cudaStream_t st) {
  const idx_t rows = a.batch * a.heads * a.tq;
  if (rows <= 0 || a.tk <= 0) return;
  attention_softmax_backward_kernel<T><<<attention_row_blocks(rows), dim3(32, kAttWarps), 0, st>>>(a, p, g, scale);
}

template void attention_softmax_forward<float>(const AttentionRows&, const float*, float*, float*, float,
                                               cudaStream_t);
template void attention_softmax_forward<double>(const AttentionRows&, const double*, double*, double*, double,
                                                cudaStream_t);
template void attention_softmax_backward<float>(const AttentionRows&, const float*, float*, float, cudaStream_t);
template void attention_softmax_backward<double>(const AttentionRows&, const double*, double*, double, cudaStream_t);

}  // namespace kernels
}  // namespace cuda
}  // namespace fastnn
