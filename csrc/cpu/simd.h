// Portable SIMD helpers on GCC/Clang vector extensions, DC_VBYTES-byte vectors: 32 (8 float
// / 4 double) by default, 64 (16 float / 8 double) for the AVX-512 variant.
//
// No include guard on purpose: each kernel file includes this header (and its kernel
// header) three times: inside `#pragma GCC target("avx512f,...")` with DC_ISA=avx512 and
// DC_VBYTES=64, inside `#pragma GCC target("avx2,fma")` with DC_ISA=avx2, and without a
// target, with DC_ISA=base, so that the same source compiles to AVX-512, AVX2+FMA and a
// baseline (SSE2) fallback, chosen at run time (common.h: simd_level). The compiler
// contracts `a * b + c` into FMA where the target has it.
#ifndef DC_VBYTES
#define DC_VBYTES 32
#endif
namespace densecorr_cpu {
namespace DC_ISA {

constexpr int kVBytes = DC_VBYTES;

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(DC_VBYTES)));
  typedef float utype __attribute__((vector_size(DC_VBYTES), aligned(4), may_alias));
  typedef int32_t itype __attribute__((vector_size(DC_VBYTES)));
  static constexpr int W = DC_VBYTES / 4;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(DC_VBYTES)));
  typedef double utype __attribute__((vector_size(DC_VBYTES), aligned(8), may_alias));
  typedef int64_t itype __attribute__((vector_size(DC_VBYTES)));
  static constexpr int W = DC_VBYTES / 8;
};
template <typename T>
using V = typename Vec<T>::type;

template <typename T>
inline V<T> vload(const T* p) {
  return *reinterpret_cast<const typename Vec<T>::utype*>(p);
}
template <typename T>
inline void vstore(T* p, V<T> x) {
  *reinterpret_cast<typename Vec<T>::utype*>(p) = x;
}
// Broadcast (spelled out: `V<T>{} + x` costs an extra add per call, for x = -0.0).
template <typename T>
inline V<T> vsplat(T x);
#if DC_VBYTES == 64
template <>
inline V<float> vsplat(float x) {
  return V<float>{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
template <>
inline V<double> vsplat(double x) {
  return V<double>{x, x, x, x, x, x, x, x};
}
#else
template <>
inline V<float> vsplat(float x) {
  return V<float>{x, x, x, x, x, x, x, x};
}
template <>
inline V<double> vsplat(double x) {
  return V<double>{x, x, x, x};
}
#endif
// The first n (< W) elements from p, the rest 0 (never reads past p + n).
template <typename T>
inline V<T> vload_partial(const T* p, int64_t n) {
  V<T> r{};
  for (int64_t i = 0; i < n; ++i) r[i] = p[i];
  return r;
}
template <typename T>
inline void vstore_partial(T* p, V<T> x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = x[i];
}
// These take the vector type itself (V<T> is not deducible through the alias).
template <typename VT>
inline VT vmax(VT a, VT b) {
  return a > b ? a : b;
}
template <typename VT>
inline VT vmin(VT a, VT b) {
  return a < b ? a : b;
}
// Horizontal sum / maximum, as a tree of halvings (a vector of n lanes: log2(n) steps).
template <typename VT, int n = sizeof(VT) / sizeof(std::remove_cvref_t<decltype(VT{}[0])>)>
inline auto hsum(VT x) {
  typedef std::remove_cvref_t<decltype(x[0])> E;
  E s = 0;
  if constexpr (n == 16) {
    typedef E H __attribute__((vector_size(8 * sizeof(E))));
    const H h = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    return hsum<H, 8>(h);
  } else if constexpr (n == 8) {
    typedef E H __attribute__((vector_size(4 * sizeof(E))));
    const H h = __builtin_shufflevector(x, x, 0, 1, 2, 3) + __builtin_shufflevector(x, x, 4, 5, 6, 7);
    return hsum<H, 4>(h);
  } else {
    for (int i = 0; i < n; ++i) s += x[i];
    return s;
  }
}
template <typename VT, int n = sizeof(VT) / sizeof(std::remove_cvref_t<decltype(VT{}[0])>)>
inline auto hmax(VT x) {
  typedef std::remove_cvref_t<decltype(x[0])> E;
  if constexpr (n == 16) {
    typedef E H __attribute__((vector_size(8 * sizeof(E))));
    const H a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
    const H b = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    return hmax<H, 8>(a > b ? a : b);
  } else if constexpr (n == 8) {
    typedef E H __attribute__((vector_size(4 * sizeof(E))));
    const H a = __builtin_shufflevector(x, x, 0, 1, 2, 3), b = __builtin_shufflevector(x, x, 4, 5, 6, 7);
    return hmax<H, 4>(a > b ? a : b);
  } else {
    E s = x[0];
    for (int i = 1; i < n; ++i) s = x[i] > s ? x[i] : s;
    return s;
  }
}

// a * b + c, elementwise: one rounding (FMA) in the variants whose including file sets
// DC_FMA (1: AVX2 instructions, 2: AVX-512), else as written. Spelled out (not left to the
// compiler's contraction of `c += a * b`, which it may skip, e.g. in SLP-vectorised loops)
// where another kernel reproduces the bits lane by lane with std::fma: the top-k pre-filter's
// exact re-computation of the plain path's logits (topk_prefilter.h).
inline V<float> vfma(V<float> a, V<float> b, V<float> c) {
#if defined(DC_FMA) && DC_FMA == 2
  return (V<float>)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(DC_FMA) && DC_FMA == 1 && DC_VBYTES == 64  // 16-wide vectors on AVX2 (a test build)
  typedef float H __attribute__((vector_size(32)));
  const H lo = (H)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7),
                                  (__m256)__builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7),
                                  (__m256)__builtin_shufflevector(c, c, 0, 1, 2, 3, 4, 5, 6, 7));
  const H hi = (H)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15),
                                  (__m256)__builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15),
                                  (__m256)__builtin_shufflevector(c, c, 8, 9, 10, 11, 12, 13, 14, 15));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#elif defined(DC_FMA) && DC_FMA == 1
  return (V<float>)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
