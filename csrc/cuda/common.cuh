// Device helpers shared by the densecorr CUDA kernels: dtype conversion, dispatch, the
// window geometry (same rules as densecorr/reference.py), launch bookkeeping.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include <type_traits>

#include "kernels.h"

namespace densecorr_cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
__device__ __forceinline__ double ld(const double* p) { return __ldg(p); }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

constexpr int kThreads = 128;  // threads per block of the one-thread-per-pixel kernels
constexpr int kChunk = 8;      // value channels accumulated in registers per pass

// kernel<<<grid, block, 0, stream>>>, spelled as a macro so that the CPU emulation
// (csrc/cuda/emulation, used by tests/test_cuda.py) can run the same sources.
#ifndef DC_LAUNCH
#define DC_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

inline const char* last_error() {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Calls body with a typed null pointer of the dtype's element type: `using T = ...` via decltype.
template <typename F>
const char* dispatch(DType dt, F&& body) {
  switch (dt) {
    case DType::f32: return body(static_cast<const float*>(nullptr));
    case DType::f64: return body(static_cast<const double*>(nullptr));
    case DType::f16: return body(static_cast<const __half*>(nullptr));
    case DType::bf16: return body(static_cast<const __nv_bfloat16*>(nullptr));
  }
  return "densecorr cuda: unknown dtype";
}

// NATTEN window start of index i on an axis of length L: the 2r+1 cells of i's dilation
// sub-grid (i % dil, i % dil + dil, ...) centred on i, shifted to stay inside.
__device__ __forceinline__ int clamp_start(int i, int L, int r, int dil) {
  const int res = i % dil;
  const int n_sub = (L - res + dil - 1) / dil;
  const int s = min(max(i / dil - r, 0), n_sub - (2 * r + 1));
  return s * dil + res;
}

// Key (yy, xx) of query (y, x) at window grid cell (ky, kx); true when inside the image.
__device__ __forceinline__ bool key_cell(const Window& w, int y, int x, int ky, int kx, int& yy, int& xx) {
  if (w.boundary == kClamp) {
    yy = clamp_start(y, (int)w.H, w.radius, w.dilation) + ky * w.dilation;
    xx = clamp_start(x, (int)w.W, w.radius, w.dilation) + kx * w.dilation;
    return true;
  }
  yy = y + (ky - w.radius) * w.dilation;
  xx = x + (kx - w.radius) * w.dilation;
  return yy >= 0 && yy < w.H && xx >= 0 && xx < w.W;
}

// Inverse window: for key (iy, ix) and candidate c (0 <= c < (2*CR+1)^2, CR = reach(w)),
// the query (jy, jx) = (iy, ix) - offset*dil and the position p of (iy, ix) in its window;
// false when the query is outside the image or (iy, ix) is not in its window.
__device__ __forceinline__ int reach(const Window& w) {
  // Clamped windows start at most r cells before the query's centre cell: keys lie within 2r.
  return w.boundary == kClamp ? 2 * w.radius : w.radius;
}
__device__ __forceinline__ bool inverse_cell(const Window& w, int iy, int ix, int c, int& jy, int& jx, int& p) {
  const int cr = reach(w), side = 2 * cr + 1, ks = 2 * w.radius + 1;
  const int cy = c / side - cr, cx = c % side - cr;
  jy = iy - cy * w.dilation;
  jx = ix - cx * w.dilation;
  if (jy < 0 || jy >= w.H || jx < 0 || jx >= w.W) return false;
  int ky, kx;
  if (w.boundary == kClamp) {
    ky = (iy - clamp_start(jy, (int)w.H, w.radius, w.dilation)) / w.dilation;
    kx = (ix - clamp_start(jx, (int)w.W, w.radius, w.dilation)) / w.dilation;
    if (ky < 0 || ky >= ks || kx < 0 || kx >= ks) return false;
  } else {
    ky = cy + w.radius;
    kx = cx + w.radius;
  }
  p = __ldg(w.g2p + ky * ks + kx);
  return p >= 0;
}

__device__ __forceinline__ int n_candidates(const Window& w) {
  const int side = 2 * reach(w) + 1;
  return side * side;
}

}  // namespace densecorr_cuda
