// Stand-in for the CUDA runtime, for the CPU emulation of densecorr's kernels (tests only:
// tests/test_cuda.py builds csrc/cuda/emulation/emulate.cpp with the host compiler).
// A launch runs every block in turn, each block's threads as real threads (std::thread)
// so that __syncthreads (a std::barrier) and __shared__ (a static shared by the block's
// threads) behave as on the GPU; atomicAdd is an atomic_ref.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#define DENSECORR_EMULATE 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

namespace dc_emu {
inline thread_local dim3 block_idx, thread_idx, block_dim, grid_dim;
inline thread_local std::barrier<>* barrier = nullptr;

template <typename Kernel>
auto launch(dim3 grid, dim3 block, Kernel kernel) {
  return [=](auto... args) {
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::barrier<> sync(n);
          std::vector<std::thread> threads;
          for (unsigned t = 0; t < n; ++t)
            threads.emplace_back([&, t] {
              block_idx = dim3(bx, by, bz);
              thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              block_dim = block;
              grid_dim = grid;
              barrier = &sync;
              kernel(args...);
            });
          for (auto& th : threads) th.join();
        }
  };
}
}  // namespace dc_emu

#define blockIdx (::dc_emu::block_idx)
#define threadIdx (::dc_emu::thread_idx)
#define blockDim (::dc_emu::block_dim)
#define gridDim (::dc_emu::grid_dim)
#define DC_LAUNCH(kernel, grid, block, stream) ::dc_emu::launch(dim3(grid), dim3(block), kernel)

inline void __syncthreads() { ::dc_emu::barrier->arrive_and_wait(); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
using std::max;  // CUDA's integer min/max overloads
using std::min;
