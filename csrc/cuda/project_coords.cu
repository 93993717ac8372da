// CUDA kernels of project_coords_fwd/bwd (layouts: kernels.h): the expected (x, y) key cell
// of each query under softmax(scale q . k), the key grid generated in the kernel.
//
// Tiling: a block of kRows threads owns kRows rows (queries; keys for dk) and streams the
// other side in tiles of kCols; the feature dimension D is read in chunks of kDc through
// shared memory, so any D works and each thread keeps only kCols logits in registers.
#include "common.cuh"

namespace densecorr_cuda {
namespace {

constexpr int kRows = 128;
constexpr int kCols = 32;
constexpr int kDc = 32;

// A strided matrix view: element (r, d) at base[r * rs + d * ds], rows < n valid.
template <typename T>
struct View {
  const T* base;
  int64_t rs, ds, n;
};

// Copies rows [r0, r0 + R) x features [d0, d0 + kDc) of v into sh[dd][r] (0 outside),
// reading along whichever of the two strides is 1 (coalesced).
template <typename T, int R, int LD>
__device__ __forceinline__ void load_chunk(const View<T>& v, int64_t r0, int64_t d0, int64_t D,
                                           acc_t<T> (*sh)[LD]) {
  for (int e = threadIdx.x; e < R * kDc; e += blockDim.x) {
    int r, dd;
    if (v.ds == 1) { r = e / kDc; dd = e % kDc; }
    else { r = e % R; dd = e / R; }
    const int64_t row = r0 + r, d = d0 + dd;
    sh[dd][r] = (row < v.n && d < D) ? ld(v.base + row * v.rs + d * v.ds) : acc_t<T>(0);
  }
}

// s[c] = sum_d A(r0 + tid, d) * B(c0 + c, d) for this thread's row (all threads must call).
template <typename T>
__device__ void tile_dots(const View<T>& a, int64_t r0, const View<T>& b, int64_t c0, int64_t D,
                          acc_t<T> (*as)[kRows + 1], acc_t<T> (*bs)[kCols], acc_t<T> (&s)[kCols]) {
#pragma unroll
  for (int c = 0; c < kCols; ++c) s[c] = 0;
  for (int64_t d0 = 0; d0 < D; d0 += kDc) {
    __syncthreads();
    load_chunk<T, kRows, kRows + 1>(a, r0, d0, D, as);
    load_chunk<T, kCols, kCols>(b, c0, d0, D, bs);
    __syncthreads();
    for (int dd = 0; dd < kDc; ++dd) {
      const acc_t<T> x = as[dd][threadIdx.x];
#pragma unroll
      for (int c = 0; c < kCols; ++c) s[c] += x * bs[dd][c];
    }
  }
}

// out[row * o_r + d * o_d] += sum_c wgt[c] * B(c0 + c, d) for this thread's row, all d.
template <typename T>
__device__ void tile_apply(const View<T>& b, int64_t c0, int64_t D, const acc_t<T> (&wgt)[kCols], bool row_ok,
                           acc_t<T>* out, int64_t o_d, acc_t<T> (*bs)[kCols]) {
  for (int64_t d0 = 0; d0 < D; d0 += kDc) {
    __syncthreads();
    load_chunk<T, kCols, kCols>(b, c0, d0, D, bs);
    __syncthreads();
    if (!row_ok) continue;
    for (int dd = 0; dd < kDc && d0 + dd < D; ++dd) {
      acc_t<T> acc = 0;
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc += wgt[c] * bs[dd][c];
      out[(d0 + dd) * o_d] += acc;
    }
  }
}

// Grid (cdiv(N, kRows), B), kRows threads: thread = query j; online softmax over the
// H*W keys in tiles of kCols.
template <typename T>
__global__ void __launch_bounds__(kRows) project_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                            int64_t N, int64_t H, int64_t W, int64_t D,
                                                            acc_t<T> scale, acc_t<T>* __restrict__ coords,
                                                            acc_t<T>* __restrict__ lse) {
  using A = acc_t<T>;
  __shared__ A as[kDc][kRows + 1];
  __shared__ A bs[kDc][kCols];
  const int64_t b = blockIdx.y, M = H * W, r0 = (int64_t)blockIdx.x * kRows, j = r0 + threadIdx.x;
  const View<T> qv{q + b * N * D, D, 1, N}, kv{k + b * D * M, 1, M, M};
  A m = -INFINITY, l = 0, ax = 0, ay = 0, s[kCols];
  for (int64_t c0 = 0; c0 < M; c0 += kCols) {
    tile_dots(qv, r0, kv, c0, D, as, bs, s);
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t i = c0 + c;
      if (i >= M) break;
      const A sv = scale * s[c];
      if (sv > m) {
        const A alpha = dexp(m - sv);
        l *= alpha; ax *= alpha; ay *= alpha;
        m = sv;
      }
      const A e = dexp(sv - m);
      l += e;
      ax += e * A(i % W);
      ay += e * A(i / W);
    }
  }
  if (j < N) {
    coords[(b * N + j) * 2] = ax / l;
    coords[(b * N + j) * 2 + 1] = ay / l;
    lse[b * N + j] = m + dlog(l);
  }
}

