// Torch glue of the CUDA kernels: checks, allocation, window tables and the registration
// TORCH_LIBRARY_IMPL(densecorr_ext, CUDA). The kernels themselves (kernels.h, *.cu) see only
// raw pointers and sizes.
//
// Headers: only c10/cuda (stream, device guard), not ATen/cuda/CUDAContext.h (which pulls in
// cuBLAS/cuSPARSE headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "kernels.h"

namespace densecorr_cuda {
namespace {

using at::Tensor;

DType dtype_of(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, "densecorr cuda ", op, ": unsupported dtype ", t.scalar_type(),
                         " (float32, float64, float16, bfloat16)");
  }
  return DType::f32;
}

at::ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const Tensor& first = *tensors.begin()->second;
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t->is_cuda(), "densecorr cuda ", op, ": ", name, " must be a CUDA tensor, got ", t->device());
    TORCH_CHECK(t->device() == first.device(), "densecorr cuda ", op, ": ", name, " is on ", t->device(),
                ", expected ", first.device());
  }
}

void check(const char* err, const char* op) {
  TORCH_CHECK(err == nullptr, "densecorr cuda ", op, ": CUDA error: ", err ? err : "");
}

void* stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// Window cell tables (wy, wx, g2p), int32 on the device, cached per (device, radius, window).
std::tuple<Tensor, Tensor, Tensor> window_tables(int64_t radius, const std::string& window, const at::Device& dev) {
  static std::mutex mu;
  // Never destroyed: freeing device memory from static destructors can outlive the CUDA
  // context at exit. A few bytes per (device, radius, window).
  static auto& cache = *new std::map<std::tuple<int, int64_t, std::string>, std::tuple<Tensor, Tensor, Tensor>>();
  TORCH_CHECK(window == "square" || window == "circle", "densecorr cuda: window must be 'square' or 'circle', not '",
              window, "'");
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple((int)dev.index(), radius, window);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int64_t side = 2 * radius + 1;
  std::vector<int> wy, wx, g2p(side * side, -1);
  for (int64_t ky = 0; ky < side; ++ky)
    for (int64_t kx = 0; kx < side; ++kx) {
      const int64_t dy = ky - radius, dx = kx - radius;
      if (window == "circle" && dy * dy + dx * dx > radius * radius) continue;
      g2p[ky * side + kx] = (int)wy.size();
      wy.push_back((int)ky);
      wx.push_back((int)kx);
    }
  auto to_dev = [&](const std::vector<int>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kInt)).to(dev);
  };
  auto tables = std::make_tuple(to_dev(wy), to_dev(wx), to_dev(g2p));
  cache.emplace(key, tables);
  return tables;
}

struct LocalCall {
  Window w{};
  Tensor wy, wx, g2p;  // keep the tables alive for the launch
};

// k: (B, T, D, H, W); C from v (or 0). Checks the boundary and the clamp size rule.
LocalCall local_call(const char* op, const Tensor& q_or_attn, int64_t B, int64_t T, int64_t D, int64_t H, int64_t W,
                     int64_t C, int64_t radius, int64_t dilation, const std::string& boundary,
                     const std::string& window) {
  TORCH_CHECK(radius >= 0 && dilation >= 1, "densecorr cuda ", op, ": radius ", radius, " must be >= 0 and dilation ",
              dilation, " >= 1");
  LocalCall c;
  if (boundary == "mask") c.w.boundary = kMask;
  else if (boundary == "zero") c.w.boundary = kZero;
  else if (boundary == "clamp") c.w.boundary = kClamp;
  else TORCH_CHECK(false, "densecorr cuda ", op, ": boundary must be 'mask', 'zero' or 'clamp', not '", boundary, "'");
  const int64_t span = (2 * radius + 1) * dilation;
  TORCH_CHECK(boundary != "clamp" || (H >= span && W >= span), "densecorr cuda ", op,
              ": boundary='clamp' needs H, W >= (2*radius+1)*dilation = ", span, ", got H=", H, ", W=", W);
  std::tie(c.wy, c.wx, c.g2p) = window_tables(radius, window, q_or_attn.device());
  c.w.B = B; c.w.T = T; c.w.H = H; c.w.W = W; c.w.D = D; c.w.C = C;
  c.w.radius = (int)radius;
  c.w.dilation = (int)dilation;
  c.w.P = (int)c.wy.numel();
  c.w.wy = c.wy.data_ptr<int>();
  c.w.wx = c.wx.data_ptr<int>();
  c.w.g2p = c.g2p.data_ptr<int>();
  return c;
}

Tensor local_affinity_fwd_cuda(const Tensor& q_, const Tensor& k_, int64_t radius, int64_t dilation, double scale,
                               bool normalize, std::string boundary, std::string window) {
  check_inputs("local_affinity_fwd", {{"q", &q_}, {"k", &k_}});
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = q_.contiguous(), k = k_.contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  LocalCall c = local_call("local_affinity_fwd", q, B, T, D, H, W, 0, radius, dilation, boundary, window);
  Tensor attn = at::empty({B, T * c.w.P, H, W}, q.options().dtype(acc_type(q)));
  check(local_affinity_fwd(dtype_of(q, "local_affinity_fwd"), c.w, q.data_ptr(), k.data_ptr(), scale, normalize,
                           attn.data_ptr(), stream_of(q)),
        "local_affinity_fwd");
  return attn.to(q.scalar_type());
}

