// Part of the x86 kernels: included by backend/cpu/x86_kernels.inl (see there) once per path, inside that
// path's namespace, with its FASTNN_X86_* macros and vector helpers defined. No include guard.

// ---- GEMM ----------------------------------------------------------------------------------

/// op(A)[i][k] of a row-major A (lda), transposed when ta.
FASTNN_VFN float a_at(const float* A, Index lda, bool ta, Index i, Index k) { return ta ? A[k * lda + i] : A[i * lda + k]; }

/// Packs rows [i0, i0 + m) x depth [k0, k0 + kc) of op(A) into panels of MR rows: [panel][k][MR],
/// zero rows past m.
FASTNN_KFN void pack_a(const float* A, Index lda, bool ta, Index i0, Index m, Index k0, Index kc, float* ap) {
  for (Index p = 0; p < m; p += MR) {
    const Index rows = m - p < MR ? m - p : MR;
    float* dst = ap + p * kc;
    if (ta) {
      for (Index k = 0; k < kc; ++k) {
        const float* src = A + (k0 + k) * lda + i0 + p;
        for (Index r = 0; r < MR; ++r) dst[k * MR + r] = r < rows ? src[r] : 0.f;
      }
    } else {
      for (Index r = 0; r < MR; ++r) {
        if (r < rows) {
          const float* src = A + (i0 + p + r) * lda + k0;
          for (Index k = 0; k < kc; ++k) dst[k * MR + r] = src[k];
        } else {
          for (Index k = 0; k < kc; ++k) dst[k * MR + r] = 0.f;
        }
      }
    }
  }
}

