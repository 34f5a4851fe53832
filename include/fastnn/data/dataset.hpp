#pragma once
/// \file dataset.hpp
/// An in-memory classification dataset on device D: samples stay uint8 (4x smaller than
/// float) and are scaled per batch as they are gathered.

#include <cstdint>
#include <string>
#include <vector>

#include "fastnn/core/tensor.hpp"

namespace fastnn {

template <class D = Cpu>
struct Dataset {
  Tensor<std::uint8_t, D> x;  ///< [N, sample shape...]
  Tensor<std::int32_t, D> y;  ///< [N] class labels
  double scale = 1.0 / 255.0; ///< features = scale * x
  int num_classes = 0;

  Index size() const { return x.rank() ? x.dim(0) : 0; }
  Shape sample_shape() const { return x.shape().drop_front(); }
  /// The first n samples (a view, no copy).
  Dataset head(Index n) const {
    if (n < 0 || n > size()) throw ArgumentError("Dataset::head: " + std::to_string(n) + " of " + std::to_string(size()) + " samples");
    return Dataset{x.rows(0, n), y.rows(0, n), scale, num_classes};
  }
  /// A copy on device D2.
  template <class D2>
  Dataset<D2> to() const {
    return Dataset<D2>{to_device<D2>(x), to_device<D2>(y), scale, num_classes};
  }
};

/// Builds a host dataset from raw bytes: `pixels` holds n samples of `sample_shape`,
/// `labels` n class indices below num_classes. Throws ArgumentError on inconsistent sizes.
inline Dataset<Cpu> make_dataset(const std::vector<std::uint8_t>& pixels, const std::vector<std::uint8_t>& labels,
                                 const Shape& sample_shape, int num_classes, double scale = 1.0 / 255.0) {
  const Index n = static_cast<Index>(labels.size());
  if (static_cast<Index>(pixels.size()) != n * sample_shape.numel())
    throw ArgumentError("make_dataset: " + std::to_string(pixels.size()) + " bytes for " + std::to_string(n) +
                        " samples of shape " + sample_shape.str());
  Dataset<Cpu> d;
  d.x = Tensor<std::uint8_t, Cpu>(sample_shape.prepend(n));
  std::copy(pixels.begin(), pixels.end(), d.x.data());
  d.y = Tensor<std::int32_t, Cpu>(Shape{n});
  for (Index i = 0; i < n; ++i) {
    if (labels[static_cast<std::size_t>(i)] >= num_classes)
      throw ArgumentError("make_dataset: label " + std::to_string(labels[static_cast<std::size_t>(i)]) +
                          " at index " + std::to_string(i) + " is not below " + std::to_string(num_classes));
    d.y[i] = labels[static_cast<std::size_t>(i)];
  }
  d.scale = scale;
  d.num_classes = num_classes;
  return d;
}

}  // namespace fastnn
