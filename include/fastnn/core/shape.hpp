#pragma once
/// \file shape.hpp
/// Tensor shapes: a small fixed-capacity array of extents (no heap allocation).

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "fastnn/core/error.hpp"

namespace fastnn {

/// Index type of every extent and offset.
using Index = std::int64_t;

/// The extents of a row-major tensor, rank 0 to kMaxRank.
class Shape {
 public:
  static constexpr int kMaxRank = 6;

  Shape() = default;
  /// Shape{128, 28, 28}. Throws ShapeError for a negative extent or a rank above kMaxRank.
  Shape(std::initializer_list<Index> dims) { assign(dims.begin(), dims.end()); }
  /// From any range of integers.
  template <class It>
  Shape(It first, It last) {
    assign(first, last);
  }
  explicit Shape(const std::vector<Index>& v) { assign(v.begin(), v.end()); }

  int rank() const noexcept { return rank_; }
  Index operator[](int i) const noexcept { return d_[static_cast<std::size_t>(i)]; }
  Index& operator[](int i) noexcept { return d_[static_cast<std::size_t>(i)]; }
  /// Product of all extents (1 for rank 0).
  Index numel() const noexcept {
    Index n = 1;
    for (int i = 0; i < rank_; ++i) n *= d_[static_cast<std::size_t>(i)];
    return n;
  }
  /// Product of the extents after the first (elements per sample for a batch).
  Index inner() const noexcept {
    Index n = 1;
    for (int i = 1; i < rank_; ++i) n *= d_[static_cast<std::size_t>(i)];
    return n;
  }
  /// The shape without its first extent.
  Shape drop_front() const {
    Shape s;
    for (int i = 1; i < rank_; ++i) s.push_back(d_[static_cast<std::size_t>(i)]);
    return s;
  }
  /// The shape without its last extent (rank 0 stays rank 0).
  Shape drop_back() const {
    Shape s = *this;
    if (s.rank_ > 0) --s.rank_;
    return s;
  }
  /// A new shape with `n` in front.
  Shape prepend(Index n) const {
    Shape s;
    s.push_back(n);
    for (int i = 0; i < rank_; ++i) s.push_back(d_[static_cast<std::size_t>(i)]);
    return s;
  }
  /// A new shape with `n` at the end.
  Shape append(Index n) const {
    Shape s = *this;
    s.push_back(n);
    return s;
  }
  void push_back(Index n) {
    if (rank_ >= kMaxRank) throw ShapeError("Shape: rank above " + std::to_string(kMaxRank));
    if (n < 0) throw ShapeError("Shape: negative extent " + std::to_string(n));
    d_[static_cast<std::size_t>(rank_++)] = n;
  }
  std::vector<Index> to_vector() const { return std::vector<Index>(d_.begin(), d_.begin() + rank_); }
  /// "[128, 28, 28]"
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ", ";
      s += std::to_string(d_[static_cast<std::size_t>(i)]);
    }
    return s + "]";
  }
  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.d_[static_cast<std::size_t>(i)] != b.d_[static_cast<std::size_t>(i)]) return false;
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

 private:
  template <class It>
  void assign(It first, It last) {
    rank_ = 0;
    for (; first != last; ++first) push_back(static_cast<Index>(*first));
  }
  std::array<Index, kMaxRank> d_{};
  int rank_ = 0;
};

}  // namespace fastnn
