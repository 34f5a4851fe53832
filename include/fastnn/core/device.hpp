#pragma once
/// \file device.hpp
/// Devices are types. Layer and model code is written against a device type parameter and
/// the device-specific work lives in backend/<device>/. `Cuda` is declared everywhere so that
/// generic code can name it, but nothing that uses it compiles unless the CUDA backend header
/// (fastnn/cuda.hpp, part of the fastnn::cuda target) is included.

#include <cstddef>
#include <cstdlib>
#include <new>

namespace fastnn {

/// The host: Eigen does the math, std::thread runs the directions of a Bidirectional layer.
struct Cpu {
  static constexpr const char* name() { return "cpu"; }
};

/// An NVIDIA GPU: cuBLAS, cuDNN and fastnn's own kernels. Needs the fastnn::cuda target.
struct Cuda {
  static constexpr const char* name() { return "cuda"; }
};

/// Allocates raw memory on device D. Specialised per device; the CUDA one lives in the CUDA
/// backend.
template <class D>
struct Allocator;

template <>
struct Allocator<Cpu> {
  static constexpr std::size_t kAlignment = 64;  // a cache line and an AVX-512 register
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) bytes = kAlignment;
    std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (!p) throw std::bad_alloc();
    return p;
  }
  static void deallocate(void* p) noexcept { std::free(p); }
};

}  // namespace fastnn
