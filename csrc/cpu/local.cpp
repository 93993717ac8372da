// CPU kernels of local_affinity, local_copy and local_attention, forward and backward
// (layouts: densecorr.cpp; scheme: local_kernels.h). Compiled for AVX2+FMA and for the
// baseline instruction set; use_avx2() picks one per call.
#include "common.h"

#define DC_ISA base
#include "simd.h"
#include "local_kernels.h"
#undef DC_ISA

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DC_ISA avx2
#include "simd.h"
#include "local_kernels.h"
#undef DC_ISA
#pragma GCC pop_options

namespace densecorr_cpu {
namespace {

using at::Tensor;

#define DC_DISPATCH_ISA(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))

void check_float(const Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), "densecorr cpu ", op, ": tensors must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "densecorr cpu ", op,
              ": float32 or float64 tensors only, got ", t.scalar_type());
}

// q (B, D, H, W) and a reference stack x (B, T, E, H, W) on the same grid.
void check_pair(const Tensor& q, const Tensor& x, const char* op, const char* qname, const char* xname) {
  check_float(q, op);
  check_cpu_input(x, xname, q.scalar_type());
  TORCH_CHECK(q.dim() == 4 && x.dim() == 5 && q.size(0) == x.size(0) && q.size(2) == x.size(3) &&
                  q.size(3) == x.size(4),
              "densecorr cpu ", op, ": ", qname, " must be (B, *, H, W) and ", xname, " (B, T, *, H, W), got ",
              q.sizes(), " and ", x.sizes());
}

Tensor local_affinity_fwd(const Tensor& q_, const Tensor& k_, int64_t radius, int64_t dilation, double scale,
                          bool normalize, std::string boundary, std::string window) {
  check_pair(q_, k_, "local_affinity", "q", "k");
  TORCH_CHECK(q_.size(1) == k_.size(2), "densecorr cpu local_affinity: q ", q_.sizes(), " and k ", k_.sizes(),
              " differ in D");
  const Tensor q = q_.contiguous(), k = k_.contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  const Window g(radius, dilation, T, H, W, boundary, window);
  Tensor attn = at::empty({B, T * g.P, H, W}, q.options());
  if (attn.numel() == 0) return attn;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_affinity_fwd", [&] {
    DC_DISPATCH_ISA(local_affinity_fwd_k<scalar_t>, g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                    attn.data_ptr<scalar_t>(), B, D, scalar_t(scale), normalize);
  });
  return attn;
}

std::tuple<Tensor, Tensor> local_affinity_bwd(const Tensor& grad_attn, const Tensor& q_, const Tensor& k_,
                                              const Tensor& attn_, int64_t radius, int64_t dilation, double scale,
                                              bool normalize, std::string boundary, std::string window) {
  check_pair(q_, k_, "local_affinity_bwd", "q", "k");
  const Tensor q = q_.contiguous(), k = k_.contiguous(), grad = grad_attn.contiguous(), attn = attn_.contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  const Window g(radius, dilation, T, H, W, boundary, window);
  TORCH_CHECK(attn.sizes() == at::IntArrayRef({B, T * g.P, H, W}) && grad.sizes() == attn.sizes(),
              "densecorr cpu local_affinity_bwd: attn ", attn.sizes(), " and grad_attn ", grad.sizes(),
              " must be (B, T*P, H, W) = ", at::IntArrayRef({B, T * g.P, H, W}));
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k);
  if (q.numel() == 0 || k.numel() == 0) return {dq, dk};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_affinity_bwd", [&] {
    DC_DISPATCH_ISA(local_affinity_bwd_k<scalar_t>, g, grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                    k.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                    dk.data_ptr<scalar_t>(), B, D, scalar_t(scale), normalize);
  });
  return {dq, dk};
}

Tensor local_copy_fwd(const Tensor& attn_, const Tensor& v_, int64_t radius, int64_t dilation, std::string boundary,
                      std::string window) {
  check_pair(attn_, v_, "local_copy", "attn", "v");
  const Tensor attn = attn_.contiguous(), v = v_.contiguous();
  const int64_t B = attn.size(0), H = attn.size(2), W = attn.size(3), T = v.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  TORCH_CHECK(attn.size(1) == T * g.P, "densecorr cpu local_copy: attn ", attn.sizes(), " must have T*P = ", T * g.P,
              " channels for v ", v.sizes());
  Tensor out = at::empty({B, C, H, W}, v.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "local_copy_fwd", [&] {
    DC_DISPATCH_ISA(local_copy_fwd_k<scalar_t>, g, attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                    out.data_ptr<scalar_t>(), B, C);
  });
  return out;
}

