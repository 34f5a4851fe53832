#pragma once
/// \file rnn_base.hpp
/// What the CPU recurrent kernels (lstm.hpp, gru.hpp, simple_rnn.hpp) share: the packed,
/// time-major layout of a batch of sequences of different lengths, and the copies into and out
/// of it.
///
/// Layout (PyTorch's PackedSequence): the samples are ordered by length, longest first (stable,
/// so a batch of equal lengths keeps its order). Step t holds the `active(t)` samples longer than
/// t, as the rows [off(t), off(t) + active(t)) of a matrix of sum(lengths) rows; row off(t) + j
/// is packed sample j. Every step's rows are contiguous, and the rows of step t are the first
/// rows of step t - 1's, so one GEMM per step covers exactly the samples still running: the cost
/// follows the real steps, not the padded maximum. With every sample at full length the layout
/// is the plain time-major [S, B] one.
///
/// The hidden states h are kept in a matrix of B + sum(lengths) rows: rows [0, B) are the zero
/// initial state, and h after step t of packed sample j is row B + off(t) + j. The previous state
/// of the rows of step t (t >= 1) is then the contiguous block starting at B + off(t - 1).

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "fastnn/backend/rnn.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

template <class T>
using ArrT = Eigen::Array<T, Eigen::Dynamic, 1>;
template <class T>
using ArrMap = Eigen::Map<ArrT<T>>;
template <class T>
using CArrMap = Eigen::Map<const ArrT<T>>;
template <class T>
using MatMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using CMatMap = Eigen::Map<const RowMatrix<T>>;
/// A column block of a row-major matrix (e.g. the gates [H, 2H) of U [H, 3H]).
template <class T>
using CBlockMap = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using BlockMap = Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>;

/// The packed layout of one batch (see the file comment).
class PackedPlan {
 public:
  /// `lengths`: host [batch] with 1 <= length <= steps (checked by the layer), or null.
  void make(Index batch, Index steps, const std::int32_t* lengths) {
    B_ = batch;
    S_ = steps;
    full_ = true;
    if (lengths)
      for (Index b = 0; b < batch; ++b)
        if (lengths[b] != steps) full_ = false;
    order_.resize(static_cast<std::size_t>(batch));
    len_.resize(static_cast<std::size_t>(batch));
    std::iota(order_.begin(), order_.end(), Index(0));
    if (!full_)
      std::stable_sort(order_.begin(), order_.end(), [&](Index a, Index b) { return lengths[a] > lengths[b]; });
    for (Index j = 0; j < batch; ++j) len_[j] = full_ ? steps : lengths[order_[j]];
    active_.assign(static_cast<std::size_t>(steps), 0);
    off_.assign(static_cast<std::size_t>(steps + 1), 0);
    Index n = batch;
    for (Index t = 0; t < steps; ++t) {
      while (n > 0 && len_[n - 1] <= t) --n;
      active_[t] = n;
      off_[t + 1] = off_[t] + n;
    }
  }
  bool full() const { return full_; }
  Index batch() const { return B_; }
  Index steps() const { return S_; }
  /// Sample of packed row j.
  Index sample(Index j) const { return order_[j]; }
  /// Length of packed sample j.
  Index length(Index j) const { return len_[j]; }
  /// Samples still running at step t.
  Index active(Index t) const { return active_[t]; }
  /// First packed row of step t; off(steps) = sum of the lengths.
  Index off(Index t) const { return off_[t]; }
  Index total() const { return off_[S_]; }
  /// The input step of packed sample j read at processing step t.
  Index source_step(Index j, Index t, bool backwards) const { return backwards ? len_[j] - 1 - t : t; }

