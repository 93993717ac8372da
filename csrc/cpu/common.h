// Shared, instruction-set-independent pieces of the CPU kernels: run-time choice of the
// SIMD variant, window geometry of the local ops, and the streaming top-k buffer.
#pragma once

#include "../stable_api.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

// The SIMD helpers pass 32/64-byte vectors by value between inlined functions; GCC warns that
// the non-AVX variant's ABI differs, which cannot matter for functions that never cross a
// translation unit.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace densecorr_cpu {

// Which SIMD variant of the kernels runs: 2 AVX-512 (F, BW, VL, DQ), 1 AVX2+FMA, 0 the
// baseline x86-64 one; the best the CPU has, or the one DENSECORR_CPU_SIMD forces
// ("avx512", "avx2", "base"; a variant the CPU lacks falls back to the best it has, never
// above). Read per call (tests switch it).
inline int cpu_simd_supported() {
  static const int level = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                            __builtin_cpu_supports("fma"))
                               ? 2
                           : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1
                                                                                                 : 0;
  return level;
}
inline int simd_level() {
  const int supported = cpu_simd_supported();
  const char* env = std::getenv("DENSECORR_CPU_SIMD");
  if (env == nullptr) return supported;
  const std::string e(env);
  if (e == "base") return 0;
  if (e == "avx2") return std::min(supported, 1);
  return supported;
}
inline bool use_avx2() { return simd_level() >= 1; }
inline bool use_avx512() { return simd_level() >= 2; }

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// at::parallel_for through the stable ABI (torch's thread pool, same grain semantics).
template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  torch::stable::parallel_for(begin, end, grain, f);
}

// parallel_for grain for tasks of `work` multiply-adds each: calls with under ~2^18 of
// work in total run on the calling thread (a parallel region costs more than they do).
inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, work));
}

enum class Boundary { Mask, Zero, Clamp };

inline Boundary parse_boundary(const std::string& b) {
  if (b == "mask") return Boundary::Mask;
  if (b == "zero") return Boundary::Zero;
  if (b == "clamp") return Boundary::Clamp;
  DC_CHECK(false, "densecorr cpu: boundary must be \"mask\", \"zero\" or \"clamp\", got \"", b, "\"");
  return Boundary::Mask;
}

// Window start along one axis for boundary="clamp" (NATTEN's rule, as the reference): the
// 2r+1 cells, spaced `dil`, stay on the index's dilation sub-grid (same residue mod dil) and
// are shifted to lie inside that sub-grid. Needs length >= (2r+1)*dil.
inline int64_t clamp_window_start(int64_t index, int64_t length, int64_t r, int64_t dil) {
  const int64_t residue = index % dil, pos = index / dil;
  const int64_t sub = (length - residue + dil - 1) / dil;  // length of the sub-grid
  const int64_t start = std::min(std::max<int64_t>(pos - r, 0), sub - (2 * r + 1));
  return residue + start * dil;
}

// The geometry of a local window over a (T, H, W) stack of references.
// Row iy in [0, 2r] of the window grid (dy = iy - r) holds offsets ix in [lo[iy], hi[iy]]
// (dx = ix - r); position p of the window counts these row by row (row_base[iy] is the
// position of (iy, lo[iy])), P positions per reference. A query at (y, x) sees, for grid
// cell (iy, ix), the key (start_y[y] + iy*dil, start_x[x] + ix*dil): start = index - r*dil
// for "mask"/"zero" (possibly outside the image), the NATTEN start for "clamp".
struct Window {
  int64_t r = 0, dil = 1, T = 1, H = 0, W = 0, P = 0;
  Boundary boundary = Boundary::Mask;
  std::vector<int64_t> lo, hi, row_base, start_y, start_x;
  std::vector<int64_t> pos_iy, pos_ix;  // per position p: its grid cell

