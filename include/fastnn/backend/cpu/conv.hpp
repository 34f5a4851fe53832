#pragma once
/// \file conv.hpp
/// SpatialOps<T, Cpu>: the CPU primitives of the spatial layers (backend/conv.hpp).
/// Convolutions are im2col + cpu_gemm (backend/cpu/gemm.hpp), so they run on every CPU path
/// (cpu_isa()) and in bfloat16 where the precision asks for it. The im2col matrix of a
/// convolution with G groups is [n * oh * ow, G, kh, kw, c / G] (row-major), so that group g's
/// columns form a strided block multiplied with the kernel's columns of that group.
/// The convolutions run in chunks of a few samples (chunk_samples()): each chunk's im2col block is
/// built, multiplied and (backward) scattered while it is still in the cache, so the workspaces
/// hold one chunk, not the whole batch. conv_forward_bias / conv_backward_bias (the layer's path)
/// also add the bias and sum its gradient chunk by chunk, and with a detail::Worker they split the
/// batch in two halves, one on the calling thread and one on the worker; the kernel and bias
/// gradients of the halves are summed in a fixed order, so a given thread count always gives the
/// same bits.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/backend/conv.hpp"
#include "fastnn/backend/cpu/gemm.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/thread.hpp"

namespace fastnn {

/// The per-thread workspaces of SpatialOps<T, Cpu>::conv_forward_bias / conv_backward_bias:
/// index 0 is the calling thread's, 1 the worker's (kept between calls: no allocation once grown).
template <class T>
struct ConvWorkspace {
  Tensor<T, Cpu> col[2], dcol[2], dw[2], db[2];
};

template <class T>
struct SpatialOps<T, Cpu> {
  using Tn = Tensor<T, Cpu>;

  /// col [rows, G * kh * kw * cg] from x [n, h, w, c] (zeros where the window leaves the input).
  static void im2col(const ConvGeometry& g, const Tn& x, Tn& col) {
    col.resize(Shape{g.rows(), g.groups * g.group_cols()});
    im2col(g, x.data(), col.data());
  }
  /// The same on raw storage: out [g.rows(), G * kh * kw * cg] from in [g.n, h, w, c].
  static void im2col(const ConvGeometry& g, const T* in, T* out) {
    const Index cg = g.c / g.groups, kc = g.group_cols(), width = g.groups * kc;
    if (g.groups == 1 && g.dw == 1) {
      im2col_runs(g, in, out);
      return;
    }
    for (Index b = 0; b < g.n; ++b)
      for (Index oy = 0; oy < g.oh; ++oy)
        for (Index ox = 0; ox < g.ow; ++ox) {
          T* row = out + ((b * g.oh + oy) * g.ow + ox) * width;
          for (Index gi = 0; gi < g.groups; ++gi)
            for (Index i = 0; i < g.kh; ++i) {
              const Index iy = oy * g.sh - g.pt + i * g.dh;
              for (Index j = 0; j < g.kw; ++j) {
                const Index ix = ox * g.sw - g.pl + j * g.dw;
                T* dst = row + gi * kc + (i * g.kw + j) * cg;
                if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) {
                  std::fill(dst, dst + cg, T(0));
                } else {
                  const T* src = in + ((b * g.h + iy) * g.w + ix) * g.c + gi * cg;
                  std::copy(src, src + cg, dst);
                }
              }
            }
        }
  }

