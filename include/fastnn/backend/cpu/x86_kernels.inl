// The CPU kernels written once and compiled once per x86 path. backend/cpu/x86_kernels.hpp
// includes this file inside a namespace per path, with
//   FASTNN_X86_TARGET  the GCC/Clang target string of the path
//   FASTNN_X86_LEVEL   2: AVX2 + FMA (8 floats a vector); 3: AVX-512 (16 floats)
//   FASTNN_X86_BF16    1 when the path also has the AVX512-BF16 products
//   FASTNN_X86_AMX     1 when it also has the AMX tile products (bf16)
// Every function carries the target attribute, so the including program's own flags do not
// matter. No include guard: it is meant to be included several times.
//
// GEMM: C = alpha op(A) op(B) + beta C, row-major, blocked like BLIS/GotoBLAS: op(B) is packed
// in panels of NR columns ([k][NR], K blocks of KC), op(A) in panels of MR rows ([k][MR]); an
// MR x NR micro-kernel keeps its tile of C in registers. op(B) can be packed once and reused
// (PackedB: the recurrent kernel of every time step). The bf16 variant packs both operands as
// pairs of bfloat16 along k (one 32-bit word per pair) and multiplies them with vdpbf16ps,
// accumulating in float.

#define FASTNN_KFN __attribute__((target(FASTNN_X86_TARGET))) inline
#define FASTNN_VFN __attribute__((target(FASTNN_X86_TARGET), always_inline)) inline

#if FASTNN_X86_LEVEL == 3
using V = __m512;
constexpr int VL = 16;
constexpr int MR = 12;  // 24 accumulators + 2 panels of B + 1 broadcast of A: 27 of 32 registers
FASTNN_VFN V vload(const float* p) { return _mm512_loadu_ps(p); }
FASTNN_VFN void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
FASTNN_VFN V vset(float x) { return _mm512_set1_ps(x); }
FASTNN_VFN V vzero() { return _mm512_setzero_ps(); }
FASTNN_VFN V vadd(V a, V b) { return _mm512_add_ps(a, b); }
FASTNN_VFN V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
FASTNN_VFN V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
FASTNN_VFN V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
FASTNN_VFN V vfnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
FASTNN_VFN V vmax(V a, V b) { return _mm512_max_ps(a, b); }
FASTNN_VFN V vmin(V a, V b) { return _mm512_min_ps(a, b); }
FASTNN_VFN V vround(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
FASTNN_VFN V vrcp_approx(V a) { return _mm512_rcp14_ps(a); }
FASTNN_VFN V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
FASTNN_VFN V vsqrt(V a) { return _mm512_sqrt_ps(a); }
FASTNN_VFN V vscale2(V p, V n) { return _mm512_scalef_ps(p, n); }  // p 2^n, n integral
/// 1 where 0 < y < 1, else 0 (the hard sigmoid's slope mask, times 0.2 by the caller).
FASTNN_VFN V vinside01(V y) {
  const __mmask16 m = _mm512_cmp_ps_mask(y, vzero(), _CMP_GT_OQ) & _mm512_cmp_ps_mask(y, vset(1.f), _CMP_LT_OQ);
  return _mm512_maskz_mov_ps(m, vset(1.f));
}
#elif FASTNN_X86_LEVEL == 2
using V = __m256;
constexpr int VL = 8;
constexpr int MR = 6;  // 12 accumulators + 2 panels of B + 1 broadcast of A: 15 of 16 registers
FASTNN_VFN V vload(const float* p) { return _mm256_loadu_ps(p); }
FASTNN_VFN void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
FASTNN_VFN V vset(float x) { return _mm256_set1_ps(x); }
FASTNN_VFN V vzero() { return _mm256_setzero_ps(); }
FASTNN_VFN V vadd(V a, V b) { return _mm256_add_ps(a, b); }
FASTNN_VFN V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
FASTNN_VFN V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
FASTNN_VFN V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
FASTNN_VFN V vfnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
FASTNN_VFN V vmax(V a, V b) { return _mm256_max_ps(a, b); }
FASTNN_VFN V vmin(V a, V b) { return _mm256_min_ps(a, b); }
FASTNN_VFN V vround(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
FASTNN_VFN V vrcp_approx(V a) { return _mm256_rcp_ps(a); }
FASTNN_VFN V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
FASTNN_VFN V vsqrt(V a) { return _mm256_sqrt_ps(a); }
FASTNN_VFN V vscale2(V p, V n) {  // p 2^n for integral n in [-126, 127]
  return _mm256_mul_ps(
      p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)));
}
FASTNN_VFN V vinside01(V y) {
  const V m = _mm256_and_ps(_mm256_cmp_ps(y, vzero(), _CMP_GT_OQ), _mm256_cmp_ps(y, vset(1.f), _CMP_LT_OQ));
  return _mm256_and_ps(m, vset(1.f));
}
#else
#error "FASTNN_X86_LEVEL must be 2 or 3"
#endif

