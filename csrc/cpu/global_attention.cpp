// CPU kernels of global_attention_fwd/bwd and project_coords_fwd/bwd (layouts: densecorr.cpp).
//
// The kernels (global_kernels.h) are compiled three times, for AVX-512, AVX2+FMA and the
// baseline x86-64 instruction set; simd_level() picks one per call. The top-k forward's int16
// pre-filter (topk_prefilter.h) exists in the AVX2 and AVX-512 variants only.
#include "common.h"

#include <immintrin.h>
#include <functional>

#define DC_ISA base
#define DC_PREFILTER_ISA 0
#include "simd.h"
#include "gemm.h"
#include "global_kernels.h"
#include "topk_prefilter.h"
#undef DC_PREFILTER_ISA
#undef DC_ISA

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DC_ISA avx2
#define DC_PREFILTER_ISA 1
#define DC_FMA 1
#include "simd.h"
#include "gemm.h"
#include "global_kernels.h"
#include "topk_prefilter.h"
#undef DC_FMA
#undef DC_PREFILTER_ISA
#undef DC_ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define DC_ISA avx512
#define DC_VBYTES 64
#define DC_PREFILTER_ISA 2
#define DC_FMA 2
#include "simd.h"
#include "gemm.h"
#include "global_kernels.h"
#include "topk_prefilter.h"
#undef DC_FMA
#undef DC_PREFILTER_ISA
#undef DC_ISA
#pragma GCC pop_options

namespace densecorr_cpu {
namespace {

using densecorr::dense;
using densecorr::ptr;
using densecorr::shape;
using densecorr::Tensor;
namespace st = torch::stable;

// Where the top-k pre-filter wins (AVX2 on an AMD EPYC Zen 3, 1 thread, N = 1000, k = 10:
// 10-30% at D >= 64 and M D >= 2^18; at k = M / 128 it no longer pays, as the survivors'
// exact logits (about k + a few per query) cost more than the int16 product saves).
constexpr int64_t kTopkPrefilterMinD = 64;
constexpr int64_t kTopkPrefilterMinWork = int64_t(1) << 18;  // M * D
constexpr int64_t kTopkPrefilterKeysPerK = 256;

#define DC_DISPATCH_ISA(fn, ...) \
  (simd_level() == 2 ? avx512::fn(__VA_ARGS__) : simd_level() == 1 ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))

// Elements per vector of the variant that runs now (the padding of the packed operands).
inline int64_t vec_width(densecorr::ScalarType t) {
  const int64_t bytes = simd_level() == 2 ? 64 : 32;
  return bytes / (t == densecorr::ScalarType::Float ? 4 : 8);
}

// x (B, R, Cx) -> zero-padded (B, round_up(R, rw), round_up(Cx, cw)).
Tensor pad_rows_cols(const Tensor& x, int64_t rw, int64_t cw) {
  const int64_t R = x.size(1), Cx = x.size(2);
  Tensor p = densecorr::zeros({x.size(0), round_up(R, rw), round_up(Cx, cw)}, x);
  Tensor inner = densecorr::narrow(densecorr::narrow(p, 1, 0, R), 2, 0, Cx);
  densecorr::copy_(inner, x);
  return p;
}

// k (B, M, D) -> (B, Mq / PW, D, PW), Mq = round_up(M, PW): key panels for gemm_packed.
Tensor pack_panels(const Tensor& k, int64_t PW) {
  const int64_t B = k.size(0), M = k.size(1), D = k.size(2), Mq = round_up(M, PW);
  Tensor p = densecorr::zeros({B, Mq, D}, k);
  Tensor head = densecorr::narrow(p, 1, 0, M);
  densecorr::copy_(head, k);
  return st::contiguous(st::transpose(st::view(p, {B, Mq / PW, PW, D}), 2, 3));
}

void check_global(const Tensor& q, const Tensor& k, const Tensor& v) {
  DC_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
           "densecorr cpu global_attention: q, k, v must be (B, N, D), (B, M, D), (B, M, C), got ", shape(q), ", ",
           shape(k), ", ", shape(v));
  DC_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0) && q.size(2) == k.size(2) && k.size(1) == v.size(1),
           "densecorr cpu global_attention: mismatched shapes q ", shape(q), ", k ", shape(k), ", v ", shape(v));
  for (auto* t : {&q, &k, &v}) check_cpu_input(*t, "q/k/v", q.scalar_type());
  DC_CHECK(q.scalar_type() == densecorr::ScalarType::Float || q.scalar_type() == densecorr::ScalarType::Double,
           "densecorr cpu: float32 or float64 tensors only, got ", densecorr::dtype_name(q.scalar_type()));
}

