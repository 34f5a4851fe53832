#pragma once
/// \file dataset.hpp
/// An in-memory dataset on device D: float features and either integer class labels or float
/// targets.
///
///   x        [N, sample shape...]                    features, of the model's scalar type T
///   labels   [N] or [N, steps]                       class indices below num_classes (for
///                                                    SparseCategoricalCrossentropy), or empty
///   targets  [N, output shape...]                    float targets (every other loss), or empty
///   lengths  [N] int32, on the host                  each sample's real length when x holds
///                                                    sequences [N, steps, ...] padded at the end
///                                                    (core/lengths.hpp), or empty: full length
///
/// Sequential::fit shuffles and batches every dataset the same way: one permutation of the N
/// samples per epoch, and each batch gathers the same rows of x and of the labels or targets.
/// Raw bytes (such as uint8 images) are converted to T by make_dataset when the dataset is made,
/// on the host; the devices only ever see T. Token ids (int32) become T the same way; an
/// Embedding layer then looks them up (exact up to 2^24 for float).

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

namespace detail {

/// Throws ArgumentError naming the first sample of `t` [N, ...] that holds a NaN or infinity.
template <class T>
void check_finite_samples(const Tensor<T, Cpu>& t, const char* what) {
  const Index per = t.size() / (t.dim(0) ? t.dim(0) : 1);
  for (Index i = 0; i < t.size(); ++i)
    if (!std::isfinite(t[i]))
      throw ArgumentError(std::string("make_dataset: ") + what + " of sample " + std::to_string(i / per) +
                          " hold a non-finite value at position " + std::to_string(i % per));
}

}  // namespace detail

template <class T = float, class D = Cpu>
struct Dataset {
  using value_type = T;
  Tensor<T, D> x;                       ///< [N, sample shape...]
  Tensor<std::int32_t, D> labels;       ///< [N, ...] class indices, or empty
  Tensor<T, D> targets;                 ///< [N, ...] float targets, or empty
  Lengths lengths;                      ///< [N] sequence lengths (host), or empty: full length
  int num_classes = 0;                  ///< with labels: every label is below it
  Tensor<double, Cpu> sample_weights;   ///< [N] per-sample loss weights (host), or empty: all 1

  Index size() const { return x.rank() ? x.dim(0) : 0; }
  Shape sample_shape() const { return x.shape().drop_front(); }
  bool has_labels() const { return labels.rank() > 0; }
  bool has_targets() const { return targets.rank() > 0; }
  bool has_lengths() const { return lengths.rank() > 0; }
  bool has_sample_weights() const { return sample_weights.rank() > 0; }
  /// The per-sample shape of the labels or of the targets.
  Shape target_shape() const { return has_labels() ? labels.shape().drop_front() : targets.shape().drop_front(); }

  /// Samples [begin, end) (views, no copy).
  Dataset slice(Index begin, Index end) const {
    if (begin < 0 || end > size() || begin > end)
      throw ArgumentError("Dataset::slice: [" + std::to_string(begin) + ", " + std::to_string(end) + ") of " +
                          std::to_string(size()) + " samples");
    Dataset d;
    d.x = x.rows(begin, end);
    if (has_labels()) d.labels = labels.rows(begin, end);
    if (has_targets()) d.targets = targets.rows(begin, end);
    if (has_lengths()) d.lengths = lengths.rows(begin, end);
    if (has_sample_weights()) d.sample_weights = sample_weights.rows(begin, end);
    d.num_classes = num_classes;
    return d;
  }
  /// The first n samples (views, no copy).
  Dataset head(Index n) const {
    if (n < 0 || n > size())
      throw ArgumentError("Dataset::head: " + std::to_string(n) + " of " + std::to_string(size()) + " samples");
    return slice(0, n);
  }
  /// A copy on device D2 (the data then stays resident there).
  template <class D2>
  Dataset<T, D2> to() const {
    Dataset<T, D2> d;
    d.x = to_device<D2>(x);
    if (has_labels()) d.labels = to_device<D2>(labels);
    if (has_targets()) d.targets = to_device<D2>(targets);
    d.lengths = lengths;
    d.sample_weights = sample_weights;
    d.num_classes = num_classes;
    return d;
  }
  /// Sets the per-sample lengths of sequence data x [N, steps, ...]; throws ShapeError for a
  /// count other than N and ArgumentError naming the sample of a length of 0 or above steps.
  /// Keras's sample_weight: each sample's loss is multiplied by its weight in training (see
  /// FitOptions::class_weight for the reduction). ArgumentError naming the counts, or the sample whose weight
  /// is negative or not finite.
  Dataset& with_sample_weights(const Tensor<double, Cpu>& w) {
    if (w.rank() != 1 || w.dim(0) != size())
      throw ArgumentError("Dataset::with_sample_weights: " + std::to_string(w.rank() == 1 ? w.dim(0) : w.size()) +
                          " sample weights " + w.shape().str() + " for " + std::to_string(size()) + " samples");
    for (Index i = 0; i < w.size(); ++i)
      if (!(w[i] >= 0) || !std::isfinite(w[i]))
        throw ArgumentError("Dataset::with_sample_weights: the weight of sample " + std::to_string(i) + " is " +
                            std::to_string(w[i]) + " (must be finite and >= 0)");
    sample_weights = w;
    return *this;
  }
  Dataset& with_lengths(const Lengths& l) {
    if (x.rank() < 2) throw ShapeError("Dataset::with_lengths: the samples " + sample_shape().str() + " are not sequences");
    if (l.rank() != 1 || l.dim(0) != size())
      throw ShapeError("Dataset::with_lengths: lengths " + l.shape().str() + " for " + std::to_string(size()) + " samples");
    check_lengths(l, size(), x.dim(1), "Dataset::with_lengths");
    lengths = l;
    return *this;
  }
};

