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

/// A dataset for a model of several inputs and outputs (model/graph.hpp), Keras's fit(x={name: ...},
/// y={name: ...}): named input columns (features [N, input shape...] and optional lengths) and named output
/// columns (class labels or float targets, as in Dataset), all of N samples, and optional per-sample weights.
/// Model::fit matches the names against the model's inputs (Input names) and outputs (the names of the layers
/// that make them); a name the model does not have, or one it has that is missing, is an ArgumentError naming
/// both lists. A Dataset is the one-input, one-output case (NamedDataset::of).
template <class T = float, class D = Cpu>
struct NamedDataset {
  struct InputColumn {
    std::string name;
    Tensor<T, D> x;   ///< [N, input shape...]
    Lengths lengths;  ///< [N] real lengths (host), or empty: full length
  };
  struct OutputColumn {
    std::string name;
    Tensor<std::int32_t, D> labels;  ///< [N, ...] class indices, or empty
    Tensor<T, D> targets;            ///< [N, output shape...], or empty
    int num_classes = 0;
    bool has_labels() const { return labels.rank() > 0; }
    bool has_targets() const { return targets.rank() > 0; }
    Shape target_shape() const { return has_labels() ? labels.shape().drop_front() : targets.shape().drop_front(); }
  };
  std::vector<InputColumn> inputs;
  std::vector<OutputColumn> outputs;
  Tensor<double, Cpu> sample_weights;  ///< [N] per-sample loss weights (host), or empty: all 1

  /// Adds input `name`: x [N, ...] and optional lengths. ShapeError when N differs from the columns before.
  NamedDataset& input(const std::string& name, const Tensor<T, D>& x, const Lengths& lengths = Lengths()) {
    if (x.rank() < 1) throw ShapeError("NamedDataset::input '" + name + "': features of shape " + x.shape().str());
    check_count("input '" + name + "'", x.dim(0));
    if (lengths.rank() > 0) {
      if (x.rank() < 2)
        throw ShapeError("NamedDataset::input '" + name + "': lengths for samples " + x.shape().str() +
                         " that are not sequences");
      check_lengths(lengths, x.dim(0), x.dim(1), "NamedDataset::input '" + name + "'");
    }
    inputs.push_back({name, x, lengths});
    return *this;
  }
  /// Adds output `name` with class labels [N, ...] below num_classes (ArgumentError naming a sample's bad label).
  NamedDataset& labels(const std::string& name, const Tensor<std::int32_t, D>& y, int num_classes) {
    if (y.rank() < 1) throw ShapeError("NamedDataset::labels '" + name + "': labels of shape " + y.shape().str());
    if (num_classes <= 0)
      throw ArgumentError("NamedDataset::labels '" + name + "': num_classes must be positive, got " +
                          std::to_string(num_classes));
    check_count("output '" + name + "'", y.dim(0));
    const auto h = to_device<Cpu>(y);
    const Index per = h.size() / (h.dim(0) ? h.dim(0) : 1);
    for (Index i = 0; i < h.size(); ++i)
      if (h[i] < 0 || h[i] >= num_classes)
        throw ArgumentError("NamedDataset::labels '" + name + "': label " + std::to_string(h[i]) + " of sample " +
                            std::to_string(i / per) + " is not in [0, " + std::to_string(num_classes) + ")");
    OutputColumn c;
    c.name = name;
    c.labels = y;
    c.num_classes = num_classes;
    outputs.push_back(std::move(c));
    return *this;
  }
  /// Adds output `name` with float targets [N, output shape...].
  NamedDataset& targets(const std::string& name, const Tensor<T, D>& t) {
    if (t.rank() < 2) throw ShapeError("NamedDataset::targets '" + name + "': targets of shape " + t.shape().str());
    check_count("output '" + name + "'", t.dim(0));
    OutputColumn c;
    c.name = name;
    c.targets = t;
    outputs.push_back(std::move(c));
    return *this;
  }
  NamedDataset& with_sample_weights(const Tensor<double, Cpu>& w) {
    if (w.rank() != 1 || w.dim(0) != size())
      throw ArgumentError("NamedDataset::with_sample_weights: " + std::to_string(w.size()) + " weights for " +
                          std::to_string(size()) + " samples");
    for (Index i = 0; i < w.size(); ++i)
      if (!(w[i] >= 0) || !std::isfinite(w[i]))
        throw ArgumentError("NamedDataset::with_sample_weights: the weight of sample " + std::to_string(i) + " is " +
                            std::to_string(w[i]) + " (must be finite and >= 0)");
    sample_weights = w;
    return *this;
  }

  Index size() const {
    if (!inputs.empty()) return inputs[0].x.dim(0);
    if (!outputs.empty()) return outputs[0].has_labels() ? outputs[0].labels.dim(0) : outputs[0].targets.dim(0);
    return 0;
  }
  bool has_sample_weights() const { return sample_weights.rank() > 0; }
  /// Samples [begin, end) (views, no copy).
  NamedDataset slice(Index begin, Index end) const {
    if (begin < 0 || end > size() || begin > end)
      throw ArgumentError("NamedDataset::slice: [" + std::to_string(begin) + ", " + std::to_string(end) + ") of " +
                          std::to_string(size()) + " samples");
    NamedDataset d;
    for (const auto& c : inputs)
      d.inputs.push_back({c.name, c.x.rows(begin, end), c.lengths.rank() ? c.lengths.rows(begin, end) : Lengths()});
    for (const auto& c : outputs) {
      OutputColumn o = c;
      if (c.has_labels()) o.labels = c.labels.rows(begin, end);
      if (c.has_targets()) o.targets = c.targets.rows(begin, end);
      d.outputs.push_back(std::move(o));
    }
    if (has_sample_weights()) d.sample_weights = sample_weights.rows(begin, end);
    return d;
  }
  /// The one-input, one-output dataset `d` as columns without names (views, no copy).
  static NamedDataset of(const Dataset<T, D>& d) {
    NamedDataset n;
    n.inputs.push_back({std::string(), d.x, d.lengths});
    OutputColumn o;
    o.labels = d.labels;
    o.targets = d.targets;
    o.num_classes = d.num_classes;
    n.outputs.push_back(std::move(o));
    n.sample_weights = d.sample_weights;
    return n;
  }

 private:
  void check_count(const std::string& what, Index n) const {
    if ((!inputs.empty() || !outputs.empty()) && n != size())
      throw ShapeError("NamedDataset: " + what + " has " + std::to_string(n) + " samples, the columns before it " +
                       std::to_string(size()));
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
