#pragma once
/// \file mnist.hpp
/// Loader for the MNIST handwritten-digit data set, stored as IDX files (raw or gzip).
///
/// Get the data with `scripts/fetch-mnist.sh DIR`, then call `fastnn::data::load_mnist(DIR)`.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/data/idx.hpp"

namespace fastnn {
namespace data {

/// One MNIST split (train or test): `count` grey-scale images of `rows` x `cols` pixels and
/// their labels.
struct MnistSplit {
  /// Number of images (and labels).
  std::size_t count = 0;
  /// Image height in pixels (28 for MNIST).
  std::size_t rows = 0;
  /// Image width in pixels (28 for MNIST).
  std::size_t cols = 0;
  /// Pixels, `count * rows * cols` bytes, image after image, each row-major; 0 is background.
  std::vector<std::uint8_t> images;
  /// Labels, `count` values in 0..9.
  std::vector<std::uint8_t> labels;
};

/// The MNIST data set: 60000 training and 10000 test images.
struct Mnist {
  /// The training split (train-images-idx3-ubyte, train-labels-idx1-ubyte).
  MnistSplit train;
  /// The test split (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte).
  MnistSplit test;
};

/// Magic number of an MNIST image file: unsigned bytes, 3 dimensions.
inline constexpr std::uint32_t kMnistImagesMagic = 0x00000803;
/// Magic number of an MNIST label file: unsigned bytes, 1 dimension.
inline constexpr std::uint32_t kMnistLabelsMagic = 0x00000801;

/// Loads one split from an IDX3 image file and an IDX1 label file (each raw or gzip).
///
/// Throws fastnn::IoError if a file cannot be opened, and fastnn::FormatError if a file is
/// malformed (see read_idx), has the wrong magic number, if the number of labels differs from
/// the number of images (reported against the labels file), or if a label is greater than 9
/// (the message names the index and the value).
inline MnistSplit load_mnist_split(const std::string& images_path, const std::string& labels_path,
                                   const IdxLimits& limits = {}) {
  IdxArray images =
      detail::read_idx_impl(images_path, limits, kMnistImagesMagic, "IDX3 unsigned byte images");
  IdxArray labels =
      detail::read_idx_impl(labels_path, limits, kMnistLabelsMagic, "IDX1 unsigned byte labels");
  if (images.dims.size() != 3 || labels.dims.size() != 1) {
    // Cannot happen: the magic numbers fix the rank. Kept as a guard for future edits.
    throw FormatError(images.dims.size() != 3 ? images_path : labels_path, "magic",
                      "unexpected number of dimensions");
  }
  MnistSplit split;
  split.count = images.dims[0];
  split.rows = images.dims[1];
  split.cols = images.dims[2];
  if (labels.dims[0] != split.count) {
    throw FormatError(labels_path, "labels",
                      std::to_string(labels.dims[0]) + " labels for " +
                          std::to_string(split.count) + " images in " + images_path);
  }
  for (std::size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] > 9) {
      throw FormatError(labels_path, "label " + std::to_string(i),
                        "label at index " + std::to_string(i) + " is " +
                            std::to_string(static_cast<unsigned>(labels.data[i])) +
                            ", expected 0..9");
    }
  }
  split.images = std::move(images.data);
  split.labels = std::move(labels.data);
  return split;
}

namespace detail {

/// Returns `dir/name` if it exists, else `dir/name.gz` if that exists; throws IoError naming
/// both paths and the fetch script otherwise.
inline std::string find_mnist_file(const std::string& dir, const std::string& name) {
  const std::filesystem::path base = std::filesystem::path(dir) / name;
  const std::string raw = base.string();
  const std::string gz = raw + ".gz";
  std::error_code ec;
  if (std::filesystem::exists(raw, ec)) return raw;
  if (std::filesystem::exists(gz, ec)) return gz;
  throw IoError(raw, "cannot find MNIST file (tried " + raw + " and " + gz +
                         "); run scripts/fetch-mnist.sh " + dir + " to download it");
}

}  // namespace detail

/// Loads MNIST from `dir`, which must hold train-images-idx3-ubyte, train-labels-idx1-ubyte,
/// t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each raw or with a `.gz` suffix (the raw
/// file is used if both exist). Throws fastnn::IoError naming the paths tried (and suggesting
/// `scripts/fetch-mnist.sh DIR`) if a file is missing, and the errors of load_mnist_split if
/// one is malformed.
inline Mnist load_mnist(const std::string& dir, const IdxLimits& limits = {}) {
  // Locate all four files first, so a missing one is reported before anything is read.
  const std::string train_images = detail::find_mnist_file(dir, "train-images-idx3-ubyte");
  const std::string train_labels = detail::find_mnist_file(dir, "train-labels-idx1-ubyte");
  const std::string test_images = detail::find_mnist_file(dir, "t10k-images-idx3-ubyte");
  const std::string test_labels = detail::find_mnist_file(dir, "t10k-labels-idx1-ubyte");
  Mnist m;
  m.train = load_mnist_split(train_images, train_labels, limits);
  m.test = load_mnist_split(test_images, test_labels, limits);
  return m;
}

}  // namespace data
}  // namespace fastnn
