// Exact top-k forward with an int16 pre-filter (no include guard: see simd.h; included after
// global_kernels.h with DC_PREFILTER_ISA = 1 for the AVX2 variant, 2 for AVX-512, 0 for the
// baseline one, which has no pre-filter).
//
// The plain top-k forward spends nearly all its time in the float32 product q k^T. Here the
// scaled queries and the keys are quantised per row to int16 (|x| <= qmax, qmax chosen so
// the int32 sums of vpmaddwd pair products cannot overflow at this D), the approximate
// logits come from an int16 product (vpmaddwd + vpaddd: twice the multiply-adds per
// instruction of an fp32 FMA), and each pair (i, j) gets a rigorous interval
// [lb, ub] = approx -+ beta_ij around the logit E_ij that the plain path computes:
//   beta_ij = (eq_i ||k_j||_1 + ek_j ||q~_i||_1) (1 + 2^-16) + (gamma_D + 2^-18) |q^_i|_inf ||k_j||_1,
// eq_i, ek_j bounds of the largest per-element quantisation errors (measured, one FMA rounding),
// q~_i the dequantised query, q^_i the float scaled query, gamma_D = D u / (1 - D u) the
// float rounding of the plain path's length-D dot product, the 2^-16 / 2^-18 terms the
// float rounding of the few operations that evaluate approx, beta, lb and ub (each within
// u = 2^-24 of quantities bounded by |q^|_inf ||k||_1 + beta). A key j can be in the exact
// top-k of query i only if ub_ij >= L_i, the k-th largest lb_ij over all keys (k keys have
// E >= lb >= L_i, so the k-th largest E is >= L_i): the stream keeps per query every key
// with ub >= the running k-th lb (a lower bound of L_i), then recomputes the survivors'
// logits exactly as the plain path does (the same FMA chain over d = 0..D-1) and selects the
// top-k among them with the same TopK rule; out, lse and idx are bit-identical to the plain
// path's.
namespace densecorr_cpu {
namespace DC_ISA {

#if DC_PREFILTER_ISA > 0

typedef int16_t Q16 __attribute__((vector_size(kVBytes)));
typedef int32_t Q32 __attribute__((vector_size(kVBytes)));
typedef int16_t Q16u __attribute__((vector_size(kVBytes), aligned(2), may_alias));
typedef int32_t Q32u __attribute__((vector_size(kVBytes), aligned(4), may_alias));

constexpr int kQW = kVBytes / 4;                  // int32 lanes: keys per result vector
constexpr int kQNR = 2;                           // result vectors per micro-tile row
constexpr int64_t kQPW = kQNR * kQW;              // keys per packed panel
constexpr int kQMR = kVBytes == 64 ? 12 : 6;      // query rows per micro-tile (register file)
constexpr int64_t kQBQ = 96;                      // query rows per block (a multiple of kQMR)

// Lane-wise a[2l] b[2l] + a[2l+1] b[2l+1] as int32 (vpmaddwd). (Templates, so that the
// branch for the other vector width is not compiled.)
template <int VB = kVBytes>
inline Q32 madd16(Q16 a, Q16 b) {
#if DC_PREFILTER_ISA == 2
  return (Q32)_mm512_madd_epi16((__m512i)a, (__m512i)b);
#else
  if constexpr (VB == 32) {
    return (Q32)_mm256_madd_epi16((__m256i)a, (__m256i)b);
  } else {  // 64-byte vectors on AVX2 (a test build of the wide variant's logic)
    Q32 r;
    for (int l = 0; l < kQW; ++l) r[l] = int32_t(a[2 * l]) * b[2 * l] + int32_t(a[2 * l + 1]) * b[2 * l + 1];
    return r;
  }
#endif
}

// Bit l set where lane l of a comparison result (0 / -1 lanes) is set.
template <int VB = kVBytes>
inline uint32_t lane_mask(Q32 m) {
#if DC_PREFILTER_ISA == 2
  return _mm512_movepi32_mask((__m512i)m);
#else
  if constexpr (VB == 32) {
    return static_cast<uint32_t>(_mm256_movemask_ps((__m256)m));
  } else {
    uint32_t r = 0;
    for (int l = 0; l < kQW; ++l) r |= uint32_t(m[l] != 0) << l;
    return r;
  }
#endif
}

// Broadcast (a lane loop compiles to inserts; integer 0 + x folds to one vpbroadcastd).
inline Q32 splat32(int32_t x) { return Q32{} + x; }

// The largest int16 magnitude for length-D rows: D2 = ceil(D/2) pair sums of 2 qmax^2 each
// stay below 2^31 (and qmax <= 32767, so no pair product reaches vpmaddwd's one overflow).
inline int32_t q16_qmax(int64_t D) {
  const int64_t Dp = round_up(D, 2), lim = (int64_t(1) << 31) - 1;
  int64_t q = std::min<int64_t>(32767, static_cast<int64_t>(std::sqrt(double(lim) / double(Dp))));
  while (q > 0 && q * q * Dp > lim) --q;
  while (q < 32767 && (q + 1) * (q + 1) * Dp <= lim) ++q;
  return static_cast<int32_t>(q);
}

// float >= x (x >= 0): x rounded up.
inline float round_up_float(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// One row x[0:D] quantised to int16 at out[(d/2) * 2*group + d%2] (a packed panel / tile
// column; the pad element of odd D set to 0): x ~ s * xi. The rounding to xi may be any:
// the error it leaves is measured (one FMA rounding, covered below). Returns false when x has
// a non-finite element.
struct QRow {
  float s = 0;      // the row's step
  double inf = 0;   // max |x_d|
  double err = 0;   // >= max |x_d - s xi_d|
  double l1 = 0;    // >= sum |x_d|
  double l1q = 0;   // sum |s xi_d|
};
inline bool quantise_row(const float* x, int64_t D, int32_t qmax, int16_t* out, int64_t group, QRow& r) {
  constexpr int W = Vec<float>::W;
  typedef typename Vec<float>::itype I;
  const float big = std::numeric_limits<float>::max();
  auto vabs = [](V<float> a) { return (V<float>)((I)a & 0x7fffffff); };
  V<float> vinf{}, vl1{};
  I ok = (I){} - 1;
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    const V<float> a = vabs(vload(x + d));
    ok &= a <= big;  // false for inf and NaN
    vinf = vmax(vinf, a);
    vl1 += a;
  }
  float inf = hmax(vinf), l1 = hsum(vl1);
  bool finite = true;
  for (int l = 0; l < W; ++l) finite &= ok[l] != 0;
  for (; d < D; ++d) {
    const float a = std::fabs(x[d]);
    finite &= a <= big;
    inf = std::max(inf, a);
    l1 += a;
  }
  if (!finite) return false;
  r.inf = inf;
  r.l1 = double(l1) * (1 + 2 * (D + 1) * std::ldexp(1.0, -24));  // any order: relative error < D u
  const float s = static_cast<float>(double(inf) / qmax);
  // A zero row, or one so small that its step is not a normal float: all of it is error.
  const bool zero = !(std::fpclassify(s) == FP_NORMAL);
  r.s = zero ? 0.f : s;
  const int64_t Dp = round_up(D, 2);
  auto put = [&](int64_t e, int32_t v) { out[(e / 2) * 2 * group + (e % 2)] = static_cast<int16_t>(v); };
  if (zero) {
    for (int64_t e = 0; e < Dp; ++e) put(e, 0);
    r.err = inf;
    r.l1q = 0;
    return true;
  }
  const float inv = 1.f / s, fq = float(qmax), magic = 12582912.f;  // 1.5 * 2^23: rounds to an integer
  V<float> verr{};
  I vsum{};
  for (d = 0; d + W <= D; d += W) {
    const V<float> xv = vload(x + d);
    V<float> t = (xv * inv + magic) - magic;
    t = vmin(vmax(t, vsplat(-fq)), vsplat(fq));
    verr = vmax(verr, vabs(vfma(vsplat(-s), t, xv)));  // x - s t, one rounding
    const I vi = __builtin_convertvector(t, I);
    vsum += vi < 0 ? -vi : vi;
    for (int l = 0; l < W; ++l) put(d + l, vi[l]);
  }
  float err = hmax(verr);
  int64_t sum = hsum(vsum);
  for (; d < D; ++d) {
    const float t = std::min(fq, std::max(-fq, (x[d] * inv + magic) - magic));
    err = std::max(err, std::fabs(std::fma(-s, t, x[d])));
    const int32_t v = static_cast<int32_t>(t);
    sum += v < 0 ? -v : v;
    put(d, v);
  }
  if (D < Dp) put(D, 0);
  r.err = double(err) * (1 + std::ldexp(1.0, -22));
  r.l1q = double(s) * double(sum);  // to 2^-53 (covered by beta's slack)
  return true;
}

// A key that may still enter a query's top-k: its logit interval and index (ascending).
struct Surv {
  float ub, lb;
  int64_t j;
};

// A (query row in the block, key) pair whose exact logit is wanted.
struct SurvPair {
  int64_t i, j;
};

// e[t] = qh[pr[t].i] . k[pr[t].j] for G pairs, each as the plain path's product (gemm_micro)
// forms its logit: one FMA chain over d = 0..D-1 from 0 (std::fma here, vfma there: the same
// roundings, lane by lane); G independent chains hide the FMA latency. The key rows of the
// pairs at next (G of them, or null) are prefetched a cache line per row per 16 steps: the rows
// are scattered over k, and a burst of prefetches would fill the miss buffers.
template <int G>
inline void exact_group(const float* qhb, const float* kb, int64_t D, const SurvPair* pr, const SurvPair* next,
                        float* e) {
  const float* qr[G];
  const float* kr[G];
  const float* nr[G];
  float acc[G];
  for (int t = 0; t < G; ++t) {
    qr[t] = qhb + pr[t].i * D;
    kr[t] = kb + pr[t].j * D;
    nr[t] = next != nullptr ? kb + next[t].j * D : nullptr;
    acc[t] = 0.f;
  }
  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    if (next != nullptr)
      for (int t = 0; t < G; ++t) __builtin_prefetch(nr[t] + d0);
    const int64_t d1 = std::min<int64_t>(D, d0 + 16);
    for (int64_t d = d0; d < d1; ++d)
      for (int t = 0; t < G; ++t) acc[t] = std::fma(qr[t][d], kr[t][d], acc[t]);
  }
  for (int t = 0; t < G; ++t) e[t] = acc[t];
}
// All n pairs: 8 at a time, then 4, then 1.
inline void exact_logits(const float* qhb, const float* kb, int64_t D, const SurvPair* pr, int64_t n, float* e) {
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) exact_group<8>(qhb, kb, D, pr + t, t + 16 <= n ? pr + t + 8 : nullptr, e + t);
  for (; t + 4 <= n; t += 4) exact_group<4>(qhb, kb, D, pr + t, nullptr, e + t);
  for (; t < n; ++t) exact_group<1>(qhb, kb, D, pr + t, nullptr, e + t);
}

