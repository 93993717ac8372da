// CPU kernels of local_affinity, local_copy and local_attention, forward and backward
// (layouts: densecorr.cpp; scheme: local_kernels.h). Compiled for AVX-512, AVX2+FMA and
// the baseline instruction set; simd_level() picks one per call.
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

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define DC_ISA avx512
#define DC_VBYTES 64
#include "simd.h"
#include "local_kernels.h"
#undef DC_ISA
#pragma GCC pop_options

namespace densecorr_cpu {
namespace {

using densecorr::dense;
using densecorr::ptr;
using densecorr::shape;
using densecorr::Tensor;
using densecorr::ScalarType;

#define DC_DISPATCH_ISA(fn, ...) \
  (simd_level() == 2 ? avx512::fn(__VA_ARGS__) : simd_level() == 1 ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))

void check_float(const Tensor& t, const char* op) {
  DC_CHECK(t.is_cpu(), "densecorr cpu ", op, ": tensors must be on the CPU, got ", densecorr::device_name(t));
  DC_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double, "densecorr cpu ", op,
           ": float32 or float64 tensors only, got ", densecorr::dtype_name(t.scalar_type()));
}

// q (B, D, H, W) and a reference stack x (B, T, E, H, W) on the same grid.
void check_pair(const Tensor& q, const Tensor& x, const char* op, const char* qname, const char* xname) {
  check_float(q, op);
  check_cpu_input(x, xname, q.scalar_type());
  DC_CHECK(q.dim() == 4 && x.dim() == 5 && q.size(0) == x.size(0) && q.size(2) == x.size(3) &&
                  q.size(3) == x.size(4),
              "densecorr cpu ", op, ": ", qname, " must be (B, *, H, W) and ", xname, " (B, T, *, H, W), got ",
              shape(q), " and ", shape(x));
}

Tensor local_affinity_fwd(const Tensor& q_, const Tensor& k_, int64_t radius, int64_t dilation, double scale,
                          bool normalize, std::string boundary, std::string window) {
  check_pair(q_, k_, "local_affinity", "q", "k");
  DC_CHECK(q_.size(1) == k_.size(2), "densecorr cpu local_affinity: q ", shape(q_), " and k ", shape(k_),
              " differ in D");
  const Tensor q = dense(q_), k = dense(k_);
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  const Window g(radius, dilation, T, H, W, boundary, window);
  Tensor attn = densecorr::empty({B, T * g.P, H, W}, q);
  if (attn.numel() == 0) return attn;
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu local_affinity_fwd", [&] {
    DC_DISPATCH_ISA(local_affinity_fwd_k<scalar_t>, g, ptr<scalar_t>(q), ptr<scalar_t>(k),
                    ptr<scalar_t>(attn), B, D, scalar_t(scale), normalize);
  });
  return attn;
}

std::tuple<Tensor, Tensor> local_affinity_bwd(const Tensor& grad_attn, const Tensor& q_, const Tensor& k_,
                                              const Tensor& attn_, int64_t radius, int64_t dilation, double scale,
                                              bool normalize, std::string boundary, std::string window) {
  check_pair(q_, k_, "local_affinity_bwd", "q", "k");
  const Tensor q = dense(q_), k = dense(k_), grad = dense(grad_attn), attn = dense(attn_);
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  const Window g(radius, dilation, T, H, W, boundary, window);
  DC_CHECK(densecorr::same_sizes(attn, {B, T * g.P, H, W}) && densecorr::same_sizes(grad, attn),
              "densecorr cpu local_affinity_bwd: attn ", shape(attn), " and grad_attn ", shape(grad),
              " must be (B, T*P, H, W) = [", B, ", ", T * g.P, ", ", H, ", ", W, "]");
  Tensor dq = densecorr::zeros_like(q), dk = densecorr::zeros_like(k);
  if (q.numel() == 0 || k.numel() == 0) return {dq, dk};
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu local_affinity_bwd", [&] {
    DC_DISPATCH_ISA(local_affinity_bwd_k<scalar_t>, g, ptr<scalar_t>(grad), ptr<scalar_t>(q),
                    ptr<scalar_t>(k), ptr<scalar_t>(attn), ptr<scalar_t>(dq),
                    ptr<scalar_t>(dk), B, D, scalar_t(scale), normalize);
  });
  return {dq, dk};
}

