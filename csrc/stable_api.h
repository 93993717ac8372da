// The only torch headers the extension includes: the LibTorch stable ABI (torch/csrc/stable,
// torch/headeronly), compiled with TORCH_TARGET_VERSION = torch 2.10 (densecorr/_buildcfg.py),
// so that one build loads under every torch release from 2.10 on. Helpers for what the
// stable API spells differently from ATen: checks with readable shapes, zeros, dtype switch.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>

namespace densecorr {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;
using IntRef = torch::headeronly::IntHeaderOnlyArrayRef;

// A failed check is a RuntimeError in Python with this message (std::runtime_error through
// the stable shim).
#define DC_CHECK(cond, ...) STD_TORCH_CHECK(cond, __VA_ARGS__)

// "[2, 3, 4]", as ATen prints sizes.
inline std::string shape(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "Float";
    case ScalarType::Double: return "Double";
    case ScalarType::Half: return "Half";
    case ScalarType::BFloat16: return "BFloat16";
    case ScalarType::Long: return "Long";
    case ScalarType::Int: return "Int";
    default: return "another dtype";
  }
}

inline std::string device_name(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "a non-CPU, non-CUDA device";
}

inline bool same_sizes(const Tensor& t, std::initializer_list<int64_t> sizes) {
  if (t.dim() != (int64_t)sizes.size()) return false;
  int64_t i = 0;
  for (int64_t s : sizes)
    if (t.size(i++) != s) return false;
  return true;
}

inline bool same_sizes(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t i = 0; i < a.dim(); ++i)
    if (a.size(i) != b.size(i)) return false;
  return true;
}

// New tensors on `like`'s device (dtype `dtype`, default `like`'s).
inline Tensor empty(IntRef sizes, const Tensor& like, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_empty(like, sizes, dtype ? dtype : std::optional<ScalarType>(like.scalar_type()));
}
inline Tensor zeros(IntRef sizes, const Tensor& like, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_zeros(like, sizes, dtype ? dtype : std::optional<ScalarType>(like.scalar_type()));
}
inline Tensor zeros_like(const Tensor& t) {
  Tensor out = torch::stable::empty_like(t);
  torch::stable::zero_(out);
  return out;
}
inline Tensor dense(const Tensor& t) { return torch::stable::contiguous(t); }  // .contiguous()

// The stable ops that take `Tensor&` (a handle: copying it copies no data), for temporaries.
inline Tensor narrow(Tensor t, int64_t dim, int64_t start, int64_t length) {
  return torch::stable::narrow(t, dim, start, length);
}
inline void copy_(Tensor dst, const Tensor& src) { torch::stable::copy_(dst, src); }
inline void zero_(Tensor t) { torch::stable::zero_(t); }

template <typename T>
inline T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace densecorr

// Runs the generic lambda body with `scalar_t` bound to float or double (AT_DISPATCH_FLOATING_TYPES).
#define DC_DISPATCH_FLOAT(dtype, what, ...)                                                           \
  [&] {                                                                                             \
    switch (dtype) {                                                                                \
      case torch::headeronly::ScalarType::Float: {                                                  \
        using scalar_t = float;                                                                     \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      case torch::headeronly::ScalarType::Double: {                                                 \
        using scalar_t = double;                                                                    \
        return __VA_ARGS__();                                                                       \
      }                                                                                             \
      default:                                                                                      \
        DC_CHECK(false, "densecorr ", what, ": float32 or float64 tensors only, got ",              \
                 densecorr::dtype_name(dtype));                                                     \
    }                                                                                               \
  }()