constexpr int NR = 2 * VL;  // columns of a micro-tile: two vectors
constexpr Index KC = 256;   // depth of a packed block (floats; bf16 blocks hold twice as many)
constexpr Index MC = 8 * MR;

// ---- elementwise math ----------------------------------------------------------------------

/// 1 / a: the approximate reciprocal refined by one Newton step (about 1 ulp).
FASTNN_VFN V vrcp(V a) {
  const V r = vrcp_approx(a);
  return vmul(r, vfnma(a, r, vset(2.f)));
}

/// 2^t. t is clamped to [-126, 126], so 2^t and 1 + 2^t stay normal floats (NaN stays NaN: max
/// and min return their second operand for NaN); t = n + r with n = round(t) and |r| <= 1/2; 2^r
/// by a degree-6 polynomial fitted for least maximum relative error on [-1/2, 1/2] (1.3 ulp when
/// evaluated in float); times 2^n.
FASTNN_VFN V vexp2(V t) {
  t = vmin(vset(126.f), vmax(vset(-126.f), t));
  const V n = vround(t);
  const V r = vsub(t, n);  // exact
  V p = vset(1.53458124e-4f);
  p = vfma(p, r, vset(1.33999309e-3f));
  p = vfma(p, r, vset(9.61848907e-3f));
  p = vfma(p, r, vset(5.55032864e-2f));
  p = vfma(p, r, vset(2.40226462e-1f));
  p = vfma(p, r, vset(6.93147182e-1f));
  p = vfma(p, r, vset(1.f));
  return vscale2(p, n);
}

constexpr float kLog2e = 1.44269504088896341f;

/// sigmoid(x) = 1 / (1 + 2^(-x log2 e)). Rounding the product x log2 e changes 2^t by a relative
/// |t| 2^-23 at most, which moves sigmoid by less than 1e-8: its slope sigmoid (1 - sigmoid)
/// shrinks faster than |t| grows.
FASTNN_VFN V vsigmoid(V x) { return vrcp(vadd(vset(1.f), vexp2(vmul(x, vset(-kLog2e))))); }

/// tanh(x) = 2 sigmoid(2x) - 1 (absolute error about 1e-7).
FASTNN_VFN V vtanh(V x) {
  return vfma(vset(2.f), vrcp(vadd(vset(1.f), vexp2(vmul(x, vset(-2.f * kLog2e))))), vset(-1.f));
}

template <bool Hard>
FASTNN_VFN V vgate(V x) {
  if constexpr (Hard) return vmin(vset(1.f), vmax(vzero(), vfma(x, vset(0.2f), vset(0.5f))));  // NaN stays NaN
  else return vsigmoid(x);
}
/// The gate's derivative from its output y.
template <bool Hard>
FASTNN_VFN V vgate_grad(V y) {
  if constexpr (Hard) return vmul(vinside01(y), vset(0.2f));
  else return vmul(y, vsub(vset(1.f), y));
}

// ---- the LSTM cell -------------------------------------------------------------------------