/// A classification dataset from features x [N, ...] and class labels [N, ...] (one per sample,
/// or one per step of a sequence). Throws ShapeError when the sample counts differ and
/// ArgumentError naming the sample (and position) of a label outside [0, num_classes) or of a
/// non-finite feature.
template <class T>
Dataset<T, Cpu> make_dataset(const Tensor<T, Cpu>& x, const Tensor<std::int32_t, Cpu>& labels, int num_classes) {
  if (x.rank() < 2 || labels.rank() < 1 || labels.dim(0) != x.dim(0))
    throw ShapeError("make_dataset: features " + x.shape().str() + " and labels " + labels.shape().str() +
                     " (expected [N, ...] and [N, ...] with the same N)");
  if (num_classes <= 0) throw ArgumentError("make_dataset: num_classes must be positive, got " + std::to_string(num_classes));
  const Index per = labels.size() / (labels.dim(0) ? labels.dim(0) : 1);
  for (Index i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= num_classes)
      throw ArgumentError("make_dataset: label " + std::to_string(labels[i]) + " of sample " + std::to_string(i / per) +
                          (per > 1 ? " at position " + std::to_string(i % per) : std::string()) + " is not in [0, " +
                          std::to_string(num_classes) + ")");
  Dataset<T, Cpu> d;
  d.x = x;
  d.labels = labels;
  d.num_classes = num_classes;
  detail::check_finite_samples(d.x, "features");
  return d;
}

/// A dataset of features x [N, ...] and float targets [N, ...] (regression, binary or
/// multi-label classification, per-step sequences). Throws ShapeError when the sample counts
/// differ and ArgumentError naming the sample of a non-finite value.
template <class T>
Dataset<T, Cpu> make_dataset(const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& targets) {
  if (x.rank() < 2 || targets.rank() < 2 || targets.dim(0) != x.dim(0))
    throw ShapeError("make_dataset: features " + x.shape().str() + " and targets " + targets.shape().str() +
                     " (expected [N, ...] and [N, ...] with the same N)");
  Dataset<T, Cpu> d;
  d.x = x;
  d.targets = targets;
  detail::check_finite_samples(d.x, "features");
  detail::check_finite_samples(d.targets, "targets");
  return d;
}

/// A classification dataset of token sequences: `tokens` [N, steps] int32 (0 is padding for an
/// Embedding with mask_zero) becomes x of T; labels as above. Throws ArgumentError naming the
/// sample and position of a negative id or one too large for T to hold exactly.
template <class T = float>
Dataset<T, Cpu> make_dataset(const Tensor<std::int32_t, Cpu>& tokens, const Tensor<std::int32_t, Cpu>& labels,
                             int num_classes) {
  if (tokens.rank() < 2)
    throw ShapeError("make_dataset: tokens " + tokens.shape().str() + " (expected [N, steps])");
  const Index per = tokens.size() / (tokens.dim(0) ? tokens.dim(0) : 1);
  const std::int64_t exact = std::int64_t(1) << std::numeric_limits<T>::digits;
  Tensor<T, Cpu> x(tokens.shape());
  for (Index i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] > exact)
      throw ArgumentError("make_dataset: token " + std::to_string(tokens[i]) + " of sample " + std::to_string(i / per) +
                          " at position " + std::to_string(i % per) + " is negative or not exact in " + dtype_name<T>());
    x[i] = static_cast<T>(tokens[i]);
  }
  return make_dataset(x, labels, num_classes);
}

/// A classification dataset from raw bytes, as IDX files hold images: `pixels` has n samples of
/// `sample_shape`, each byte becomes scale * byte (T), and `labels` has n class indices below
/// num_classes. Throws ArgumentError on inconsistent sizes or a label out of range (naming it).
template <class T = float>
Dataset<T, Cpu> make_dataset(const std::vector<std::uint8_t>& pixels, const std::vector<std::uint8_t>& labels,
                             const Shape& sample_shape, int num_classes, double scale = 1.0 / 255.0) {
  const Index n = static_cast<Index>(labels.size());
  if (static_cast<Index>(pixels.size()) != n * sample_shape.numel())
    throw ArgumentError("make_dataset: " + std::to_string(pixels.size()) + " bytes for " + std::to_string(n) +
                        " samples of shape " + sample_shape.str());
  Tensor<T, Cpu> x(sample_shape.prepend(n));
  const T s = static_cast<T>(scale);
  for (std::size_t i = 0; i < pixels.size(); ++i) x.data()[i] = s * static_cast<T>(pixels[i]);
  Tensor<std::int32_t, Cpu> y(Shape{n});
  for (Index i = 0; i < n; ++i) y[i] = labels[static_cast<std::size_t>(i)];
  return make_dataset(x, y, num_classes);
}

}  // namespace fastnn
