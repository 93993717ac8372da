// densecorr CUDA kernels: the launchers' interface, free of torch and CUDA headers so that
// the torch glue (ops.cpp) and the kernels (*.cu, compiled by nvcc) meet only here.
//
// Layouts are those of csrc/densecorr.cpp (all contiguous):
//   local:   q (B, D, H, W), k (B, T, D, H, W), v (B, T, C, H, W), attn (B, T*P, H, W),
//            out (B, C, H, W), lse (B, H, W), idx (B, H, W, topk) int64 (t*P + p).
//   project: q (B, N, D), k (B, D, H, W), coords (B, N, 2) as (x, y), lse (B, N).
// Inputs are in the op's dtype; every output pointer named *_acc is in the accumulation
// type (float for float32/float16/bfloat16, double for float64): the glue casts back.
// Every launcher returns nullptr on success, else a description of the CUDA error.
#pragma once

#include <cstdint>

namespace densecorr_cuda {

enum class DType { f32, f64, f16, bf16 };
enum Boundary : int { kMask = 0, kZero = 1, kClamp = 2 };

// Geometry of one local-window call. wy, wx (P,) are the window's grid cells (ky, kx) in
// [0, 2r] in window order; g2p ((2r+1)^2,) maps a grid cell ky*(2r+1)+kx to its position p
// (-1 outside a circle window). All three are int32 device arrays.
struct Window {
  int64_t B, T, H, W, D, C;  // C: value channels (unused by local_affinity)
  int radius, dilation, boundary, P;
  const int* wy;
  const int* wx;
  const int* g2p;
};

// attn_acc (B, T*P, H, W): logits (-inf outside for mask, 0 for zero) or their joint softmax.
const char* local_affinity_fwd(DType dt, const Window& w, const void* q, const void* k, double scale,
                               bool normalize, void* attn_acc, void* stream);
// dq_acc, dk_acc zero-filled by the caller; delta_acc (B, H*W) scratch.
const char* local_affinity_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                               const void* attn, double scale, bool normalize, void* dq_acc, void* dk_acc,
                               void* delta_acc, void* stream);
const char* local_copy_fwd(DType dt, const Window& w, const void* attn, const void* v, void* out_acc,
                           void* stream);
const char* local_copy_bwd(DType dt, const Window& w, const void* grad, const void* attn, const void* v,
                           void* dattn_acc, void* dv_acc, void* stream);
// topk > 0: idx (B, H, W, topk) int64 and topv_acc (B, H, W, topk) scratch hold each pixel's
// running top-k, sorted by logit descending (ties: lower position first).
const char* local_attention_fwd(DType dt, const Window& w, const void* q, const void* k, const void* v,
                                double scale, int64_t topk, void* out_acc, void* lse_acc, int64_t* idx,
                                void* topv_acc, void* stream);
// dq_acc, dk_acc, dv_acc zero-filled by the caller; lse_acc as written by the forward;
// delta_acc (B, H*W) scratch.
const char* local_attention_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                                const void* v, const void* out, const void* lse_acc, const int64_t* idx,
                                int64_t topk, double scale, void* dq_acc, void* dk_acc, void* dv_acc,
                                void* delta_acc, void* stream);

// The local ops with a per-query, per-reference window offset: offset_acc (B, T, 2, H, W)
// (dy, dx) in the accumulation type; boundary kMask or kZero (the glue refuses kClamp).
// Every gradient output is zero-filled by the caller (dk, dv are scattered with atomics).
const char* local_offset_affinity_fwd(DType dt, const Window& w, const void* q, const void* k, const void* offset_acc,
                                      double scale, bool normalize, void* attn_acc, void* stream);
const char* local_offset_affinity_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                                      const void* offset_acc, const void* attn, double scale, bool normalize,
                                      void* dq_acc, void* dk_acc, void* stream);
const char* local_offset_copy_fwd(DType dt, const Window& w, const void* attn, const void* v, const void* offset_acc,
                                  void* out_acc, void* stream);
const char* local_offset_copy_bwd(DType dt, const Window& w, const void* grad, const void* attn, const void* v,
                                  const void* offset_acc, void* dattn_acc, void* dv_acc, void* stream);
// topk > 0: idx and topv_acc (B, H, W, topk) as in local_attention_fwd.
const char* local_offset_attention_fwd(DType dt, const Window& w, const void* q, const void* k, const void* v,
                                       const void* offset_acc, double scale, int64_t topk, void* out_acc,
                                       void* lse_acc, int64_t* idx, void* topv_acc, void* stream);
const char* local_offset_attention_bwd(DType dt, const Window& w, const void* grad, const void* q, const void* k,
                                       const void* v, const void* offset_acc, const void* out, const void* lse_acc,
                                       const int64_t* idx, int64_t topk, double scale, void* dq_acc, void* dk_acc,
                                       void* dv_acc, void* stream);

const char* project_coords_fwd(DType dt, int64_t B, int64_t N, int64_t H, int64_t W, int64_t D, const void* q,
                               const void* k, double scale, void* coords_acc, void* lse_acc, void* stream);
// dq_acc, dk_acc zero-filled by the caller.
const char* project_coords_bwd(DType dt, int64_t B, int64_t N, int64_t H, int64_t W, int64_t D,
                               const void* grad, const void* q, const void* k, const void* coords,
                               const void* lse_acc, double scale, void* dq_acc, void* dk_acc, void* stream);

}  // namespace densecorr_cuda
