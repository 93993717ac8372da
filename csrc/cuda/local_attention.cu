// CUDA kernels of local_attention_fwd/bwd (layouts: kernels.h): the window logits, one
// joint softmax over the T references and the weighted sum of values, never storing the
// (T*P, H, W) volume; the backward recomputes it from the saved lse.
//
// One thread per query pixel (forward, dq) or key pixel (dk, dv without top-k: a gather
// over the queries whose window holds the key, no atomics). With top-k each thread keeps
// its running top-k list sorted in global scratch (insertions are rare once it fills), and
// the backward scatters dk, dv with atomics over the k selected positions only.
#include "common.cuh"

namespace densecorr_cuda {
namespace {

template <typename T>
__device__ __forceinline__ acc_t<T> window_logit(const Window& w, const T* qb, const T* kb, int64_t HW,
                                                  int64_t pos, acc_t<T> scale) {
  acc_t<T> dot = 0;
  for (int64_t d = 0; d < w.D; ++d) dot += ld(qb + d * HW) * ld(kb + d * HW + pos);
  return scale * dot;
}

// Grid: B*H*W threads, one per query pixel. Online softmax over the T*P window cells,
// kChunk channels of out per pass (logits recomputed per pass when C > kChunk).
template <typename T>
__global__ void attention_fwd_kernel(Window w, const T* __restrict__ q, const T* __restrict__ k,
                                     const T* __restrict__ v, acc_t<T> scale, acc_t<T>* __restrict__ out,
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
      const T* kb = k + (b * w.T + t) * w.D * HW;
      const T* vb = v + ((b * w.T + t) * w.C + c0) * HW;
      for (int p = 0; p < w.P; ++p) {
        int yy, xx;
        const bool inside = key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx);
        if (!inside && w.boundary == kMask) continue;
        const int64_t pos = (int64_t)yy * w.W + xx;
        const A s = inside ? window_logit(w, qb, kb, HW, pos, scale) : A(0);  // zero: logit 0
        if (s > m) {
          const A alpha = dexp(m - s);
          l *= alpha;
#pragma unroll
          for (int c = 0; c < kChunk; ++c) acc[c] *= alpha;
          m = s;
        }
        const A e = dexp(s - m);
        l += e;
        if (inside) {
#pragma unroll
          for (int c = 0; c < kChunk; ++c)
            if (c < nc) acc[c] += e * ld(vb + c * HW + pos);
        }
      }
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) out[(b * w.C + c0 + c) * HW + pix] = acc[c] / l;
    if (c0 == 0) lse[gid] = m + dlog(l);
  }
}

// Grid: B*H*W threads. Streams the T*P logits keeping the topk largest (sorted descending,
// ties: lower position first) in idx / topv (B, H, W, topk); then softmax over them and the
// gather of their values. Outside cells are candidates with logit -inf (mask) or 0 (zero),
// as in a top-k over the full logit volume.
template <typename T>
__global__ void attention_topk_fwd_kernel(Window w, const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, acc_t<T> scale, int64_t topk,
                                          acc_t<T>* __restrict__ out, acc_t<T>* __restrict__ lse,
                                          int64_t* __restrict__ idx, acc_t<T>* __restrict__ topv) {
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
    const T* kb = k + (b * w.T + t) * w.D * HW;
    for (int p = 0; p < w.P; ++p) {
      int yy, xx;
      const bool inside = key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx);
      A s;
      if (inside) s = window_logit(w, qb, kb, HW, (int64_t)yy * w.W + xx, scale);
      else s = w.boundary == kZero ? A(0) : A(-INFINITY);
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
  A l = 0;
  for (int64_t n2 = 0; n2 < topk; ++n2) l += dexp(vals[n2] - m);
  lse[gid] = m + dlog(l);
  for (int64_t c0 = 0; c0 < w.C; c0 += kChunk) {
    const int nc = w.C - c0 < kChunk ? (int)(w.C - c0) : kChunk;
    A acc[kChunk] = {};
    for (int64_t n2 = 0; n2 < topk; ++n2) {
      const int64_t tp = ib[n2], t = tp / w.P;
      const int p = (int)(tp % w.P);
      int yy, xx;
      if (!key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx)) continue;
      const A e = dexp(vals[n2] - m) / l;
      const T* vb = v + ((b * w.T + t) * w.C + c0) * HW + (int64_t)yy * w.W + xx;
#pragma unroll
      for (int c = 0; c < kChunk; ++c)
        if (c < nc) acc[c] += e * ld(vb + c * HW);
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) out[(b * w.C + c0 + c) * HW + pix] = acc[c];
  }
}