// One query's candidates over the stream: every key seen whose ub >= th, th the running k-th
// largest lb (kept exact by a min-heap of the k largest lb pushed: a key with lb >= th has
// ub >= th, so it was pushed). Keys come in ascending order; the buffer drops those with
// ub < th when it has doubled since the last time (amortised O(1) a push, near-ties too).
// A row whose kept candidates exceed 8k + 1024 (massive ties: e.g. a zero query, all of whose
// logits are 0) stops collecting (th = +inf) and is computed exactly over all keys at the end:
// memory stays bounded.
struct SurvRow {
  std::vector<Surv> buf;
  std::vector<float> top;  // min-heap of the k largest lb pushed
  float th = 0;
  int64_t cap = 0;
  bool overflow = false;
  void reset(int64_t k) {
    buf.clear();
    top.clear();
    th = -std::numeric_limits<float>::infinity();
    cap = 4 * k + 16;
    overflow = false;
  }
  void prune(int64_t k) {
    if (overflow) return;
    int64_t w = 0;
    for (const Surv& sv : buf)
      if (sv.ub >= th) buf[w++] = sv;
    buf.resize(w);
    cap = std::max<int64_t>(4 * k + 16, 2 * w);
    if (w > 8 * k + 1024) {
      overflow = true;
      buf.clear();
      buf.shrink_to_fit();
      th = std::numeric_limits<float>::infinity();
    }
  }
  void push(float ub, float lb, int64_t j, int64_t k) {
    buf.push_back({ub, lb, j});
    if (static_cast<int64_t>(top.size()) < k) {
      top.push_back(lb);
      std::push_heap(top.begin(), top.end(), std::greater<float>());
      if (static_cast<int64_t>(top.size()) == k) th = top[0];
    } else if (lb > top[0]) {
      std::pop_heap(top.begin(), top.end(), std::greater<float>());
      top.back() = lb;
      std::push_heap(top.begin(), top.end(), std::greater<float>());
      th = top[0];
    }
    if (static_cast<int64_t>(buf.size()) >= cap) prune(k);
  }
};

