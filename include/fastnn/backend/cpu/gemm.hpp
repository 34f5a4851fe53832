#pragma once
/// \file gemm.hpp
/// The CPU matrix product every layer uses, on the path of cpu_isa() (isa.hpp):
///
///   cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, precision)
///       C [M, N] = alpha op(A) op(B) + beta C, row-major with leading dimensions lda, ldb, ldc;
///       op(A) is [M, K] (A stored [K, M] when ta), op(B) is [K, N] (B stored [N, K] when tb).
///   PackedB<T>: op(B) packed once for many products with the same right-hand side (the
///       recurrent kernel U at every time step).
///
/// float on the AVX2 / AVX-512 paths: fastnn's packed kernels (x86_kernels.inl), on the calling thread, or
/// with threads >= 2 a large product split with the shared helper thread (core/thread.hpp). Precision::BF16:
/// bfloat16 products with float accumulation: AMX tiles on the amx_bf16 path, vdpbf16ps on the
/// avx512_bf16 path, unavailable on the others. double, and float on
/// the baseline path: Eigen. Every path is deterministic: the same inputs give the same bits.

#include <cstdint>
#include <string>
#include <vector>

#include "fastnn/backend/cpu/isa.hpp"
#include "fastnn/backend/cpu/x86_kernels.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/thread.hpp"

namespace fastnn {

/// Throws UnsupportedError unless `p` can run on the CPU path `isa` with element type T.
template <class T>
inline void check_cpu_precision(Precision p, Isa isa, const std::string& who) {
  if (p != Precision::BF16) return;
  if (!std::is_same<T, float>::value)
    throw UnsupportedError(who + ": bf16 precision needs a float model");
  if (isa != Isa::Avx512Bf16 && isa != Isa::AmxBf16) {
    const Isa best = detected_cpu_isa();
    throw UnsupportedError(who + ": bf16 precision needs the avx512_bf16 or amx_bf16 CPU path (AVX512-BF16); " +
                           (best >= Isa::Avx512Bf16 ? std::string("it was forced to ") + isa_name(isa)
                                                    : std::string("this CPU's best is ") + isa_name(best)));
  }
}

namespace detail {

/// The first 64-byte aligned element of `buf`, which holds 64 bytes more than it needs: packed
/// panels are read with full-width vector loads, which must not straddle cache lines.
template <class W>
inline W* aligned64(std::vector<W>& buf) {
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(W);
}

template <class W>
inline const W* aligned64(const std::vector<W>& buf) {
  return aligned64(const_cast<std::vector<W>&>(buf));
}

/// Per-thread packing space of cpu_gemm (64-byte aligned): grows to the largest product, never
/// shrinks.
template <class W>
inline W* gemm_workspace(std::size_t n) {
  thread_local std::vector<W> buf;
  if (buf.size() < n + 64 / sizeof(W)) buf.resize(n + 64 / sizeof(W));
  return aligned64(buf);
}

template <class T>
void eigen_gemm(bool ta, bool tb, Index M, Index N, Index K, T alpha, const T* A, Index lda, const T* B, Index ldb,
                T beta, T* C, Index ldc) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  Eigen::Map<Mat, 0, Eigen::OuterStride<>> c(C, M, N, Eigen::OuterStride<>(ldc));
  if (beta == T(0)) c.setZero();
  else if (beta != T(1)) c *= beta;
  if (K == 0) return;
  CMap a(A, ta ? K : M, ta ? M : K, Eigen::OuterStride<>(lda));
  CMap b(B, tb ? N : K, tb ? K : N, Eigen::OuterStride<>(ldb));
  if (!ta && !tb) c.noalias() += alpha * a * b;
  else if (ta && !tb) c.noalias() += alpha * a.transpose() * b;
  else if (!ta && tb) c.noalias() += alpha * a * b.transpose();
  else c.noalias() += alpha * a.transpose() * b.transpose();
}

inline void scale_rows(Index M, Index N, float beta, float* C, Index ldc) {
  for (Index i = 0; i < M; ++i)
    for (Index j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
}

}  // namespace detail

template <class T>
void cpu_gemm(bool ta, bool tb, Index M, Index N, Index K, T alpha, const T* A, Index lda, const T* B, Index ldb,
              T beta, T* C, Index ldc, Precision p = Precision::F32, int threads = 1);

namespace detail {

/// Products of at least this many multiply-adds are worth splitting between two threads.
constexpr Index kGemmSplitWork = Index(1) << 19;

/// cpu_gemm on two threads: the caller and the shared helper (core/thread.hpp) each compute half of C's rows, or
/// of its columns when C has more columns than rows. Every element of C is the same sum in the same order as on
/// one thread, so the result does not depend on the split. Returns false (nothing done) when the product is too
/// small to split or the helper is taken.
template <class T>
bool cpu_gemm_split(bool ta, bool tb, Index M, Index N, Index K, T alpha, const T* A, Index lda, const T* B,
                    Index ldb, T beta, T* C, Index ldc, Precision p) {
  if (M * N * K < kGemmSplitWork || (M < 32 && N < 32)) return false;
  HelperLease lease;
  if (!lease) return false;
  // the helper's half, captured as one reference so that the task fits std::function without a heap allocation
  struct Half {
    bool ta, tb;
    Index M, N, K, lda, ldb, ldc;
    T alpha, beta;
    const T *A, *B;
    T* C;
    Precision p;
  } h{ta, tb, M, N, K, lda, ldb, ldc, alpha, beta, A, B, C, p};
  if (M >= N) {
    const Index m0 = (M / 2 + 7) / 8 * 8;
    h.M = M - m0, h.A = ta ? A + m0 : A + m0 * lda, h.C = C + m0 * ldc;
    M = m0;
  } else {
    const Index n0 = (N / 2 + 15) / 16 * 16;
    h.N = N - n0, h.B = tb ? B + n0 * ldb : B + n0, h.C = C + n0;
    N = n0;
  }
  lease.worker().run_alongside(
      [&h] { cpu_gemm(h.ta, h.tb, h.M, h.N, h.K, h.alpha, h.A, h.lda, h.B, h.ldb, h.beta, h.C, h.ldc, h.p); },
      [&] { cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, p); });
  return true;
}

}  // namespace detail

