// Part of the x86 kernels: included by backend/cpu/x86_kernels.inl (see there) once per path, inside that
// path's namespace, with its FASTNN_X86_* macros and vector helpers defined. No include guard.

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