inline V<double> vfma(V<double> a, V<double> b, V<double> c) {
#if defined(DC_FMA) && DC_FMA == 2
  return (V<double>)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(DC_FMA) && DC_FMA == 1 && DC_VBYTES == 64
  typedef double H __attribute__((vector_size(32)));
  const H lo = (H)_mm256_fmadd_pd((__m256d)__builtin_shufflevector(a, a, 0, 1, 2, 3),
                                  (__m256d)__builtin_shufflevector(b, b, 0, 1, 2, 3),
                                  (__m256d)__builtin_shufflevector(c, c, 0, 1, 2, 3));
  const H hi = (H)_mm256_fmadd_pd((__m256d)__builtin_shufflevector(a, a, 4, 5, 6, 7),
                                  (__m256d)__builtin_shufflevector(b, b, 4, 5, 6, 7),
                                  (__m256d)__builtin_shufflevector(c, c, 4, 5, 6, 7));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#elif defined(DC_FMA) && DC_FMA == 1
  return (V<double>)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;
#endif
}

// exp(x), elementwise; exactly 0 for x below the float range (and for -inf).
// Cephes-style: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], max. rel. error ~2 ulp.
inline V<float> vexp(V<float> x) {
  typedef Vec<float>::itype I;
  const V<float> lo = vsplat(-87.3365447504f), hi = vsplat(88.3762626647949f);
  const I keep = x >= lo;
  x = vmin(vmax(x, lo), hi);
  const V<float> magic = vsplat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  V<float> n = (x * 1.44269504088896341f + magic) - magic;
  V<float> r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V<float> p = vsplat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.f;
  const I e = (__builtin_convertvector(n, I) + 127) << 23;
  const V<float> y = p * (V<float>)e;  // vector casts reinterpret the bits
  return (V<float>)((I)y & keep);
}
// float64 is for checking (gradcheck), not speed: the library exp, lane by lane.
inline V<double> vexp(V<double> x) {
  V<double> r;
  for (int i = 0; i < Vec<double>::W; ++i) r[i] = std::exp(x[i]);
  return r;
}

// A contiguous row: x[i] = exp(x[i] * s - m) and the sum of the results.
template <typename T>
inline T exp_row(T* x, int64_t n, T s, T m) {
  constexpr int W = Vec<T>::W;
  V<T> acc{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    V<T> e = vexp(vload(x + i) * s - m);
    vstore(x + i, e);
    acc += e;
  }
  T sum = hsum(acc);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] * s - m);
    sum += x[i];
  }
  return sum;
}
// x[0:n] *= s
template <typename T>
inline void scale_row(T* x, int64_t n, T s) {
  constexpr int W = Vec<T>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(x + i, vload(x + i) * s);
  for (; i < n; ++i) x[i] *= s;
}
template <typename T>
inline T max_row(const T* x, int64_t n) {
  constexpr int W = Vec<T>::W;
  T m = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  if (n >= W) {
    V<T> a = vload(x);
    for (i = W; i + W <= n; i += W) a = vmax(a, vload(x + i));
    m = hmax(a);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  constexpr int W = Vec<T>::W;
  V<T> acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 += vload(a + i) * vload(b + i);
    acc1 += vload(a + i + W) * vload(b + i + W);
  }
  for (; i + W <= n; i += W) acc0 += vload(a + i) * vload(b + i);
  T s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
// y[0:n] += a * x[0:n]
template <typename T>
inline void axpy(T* y, T a, const T* x, int64_t n) {
  constexpr int W = Vec<T>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(y + i, vload(y + i) + a * vload(x + i));
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace DC_ISA
}  // namespace densecorr_cpu
#undef DC_VBYTES
