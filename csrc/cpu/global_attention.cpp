// CPU kernels of global_attention_fwd/bwd and project_coords_fwd/bwd (layouts: densecorr.cpp).
//
// The kernels (global_kernels.h) are compiled twice, for AVX2+FMA and for the baseline
// x86-64 instruction set; use_avx2() picks one per call.
#include "common.h"

#define DC_ISA base
#include "simd.h"
#include "gemm.h"
#include "global_kernels.h"
#undef DC_ISA

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DC_ISA avx2
#include "simd.h"
#include "gemm.h"
#include "global_kernels.h"
#undef DC_ISA
#pragma GCC pop_options

namespace densecorr_cpu {
namespace {

using at::Tensor;

#define DC_DISPATCH_ISA(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))

constexpr int64_t vec_width(at::ScalarType t) { return t == at::kFloat ? 8 : 4; }

// x (B, R, Cx) -> zero-padded (B, round_up(R, rw), round_up(Cx, cw)).
Tensor pad_rows_cols(const Tensor& x, int64_t rw, int64_t cw) {
  const int64_t R = x.size(1), Cx = x.size(2);
  Tensor p = at::zeros({x.size(0), round_up(R, rw), round_up(Cx, cw)}, x.options());
  p.narrow(1, 0, R).narrow(2, 0, Cx).copy_(x);
  return p;
}

// k (B, M, D) -> (B, Mq / PW, D, PW), Mq = round_up(M, PW): key panels for gemm_packed.
Tensor pack_panels(const Tensor& k, int64_t PW) {
  const int64_t B = k.size(0), M = k.size(1), D = k.size(2), Mq = round_up(M, PW);
  Tensor p = at::zeros({B, Mq, D}, k.options());
  p.narrow(1, 0, M).copy_(k);
  return p.view({B, Mq / PW, PW, D}).transpose(2, 3).contiguous();
}

void check_global(const Tensor& q, const Tensor& k, const Tensor& v) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "densecorr cpu global_attention: q, k, v must be (B, N, D), (B, M, D), (B, M, C), got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && k.size(0) == v.size(0) && q.size(2) == k.size(2) && k.size(1) == v.size(1),
              "densecorr cpu global_attention: mismatched shapes q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  for (auto* t : {&q, &k, &v}) check_cpu_input(*t, "q/k/v", q.scalar_type());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "densecorr cpu: float32 or float64 tensors only, got ", q.scalar_type());
}

// Shared by global_attention_fwd and project_coords_fwd. v_or_vp: v (B, M, C) for topk,
// else values padded to (Bv, round_up(M, 2W), round_up(C, W)), Bv = 1 when batches share them.
template <typename T>
void run_fwd(const Tensor& q, const Tensor& k, const Tensor& v_or_vp, bool shared_v, int64_t C, double scale,
             int64_t topk, Tensor& out, Tensor& lse, Tensor& idx) {
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1), D = q.size(2), W = vec_width(q.scalar_type());
  Tensor kpk = pack_panels(k, 2 * W);
  if (topk > 0) {
    const int64_t vstride = shared_v ? 0 : M * C;
    DC_DISPATCH_ISA(global_fwd_topk<T>, q.data_ptr<T>(), kpk.data_ptr<T>(), v_or_vp.data_ptr<T>(), vstride,
                    out.data_ptr<T>(), lse.data_ptr<T>(), idx.data_ptr<int64_t>(), B, N, M, D, C, T(scale), topk);
  } else {
    const int64_t vstride = shared_v ? 0 : round_up(M, 2 * W) * round_up(C, W);
    DC_DISPATCH_ISA(global_fwd_dense<T>, q.data_ptr<T>(), kpk.data_ptr<T>(), v_or_vp.data_ptr<T>(), vstride,
                    out.data_ptr<T>(), lse.data_ptr<T>(), B, N, M, D, C, T(scale));
  }
}

