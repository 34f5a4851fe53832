#pragma once
/// \file x86_kernels.hpp
/// The hot CPU kernels compiled for each x86 path of isa.hpp, whatever flags the including
/// program uses: x86_kernels.inl included once per path, into
///   detail::x86_avx2        AVX2 + FMA
///   detail::x86_avx512      AVX-512 F/BW/DQ/VL
///   detail::x86_avx512bf16  the same plus AVX512-BF16 (bfloat16 matrix products)
///   detail::x86_amx         the same plus AMX tiles (bfloat16 matrix products; GCC 11+ and
///                           Clang 12+, FASTNN_X86_AMX_KERNELS)
/// Callers go through backend/cpu/gemm.hpp and backend/cpu/ops.hpp, which pick the namespace of
/// cpu_isa(). Empty where FASTNN_X86_DISPATCH is 0.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastnn/backend/cpu/isa.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/shape.hpp"

#if FASTNN_X86_DISPATCH
#include <immintrin.h>

// GCC 12's AVX-512 intrinsics read a deliberately undefined register (_mm512_undefined_*), which
// its -Wmaybe-uninitialized reports once inlined (GCC bug 105593, fixed in GCC 13). The kernels
// load a tile's columns past a short matrix's end with masked loads, whose masked-off lanes are
// never read; once inlined into a caller's 1 x 1 product, -Warray-bounds reports them anyway.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Warray-bounds"
#endif

namespace fastnn {
namespace detail {

namespace x86_avx2 {
#define FASTNN_X86_TARGET "avx2,fma"
#define FASTNN_X86_LEVEL 2
#define FASTNN_X86_BF16 0
#define FASTNN_X86_AMX 0
#include "fastnn/backend/cpu/x86_kernels.inl"
#undef FASTNN_X86_TARGET
#undef FASTNN_X86_LEVEL
#undef FASTNN_X86_BF16
#undef FASTNN_X86_AMX
}  // namespace x86_avx2

namespace x86_avx512 {
#define FASTNN_X86_TARGET "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl"
#define FASTNN_X86_LEVEL 3
#define FASTNN_X86_BF16 0
#define FASTNN_X86_AMX 0
#include "fastnn/backend/cpu/x86_kernels.inl"
#undef FASTNN_X86_TARGET
#undef FASTNN_X86_LEVEL
#undef FASTNN_X86_BF16
#undef FASTNN_X86_AMX
}  // namespace x86_avx512

namespace x86_avx512bf16 {
#define FASTNN_X86_TARGET "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16"
#define FASTNN_X86_LEVEL 3
#define FASTNN_X86_BF16 1
#define FASTNN_X86_AMX 0
#include "fastnn/backend/cpu/x86_kernels.inl"
#undef FASTNN_X86_TARGET
#undef FASTNN_X86_LEVEL
#undef FASTNN_X86_BF16
#undef FASTNN_X86_AMX
}  // namespace x86_avx512bf16

#if FASTNN_X86_AMX_KERNELS
namespace x86_amx {
#define FASTNN_X86_TARGET "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16"
#define FASTNN_X86_LEVEL 3
#define FASTNN_X86_BF16 1
#define FASTNN_X86_AMX 1
#include "fastnn/backend/cpu/x86_kernels.inl"
#undef FASTNN_X86_TARGET
#undef FASTNN_X86_LEVEL
#undef FASTNN_X86_BF16
#undef FASTNN_X86_AMX
}  // namespace x86_amx
#endif

/// The AVX2 or the AVX-512 version of a kernel, whichever the path of cpu_isa() runs; null on the baseline path.
template <class F>
F* path_kernel(F* avx2, F* avx512) {
  const Isa isa = cpu_isa();
  return isa == Isa::Baseline ? nullptr : isa == Isa::Avx2 ? avx2 : avx512;
}

}  // namespace detail
}  // namespace fastnn

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace fastnn {
namespace detail {

/// The dropout mask applied to n elements: y[k] = x[k] scale where it keeps element first + k
/// (hash::bits32(key, first + k) >= threshold), else 0; y may be x. Float on an x86 path: vectorised, the same bits.
template <class T>
void apply_dropout(Index n, std::uint64_t key, std::uint64_t first, std::uint32_t threshold, T scale, const T* x,
                   T* y) {
#if FASTNN_X86_DISPATCH
  if constexpr (std::is_same<T, float>::value) {
    if (auto* f = path_kernel(&x86_avx2::dropout_mask, &x86_avx512::dropout_mask))
      return f(n, key, first, threshold, scale, x, y);
  }
#endif
  for (Index k = 0; k < n; ++k)
    y[k] = hash::bits32(key, first + static_cast<std::uint64_t>(k)) >= threshold ? x[k] * scale : T(0);
}

}  // namespace detail
}  // namespace fastnn
