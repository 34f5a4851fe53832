// Part of the x86 kernels: included by backend/cpu/x86_kernels.inl (see there) once per path, inside that
// path's namespace, with its FASTNN_X86_* macros and vector helpers defined. No include guard.

#if FASTNN_X86_BF16
// ---- bfloat16 GEMM (AVX512-BF16) -----------------------------------------------------------
// Operands are packed as 32-bit words, each holding the bfloat16 of depth k (low half) and
// k + 1 (high half); vdpbf16ps multiplies such pairs and adds both products to a float lane.

/// float -> bfloat16 bits, rounded to nearest even (NaN stays NaN).
FASTNN_VFN std::uint32_t bf16_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
FASTNN_VFN std::uint32_t bf16_pair(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }

/// Depth in pairs of a packed bf16 block.
constexpr Index KC2 = KC;

/// bfloat16 rounding of 16 floats (to nearest even; NaN stays a quiet NaN), as bf16_bits: the
/// result sits in the high half of each 32-bit lane.
FASTNN_VFN __m512i vbf16_round(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
}
/// Pairs from two rows: word j = bf16(lo[j]) | bf16(hi[j]) << 16.
FASTNN_VFN __m512i vbf16_pairs_rows(__m512 lo, __m512 hi) {
  return _mm512_or_si512(_mm512_srli_epi32(vbf16_round(lo), 16),
                         _mm512_and_si512(vbf16_round(hi), _mm512_set1_epi32(int(0xffff0000u))));
}
/// Pairs from 32 consecutive floats (a: 0..15, b: 16..31): word m = bf16(x[2m]) | bf16(x[2m+1]) << 16.
FASTNN_VFN __m512i vbf16_pairs_seq(__m512 a, __m512 b) {
  alignas(64) static const std::uint16_t odd_halves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                           23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                           45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  return _mm512_permutex2var_epi16(vbf16_round(a), _mm512_load_si512(odd_halves), vbf16_round(b));
}
FASTNN_VFN __mmask16 first_n(Index n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

/// Words of the pairs of n (<= 32) consecutive floats at p (zeros past n): ceil(n / 2) words.
FASTNN_VFN __m512i seq_pairs(const float* p, Index n) {
  const __m512 a = _mm512_maskz_loadu_ps(first_n(n), p);
  const __m512 b = n > 16 ? _mm512_maskz_loadu_ps(first_n(n - 16), p + 16) : _mm512_setzero_ps();
  return vbf16_pairs_seq(a, b);
}

/// Rows [i0, i0 + m) x depth [k0, k0 + kc) of op(A) as pairs: [panel][kc2][MR], kc2 = ceil(kc / 2).
FASTNN_KFN void pack_a_bf16(const float* A, Index lda, bool ta, Index i0, Index m, Index k0, Index kc,
                            std::uint32_t* ap) {
  const Index kc2 = (kc + 1) / 2;
  alignas(64) std::uint32_t words[16];
  for (Index p = 0; p < m; p += MR) {
    const Index rows = m - p < MR ? m - p : MR;
    std::uint32_t* dst = ap + p * kc2;
    if (ta) {  // A [K, M]: depth k and k + 1 of MR consecutive rows are two contiguous runs
      const __mmask16 mask = first_n(rows);
      for (Index k2 = 0; k2 < kc2; ++k2) {
        const float* src = A + (k0 + 2 * k2) * lda + i0 + p;
        const __m512 lo = _mm512_maskz_loadu_ps(mask, src);
        const __m512 hi = 2 * k2 + 1 < kc ? _mm512_maskz_loadu_ps(mask, src + lda) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + k2 * MR, __mmask16((1u << MR) - 1u), vbf16_pairs_rows(lo, hi));
      }
      continue;
    }
    for (Index r = 0; r < MR; ++r) {  // A [M, K]: each row's depth run is contiguous
      if (r >= rows) {
        for (Index k2 = 0; k2 < kc2; ++k2) dst[k2 * MR + r] = 0;
        continue;
      }
      const float* src = A + (i0 + p + r) * lda + k0;
      for (Index k = 0; k < kc; k += 32) {
        _mm512_store_si512(words, seq_pairs(src + k, kc - k < 32 ? kc - k : 32));
        const Index n2 = (kc - k < 32 ? kc - k + 1 : 32) / 2;
        for (Index w = 0; w < n2; ++w) dst[(k / 2 + w) * MR + r] = words[w];
      }
    }
  }
}