// Shared by global_attention_fwd and project_coords_fwd. v_or_vp: v (B, M, C) for topk,
// else values padded to (Bv, round_up(M, 2W), round_up(C, W)), Bv = 1 when batches share them.
// Whether the top-k forward tries the int16 pre-filter (topk_prefilter.h; exact, same
// results): DENSECORR_TOPK_PREFILTER=off never, =on wherever it can run (float32 on an AVX2
// or AVX-512 variant, finite inputs: the tests' switch), else where it was measured to win.
inline bool want_topk_prefilter(int64_t D, int64_t M, int64_t topk) {
  if (simd_level() < 1) return false;
  const char* env = std::getenv("DENSECORR_TOPK_PREFILTER");
  const std::string e = env != nullptr ? env : "auto";
  if (e == "off") return false;
  if (e == "on") return true;
  return D >= kTopkPrefilterMinD && M * D >= kTopkPrefilterMinWork && M >= kTopkPrefilterKeysPerK * topk;
}

template <typename T>
void run_fwd(const Tensor& q, const Tensor& k, const Tensor& v_or_vp, bool shared_v, int64_t C, double scale,
             int64_t topk, Tensor& out, Tensor& lse, Tensor& idx) {
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1), D = q.size(2), W = vec_width(q.scalar_type());
  if constexpr (std::is_same_v<T, float>) {
    if (topk > 0 && want_topk_prefilter(D, M, topk)) {
      const int64_t vstride = shared_v ? 0 : M * C;
      const bool done =
          simd_level() == 2
              ? avx512::global_fwd_topk_q16(ptr<T>(q), ptr<T>(k), ptr<T>(v_or_vp), vstride, ptr<T>(out),
                                            ptr<T>(lse), ptr<int64_t>(idx), B, N, M, D, C, T(scale), topk)
              : avx2::global_fwd_topk_q16(ptr<T>(q), ptr<T>(k), ptr<T>(v_or_vp), vstride, ptr<T>(out), ptr<T>(lse),
                                          ptr<int64_t>(idx), B, N, M, D, C, T(scale), topk);
      if (done) return;  // else (non-finite or extreme inputs) the plain path
    }
  }
  Tensor kpk = pack_panels(k, 2 * W);
  if (topk > 0) {
    const int64_t vstride = shared_v ? 0 : M * C;
    DC_DISPATCH_ISA(global_fwd_topk<T>, ptr<T>(q), ptr<T>(kpk), ptr<T>(v_or_vp), vstride, ptr<T>(out), ptr<T>(lse),
                    ptr<int64_t>(idx), B, N, M, D, C, T(scale), topk);
  } else {
    const int64_t vstride = shared_v ? 0 : round_up(M, 2 * W) * round_up(C, W);
    DC_DISPATCH_ISA(global_fwd_dense<T>, ptr<T>(q), ptr<T>(kpk), ptr<T>(v_or_vp), vstride, ptr<T>(out), ptr<T>(lse),
                    B, N, M, D, C, T(scale));
  }
}

std::tuple<Tensor, Tensor, Tensor> global_attention_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                        double scale, int64_t topk) {
  check_global(q_, k_, v_);
  const Tensor q = dense(q_), k = dense(k_), v = dense(v_);
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1), C = v.size(2);
  DC_CHECK(topk >= 0 && topk <= M, "densecorr cpu global_attention: topk must be in [0, M=", M, "], got ", topk);
  Tensor out = densecorr::empty({B, N, C}, q);
  Tensor lse = densecorr::empty({B, N}, q);
  Tensor idx = densecorr::empty({B, N, topk}, q, densecorr::ScalarType::Long);
  if (B * N == 0 || C == 0) {
    densecorr::zero_(out);
    st::fill_(lse, -INFINITY);
    return {out, lse, idx};
  }
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu global_attention_fwd", [&] {
    const int64_t W = vec_width(q.scalar_type());
    Tensor vv = topk > 0 ? v : pad_rows_cols(v, 2 * W, W);
    run_fwd<scalar_t>(q, k, vv, false, C, scale, topk, out, lse, idx);
  });
  return {out, lse, idx};
}

