// CUDA kernels of the local ops with a per-query, per-reference window offset:
// local_offset_{affinity,copy,attention}_{fwd,bwd} (layouts: kernels.h).
//
// Query (y, x), reference t, window cell (ky, kx): the sample point is
//   (Y, X) = (y + dy + (ky - r)*dil, x + dx + (kx - r)*dil),  (dy, dx) = offset[b, t, :, y, x],
// and keys / values there are bilinear in the 4 pixels around it (a tap outside the image
// reads 0: F.grid_sample(align_corners=True, padding_mode="zeros") in pixel units). Window
// cells are whole pixels apart, so floor and fraction are those of the offset and the tap
// weights depend on (query, t) only. Boundary kMask excludes a position whose point lies
// outside [0, H-1] x [0, W-1]; kZero keeps every position (no tap inside: logit 0, value 0).
//
// One thread per query pixel throughout. Offsets make the inverse window irregular, so the
// key-side gradients (dk, dv) are scattered with atomicAdd into the 4 taps (accumulation
// type: float, or double for float64).
#include "common.cuh"

namespace densecorr_cuda {
namespace {

__device__ __forceinline__ float dfloor(float x) { return floorf(x); }
__device__ __forceinline__ double dfloor(double x) { return floor(x); }

// The bilinear taps of one sample point that lie in the image with a non-zero weight.
template <typename A>
struct Taps {
  int n = 0;
  int64_t pos[4];
  A wt[4];
};

// Integer part and fraction of the offset of pixel pix for reference bt = b*T + t.
template <typename A>
struct Shift {
  int iy, ix;
  A fy, fx;
};

template <typename A>
__device__ __forceinline__ A clamp_far(A v, A far) {
  return v < -far ? -far : (v > far ? far : v);
}

template <typename A>
__device__ __forceinline__ Shift<A> shift_of(const Window& w, const A* __restrict__ off, int64_t bt, int64_t pix) {
  const int64_t HW = w.H * w.W;
  // Clamped before the int conversion: a point 2^29 pixels away is outside any image.
  constexpr A far = A(536870912);
  const A dy = off[bt * 2 * HW + pix], dx = off[(bt * 2 + 1) * HW + pix];
  const A fly = clamp_far(dfloor(dy), far), flx = clamp_far(dfloor(dx), far);
  return {(int)fly, (int)flx, dy - fly, dx - flx};
}

// Taps of query (y, x) at window position p under shift s; returns whether the position is
// admitted (kMask: its point inside [0, H-1] x [0, W-1]; kZero: always).
template <typename A>
__device__ __forceinline__ bool taps_of(const Window& w, int y, int x, int p, const Shift<A>& s, Taps<A>& tp) {
  const int yy = y + s.iy + (__ldg(w.wy + p) - w.radius) * w.dilation;
  const int xx = x + s.ix + (__ldg(w.wx + p) - w.radius) * w.dilation;
  if (w.boundary == kMask) {
    // In integers (as the reference): Y = yy + fy <= H-1 iff yy + (fy > 0) <= H-1.
    if (yy < 0 || yy + (s.fy > 0) > w.H - 1 || xx < 0 || xx + (s.fx > 0) > w.W - 1) return false;
  }
  const A wy[2] = {A(1) - s.fy, s.fy}, wx[2] = {A(1) - s.fx, s.fx};
  tp.n = 0;
  for (int a = 0; a < 2; ++a)
    for (int c = 0; c < 2; ++c) {
      const int ty = yy + a, tx = xx + c;
      const A wt = wy[a] * wx[c];
      if (wt == A(0) || ty < 0 || ty >= w.H || tx < 0 || tx >= w.W) continue;
      tp.pos[tp.n] = (int64_t)ty * w.W + tx;
      tp.wt[tp.n] = wt;
      ++tp.n;
    }
  return true;
}

// Channel n (stride HW) of the planes at base, sampled at the taps.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ A sampled(const T* base, const Taps<A>& tp) {
  A s = 0;
  for (int i = 0; i < tp.n; ++i) s += tp.wt[i] * ld(base + tp.pos[i]);
  return s;
}

// scale * q . k(sampled); qb, kb at channel 0.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ A sampled_logit(const Window& w, const T* qb, const T* kb, const Taps<A>& tp, A scale) {
  const int64_t HW = w.H * w.W;
  A dot = 0;
  for (int64_t d = 0; d < w.D; ++d) dot += ld(qb + d * HW) * sampled(kb + d * HW, tp);
  return scale * dot;
}

