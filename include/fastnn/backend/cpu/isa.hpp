#pragma once
/// \file isa.hpp
/// Which x86 instruction set the CPU kernels run with, chosen at run time.
///
/// fastnn is header-only, so the compiler flags of the program that includes it decide what
/// Eigen's code can use; a plain Release build targets the x86-64 baseline (SSE2) even on an
/// AVX-512 machine. The hot kernels (matrix products, the LSTM cell, the optimizers' updates) are
/// therefore also compiled for AVX2+FMA and AVX-512 with function target attributes
/// (backend/cpu/x86_kernels.hpp), and the best path the CPU and the OS support is taken:
///
///   Isa::Baseline    Eigen, with whatever the including program was compiled for
///   Isa::Avx2        AVX2 + FMA kernels
///   Isa::Avx512      AVX-512 F/BW/DQ/VL kernels
///   Isa::Avx512Bf16  the AVX-512 kernels, plus bfloat16 products (vdpbf16ps) for Precision::BF16
///   Isa::AmxBf16     the AVX-512 kernels, plus bfloat16 products on AMX tiles (TDPBF16PS)
///
/// The float kernels are the same on the last three paths; they differ in Precision::BF16 only.
/// The environment variable FASTNN_ISA=baseline|avx2|avx512|avx512_bf16|amx_bf16 forces a path (read once,
/// at the first use); set_cpu_isa() does the same from code. Forcing a path the CPU lacks throws
/// UnsupportedError naming the missing feature. On other architectures or compilers only the
/// baseline exists.

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "fastnn/core/error.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASTNN_X86_DISPATCH 1
#include <cpuid.h>
#else
#define FASTNN_X86_DISPATCH 0
#endif
// AMX needs a 64-bit Linux kernel that grants the tile state (arch_prctl) and a compiler with the
// tile intrinsics.
#if FASTNN_X86_DISPATCH && defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define FASTNN_X86_AMX_KERNELS 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define FASTNN_X86_AMX_KERNELS 0
#endif

namespace fastnn {

enum class Isa { Baseline = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, AmxBf16 = 4 };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::Baseline: return "baseline";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512_bf16";
    case Isa::AmxBf16: return "amx_bf16";
  }
  return "?";
}

/// "baseline", "avx2", "avx512", "avx512_bf16" or "amx_bf16"; anything else throws ArgumentError.
inline Isa parse_isa(const std::string& s) {
  for (Isa i : {Isa::Baseline, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::AmxBf16})
    if (s == isa_name(i)) return i;
  throw ArgumentError("ISA '" + s + "': expected baseline, avx2, avx512, avx512_bf16 or amx_bf16");
}

namespace detail {

/// The best path this CPU and OS support (cpuid, and xgetbv for the OS's register state).
inline Isa detect_isa() {
#if FASTNN_X86_DISPATCH
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Baseline;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!(fma && osxsave && avx)) return Isa::Baseline;
  unsigned xlo = 0, xhi = 0;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  if ((xlo & 0x6u) != 0x6u) return Isa::Baseline;  // the OS saves the SSE and AVX state
  if (__get_cpuid_max(0, nullptr) < 7) return Isa::Baseline;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned leaf7_max = a;
  const bool avx2 = b & (1u << 5);
  if (!avx2) return Isa::Baseline;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool os512 = (xlo & 0xe0u) == 0xe0u;  // opmask and the upper ZMM state
  if (!(f && dq && bw && vl && os512)) return Isa::Avx2;
  const bool amx = (d & (1u << 22)) && (d & (1u << 24));  // AMX-BF16, AMX-TILE
  if (leaf7_max < 1) return Isa::Avx512;
  __cpuid_count(7, 1, a, b, c, d);
  if (!(a & (1u << 5))) return Isa::Avx512;
#if FASTNN_X86_AMX_KERNELS
  // the OS must save the tile state (XCR0 bits 17, 18) and grant it to this process
  constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;
  if (amx && (xlo & 0x60000u) == 0x60000u && syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0)
    return Isa::AmxBf16;
#else
  (void)amx;
#endif
  return Isa::Avx512Bf16;
#else
  return Isa::Baseline;
#endif
}

inline Isa detected_isa_cached() {
  static const Isa best = detect_isa();
  return best;
}

inline void check_isa_supported(Isa want, const std::string& from) {
  const Isa best = detected_isa_cached();
  if (static_cast<int>(want) > static_cast<int>(best))
    throw UnsupportedError(from + ": the " + std::string(isa_name(want)) +
                           " path needs a CPU feature this machine lacks (best here: " + isa_name(best) + ")");
}

inline std::atomic<int>& isa_override() {
  static std::atomic<int> v{-1};
  return v;
}

/// The path named by FASTNN_ISA, or the detected one; read once.
inline Isa isa_from_environment() {
  static const Isa chosen = [] {
    const char* env = std::getenv("FASTNN_ISA");
    if (!env || !*env) return detected_isa_cached();
    Isa want;
    try {
      want = parse_isa(env);
    } catch (const ArgumentError&) {
      throw ArgumentError(std::string("FASTNN_ISA='") + env +
                          "': expected baseline, avx2, avx512, avx512_bf16 or amx_bf16");
    }
    check_isa_supported(want, std::string("FASTNN_ISA=") + env);
    return want;
  }();
  return chosen;
}

}  // namespace detail

/// The best path the CPU supports, whatever is forced.
inline Isa detected_cpu_isa() { return detail::detected_isa_cached(); }

/// The path the CPU kernels take now: set_cpu_isa's, else FASTNN_ISA's, else the detected one.
inline Isa cpu_isa() {
  const int o = detail::isa_override().load(std::memory_order_relaxed);
  return o >= 0 ? static_cast<Isa>(o) : detail::isa_from_environment();
}

/// Forces a path for the whole process (tests, benchmarks); throws UnsupportedError if the CPU
/// lacks it. Call it while no model is running.
inline void set_cpu_isa(Isa i) {
  detail::check_isa_supported(i, std::string("set_cpu_isa(") + isa_name(i) + ")");
  detail::isa_override().store(static_cast<int>(i), std::memory_order_relaxed);
}

/// Drops set_cpu_isa's choice: back to FASTNN_ISA or the detected path.
inline void reset_cpu_isa() { detail::isa_override().store(-1, std::memory_order_relaxed); }

/// The CPU's model name ("model name" in /proc/cpuinfo, without its leading blanks), or "unknown" where there is
/// none (benchmarks and examples print it beside their timings).
inline std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      const auto first = line.find_first_not_of(" \t", colon + 1);
      return first == std::string::npos ? std::string() : line.substr(first);
    }
  return "unknown";
}

}  // namespace fastnn
