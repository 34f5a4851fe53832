// Part of the x86 kernels: included by backend/cpu/x86_kernels.inl (see there) once per path, inside that
// path's namespace, with its FASTNN_X86_* macros and vector helpers defined. No include guard.

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

/// The standard normal distribution function Phi(x) and, in *density, exp(-x^2 / 2). Through
/// erfc(z), z = |x| / sqrt(2): erfc(z) = t exp(-z^2 + P(t)) with t = 1 / (1 + z / 2) and P the
/// degree-9 Chebyshev fit of Numerical Recipes' erfcc (fractional error below 1.2e-7 for every
/// z >= 0); Phi(x) = erfc(z) / 2 for x < 0 and 1 - erfc(z) / 2 otherwise, so the lower tail keeps
/// its relative accuracy. Past z = 9.2 both exponentials are below the smallest normal float and
/// are returned as 0 (no subnormal results).
FASTNN_VFN V vnormal_cdf(V x, V* density) {
  const V z = vmul(vabs(x), vset(0.70710678118654752f));
  const V t = vrcp(vfma(z, vset(0.5f), vset(1.f)));
  V p = vset(0.17087277f);
  p = vfma(p, t, vset(-0.82215223f));
  p = vfma(p, t, vset(1.48851587f));
  p = vfma(p, t, vset(-1.13520398f));
  p = vfma(p, t, vset(0.27886807f));
  p = vfma(p, t, vset(-0.18628806f));
  p = vfma(p, t, vset(0.09678418f));
  p = vfma(p, t, vset(0.37409196f));
  p = vfma(p, t, vset(1.00002368f));
  p = vfma(p, t, vset(-1.26551223f));
  const V limit = vset(9.2f), zz = vmul(z, z);
  if (density) *density = vzero_above(vexp2(vmul(vsub(vzero(), zz), vset(kLog2e))), z, limit);
  const V half_erfc = vzero_above(vmul(vmul(t, vset(0.5f)), vexp2(vmul(vsub(p, zz), vset(kLog2e)))), z, limit);
  return vselect_neg(x, half_erfc, vsub(vset(1.f), half_erfc));
}

FASTNN_VFN V vgelu(V x) { return vmul(x, vnormal_cdf(x, nullptr)); }
/// d gelu'(x), gelu'(x) = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi).
FASTNN_VFN V vgelu_backward(V x, V d) {
  V e;
  const V phi = vnormal_cdf(x, &e);
  return vmul(d, vfma(vmul(x, vset(0.39894228040143268f)), e, phi));
}

/// y = gelu(y) = y Phi(y), in place (Keras's exact gelu, approximate=False).
FASTNN_KFN void gelu_forward(Index n, float* y) {
  Index k = 0;
  for (; k + VL <= n; k += VL) vstore(y + k, vgelu(vload(y + k)));
  if (k < n) vstore_first(y + k, n - k, vgelu(vload_first(y + k, n - k)));
}

/// d *= gelu'(x), from the pre-activation x.
FASTNN_KFN void gelu_backward(Index n, const float* x, float* d) {
  Index k = 0;
  for (; k + VL <= n; k += VL) vstore(d + k, vgelu_backward(vload(x + k), vload(d + k)));
  if (k < n) vstore_first(d + k, n - k, vgelu_backward(vload_first(x + k, n - k), vload_first(d + k, n - k)));
}

/// r[0, n) = exp(r - shift), n >= 1 (vexp2: about 1.3 ulp); returns the sum of the results.
FASTNN_KFN float exp_shifted(Index n, float* r, float shift) {
  const V vs = vset(shift), l2e = vset(kLog2e);
  V acc = vzero();
  Index k = 0;
  for (; k + VL <= n; k += VL) {
    const V e = vexp2(vmul(vsub(vload(r + k), vs), l2e));
    vstore(r + k, e);
    acc = vadd(acc, e);
  }
  if (k < n) {
    vstore_first(r + k, n - k, vexp2(vmul(vsub(vload_first(r + k, n - k), vs), l2e)));
    acc = vadd(acc, vload_first(r + k, n - k));
  }
  alignas(64) float lanes[VL];
  vstore(lanes, acc);
  float sum = 0.f;
  for (int i = 0; i < VL; ++i) sum += lanes[i];
  return sum;
}

/// Dropout: y[k] = x[k] scale where the mask keeps element first + k (hash::bits32(key, first + k) >= threshold),
/// else 0, for k in [0, n); y may be x. The same mask as the scalar hash::bits32, bit for bit.
FASTNN_KFN void dropout_mask(Index n, std::uint64_t key, std::uint64_t first, std::uint32_t threshold, float scale,
                             const float* x, float* y) {
  const V vs = vset(scale);
  Index k = 0;
  for (; k + VL <= n; k += VL) {
    const V m = vkept(key + (first + std::uint64_t(k) + 1) * hash::kGolden, threshold);
    vstore(y + k, vand(m, vmul(vload(x + k), vs)));
  }
  if (k < n) {
    const V m = vkept(key + (first + std::uint64_t(k) + 1) * hash::kGolden, threshold);
    vstore_first(y + k, n - k, vand(m, vmul(vload_first(x + k, n - k), vs)));
  }
}

/// r[0, n) *= a.
FASTNN_KFN void scale_row(Index n, float* r, float a) {
  const V va = vset(a);
  Index k = 0;
  for (; k + VL <= n; k += VL) vstore(r + k, vmul(vload(r + k), va));
  if (k < n) vstore_first(r + k, n - k, vmul(vload_first(r + k, n - k), va));
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

