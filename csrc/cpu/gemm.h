// Register-blocked matrix product for the global kernels (no include guard: see simd.h).
//
// C[0:M, 0:N] (+)= A[0:M, 0:K] * B[0:K, 0:N], all row-major with leading dimensions lda,
// ldb, ldc (TA: A is given transposed, element (i, p) at A[p*lda + i]); N must be a multiple of the vector width W (callers pad B and C). The micro-
// kernel keeps an MR x (NR*W) tile of C in registers (6 x 16 floats on AVX2: 12 of the 16
// vector registers; 14 x 32 floats with AVX-512: 28 of 32) and streams one row of B and one broadcast element of A per step.
namespace densecorr_cpu {
namespace DC_ISA {

// rmax != null: also the running row maxima, as vectors: rmax[i*W + l] = max(itself,
// C[i, j]) over the tile's columns j = l mod W (the forward's softmax maximum is hmax of
// row i's vector; no other pass over C).
template <typename T, int MR, int NR, bool TA>
inline void gemm_micro(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                       bool accumulate, T* rmax = nullptr) {
  constexpr int W = Vec<T>::W;
  V<T> acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? vload(C + i * ldc + j * W) : V<T>{};
  for (int64_t p = 0; p < K; ++p) {
    V<T> b[NR];
    for (int j = 0; j < NR; ++j) b[j] = vload(B + p * ldb + j * W);
    for (int i = 0; i < MR; ++i) {
      const V<T> a = vsplat(TA ? A[p * lda + i] : A[i * lda + p]);
      for (int j = 0; j < NR; ++j) acc[i][j] = vfma(a, b[j], acc[i][j]);  // pinned FMA: see vfma
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) vstore(C + i * ldc + j * W, acc[i][j]);
  if (rmax != nullptr)
    for (int i = 0; i < MR; ++i) {
      V<T> mx = vmax(vload(rmax + i * W), acc[i][0]);
      for (int j = 1; j < NR; ++j) mx = vmax(mx, acc[i][j]);
      vstore(rmax + i * W, mx);
    }
}

// Rows per micro-tile: MR x NR accumulators + NR row vectors of B + 1 broadcast fit the
// register file (16 vector registers up to AVX2: 6 x 2; 32 with AVX-512: 14 x 2).
constexpr int kMR = kVBytes == 64 ? 14 : 6;

template <typename T, int NR, bool TA, int R = kMR - 1>
inline void gemm_tail(int64_t m, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                      bool acc, T* rmax) {
  if constexpr (R >= 1) {
    if (m == R) gemm_micro<T, R, NR, TA>(K, A, lda, B, ldb, C, ldc, acc, rmax);
    else gemm_tail<T, NR, TA, R - 1>(m, K, A, lda, B, ldb, C, ldc, acc, rmax);
  }
}

template <typename T, int NR, bool TA>
inline void gemm_rows(int64_t M, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                      bool acc, T* rmax = nullptr) {
  int64_t i = 0;
  for (; i + kMR <= M; i += kMR)
    gemm_micro<T, kMR, NR, TA>(K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc,
                               rmax != nullptr ? rmax + i : nullptr);
  if (i < M)
    gemm_tail<T, NR, TA>(M - i, K, A + (TA ? i : i * lda), lda, B, ldb, C + i * ldc, ldc, acc,
                         rmax != nullptr ? rmax + i * Vec<T>::W : nullptr);
}

template <typename T, bool TA = false>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, bool accumulate) {
  constexpr int W = Vec<T>::W;
  if constexpr (!TA && kMR > 8) {
    // Tall micro-tiles read their A elements from kMR rows lda apart: more row addresses
    // than general registers. Transposed once (K x M, a 1/N share of the work), the
    // broadcasts read fixed offsets from one pointer.
    thread_local std::vector<T> at;
    if (static_cast<int64_t>(at.size()) < M * K) at.resize(M * K);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t p = 0; p < K; ++p) at[p * M + i] = A[i * lda + p];
    return gemm<T, true>(M, N, K, at.data(), M, B, ldb, C, ldc, accumulate);
  }
  int64_t j = 0;
  // Column panels outside, row tiles inside: a K x 2W panel of B stays in L1.
  for (; j + 2 * W <= N; j += 2 * W) gemm_rows<T, 2, TA>(M, K, A, lda, B + j, ldb, C + j, ldc, accumulate);
  if (j < N) gemm_rows<T, 1, TA>(M, K, A, lda, B + j, ldb, C + j, ldc, accumulate);
}

// The same product with B packed in panels of 2W columns: panel p (columns 2W*p ..) is a
// contiguous K x 2W block at Bp + p*K*2W, streamed sequentially by the micro-kernel.
// N must be a multiple of 2W. rmax: as gemm_micro's (M vectors, over all N columns).
template <typename T>
inline void gemm_packed(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc,
                        bool accumulate, T* rmax = nullptr) {
  constexpr int PW = 2 * Vec<T>::W;
  for (int64_t j = 0; j < N; j += PW)
    gemm_rows<T, 2, false>(M, K, A, lda, Bp + j * K, PW, C + j, ldc, accumulate, rmax);
}

// A packed in row tiles for gemm_packed_ab: tile t (rows kMR*t ..) is a K x kMR block at
// Ap + t*kMR*K, Ap[t*kMR*K + p*kMR + i] = s * A[(kMR*t + i)*lda + p], rows >= M zero. The
// micro-kernel's broadcasts then read fixed offsets from one pointer (with rows lda apart,
// 14 row addresses do not fit the general registers and spill).
template <typename T>
inline void pack_a_tiles(int64_t M, int64_t K, const T* A, int64_t lda, T s, T* Ap) {
  const int64_t tiles = ceil_div(M, kMR);
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t i = 0; i < kMR; ++i) {
      const int64_t row = t * kMR + i;
      T* dst = Ap + t * kMR * K + i;
      if (row < M)
        for (int64_t p = 0; p < K; ++p) dst[p * kMR] = s * A[row * lda + p];
      else
        for (int64_t p = 0; p < K; ++p) dst[p * kMR] = T(0);
    }
}
// C[0:M', 0:N] = Ap * Bp with both operands packed (pack_a_tiles, gemm_packed's panels),
// M' = round_up(M, kMR): C needs that many rows (the padded ones hold zeros). rmax: as
// gemm_micro's (M' vectors).
template <typename T>
inline void gemm_packed_ab(int64_t M, int64_t N, int64_t K, const T* Ap, const T* Bp, T* C, int64_t ldc,
                           T* rmax = nullptr) {
  constexpr int W = Vec<T>::W, PW = 2 * W;
  const int64_t tiles = ceil_div(M, kMR);
  for (int64_t j = 0; j < N; j += PW)
    for (int64_t t = 0; t < tiles; ++t)
      gemm_micro<T, kMR, 2, true>(K, Ap + t * kMR * K, kMR, Bp + j * K, PW, C + t * kMR * ldc + j, ldc, false,
                                  rmax != nullptr ? rmax + t * kMR * W : nullptr);
}