// Grid: B*H*W threads (query pixels). delta = grad . out; for each admitted window cell
// (all, or the topk of idx): p = exp(logit - lse), ds = p (grad . v - delta),
// dq += scale ds k. With topk, also dk += scale ds q, dv += p grad (atomics: float/double).
template <typename T>
__global__ void attention_bwd_dq_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ q,
                                        const T* __restrict__ k, const T* __restrict__ v,
                                        const T* __restrict__ out, const acc_t<T>* __restrict__ lse,
                                        const int64_t* __restrict__ idx, int64_t topk, acc_t<T> scale,
                                        acc_t<T>* __restrict__ dq, acc_t<T>* __restrict__ dk,
                                        acc_t<T>* __restrict__ dv, acc_t<T>* __restrict__ delta_out) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* qb = q + b * w.D * HW + pix;
  const T* g = grad + b * w.C * HW + pix;
  A delta = 0;
  for (int64_t c = 0; c < w.C; ++c) delta += ld(g + c * HW) * ld(out + (b * w.C + c) * HW + pix);
  delta_out[gid] = delta;
  const A lse_j = lse[gid];
  A* dqb = dq + b * w.D * HW + pix;
  const int64_t count = topk > 0 ? topk : w.T * w.P;
  for (int64_t n = 0; n < count; ++n) {
    const int64_t tp = topk > 0 ? idx[gid * topk + n] : n, t = tp / w.P;
    const int p = (int)(tp % w.P);
    int yy, xx;
    // Outside cells: excluded (mask) or logit 0 with k = v = 0 (zero): no gradient.
    if (!key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx)) continue;
    const int64_t pos = (int64_t)yy * w.W + xx;
    const T* kb = k + (b * w.T + t) * w.D * HW;
    const T* vb = v + (b * w.T + t) * w.C * HW;
    const A pr = dexp(window_logit(w, qb, kb, HW, pos, scale) - lse_j);
    A dp = 0;
    for (int64_t c = 0; c < w.C; ++c) dp += ld(g + c * HW) * ld(vb + c * HW + pos);
    const A ds = scale * pr * (dp - delta);
    for (int64_t d = 0; d < w.D; ++d) dqb[d * HW] += ds * ld(kb + d * HW + pos);
    if (topk > 0) {
      A* dkb = dk + (b * w.T + t) * w.D * HW + pos;
      A* dvb = dv + (b * w.T + t) * w.C * HW + pos;
      for (int64_t d = 0; d < w.D; ++d) atomicAdd(dkb + d * HW, ds * ld(qb + d * HW));
      for (int64_t c = 0; c < w.C; ++c) atomicAdd(dvb + c * HW, pr * ld(g + c * HW));
    }
  }
}

// Grid: B*T*H*W threads (key pixels of one reference), all cells admitted (no top-k):
// gathers over the queries j whose window holds the key: dk = sum scale ds_j q_j,
// dv = sum p_j grad_j. delta from attention_bwd_dq_kernel.
template <typename T>
__global__ void attention_bwd_dkdv_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ q,
                                          const T* __restrict__ k, const T* __restrict__ v,
                                          const acc_t<T>* __restrict__ lse, const acc_t<T>* __restrict__ delta,
                                          acc_t<T> scale, acc_t<T>* __restrict__ dk, acc_t<T>* __restrict__ dv) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * w.T * HW) return;
  const int64_t bt = gid / HW, i = gid % HW, b = bt / w.T;
  const int iy = (int)(i / w.W), ix = (int)(i % w.W);
  const T* kb = k + bt * w.D * HW;
  const T* vb = v + bt * w.C * HW;
  A* dkb = dk + bt * w.D * HW + i;
  A* dvb = dv + bt * w.C * HW + i;
  const int ncand = n_candidates(w);
  for (int c = 0; c < ncand; ++c) {
    int jy, jx, p;
    if (!inverse_cell(w, iy, ix, c, jy, jx, p)) continue;
    const int64_t j = (int64_t)jy * w.W + jx;
    const T* qb = q + b * w.D * HW + j;
    const T* g = grad + b * w.C * HW + j;
    const A pr = dexp(window_logit(w, qb, kb, HW, i, scale) - lse[b * HW + j]);
    A dp = 0;
    for (int64_t cc = 0; cc < w.C; ++cc) dp += ld(g + cc * HW) * ld(vb + cc * HW + i);
    const A ds = scale * pr * (dp - delta[b * HW + j]);
    for (int64_t d = 0; d < w.D; ++d) dkb[d * HW] += ds * ld(qb + d * HW);
    for (int64_t cc = 0; cc < w.C; ++cc) dvb[cc * HW] += pr * ld(g + cc * HW);
  }
}

}  // namespace

const char* local_attention_fwd(DType dt, const Window& w, const void* q, const void* k, const void* v,
                                double scale, int64_t topk, void* out_acc, void* lse_acc, int64_t* idx,
                                void* topv_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    const unsigned blocks = blocks_for(w.B * w.H * w.W);
    if (topk > 0)
      DC_LAUNCH(attention_topk_fwd_kernel<T>, blocks, kThreads, (cudaStream_t)stream)(
          w, (const T*)q, (const T*)k, (const T*)v, (A)scale, topk, (A*)out_acc, (A*)lse_acc, idx, (A*)topv_acc);
    else
      DC_LAUNCH(attention_fwd_kernel<T>, blocks, kThreads, (cudaStream_t)stream)(
          w, (const T*)q, (const T*)k, (const T*)v, (A)scale, (A*)out_acc, (A*)lse_acc);
    return last_error();
  });
}

const char* local_attention_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                                const void* v, const void* out, const void* lse_acc, const int64_t* idx,
                                int64_t topk, double scale, void* dq_acc, void* dk_acc, void* dv_acc,
                                void* delta_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    auto s = (cudaStream_t)stream;
    DC_LAUNCH(attention_bwd_dq_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, s)(
        w, (const T*)grad, (const T*)q, (const T*)k, (const T*)v, (const T*)out, (const A*)lse_acc, idx, topk,
        (A)scale, (A*)dq_acc, (A*)dk_acc, (A*)dv_acc, (A*)delta_acc);
    if (topk == 0)
      DC_LAUNCH(attention_bwd_dkdv_kernel<T>, blocks_for(w.B * w.T * w.H * w.W), kThreads, s)(
          w, (const T*)grad, (const T*)q, (const T*)k, (const T*)v, (const A*)lse_acc, (const A*)delta_acc,
          (A)scale, (A*)dk_acc, (A*)dv_acc);
    return last_error();
  });
}

}  // namespace densecorr_cuda
