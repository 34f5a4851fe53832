#pragma once
/// \file tensor.hpp
/// `Tensor<T, D>`: a row-major, reference-counted n-d array of T on device D. T is float or
/// double for math, int32 for labels and indices, uint8 for raw data kept compact (images).
///
/// Copying a Tensor is shallow (both share storage, like LibTorch); `clone()` makes a deep copy.
/// Views (`view`, `reshaped`, `rows`) share storage with their parent. On the CPU, `matrix()`
/// and `array()` give Eigen maps for the math. Memory on other devices comes from
/// `Allocator<D>`; host<->device transfers live in the device's backend.

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include <Eigen/Core>

#include "fastnn/core/device.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/shape.hpp"

namespace fastnn {

/// Row-major Eigen matrix type used for maps over tensors.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>>;
template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

/// Scalar type name as used in checkpoints and messages ("F32", "F64").
template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same<T, float>::value) return "F32";
  else if constexpr (std::is_same<T, double>::value) return "F64";
  else if constexpr (std::is_same<T, std::int32_t>::value) return "I32";
  else if constexpr (std::is_same<T, std::uint8_t>::value) return "U8";
  else static_assert(sizeof(T) == 0, "unsupported tensor element type");
}

template <class T, class D = Cpu>
class Tensor {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value ||
                    std::is_same<T, std::int32_t>::value || std::is_same<T, std::uint8_t>::value,
                "fastnn tensors hold float, double (math), int32 (labels, indices) or uint8 (raw data)");

 public:
  using value_type = T;
  using device_type = D;

  /// An empty tensor (rank 0, no storage).
  Tensor() = default;
  /// Allocates an uninitialised tensor of the given shape.
  explicit Tensor(const Shape& shape) { allocate(shape); }

  /// A tensor of zeros (on any device: uses the backend's fill through the caller).
  static Tensor zeros(const Shape& shape) {
    Tensor t(shape);
    t.set_zero();
    return t;
  }

  const Shape& shape() const noexcept { return shape_; }
  int rank() const noexcept { return shape_.rank(); }
  Index dim(int i) const noexcept { return shape_[i]; }
  Index size() const noexcept { return numel_; }
  bool empty() const noexcept { return numel_ == 0; }
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  /// Whether this tensor and `other` point into the same allocation.
  bool shares_storage_with(const Tensor& other) const noexcept { return buf_ && buf_ == other.buf_; }

  /// Changes the shape, reallocating only when the new size exceeds the capacity of the
  /// current, unshared allocation. Contents are unspecified afterwards. Used for workspaces so
  /// that a smaller last batch does not allocate.
  void resize(const Shape& shape) {
    Index n = shape.numel();
    if (buf_ && owner_ && n <= capacity_ && buf_.use_count() == 1) {
      shape_ = shape;
      numel_ = n;
      return;
    }
    allocate(shape);
  }

  /// A view of `shape` starting `offset` elements into this tensor; shares storage.
  Tensor view(Index offset, const Shape& shape) const {
    if (offset < 0 || offset + shape.numel() > numel_)
      throw ShapeError("Tensor::view: " + shape.str() + " at offset " + std::to_string(offset) +
                       " does not fit in a tensor of shape " + shape_.str());
    Tensor t;
    t.buf_ = buf_;
    t.data_ = data_ + offset;
    t.shape_ = shape;
    t.numel_ = shape.numel();
    t.capacity_ = t.numel_;
    t.owner_ = false;
    return t;
  }
  /// The same elements under another shape of equal size; shares storage.
  Tensor reshaped(const Shape& shape) const {
    if (shape.numel() != numel_)
      throw ShapeError("Tensor::reshaped: cannot view " + shape_.str() + " as " + shape.str());
    return view(0, shape);
  }
  /// Rows [begin, end) along the first dimension; shares storage.
  Tensor rows(Index begin, Index end) const {
    if (rank() < 1 || begin < 0 || end > dim(0) || begin > end)
      throw ShapeError("Tensor::rows: [" + std::to_string(begin) + ", " + std::to_string(end) +
                       ") out of range for shape " + shape_.str());
    Shape s = shape_;
    s[0] = end - begin;
    return view(begin * shape_.inner(), s);
  }

  /// Sets every element to zero. Host tensors only; device tensors use their backend.
  void set_zero() {
    if constexpr (std::is_same<D, Cpu>::value) {
      if (numel_) std::memset(data_, 0, sizeof(T) * static_cast<std::size_t>(numel_));
    } else {
      device_set_zero(*this);
    }
  }

  /// A deep copy on the same device.
  Tensor clone() const {
    Tensor t(shape_);
    copy_into(*this, t);
    return t;
  }

  // ---- Eigen maps (CPU only) ----------------------------------------------------------
  /// The tensor as a matrix: rows = dim(0), cols = the product of the other extents.
  MatrixMap<T> matrix() {
    static_assert(std::is_same<D, Cpu>::value, "Eigen maps exist for CPU tensors only");
    return MatrixMap<T>(data_, rows_of(), cols_of());
  }
  ConstMatrixMap<T> matrix() const {
    static_assert(std::is_same<D, Cpu>::value, "Eigen maps exist for CPU tensors only");
    return ConstMatrixMap<T>(data_, rows_of(), cols_of());
  }
  /// The tensor as a flat Eigen array.
  ArrayMap<T> array() {
    static_assert(std::is_same<D, Cpu>::value, "Eigen maps exist for CPU tensors only");
    return ArrayMap<T>(data_, numel_);
  }
  ConstArrayMap<T> array() const {
    static_assert(std::is_same<D, Cpu>::value, "Eigen maps exist for CPU tensors only");
    return ConstArrayMap<T>(data_, numel_);
  }
  /// Element access by flat index (CPU only).
  T& operator[](Index i) {
    static_assert(std::is_same<D, Cpu>::value, "element access exists for CPU tensors only");
    return data_[i];
  }
  const T& operator[](Index i) const {
    static_assert(std::is_same<D, Cpu>::value, "element access exists for CPU tensors only");
    return data_[i];
  }

 private:
  Index rows_of() const noexcept { return rank() == 0 ? 1 : shape_[0]; }
  Index cols_of() const noexcept { return rank() == 0 ? 1 : shape_.inner(); }

  void allocate(const Shape& shape) {
    shape_ = shape;
    numel_ = shape.numel();
    capacity_ = numel_;
    owner_ = true;
    void* p = Allocator<D>::allocate(sizeof(T) * static_cast<std::size_t>(numel_));
    buf_ = std::shared_ptr<void>(p, [](void* q) { Allocator<D>::deallocate(q); });
    data_ = static_cast<T*>(p);
  }

  std::shared_ptr<void> buf_;
  T* data_ = nullptr;
  Shape shape_;
  Index numel_ = 0;
  Index capacity_ = 0;
  bool owner_ = false;
};