/// Depth [k0, k0 + kc) x N columns of op(B) as pairs: [panel][kc2][NR].
FASTNN_KFN void pack_b_bf16(const float* B, Index ldb, bool tb, Index N, Index k0, Index kc, std::uint32_t* bp) {
  const Index kc2 = (kc + 1) / 2;
  alignas(64) std::uint32_t words[16];
  for (Index q = 0; q < N; q += NR) {
    const Index cols = N - q < NR ? N - q : NR;
    std::uint32_t* dst = bp + q * kc2;
    if (!tb) {  // B [K, N]: depth k and k + 1 of a panel's columns are two contiguous runs
      for (Index k2 = 0; k2 < kc2; ++k2) {
        const float* src = B + (k0 + 2 * k2) * ldb + q;
        const bool has_hi = 2 * k2 + 1 < kc;
        for (Index h = 0; h < NR; h += VL) {
          const __mmask16 mask = cols > h ? first_n(cols - h) : __mmask16(0);
          const __m512 lo = _mm512_maskz_loadu_ps(mask, src + h);
          const __m512 hi = has_hi ? _mm512_maskz_loadu_ps(mask, src + ldb + h) : _mm512_setzero_ps();
          _mm512_storeu_si512(dst + k2 * NR + h, vbf16_pairs_rows(lo, hi));
        }
      }
      continue;
    }
    for (Index j = 0; j < NR; ++j) {  // B [N, K]: each column's depth run is contiguous
      if (j >= cols) {
        for (Index k2 = 0; k2 < kc2; ++k2) dst[k2 * NR + j] = 0;
        continue;
      }
      const float* src = B + (q + j) * ldb + k0;
      for (Index k = 0; k < kc; k += 32) {
        _mm512_store_si512(words, seq_pairs(src + k, kc - k < 32 ? kc - k : 32));
        const Index n2 = (kc - k < 32 ? kc - k + 1 : 32) / 2;
        for (Index w = 0; w < n2; ++w) dst[(k / 2 + w) * NR + j] = words[w];
      }
    }
  }
}

FASTNN_KFN void micro_bf16(Index kc2, const std::uint32_t* ap, const std::uint32_t* bp, float* C, Index ldc,
                           Index m, Index n, float alpha, float beta) {
  V acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = vzero();
  for (Index k2 = 0; k2 < kc2; ++k2) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + k2 * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + k2 * NR + VL);
    const std::uint32_t* a = ap + k2 * MR;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
  store_tile(acc, C, ldc, m, n, alpha, beta);
}

/// Size in 32-bit words of op(B) [K, N] packed whole as bf16 pairs.
FASTNN_KFN Index packed_b_size_bf16(Index K, Index N) {
  const Index np = ((N + NR - 1) / NR) * NR;
  Index words = 0;
  for (Index pc = 0; pc < K; pc += 2 * KC2) words += np * ((K - pc < 2 * KC2 ? K - pc : 2 * KC2) + 1) / 2;
  return words;
}

FASTNN_KFN void pack_b_all_bf16(const float* B, Index ldb, bool tb, Index K, Index N, std::uint32_t* bp) {
  const Index np = ((N + NR - 1) / NR) * NR;
  for (Index pc = 0; pc < K; pc += 2 * KC2) {
    const Index kc = K - pc < 2 * KC2 ? K - pc : 2 * KC2;
    pack_b_bf16(B, ldb, tb, N, pc, kc, bp);
    bp += np * ((kc + 1) / 2);
  }
}