std::tuple<Tensor, Tensor> local_affinity_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                   const Tensor& attn_, int64_t radius, int64_t dilation,
                                                   double scale, bool normalize, std::string boundary,
                                                   std::string window) {
  check_inputs("local_affinity_bwd", {{"grad_attn", &grad_}, {"q", &q_}, {"k", &k_}, {"attn", &attn_}});
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = q_.contiguous(), k = k_.contiguous();
  Tensor grad = grad_.to(q.scalar_type()).contiguous(), attn = attn_.to(q.scalar_type()).contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  LocalCall c = local_call("local_affinity_bwd", q, B, T, D, H, W, 0, radius, dilation, boundary, window);
  auto acc = q.options().dtype(acc_type(q));
  Tensor dq = at::zeros(q.sizes(), acc), dk = at::zeros(k.sizes(), acc), delta = at::empty({B, H * W}, acc);
  check(local_affinity_bwd(dtype_of(q, "local_affinity_bwd"), c.w, grad.data_ptr(), q.data_ptr(), k.data_ptr(),
                           attn.data_ptr(), scale, normalize, dq.data_ptr(), dk.data_ptr(), delta.data_ptr(),
                           stream_of(q)),
        "local_affinity_bwd");
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type())};
}

Tensor local_copy_fwd_cuda(const Tensor& attn_, const Tensor& v_, int64_t radius, int64_t dilation,
                           std::string boundary, std::string window) {
  check_inputs("local_copy_fwd", {{"attn", &attn_}, {"v", &v_}});
  c10::cuda::CUDAGuard guard(v_.device());
  Tensor v = v_.contiguous(), attn = attn_.to(v.scalar_type()).contiguous();
  const int64_t B = v.size(0), T = v.size(1), C = v.size(2), H = v.size(3), W = v.size(4);
  LocalCall c = local_call("local_copy_fwd", v, B, T, 0, H, W, C, radius, dilation, boundary, window);
  TORCH_CHECK(attn.size(1) == T * c.w.P, "densecorr cuda local_copy_fwd: attn has ", attn.size(1),
              " window positions, expected T*P = ", T * c.w.P);
  Tensor out = at::empty({B, C, H, W}, v.options().dtype(acc_type(v)));
  check(local_copy_fwd(dtype_of(v, "local_copy_fwd"), c.w, attn.data_ptr(), v.data_ptr(), out.data_ptr(),
                       stream_of(v)),
        "local_copy_fwd");
  return out.to(v.scalar_type());
}