std::tuple<Tensor, Tensor, Tensor> global_attention_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                        double scale, int64_t topk) {
  check_global(q_, k_, v_);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1), C = v.size(2);
  TORCH_CHECK(topk >= 0 && topk <= M, "densecorr cpu global_attention: topk must be in [0, M=", M, "], got ", topk);
  Tensor out = at::empty({B, N, C}, q.options());
  Tensor lse = at::empty({B, N}, q.options());
  Tensor idx = at::empty({B, N, topk}, q.options().dtype(at::kLong));
  if (B * N == 0 || C == 0) return {out.zero_(), lse.fill_(-INFINITY), idx};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "global_attention_fwd", [&] {
    const int64_t W = vec_width(q.scalar_type());
    Tensor vv = topk > 0 ? v : pad_rows_cols(v, 2 * W, W);
    run_fwd<scalar_t>(q, k, vv, false, C, scale, topk, out, lse, idx);
  });
  return {out, lse, idx};
}

// The backward of both global ops; v (Bv, M, C) with Bv = 1 when shared (project_coords,
// whose dv is not wanted: want_dv = false).
template <typename T>
void run_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, bool shared_v, const Tensor& out,
             const Tensor& lse, const Tensor& idx, double scale, Tensor& dq, Tensor& dk, Tensor* dv) {
  const int64_t B = q.size(0), N = q.size(1), M = k.size(1), D = q.size(2), C = v.size(2);
  const int64_t W = vec_width(q.scalar_type());
  const int64_t topk = idx.size(2);
  T* dvp = dv != nullptr ? dv->data_ptr<T>() : nullptr;
  if (topk > 0) {
    DC_DISPATCH_ISA(global_bwd_topk<T>, q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), shared_v ? 0 : M * C,
                    dout.data_ptr<T>(), out.data_ptr<T>(), lse.data_ptr<T>(), idx.data_ptr<int64_t>(),
                    dq.data_ptr<T>(), dk.data_ptr<T>(), dvp, B, N, M, D, C, topk, T(scale));
    return;
  }
  const int64_t Mp = round_up(M, W), Dp = round_up(D, W), Cp = round_up(C, W);
  Tensor delta = (dout * out).sum(-1);  // (B, N): dO_i . out_i
  Tensor kt = pad_rows_cols(k.transpose(1, 2), 1, W);  // (B, D, Mp)
  Tensor vt = pad_rows_cols(v.transpose(1, 2), 1, W);  // (Bv, C, Mp)
  Tensor kp = pad_rows_cols(k, W, W);                  // (B, Mp, Dp)
  const int64_t G = base::bwd_groups(B, N, M, D, C, sizeof(T));
  Tensor dkp = at::zeros({G, B, Mp, Dp}, q.options());
  Tensor dvpart = dv != nullptr ? at::zeros({G, B, Mp, Cp}, q.options()) : Tensor();
  DC_DISPATCH_ISA(global_bwd_dense<T>, q.data_ptr<T>(), kt.data_ptr<T>(), vt.data_ptr<T>(), shared_v ? 0 : C * Mp,
                  kp.data_ptr<T>(), dout.data_ptr<T>(), lse.data_ptr<T>(), delta.data_ptr<T>(), dq.data_ptr<T>(),
                  dkp.data_ptr<T>(), dv != nullptr ? dvpart.data_ptr<T>() : nullptr, G, B, N, M, D, C, T(scale));
  dk.copy_(dkp[0].narrow(1, 0, M).narrow(2, 0, D));
  if (dv != nullptr) dv->copy_(dvpart[0].narrow(1, 0, M).narrow(2, 0, C));
}

