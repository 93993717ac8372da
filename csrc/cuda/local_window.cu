// CUDA kernels of local_affinity_fwd/bwd and local_copy_fwd/bwd (layouts: kernels.h).
//
// Query-side kernels run one thread per query pixel (adjacent threads, adjacent pixels:
// coalesced reads of the (.., H, W) planes); key-side gradients (dk, dv) run one thread per
// key pixel and gather over the queries whose window holds it, so nothing is atomic.
#include "common.cuh"

namespace densecorr_cuda {
namespace {

// Grid: B*H*W threads, one per query pixel. Writes its T*P logits (then softmax) column.
template <typename T>
__global__ void affinity_fwd_kernel(Window w, const T* __restrict__ q, const T* __restrict__ k, acc_t<T> scale,
                                    bool normalize, acc_t<T>* __restrict__ attn) {
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
    const T* kb = k + (b * w.T + t) * w.D * HW;
    for (int p = 0; p < w.P; ++p) {
      int yy, xx;
      const bool inside = key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx);
      A s;
      if (inside) {
        const int64_t pos = (int64_t)yy * w.W + xx;
        A dot = 0;
        for (int64_t d = 0; d < w.D; ++d) dot += ld(qb + d * HW) * ld(kb + d * HW + pos);
        s = scale * dot;
      } else {
        s = w.boundary == kZero ? A(0) : A(-INFINITY);
      }
      out[(int64_t)(t * w.P + p) * HW] = s;
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
    for (int64_t tp = 0; tp < w.T * w.P; ++tp) out[tp * HW] = dexp(out[tp * HW] - m) / l;
  }
}

// Grid: B*H*W threads (query pixels). delta = sum g*attn (softmax correction) and
// dq += scale * dlogit * k over the window.
template <typename T>
__global__ void affinity_bwd_dq_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ k,
                                       const T* __restrict__ attn, acc_t<T> scale, bool normalize,
                                       acc_t<T>* __restrict__ dq, acc_t<T>* __restrict__ delta_out) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* g = grad + b * TP * HW + pix;
  const T* a = attn + b * TP * HW + pix;
  A delta = 0;
  if (normalize)
    for (int64_t tp = 0; tp < TP; ++tp) delta += ld(g + tp * HW) * ld(a + tp * HW);
  delta_out[gid] = delta;
  A* dqb = dq + b * w.D * HW + pix;
  for (int t = 0; t < w.T; ++t) {
    const T* kb = k + (b * w.T + t) * w.D * HW;
    for (int p = 0; p < w.P; ++p) {
      int yy, xx;
      // Outside cells have a constant logit (excluded or 0): no gradient.
      if (!key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx)) continue;
      const int64_t tp = (int64_t)t * w.P + p;
      const A gv = ld(g + tp * HW);
      const A dl = scale * (normalize ? ld(a + tp * HW) * (gv - delta) : gv);
      if (dl == A(0)) continue;
      const int64_t pos = (int64_t)yy * w.W + xx;
      for (int64_t d = 0; d < w.D; ++d) dqb[d * HW] += dl * ld(kb + d * HW + pos);
    }
  }
}

// Grid: B*T*H*W threads, one per key pixel of one reference: dk = scale * sum over the
// queries j whose window holds it of dlogit_j * q_j.
template <typename T>
__global__ void affinity_bwd_dk_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ q,
                                       const T* __restrict__ attn, const acc_t<T>* __restrict__ delta,
                                       acc_t<T> scale, bool normalize, acc_t<T>* __restrict__ dk) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * w.T * HW) return;
  const int64_t bt = gid / HW, i = gid % HW, b = bt / w.T, t = bt % w.T;
  const int iy = (int)(i / w.W), ix = (int)(i % w.W);
  A* dkb = dk + bt * w.D * HW + i;
  const int nc = n_candidates(w);
  for (int c = 0; c < nc; ++c) {
    int jy, jx, p;
    if (!inverse_cell(w, iy, ix, c, jy, jx, p)) continue;
    const int64_t j = (int64_t)jy * w.W + jx;
    const int64_t at = (b * TP + t * w.P + p) * HW + j;
    const A gv = ld(grad + at);
    const A dl = scale * (normalize ? ld(attn + at) * (gv - delta[b * HW + j]) : gv);
    if (dl == A(0)) continue;
    const T* qb = q + b * w.D * HW + j;
    for (int64_t d = 0; d < w.D; ++d) dkb[d * HW] += dl * ld(qb + d * HW);
  }
}

// Grid: B*H*W threads (query pixels): out = sum over window cells of attn * v, kChunk
// channels per pass in registers.
template <typename T>
__global__ void copy_fwd_kernel(Window w, const T* __restrict__ attn, const T* __restrict__ v,
                                acc_t<T>* __restrict__ out) {
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
      const T* vb = v + ((b * w.T + t) * w.C + c0) * HW;
      for (int p = 0; p < w.P; ++p) {
        int yy, xx;
        if (!key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx)) continue;
        const A av = ld(a + ((int64_t)t * w.P + p) * HW);
        const int64_t pos = (int64_t)yy * w.W + xx;
#pragma unroll
        for (int c = 0; c < kChunk; ++c)
          if (c < nc) acc[c] += av * ld(vb + c * HW + pos);
      }
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) out[(b * w.C + c0 + c) * HW + pix] = acc[c];
  }
}