/// Packs depth [k0, k0 + kc) x all N columns of op(B) into panels of NR columns: [panel][k][NR],
/// zero columns past N.
FASTNN_KFN void pack_b(const float* B, Index ldb, bool tb, Index N, Index k0, Index kc, float* bp) {
  for (Index q = 0; q < N; q += NR) {
    const Index cols = N - q < NR ? N - q : NR;
    float* dst = bp + q * kc;
    if (!tb) {
      for (Index k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + q;
        float* d = dst + k * NR;
        if (cols == NR) {
          vstore(d, vload(src));
          vstore(d + VL, vload(src + VL));
        } else {
          vstore(d, vload_first(src, cols < VL ? cols : VL));
          vstore(d + VL, cols > VL ? vload_first(src + VL, cols - VL) : vzero());
        }
      }
    } else {
      if (cols < NR)
        for (Index k = 0; k < kc; ++k) vstore(dst + k * NR, vzero()), vstore(dst + k * NR + VL, vzero());
      for (Index j = 0; j < cols; ++j) {
        const float* src = B + (q + j) * ldb + k0;
        for (Index k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
      }
    }
  }
}

/// store_row for a partial row (n < NR valid), with masked vectors; out of line, so that the micro-kernels that
/// inline store_row keep the small code of their full tiles.
__attribute__((noinline)) FASTNN_KFN void store_row_part(V a0, V a1, float* c, Index n, float alpha, float beta) {
  const V va = vset(alpha);
  const Index n0 = n < VL ? n : VL, n1 = n - n0;
  if (beta == 0.f) {
    vstore_first(c, n0, vmul(va, a0));
    if (n1) vstore_first(c + VL, n1, vmul(va, a1));
  } else {
    const V vb = vset(beta);
    vstore_first(c, n0, vfma(va, a0, vmul(vb, vload_first(c, n0))));
    if (n1) vstore_first(c + VL, n1, vfma(va, a1, vmul(vb, vload_first(c + VL, n1))));
  }
}

/// Writes one row of NR accumulators (a0, a1) into c (n valid): c = alpha acc + beta c, as
/// fma(alpha, acc, beta c) in every lane, so a partial row rounds as a full one.
FASTNN_VFN void store_row(V a0, V a1, float* c, Index n, float alpha, float beta) {
  if (n != NR) return store_row_part(a0, a1, c, n, alpha, beta);
  const V va = vset(alpha);
  if (beta == 0.f) {
    vstore(c, vmul(va, a0));
    vstore(c + VL, vmul(va, a1));
  } else {
    const V vb = vset(beta);
    vstore(c, vfma(va, a0, vmul(vb, vload(c))));
    vstore(c + VL, vfma(va, a1, vmul(vb, vload(c + VL))));
  }
}

/// Writes an MR x NR tile of accumulators into C (m x n valid): C = alpha acc + beta C.
FASTNN_VFN void store_tile(V (&acc)[MR][2], float* C, Index ldc, Index m, Index n, float alpha, float beta) {
  for (Index r = 0; r < m; ++r) store_row(acc[r][0], acc[r][1], C + r * ldc, n, alpha, beta);
}

/// One row `a` (kc contiguous floats) of op(A) times P consecutive panels of NR columns of op(B)
/// (n <= P NR columns valid), for a GEMM with M = 1 as in batch-1 inference: 2 P independent
/// accumulators, where micro_f32 would spend its work on MR - 1 rows of zeros. Panel p's row k
/// starts at b + p * panel + k * kstep: packed panels (panel = NR kc, kstep = NR) or B's rows read
/// in place (panel = NR, kstep = ldb). Each output sums over k in micro_f32's order and is stored
/// as micro_f32 stores it, so the results are the same.
template <int P>
FASTNN_KFN void micro_row_f32(Index kc, const float* a, const float* b, Index panel, Index kstep, float* C, Index n,
                              float alpha, float beta) {
  V acc[P][2];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = vzero();
  for (Index k = 0; k < kc; ++k) {
    const V av = vset(a[k]);
    const float* bk = b + k * kstep;
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      acc[p][0] = vfma(av, vload(bk + p * panel), acc[p][0]);
      acc[p][1] = vfma(av, vload(bk + p * panel + VL), acc[p][1]);
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    const Index left = n - p * NR;
    store_row(acc[p][0], acc[p][1], C + p * NR, left < NR ? left : NR, alpha, beta);
  }
}

/// micro_row_f32 over the panels that cover n columns, four at a time.
FASTNN_KFN void row_f32(Index kc, const float* a, const float* b, Index panel, Index kstep, float* C, Index n,
                        float alpha, float beta) {
  for (Index q = 0; q < n; q += 4 * NR) {
    const Index left = n - q;
    const float* bq = b + q / NR * panel;
    if (left > 3 * NR) micro_row_f32<4>(kc, a, bq, panel, kstep, C + q, left, alpha, beta);
    else if (left > 2 * NR) micro_row_f32<3>(kc, a, bq, panel, kstep, C + q, left, alpha, beta);
    else if (left > NR) micro_row_f32<2>(kc, a, bq, panel, kstep, C + q, left, alpha, beta);
    else micro_row_f32<1>(kc, a, bq, panel, kstep, C + q, left, alpha, beta);
  }
}

/// acc = sum over kc of the packed panels' products.
FASTNN_KFN void micro_f32(Index kc, const float* ap, const float* bp, float* C, Index ldc, Index m, Index n,
                          float alpha, float beta) {
  V acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = vzero();
  for (Index k = 0; k < kc; ++k) {
    const V b0 = vload(bp + k * NR), b1 = vload(bp + k * NR + VL);
    const float* a = ap + k * MR;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V av = vset(a[r]);
      acc[r][0] = vfma(av, b0, acc[r][0]);
      acc[r][1] = vfma(av, b1, acc[r][1]);
    }
  }
  store_tile(acc, C, ldc, m, n, alpha, beta);
}