// Grid (cdiv(N, kRows), B): thread = query j. ds_i = p_i (g . l_i - g . coords_j),
// dq_j += scale sum_i ds_i k_i.
template <typename T>
__global__ void __launch_bounds__(kRows) project_bwd_dq_kernel(
    const T* __restrict__ grad, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ coords,
    const acc_t<T>* __restrict__ lse, int64_t N, int64_t H, int64_t W, int64_t D, acc_t<T> scale,
    acc_t<T>* __restrict__ dq) {
  using A = acc_t<T>;
  __shared__ A as[kDc][kRows + 1];
  __shared__ A bs[kDc][kCols];
  const int64_t b = blockIdx.y, M = H * W, r0 = (int64_t)blockIdx.x * kRows, j = r0 + threadIdx.x;
  const bool ok = j < N;
  const View<T> qv{q + b * N * D, D, 1, N}, kv{k + b * D * M, 1, M, M};
  A gx = 0, gy = 0, gc = 0, lse_j = 0;
  if (ok) {
    gx = ld(grad + (b * N + j) * 2);
    gy = ld(grad + (b * N + j) * 2 + 1);
    gc = gx * ld(coords + (b * N + j) * 2) + gy * ld(coords + (b * N + j) * 2 + 1);
    lse_j = lse[b * N + j];
  }
  A s[kCols], ds[kCols];
  for (int64_t c0 = 0; c0 < M; c0 += kCols) {
    tile_dots(qv, r0, kv, c0, D, as, bs, s);
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t i = c0 + c;
      ds[c] = (ok && i < M) ? scale * dexp(scale * s[c] - lse_j) * (gx * A(i % W) + gy * A(i / W) - gc) : A(0);
    }
    tile_apply(kv, c0, D, ds, ok, dq + (b * N + j) * D, 1, bs);
  }
}

// Grid (cdiv(H*W, kRows), B): thread = key i. dk_i += scale sum_j ds_ji q_j.
template <typename T>
__global__ void __launch_bounds__(kRows) project_bwd_dk_kernel(
    const T* __restrict__ grad, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ coords,
    const acc_t<T>* __restrict__ lse, int64_t N, int64_t H, int64_t W, int64_t D, acc_t<T> scale,
    acc_t<T>* __restrict__ dk) {
  using A = acc_t<T>;
  __shared__ A as[kDc][kRows + 1];
  __shared__ A bs[kDc][kCols];
  __shared__ A gxs[kCols], gys[kCols], gcs[kCols], lses[kCols];
  const int64_t b = blockIdx.y, M = H * W, r0 = (int64_t)blockIdx.x * kRows, i = r0 + threadIdx.x;
  const bool ok = i < M;
  const View<T> kv{k + b * D * M, 1, M, M}, qv{q + b * N * D, D, 1, N};
  const A xi = A(i % W), yi = A(i / W);
  A s[kCols], ds[kCols];
  for (int64_t c0 = 0; c0 < N; c0 += kCols) {
    tile_dots(kv, r0, qv, c0, D, as, bs, s);
    if (threadIdx.x < kCols) {
      const int64_t j = c0 + threadIdx.x;
      const bool jok = j < N;
      const A gx = jok ? ld(grad + (b * N + j) * 2) : A(0), gy = jok ? ld(grad + (b * N + j) * 2 + 1) : A(0);
      gxs[threadIdx.x] = gx;
      gys[threadIdx.x] = gy;
      gcs[threadIdx.x] = jok ? gx * ld(coords + (b * N + j) * 2) + gy * ld(coords + (b * N + j) * 2 + 1) : A(0);
      lses[threadIdx.x] = jok ? lse[b * N + j] : A(INFINITY);  // padded queries: p = 0
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      ds[c] = ok ? scale * dexp(scale * s[c] - lses[c]) * (gxs[c] * xi + gys[c] * yi - gcs[c]) : A(0);
    tile_apply(qv, c0, D, ds, ok, dk + b * D * M + i, M, bs);
  }
}

}  // namespace

const char* project_coords_fwd(DType dt, int64_t B, int64_t N, int64_t H, int64_t W, int64_t D, const void* q,
                               const void* k, double scale, void* coords_acc, void* lse_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    const dim3 grid(blocks_for(N, kRows), (unsigned)B);
    DC_LAUNCH(project_fwd_kernel<T>, grid, kRows, (cudaStream_t)stream)(
        (const T*)q, (const T*)k, N, H, W, D, (A)scale, (A*)coords_acc, (A*)lse_acc);
    return last_error();
  });
}

const char* project_coords_bwd(DType dt, int64_t B, int64_t N, int64_t H, int64_t W, int64_t D,
                               const void* grad, const void* q, const void* k, const void* coords,
                               const void* lse_acc, double scale, void* dq_acc, void* dk_acc, void* stream) {
  return dispatch(dt, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    using A = acc_t<T>;
    auto s = (cudaStream_t)stream;
    DC_LAUNCH(project_bwd_dq_kernel<T>, dim3(blocks_for(N, kRows), (unsigned)B), kRows, s)(
        (const T*)grad, (const T*)q, (const T*)k, (const T*)coords, (const A*)lse_acc, N, H, W, D, (A)scale,
        (A*)dq_acc);
    DC_LAUNCH(project_bwd_dk_kernel<T>, dim3(blocks_for(H * W, kRows), (unsigned)B), kRows, s)(
        (const T*)grad, (const T*)q, (const T*)k, (const T*)coords, (const A*)lse_acc, N, H, W, D, (A)scale,
        (A*)dk_acc);
    return last_error();
  });
}

}  // namespace densecorr_cuda