// Grid: B*H*W threads (query pixels): dattn = grad . v at each window cell (0 outside).
template <typename T>
__global__ void copy_bwd_dattn_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ v,
                                      acc_t<T>* __restrict__ dattn) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * HW) return;
  const int64_t b = gid / HW, pix = gid % HW;
  const int y = (int)(pix / w.W), x = (int)(pix % w.W);
  const T* g = grad + b * w.C * HW + pix;
  for (int t = 0; t < w.T; ++t) {
    const T* vb = v + (b * w.T + t) * w.C * HW;
    for (int p = 0; p < w.P; ++p) {
      int yy, xx;
      A s = 0;
      if (key_cell(w, y, x, __ldg(w.wy + p), __ldg(w.wx + p), yy, xx)) {
        const int64_t pos = (int64_t)yy * w.W + xx;
        for (int64_t c = 0; c < w.C; ++c) s += ld(g + c * HW) * ld(vb + c * HW + pos);
      }
      dattn[(b * TP + (int64_t)t * w.P + p) * HW + pix] = s;
    }
  }
}

// Grid: B*T*H*W threads (key pixels): dv = sum over the queries j whose window holds the
// key of attn_j * grad_j, kChunk channels per pass.
template <typename T>
__global__ void copy_bwd_dv_kernel(Window w, const T* __restrict__ grad, const T* __restrict__ attn,
                                   acc_t<T>* __restrict__ dv) {
  using A = acc_t<T>;
  const int64_t HW = w.H * w.W, TP = w.T * w.P;
  const int64_t gid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (gid >= w.B * w.T * HW) return;
  const int64_t bt = gid / HW, i = gid % HW, b = bt / w.T, t = bt % w.T;
  const int iy = (int)(i / w.W), ix = (int)(i % w.W);
  const int ncand = n_candidates(w);
  for (int64_t c0 = 0; c0 < w.C; c0 += kChunk) {
    const int nc = w.C - c0 < kChunk ? (int)(w.C - c0) : kChunk;
    A acc[kChunk] = {};
    for (int c = 0; c < ncand; ++c) {
      int jy, jx, p;
      if (!inverse_cell(w, iy, ix, c, jy, jx, p)) continue;
      const int64_t j = (int64_t)jy * w.W + jx;
      const A av = ld(attn + (b * TP + t * w.P + p) * HW + j);
      const T* g = grad + (b * w.C + c0) * HW + j;
#pragma unroll
      for (int cc = 0; cc < kChunk; ++cc)
        if (cc < nc) acc[cc] += av * ld(g + cc * HW);
    }
#pragma unroll
    for (int cc = 0; cc < kChunk; ++cc)
      if (cc < nc) dv[(bt * w.C + c0 + cc) * HW + i] = acc[cc];
  }
}

}  // namespace

const char* local_affinity_fwd(DType dt, const Window& w, const void* q, const void* k, double scale,
                               bool normalize, void* attn_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    DC_LAUNCH(affinity_fwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)q, (const T*)k, (acc_t<T>)scale, normalize, (acc_t<T>*)attn_acc);
    return last_error();
  });
}

const char* local_affinity_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                               const void* attn, double scale, bool normalize, void* dq_acc, void* dk_acc,
                               void* delta_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    auto s = (cudaStream_t)stream;
    DC_LAUNCH(affinity_bwd_dq_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, s)(
        w, (const T*)grad, (const T*)k, (const T*)attn, (A)scale, normalize, (A*)dq_acc, (A*)delta_acc);
    DC_LAUNCH(affinity_bwd_dk_kernel<T>, blocks_for(w.B * w.T * w.H * w.W), kThreads, s)(
        w, (const T*)grad, (const T*)q, (const T*)attn, (const A*)delta_acc, (A)scale, normalize, (A*)dk_acc);
    return last_error();
  });
}

const char* local_copy_fwd(DType dt, const Window& w, const void* attn, const void* v, void* out_acc,
                           void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    DC_LAUNCH(copy_fwd_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, (cudaStream_t)stream)(
        w, (const T*)attn, (const T*)v, (acc_t<T>*)out_acc);
    return last_error();
  });
}

const char* local_copy_bwd(DType dt, const Window& w, const void* grad, const void* attn, const void* v,
                           void* dattn_acc, void* dv_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    auto s = (cudaStream_t)stream;
    DC_LAUNCH(copy_bwd_dattn_kernel<T>, blocks_for(w.B * w.H * w.W), kThreads, s)(
        w, (const T*)grad, (const T*)v, (acc_t<T>*)dattn_acc);
    DC_LAUNCH(copy_bwd_dv_kernel<T>, blocks_for(w.B * w.T * w.H * w.W), kThreads, s)(
        w, (const T*)grad, (const T*)attn, (acc_t<T>*)dv_acc);
    return last_error();
  });
}

}  // namespace densecorr_cuda
