// Register-blocked matrix product for the global kernels (no include guard: see simd.h).
//
// C[0:M, 0:N] (+)= A[0:M, 0:K] * B[0:K, 0:N], all row-major with leading dimensions lda,
// ldb, ldc (TA: A is given transposed, element (i, p) at A[p*lda + i]); N must be a multiple of the vector width W (callers pad B and C). The micro-
// kernel keeps an MR x (NR*W) tile of C in registers (6 x 16 floats on AVX2: 12 of the 16
// vector registers) and streams one row of B and one broadcast element of A per step.
namespace densecorr_cpu {
namespace DC_ISA {

template <typename T, int MR, int NR, bool TA>
inline void gemm_micro(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                       bool accumulate) {
  constexpr int W = Vec<T>::W;
  V<T> acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? vload(C + i * ldc + j * W) : V<T>{};
  for (int64_t p = 0; p < K; ++p) {
    V<T> b[NR];
    for (int j = 0; j < NR; ++j) b[j] = vload(B + p * ldb + j * W);
    for (int i = 0; i < MR; ++i) {
      const V<T> a = vsplat(TA ? A[p * lda + i] : A[i * lda + p]);
      for (int j = 0; j < NR; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) vstore(C + i * ldc + j * W, acc[i][j]);
}

template <typename T, int NR, bool TA>
inline void gemm_rows(int64_t M, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                      bool acc) {
  int64_t i = 0;
  for (; i + 6 <= M; i += 6) gemm_micro<T, 6, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc);
  switch (M - i) {
    case 5: gemm_micro<T, 5, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc); break;
    case 4: gemm_micro<T, 4, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc); break;
    case 3: gemm_micro<T, 3, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc); break;
    case 2: gemm_micro<T, 2, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc); break;
    case 1: gemm_micro<T, 1, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc); break;
    default: break;
  }
}

template <typename T, bool TA = false>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, bool accumulate) {
  constexpr int W = Vec<T>::W;
  int64_t j = 0;
  // Column panels outside, row tiles inside: a K x 2W panel of B stays in L1.
  for (; j + 2 * W <= N; j += 2 * W) gemm_rows<T, 2, TA>(M, K, A, lda, B + j, ldb, C + j, ldc, accumulate);
  if (j < N) gemm_rows<T, 1, TA>(M, K, A, lda, B + j, ldb, C + j, ldc, accumulate);
}

// The same product with B packed in panels of 2W columns: panel p (columns 2W*p ..) is a
// contiguous K x 2W block at Bp + p*K*2W, streamed sequentially by the micro-kernel.
// N must be a multiple of 2W.
template <typename T>
inline void gemm_packed(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc,
                        bool accumulate) {
  constexpr int PW = 2 * Vec<T>::W;
  for (int64_t j = 0; j < N; j += PW) gemm_rows<T, 2, false>(M, K, A, lda, Bp + j * K, PW, C + j, ldc, accumulate);
}

}  // namespace DC_ISA
}  // namespace densecorr_cpu