Tensor local_copy_fwd(const Tensor& attn_, const Tensor& v_, int64_t radius, int64_t dilation, std::string boundary,
                      std::string window) {
  check_pair(attn_, v_, "local_copy", "attn", "v");
  const Tensor attn = dense(attn_), v = dense(v_);
  const int64_t B = attn.size(0), H = attn.size(2), W = attn.size(3), T = v.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  DC_CHECK(attn.size(1) == T * g.P, "densecorr cpu local_copy: attn ", shape(attn), " must have T*P = ", T * g.P,
              " channels for v ", shape(v));
  Tensor out = densecorr::empty({B, C, H, W}, v);
  if (out.numel() == 0) return out;
  DC_DISPATCH_FLOAT(v.scalar_type(), "cpu local_copy_fwd", [&] {
    DC_DISPATCH_ISA(local_copy_fwd_k<scalar_t>, g, ptr<scalar_t>(attn), ptr<scalar_t>(v),
                    ptr<scalar_t>(out), B, C);
  });
  return out;
}

std::tuple<Tensor, Tensor> local_copy_bwd(const Tensor& grad_out, const Tensor& attn_, const Tensor& v_,
                                          int64_t radius, int64_t dilation, std::string boundary, std::string window) {
  check_pair(attn_, v_, "local_copy_bwd", "attn", "v");
  const Tensor attn = dense(attn_), v = dense(v_), grad = dense(grad_out);
  const int64_t B = attn.size(0), H = attn.size(2), W = attn.size(3), T = v.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  DC_CHECK(attn.size(1) == T * g.P && densecorr::same_sizes(grad, {B, C, H, W}),
              "densecorr cpu local_copy_bwd: attn ", shape(attn), ", grad_out ", shape(grad), " and v ", shape(v),
              " disagree");
  Tensor dattn = densecorr::zeros_like(attn), dv = densecorr::zeros_like(v);
  if (attn.numel() == 0 || v.numel() == 0) return {dattn, dv};
  DC_DISPATCH_FLOAT(v.scalar_type(), "cpu local_copy_bwd", [&] {
    DC_DISPATCH_ISA(local_copy_bwd_k<scalar_t>, g, ptr<scalar_t>(grad), ptr<scalar_t>(attn),
                    ptr<scalar_t>(v), ptr<scalar_t>(dattn), ptr<scalar_t>(dv), B, C);
  });
  return {dattn, dv};
}

// delta[b, s] = sum_c a[b, c, s] * b_[b, c, s] over the C channels of (B, C, S) tensors.
template <typename T>
void channel_dots(const T* a, const T* b_, T* delta, int64_t B, int64_t C, int64_t S) {
  parallel_for(0, B, grain_for(C * S), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* d = delta + b * S;
      for (int64_t s = 0; s < S; ++s) d[s] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T* x = a + (b * C + c) * S;
        const T* y = b_ + (b * C + c) * S;
        for (int64_t s = 0; s < S; ++s) d[s] += x[s] * y[s];
      }
    }
  });
}

void check_attention(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_pair(q, k, "local_attention", "q", "k");
  check_pair(q, v, "local_attention", "q", "v");
  DC_CHECK(q.size(1) == k.size(2) && k.size(1) == v.size(1), "densecorr cpu local_attention: q ", shape(q),
              ", k ", shape(k), ", v ", shape(v), " disagree in D or T");
}

std::tuple<Tensor, Tensor, Tensor> local_attention_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                       int64_t radius, int64_t dilation, double scale,
                                                       std::string boundary, std::string window, int64_t topk) {
  check_attention(q_, k_, v_);
  const Tensor q = dense(q_), k = dense(k_), v = dense(v_);
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  DC_CHECK(topk >= 0 && topk <= T * g.P, "densecorr cpu local_attention: topk must be in [0, T*P = ", T * g.P,
              "], got ", topk);
  Tensor out = densecorr::empty({B, C, H, W}, q), lse = densecorr::empty({B, H, W}, q);
  Tensor idx = densecorr::empty({B, H, W, topk}, q, ScalarType::Long);
  if (B * H * W == 0) return {out, lse, idx};
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu local_attention_fwd", [&] {
    DC_DISPATCH_ISA(local_attention_fwd_k<scalar_t>, g, ptr<scalar_t>(q), ptr<scalar_t>(k),
                    ptr<scalar_t>(v), ptr<scalar_t>(out), ptr<scalar_t>(lse),
                    ptr<int64_t>(idx), B, D, C, scalar_t(scale), topk);
  });
  return {out, lse, idx};
}