/// Forward of n rows (gate order i, f, c, o): z [n, 4H] pre-activations without the bias
/// [4H], replaced by the activations; c = f cprev + i g, tc = tanh(c), h = o tc. Rows of cprev, c, tc, h are H apart.
template <bool Hard>
FASTNN_KFN void lstm_forward_rows(Index n, Index H, float* z, const float* bias, const float* cprev, float* c,
                                  float* tc, float* h) {
  const Index G4 = 4 * H;
  for (Index r = 0; r < n; ++r) {
    float* zr = z + r * G4;
    const float* cp = cprev + r * H;
    float *cr = c + r * H, *tr = tc + r * H, *hr = h + r * H;
    Index k = 0;
    for (; k + VL <= H; k += VL) {
      const V i = vgate<Hard>(vadd(vload(zr + k), vload(bias + k)));
      const V f = vgate<Hard>(vadd(vload(zr + H + k), vload(bias + H + k)));
      const V g = vtanh(vadd(vload(zr + 2 * H + k), vload(bias + 2 * H + k)));
      const V o = vgate<Hard>(vadd(vload(zr + 3 * H + k), vload(bias + 3 * H + k)));
      vstore(zr + k, i), vstore(zr + H + k, f), vstore(zr + 2 * H + k, g), vstore(zr + 3 * H + k, o);
      const V cv = vfma(f, vload(cp + k), vmul(i, g));
      const V t = vtanh(cv);
      vstore(cr + k, cv), vstore(tr + k, t), vstore(hr + k, vmul(o, t));
    }
    if (k < H) {  // the last H % VL units, through a zero-padded buffer
      alignas(64) float in[5][VL] = {}, out[7][VL] = {};
      const Index m = H - k;
      for (Index q = 0; q < m; ++q) {
        for (int gi = 0; gi < 4; ++gi) in[gi][q] = zr[gi * H + k + q] + bias[gi * H + k + q];
        in[4][q] = cp[k + q];
      }
      const V i = vgate<Hard>(vload(in[0])), f = vgate<Hard>(vload(in[1]));
      const V g = vtanh(vload(in[2])), o = vgate<Hard>(vload(in[3]));
      const V cv = vfma(f, vload(in[4]), vmul(i, g));
      const V t = vtanh(cv);
      vstore(out[0], i), vstore(out[1], f), vstore(out[2], g), vstore(out[3], o);
      vstore(out[4], cv), vstore(out[5], t), vstore(out[6], vmul(o, t));
      for (Index q = 0; q < m; ++q) {
        for (int gi = 0; gi < 4; ++gi) zr[gi * H + k + q] = out[gi][q];
        cr[k + q] = out[4][q], tr[k + q] = out[5][q], hr[k + q] = out[6][q];
      }
    }
  }
}

