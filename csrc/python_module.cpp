// densecorr._C's Python module: build information (not an op, so plain pybind11).
// Importing the module loads the library, which registers the kernel ops (densecorr.cpp).
#include <torch/extension.h>

#include "cpu/common.h"

namespace {
// What this build contains, for densecorr.build_info() (not an op: plain pybind11).
pybind11::dict build_info() {
  pybind11::dict info;
#ifdef WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["cpu_capability"] = at::get_cpu_capability();
  // The CPU kernels are compiled for AVX2+FMA and baseline x86-64; which one runs now.
  info["cpu_simd"] = densecorr_cpu::use_avx2() ? "avx2" : "base";
  info["compiler"] =
#if defined(__clang__)
      std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
      std::string("gcc ") + __VERSION__;
#else
      std::string("unknown");
#endif
  return info;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &build_info, "What this build of densecorr._C contains.");
}