std::tuple<Tensor, Tensor, Tensor> local_attention_bwd(const Tensor& grad_out, const Tensor& q_, const Tensor& k_,
                                                       const Tensor& v_, const Tensor& out_, const Tensor& lse_,
                                                       const Tensor& idx_, int64_t radius, int64_t dilation,
                                                       double scale, std::string boundary, std::string window) {
  check_attention(q_, k_, v_);
  const Tensor q = dense(q_), k = dense(k_), v = dense(v_);
  const Tensor grad = dense(grad_out), out = dense(out_), lse = torch::stable::to(dense(lse_), q.scalar_type());
  const Tensor idx = dense(idx_);
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  const Window g(radius, dilation, T, H, W, boundary, window);
  DC_CHECK(densecorr::same_sizes(grad, out) && densecorr::same_sizes(out, {B, C, H, W}) &&
                  densecorr::same_sizes(lse, {B, H, W}) && idx.dim() == 4 && idx.scalar_type() == ScalarType::Long,
              "densecorr cpu local_attention_bwd: grad_out ", shape(grad), ", out ", shape(out), ", lse ",
              shape(lse), ", idx ", shape(idx), " do not fit q ", shape(q), " and v ", shape(v));
  Tensor dq = densecorr::zeros_like(q), dk = densecorr::zeros_like(k), dv = densecorr::zeros_like(v);
  if (q.numel() == 0 || k.numel() == 0 || v.numel() == 0) return {dq, dk, dv};
  const Tensor delta = densecorr::empty({B, H, W}, q);  // (B, H, W): dO . out per pixel
  const int64_t topk = idx.size(3);
  DC_CHECK(idx.size(0) == B && idx.size(1) == H && idx.size(2) == W, "densecorr cpu local_attention_bwd: idx ",
           shape(idx), " does not fit q ", shape(q));
  check_index_range(idx, T * g.P, "local_attention_bwd", "window positions T*P =");
  DC_DISPATCH_FLOAT(q.scalar_type(), "cpu local_attention_bwd", [&] {
    using T_ = scalar_t;
    channel_dots<T_>(ptr<T_>(grad), ptr<T_>(out), ptr<T_>(delta), B, C, H * W);
    if (topk > 0) {
      DC_DISPATCH_ISA(local_attention_bwd_topk<T_>, g, ptr<T_>(q), ptr<T_>(k), ptr<T_>(v),
                      ptr<T_>(grad), ptr<T_>(delta), ptr<T_>(lse), ptr<int64_t>(idx),
                      ptr<T_>(dq), ptr<T_>(dk), ptr<T_>(dv), B, D, C, T_(scale), topk);
    } else {
      DC_DISPATCH_ISA(local_attention_bwd_k<T_>, g, ptr<T_>(q), ptr<T_>(k), ptr<T_>(v),
                      ptr<T_>(grad), ptr<T_>(delta), ptr<T_>(lse), ptr<T_>(dq),
                      ptr<T_>(dk), ptr<T_>(dv), B, D, C, T_(scale));
    }
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace densecorr_cpu

STABLE_TORCH_LIBRARY_IMPL(densecorr_ext, CPU, m) {
  m.impl("local_affinity_fwd", TORCH_BOX(&densecorr_cpu::local_affinity_fwd));
  m.impl("local_affinity_bwd", TORCH_BOX(&densecorr_cpu::local_affinity_bwd));
  m.impl("local_copy_fwd", TORCH_BOX(&densecorr_cpu::local_copy_fwd));
  m.impl("local_copy_bwd", TORCH_BOX(&densecorr_cpu::local_copy_bwd));
  m.impl("local_attention_fwd", TORCH_BOX(&densecorr_cpu::local_attention_fwd));
  m.impl("local_attention_bwd", TORCH_BOX(&densecorr_cpu::local_attention_bwd));
}