// target[n*HW + tap] += wt * val for every tap (atomics: other queries share the taps).
template <typename A>
__device__ __forceinline__ void scatter(A* target, const Taps<A>& tp, A val) {
  for (int i = 0; i < tp.n; ++i) atomicAdd(target + tp.pos[i], tp.wt[i] * val);
}

// Grid: B*H*W threads. The T*P logits of one pixel (-inf at excluded positions), then their
// joint softmax with normalize (0 everywhere when nothing is admitted).
template <typename T>
__global__ void offset_affinity_fwd_kernel(Window w, const T* __restrict__ q, const T* __restrict__ k,
                                           const acc_t<T>* __restrict__ off, acc_t<T> scale, bool normalize,
                                           acc_t<T>* __restrict__ attn) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* qb = q + b * w.D * HW + pix;
  A* out = attn + b * w.T * w.P * HW + pix;
  A m = -INFINITY, l = 0;
  for (int t = 0; t < w.T; ++t) {
    const int64_t bt = b * w.T + t;
    const Shift<A> sh = shift_of(w, off, bt, pix);
    const T* kb = k + bt * w.D * HW;
    for (int p = 0; p < w.P; ++p) {
      Taps<A> tp;
      const A s = taps_of(w, y, x, p, sh, tp) ? sampled_logit(w, qb, kb, tp, scale) : A(-INFINITY);
      out[((int64_t)t * w.P + p) * HW] = s;
      if (normalize && s > -INFINITY) {
        if (s > m) {
          l *= dexp(m - s);
          m = s;
        }
        l += dexp(s - m);
      }
    }
  }
  if (normalize) {
    for (int64_t i = 0; i < w.T * w.P; ++i) out[i * HW] = l > 0 ? dexp(out[i * HW] - m) / l : A(0);
  }
}

// Grid: B*H*W threads. delta = sum g*attn (normalize), dlogit = scale (attn (g - delta) or g)
// at the admitted positions; dq += dlogit k(sampled), dk[taps] += dlogit q (atomics).
template <typename T>
__global__ void offset_affinity_bwd_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ q,
                                           const T* __restrict__ k, const acc_t<T>* __restrict__ off,
                                           const T* __restrict__ attn, acc_t<T> scale, bool normalize,
                                           acc_t<T>* __restrict__ dq, acc_t<T>* __restrict__ dk) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* g = grad + b * TP * HW + pix;
  const T* a = attn + b * TP * HW + pix;
  const T* qb = q + b * w.D * HW + pix;
  A delta = 0;
  if (normalize)
    for (int64_t i = 0; i < TP; ++i) delta += ld(g + i * HW) * ld(a + i * HW);
  A* dqb = dq + b * w.D * HW + pix;
  for (int t = 0; t < w.T; ++t) {
    const int64_t bt = b * w.T + t;
    const Shift<A> sh = shift_of(w, off, bt, pix);
    const T* kb = k + bt * w.D * HW;
    A* dkb = dk + bt * w.D * HW;
    for (int p = 0; p < w.P; ++p) {
      Taps<A> tp;
      // Excluded positions have a constant logit (-inf): no gradient.
      if (!taps_of(w, y, x, p, sh, tp) || tp.n == 0) continue;
      const int64_t i = (int64_t)t * w.P + p;
      const A gv = ld(g + i * HW);
      const A dl = scale * (normalize ? ld(a + i * HW) * (gv - delta) : gv);
      if (dl == A(0)) continue;
      for (int64_t d = 0; d < w.D; ++d) {
        dqb[d * HW] += dl * sampled(kb + d * HW, tp);
        scatter(dkb + d * HW, tp, dl * ld(qb + d * HW));
      }
    }
  }
}