  Window(int64_t radius, int64_t dilation, int64_t T_, int64_t H_, int64_t W_, const std::string& bnd,
         const std::string& shape)
      : r(radius), dil(dilation), T(T_), H(H_), W(W_), boundary(parse_boundary(bnd)) {
    DC_CHECK(radius >= 0, "densecorr cpu: radius must be >= 0, got ", radius);
    DC_CHECK(dilation >= 1, "densecorr cpu: dilation must be >= 1, got ", dilation);
    DC_CHECK(shape == "square" || shape == "circle",
                "densecorr cpu: window must be \"square\" or \"circle\", got \"", shape, "\"");
    if (boundary == Boundary::Clamp) {
      DC_CHECK(H >= (2 * r + 1) * dil && W >= (2 * r + 1) * dil,
                  "densecorr cpu: boundary=\"clamp\" needs H and W >= (2*radius+1)*dilation = ",
                  (2 * r + 1) * dil, ", got H=", H, ", W=", W);
    }
    const int64_t n = 2 * r + 1;
    lo.resize(n);
    hi.resize(n);
    row_base.resize(n);
    for (int64_t iy = 0; iy < n; ++iy) {
      const int64_t dy = iy - r;
      int64_t half = r;
      if (shape == "circle") {
        half = 0;  // largest |dx| with dx^2 + dy^2 <= r^2, in integers
        while ((half + 1) * (half + 1) + dy * dy <= r * r) ++half;
      }
      lo[iy] = r - half;
      hi[iy] = r + half;
      row_base[iy] = P;
      for (int64_t ix = lo[iy]; ix <= hi[iy]; ++ix) {
        pos_iy.push_back(iy);
        pos_ix.push_back(ix);
      }
      P += hi[iy] - lo[iy] + 1;
    }
    start_y.resize(H);
    start_x.resize(W);
    for (int64_t y = 0; y < H; ++y)
      start_y[y] = boundary == Boundary::Clamp ? clamp_window_start(y, H, r, dil) : y - r * dil;
    for (int64_t x = 0; x < W; ++x)
      start_x[x] = boundary == Boundary::Clamp ? clamp_window_start(x, W, r, dil) : x - r * dil;
  }
  bool row_inside(int64_t ky) const { return ky >= 0 && ky < H; }
  bool col_inside(int64_t kx) const { return kx >= 0 && kx < W; }
};

// Running top-k of a stream of (value, index) pairs, in a caller-owned buffer of 2k slots:
// candidates are appended while they beat the current k-th value; a full buffer is cut back
// to the best k (std::nth_element). Order: larger value first, ties to the smaller index
// (like torch.topk), so a later pair equal to the threshold never enters.
template <typename T>
struct Cand {
  T v;
  int64_t i;
};
template <typename T>
inline bool cand_before(const Cand<T>& a, const Cand<T>& b) {
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

template <typename T>
struct TopK {
  Cand<T>* buf;
  int64_t k, n = 0;
  T thresh = -std::numeric_limits<T>::infinity();
  bool cut = false;  // whether thresh is meaningful (the buffer has been cut back once)

  TopK(Cand<T>* b, int64_t k_) : buf(b), k(k_) {}
  bool wants(T v) const { return !cut || v > thresh; }
  void push(T v, int64_t i) {
    buf[n++] = {v, i};
    if (n == 2 * k) compact();
  }
  void compact() {
    std::nth_element(buf, buf + (k - 1), buf + n, cand_before<T>);
    n = k;
    thresh = buf[k - 1].v;  // the k-th best: everything before it is at least as large
    cut = true;
  }
  // Sort the best min(n, k) first; returns how many.
  int64_t finish() {
    if (n > k) {
      std::nth_element(buf, buf + (k - 1), buf + n, cand_before<T>);
      n = k;
    }
    std::sort(buf, buf + n, cand_before<T>);
    return n;
  }
};

inline void check_cpu_input(const densecorr::Tensor& t, const char* name, densecorr::ScalarType dtype) {
  DC_CHECK(t.is_cpu(), "densecorr cpu: ", name, " must be a CPU tensor, got ", densecorr::device_name(t));
  DC_CHECK(t.scalar_type() == dtype, "densecorr cpu: ", name, " must be ", densecorr::dtype_name(dtype), ", got ",
           densecorr::dtype_name(t.scalar_type()));
}

// Saved indices reach the registered backward ops from outside (torch.ops.densecorr_ext.*):
// one out of [0, limit) must be an error, not a stray read.
inline void check_index_range(const densecorr::Tensor& idx, int64_t limit, const char* op, const char* what) {
  const int64_t* ip = densecorr::ptr<int64_t>(idx);
  const int64_t n = idx.numel();
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; ++i)
    if (ip[i] < 0 || ip[i] >= limit) bad = i;
  DC_CHECK(bad < 0, "densecorr cpu ", op, ": idx holds ", bad < 0 ? 0 : ip[bad], ", outside the ", what, " [0, ",
           limit, ")");
}

}  // namespace densecorr_cpu