  /// dx += col2im(dcol): the adjoint of im2col.
  static void col2im_add(const ConvGeometry& g, const Tn& dcol, Tn& dx) { col2im_add(g, dcol.data(), dx.data()); }
  /// The same on raw storage: out [g.n, h, w, c] += col2im(in [g.rows(), G * kh * kw * cg]).
  static void col2im_add(const ConvGeometry& g, const T* in, T* out) {
    const Index cg = g.c / g.groups, kc = g.group_cols(), width = g.groups * kc;
    for (Index b = 0; b < g.n; ++b)
      for (Index oy = 0; oy < g.oh; ++oy)
        for (Index ox = 0; ox < g.ow; ++ox) {
          const T* row = in + ((b * g.oh + oy) * g.ow + ox) * width;
          for (Index gi = 0; gi < g.groups; ++gi)
            for (Index i = 0; i < g.kh; ++i) {
              const Index iy = oy * g.sh - g.pt + i * g.dh;
              if (iy < 0 || iy >= g.h) continue;
              for (Index j = 0; j < g.kw; ++j) {
                const Index ix = ox * g.sw - g.pl + j * g.dw;
                if (ix < 0 || ix >= g.w) continue;
                const T* src = row + gi * kc + (i * g.kw + j) * cg;
                T* dst = out + ((b * g.h + iy) * g.w + ix) * g.c + gi * cg;
                for (Index k = 0; k < cg; ++k) dst[k] += src[k];
              }
            }
        }
  }

  /// y [n, oh, ow, filters] (sized by the caller) = conv(x, w) with w [kh, kw, c / G, filters] (Keras's layout).
  static void conv_forward(const ConvGeometry& g, const Tn& x, const Tn& w, Tn& y, Tn& col, Precision p) {
    check_size(y, g.rows() * g.filters, "conv_forward");
    forward_samples(g, x.data(), w.data(), nullptr, y.data(), col, p, 0, g.n);
  }

  /// dw += dL/dw and, with dx, dx = dL/dx (sized as x by the caller), given dy = dL/dy [n, oh, ow, filters].
  static void conv_backward(const ConvGeometry& g, const Tn& x, const Tn& w, const Tn& dy, Tn& dw, Tn* dx, Tn& col,
                            Tn& dcol, Precision p) {
    if (dx) check_size(*dx, x.size(), "conv_backward");
    backward_samples(g, x.data(), w.data(), dy.data(), dw.data(), nullptr, dx ? dx->data() : nullptr, col, dcol, p,
                     0, g.n);
  }

  /// y = conv(x, w) + bias (bias [filters], or none when null), as conv_forward; with a worker the
  /// batch is split between the calling thread and it (see the file comment).
  static void conv_forward_bias(const ConvGeometry& g, const Tn& x, const Tn& w, const Tn* bias, Tn& y,
                                ConvWorkspace<T>& ws, Precision p, detail::Worker* worker = nullptr) {
    check_size(y, g.rows() * g.filters, "conv_forward");
    const T* b = bias ? bias->data() : nullptr;
    if (!worker || g.n < 2) {
      forward_samples(g, x.data(), w.data(), b, y.data(), ws.col[0], p, 0, g.n);
      return;
    }
    const Index half = (g.n + 1) / 2;
    struct Job {
      const ConvGeometry* g;
      const T *x, *w, *b;
      T* y;
      Tn* col;
      Precision p;
      Index b0, b1;
    } job{&g, x.data(), w.data(), b, y.data(), &ws.col[1], p, half, g.n};
    const Job* j = &job;
    worker->run_alongside([j] { forward_samples(*j->g, j->x, j->w, j->b, j->y, *j->col, j->p, j->b0, j->b1); },
                          [&] { forward_samples(g, x.data(), w.data(), b, y.data(), ws.col[0], p, 0, half); });
  }

