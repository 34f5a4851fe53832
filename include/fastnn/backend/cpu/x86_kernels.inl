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
// MR x NR micro-kernel keeps its tile of C in registers. With N <= 4 NR, op(A) is read in place
// instead of packed (too few panels to repay packing). op(B) can be packed once and reused
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
FASTNN_VFN V vabs(V a) { return _mm512_abs_ps(a); }
using LL = long long;
FASTNN_VFN __m512i vmix64(__m512i z) {  // hash::mix64 on 8 lanes
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64(LL(hash::kMix1)));
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64(LL(hash::kMix2)));
  return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}
/// All-ones lanes where mix64(z0 + l kGolden) >> 32 >= threshold, l = 0 .. VL - 1, zero lanes elsewhere.
FASTNN_VFN V vkept(std::uint64_t z0, std::uint32_t threshold) {
  constexpr std::uint64_t g = hash::kGolden;
  const __m512i step = _mm512_set_epi64(LL(7 * g), LL(6 * g), LL(5 * g), LL(4 * g), LL(3 * g), LL(2 * g), LL(g), 0);
  const __m512i t = _mm512_set1_epi64(LL(threshold));
  const __m512i lo = _mm512_add_epi64(_mm512_set1_epi64(LL(z0)), step);
  const __m512i hi = _mm512_add_epi64(_mm512_set1_epi64(LL(z0 + 8 * g)), step);
  const unsigned a = _mm512_cmpge_epu64_mask(_mm512_srli_epi64(vmix64(lo), 32), t);
  const unsigned b = _mm512_cmpge_epu64_mask(_mm512_srli_epi64(vmix64(hi), 32), t);
  return _mm512_castsi512_ps(_mm512_movm_epi32(static_cast<__mmask16>(a | (b << 8))));
}
FASTNN_VFN V vand(V mask, V v) { return _mm512_and_ps(mask, v); }
/// The first m (0 <= m <= VL) floats at p, the other lanes 0; nothing past p + m is read.
FASTNN_VFN V vload_first(const float* p, Index m) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << m) - 1u), p);
}
/// Stores the first m (0 <= m <= VL) lanes of v at p; nothing past p + m is written.
FASTNN_VFN void vstore_first(float* p, Index m, V v) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << m) - 1u), v);
}
/// if_neg where x's sign bit is set, else otherwise.
FASTNN_VFN V vselect_neg(V x, V if_neg, V otherwise) {
  return _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(x)), otherwise, if_neg);
}
/// v where !(z > limit) (NaN z keeps v), else 0.
FASTNN_VFN V vzero_above(V v, V z, V limit) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, limit, _CMP_NGT_UQ), v); }
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
FASTNN_VFN V vabs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
using LL = long long;
FASTNN_VFN __m256i vmullo64(__m256i a, __m256i b) {  // a b mod 2^64 on 4 lanes (AVX2 has no 64-bit multiply)
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                         _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
  return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
}
FASTNN_VFN __m256i vmix64(__m256i z) {  // hash::mix64 on 4 lanes
  z = vmullo64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), _mm256_set1_epi64x(LL(hash::kMix1)));
  z = vmullo64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), _mm256_set1_epi64x(LL(hash::kMix2)));
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}
/// All-ones lanes where mix64(z0 + l kGolden) >> 32 >= threshold, l = 0 .. VL - 1, zero lanes elsewhere.
FASTNN_VFN V vkept(std::uint64_t z0, std::uint32_t threshold) {
  constexpr std::uint64_t g = hash::kGolden;
  const __m256i step = _mm256_set_epi64x(LL(3 * g), LL(2 * g), LL(g), 0);
  // the hashes' high halves and the threshold are below 2^32: a signed 64-bit comparison is exact
  const __m256i t = _mm256_set1_epi64x(LL(threshold) - 1);
  const __m256i lo = _mm256_add_epi64(_mm256_set1_epi64x(LL(z0)), step);
  const __m256i hi = _mm256_add_epi64(_mm256_set1_epi64x(LL(z0 + 4 * g)), step);
  const __m256 a = _mm256_castsi256_ps(_mm256_cmpgt_epi64(_mm256_srli_epi64(vmix64(lo), 32), t));
  const __m256 b = _mm256_castsi256_ps(_mm256_cmpgt_epi64(_mm256_srli_epi64(vmix64(hi), 32), t));
  // the low 32 bits of each 64-bit lane, in lane order: a0 a1 b0 b1 | a2 a3 b2 b3, then a0-a3 b0-b3
  const __m256i ab = _mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88));
  return _mm256_castsi256_ps(_mm256_permute4x64_epi64(ab, 0xD8));
}
FASTNN_VFN V vand(V mask, V v) { return _mm256_and_ps(mask, v); }
FASTNN_VFN V vload_first(const float* p, Index m) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m)), lane));
}
FASTNN_VFN void vstore_first(float* p, Index m, V v) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m)), lane), v);
}
FASTNN_VFN V vselect_neg(V x, V if_neg, V otherwise) { return _mm256_blendv_ps(otherwise, if_neg, x); }
FASTNN_VFN V vzero_above(V v, V z, V limit) { return _mm256_and_ps(_mm256_cmp_ps(z, limit, _CMP_NGT_UQ), v); }
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

// The kernels, by job. Each part uses the vector helpers above; later parts use earlier ones
// (the LSTM cell uses the elementwise math, the bf16 GEMM the float GEMM's packing constants).
// The convolutions have no kernel of their own: they are im2col + these GEMMs (backend/cpu/conv.hpp).
#include "fastnn/backend/cpu/x86_vector_math.inl"
#include "fastnn/backend/cpu/x86_recurrent_cells.inl"
#include "fastnn/backend/cpu/x86_gemm.inl"
#include "fastnn/backend/cpu/x86_gemm_bf16.inl"

#undef FASTNN_KFN
#undef FASTNN_VFN
