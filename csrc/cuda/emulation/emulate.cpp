// CPU emulation build of the CUDA kernels, for tests/test_cuda.py: the same sources
// compiled by the host compiler against the stand-in headers in include/, the launchers
// exposed with C linkage for ctypes. Not part of the extension (setup.py takes only
// csrc/cuda/*.cu and *.cpp).
#include "../local_attention.cu"
#include "../local_window.cu"
#include "../project_coords.cu"

using namespace densecorr_cuda;

extern "C" {
const char* emu_local_affinity_fwd(int dt, const Window* w, const void* q, const void* k, double scale, int normalize,
                                   void* attn) {
  return local_affinity_fwd((DType)dt, *w, q, k, scale, normalize != 0, attn, nullptr);
}
const char* emu_local_affinity_bwd(int dt, const Window* w, const void* grad, const void* q, const void* k,
                                   const void* attn, double scale, int normalize, void* dq, void* dk, void* delta) {
  return local_affinity_bwd((DType)dt, *w, grad, q, k, attn, scale, normalize != 0, dq, dk, delta, nullptr);
}
const char* emu_local_copy_fwd(int dt, const Window* w, const void* attn, const void* v, void* out) {
  return local_copy_fwd((DType)dt, *w, attn, v, out, nullptr);
}
const char* emu_local_copy_bwd(int dt, const Window* w, const void* grad, const void* attn, const void* v,
                               void* dattn, void* dv) {
  return local_copy_bwd((DType)dt, *w, grad, attn, v, dattn, dv, nullptr);
}
const char* emu_local_attention_fwd(int dt, const Window* w, const void* q, const void* k, const void* v, double scale,
                                    int64_t topk, void* out, void* lse, int64_t* idx, void* topv) {
  return local_attention_fwd((DType)dt, *w, q, k, v, scale, topk, out, lse, idx, topv, nullptr);
}
const char* emu_local_attention_bwd(int dt, const Window* w, const void* grad, const void* q, const void* k,
                                    const void* v, const void* out, const void* lse, const int64_t* idx, int64_t topk,
                                    double scale, void* dq, void* dk, void* dv, void* delta) {
  return local_attention_bwd((DType)dt, *w, grad, q, k, v, out, lse, idx, topk, scale, dq, dk, dv, delta, nullptr);
}
const char* emu_project_coords_fwd(int dt, int64_t B, int64_t N, int64_t H, int64_t W, int64_t D, const void* q,
                                   const void* k, double scale, void* coords, void* lse) {
  return project_coords_fwd((DType)dt, B, N, H, W, D, q, k, scale, coords, lse, nullptr);
}
const char* emu_project_coords_bwd(int dt, int64_t B, int64_t N, int64_t H, int64_t W, int64_t D, const void* grad,
                                   const void* q, const void* k, const void* coords, const void* lse, double scale,
                                   void* dq, void* dk) {
  return project_coords_bwd((DType)dt, B, N, H, W, D, grad, q, k, coords, lse, scale, dq, dk, nullptr);
}
}