  /// dw += dL/dw, db += dL/dbias (when not null; the column sums of dy) and, with dx, dx = dL/dx,
  /// as conv_backward; with a worker the batch is split between the calling thread and it.
  static void conv_backward_bias(const ConvGeometry& g, const Tn& x, const Tn& w, const Tn& dy, Tn& dw, Tn* db,
                                 Tn* dx, ConvWorkspace<T>& ws, Precision p, detail::Worker* worker = nullptr) {
    if (dx) check_size(*dx, x.size(), "conv_backward");
    T* pdx = dx ? dx->data() : nullptr;
    if (!worker || g.n < 2) {
      backward_samples(g, x.data(), w.data(), dy.data(), dw.data(), db ? db->data() : nullptr, pdx, ws.col[0],
                       ws.dcol[0], p, 0, g.n);
      return;
    }
    const Index half = (g.n + 1) / 2;
    for (int t = 0; t < 2; ++t) {
      ws.dw[t].resize(dw.shape());
      ws.dw[t].set_zero();
      if (db) {
        ws.db[t].resize(db->shape());
        ws.db[t].set_zero();
      }
    }
    struct Job {
      const ConvGeometry* g;
      const T *x, *w, *dy;
      T *dw, *db, *dx;
      Tn *col, *dcol;
      Precision p;
      Index b0, b1;
    } job{&g, x.data(), w.data(), dy.data(), ws.dw[1].data(), db ? ws.db[1].data() : nullptr, pdx,
          &ws.col[1], &ws.dcol[1], p, half, g.n};
    const Job* j = &job;
    worker->run_alongside(
        [j] {
          backward_samples(*j->g, j->x, j->w, j->dy, j->dw, j->db, j->dx, *j->col, *j->dcol, j->p, j->b0, j->b1);
        },
        [&] {
          backward_samples(g, x.data(), w.data(), dy.data(), ws.dw[0].data(), db ? ws.db[0].data() : nullptr, pdx,
                           ws.col[0], ws.dcol[0], p, 0, half);
        });
    // the halves' gradients, always in this order
    add_sum(dw.data(), ws.dw[0].data(), ws.dw[1].data(), dw.size());
    if (db) add_sum(db->data(), ws.db[0].data(), ws.db[1].data(), db->size());
  }

  /// Samples per chunk of the blocked convolution: about kChunkValues values in the chunk's im2col
  /// block (or its output block, when larger); at least one sample.
  static Index chunk_samples(const ConvGeometry& g) {
    const Index per = g.oh * g.ow * std::max(g.groups * g.group_cols(), g.filters);
    return std::max<Index>(1, std::min<Index>(g.n, kChunkValues / std::max<Index>(per, 1)));
  }
  /// The chunk budget of chunk_samples(), in values.
  static constexpr Index kChunkValues = 64 * 1024;

  /// y [n, oh, ow, c] (sized by the caller): each window's maximum or mean over its real elements.
  /// With non-empty `lengths` (1-D: h == 1), sample b's input ends at lengths[b], and its outputs
  /// from ceil(lengths[b] / sw) on are zero.
  static void pool_forward(PoolKind kind, const ConvGeometry& g, const Tn& x, Tn& y, const Lengths& lengths = {}) {
    check_size(y, g.rows() * g.c, "pool_forward");
    if (!lengths.empty()) y.set_zero();
    // The channels are the inner loop (contiguous); each channel still visits its window in scan order.
    const Index c = g.c;
    for_each_window(g, lengths, [&](Index b, Index oy, Index ox, Index y0, Index y1, Index x0, Index x1) {
      T* out = y.data() + ((b * g.oh + oy) * g.ow + ox) * c;
      const T start = kind == PoolKind::Max ? -std::numeric_limits<T>::infinity() : T(0);
      for (Index k = 0; k < c; ++k) out[k] = start;
      for (Index iy = y0; iy < y1; ++iy)
        for (Index ix = x0; ix < x1; ++ix) {
          const T* v = x.data() + ((b * g.h + iy) * g.w + ix) * c;
          if (kind == PoolKind::Max)
            for (Index k = 0; k < c; ++k) out[k] = v[k] > out[k] ? v[k] : out[k];
          else
            for (Index k = 0; k < c; ++k) out[k] += v[k];
        }
      if (kind == PoolKind::Average) {
        const T count = static_cast<T>((y1 - y0) * (x1 - x0));
        for (Index k = 0; k < c; ++k) out[k] /= count;
      }
    });
  }