/// Copies the elements of `src` into `dst` (same device, same number of elements).
template <class T>
void copy_into(const Tensor<T, Cpu>& src, Tensor<T, Cpu>& dst) {
  if (src.size() != dst.size())
    throw ShapeError("copy_into: source " + src.shape().str() + " and destination " +
                     dst.shape().str() + " differ in size");
  if (src.size()) std::memcpy(dst.data(), src.data(), sizeof(T) * static_cast<std::size_t>(src.size()));
}

/// Host tensors are zeroed in place by set_zero(); this overload exists for generic code.
template <class T>
void device_set_zero(Tensor<T, Cpu>& t) {
  t.set_zero();
}

/// A copy of `src` on device D2. Same device: a deep copy. Across devices the backend of the
/// non-CPU device provides `copy_across(src, dst)` (found by argument-dependent lookup).
template <class D2, class U, class D1>
Tensor<U, D2> to_device(const Tensor<U, D1>& src) {
  Tensor<U, D2> dst(src.shape());
  if constexpr (std::is_same<D1, D2>::value) copy_into(src, dst);
  else copy_across(src, dst);
  return dst;
}

/// Copies a host tensor into `dst` (a tensor or view of the same size) on device D, without
/// allocating (a device's copy_across). Used to initialise and load parameters, which are
/// always produced on the host, and for fit's per-epoch shuffled index.
template <class T, class D>
void copy_from_host(const Tensor<T, Cpu>& src, Tensor<T, D>& dst) {
  if constexpr (std::is_same<D, Cpu>::value) copy_into(src, dst);
  else copy_across(src, dst);
}

}  // namespace fastnn