// Grid: B*H*W threads: out = sum over the admitted positions of attn v(sampled), kChunk
// channels per pass in registers.
template <typename T>
__global__ void offset_copy_fwd_kernel(Window w, const T* __restrict__ attn, const T* __restrict__ v,
                                       const acc_t<T>* __restrict__ off, acc_t<T>* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* a = attn + b * TP * HW + pix;
  for (int64_t c0 = 0; c0 < w.C; c0 += kChunk) {
    const int nc = w.C - c0 < kChunk ? (int)(w.C - c0) : kChunk;
    A acc[kChunk] = {};
    for (int t = 0; t < w.T; ++t) {
      const int64_t bt = b * w.T + t;
      const Shift<A> sh = shift_of(w, off, bt, pix);
      const T* vb = v + (bt * w.C + c0) * HW;
      for (int p = 0; p < w.P; ++p) {
        Taps<A> tp;
        if (!taps_of(w, y, x, p, sh, tp) || tp.n == 0) continue;
        const A av = ld(a + ((int64_t)t * w.P + p) * HW);
#pragma unroll
        for (int c = 0; c < kChunk; ++c)
          if (c < nc) acc[c] += av * sampled(vb + c * HW, tp);
      }
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) out[(b * w.C + c0 + c) * HW + pix] = acc[c];
  }
}

// Grid: B*H*W threads: dattn = grad . v(sampled) at each position (0 where excluded);
// dv[taps] += attn grad (atomics).
template <typename T>
__global__ void offset_copy_bwd_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ attn,
                                       const T* __restrict__ v, const acc_t<T>* __restrict__ off,
                                       acc_t<T>* __restrict__ dattn, acc_t<T>* __restrict__ dv) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* g = grad + b * w.C * HW + pix;
  for (int t = 0; t < w.T; ++t) {
    const int64_t bt = b * w.T + t;
    const Shift<A> sh = shift_of(w, off, bt, pix);
    const T* vb = v + bt * w.C * HW;
    A* dvb = dv + bt * w.C * HW;
    for (int p = 0; p < w.P; ++p) {
      const int64_t i = b * TP + (int64_t)t * w.P + p;
      Taps<A> tp;
      A s = 0;
      if (taps_of(w, y, x, p, sh, tp) && tp.n > 0) {
        const A av = ld(attn + i * HW + pix);
        for (int64_t c = 0; c < w.C; ++c) {
          const A gc = ld(g + c * HW);
          s += gc * sampled(vb + c * HW, tp);
          if (av != A(0)) scatter(dvb + c * HW, tp, av * gc);
        }
      }
      dattn[i * HW + pix] = s;
    }
  }
}