/// One depth block [pc, pc + kc) in bf16, op(B)'s block packed in `bblock`; `work` holds
/// MC * KC2 words.
FASTNN_KFN void gemm_block_bf16(Index M, Index N, Index pc, Index kc, float alpha, const float* A, Index lda, bool ta,
                                const std::uint32_t* bblock, float b, float* C, Index ldc, std::uint32_t* work) {
  const Index kc2 = (kc + 1) / 2;
  for (Index ic = 0; ic < M; ic += MC) {
    const Index mc = M - ic < MC ? M - ic : MC;
    pack_a_bf16(A, lda, ta, ic, mc, pc, kc, work);
    for (Index q = 0; q < N; q += NR) {
      const Index n = N - q < NR ? N - q : NR;
      for (Index p = 0; p < mc; p += MR) {
        const Index m = mc - p < MR ? mc - p : MR;
        micro_bf16(kc2, work + p * kc2, bblock + q * kc2, C + (ic + p) * ldc + q, ldc, m, n, alpha, b);
      }
    }
  }
}

/// C = alpha op(A) Bp + beta C, Bp from pack_b_all_bf16; `work` holds MC * KC2 words.
FASTNN_KFN void gemm_packed_bf16(Index M, Index N, Index K, float alpha, const float* A, Index lda, bool ta,
                                 const std::uint32_t* bp, float beta, float* C, Index ldc, std::uint32_t* work) {
  const Index np = ((N + NR - 1) / NR) * NR;
  for (Index pc = 0; pc < K; pc += 2 * KC2) {
    const Index kc = K - pc < 2 * KC2 ? K - pc : 2 * KC2;
    gemm_block_bf16(M, N, pc, kc, alpha, A, lda, ta, bp, pc == 0 ? beta : 1.f, C, ldc, work);
    bp += np * ((kc + 1) / 2);
  }
}

/// C = alpha op(A) op(B) + beta C in bf16 products; `work` holds MC * KC2 + KC2 * round_up(N, NR) words.
FASTNN_KFN void gemm_bf16(Index M, Index N, Index K, float alpha, const float* A, Index lda, bool ta, const float* B,
                          Index ldb, bool tb, float beta, float* C, Index ldc, std::uint32_t* work) {
  std::uint32_t* bp = work + MC * KC2;
  for (Index pc = 0; pc < K; pc += 2 * KC2) {
    const Index kc = K - pc < 2 * KC2 ? K - pc : 2 * KC2;
    pack_b_bf16(B, ldb, tb, N, pc, kc, bp);
    gemm_block_bf16(M, N, pc, kc, alpha, A, lda, ta, bp, pc == 0 ? beta : 1.f, C, ldc, work);
  }
}
#endif  // FASTNN_X86_BF16

#if FASTNN_X86_AMX
// ---- bfloat16 GEMM on AMX tiles ------------------------------------------------------------
// op(A) packed as rows of pairs [Mp][K2p] (Mp = M rounded up to 32, K2p = ceil(K / 2) rounded
// up to 16, zero padded); op(B) as pair panels [Np / 32][K2p][32] (the same panels as
// pack_b_bf16). A 32 x 32 block of C is four 16 x 16 float tiles (tmm0-3); each step of 32 in
// depth loads two A tiles (tmm4-5) and two B tiles (tmm6-7) and issues four TDPBF16PS.

constexpr Index AMX_MB = 32;  // rows of C per block
constexpr Index AMX_K2 = 16;  // pairs per tile step (32 in depth)

FASTNN_KFN Index amx_rows(Index M) { return (M + AMX_MB - 1) / AMX_MB * AMX_MB; }
FASTNN_KFN Index amx_pairs(Index K) { return ((K + 1) / 2 + AMX_K2 - 1) / AMX_K2 * AMX_K2; }

