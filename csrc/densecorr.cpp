// The kernel ops' schemas (one place), and the build-information op. The Python module
// stub is in python_module.cpp, so that CMake can build this and the kernels into a plain
// C++ library. Everything is written against the LibTorch stable ABI (stable_api.h).
//
// The kernel ops live in the `densecorr_ext` namespace and take contiguous tensors in a
// fixed layout; the public, validated, autograd-aware ops (`torch.ops.densecorr.*`) are
// defined in Python (densecorr/ops/), so that the package works without this extension.
// Each backend file registers its kernels with TORCH_LIBRARY_IMPL(densecorr_ext, <Key>).
//
// Layouts (all contiguous, same dtype and device):
//   global:  q (B, N, D), k (B, M, D), v (B, M, C)
//            out (B, N, C); lse (B, N) log-sum-exp of the scaled logits that entered the
//            softmax; idx (B, N, topk) int64 key indices of the top-k logits (topk = 0:
//            all keys, idx is (B, N, 0)).
//   local:   q (B, D, H, W), k (B, T, D, H, W), v (B, T, C, H, W), attn (B, T*P, H, W)
//            out (B, C, H, W); lse (B, H, W); idx (B, H, W, topk) int64 window positions.
//            boundary in {"mask", "zero", "clamp"}, window in {"square", "circle"}.
//   local_offset_*: as local, plus offset (B, T, 2, H, W) (dy, dx per query pixel and
//            reference, same dtype as q): the window is sampled bilinearly around
//            (y + dy, x + dx); boundary "mask" or "zero" only.
//   project: q (B, N, D), k (B, D, H, W); coords (B, N, 2) as (x, y); lse (B, N).
#include "stable_api.h"
#include "cpu/common.h"

STABLE_TORCH_LIBRARY(densecorr_ext, m) {
  m.def("global_attention_fwd(Tensor q, Tensor k, Tensor v, float scale, int topk) -> (Tensor, Tensor, Tensor)");
  m.def("global_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor idx, float scale) -> (Tensor, Tensor, Tensor)");
  m.def("local_affinity_fwd(Tensor q, Tensor k, int radius, int dilation, float scale, bool normalize, str boundary, str window) -> Tensor");
  m.def("local_affinity_bwd(Tensor grad_attn, Tensor q, Tensor k, Tensor attn, int radius, int dilation, float scale, bool normalize, str boundary, str window) -> (Tensor, Tensor)");
  m.def("local_copy_fwd(Tensor attn, Tensor v, int radius, int dilation, str boundary, str window) -> Tensor");
  m.def("local_copy_bwd(Tensor grad_out, Tensor attn, Tensor v, int radius, int dilation, str boundary, str window) -> (Tensor, Tensor)");
  m.def("local_attention_fwd(Tensor q, Tensor k, Tensor v, int radius, int dilation, float scale, str boundary, str window, int topk) -> (Tensor, Tensor, Tensor)");
  m.def("local_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor idx, int radius, int dilation, float scale, str boundary, str window) -> (Tensor, Tensor, Tensor)");
  m.def("local_offset_affinity_fwd(Tensor q, Tensor k, Tensor offset, int radius, int dilation, float scale, bool normalize, str boundary, str window) -> Tensor");
  m.def("local_offset_affinity_bwd(Tensor grad_attn, Tensor q, Tensor k, Tensor offset, Tensor attn, int radius, int dilation, float scale, bool normalize, str boundary, str window) -> (Tensor, Tensor)");
  m.def("local_offset_copy_fwd(Tensor attn, Tensor v, Tensor offset, int radius, int dilation, str boundary, str window) -> Tensor");
  m.def("local_offset_copy_bwd(Tensor grad_out, Tensor attn, Tensor v, Tensor offset, int radius, int dilation, str boundary, str window) -> (Tensor, Tensor)");
  m.def("local_offset_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor offset, int radius, int dilation, float scale, str boundary, str window, int topk) -> (Tensor, Tensor, Tensor)");
  m.def("local_offset_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor offset, Tensor out, Tensor lse, Tensor idx, int radius, int dilation, float scale, str boundary, str window) -> (Tensor, Tensor, Tensor)");
  m.def("project_coords_fwd(Tensor q, Tensor k, float scale) -> (Tensor, Tensor)");
  m.def("project_coords_bwd(Tensor grad_coords, Tensor q, Tensor k, Tensor coords, Tensor lse, float scale) -> (Tensor, Tensor)");
  // What this build contains, as bits: 1 CUDA kernels, 4 the AVX2+FMA CPU kernels
  // run now (else the baseline x86-64 ones), 8 the AVX-512 ones. Read by densecorr.build_info().
  m.def("build_flags() -> int");
}

namespace {
int64_t build_flags() {
  int64_t flags = 0;
#ifdef WITH_CUDA
  flags |= 1;
#endif
  if (densecorr_cpu::use_avx2()) flags |= 4;
  if (densecorr_cpu::use_avx512()) flags |= 8;
  return flags;
}
}  // namespace

STABLE_TORCH_LIBRARY_IMPL(densecorr_ext, CompositeExplicitAutograd, m) { m.impl("build_flags", TORCH_BOX(&build_flags)); }