// Grid: B*H*W threads. Online softmax over the admitted positions, kChunk channels of out
// per pass (logits recomputed per pass when C > kChunk). Nothing admitted: out 0, lse -inf.
template <typename T>
__global__ void offset_attention_fwd_kernel(Window w, const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, const acc_t<T>* __restrict__ off,
                                            acc_t<T> scale, acc_t<T>* __restrict__ out,
                                            acc_t<T>* __restrict__ lse) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* qb = q + b * w.D * HW + pix;
  for (int64_t c0 = 0; c0 < w.C; c0 += kChunk) {
    const int nc = w.C - c0 < kChunk ? (int)(w.C - c0) : kChunk;
    A m = -INFINITY, l = 0, acc[kChunk] = {};
    for (int t = 0; t < w.T; ++t) {
      const int64_t bt = b * w.T + t;
      const Shift<A> sh = shift_of(w, off, bt, pix);
      const T* kb = k + bt * w.D * HW;
      const T* vb = v + (bt * w.C + c0) * HW;
      for (int p = 0; p < w.P; ++p) {
        Taps<A> tp;
        if (!taps_of(w, y, x, p, sh, tp)) continue;
        const A s = sampled_logit(w, qb, kb, tp, scale);  // zero: no tap inside, logit 0
        if (s > m) {
          const A alpha = dexp(m - s);
          l *= alpha;
#pragma unroll
          for (int c = 0; c < kChunk; ++c) acc[c] *= alpha;
          m = s;
        }
        const A e = dexp(s - m);
        l += e;
        if (tp.n > 0) {
#pragma unroll
          for (int c = 0; c < kChunk; ++c)
            if (c < nc) acc[c] += e * sampled(vb + c * HW, tp);
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) out[(b * w.C + c0 + c) * HW + pix] = l > 0 ? acc[c] / l : A(0);
    if (c0 == 0) lse[gid] = l > 0 ? m + dlog(l) : A(-INFINITY);
  }
}

// Grid: B*H*W threads. Streams the T*P logits keeping the topk largest (sorted descending,
// ties: lower position first) in idx / topv (B, H, W, topk); then softmax over them and the
// bilinear gather of their values. Excluded positions (mask) are candidates with logit
// -inf, as in a top-k over the full logit volume.
template <typename T>
__global__ void offset_attention_topk_fwd_kernel(Window w, const T* __restrict__ q, const T* __restrict__ k,
                                                 const T* __restrict__ v, const acc_t<T>* __restrict__ off,
                                                 acc_t<T> scale, int64_t topk, acc_t<T>* __restrict__ out,
                                                 acc_t<T>* __restrict__ lse, int64_t* __restrict__ idx,
                                                 acc_t<T>* __restrict__ topv) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* qb = q + b * w.D * HW + pix;
  int64_t* ib = idx + gid * topk;
  A* vals = topv + gid * topk;
  int64_t n = 0;
  for (int t = 0; t < w.T; ++t) {
    const int64_t bt = b * w.T + t;
    const Shift<A> sh = shift_of(w, off, bt, pix);
    const T* kb = k + bt * w.D * HW;
    for (int p = 0; p < w.P; ++p) {
      Taps<A> tp;
      const A s = taps_of(w, y, x, p, sh, tp) ? sampled_logit(w, qb, kb, tp, scale) : A(-INFINITY);
      if (n == topk && !(s > vals[topk - 1])) continue;
      // Insert after every entry >= s (earlier positions win ties).
      int64_t at = n < topk ? n : topk - 1;
      while (at > 0 && vals[at - 1] < s) {
        vals[at] = vals[at - 1];
        ib[at] = ib[at - 1];
        --at;
      }
      vals[at] = s;
      ib[at] = (int64_t)t * w.P + p;
      if (n < topk) ++n;
    }
  }
  const A m = vals[0];
  if (!(m > -INFINITY)) {  // nothing admitted (mask)
    lse[gid] = -INFINITY;
    for (int64_t c = 0; c < w.C; ++c) out[(b * w.C + c) * HW + pix] = 0;
    return;
  }
  A l = 0;
  for (int64_t n2 = 0; n2 < topk; ++n2) l += dexp(vals[n2] - m);
  lse[gid] = m + dlog(l);
  for (int64_t c0 = 0; c0 < w.C; c0 += kChunk) {
    const int nc = w.C - c0 < kChunk ? (int)(w.C - c0) : kChunk;
    A acc[kChunk] = {};
    for (int64_t n2 = 0; n2 < topk; ++n2) {
      if (!(vals[n2] > -INFINITY)) break;  // sorted: only excluded positions follow
      const int64_t sel = ib[n2], bt = b * w.T + sel / w.P;
      Taps<A> tp;
      if (!taps_of(w, y, x, (int)(sel % w.P), shift_of(w, off, bt, pix), tp)) continue;
      const A e = dexp(vals[n2] - m) / l;
      const T* vb = v + (bt * w.C + c0) * HW;
#pragma unroll
      for (int c = 0; c < kChunk; ++c)
        if (c < nc) acc[c] += e * sampled(vb + c * HW, tp);
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) out[(b * w.C + c0 + c) * HW + pix] = acc[c];
  }
}

// Grid: B*H*W threads. delta = grad . out; for each admitted position (all, or the topk of
// idx): p = exp(logit - lse), ds = scale p (grad . v - delta); dq += ds k(sampled),
// dk[taps] += ds q, dv[taps] += p grad (atomics).
template <typename T>
__global__ void offset_attention_bwd_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ q,
                                            const T* __restrict__ k, const T* __restrict__ v,
                                            const acc_t<T>* __restrict__ off, const T* __restrict__ out,
                                            const acc_t<T>* __restrict__ lse, const int64_t* __restrict__ idx,
                                            int64_t topk, acc_t<T> scale, acc_t<T>* __restrict__ dq,
                                            acc_t<T>* __restrict__ dk, acc_t<T>* __restrict__ dv) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const A lse_j = lse[gid];
  if (!(lse_j > -INFINITY)) return;  // nothing admitted: no gradient
  const T* qb = q + b * w.D * HW + pix;
  const T* g = grad + b * w.C * HW + pix;
  A delta = 0;
  for (int64_t c = 0; c < w.C; ++c) delta += ld(g + c * HW) * ld(out + (b * w.C + c) * HW + pix);
  A* dqb = dq + b * w.D * HW + pix;
  const int64_t count = topk > 0 ? topk : w.T * w.P;
  int64_t cur = -1;  // the reference whose shift is loaded
  Shift<A> sh{};
  for (int64_t n = 0; n < count; ++n) {
    const int64_t sel = topk > 0 ? idx[gid * topk + n] : n, t = sel / w.P;
    if (t != cur) {
      sh = shift_of(w, off, b * w.T + t, pix);
      cur = t;
    }
    Taps<A> tp;
    // Excluded positions, and (zero) points with no tap inside (k = v = 0): no gradient.
    if (!taps_of(w, y, x, (int)(sel % w.P), sh, tp) || tp.n == 0) continue;
    const int64_t bt = b * w.T + t;
    const T* kb = k + bt * w.D * HW;
    const T* vb = v + bt * w.C * HW;
    const A pr = dexp(sampled_logit(w, qb, kb, tp, scale) - lse_j);
    A dp = 0;
    for (int64_t c = 0; c < w.C; ++c) dp += ld(g + c * HW) * sampled(vb + c * HW, tp);
    const A ds = scale * pr * (dp - delta);
    A* dkb = dk + bt * w.D * HW;
    A* dvb = dv + bt * w.C * HW;
    for (int64_t d = 0; d < w.D; ++d) {
      dqb[d * HW] += ds * sampled(kb + d * HW, tp);
      scatter(dkb + d * HW, tp, ds * ld(qb + d * HW));
    }
    for (int64_t c = 0; c < w.C; ++c) scatter(dvb + c * HW, tp, pr * ld(g + c * HW));
  }
}

}  // namespace