std::tuple<Tensor, Tensor> local_copy_bwd(const Tensor& grad_out, const Tensor& attn_, const Tensor& v_,
                                          int64_t radius, int64_t dilation, std::string boundary, std::string window) {
  check_pair(attn_, v_, "local_copy_bwd", "attn", "v");
  const Tensor attn = attn_.contiguous(), v = v_.contiguous(), grad = grad_out.contiguous();
  const int64_t B = attn.size(0), H = attn.size(2), W = attn.size(3), T = v.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  TORCH_CHECK(attn.size(1) == T * g.P && grad.sizes() == at::IntArrayRef({B, C, H, W}),
              "densecorr cpu local_copy_bwd: attn ", attn.sizes(), ", grad_out ", grad.sizes(), " and v ", v.sizes(),
              " disagree");
  Tensor dattn = at::zeros_like(attn), dv = at::zeros_like(v);
  if (attn.numel() == 0 || v.numel() == 0) return {dattn, dv};
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "local_copy_bwd", [&] {
    DC_DISPATCH_ISA(local_copy_bwd_k<scalar_t>, g, grad.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                    v.data_ptr<scalar_t>(), dattn.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), B, C);
  });
  return {dattn, dv};
}

void check_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_pair(q, k, "local_attention", "q", "k");
  check_pair(q, v, "local_attention", "q", "v");
  TORCH_CHECK(q.size(1) == k.size(2) && k.size(1) == v.size(1), "densecorr cpu local_attention: q ", q.sizes(),
              ", k ", k.sizes(), ", v ", v.sizes(), " disagree in D or T");
}

std::tuple<Tensor, Tensor, Tensor> local_attention_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                       int64_t radius, int64_t dilation, double scale,
                                                       std::string boundary, std::string window, int64_t topk) {
  check_attention(q_, k_, v_);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  TORCH_CHECK(topk >= 0 && topk <= T * g.P, "densecorr cpu local_attention: topk must be in [0, T*P = ", T * g.P,
              "], got ", topk);
  Tensor out = at::empty({B, C, H, W}, q.options()), lse = at::empty({B, H, W}, q.options());
  Tensor idx = at::empty({B, H, W, topk}, q.options().dtype(at::kLong));
  if (B * H * W == 0) return {out, lse, idx};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_fwd", [&] {
    DC_DISPATCH_ISA(local_attention_fwd_k<scalar_t>, g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                    v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                    idx.data_ptr<int64_t>(), B, D, C, scalar_t(scale), topk);
  });
  return {out, lse, idx};
}

std::tuple<Tensor, Tensor, Tensor> local_attention_bwd(const Tensor& grad_out, const Tensor& q_, const Tensor& k_,
                                                       const Tensor& v_, const Tensor& out_, const Tensor& lse_,
                                                       const Tensor& idx_, int64_t radius, int64_t dilation,
                                                       double scale, std::string boundary, std::string window) {
  check_attention(q_, k_, v_);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Tensor grad = grad_out.contiguous(), out = out_.contiguous(), lse = lse_.contiguous().to(q.scalar_type());
  const Tensor idx = idx_.contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  TORCH_CHECK(grad.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({B, C, H, W}) &&
                  lse.sizes() == at::IntArrayRef({B, H, W}) && idx.dim() == 4 && idx.scalar_type() == at::kLong,
              "densecorr cpu local_attention_bwd: grad_out ", grad.sizes(), ", out ", out.sizes(), ", lse ",
              lse.sizes(), ", idx ", idx.sizes(), " do not fit q ", q.sizes(), " and v ", v.sizes());
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  if (q.numel() == 0 || k.numel() == 0 || v.numel() == 0) return {dq, dk, dv};
  const Tensor delta = (grad * out).sum(1).contiguous();  // (B, H, W): dO . out per pixel
  const int64_t topk = idx.size(3);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_bwd", [&] {
    using T_ = scalar_t;
    if (topk > 0) {
      DC_DISPATCH_ISA(local_attention_bwd_topk<T_>, g, q.data_ptr<T_>(), k.data_ptr<T_>(), v.data_ptr<T_>(),
                      grad.data_ptr<T_>(), delta.data_ptr<T_>(), lse.data_ptr<T_>(), idx.data_ptr<int64_t>(),
                      dq.data_ptr<T_>(), dk.data_ptr<T_>(), dv.data_ptr<T_>(), B, D, C, T_(scale), topk);
    } else {
      DC_DISPATCH_ISA(local_attention_bwd_k<T_>, g, q.data_ptr<T_>(), k.data_ptr<T_>(), v.data_ptr<T_>(),
                      grad.data_ptr<T_>(), delta.data_ptr<T_>(), lse.data_ptr<T_>(), dq.data_ptr<T_>(),
                      dk.data_ptr<T_>(), dv.data_ptr<T_>(), B, D, C, T_(scale));
    }
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace densecorr_cpu

TORCH_LIBRARY_IMPL(densecorr_ext, CPU, m) {
  m.impl("local_affinity_fwd", &densecorr_cpu::local_affinity_fwd);
  m.impl("local_affinity_bwd", &densecorr_cpu::local_affinity_bwd);
  m.impl("local_copy_fwd", &densecorr_cpu::local_copy_fwd);
  m.impl("local_copy_bwd", &densecorr_cpu::local_copy_bwd);
  m.impl("local_attention_fwd", &densecorr_cpu::local_attention_fwd);
  m.impl("local_attention_bwd", &densecorr_cpu::local_attention_bwd);
}