  /// dx = dL/dx (sized as x by the caller, overwritten) given dy [n, oh, ow, c]; `lengths` as for
  /// pool_forward (the padded steps get no gradient).
  static void pool_backward(PoolKind kind, const ConvGeometry& g, const Tn& x, const Tn& dy, Tn& dx,
                            const Lengths& lengths = {}) {
    check_size(dx, x.size(), "pool_backward");
    dx.set_zero();
    // Channels innermost, as in pool_forward; per channel the first largest element in scan order wins.
    const Index c = g.c;
    thread_local std::vector<Index> arg;
    thread_local std::vector<T> best;
    if (static_cast<Index>(arg.size()) < c) {
      arg.resize(static_cast<std::size_t>(c));
      best.resize(static_cast<std::size_t>(c));
    }
    for_each_window(g, lengths, [&](Index b, Index oy, Index ox, Index y0, Index y1, Index x0, Index x1) {
      const T* d = dy.data() + ((b * g.oh + oy) * g.ow + ox) * c;
      if (kind == PoolKind::Average) {
        const T count = static_cast<T>((y1 - y0) * (x1 - x0));
        for (Index iy = y0; iy < y1; ++iy)
          for (Index ix = x0; ix < x1; ++ix) {
            T* o = dx.data() + ((b * g.h + iy) * g.w + ix) * c;
            for (Index k = 0; k < c; ++k) o[k] += d[k] / count;
          }
        return;
      }
      const Index first = ((b * g.h + y0) * g.w + x0) * c;
      for (Index k = 0; k < c; ++k) {
        arg[static_cast<std::size_t>(k)] = first + k;
        best[static_cast<std::size_t>(k)] = x.data()[first + k];
      }
      for (Index iy = y0; iy < y1; ++iy)
        for (Index ix = x0; ix < x1; ++ix) {
          const Index at = ((b * g.h + iy) * g.w + ix) * c;
          const T* v = x.data() + at;
          for (Index k = 0; k < c; ++k)
            if (v[k] > best[static_cast<std::size_t>(k)]) {
              best[static_cast<std::size_t>(k)] = v[k];
              arg[static_cast<std::size_t>(k)] = at + k;
            }
        }
      for (Index k = 0; k < c; ++k) dx.data()[arg[static_cast<std::size_t>(k)]] += d[k];
    });
  }

  /// y [n, c] (sized by the caller): max or mean of x [n, s, c] over each sample's first
  /// lengths[i] steps (all s when lengths is empty).
  static void global_pool_forward(PoolKind kind, const Tn& x, const Lengths& lengths, Tn& y) {
    const Index n = x.dim(0), c = x.dim(x.rank() - 1), s = x.size() / (n * c);
    check_size(y, n * c, "global_pool_forward");
    for (Index b = 0; b < n; ++b) {
      const Index len = lengths.empty() ? s : lengths[b];
      for (Index k = 0; k < c; ++k) {
        T acc = kind == PoolKind::Max ? -std::numeric_limits<T>::infinity() : T(0);
        for (Index t = 0; t < len; ++t) {
          const T v = x.data()[(b * s + t) * c + k];
          if (kind == PoolKind::Max) acc = v > acc ? v : acc;
          else acc += v;
        }
        y.data()[b * c + k] = kind == PoolKind::Max ? acc : acc / static_cast<T>(len);
      }
    }
  }

  /// dx = dL/dx (sized as x by the caller, overwritten; zero on the padded steps) given dy [n, c].
  static void global_pool_backward(PoolKind kind, const Tn& x, const Lengths& lengths, const Tn& dy, Tn& dx) {
    const Index n = x.dim(0), c = x.dim(x.rank() - 1), s = x.size() / (n * c);
    check_size(dx, x.size(), "global_pool_backward");
    dx.set_zero();
    for (Index b = 0; b < n; ++b) {
      const Index len = lengths.empty() ? s : lengths[b];
      for (Index k = 0; k < c; ++k) {
        const T d = dy.data()[b * c + k];
        if (kind == PoolKind::Average) {
          for (Index t = 0; t < len; ++t) dx.data()[(b * s + t) * c + k] += d / static_cast<T>(len);
          continue;
        }
        Index arg = b * s * c + k;
        for (Index t = 1; t < len; ++t)
          if (x.data()[(b * s + t) * c + k] > x.data()[arg]) arg = (b * s + t) * c + k;
        dx.data()[arg] += d;
      }
    }
  }