/// Backward of n rows: z the activations i, f, g, o; dh, dc [n, H] (dc is carried: on return it
/// holds dL/dc_{t-1}); dz [n, 4H] the pre-activation gradients; db [4H] += the column sums of dz.
template <bool Hard>
FASTNN_KFN void lstm_backward_rows(Index n, Index H, const float* z, const float* cprev, const float* tc,
                                   const float* dh, float* dc, float* dz, float* db) {
  const Index G4 = 4 * H;
  alignas(64) float in[8][VL], out[5][VL];
  for (Index r = 0; r < n; ++r) {
    const float* zr = z + r * G4;
    float* dzr = dz + r * G4;
    const float *cp = cprev + r * H, *tr = tc + r * H, *dhr = dh + r * H;
    float* dcr = dc + r * H;
    for (Index k = 0; k < H; k += VL) {
      const Index m = H - k < VL ? H - k : VL;
      const bool full = m == VL;
      const float *pi = zr + k, *pf = zr + H + k, *pg = zr + 2 * H + k, *po = zr + 3 * H + k;
      const float *pc = cp + k, *pt = tr + k, *pdh = dhr + k, *pdc = dcr + k;
      if (!full) {
        const float* src[8] = {pi, pf, pg, po, pc, pt, pdh, pdc};
        for (int s = 0; s < 8; ++s) {
          for (Index q = 0; q < VL; ++q) in[s][q] = q < m ? src[s][q] : 0.f;
        }
        pi = in[0], pf = in[1], pg = in[2], po = in[3], pc = in[4], pt = in[5], pdh = in[6], pdc = in[7];
      }
      const V i = vload(pi), f = vload(pf), g = vload(pg), o = vload(po);
      const V t = vload(pt), dhv = vload(pdh);
      V dcv = vfma(vmul(dhv, o), vfnma(t, t, vset(1.f)), vload(pdc));
      const V dout = vmul(vmul(dhv, t), vgate_grad<Hard>(o));
      const V di = vmul(vmul(dcv, g), vgate_grad<Hard>(i));
      const V dg = vmul(vmul(dcv, i), vfnma(g, g, vset(1.f)));
      const V df = vmul(vmul(dcv, vload(pc)), vgate_grad<Hard>(f));
      dcv = vmul(dcv, f);
      if (full) {
        vstore(dzr + k, di), vstore(dzr + H + k, df), vstore(dzr + 2 * H + k, dg), vstore(dzr + 3 * H + k, dout);
        vstore(dcr + k, dcv);
        vstore(db + k, vadd(vload(db + k), di));
        vstore(db + H + k, vadd(vload(db + H + k), df));
        vstore(db + 2 * H + k, vadd(vload(db + 2 * H + k), dg));
        vstore(db + 3 * H + k, vadd(vload(db + 3 * H + k), dout));
      } else {
        vstore(out[0], di), vstore(out[1], df), vstore(out[2], dg), vstore(out[3], dout), vstore(out[4], dcv);
        for (Index q = 0; q < m; ++q) {
          for (int gi = 0; gi < 4; ++gi) {
            dzr[gi * H + k + q] = out[gi][q];
            db[gi * H + k + q] += out[gi][q];
          }
          dcr[k + q] = out[4][q];
        }
      }
    }
  }
}

// ---- optimizer updates ---------------------------------------------------------------------

/// SGD with momentum m (0: plain): v = m v - lr g; w += v, or w += m v - lr g (Nesterov).
FASTNN_KFN void sgd_update(Index n, float* w, const float* g, float* v, float lr, float m, bool nesterov) {
  const V vlr = vset(lr), vm = vset(m);
  Index k = 0;
  if (v == nullptr) {
    for (; k + VL <= n; k += VL) vstore(w + k, vfnma(vlr, vload(g + k), vload(w + k)));
    for (; k < n; ++k) w[k] -= lr * g[k];
    return;
  }
  for (; k + VL <= n; k += VL) {
    const V gv = vload(g + k);
    const V vel = vfnma(vlr, gv, vmul(vm, vload(v + k)));
    vstore(v + k, vel);
    const V step = nesterov ? vfnma(vlr, gv, vmul(vm, vel)) : vel;
    vstore(w + k, vadd(vload(w + k), step));
  }
  for (; k < n; ++k) {
    v[k] = m * v[k] - lr * g[k];
    w[k] += nesterov ? m * v[k] - lr * g[k] : v[k];
  }
}

/// Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; w -= lr_t m / (sqrt(v) + eps).
FASTNN_KFN void adam_update(Index n, float* w, const float* g, float* m, float* v, float lr_t, float b1, float b2,
                            float eps) {
  const V vb1 = vset(b1), vb2 = vset(b2), vc1 = vset(1.f - b1), vc2 = vset(1.f - b2), vlr = vset(lr_t), ve = vset(eps);
  Index k = 0;
  for (; k + VL <= n; k += VL) {
    const V gv = vload(g + k);
    const V mv = vfma(vb1, vload(m + k), vmul(vc1, gv));
    const V vv = vfma(vb2, vload(v + k), vmul(vc2, vmul(gv, gv)));
    vstore(m + k, mv), vstore(v + k, vv);
    vstore(w + k, vfnma(vlr, vdiv(mv, vadd(vsqrt(vv), ve)), vload(w + k)));
  }
  for (; k < n; ++k) {
    m[k] = b1 * m[k] + (1.f - b1) * g[k];
    v[k] = b2 * v[k] + (1.f - b2) * g[k] * g[k];
    w[k] -= lr_t * m[k] / (std::sqrt(v[k]) + eps);
  }
}