const char* local_offset_affinity_fwd(DType dt, const Window& w, const void* q, const void* k, const void* offset_acc,
                                      double scale, bool normalize, void* attn_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    DC_LAUNCH(offset_affinity_fwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)q, (const T*)k, (const A*)offset_acc, (A)scale, normalize, (A*)attn_acc);
    return last_error();
  });
}

const char* local_offset_affinity_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                                      const void* offset_acc, const void* attn, double scale, bool normalize,
                                      void* dq_acc, void* dk_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    DC_LAUNCH(offset_affinity_bwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)grad, (const T*)q, (const T*)k, (const A*)offset_acc, (const T*)attn, (A)scale, normalize,
        (A*)dq_acc, (A*)dk_acc);
    return last_error();
  });
}

const char* local_offset_copy_fwd(DType dt, const Window& w, const void* attn, const void* v, const void* offset_acc,
                                  void* out_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    DC_LAUNCH(offset_copy_fwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)attn, (const T*)v, (const A*)offset_acc, (A*)out_acc);
    return last_error();
  });
}

const char* local_offset_copy_bwd(DType dt, const Window& w, const void* grad, const void* attn, const void* v,
                                  const void* offset_acc, void* dattn_acc, void* dv_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    DC_LAUNCH(offset_copy_bwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)grad, (const T*)attn, (const T*)v, (const A*)offset_acc, (A*)dattn_acc, (A*)dv_acc);
    return last_error();
  });
}

const char* local_offset_attention_fwd(DType dt, const Window& w, const void* q, const void* k, const void* v,
                                       const void* offset_acc, double scale, int64_t topk, void* out_acc,
                                       void* lse_acc, int64_t* idx, void* topv_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    const unsigned blocks = blocks_for(w.B * w.H * w.W);
    if (topk > 0)
      DC_LAUNCH(offset_attention_topk_fwd_kernel<T>, blocks, kThreads, (cudaStream_t)stream)(
          w, (const T*)q, (const T*)k, (const T*)v, (const A*)offset_acc, (A)scale, topk, (A*)out_acc, (A*)lse_acc,
          idx, (A*)topv_acc);
    else
      DC_LAUNCH(offset_attention_fwd_kernel<T>, blocks, kThreads, (cudaStream_t)stream)(
          w, (const T*)q, (const T*)k, (const T*)v, (const A*)offset_acc, (A)scale, (A*)out_acc, (A*)lse_acc);
    return last_error();
  });
}

const char* local_offset_attention_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                                       const void* v, const void* offset_acc, const void* out, const void* lse_acc,
                                       const int64_t* idx, int64_t topk, double scale, void* dq_acc, void* dk_acc,
                                       void* dv_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    DC_LAUNCH(offset_attention_bwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)grad, (const T*)q, (const T*)k, (const T*)v, (const A*)offset_acc, (const T*)out,
        (const A*)lse_acc, idx, topk, (A)scale, (A*)dq_acc, (A*)dk_acc, (A*)dv_acc);
    return last_error();
  });
}

}  // namespace densecorr_cuda