// delta[r] = sum_c a[r, c] * b[r, c] for rows of length C (contiguous).
template <typename T>
void row_dots(const T* a, const T* b, T* delta, int64_t rows, int64_t C) {
  parallel_for(0, rows, grain_for(C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += a[r * C + c] * b[r * C + c];
      delta[r] = acc;
    }
  });
}

// The backward of both global ops; v (Bv, M, C) with Bv = 1 when shared (project_coords,
// whose dv is not wanted: want_dv = false).
template <typename T>
void run_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, bool shared_v, const Tensor& out,
             const Tensor& lse, const Tensor& idx, double scale, Tensor& dq, Tensor& dk, Tensor* dv) {
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1), D = q.size(2), C = v.size(2);
  const int64_t W = vec_width(q.scalar_type());
  const int64_t topk = idx.size(2);
  T* dvp = dv != nullptr ? ptr<T>(*dv) : nullptr;
  if (topk > 0) {
    DC_DISPATCH_ISA(global_bwd_topk<T>, ptr<T>(q), ptr<T>(k), ptr<T>(v), shared_v ? 0 : M * C, ptr<T>(dout),
                    ptr<T>(out), ptr<T>(lse), ptr<int64_t>(idx), ptr<T>(dq), ptr<T>(dk), dvp, B, N, M, D, C, topk,
                    T(scale));
    return;
  }
  const int64_t Mp = round_up(M, W), Dp = round_up(D, W), Cp = round_up(C, W);
  Tensor delta = densecorr::empty({B, N}, q);  // (B, N): dO_i . out_i
  row_dots<T>(ptr<T>(dout), ptr<T>(out), ptr<T>(delta), B * N, C);
  Tensor kt = pad_rows_cols(st::transpose(k, 1, 2), 1, W);  // (B, D, Mp)
  Tensor vt = pad_rows_cols(st::transpose(v, 1, 2), 1, W);  // (Bv, C, Mp)
  Tensor kp = pad_rows_cols(k, W, W);                       // (B, Mp, Dp)
  const int64_t G = base::bwd_groups(B, N, M, D, C, sizeof(T));
  Tensor dkp = densecorr::zeros({G, B, Mp, Dp}, q);
  Tensor dvpart = dv != nullptr ? densecorr::zeros({G, B, Mp, Cp}, q) : Tensor();
  DC_DISPATCH_ISA(global_bwd_dense<T>, ptr<T>(q), ptr<T>(kt), ptr<T>(vt), shared_v ? 0 : C * Mp, ptr<T>(kp),
                  ptr<T>(dout), ptr<T>(lse), ptr<T>(delta), ptr<T>(dq), ptr<T>(dkp),
                  dv != nullptr ? ptr<T>(dvpart) : nullptr, G, B, N, M, D, C, T(scale));
  densecorr::copy_(dk, densecorr::narrow(densecorr::narrow(st::select(dkp, 0, 0), 1, 0, M), 2, 0, D));
  if (dv != nullptr) densecorr::copy_(*dv, densecorr::narrow(densecorr::narrow(st::select(dvpart, 0, 0), 1, 0, M), 2, 0, C));
}

std::tuple<Tensor, Tensor, Tensor> global_attention_bwd(const Tensor& grad_out, const Tensor& q_, const Tensor& k_,
                                                        const Tensor& v_, const Tensor& out, const Tensor& lse,
                                                        const Tensor& idx, double scale) {
  check_global(q_, k_, v_);
  const Tensor q = dense(q_), k = dense(k_), v = dense(v_);
  const Tensor dout = dense(grad_out), o = dense(out), l = dense(lse), ix = dense(idx);
  DC_CHECK(o.dim() == 3 && densecorr::same_sizes(dout, o) && o.size(0) == q.size(0) && o.size(1) == q.size(1) &&
               o.size(2) == v.size(2),
           "densecorr cpu global_attention_bwd: grad_out ", shape(dout), " and out ", shape(o),
           " must be (B, N, C) for q ", shape(q), ", v ", shape(v));
  DC_CHECK(ix.dim() == 3 && ix.scalar_type() == densecorr::ScalarType::Long,
           "densecorr cpu global_attention_bwd: idx must be int64 (B, N, topk)");
  DC_CHECK(ix.size(0) == q.size(0) && ix.size(1) == q.size(1), "densecorr cpu global_attention_bwd: idx ", shape(ix),
           " does not fit q ", shape(q));
  check_index_range(ix, k.size(1), "global_attention_bwd", "keys M =");
  Tensor dq = densecorr::zeros_like(q), dk = densecorr::zeros_like(k), dv = densecorr::zeros_like(v);
  if (q.numel() == 0 || k.numel() == 0 || v.numel() == 0) return {dq, dk, dv};
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu global_attention_bwd", [&] {
    run_bwd<scalar_t>(dout, q, k, v, false, o, l, ix, scale, dq, dk, &dv);
  });
  return {dq, dk, dv};
}