/// RMSprop: a = rho a + (1 - rho) g^2; w -= lr g / (sqrt(a) + eps).
FASTNN_KFN void rmsprop_update(Index n, float* w, const float* g, float* a, float lr, float rho, float eps) {
  const V vr = vset(rho), vc = vset(1.f - rho), vlr = vset(lr), ve = vset(eps);
  Index k = 0;
  for (; k + VL <= n; k += VL) {
    const V gv = vload(g + k);
    const V av = vfma(vr, vload(a + k), vmul(vc, vmul(gv, gv)));
    vstore(a + k, av);
    vstore(w + k, vfnma(vlr, vdiv(gv, vadd(vsqrt(av), ve)), vload(w + k)));
  }
  for (; k < n; ++k) {
    a[k] = rho * a[k] + (1.f - rho) * g[k] * g[k];
    w[k] -= lr * g[k] / (std::sqrt(a[k]) + eps);
  }
}

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
          for (Index j = 0; j < NR; ++j) d[j] = j < cols ? src[j] : 0.f;
        }
      }
    } else {
      for (Index j = 0; j < NR; ++j) {
        if (j < cols) {
          const float* src = B + (q + j) * ldb + k0;
          for (Index k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
        } else {
          for (Index k = 0; k < kc; ++k) dst[k * NR + j] = 0.f;
        }
      }
    }
  }
}

/// Writes one row of NR accumulators (a0, a1) into c (n valid): c = alpha acc + beta c.
FASTNN_VFN void store_row(V a0, V a1, float* c, Index n, float alpha, float beta) {
  if (n == NR) {
    const V va = vset(alpha);
    if (beta == 0.f) {
      vstore(c, vmul(va, a0));
      vstore(c + VL, vmul(va, a1));
    } else {
      const V vb = vset(beta);
      vstore(c, vfma(va, a0, vmul(vb, vload(c))));
      vstore(c + VL, vfma(va, a1, vmul(vb, vload(c + VL))));
    }
    return;
  }
  alignas(64) float tile[NR];
  vstore(tile, a0);
  vstore(tile + VL, a1);
  for (Index j = 0; j < n; ++j) c[j] = beta == 0.f ? alpha * tile[j] : alpha * tile[j] + beta * c[j];
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

/// Size in floats of op(B) [K, N] packed whole (every K block).
FASTNN_KFN Index packed_b_size(Index K, Index N) { return ((N + NR - 1) / NR) * NR * K; }

/// Packs all of op(B) [K, N]: block pc (KC deep) starts at float pc * round_up(N, NR).
FASTNN_KFN void pack_b_all(const float* B, Index ldb, bool tb, Index K, Index N, float* bp) {
  const Index np = ((N + NR - 1) / NR) * NR;
  for (Index pc = 0; pc < K; pc += KC) pack_b(B, ldb, tb, N, pc, K - pc < KC ? K - pc : KC, bp + pc * np);
}

/// One depth block [pc, pc + kc) of C = alpha op(A) op(B) + b C, op(B)'s block packed in `bblock`:
/// packs op(A) block by block into `work` (MC * KC floats) and runs the micro-kernel over C.
FASTNN_KFN void gemm_block_f32(Index M, Index N, Index pc, Index kc, float alpha, const float* A, Index lda, bool ta,
                               const float* bblock, float b, float* C, Index ldc, float* work) {
  for (Index ic = 0; ic < M; ic += MC) {
    const Index mc = M - ic < MC ? M - ic : MC;
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

#undef FASTNN_KFN
#undef FASTNN_VFN