// The candidates among lanes m of one result vector (keys j..j+W-1): out of line, as they
// are rare once the running thresholds have settled.
__attribute__((noinline)) inline void push_lanes(SurvRow& st, const float* ub, const float* lb, uint32_t m,
                                                 int64_t j, int64_t k) {
  for (; m != 0; m &= m - 1) {
    const int l = __builtin_ctz(m);
    if (ub[l] >= st.th) st.push(ub[l], lb[l], j + l, k);  // th may have risen
  }
}

// Per-row and per-key inputs of the fused scan.
struct ScanRows {
  const float *sq, *alpha, *rho;  // per query row of the tile: step, the two factors of beta
  SurvRow* st;                    // per query row: its candidates
};
struct ScanKeys {
  const float *ks, *kl1, *kerr;  // per key of the panel: step, ||k||_1, error (zero past M)
};

// The approximate logits of MR query rows (an int16 tile Ap: D2 steps of MR int16 pairs, each
// read as one int32 and broadcast) against one key panel Bp (D2 steps of kQPW int16 pairs,
// keys j..j+kQPW-1, of which nvalid exist), then, still in registers, each logit's interval
// [lb, ub] and the keys with ub >= their row's running threshold into its candidates
// (rows >= nrows are padding).
template <int MR>
inline void q16_micro(int64_t D2, const int32_t* Ap, const int16_t* Bp, int32_t* C) {
  Q32 acc[MR][kQNR];
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < kQNR; ++c) acc[i][c] = Q32{};
  for (int64_t p = 0; p < D2; ++p) {
    Q16 b[kQNR];
    for (int c = 0; c < kQNR; ++c) b[c] = *reinterpret_cast<const Q16u*>(Bp + (p * kQNR + c) * 2 * kQW);
    for (int i = 0; i < MR; ++i) {
      const Q32 a = splat32(Ap[p * MR + i]);
      for (int c = 0; c < kQNR; ++c) acc[i][c] += madd16((Q16)a, b[c]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < kQNR; ++c) *reinterpret_cast<Q32u*>(C + (i * kQNR + c) * kQW) = acc[i][c];
}
template <int MR>
inline void q16_micro_scan(int64_t D2, const int32_t* Ap, const int16_t* Bp, int64_t nrows, int64_t j,
                           int64_t nvalid, const ScanRows& R, const ScanKeys& K, int64_t k) {
  constexpr int W = Vec<float>::W;
  // The tile leaves the registers once, to a buffer in L1 (scanned row by row below: indexing
  // the accumulators by a run-time row would keep them in memory inside the product loop).
  alignas(64) int32_t acc[MR * kQPW];
  q16_micro<MR>(D2, Ap, Bp, acc);
  uint32_t valid[kQNR];
  for (int c = 0; c < kQNR; ++c) {
    const int64_t n = std::min<int64_t>(W, std::max<int64_t>(0, nvalid - c * W));
    valid[c] = (1u << n) - 1u;
  }
  for (int i = 0; i < MR && i < nrows; ++i) {
    const V<float> sq = vsplat(R.sq[i]), al = vsplat(R.alpha[i]), rh = vsplat(R.rho[i]);
    for (int c = 0; c < kQNR; ++c) {
      const V<float> a =
          __builtin_convertvector(*reinterpret_cast<const Q32u*>(acc + (i * kQNR + c) * W), V<float>) *
          (sq * vload(K.ks + c * W));
      const V<float> beta = vload(K.kl1 + c * W) * al + vload(K.kerr + c * W) * rh;
      const V<float> ub = a + beta;
      const uint32_t m = lane_mask(ub >= vsplat(R.st[i].th)) & valid[c];
      if (m != 0) {
        float ubs[W], lbs[W];
        vstore(ubs, ub);
        vstore(lbs, a - beta);
        push_lanes(R.st[i], ubs, lbs, m, j + c * W, k);
      }
    }
  }
}

// The block's query rows (bq of them, int16 pairs at qrows, row stride 2*D2) as micro-tiles:
// (kQBQ / kQMR, D2, kQMR) int32 pairs, rows past bq zero.
inline void pack_query_tiles(const int16_t* qrows, int64_t bq, int64_t D2, int32_t* Aq) {
  for (int64_t i = 0; i < kQBQ; ++i) {
    int32_t* dst = Aq + (i / kQMR) * kQMR * D2 + i % kQMR;
    if (i < bq) {
      const int32_t* src = reinterpret_cast<const int32_t*>(qrows + i * 2 * D2);
      for (int64_t pp = 0; pp < D2; ++pp) dst[pp * kQMR] = src[pp];
    } else {
      for (int64_t pp = 0; pp < D2; ++pp) dst[pp * kQMR] = 0;
    }
  }
}

// The pre-filtered forward; q, k (B, N/M, D), v (M, C) per batch (vstride), float32 only.
// Returns false (nothing written) when the inputs do not allow it: a non-finite q^ or k,
// magnitudes where the bound's float evaluation could overflow or underflow, or a D too large
// for a useful qmax; the caller then runs the plain path.
inline bool global_fwd_topk_q16(const float* q, const float* k, const float* v, int64_t vstride, float* out,
                                float* lse, int64_t* idx, int64_t B, int64_t N, int64_t M, int64_t D, int64_t C,
                                float scale, int64_t topk) {
  constexpr int W = Vec<float>::W;
  static_assert(W == kQW, "one result vector of int32 logits per float vector");
  const int32_t qmax = q16_qmax(D);
  if (qmax < 255) return false;  // D > 33000: the bound would keep too much to pay
  const int64_t Dp = round_up(D, 2), D2 = Dp / 2, Mq = round_up(M, kQPW), nqb = ceil_div(N, kQBQ);
  const double u = std::ldexp(1.0, -24), gammaD = D * u / (1 - D * u);

  // Keys: int16 panels (B, Mq / kQPW, D2, kQPW, 2) and per key its step, ||k||_1 and error.
  std::vector<int16_t> kq(B * Mq * Dp, 0);
  std::vector<float> ks(B * Mq, 0.f), kl1(B * Mq, 0.f), kerr(B * Mq, 0.f), kinf(B * Mq, 0.f);
  std::vector<char> kbad(B * M, 0);
  parallel_for(0, B * M, grain_for(4 * D), [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M, j = bm % M, e = b * Mq + j;
      QRow r;
      if (!quantise_row(k + bm * D, D, qmax, kq.data() + (b * Mq + j / kQPW * kQPW) * Dp + (j % kQPW) * 2, kQPW, r)) {
        kbad[bm] = 1;
        continue;
      }
      ks[e] = r.s;
      kl1[e] = round_up_float(r.l1);
      kerr[e] = round_up_float(r.err);
      kinf[e] = static_cast<float>(r.inf);
    }
  });
  // Queries: q^ = scale q as the plain path forms it, int16 rows (B*N, Dp), and per query its
  // step and the two factors of beta: alpha (times ||k_j||_1) and rho (times ek_j).
  std::vector<int16_t> qq(B * N * Dp);
  std::vector<float> qs(B * N), qalpha(B * N), qrho(B * N), qinf(B * N);
  std::vector<char> qbad(B * N, 0);
  parallel_for(0, B * N, grain_for(4 * D), [&](int64_t begin, int64_t end) {
    std::vector<float> qh(D);
    for (int64_t r0 = begin; r0 < end; ++r0) {
      for (int64_t d = 0; d < D; ++d) qh[d] = scale * q[r0 * D + d];
      QRow r;
      // Row layout: pairs contiguous (group 1).
      if (!quantise_row(qh.data(), D, qmax, qq.data() + r0 * Dp, 1, r)) {
        qbad[r0] = 1;
        continue;
      }
      qs[r0] = r.s;
      qinf[r0] = static_cast<float>(r.inf);
      qalpha[r0] = round_up_float(r.err * (1 + std::ldexp(1.0, -16)) + (gammaD + std::ldexp(1.0, -18)) * r.inf);
      qrho[r0] = round_up_float(r.l1q * (1 + std::ldexp(1.0, -16)));
    }
  });
  // Magnitude guard: every quantity the scan forms stays a normal float far from overflow.
  double qmx = 0, qmn = std::numeric_limits<double>::infinity(), kmx = 0, kmn = qmn, k1mx = 0;
  for (int64_t e = 0; e < B * N; ++e) {
    if (qbad[e]) return false;
    qmx = std::max(qmx, double(qinf[e]));
    if (qinf[e] > 0) qmn = std::min(qmn, double(qinf[e]));
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < M; ++j) {
      if (kbad[b * M + j]) return false;
      const int64_t e = b * Mq + j;
      kmx = std::max(kmx, double(kinf[e]));
      k1mx = std::max(k1mx, double(kl1[e]));
      if (kinf[e] > 0) kmn = std::min(kmn, double(kinf[e]));
    }
  if (qmx * k1mx * double(D + 2) > 1e30) return false;
  if (qmx == 0) return false;  // all queries zero (scale 0): every logit ties, nothing to filter
  if (qmx > 0 && kmx > 0 && qmn * kmn < 1e-20) return false;  // steps' products stay normal

  parallel_for(0, B * nqb, grain_for(kQBQ * M * D / 2), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> Aq(kQBQ * D2);
    std::vector<SurvRow> rows(kQBQ);
    std::vector<float> qhb(kQBQ * D), ex, p(topk), acc(C);
    std::vector<SurvPair> pairs;
    std::vector<Cand<float>> cands(2 * topk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nqb, i0 = (task % nqb) * kQBQ, bq = std::min(kQBQ, N - i0);
      pack_query_tiles(qq.data() + (b * N + i0) * Dp, bq, D2, Aq.data());
      for (int64_t i = 0; i < bq; ++i) rows[i].reset(topk);
      const int16_t* kqb = kq.data() + b * Mq * Dp;
      const float* ksb = ks.data() + b * Mq;
      const float* kl1b = kl1.data() + b * Mq;
      const float* kerrb = kerr.data() + b * Mq;
      // Key panels outside, query tiles inside: a panel (D2 x kQPW int16) stays in L1. Each
      // row sees its keys in ascending order (the candidates stay sorted by key).
      for (int64_t j = 0; j < M; j += kQPW) {
        const ScanKeys K{ksb + j, kl1b + j, kerrb + j};
        for (int64_t t = 0; t * kQMR < bq; ++t) {
          const int64_t r0 = b * N + i0 + t * kQMR;
          const ScanRows R{qs.data() + r0, qalpha.data() + r0, qrho.data() + r0, rows.data() + t * kQMR};
          q16_micro_scan<kQMR>(D2, Aq.data() + t * kQMR * D2, kqb + j * Dp, bq - t * kQMR, j, M - j, R, K, topk);
        }
      }
      // The survivors (ub >= the final k-th lb) of all rows, in (row, key) order; their exact
      // logits as the plain path's product forms them; per row the top-k among them by the
      // plain path's TopK rule (keys in ascending order).
      pairs.clear();
      for (int64_t i = 0; i < bq; ++i) {
        rows[i].prune(topk);
        for (const Surv& sv : rows[i].buf) pairs.push_back({i, sv.j});
      }
      for (int64_t i = 0; i < bq; ++i)
        for (int64_t d = 0; d < D; ++d) qhb[i * D + d] = scale * q[(b * N + i0 + i) * D + d];
      ex.resize(pairs.size());
      exact_logits(qhb.data(), k + b * M * D, D, pairs.data(), static_cast<int64_t>(pairs.size()), ex.data());
      int64_t e = 0;
      for (int64_t i = 0; i < bq; ++i) {
        const int64_t r0 = b * N + i0 + i;
        TopK<float> top(cands.data(), topk);
        if (rows[i].overflow) {  // all keys, in order, 8 at a time
          SurvPair all[8];
          float ea[8];
          int64_t j = 0;
          for (; j + 8 <= M; j += 8) {
            for (int t = 0; t < 8; ++t) all[t] = {i, j + t};
            exact_group<8>(qhb.data(), k + b * M * D, D, all, nullptr, ea);
            for (int t = 0; t < 8; ++t)
              if (top.wants(ea[t])) top.push(ea[t], j + t);
          }
          for (; j < M; ++j) {
            all[0] = {i, j};
            exact_group<1>(qhb.data(), k + b * M * D, D, all, nullptr, ea);
            if (top.wants(ea[0])) top.push(ea[0], j);
          }
        }
        for (; e < static_cast<int64_t>(pairs.size()) && pairs[e].i == i; ++e)
          if (top.wants(ex[e])) top.push(ex[e], pairs[e].j);
        topk_emit_row(top, v + b * vstride, C, p.data(), acc.data(), out + r0 * C, lse + r0, idx + r0 * topk);
      }
    }
  });
  return true;
}

#endif  // DC_PREFILTER_ISA > 0

}  // namespace DC_ISA
}  // namespace densecorr_cpu