/// C = alpha op(A) op(B) + beta C (see the file comment). beta == 0 ignores C's old values. threads >= 2: a large
/// product is split between the calling thread and the shared helper thread (detail::cpu_gemm_split), with the
/// same result.
template <class T>
void cpu_gemm(bool ta, bool tb, Index M, Index N, Index K, T alpha, const T* A, Index lda, const T* B, Index ldb,
              T beta, T* C, Index ldc, Precision p, int threads) {
  if (M <= 0 || N <= 0) return;
  const Isa isa = cpu_isa();
  if (p == Precision::BF16) check_cpu_precision<T>(p, isa, "matrix product");
  if (threads >= 2 && detail::cpu_gemm_split(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, p)) return;
#if FASTNN_X86_DISPATCH
  if constexpr (std::is_same<T, float>::value) {
    if (K <= 0) return detail::scale_rows(M, N, beta, C, ldc);
    using namespace detail;
#if FASTNN_X86_AMX_KERNELS
    if (p == Precision::BF16 && isa == Isa::AmxBf16) {
      const std::size_t na = std::size_t(x86_amx::amx_rows(M) * x86_amx::amx_pairs(K));
      auto* w = gemm_workspace<std::uint32_t>(na + std::size_t(x86_amx::packed_b_size_amx(K, N)) + 16);
      std::uint32_t* bp = w + (na + 15) / 16 * 16;
      x86_amx::pack_a_amx(A, lda, ta, M, K, w);
      x86_amx::pack_b_amx(B, ldb, tb, K, N, bp);
      return x86_amx::gemm_amx_packed(M, N, K, alpha, w, bp, beta, C, ldc);
    }
#endif
    if (p == Precision::BF16) {
      const Index np = (N + x86_avx512bf16::NR - 1) / x86_avx512bf16::NR * x86_avx512bf16::NR;
      auto* w = gemm_workspace<std::uint32_t>(std::size_t(x86_avx512bf16::MC + np) * x86_avx512bf16::KC2);
      return x86_avx512bf16::gemm_bf16(M, N, K, alpha, A, lda, ta, B, ldb, tb, beta, C, ldc, w);
    }
    if (isa >= Isa::Avx512) {
      const Index np = (N + x86_avx512::NR - 1) / x86_avx512::NR * x86_avx512::NR;
      float* w = gemm_workspace<float>(std::size_t(x86_avx512::MC + np) * x86_avx512::KC);
      return x86_avx512::gemm_f32(M, N, K, alpha, A, lda, ta, B, ldb, tb, beta, C, ldc, w);
    }
    if (isa == Isa::Avx2) {
      const Index np = (N + x86_avx2::NR - 1) / x86_avx2::NR * x86_avx2::NR;
      float* w = gemm_workspace<float>(std::size_t(x86_avx2::MC + np) * x86_avx2::KC);
      return x86_avx2::gemm_f32(M, N, K, alpha, A, lda, ta, B, ldb, tb, beta, C, ldc, w);
    }
  }
#endif
  detail::eigen_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/// op(B) [K, N] packed for the path and precision current at pack(); products with it take the
/// same path. Holds a copy: B may change afterwards without affecting the packed values.
template <class T>
class PackedB {
 public:
  /// Packs op(B): B [K, N] (ldb), or B [N, K] read transposed when tb.
  void pack(const T* B, Index ldb, bool tb, Index K, Index N, Precision p = Precision::F32) {
    isa_ = cpu_isa();
    prec_ = p;
    K_ = K, N_ = N;
    if (p == Precision::BF16) check_cpu_precision<T>(p, isa_, "matrix product");
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      using namespace detail;
#if FASTNN_X86_AMX_KERNELS
      if (p == Precision::BF16 && isa_ == Isa::AmxBf16) {
        words_.resize(static_cast<std::size_t>(x86_amx::packed_b_size_amx(K, N)) + 16);
        x86_amx::pack_b_amx(B, ldb, tb, K, N, aligned64(words_));
        return;
      }
#endif
      if (p == Precision::BF16) {
        words_.resize(static_cast<std::size_t>(x86_avx512bf16::packed_b_size_bf16(K, N)) + 16);
        x86_avx512bf16::pack_b_all_bf16(B, ldb, tb, K, N, aligned64(words_));
        return;
      }
      if (isa_ >= Isa::Avx512) {
        floats_.resize(static_cast<std::size_t>(x86_avx512::packed_b_size(K, N)) + 16);
        x86_avx512::pack_b_all(B, ldb, tb, K, N, aligned64(floats_));
        return;
      }
      if (isa_ == Isa::Avx2) {
        floats_.resize(static_cast<std::size_t>(x86_avx2::packed_b_size(K, N)) + 16);
        x86_avx2::pack_b_all(B, ldb, tb, K, N, aligned64(floats_));
        return;
      }
    }
#endif
    // Eigen: op(B) as a dense [K, N] copy
    isa_ = Isa::Baseline;
    plain_.resize(static_cast<std::size_t>(K * N));
    for (Index k = 0; k < K; ++k)
      for (Index j = 0; j < N; ++j) plain_[k * N + j] = tb ? B[j * ldb + k] : B[k * ldb + j];
  }

  Index rows() const { return K_; }
  Index cols() const { return N_; }

  /// C [M, N] = alpha op(A) op(B) + beta C, op(A) [M, K].
  void gemm(Index M, T alpha, const T* A, Index lda, bool ta, T beta, T* C, Index ldc) const {
    if (M <= 0 || N_ <= 0) return;
#if FASTNN_X86_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      using namespace detail;
      if (K_ <= 0) return scale_rows(M, N_, beta, C, ldc);
#if FASTNN_X86_AMX_KERNELS
      if (prec_ == Precision::BF16 && isa_ == Isa::AmxBf16) {
        auto* w = gemm_workspace<std::uint32_t>(std::size_t(x86_amx::amx_rows(M) * x86_amx::amx_pairs(K_)));
        x86_amx::pack_a_amx(A, lda, ta, M, K_, w);
        return x86_amx::gemm_amx_packed(M, N_, K_, alpha, w, aligned64(words_), beta, C, ldc);
      }
#endif
      if (prec_ == Precision::BF16)
        return x86_avx512bf16::gemm_packed_bf16(
            M, N_, K_, alpha, A, lda, ta, aligned64(words_), beta, C, ldc,
            gemm_workspace<std::uint32_t>(std::size_t(x86_avx512bf16::MC) * x86_avx512bf16::KC2));
      if (isa_ >= Isa::Avx512)
        return x86_avx512::gemm_packed_f32(M, N_, K_, alpha, A, lda, ta, aligned64(floats_), beta, C, ldc,
                                           gemm_workspace<float>(std::size_t(x86_avx512::MC) * x86_avx512::KC));
      if (isa_ == Isa::Avx2)
        return x86_avx2::gemm_packed_f32(M, N_, K_, alpha, A, lda, ta, aligned64(floats_), beta, C, ldc,
                                         gemm_workspace<float>(std::size_t(x86_avx2::MC) * x86_avx2::KC));
    }
#endif
    detail::eigen_gemm(ta, false, M, N_, K_, alpha, A, lda, plain_.data(), N_, beta, C, ldc);
  }

 private:
  Isa isa_ = Isa::Baseline;
  Precision prec_ = Precision::F32;
  Index K_ = 0, N_ = 0;
  std::vector<T> floats_, plain_;
  std::vector<std::uint32_t> words_;
};

}  // namespace fastnn