/// op(A) [M, K] as pair rows: ap [amx_rows(M)][amx_pairs(K)] words, zero padded.
FASTNN_KFN void pack_a_amx(const float* A, Index lda, bool ta, Index M, Index K, std::uint32_t* ap) {
  const Index K2p = amx_pairs(K), Mp = amx_rows(M);
  if (!ta) {
    for (Index i = 0; i < M; ++i) {
      const float* src = A + i * lda;
      std::uint32_t* dst = ap + i * K2p;
      Index k = 0;
      for (; k < K; k += 32) _mm512_storeu_si512(dst + k / 2, seq_pairs(src + k, K - k < 32 ? K - k : 32));
      for (Index w = k / 2; w < K2p; ++w) dst[w] = 0;
    }
  } else {  // A [K, M]: rows k and k + 1 give the pairs of 16 consecutive rows of op(A)
    const __m512i stride = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32(static_cast<int>(K2p)));
    for (Index i = 0; i < M; i += 16) {
      const __mmask16 mask = first_n(M - i);
      for (Index k2 = 0; k2 < (K + 1) / 2; ++k2) {
        const float* src = A + 2 * k2 * lda + i;
        const __m512 lo = _mm512_maskz_loadu_ps(mask, src);
        const __m512 hi = 2 * k2 + 1 < K ? _mm512_maskz_loadu_ps(mask, src + lda) : _mm512_setzero_ps();
        _mm512_mask_i32scatter_epi32(ap + i * K2p + k2, mask, stride, vbf16_pairs_rows(lo, hi), 4);
      }
      for (Index r = i; r < (i + 16 < M ? i + 16 : M); ++r)
        for (Index w = (K + 1) / 2; w < K2p; ++w) ap[r * K2p + w] = 0;
    }
  }
  for (Index i = M; i < Mp; ++i)
    for (Index w = 0; w < K2p; ++w) ap[i * K2p + w] = 0;
}

/// Size in words of op(B) [K, N] packed for AMX.
FASTNN_KFN Index packed_b_size_amx(Index K, Index N) { return ((N + NR - 1) / NR) * NR * amx_pairs(K); }

/// op(B) [K, N] as pair panels [ceil(N / 32)][amx_pairs(K)][32], zero padded.
FASTNN_KFN void pack_b_amx(const float* B, Index ldb, bool tb, Index K, Index N, std::uint32_t* bp) {
  const Index K2p = amx_pairs(K), k2 = (K + 1) / 2;
  for (Index q = 0; q < N; q += NR) {
    const Index cols = N - q < NR ? N - q : NR;
    std::uint32_t* panel = bp + q * K2p;
    pack_b_bf16(tb ? B + q * ldb : B + q, ldb, tb, cols, 0, K, panel);  // rows [0, k2) of the panel
    for (Index r = k2; r < K2p; ++r)
      for (Index j = 0; j < NR; ++j) panel[r * NR + j] = 0;
  }
}

struct alignas(64) AmxConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

/// C = alpha op(A) op(B) + beta C from pack_a_amx / pack_b_amx operands.
FASTNN_KFN void gemm_amx_packed(Index M, Index N, Index K, float alpha, const std::uint32_t* ap,
                                const std::uint32_t* bp, float beta, float* C, Index ldc) {
  static const AmxConfig cfg;
  _tile_loadconfig(&cfg);
  const Index K2p = amx_pairs(K), Mp = amx_rows(M);
  const long astride = static_cast<long>(K2p * 4), bstride = static_cast<long>(NR * 4);
  alignas(64) float tile[4][16 * 16];
  for (Index q = 0; q < N; q += NR) {
    const std::uint32_t* panel = bp + q * K2p;
    for (Index i = 0; i < Mp; i += AMX_MB) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const std::uint32_t* a0 = ap + i * K2p;
      for (Index kk = 0; kk < K2p; kk += AMX_K2) {
        _tile_loadd(4, a0 + kk, astride);
        _tile_loadd(5, a0 + 16 * K2p + kk, astride);
        _tile_loadd(6, panel + kk * NR, bstride);
        _tile_loadd(7, panel + kk * NR + 16, bstride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, tile[0], 64);
      _tile_stored(1, tile[1], 64);
      _tile_stored(2, tile[2], 64);
      _tile_stored(3, tile[3], 64);
      const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
      for (int t = 0; t < 4; ++t) {
        const Index r0 = i + (t / 2) * 16, c0 = q + (t % 2) * 16;
        if (c0 >= N) continue;
        const __mmask16 cm = first_n(N - c0);
        for (Index r = 0; r < 16 && r0 + r < M; ++r) {
          float* c = C + (r0 + r) * ldc + c0;
          const __m512 acc = _mm512_load_ps(tile[t] + r * 16);
          const __m512 v = beta == 0.f ? _mm512_mul_ps(va, acc)
                                       : _mm512_fmadd_ps(va, acc, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(cm, c)));
          _mm512_mask_storeu_ps(c, cm, v);
        }
      }
    }
  }
  _tile_release();
}
#endif  // FASTNN_X86_AMX