  /// xp [total, F] (rows `ld` apart, default F) from x [B, S, F] (batch-major), reversed per
  /// sample when `backwards`.
  template <class T>
  void pack(const T* x, Index F, bool backwards, T* xp, Index ld = 0) const {
    if (ld <= 0) ld = F;
    for (Index t = 0; t < S_; ++t)
      for (Index j = 0; j < active_[t]; ++j) {
        const T* s = x + (order_[j] * S_ + source_step(j, t, backwards)) * F;
        std::copy(s, s + F, xp + (off_[t] + j) * ld);
      }
  }
  /// The inverse of pack: dx [B, S, F] from dxp [total, F]; padded steps get zeros.
  template <class T>
  void unpack(const T* dxp, Index F, bool backwards, T* dx) const {
    if (!full_) std::fill(dx, dx + B_ * S_ * F, T(0));
    for (Index t = 0; t < S_; ++t)
      for (Index j = 0; j < active_[t]; ++j) {
        const T* s = dxp + (off_[t] + j) * F;
        std::copy(s, s + F, dx + (order_[j] * S_ + source_step(j, t, backwards)) * F);
      }
  }
  /// The layer's output from the hidden states hs (B + total rows of H, see the file comment):
  /// with `sequences` y [B, S, H] in processing order (zeros after each sample's length), else
  /// y [B, H], the state after each sample's last step.
  template <class T>
  void outputs(const T* hs, Index H, bool sequences, T* y) const {
    if (sequences) {
      if (!full_) std::fill(y, y + B_ * S_ * H, T(0));
      for (Index t = 0; t < S_; ++t)
        for (Index j = 0; j < active_[t]; ++j) {
          const T* h = hs + (B_ + off_[t] + j) * H;
          std::copy(h, h + H, y + (order_[j] * S_ + t) * H);
        }
    } else {
      for (Index j = 0; j < B_; ++j) {
        const T* h = hs + (B_ + off_[len_[j] - 1] + j) * H;
        std::copy(h, h + H, y + order_[j] * H);
      }
    }
  }
  /// Adds the output gradient of processing step t into dh [B, H] (rows by packed sample).
  template <class T>
  void add_output_grad(const T* dy, Index H, bool sequences, Index t, T* dh) const {
    if (sequences) {
      for (Index j = 0; j < active_[t]; ++j)
        ArrMap<T>(dh + j * H, H) += CArrMap<T>(dy + (order_[j] * S_ + t) * H, H);
    } else if (full_) {
      if (t == S_ - 1) ArrMap<T>(dh, B_ * H) += CArrMap<T>(dy, B_ * H);
    } else {
      for (Index j = active_[t]; j-- > 0 && len_[j] - 1 == t;)
        ArrMap<T>(dh + j * H, H) += CArrMap<T>(dy + order_[j] * H, H);
    }
  }
  /// The previous hidden state of every packed row of steps >= 1, aligned with those rows
  /// (rows [off(1), total)): a view into hs when every sample has the full length, else a
  /// copy into `buf`. Used for the recurrent kernels' gradient, one GEMM over all steps.
  template <class T>
  const T* previous_states(const T* hs, Index H, Tensor<T, Cpu>& buf) const {
    if (full_) return hs + B_ * H;  // h_{t-1} of step t's row j is row B + (t-1) B + j
    buf.resize(Shape{std::max<Index>(total() - off_[1], 1), H});
    for (Index t = 1; t < S_; ++t) {
      const T* src = hs + (B_ + off_[t - 1]) * H;
      std::copy(src, src + active_[t] * H, buf.data() + (off_[t] - off_[1]) * H);
    }
    return buf.data();
  }

 private:
  Index B_ = 0, S_ = 0;
  bool full_ = true;
  std::vector<Index> order_, len_, active_, off_;
};

/// The logistic or hard sigmoid in place, and its derivative from its output.
template <class T, bool Hard>
inline void gate_act(ArrMap<T> z) {
  if constexpr (Hard) z = (T(0.2) * z + T(0.5)).max(T(0)).min(T(1));
  else z = T(1) / (T(1) + (-z).exp());
}
template <class T, bool Hard, class A>
inline auto gate_grad(const A& y) {
  if constexpr (Hard) return ((y > T(0)) && (y < T(1))).template cast<T>() * T(0.2);
  else return y * (T(1) - y);
}

}  // namespace detail
}  // namespace fastnn
