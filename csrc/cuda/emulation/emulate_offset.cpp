// CPU emulation build of the offset kernels (csrc/cuda/local_offset.cu) for
// tests/test_cuda_offset_emulated.py, as emulate.cpp is for the other kernels: the same
// source compiled by the host compiler against the stand-in headers in include/, the
// launchers exposed with C linkage for ctypes. Not part of the extension.
#include "../local_offset.cu"

using namespace densecorr_cuda;

extern "C" {
const char* emu_local_offset_affinity_fwd(int dt, const Window* w, const void* q, const void* k, const void* off,
                                          double scale, int normalize, void* attn) {
  return local_offset_affinity_fwd((DType)dt, *w, q, k, off, scale, normalize != 0, attn, nullptr);
}
const char* emu_local_offset_affinity_bwd(int dt, const Window* w, const void* grad, const void* q, const void* k,
                                          const void* off, const void* attn, double scale, int normalize, void* dq,
                                          void* dk) {
  return local_offset_affinity_bwd((DType)dt, *w, grad, q, k, off, attn, scale, normalize != 0, dq, dk, nullptr);
}
const char* emu_local_offset_copy_fwd(int dt, const Window* w, const void* attn, const void* v, const void* off,
                                      void* out) {
  return local_offset_copy_fwd((DType)dt, *w, attn, v, off, out, nullptr);
}
const char* emu_local_offset_copy_bwd(int dt, const Window* w, const void* grad, const void* attn, const void* v,
                                      const void* off, void* dattn, void* dv) {
  return local_offset_copy_bwd((DType)dt, *w, grad, attn, v, off, dattn, dv, nullptr);
}
const char* emu_local_offset_attention_fwd(int dt, const Window* w, const void* q, const void* k, const void* v,
                                           const void* off, double scale, int64_t topk, void* out, void* lse,
                                           int64_t* idx, void* topv) {
  return local_offset_attention_fwd((DType)dt, *w, q, k, v, off, scale, topk, out, lse, idx, topv, nullptr);
}
const char* emu_local_offset_attention_bwd(int dt, const Window* w, const void* grad, const void* q, const void* k,
                                           const void* v, const void* off, const void* out, const void* lse,
                                           const int64_t* idx, int64_t topk, double scale, void* dq, void* dk,
                                           void* dv) {
  return local_offset_attention_bwd((DType)dt, *w, grad, q, k, v, off, out, lse, idx, topk, scale, dq, dk, dv,
                                    nullptr);
}
}