std::tuple<Tensor, Tensor, Tensor> global_attention_bwd(const Tensor& grad_out, const Tensor& q_, const Tensor& k_,
                                                        const Tensor& v_, const Tensor& out, const Tensor& lse,
                                                        const Tensor& idx, double scale) {
  check_global(q_, k_, v_);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Tensor dout = grad_out.contiguous(), o = out.contiguous(), l = lse.contiguous(), ix = idx.contiguous();
  TORCH_CHECK(dout.sizes() == o.sizes() && o.size(0) == q.size(0) && o.size(1) == q.size(1) && o.size(2) == v.size(2),
              "densecorr cpu global_attention_bwd: grad_out ", dout.sizes(), " and out ", o.sizes(),
              " must be (B, N, C) for q ", q.sizes(), ", v ", v.sizes());
  TORCH_CHECK(ix.dim() == 3 && ix.scalar_type() == at::kLong, "densecorr cpu global_attention_bwd: idx must be int64 (B, N, topk)");
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  if (q.numel() == 0 || k.numel() == 0 || v.numel() == 0) return {dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "global_attention_bwd", [&] {
    run_bwd<scalar_t>(dout, q, k, v, false, o, l, ix, scale, dq, dk, &dv);
  });
  return {dq, dk, dv};
}

// project_coords: global attention of token queries over the cells of an image of keys,
// the values being the cells' own (x, y), generated here.
void check_project(const Tensor& q, const Tensor& k) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && q.size(0) == k.size(0) && q.size(2) == k.size(1),
              "densecorr cpu project_coords: q must be (B, N, D) and k (B, D, H, W), got ", q.sizes(), ", ", k.sizes());
  check_cpu_input(k, "k", q.scalar_type());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "densecorr cpu: float32 or float64 tensors only, got ", q.scalar_type());
}

Tensor coord_grid(int64_t H, int64_t W, const at::TensorOptions& opt) {  // (1, H*W, 2): (x, y) of cell i
  Tensor xs = at::arange(W, opt).repeat({H});
  Tensor ys = at::arange(H, opt).repeat_interleave(W);
  return at::stack({xs, ys}, 1).unsqueeze(0);
}

std::tuple<Tensor, Tensor> project_coords_fwd(const Tensor& q_, const Tensor& k_, double scale) {
  check_project(q_, k_);
  const Tensor q = q_.contiguous();
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), H = k_.size(2), W = k_.size(3);
  const Tensor k = k_.reshape({B, D, H * W}).transpose(1, 2).contiguous();  // (B, M, D)
  Tensor out = at::empty({B, N, 2}, q.options()), lse = at::empty({B, N}, q.options()), idx;
  if (B * N == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "project_coords_fwd", [&] {
    const int64_t Wv = vec_width(q.scalar_type());
    Tensor vp = pad_rows_cols(coord_grid(H, W, q.options()), 2 * Wv, Wv);
    run_fwd<scalar_t>(q, k, vp, true, 2, scale, 0, out, lse, idx);
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor> project_coords_bwd(const Tensor& grad_coords, const Tensor& q_, const Tensor& k_,
                                              const Tensor& coords, const Tensor& lse, double scale) {
  check_project(q_, k_);
  const Tensor q = q_.contiguous();
  const int64_t B = q.size(0), D = q.size(2), H = k_.size(2), W = k_.size(3);
  const Tensor k = k_.reshape({B, D, H * W}).transpose(1, 2).contiguous();
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k);
  if (q.numel() > 0 && k.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "project_coords_bwd", [&] {
      Tensor grid = coord_grid(H, W, q.options()).contiguous();
      Tensor idx = at::empty({B, q.size(1), 0}, q.options().dtype(at::kLong));
      run_bwd<scalar_t>(grad_coords.contiguous(), q, k, grid, true, coords.contiguous(), lse.contiguous(), idx, scale,
                        dq, dk, nullptr);
    });
  }
  return {dq, dk.transpose(1, 2).reshape({B, D, H, W})};
}

}  // namespace
}  // namespace densecorr_cpu

TORCH_LIBRARY_IMPL(densecorr_ext, CPU, m) {
  m.impl("global_attention_fwd", &densecorr_cpu::global_attention_fwd);
  m.impl("global_attention_bwd", &densecorr_cpu::global_attention_bwd);
  m.impl("project_coords_fwd", &densecorr_cpu::project_coords_fwd);
  m.impl("project_coords_bwd", &densecorr_cpu::project_coords_bwd);
}