/// Like micro_f32 for R <= MR rows of op(A) read in place, not packed: row r, depth k at
/// a[r * rs + k * ks] (rows past m repeat row m - 1, and are not stored). Two: both vectors of
/// the panel; otherwise only the first (n <= VL), the second accumulator staying 0. The same sums
/// in the same order, stored by store_row, so the results are micro_f32's.
template <int R, bool Two>
FASTNN_KFN void micro_direct_f32(Index kc, const float* a, Index rs, Index ks, Index m, const float* bp, float* C,
                                 Index ldc, Index n, float alpha, float beta) {
  V acc[R][2];
  Index off[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    acc[r][0] = acc[r][1] = vzero();
    off[r] = (r < m ? r : m - 1) * rs;
  }
  for (Index k = 0; k < kc; ++k) {
    const V b0 = vload(bp + k * NR);
    const V b1 = Two ? vload(bp + k * NR + VL) : vzero();
    const float* ak = a + k * ks;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V av = vset(ak[off[r]]);
      acc[r][0] = vfma(av, b0, acc[r][0]);
      if (Two) acc[r][1] = vfma(av, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R && r < m; ++r) store_row(acc[r][0], acc[r][1], C + r * ldc, n, alpha, beta);
}

/// C[M, N] (+)= rows of op(A) (in place, at a with strides rs, ks) times a packed depth block
/// `bblock` of op(B) (kc deep): per panel of NR columns, MR rows at a time, the last ones 4 at a time.
FASTNN_KFN void direct_block_f32(Index M, Index N, Index kc, float alpha, const float* a, Index rs, Index ks,
                                 const float* bblock, float beta, float* C, Index ldc) {
  for (Index q = 0; q < N; q += NR) {
    const Index n = N - q < NR ? N - q : NR;
    const float* bq = bblock + q * kc;
    Index i = 0;
    for (; i + MR <= M; i += MR) {
      if (n > VL) micro_direct_f32<MR, true>(kc, a + i * rs, rs, ks, MR, bq, C + i * ldc + q, ldc, n, alpha, beta);
      else micro_direct_f32<MR, false>(kc, a + i * rs, rs, ks, MR, bq, C + i * ldc + q, ldc, n, alpha, beta);
    }
    for (; i < M; i += 4) {
      const Index m = M - i < 4 ? M - i : 4;
      if (n > VL) micro_direct_f32<4, true>(kc, a + i * rs, rs, ks, m, bq, C + i * ldc + q, ldc, n, alpha, beta);
      else micro_direct_f32<4, false>(kc, a + i * rs, rs, ks, m, bq, C + i * ldc + q, ldc, n, alpha, beta);
    }
  }
}

/// Size in floats of op(B) [K, N] packed whole (every K block).
FASTNN_KFN Index packed_b_size(Index K, Index N) { return ((N + NR - 1) / NR) * NR * K; }

/// Packs all of op(B) [K, N]: block pc (KC deep) starts at float pc * round_up(N, NR).
FASTNN_KFN void pack_b_all(const float* B, Index ldb, bool tb, Index K, Index N, float* bp) {
  const Index np = ((N + NR - 1) / NR) * NR;
  for (Index pc = 0; pc < K; pc += KC) pack_b(B, ldb, tb, N, pc, K - pc < KC ? K - pc : KC, bp + pc * np);
}

/// One depth block [pc, pc + kc) of C = alpha op(A) op(B) + b C, op(B)'s block packed in `bblock`:
/// packs op(A) block by block into `work` (MC * KC floats) and runs the micro-kernel over C.
/// With at most four panels of op(B) (N <= 4 NR), packing op(A) costs more than it saves (each packed row would be
/// read at most four times): its rows are read in place instead (direct_block_f32), MC rows at a time, which stay
/// in the L1 cache across the panels.
FASTNN_KFN void gemm_block_f32(Index M, Index N, Index pc, Index kc, float alpha, const float* A, Index lda, bool ta,
                               const float* bblock, float b, float* C, Index ldc, float* work) {
  const bool direct = N <= 4 * NR;
  for (Index ic = 0; ic < M; ic += MC) {
    const Index mc = M - ic < MC ? M - ic : MC;
    if (direct && mc > 1) {
      const Index rs = ta ? 1 : lda, ks = ta ? lda : 1;
      direct_block_f32(mc, N, kc, alpha, A + ic * rs + pc * ks, rs, ks, bblock, b, C + ic * ldc, ldc);
      continue;
    }
    if (mc == 1) {  // one row, used in place unless strided: four panels of B at a time
      const float* a = A + ic * lda + pc;
      if (ta) {
        for (Index k = 0; k < kc; ++k) work[k] = A[(pc + k) * lda + ic];
        a = work;
      }
      row_f32(kc, a, bblock, NR * kc, NR, C + ic * ldc, N, alpha, b);
      continue;
    }
    pack_a(A, lda, ta, ic, mc, pc, kc, work);
    for (Index q = 0; q < N; q += NR) {
      const Index n = N - q < NR ? N - q : NR;
      for (Index p = 0; p < mc; p += MR) {
        const Index m = mc - p < MR ? mc - p : MR;
        micro_f32(kc, work + p * kc, bblock + q * kc, C + (ic + p) * ldc + q, ldc, m, n, alpha, b);
      }
    }
  }
}

/// C = alpha op(A) Bp + beta C with op(B) already packed by pack_b_all. `work` holds
/// MC * KC floats.
FASTNN_KFN void gemm_packed_f32(Index M, Index N, Index K, float alpha, const float* A, Index lda, bool ta,
                                const float* bp, float beta, float* C, Index ldc, float* work) {
  const Index np = ((N + NR - 1) / NR) * NR;
  for (Index pc = 0; pc < K; pc += KC)
    gemm_block_f32(M, N, pc, K - pc < KC ? K - pc : KC, alpha, A, lda, ta, bp + pc * np, pc == 0 ? beta : 1.f, C,
                   ldc, work);
}

/// C[N] = alpha a B + beta C for one row `a` [K] and B [K, N] row-major (ldb), B unpacked: with
/// one row nothing is reused, so packing B would cost as much as the product. Full panels are read
/// in place; the last N % NR columns are copied into one zero-padded panel in `work`
/// (KC * NR floats). Every output sums over k in order, in depth blocks of KC, and is stored as the
/// packed kernels store it, so the results are theirs.
FASTNN_KFN void gemm_row_f32(Index N, Index K, float alpha, const float* a, const float* B, Index ldb, float beta,
                             float* C, float* work) {
  const Index full = N / NR * NR;
  for (Index pc = 0; pc < K; pc += KC) {
    const Index kc = K - pc < KC ? K - pc : KC;
    const float bb = pc == 0 ? beta : 1.f;
    const float* ap = a + pc;
    const float* bp = B + pc * ldb;
    row_f32(kc, ap, bp, NR, ldb, C, full, alpha, bb);
    if (full < N) {
      for (Index k = 0; k < kc; ++k)
        for (Index j = 0; j < NR; ++j) work[k * NR + j] = full + j < N ? bp[k * ldb + full + j] : 0.f;
      micro_row_f32<1>(kc, ap, work, NR * kc, NR, C + full, N - full, alpha, bb);
    }
  }
}

/// C = alpha op(A) op(B) + beta C; `work` holds MC * KC + KC * round_up(N, NR) floats.
FASTNN_KFN void gemm_f32(Index M, Index N, Index K, float alpha, const float* A, Index lda, bool ta, const float* B,
                         Index ldb, bool tb, float beta, float* C, Index ldc, float* work) {
  if (M == 1 && !tb && (!ta || lda == 1)) return gemm_row_f32(N, K, alpha, A, B, ldb, beta, C, work);
  float* bp = work + MC * KC;
  for (Index pc = 0; pc < K; pc += KC) {
    const Index kc = K - pc < KC ? K - pc : KC;
    pack_b(B, ldb, tb, N, pc, kc, bp);
    gemm_block_f32(M, N, pc, kc, alpha, A, lda, ta, bp, pc == 0 ? beta : 1.f, C, ldc, work);
  }
}