// project_coords: global attention of token queries over the cells of an image of keys,
// the values being the cells' own (x, y), generated here.
void check_project(const Tensor& q, const Tensor& k) {
  DC_CHECK(q.dim() == 3 && k.dim() == 4 && q.size(0) == k.size(0) && q.size(2) == k.size(1),
           "densecorr cpu project_coords: q must be (B, N, D) and k (B, D, H, W), got ", shape(q), ", ", shape(k));
  check_cpu_input(q, "q", q.scalar_type());
  check_cpu_input(k, "k", q.scalar_type());
  DC_CHECK(q.scalar_type() == densecorr::ScalarType::Float || q.scalar_type() == densecorr::ScalarType::Double,
           "densecorr cpu: float32 or float64 tensors only, got ", densecorr::dtype_name(q.scalar_type()));
}

template <typename T>
Tensor coord_grid(int64_t H, int64_t W, const Tensor& like) {  // (1, H*W, 2): (x, y) of cell i, contiguous
  Tensor grid = densecorr::empty({1, H * W, 2}, like);
  T* g = ptr<T>(grid);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      g[2 * (y * W + x)] = T(x);
      g[2 * (y * W + x) + 1] = T(y);
    }
  return grid;
}

std::tuple<Tensor, Tensor> project_coords_fwd(const Tensor& q_, const Tensor& k_, double scale) {
  check_project(q_, k_);
  const Tensor q = dense(q_);
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), H = k_.size(2), W = k_.size(3);
  const Tensor k = dense(st::transpose(st::reshape(k_, {B, D, H * W}), 1, 2));  // (B, M, D)
  Tensor out = densecorr::empty({B, N, 2}, q), lse = densecorr::empty({B, N}, q), idx;
  if (B * N == 0) return {out, lse};
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu project_coords_fwd", [&] {
    const int64_t Wv = vec_width(q.scalar_type());
    Tensor vp = pad_rows_cols(coord_grid<scalar_t>(H, W, q), 2 * Wv, Wv);
    run_fwd<scalar_t>(q, k, vp, true, 2, scale, 0, out, lse, idx);
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor> project_coords_bwd(const Tensor& grad_coords, const Tensor& q_, const Tensor& k_,
                                              const Tensor& coords, const Tensor& lse, double scale) {
  check_project(q_, k_);
  const Tensor q = dense(q_);
  const int64_t B = q.size(0), D = q.size(2), H = k_.size(2), W = k_.size(3);
  const Tensor k = dense(st::transpose(st::reshape(k_, {B, D, H * W}), 1, 2));
  Tensor dq = densecorr::zeros_like(q), dk = densecorr::zeros_like(k);
  if (q.numel() > 0 && k.numel() > 0) {
    DC_DISPATCH_FLOAT(q.scalar_type(), "cpu project_coords_bwd", [&] {
      Tensor grid = coord_grid<scalar_t>(H, W, q);
      Tensor idx = densecorr::empty({B, q.size(1), 0}, q, densecorr::ScalarType::Long);
      run_bwd<scalar_t>(dense(grad_coords), q, k, grid, true, dense(coords), dense(lse), idx, scale,
                        dq, dk, nullptr);
    });
  }
  return {dq, st::reshape(st::transpose(dk, 1, 2), {B, D, H, W})};
}

}  // namespace
}  // namespace densecorr_cpu

STABLE_TORCH_LIBRARY_IMPL(densecorr_ext, CPU, m) {
  m.impl("global_attention_fwd", TORCH_BOX(&densecorr_cpu::global_attention_fwd));
  m.impl("global_attention_bwd", TORCH_BOX(&densecorr_cpu::global_attention_bwd));
  m.impl("project_coords_fwd", TORCH_BOX(&densecorr_cpu::project_coords_fwd));
  m.impl("project_coords_bwd", TORCH_BOX(&densecorr_cpu::project_coords_bwd));
}