std::tuple<Tensor, Tensor> local_copy_bwd_cuda(const Tensor& grad_, const Tensor& attn_, const Tensor& v_,
                                               int64_t radius, int64_t dilation, std::string boundary,
                                               std::string window) {
  check_inputs("local_copy_bwd", {{"grad_out", &grad_}, {"attn", &attn_}, {"v", &v_}});
  c10::cuda::CUDAGuard guard(v_.device());
  Tensor v = v_.contiguous();
  Tensor grad = grad_.to(v.scalar_type()).contiguous(), attn = attn_.to(v.scalar_type()).contiguous();
  const int64_t B = v.size(0), T = v.size(1), C = v.size(2), H = v.size(3), W = v.size(4);
  LocalCall c = local_call("local_copy_bwd", v, B, T, 0, H, W, C, radius, dilation, boundary, window);
  auto acc = v.options().dtype(acc_type(v));
  Tensor dattn = at::empty(attn.sizes(), acc), dv = at::empty(v.sizes(), acc);
  check(local_copy_bwd(dtype_of(v, "local_copy_bwd"), c.w, grad.data_ptr(), attn.data_ptr(), v.data_ptr(),
                       dattn.data_ptr(), dv.data_ptr(), stream_of(v)),
        "local_copy_bwd");
  return {dattn.to(attn_.scalar_type()), dv.to(v.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor> local_attention_fwd_cuda(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                            int64_t radius, int64_t dilation, double scale,
                                                            std::string boundary, std::string window, int64_t topk) {
  check_inputs("local_attention_fwd", {{"q", &q_}, {"k", &k_}, {"v", &v_}});
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  LocalCall c = local_call("local_attention_fwd", q, B, T, D, H, W, C, radius, dilation, boundary, window);
  TORCH_CHECK(topk >= 0 && topk <= T * c.w.P, "densecorr cuda local_attention_fwd: topk=", topk,
              " must be in [0, T*P=", T * c.w.P, "]");
  auto acc = q.options().dtype(acc_type(q));
  Tensor out = at::empty({B, C, H, W}, acc), lse = at::empty({B, H, W}, acc);
  Tensor idx = at::empty({B, H, W, topk}, q.options().dtype(at::kLong));
  Tensor topv = at::empty({B, H, W, topk}, acc);
  check(local_attention_fwd(dtype_of(q, "local_attention_fwd"), c.w, q.data_ptr(), k.data_ptr(), v.data_ptr(), scale,
                            topk, out.data_ptr(), lse.data_ptr(), idx.data_ptr<int64_t>(), topv.data_ptr(),
                            stream_of(q)),
        "local_attention_fwd");
  return {out.to(q.scalar_type()), lse, idx};
}

std::tuple<Tensor, Tensor, Tensor> local_attention_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                            const Tensor& v_, const Tensor& out_, const Tensor& lse_,
                                                            const Tensor& idx_, int64_t radius, int64_t dilation,
                                                            double scale, std::string boundary, std::string window) {
  check_inputs("local_attention_bwd",
               {{"grad_out", &grad_}, {"q", &q_}, {"k", &k_}, {"v", &v_}, {"out", &out_}, {"lse", &lse_}, {"idx", &idx_}});
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  Tensor grad = grad_.to(q.scalar_type()).contiguous(), out = out_.to(q.scalar_type()).contiguous();
  Tensor lse = lse_.to(acc_type(q)).contiguous(), idx = idx_.to(at::kLong).contiguous();
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  LocalCall c = local_call("local_attention_bwd", q, B, T, D, H, W, C, radius, dilation, boundary, window);
  auto acc = q.options().dtype(acc_type(q));
  Tensor dq = at::zeros(q.sizes(), acc), dk = at::zeros(k.sizes(), acc), dv = at::zeros(v.sizes(), acc);
  Tensor delta = at::empty({B, H * W}, acc);
  check(local_attention_bwd(dtype_of(q, "local_attention_bwd"), c.w, grad.data_ptr(), q.data_ptr(), k.data_ptr(),
                            v.data_ptr(), out.data_ptr(), lse.data_ptr(), idx.data_ptr<int64_t>(), idx.size(-1), scale,
                            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), delta.data_ptr(), stream_of(q)),
        "local_attention_bwd");
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

std::tuple<Tensor, Tensor> project_coords_fwd_cuda(const Tensor& q_, const Tensor& k_, double scale) {
  check_inputs("project_coords_fwd", {{"q", &q_}, {"k", &k_}});
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = q_.contiguous(), k = k_.contiguous();
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), H = k.size(2), W = k.size(3);
  auto acc = q.options().dtype(acc_type(q));
  Tensor coords = at::empty({B, N, 2}, acc), lse = at::empty({B, N}, acc);
  check(project_coords_fwd(dtype_of(q, "project_coords_fwd"), B, N, H, W, D, q.data_ptr(), k.data_ptr(), scale,
                           coords.data_ptr(), lse.data_ptr(), stream_of(q)),
        "project_coords_fwd");
  return {coords.to(q.scalar_type()), lse};
}

std::tuple<Tensor, Tensor> project_coords_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                   const Tensor& coords_, const Tensor& lse_, double scale) {
  check_inputs("project_coords_bwd",
               {{"grad_coords", &grad_}, {"q", &q_}, {"k", &k_}, {"coords", &coords_}, {"lse", &lse_}});
  c10::cuda::CUDAGuard guard(q_.device());
  Tensor q = q_.contiguous(), k = k_.contiguous();
  Tensor grad = grad_.to(q.scalar_type()).contiguous(), coords = coords_.to(q.scalar_type()).contiguous();
  Tensor lse = lse_.to(acc_type(q)).contiguous();
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), H = k.size(2), W = k.size(3);
  auto acc = q.options().dtype(acc_type(q));
  Tensor dq = at::zeros(q.sizes(), acc), dk = at::zeros(k.sizes(), acc);
  check(project_coords_bwd(dtype_of(q, "project_coords_bwd"), B, N, H, W, D, grad.data_ptr(), q.data_ptr(),
                           k.data_ptr(), coords.data_ptr(), lse.data_ptr(), scale, dq.data_ptr(), dk.data_ptr(),
                           stream_of(q)),
        "project_coords_bwd");
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type())};
}

}  // namespace
}  // namespace densecorr_cuda

TORCH_LIBRARY_IMPL(densecorr_ext, CUDA, m) {
  using namespace densecorr_cuda;
  m.impl("local_affinity_fwd", &local_affinity_fwd_cuda);
  m.impl("local_affinity_bwd", &local_affinity_bwd_cuda);
  m.impl("local_copy_fwd", &local_copy_fwd_cuda);
  m.impl("local_copy_bwd", &local_copy_bwd_cuda);
  m.impl("local_attention_fwd", &local_attention_fwd_cuda);
  m.impl("local_attention_bwd", &local_attention_bwd_cuda);
  m.impl("project_coords_fwd", &project_coords_fwd_cuda);
  m.impl("project_coords_bwd", &project_coords_bwd_cuda);
}