// C[i, c] += sum_p A[i, p] * Bt[c, p] for i < M, c < NC, p < K (K a multiple of W): the
// product with a narrow right factor given transposed (the forward's P V for few value
// channels), as RM x CC dot products over p; no padding of the NC columns to W.
template <typename T, int RM, int CC>
inline void gemm_nt_micro(int64_t K, const T* A, int64_t lda, const T* Bt, int64_t ldb, T* C, int64_t ldc) {
  constexpr int W = Vec<T>::W;
  V<T> acc[RM][CC];
  for (int i = 0; i < RM; ++i)
    for (int c = 0; c < CC; ++c) acc[i][c] = V<T>{};
  for (int64_t p = 0; p < K; p += W) {
    V<T> b[CC];
    for (int c = 0; c < CC; ++c) b[c] = vload(Bt + c * ldb + p);
    for (int i = 0; i < RM; ++i) {
      const V<T> a = vload(A + i * lda + p);
      for (int c = 0; c < CC; ++c) acc[i][c] += a * b[c];
    }
  }
  for (int i = 0; i < RM; ++i)
    for (int c = 0; c < CC; ++c) C[i * ldc + c] += hsum(acc[i][c]);
}
template <typename T, int RM, int CC = 4>
inline void gemm_nt_cols(int64_t NC, int64_t K, const T* A, int64_t lda, const T* Bt, int64_t ldb, T* C,
                         int64_t ldc) {
  int64_t c = 0;
  for (; c + 4 <= NC; c += 4) gemm_nt_micro<T, RM, 4>(K, A, lda, Bt + c * ldb, ldb, C + c, ldc);
  switch (NC - c) {
    case 3: gemm_nt_micro<T, RM, 3>(K, A, lda, Bt + c * ldb, ldb, C + c, ldc); break;
    case 2: gemm_nt_micro<T, RM, 2>(K, A, lda, Bt + c * ldb, ldb, C + c, ldc); break;
    case 1: gemm_nt_micro<T, RM, 1>(K, A, lda, Bt + c * ldb, ldb, C + c, ldc); break;
    default: break;
  }
}
template <typename T>
inline void gemm_nt(int64_t M, int64_t NC, int64_t K, const T* A, int64_t lda, const T* Bt, int64_t ldb, T* C,
                    int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) gemm_nt_cols<T, 4>(NC, K, A + i * lda, lda, Bt, ldb, C + i * ldc, ldc);
  for (; i < M; ++i) gemm_nt_cols<T, 1>(NC, K, A + i * lda, lda, Bt, ldb, C + i * ldc, ldc);
}

}  // namespace DC_ISA
}  // namespace densecorr_cpu
