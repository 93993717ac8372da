// Global (all-pairs) attention kernels, flash-style (no include guard: see simd.h).
//
// Shapes (per batch b; batch strides are the products of the trailing sizes unless given):
//   q (N, D), k (M, D), v (M, C): the caller's contiguous tensors;
//   kpk (Mq / 2W, D, 2W): keys transposed, packed in panels of 2W, Mq = round_up(M, 2W)
//   (forward); kt (D, Mp), Mp = round_up(M, W): keys transposed (backward);
//   vp (Mq, Cp): values zero-padded to Cp = round_up(C, W) columns (forward);
//   out (N, C), lse (N) (log-sum-exp of the scaled logits that entered the softmax),
//   idx (N, topk).
// Grid: at::parallel_for over B x ceil(N / BQ) query blocks (forward) and over B x G fixed
// groups of query blocks (backward; G partial dk/dv buffers summed in order afterwards), so
// every output element is computed in a fixed order: results do not depend on the thread
// count.
namespace densecorr_cpu {
namespace DC_ISA {

constexpr int64_t kBQ = kVBytes == 64 ? 112 : 96;  // query rows per block: 8 micro-tiles of 14 / 16 of 6
constexpr int64_t kBK = 128;  // keys per block: the BQ x BK logit tile stays in L2

// Online-softmax forward over all keys. vstride: batch stride of vp (0: shared by batches).
// Per query block: the queries pre-scaled by `scale` (so the logits come out scaled), the
// logit tile and its row maxima from one pass of the packed product, exp and row sums in a
// second, then O += P V: for few value channels (2C <= W) as dot products against V^T
// (no padding of C to W), else as a product with vp.
template <typename T>
void global_fwd_dense(const T* q, const T* kpk, const T* vp, int64_t vstride, T* out, T* lse, int64_t B, int64_t N,
                      int64_t M, int64_t D, int64_t C, T scale) {
  constexpr int W = Vec<T>::W;
  const int64_t Mq = round_up(M, 2 * W), Cp = round_up(C, W), nqb = ceil_div(N, kBQ);
  const bool narrow = 2 * C <= W;
  std::vector<T> vt;  // narrow: V^T (Bv, C, Mq), zero-padded keys
  if (narrow) {
    const int64_t Bv = vstride == 0 ? 1 : B;
    vt.assign(Bv * C * Mq, T(0));
    for (int64_t b = 0; b < Bv; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < C; ++c) vt[(b * C + c) * Mq + m] = vp[b * vstride + m * Cp + c];
  }
  const int64_t vtstride = vstride == 0 ? 0 : C * Mq;
  parallel_for(0, B * nqb, grain_for(kBQ * M * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> S(kBQ * kBK), O(kBQ * Cp), m(kBQ), l(kBQ), rmax(kBQ * W), Qs(kBQ * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nqb, i0 = (task % nqb) * kBQ, bq = std::min(kBQ, N - i0);
      pack_a_tiles<T>(bq, D, q + (b * N + i0) * D, D, scale, Qs.data());
      const T* kpb = kpk + b * D * Mq;
      const T* vpb = vp + b * vstride;
      const T* vtb = narrow ? vt.data() + b * vtstride : nullptr;
      std::fill(O.begin(), O.end(), T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t j0 = 0; j0 < M; j0 += kBK) {
        const int64_t nb = std::min(kBK, M - j0), nbp = round_up(nb, 2 * W);
        const bool full = nb == nbp;  // no padded keys in this block: the fused row maxima hold
        if (full) std::fill(rmax.begin(), rmax.end(), -std::numeric_limits<T>::infinity());
        gemm_packed_ab<T>(bq, nbp, D, Qs.data(), kpb + j0 * D, S.data(), kBK, full ? rmax.data() : nullptr);
        for (int64_t i = 0; i < bq; ++i) {
          T* row = S.data() + i * kBK;
          T mx;
          if (full) {
            mx = hmax(vload(rmax.data() + i * W));
          } else {
            for (int64_t j = nb; j < nbp; ++j) row[j] = -std::numeric_limits<T>::infinity();
            mx = max_row(row, nbp);
          }
          const T m_new = std::max(m[i], mx);
          const T alpha = std::exp(m[i] - m_new);  // 0 on the first block (m = -inf)
          l[i] = l[i] * alpha + exp_row(row, nbp, T(1), m_new);
          m[i] = m_new;
          if (alpha != T(1))
            for (int64_t c = 0; c < Cp; ++c) O[i * Cp + c] *= alpha;
        }
        if (narrow) gemm_nt<T>(bq, C, nbp, S.data(), kBK, vtb + j0, Mq, O.data(), Cp);
        else gemm<T>(bq, Cp, nbp, S.data(), kBK, vpb + j0 * Cp, Cp, O.data(), Cp, true);
      }
      for (int64_t i = 0; i < bq; ++i) {
        const T inv = T(1) / l[i];
        for (int64_t c = 0; c < C; ++c) out[(b * N + i0 + i) * C + c] = O[i * Cp + c] * inv;
        lse[b * N + i0 + i] = m[i] + std::log(l[i]);
      }
    }
  });
}

// One query's top-k result from its running top-k (finished here): the softmax over the
// kept logits, out = their weighted sum of v rows (vb: this batch's (M, C) values), lse, and
// the kept key indices, best first. p, acc: scratch of topk and C elements. Shared by the
// plain top-k forward and the pre-filtered one (topk_prefilter.h), so both give the same bits.
template <typename T>
inline void topk_emit_row(TopK<T>& top, const T* vb, int64_t C, T* p, T* acc, T* out_row, T* lse_row,
                          int64_t* idx_row) {
  const int64_t n = top.finish();
  const Cand<T>* c = top.buf;
  const T mx = c[0].v;
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(c[j].v - mx));
  std::fill(acc, acc + C, T(0));
  for (int64_t j = 0; j < n; ++j) axpy(acc, p[j], vb + c[j].i * C, C);
  for (int64_t cc = 0; cc < C; ++cc) out_row[cc] = acc[cc] / sum;
  *lse_row = mx + std::log(sum);
  for (int64_t j = 0; j < n; ++j) idx_row[j] = c[j].i;
}

// Forward with top-k: logits streamed block by block through a running top-k per query;
// the softmax and the weighted sum over the k kept keys at the end. v: (M, C) per batch.
template <typename T>
void global_fwd_topk(const T* q, const T* kpk, const T* v, int64_t vstride, T* out, T* lse, int64_t* idx, int64_t B,
                     int64_t N, int64_t M, int64_t D, int64_t C, T scale, int64_t topk) {
  constexpr int W = Vec<T>::W;
  const int64_t nqb = ceil_div(N, kBQ);
  parallel_for(0, B * nqb, grain_for(kBQ * M * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> S(kBQ * kBK), p(topk), acc(C), Qs(kBQ * D), rmax(kBQ * W);
    std::vector<Cand<T>> cands(kBQ * 2 * topk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nqb, i0 = (task % nqb) * kBQ, bq = std::min(kBQ, N - i0);
      pack_a_tiles<T>(bq, D, q + (b * N + i0) * D, D, scale, Qs.data());  // logits come out scaled
      const T* kpb = kpk + b * D * round_up(M, 2 * W);
      std::vector<TopK<T>> tops;
      tops.reserve(bq);
      for (int64_t i = 0; i < bq; ++i) tops.emplace_back(cands.data() + i * 2 * topk, topk);
      for (int64_t j0 = 0; j0 < M; j0 += kBK) {
        const int64_t nb = std::min(kBK, M - j0), nbp = round_up(nb, 2 * W);
        const bool full = nb == nbp;  // no padded keys: the fused row maxima are the block's
        if (full) std::fill(rmax.begin(), rmax.end(), -std::numeric_limits<T>::infinity());
        gemm_packed_ab<T>(bq, nbp, D, Qs.data(), kpb + j0 * D, S.data(), kBK, full ? rmax.data() : nullptr);
        for (int64_t i = 0; i < bq; ++i) {
          T* row = S.data() + i * kBK;
          TopK<T>& top = tops[i];
          if (full && top.cut && !(hmax(vload(rmax.data() + i * W)) > top.thresh)) continue;  // none can enter
          int64_t j = 0;
          if (top.cut) {  // skip, a vector at a time, the logits that cannot enter
            const V<T> th = vsplat(top.thresh);
            for (; j + W <= nb; j += W) {
              const auto gt = vload(row + j) > th;
              bool any = false;
              for (int l = 0; l < W; ++l) any |= gt[l] != 0;
              if (!any) continue;
              for (int l = 0; l < W; ++l)
                if (top.wants(row[j + l])) top.push(row[j + l], j0 + j + l);
            }
          }
          for (; j < nb; ++j)
            if (top.wants(row[j])) top.push(row[j], j0 + j);
        }
      }
      for (int64_t i = 0; i < bq; ++i) {
        const int64_t row = b * N + i0 + i;
        topk_emit_row(tops[i], v + b * vstride, C, p.data(), acc.data(), out + row * C, lse + row, idx + row * topk);
      }
    }
  });
}

// Number of fixed query groups of the backward: each accumulates its own partial dk/dv
// (B, Mp, Dp + Cp), summed in group order afterwards. It depends on the shapes only (not on
// the thread count), so results are deterministic; bounded to keep the partials <= 256 MiB.
inline int64_t bwd_groups(int64_t B, int64_t N, int64_t M, int64_t D, int64_t C, int64_t elt) {
  const int64_t per = B * (M + 16) * (D + C + 16) * elt;
  int64_t G = std::min<int64_t>(8, ceil_div(N, kBQ));
  while (G > 1 && G * per > (int64_t(256) << 20)) --G;
  return G;
}

// Fused backward over all keys: per query block, recompute P = exp(s q.k - lse), then
// dS = P (dO.v - delta), dq = s dS k (complete per block), and the block's share of
// dk = s dS^T q and dv = P^T dO into its group's partials dkp/dvp (G, B, Mp, Dp/Cp).
// kt (D, Mp), vt (C, Mp), kp (Mp, Dp) padded copies per batch (vt batch stride vtstride);
// delta_i = dO_i . out_i. dvp may be null (no value gradient wanted).
template <typename T>
void global_bwd_dense(const T* q, const T* kt, const T* vt, int64_t vtstride, const T* kp, const T* dout,
                      const T* lse, const T* delta, T* dq, T* dkp, T* dvp, int64_t G, int64_t B, int64_t N,
                      int64_t M, int64_t D, int64_t C, T scale) {
  constexpr int W = Vec<T>::W;
  const int64_t Mp = round_up(M, W), Dp = round_up(D, W), Cp = round_up(C, W), nqb = ceil_div(N, kBQ);
  const int64_t per = ceil_div(nqb, G);
  parallel_for(0, B * G, grain_for(per * kBQ * M * 2 * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> S(kBQ * kBK), dP(kBQ * kBK), dQ(kBQ * Dp), Qp(kBQ * Dp, T(0)), dOp(kBQ * Cp, T(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / G, g = task % G;
      T* dK = dkp + (g * B + b) * Mp * Dp;
      T* dV = dvp != nullptr ? dvp + (g * B + b) * Mp * Cp : nullptr;
      for (int64_t blk = g * per; blk < std::min(nqb, (g + 1) * per); ++blk) {
        const int64_t i0 = blk * kBQ, bq = std::min(kBQ, N - i0);
        const T* qb = q + (b * N + i0) * D;
        const T* dob = dout + (b * N + i0) * C;
        for (int64_t i = 0; i < bq; ++i) {
          std::copy(qb + i * D, qb + (i + 1) * D, Qp.data() + i * Dp);
          std::copy(dob + i * C, dob + (i + 1) * C, dOp.data() + i * Cp);
        }
        std::fill(dQ.begin(), dQ.end(), T(0));
        for (int64_t j0 = 0; j0 < M; j0 += kBK) {
          const int64_t nb = std::min(kBK, M - j0), nbp = round_up(nb, W);
          gemm<T>(bq, nbp, D, qb, D, kt + b * D * Mp + j0, Mp, S.data(), kBK, false);
          gemm<T>(bq, nbp, C, dob, C, vt + b * vtstride + j0, Mp, dP.data(), kBK, false);
          for (int64_t i = 0; i < bq; ++i) {
            T* s = S.data() + i * kBK;
            T* dp = dP.data() + i * kBK;
            const V<T> li = vsplat(lse[b * N + i0 + i]), di = vsplat(delta[b * N + i0 + i]);
            for (int64_t j = 0; j < nbp; j += W) {
              const V<T> p = vexp(vload(s + j) * scale - li);
              vstore(s + j, p);
              vstore(dp + j, p * (vload(dp + j) - di));
            }
            for (int64_t j = nb; j < nbp; ++j) s[j] = dp[j] = 0;  // padded keys
          }
          gemm<T>(bq, Dp, nbp, dP.data(), kBK, kp + (b * Mp + j0) * Dp, Dp, dQ.data(), Dp, true);
          gemm<T, true>(nbp, Dp, bq, dP.data(), kBK, Qp.data(), Dp, dK + j0 * Dp, Dp, true);
          if (dV != nullptr) gemm<T, true>(nbp, Cp, bq, S.data(), kBK, dOp.data(), Cp, dV + j0 * Cp, Cp, true);
        }
        for (int64_t i = 0; i < bq; ++i)
          for (int64_t d = 0; d < D; ++d) dq[(b * N + i0 + i) * D + d] = scale * dQ[i * Dp + d];
      }
    }
  });
  // Sum the group partials in group order.
  parallel_for(0, B * M, grain_for(G * (D + C)), [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M, m = bm % M;
      for (int64_t d = 0; d < D; ++d) {
        T a = 0;
        for (int64_t g = 0; g < G; ++g) a += dkp[((g * B + b) * Mp + m) * Dp + d];
        dkp[((0 * B + b) * Mp + m) * Dp + d] = a * scale;
      }
      if (dvp != nullptr)
        for (int64_t c = 0; c < C; ++c) {
          T a = 0;
          for (int64_t g = 0; g < G; ++g) a += dvp[((g * B + b) * Mp + m) * Cp + c];
          dvp[((0 * B + b) * Mp + m) * Cp + c] = a;
        }
    }
  });
}

// Backward with top-k: only the kept pairs (i, idx[i, j]) carry gradient. Pass 1 (queries in
// parallel) computes P, dS of the pairs and dq; pass 2 groups the pairs by key (a counting
// sort, in query order) and sums them per key in parallel: deterministic.
template <typename T>
void global_bwd_topk(const T* q, const T* k, const T* v, int64_t vstride, const T* dout, const T* out, const T* lse,
                     const int64_t* idx, T* dq, T* dk, T* dv, int64_t B, int64_t N, int64_t M, int64_t D, int64_t C,
                     int64_t K, T scale) {
  std::vector<T> P(N * K), dS(N * K);
  std::vector<int64_t> start(M + 1), order(N * K);
  for (int64_t b = 0; b < B; ++b) {
    const T* qb = q + b * N * D;
    const T* kb = k + b * M * D;
    const T* vb = v + b * vstride;
    const T* dob = dout + b * N * C;
    const int64_t* ib = idx + b * N * K;
    parallel_for(0, N, grain_for(K * (D + C)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T delta = dot(dob + i * C, out + (b * N + i) * C, C);
        T* dqi = dq + (b * N + i) * D;
        std::fill(dqi, dqi + D, T(0));
        for (int64_t j = 0; j < K; ++j) {
          const int64_t m = ib[i * K + j];
          const T p = std::exp(scale * dot(qb + i * D, kb + m * D, D) - lse[b * N + i]);
          const T ds = p * (dot(dob + i * C, vb + m * C, C) - delta);
          P[i * K + j] = p;
          dS[i * K + j] = ds;
          axpy(dqi, scale * ds, kb + m * D, D);
        }
      }
    });
    std::fill(start.begin(), start.end(), 0);
    for (int64_t e = 0; e < N * K; ++e) ++start[ib[e] + 1];
    for (int64_t m = 0; m < M; ++m) start[m + 1] += start[m];
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t e = 0; e < N * K; ++e) order[fill[ib[e]]++] = e;
    }
    parallel_for(0, M, grain_for(N * K / std::max<int64_t>(M, 1) * (D + C) + 1), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        T* dkm = dk + (b * M + m) * D;
        std::fill(dkm, dkm + D, T(0));
        T* dvm = dv != nullptr ? dv + (b * M + m) * C : nullptr;
        if (dvm) std::fill(dvm, dvm + C, T(0));
        for (int64_t s = start[m]; s < start[m + 1]; ++s) {
          const int64_t e = order[s], i = e / K;
          axpy(dkm, scale * dS[e], qb + i * D, D);
          if (dvm) axpy(dvm, P[e], dob + i * C, C);
        }
      }
    });
  }
}

}  // namespace DC_ISA
}  // namespace densecorr_cpu