  /// Per-channel mean and biased variance of x viewed as [m, c] (c = its last extent), summed in
  /// double, channel by channel (no workspace).
  static void batch_norm_moments(const Tn& x, Tn& mean, Tn& var) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    // Rows outer and channels inner (contiguous); each channel's sums still run over the rows in order.
    std::vector<double>& s = scratch(0, c);
    std::vector<double>& q = scratch(1, c);
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      for (Index k = 0; k < c; ++k) s[static_cast<std::size_t>(k)] += static_cast<double>(r[k]);
    }
    for (Index k = 0; k < c; ++k) s[static_cast<std::size_t>(k)] /= static_cast<double>(m);
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      for (Index k = 0; k < c; ++k) {
        const double d = static_cast<double>(r[k]) - s[static_cast<std::size_t>(k)];
        q[static_cast<std::size_t>(k)] += d * d;
      }
    }
    for (Index k = 0; k < c; ++k) {
      mean[k] = static_cast<T>(s[static_cast<std::size_t>(k)]);
      var[k] = static_cast<T>(q[static_cast<std::size_t>(k)] / static_cast<double>(m));
    }
  }

  /// y (sized as x by the caller) = gamma (x - mean) / sqrt(var + eps) + beta per channel
  /// (gamma 1 and beta 0 when null).
  static void batch_norm_apply(const Tn& x, const Tn& mean, const Tn& var, T eps, const Tn* gamma, const Tn* beta,
                               Tn& y) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    check_size(y, x.size(), "batch_norm_apply");
    thread_local std::vector<T> a, b, mu;
    a.resize(static_cast<std::size_t>(c));
    b.resize(static_cast<std::size_t>(c));
    mu.resize(static_cast<std::size_t>(c));
    for (Index k = 0; k < c; ++k) {
      a[static_cast<std::size_t>(k)] = (gamma ? (*gamma)[k] : T(1)) / std::sqrt(var[k] + eps);
      b[static_cast<std::size_t>(k)] = beta ? (*beta)[k] : T(0);
      mu[static_cast<std::size_t>(k)] = mean[k];
    }
    const T* pa = a.data();
    const T* pb = b.data();
    const T* pm = mu.data();
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      T* o = y.data() + i * c;
      for (Index k = 0; k < c; ++k) o[k] = (r[k] - pm[k]) * pa[k] + pb[k];
    }
  }

  /// Gradients of batch_norm_apply given dy: dgamma += sum dy xhat, dbeta += sum dy (when not
  /// null), and with dx (sized as x by the caller), dx = dL/dx. With `batch_stats`, mean and var are the batch's own
  /// moments (training), so dx includes their dependence on x:
  /// dx = a / m (m dy - sum dy - xhat sum(dy xhat)), a = gamma / sqrt(var + eps); else dx = a dy.
  static void batch_norm_backward(const Tn& x, const Tn& mean, const Tn& var, T eps, const Tn* gamma, const Tn& dy,
                                  Tn* dgamma, Tn* dbeta, Tn* dx, bool batch_stats) {
    const Index c = x.dim(x.rank() - 1), m = x.size() / c;
    if (dx) check_size(*dx, x.size(), "batch_norm_backward");
    // Rows outer and channels inner (contiguous); each channel's sums still run over the rows in order.
    std::vector<double>& inv = scratch(0, c);
    std::vector<double>& mu = scratch(1, c);
    std::vector<double>& sd = scratch(2, c);
    std::vector<double>& sdx = scratch(3, c);
    for (Index k = 0; k < c; ++k) {
      inv[static_cast<std::size_t>(k)] = 1.0 / std::sqrt(static_cast<double>(var[k] + eps));
      mu[static_cast<std::size_t>(k)] = static_cast<double>(mean[k]);
    }
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      const T* e = dy.data() + i * c;
      for (Index k = 0; k < c; ++k) {
        const std::size_t u = static_cast<std::size_t>(k);
        const double d = static_cast<double>(e[k]);
        sd[u] += d;
        sdx[u] += d * (static_cast<double>(r[k]) - mu[u]) * inv[u];
      }
    }
    for (Index k = 0; k < c; ++k) {
      if (dgamma) (*dgamma)[k] += static_cast<T>(sdx[static_cast<std::size_t>(k)]);
      if (dbeta) (*dbeta)[k] += static_cast<T>(sd[static_cast<std::size_t>(k)]);
    }
    if (!dx) return;
    std::vector<double>& a = scratch(4, c);
    for (Index k = 0; k < c; ++k) {
      const std::size_t u = static_cast<std::size_t>(k);
      a[u] = (gamma ? static_cast<double>((*gamma)[k]) : 1.0) * inv[u];
    }
    const double md = static_cast<double>(m);
    for (Index i = 0; i < m; ++i) {
      const T* r = x.data() + i * c;
      const T* e = dy.data() + i * c;
      T* o = dx->data() + i * c;
      for (Index k = 0; k < c; ++k) {
        const std::size_t u = static_cast<std::size_t>(k);
        const double d = static_cast<double>(e[k]);
        const double xhat = (static_cast<double>(r[k]) - mu[u]) * inv[u];
        o[k] = static_cast<T>(batch_stats ? a[u] / md * (md * d - sd[u] - xhat * sdx[u]) : a[u] * d);
      }
    }
  }

  /// y = x with its per-sample axes permuted: y's axis j is x's per-sample axis perm[j]
  /// (0-based, the batch axis excluded). With `inverse`, the permutation is applied backwards
  /// (x's axis perm[j] is y's axis j), which is the gradient of the forward permutation.
  static void permute(const Tn& x, const std::vector<Index>& perm, Tn& y, bool inverse = false) {
    const int r = static_cast<int>(perm.size());
    if (r > kMaxRank) throw ShapeError("permute: at most " + std::to_string(kMaxRank) + " axes");
    const Shape s = x.shape();
    std::array<Index, kMaxRank> in_dims{}, out_dims{}, src_axis{}, in_stride{}, idx{};
    for (int j = 0; j < r; ++j) in_dims[j] = s[j + 1];
    for (int j = 0; j < r; ++j) {  // src_axis[j]: the input axis that output axis j walks
      if (!inverse) src_axis[j] = perm[static_cast<std::size_t>(j)];
      else src_axis[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = j;
    }
    Shape out = s;
    for (int j = 0; j < r; ++j) out_dims[j] = in_dims[static_cast<std::size_t>(src_axis[j])];
    for (int j = 0; j < r; ++j) out[j + 1] = out_dims[j];
    in_stride[static_cast<std::size_t>(r - 1)] = 1;
    for (int j = r - 2; j >= 0; --j) in_stride[j] = in_stride[j + 1] * in_dims[j + 1];
    y.resize(out);
    const Index per = s[0] > 0 ? x.size() / s[0] : 0;
    for (Index b = 0; b < s[0]; ++b) {
      idx.fill(0);
      const T* in = x.data() + b * per;
      T* o = y.data() + b * per;
      for (Index e = 0; e < per; ++e) {
        Index at = 0;
        for (int j = 0; j < r; ++j) at += idx[j] * in_stride[static_cast<std::size_t>(src_axis[j])];
        o[e] = in[at];
        for (int j = r - 1; j >= 0; --j) {
          if (++idx[j] < out_dims[j]) break;
          idx[j] = 0;
        }
      }
    }
  }
  /// The most per-sample axes permute() takes.
  static constexpr int kMaxRank = 8;

  /// y = x [n, s, ...] with the steps from each sample's length on set to zero (y sized as x by
  /// the caller; it may be x itself).
  static void mask_steps(const Tn& x, const Lengths& lengths, Tn& y) {
    const Index n = x.dim(0), s = x.dim(1), inner = s > 0 ? x.size() / (n * s) : 0;
    check_size(y, x.size(), "mask_steps");
    for (Index b = 0; b < n; ++b) {
      const Index len = lengths.empty() ? s : lengths[b];
      const T* in = x.data() + b * s * inner;
      T* out = y.data() + b * s * inner;
      if (in != out) std::copy(in, in + len * inner, out);
      std::fill(out + len * inner, out + s * inner, T(0));
    }
  }

 private:
  /// im2col for one group without column dilation: a window row is one run of kw * c input
  /// values; the windows that lie wholly inside the row are copied by a plain loop (no call per
  /// run, which dominates when the runs are short, as with one input channel).
  static void im2col_runs(const ConvGeometry& g, const T* in, T* out) {
    switch (g.kw * g.c) {  // short runs with a fixed length: no loop overhead per run
      case 1: return im2col_runs<1>(g, in, out);
      case 2: return im2col_runs<2>(g, in, out);
      case 3: return im2col_runs<3>(g, in, out);
      case 4: return im2col_runs<4>(g, in, out);
      case 5: return im2col_runs<5>(g, in, out);
      case 6: return im2col_runs<6>(g, in, out);
      case 7: return im2col_runs<7>(g, in, out);
      case 8: return im2col_runs<8>(g, in, out);
      default: return im2col_runs<0>(g, in, out);
    }
  }
  /// im2col_runs with runs of R values (0: any length, g.kw * g.c).
  template <int R>
  static void im2col_runs(const ConvGeometry& g, const T* in, T* out) {
    const Index run = R > 0 ? R : g.kw * g.c, width = g.kh * run;
    for (Index b = 0; b < g.n; ++b)
      for (Index oy = 0; oy < g.oh; ++oy) {
        T* rows = out + (b * g.oh + oy) * g.ow * width;
        for (Index i = 0; i < g.kh; ++i) {
          const Index iy = oy * g.sh - g.pt + i * g.dh;
          if (iy < 0 || iy >= g.h) {
            for (Index ox = 0; ox < g.ow; ++ox) {
              T* dst = rows + ox * width + i * run;
              std::fill(dst, dst + run, T(0));
            }
            continue;
          }
          const T* src = in + (b * g.h + iy) * g.w * g.c;
          for (Index ox = 0; ox < g.ow; ++ox) {
            T* dst = rows + ox * width + i * run;
            const Index x0 = ox * g.sw - g.pl;
            if (x0 >= 0 && x0 + g.kw <= g.w) {
              const T* s = src + x0 * g.c;
              for (Index k = 0; k < run; ++k) dst[k] = s[k];
              continue;
            }
            const Index lo = std::max<Index>(0, -x0), hi = std::max(lo, std::min(g.kw, g.w - x0));
            for (Index k = 0; k < lo * g.c; ++k) dst[k] = T(0);
            for (Index k = lo * g.c; k < hi * g.c; ++k) dst[k] = src[x0 * g.c + k];
            for (Index k = hi * g.c; k < run; ++k) dst[k] = T(0);
          }
        }
      }
  }
  /// Samples [b0, b1) of conv_forward (+ bias when not null), chunk by chunk.
  static void forward_samples(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y, Tn& col,
                              Precision p, Index b0, Index b1) {
    const Index kc = g.group_cols(), fg = g.filters / g.groups, width = g.groups * kc, f = g.filters;
    const Index cs = chunk_samples(g), in_per = g.h * g.w * g.c, out_per = g.oh * g.ow * f;
    for (Index b = b0; b < b1; b += cs) {
      ConvGeometry gc = g;
      gc.n = std::min(cs, b1 - b);
      col.resize(Shape{gc.rows(), width});
      im2col(gc, x + b * in_per, col.data());
      T* yc = y + b * out_per;
      for (Index gi = 0; gi < g.groups; ++gi)
        cpu_gemm(false, false, gc.rows(), fg, kc, T(1), col.data() + gi * kc, width, w + gi * fg, f, T(0), yc + gi * fg,
                 f, p);
      if (!bias) continue;
      for (Index r = 0, rows = gc.rows(); r < rows; ++r) {
        T* o = yc + r * f;
        for (Index k = 0; k < f; ++k) o[k] += bias[k];
      }
    }
  }
  /// Samples [b0, b1) of conv_backward: dw += their kernel gradient, db += their bias gradient
  /// (when not null), dx (when not null) = their input gradient; chunk by chunk.
  static void backward_samples(const ConvGeometry& g, const T* x, const T* w, const T* dy, T* dw, T* db, T* dx,
                               Tn& col, Tn& dcol, Precision p, Index b0, Index b1) {
    const Index kc = g.group_cols(), fg = g.filters / g.groups, width = g.groups * kc, f = g.filters;
    const Index cs = chunk_samples(g), in_per = g.h * g.w * g.c, out_per = g.oh * g.ow * f;
    for (Index b = b0; b < b1; b += cs) {
      ConvGeometry gc = g;
      gc.n = std::min(cs, b1 - b);
      const Index rows = gc.rows();
      const T* dyc = dy + b * out_per;
      col.resize(Shape{rows, width});
      im2col(gc, x + b * in_per, col.data());
      for (Index gi = 0; gi < g.groups; ++gi)
        cpu_gemm(true, false, kc, fg, rows, T(1), col.data() + gi * kc, width, dyc + gi * fg, f, T(1), dw + gi * fg, f,
                 p);
      if (db)
        for (Index r = 0; r < rows; ++r) {
          const T* d = dyc + r * f;
          for (Index k = 0; k < f; ++k) db[k] += d[k];
        }
      if (!dx) continue;
      dcol.resize(Shape{rows, width});
      for (Index gi = 0; gi < g.groups; ++gi)
        cpu_gemm(false, true, rows, kc, fg, T(1), dyc + gi * fg, f, w + gi * fg, f, T(0), dcol.data() + gi * kc, width,
                 p);
      T* dxc = dx + b * in_per;
      std::fill(dxc, dxc + gc.n * in_per, T(0));
      col2im_add(gc, dcol.data(), dxc);
    }
  }
  /// out[i] = (out[i] + a[i]) + b[i]: the two halves' gradients added in a fixed order.
  static void add_sum(T* out, const T* a, const T* b, Index n) {
    for (Index i = 0; i < n; ++i) out[i] = (out[i] + a[i]) + b[i];
  }
  static void check_size(const Tn& t, Index n, const char* who) {
    if (t.size() != n)
      throw ShapeError(std::string(who) + ": output holds " + std::to_string(t.size()) + " values, expected " +
                       std::to_string(n));
  }
  /// Per-thread scratch vector `i` of n zeros (its storage is kept: no allocation once it has grown).
  static std::vector<double>& scratch(int i, Index n) {
    thread_local std::array<std::vector<double>, 5> v;
    auto& s = v[static_cast<std::size_t>(i)];
    s.assign(static_cast<std::size_t>(n), 0.0);
    return s;
  }
  /// Calls f(b, oy, ox, y0, y1, x0, x1) for every window, [y0, y1) x [x0, x1) being its real rows
  /// and columns (padding cut off; never empty for a geometry from a valid build()).
  /// With lengths, sample b's columns end at lengths[b] and its windows at ceil(lengths[b] / sw).
  template <class F>
  static void for_each_window(const ConvGeometry& g, const Lengths& lengths, F&& f) {
    for (Index b = 0; b < g.n; ++b) {
      const Index w = lengths.empty() ? g.w : lengths[b];
      const Index ow = lengths.empty() ? g.ow : std::min(g.ow, (w + g.sw - 1) / g.sw);
      for (Index oy = 0; oy < g.oh; ++oy) {
        const Index ys = oy * g.sh - g.pt, y0 = std::max<Index>(ys, 0), y1 = std::min(ys + g.kh, g.h);
        for (Index ox = 0; ox < ow; ++ox) {
          const Index xs = ox * g.sw - g.pl, x0 = std::max<Index>(xs, 0), x1 = std::min(xs + g.kw, w);
          if (x1 > x0 && y1 > y0) f(b, oy, ox, y0, y1, x0, x1);
        }
      }
    }
  }
};

}  // namespace fastnn
