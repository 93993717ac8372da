// Torch glue of the CUDA kernels: checks, allocation, window tables and the registration
// STABLE_TORCH_LIBRARY_IMPL(densecorr_ext, CUDA). The kernels themselves (kernels.h, *.cu)
// see only raw pointers and sizes. Written against the LibTorch stable ABI only
// (stable_api.h; the current stream through the stable C shim), like the CPU glue.
#ifndef USE_CUDA
#define USE_CUDA  // declares the CUDA part of the stable C shim (the current stream)
#endif
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../stable_api.h"
#include "kernels.h"

namespace densecorr_cuda {
namespace {

using densecorr::dense;
using densecorr::ScalarType;
using densecorr::shape;
using densecorr::Tensor;
namespace st = torch::stable;

DType dtype_of(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return DType::f32;
    case ScalarType::Double: return DType::f64;
    case ScalarType::Half: return DType::f16;
    case ScalarType::BFloat16: return DType::bf16;
    default: DC_CHECK(false, "densecorr cuda ", op, ": unsupported dtype ", densecorr::dtype_name(t.scalar_type()),
                      " (float32, float64, float16, bfloat16)");
  }
  return DType::f32;
}

ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

Tensor to(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : st::to(t, std::optional<ScalarType>(dtype));
}

void check_inputs(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const Tensor& first = *tensors.begin()->second;
  for (const auto& [name, t] : tensors) {
    DC_CHECK(t->is_cuda(), "densecorr cuda ", op, ": ", name, " must be a CUDA tensor, got ", densecorr::device_name(*t));
    DC_CHECK(t->get_device_index() == first.get_device_index(), "densecorr cuda ", op, ": ", name, " is on ",
             densecorr::device_name(*t), ", expected ", densecorr::device_name(first));
  }
}

void check(const char* err, const char* op) {
  DC_CHECK(err == nullptr, "densecorr cuda ", op, ": CUDA error: ", err ? err : "");
}

void* stream_of(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return stream;
}

// Window cell tables (wy, wx, g2p), int32 on the device, cached per (device, radius, window).
std::tuple<Tensor, Tensor, Tensor> window_tables(int64_t radius, const std::string& window, const Tensor& like) {
  static std::mutex mu;
  // Never destroyed: freeing device memory from static destructors can outlive the CUDA
  // context at exit. A few bytes per (device, radius, window).
  static auto& cache = *new std::map<std::tuple<int, int64_t, std::string>, std::tuple<Tensor, Tensor, Tensor>>();
  DC_CHECK(window == "square" || window == "circle", "densecorr cuda: window must be 'square' or 'circle', not '",
           window, "'");
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple((int)like.get_device_index(), radius, window);
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
    Tensor host = st::empty({(int64_t)v.size()}, ScalarType::Int, std::nullopt,
                            st::Device(torch::headeronly::DeviceType::CPU));
    if (!v.empty()) std::memcpy(host.data_ptr(), v.data(), v.size() * sizeof(int));
    return st::to(host, like.device());
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
  DC_CHECK(radius >= 0 && dilation >= 1, "densecorr cuda ", op, ": radius ", radius, " must be >= 0 and dilation ",
              dilation, " >= 1");
  LocalCall c;
  if (boundary == "mask") c.w.boundary = kMask;
  else if (boundary == "zero") c.w.boundary = kZero;
  else if (boundary == "clamp") c.w.boundary = kClamp;
  else DC_CHECK(false, "densecorr cuda ", op, ": boundary must be 'mask', 'zero' or 'clamp', not '", boundary, "'");
  const int64_t span = (2 * radius + 1) * dilation;
  DC_CHECK(boundary != "clamp" || (H >= span && W >= span), "densecorr cuda ", op,
              ": boundary='clamp' needs H, W >= (2*radius+1)*dilation = ", span, ", got H=", H, ", W=", W);
  std::tie(c.wy, c.wx, c.g2p) = window_tables(radius, window, q_or_attn);
  c.w.B = B; c.w.T = T; c.w.H = H; c.w.W = W; c.w.D = D; c.w.C = C;
  c.w.radius = (int)radius;
  c.w.dilation = (int)dilation;
  c.w.P = (int)c.wy.numel();
  c.w.wy = densecorr::ptr<int>(c.wy);
  c.w.wx = densecorr::ptr<int>(c.wx);
  c.w.g2p = densecorr::ptr<int>(c.g2p);
  return c;
}

Tensor local_affinity_fwd_cuda(const Tensor& q_, const Tensor& k_, int64_t radius, int64_t dilation, double scale,
                               bool normalize, std::string boundary, std::string window) {
  check_inputs("local_affinity_fwd", {{"q", &q_}, {"k", &k_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_);
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  LocalCall c = local_call("local_affinity_fwd", q, B, T, D, H, W, 0, radius, dilation, boundary, window);
  Tensor attn = densecorr::empty({B, T * c.w.P, H, W}, q, acc_type(q));
  check(local_affinity_fwd(dtype_of(q, "local_affinity_fwd"), c.w, q.data_ptr(), k.data_ptr(), scale, normalize,
                           attn.data_ptr(), stream_of(q)),
        "local_affinity_fwd");
  return to(attn, q.scalar_type());
}

std::tuple<Tensor, Tensor> local_affinity_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                   const Tensor& attn_, int64_t radius, int64_t dilation,
                                                   double scale, bool normalize, std::string boundary,
                                                   std::string window) {
  check_inputs("local_affinity_bwd", {{"grad_attn", &grad_}, {"q", &q_}, {"k", &k_}, {"attn", &attn_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_);
  Tensor grad = dense(to(grad_, q.scalar_type())), attn = dense(to(attn_, q.scalar_type()));
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  LocalCall c = local_call("local_affinity_bwd", q, B, T, D, H, W, 0, radius, dilation, boundary, window);
  const ScalarType acc = acc_type(q);
  Tensor dq = densecorr::zeros(q.sizes(), q, acc), dk = densecorr::zeros(k.sizes(), k, acc), delta = densecorr::empty({B, H * W}, q, acc);
  check(local_affinity_bwd(dtype_of(q, "local_affinity_bwd"), c.w, grad.data_ptr(), q.data_ptr(), k.data_ptr(),
                           attn.data_ptr(), scale, normalize, dq.data_ptr(), dk.data_ptr(), delta.data_ptr(),
                           stream_of(q)),
        "local_affinity_bwd");
  return {to(dq, q.scalar_type()), to(dk, k.scalar_type())};
}

Tensor local_copy_fwd_cuda(const Tensor& attn_, const Tensor& v_, int64_t radius, int64_t dilation,
                           std::string boundary, std::string window) {
  check_inputs("local_copy_fwd", {{"attn", &attn_}, {"v", &v_}});
  st::accelerator::DeviceGuard guard(v_.get_device_index());
  Tensor v = dense(v_), attn = dense(to(attn_, v.scalar_type()));
  const int64_t B = v.size(0), T = v.size(1), C = v.size(2), H = v.size(3), W = v.size(4);
  LocalCall c = local_call("local_copy_fwd", v, B, T, 0, H, W, C, radius, dilation, boundary, window);
  DC_CHECK(attn.size(1) == T * c.w.P, "densecorr cuda local_copy_fwd: attn has ", attn.size(1),
              " window positions, expected T*P = ", T * c.w.P);
  Tensor out = densecorr::empty({B, C, H, W}, v, acc_type(v));
  check(local_copy_fwd(dtype_of(v, "local_copy_fwd"), c.w, attn.data_ptr(), v.data_ptr(), out.data_ptr(),
                       stream_of(v)),
        "local_copy_fwd");
  return to(out, v.scalar_type());
}

std::tuple<Tensor, Tensor> local_copy_bwd_cuda(const Tensor& grad_, const Tensor& attn_, const Tensor& v_,
                                               int64_t radius, int64_t dilation, std::string boundary,
                                               std::string window) {
  check_inputs("local_copy_bwd", {{"grad_out", &grad_}, {"attn", &attn_}, {"v", &v_}});
  st::accelerator::DeviceGuard guard(v_.get_device_index());
  Tensor v = dense(v_);
  Tensor grad = dense(to(grad_, v.scalar_type())), attn = dense(to(attn_, v.scalar_type()));
  const int64_t B = v.size(0), T = v.size(1), C = v.size(2), H = v.size(3), W = v.size(4);
  LocalCall c = local_call("local_copy_bwd", v, B, T, 0, H, W, C, radius, dilation, boundary, window);
  const ScalarType acc = acc_type(v);
  Tensor dattn = densecorr::empty(attn.sizes(), attn, acc), dv = densecorr::empty(v.sizes(), v, acc);
  check(local_copy_bwd(dtype_of(v, "local_copy_bwd"), c.w, grad.data_ptr(), attn.data_ptr(), v.data_ptr(),
                       dattn.data_ptr(), dv.data_ptr(), stream_of(v)),
        "local_copy_bwd");
  return {to(dattn, attn_.scalar_type()), to(dv, v.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor> local_attention_fwd_cuda(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                            int64_t radius, int64_t dilation, double scale,
                                                            std::string boundary, std::string window, int64_t topk) {
  check_inputs("local_attention_fwd", {{"q", &q_}, {"k", &k_}, {"v", &v_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_), v = dense(v_);
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  LocalCall c = local_call("local_attention_fwd", q, B, T, D, H, W, C, radius, dilation, boundary, window);
  DC_CHECK(topk >= 0 && topk <= T * c.w.P, "densecorr cuda local_attention_fwd: topk=", topk,
              " must be in [0, T*P=", T * c.w.P, "]");
  const ScalarType acc = acc_type(q);
  Tensor out = densecorr::empty({B, C, H, W}, q, acc), lse = densecorr::empty({B, H, W}, q, acc);
  Tensor idx = densecorr::empty({B, H, W, topk}, q, ScalarType::Long);
  Tensor topv = densecorr::empty({B, H, W, topk}, q, acc);
  check(local_attention_fwd(dtype_of(q, "local_attention_fwd"), c.w, q.data_ptr(), k.data_ptr(), v.data_ptr(), scale,
                            topk, out.data_ptr(), lse.data_ptr(), densecorr::ptr<int64_t>(idx), topv.data_ptr(),
                            stream_of(q)),
        "local_attention_fwd");
  return {to(out, q.scalar_type()), lse, idx};
}

std::tuple<Tensor, Tensor, Tensor> local_attention_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                            const Tensor& v_, const Tensor& out_, const Tensor& lse_,
                                                            const Tensor& idx_, int64_t radius, int64_t dilation,
                                                            double scale, std::string boundary, std::string window) {
  check_inputs("local_attention_bwd",
               {{"grad_out", &grad_}, {"q", &q_}, {"k", &k_}, {"v", &v_}, {"out", &out_}, {"lse", &lse_}, {"idx", &idx_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_), v = dense(v_);
  Tensor grad = dense(to(grad_, q.scalar_type())), out = dense(to(out_, q.scalar_type()));
  Tensor lse = dense(to(lse_, acc_type(q))), idx = dense(to(idx_, ScalarType::Long));
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  LocalCall c = local_call("local_attention_bwd", q, B, T, D, H, W, C, radius, dilation, boundary, window);
  const ScalarType acc = acc_type(q);
  Tensor dq = densecorr::zeros(q.sizes(), q, acc), dk = densecorr::zeros(k.sizes(), k, acc), dv = densecorr::zeros(v.sizes(), v, acc);
  Tensor delta = densecorr::empty({B, H * W}, q, acc);
  check(local_attention_bwd(dtype_of(q, "local_attention_bwd"), c.w, grad.data_ptr(), q.data_ptr(), k.data_ptr(),
                            v.data_ptr(), out.data_ptr(), lse.data_ptr(), densecorr::ptr<int64_t>(idx), idx.size(idx.dim() - 1), scale,
                            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), delta.data_ptr(), stream_of(q)),
        "local_attention_bwd");
  return {to(dq, q.scalar_type()), to(dk, k.scalar_type()), to(dv, v.scalar_type())};
}

// The offset ops: the plain ops' geometry (no clamp) and the offset, checked and cast to the
// accumulation type (the kernels read it as such).
LocalCall offset_call(const char* op, const Tensor& q_or_attn, const Tensor& offset, Tensor& off_acc, int64_t B,
                      int64_t T, int64_t D, int64_t H, int64_t W, int64_t C, int64_t radius, int64_t dilation,
                      const std::string& boundary, const std::string& window, ScalarType acc) {
  DC_CHECK(boundary == "mask" || boundary == "zero", "densecorr cuda ", op,
           ": boundary must be 'mask' or 'zero' with an offset, not '", boundary, "'");
  DC_CHECK(offset.dim() == 5 && offset.size(0) == B && offset.size(1) == T && offset.size(2) == 2 &&
               offset.size(3) == H && offset.size(4) == W,
           "densecorr cuda ", op, ": offset must have shape (B, T, 2, H, W) = (", B, ", ", T, ", 2, ", H, ", ", W,
           ")");
  off_acc = dense(to(offset, acc));
  return local_call(op, q_or_attn, B, T, D, H, W, C, radius, dilation, boundary, window);
}

Tensor local_offset_affinity_fwd_cuda(const Tensor& q_, const Tensor& k_, const Tensor& offset_, int64_t radius,
                                      int64_t dilation, double scale, bool normalize, std::string boundary,
                                      std::string window) {
  const char* op = "local_offset_affinity_fwd";
  check_inputs(op, {{"q", &q_}, {"k", &k_}, {"offset", &offset_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_), off;
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  const ScalarType acc = acc_type(q);
  LocalCall c = offset_call(op, q, offset_, off, B, T, D, H, W, 0, radius, dilation, boundary, window, acc);
  Tensor attn = densecorr::empty({B, T * c.w.P, H, W}, q, acc);
  check(local_offset_affinity_fwd(dtype_of(q, op), c.w, q.data_ptr(), k.data_ptr(), off.data_ptr(), scale, normalize,
                                  attn.data_ptr(), stream_of(q)),
        op);
  return to(attn, q.scalar_type());
}

std::tuple<Tensor, Tensor> local_offset_affinity_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                          const Tensor& offset_, const Tensor& attn_, int64_t radius,
                                                          int64_t dilation, double scale, bool normalize,
                                                          std::string boundary, std::string window) {
  const char* op = "local_offset_affinity_bwd";
  check_inputs(op, {{"grad_attn", &grad_}, {"q", &q_}, {"k", &k_}, {"offset", &offset_}, {"attn", &attn_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_), off;
  Tensor grad = dense(to(grad_, q.scalar_type())), attn = dense(to(attn_, q.scalar_type()));
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1);
  const ScalarType acc = acc_type(q);
  LocalCall c = offset_call(op, q, offset_, off, B, T, D, H, W, 0, radius, dilation, boundary, window, acc);
  Tensor dq = densecorr::zeros(q.sizes(), q, acc), dk = densecorr::zeros(k.sizes(), k, acc);
  check(local_offset_affinity_bwd(dtype_of(q, op), c.w, grad.data_ptr(), q.data_ptr(), k.data_ptr(), off.data_ptr(),
                                  attn.data_ptr(), scale, normalize, dq.data_ptr(), dk.data_ptr(), stream_of(q)),
        op);
  return {to(dq, q.scalar_type()), to(dk, k.scalar_type())};
}

Tensor local_offset_copy_fwd_cuda(const Tensor& attn_, const Tensor& v_, const Tensor& offset_, int64_t radius,
                                  int64_t dilation, std::string boundary, std::string window) {
  const char* op = "local_offset_copy_fwd";
  check_inputs(op, {{"attn", &attn_}, {"v", &v_}, {"offset", &offset_}});
  st::accelerator::DeviceGuard guard(v_.get_device_index());
  Tensor v = dense(v_), attn = dense(to(attn_, v.scalar_type())), off;
  const int64_t B = v.size(0), T = v.size(1), C = v.size(2), H = v.size(3), W = v.size(4);
  const ScalarType acc = acc_type(v);
  LocalCall c = offset_call(op, v, offset_, off, B, T, 0, H, W, C, radius, dilation, boundary, window, acc);
  DC_CHECK(attn.size(1) == T * c.w.P, "densecorr cuda ", op, ": attn has ", attn.size(1),
           " window positions, expected T*P = ", T * c.w.P);
  Tensor out = densecorr::empty({B, C, H, W}, v, acc);
  check(local_offset_copy_fwd(dtype_of(v, op), c.w, attn.data_ptr(), v.data_ptr(), off.data_ptr(), out.data_ptr(),
                              stream_of(v)),
        op);
  return to(out, v.scalar_type());
}

std::tuple<Tensor, Tensor> local_offset_copy_bwd_cuda(const Tensor& grad_, const Tensor& attn_, const Tensor& v_,
                                                      const Tensor& offset_, int64_t radius, int64_t dilation,
                                                      std::string boundary, std::string window) {
  const char* op = "local_offset_copy_bwd";
  check_inputs(op, {{"grad_out", &grad_}, {"attn", &attn_}, {"v", &v_}, {"offset", &offset_}});
  st::accelerator::DeviceGuard guard(v_.get_device_index());
  Tensor v = dense(v_), off;
  Tensor grad = dense(to(grad_, v.scalar_type())), attn = dense(to(attn_, v.scalar_type()));
  const int64_t B = v.size(0), T = v.size(1), C = v.size(2), H = v.size(3), W = v.size(4);
  const ScalarType acc = acc_type(v);
  LocalCall c = offset_call(op, v, offset_, off, B, T, 0, H, W, C, radius, dilation, boundary, window, acc);
  DC_CHECK(attn.size(1) == T * c.w.P, "densecorr cuda ", op, ": attn has ", attn.size(1),
           " window positions, expected T*P = ", T * c.w.P);
  Tensor dattn = densecorr::empty(attn.sizes(), attn, acc), dv = densecorr::zeros(v.sizes(), v, acc);
  check(local_offset_copy_bwd(dtype_of(v, op), c.w, grad.data_ptr(), attn.data_ptr(), v.data_ptr(), off.data_ptr(),
                              dattn.data_ptr(), dv.data_ptr(), stream_of(v)),
        op);
  return {to(dattn, attn_.scalar_type()), to(dv, v.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor> local_offset_attention_fwd_cuda(const Tensor& q_, const Tensor& k_,
                                                                   const Tensor& v_, const Tensor& offset_,
                                                                   int64_t radius, int64_t dilation, double scale,
                                                                   std::string boundary, std::string window,
                                                                   int64_t topk) {
  const char* op = "local_offset_attention_fwd";
  check_inputs(op, {{"q", &q_}, {"k", &k_}, {"v", &v_}, {"offset", &offset_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_), v = dense(v_), off;
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  const ScalarType acc = acc_type(q);
  LocalCall c = offset_call(op, q, offset_, off, B, T, D, H, W, C, radius, dilation, boundary, window, acc);
  DC_CHECK(topk >= 0 && topk <= T * c.w.P, "densecorr cuda ", op, ": topk=", topk, " must be in [0, T*P=",
           T * c.w.P, "]");
  Tensor out = densecorr::empty({B, C, H, W}, q, acc), lse = densecorr::empty({B, H, W}, q, acc);
  Tensor idx = densecorr::empty({B, H, W, topk}, q, ScalarType::Long);
  Tensor topv = densecorr::empty({B, H, W, topk}, q, acc);
  check(local_offset_attention_fwd(dtype_of(q, op), c.w, q.data_ptr(), k.data_ptr(), v.data_ptr(), off.data_ptr(),
                                   scale, topk, out.data_ptr(), lse.data_ptr(), densecorr::ptr<int64_t>(idx),
                                   topv.data_ptr(), stream_of(q)),
        op);
  return {to(out, q.scalar_type()), lse, idx};
}

std::tuple<Tensor, Tensor, Tensor> local_offset_attention_bwd_cuda(
    const Tensor& grad_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& offset_,
    const Tensor& out_, const Tensor& lse_, const Tensor& idx_, int64_t radius, int64_t dilation, double scale,
    std::string boundary, std::string window) {
  const char* op = "local_offset_attention_bwd";
  check_inputs(op, {{"grad_out", &grad_}, {"q", &q_}, {"k", &k_}, {"v", &v_}, {"offset", &offset_}, {"out", &out_},
                    {"lse", &lse_}, {"idx", &idx_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_), v = dense(v_), off;
  Tensor grad = dense(to(grad_, q.scalar_type())), out = dense(to(out_, q.scalar_type()));
  const ScalarType acc = acc_type(q);
  Tensor lse = dense(to(lse_, acc)), idx = dense(to(idx_, ScalarType::Long));
  const int64_t B = q.size(0), D = q.size(1), H = q.size(2), W = q.size(3), T = k.size(1), C = v.size(2);
  LocalCall c = offset_call(op, q, offset_, off, B, T, D, H, W, C, radius, dilation, boundary, window, acc);
  Tensor dq = densecorr::zeros(q.sizes(), q, acc), dk = densecorr::zeros(k.sizes(), k, acc),
         dv = densecorr::zeros(v.sizes(), v, acc);
  check(local_offset_attention_bwd(dtype_of(q, op), c.w, grad.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                   off.data_ptr(), out.data_ptr(), lse.data_ptr(), densecorr::ptr<int64_t>(idx),
                                   idx.size(idx.dim() - 1), scale, dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                   stream_of(q)),
        op);
  return {to(dq, q.scalar_type()), to(dk, k.scalar_type()), to(dv, v.scalar_type())};
}

std::tuple<Tensor, Tensor> project_coords_fwd_cuda(const Tensor& q_, const Tensor& k_, double scale) {
  check_inputs("project_coords_fwd", {{"q", &q_}, {"k", &k_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_);
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), H = k.size(2), W = k.size(3);
  const ScalarType acc = acc_type(q);
  Tensor coords = densecorr::empty({B, N, 2}, q, acc), lse = densecorr::empty({B, N}, q, acc);
  check(project_coords_fwd(dtype_of(q, "project_coords_fwd"), B, N, H, W, D, q.data_ptr(), k.data_ptr(), scale,
                           coords.data_ptr(), lse.data_ptr(), stream_of(q)),
        "project_coords_fwd");
  return {to(coords, q.scalar_type()), lse};
}

std::tuple<Tensor, Tensor> project_coords_bwd_cuda(const Tensor& grad_, const Tensor& q_, const Tensor& k_,
                                                   const Tensor& coords_, const Tensor& lse_, double scale) {
  check_inputs("project_coords_bwd",
               {{"grad_coords", &grad_}, {"q", &q_}, {"k", &k_}, {"coords", &coords_}, {"lse", &lse_}});
  st::accelerator::DeviceGuard guard(q_.get_device_index());
  Tensor q = dense(q_), k = dense(k_);
  Tensor grad = dense(to(grad_, q.scalar_type())), coords = dense(to(coords_, q.scalar_type()));
  Tensor lse = dense(to(lse_, acc_type(q)));
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2), H = k.size(2), W = k.size(3);
  const ScalarType acc = acc_type(q);
  Tensor dq = densecorr::zeros(q.sizes(), q, acc), dk = densecorr::zeros(k.sizes(), k, acc);
  check(project_coords_bwd(dtype_of(q, "project_coords_bwd"), B, N, H, W, D, grad.data_ptr(), q.data_ptr(),
                           k.data_ptr(), coords.data_ptr(), lse.data_ptr(), scale, dq.data_ptr(), dk.data_ptr(),
                           stream_of(q)),
        "project_coords_bwd");
  return {to(dq, q.scalar_type()), to(dk, k.scalar_type())};
}

}  // namespace
}  // namespace densecorr_cuda

STABLE_TORCH_LIBRARY_IMPL(densecorr_ext, CUDA, m) {
  using namespace densecorr_cuda;
  m.impl("local_affinity_fwd", TORCH_BOX(&local_affinity_fwd_cuda));
  m.impl("local_affinity_bwd", TORCH_BOX(&local_affinity_bwd_cuda));
  m.impl("local_copy_fwd", TORCH_BOX(&local_copy_fwd_cuda));
  m.impl("local_copy_bwd", TORCH_BOX(&local_copy_bwd_cuda));
  m.impl("local_attention_fwd", TORCH_BOX(&local_attention_fwd_cuda));
  m.impl("local_attention_bwd", TORCH_BOX(&local_attention_bwd_cuda));
  m.impl("local_offset_affinity_fwd", TORCH_BOX(&local_offset_affinity_fwd_cuda));
  m.impl("local_offset_affinity_bwd", TORCH_BOX(&local_offset_affinity_bwd_cuda));
  m.impl("local_offset_copy_fwd", TORCH_BOX(&local_offset_copy_fwd_cuda));
  m.impl("local_offset_copy_bwd", TORCH_BOX(&local_offset_copy_bwd_cuda));
  m.impl("local_offset_attention_fwd", TORCH_BOX(&local_offset_attention_fwd_cuda));
  m.impl("local_offset_attention_bwd", TORCH_BOX(&local_offset_attention_bwd_cuda));
  m.impl("project_coords_fwd", TORCH_BOX(&project_coords_fwd_cuda));
  m.impl("project_coords_bwd", TORCH_BOX(&project_coords_bwd_cuda));
}
