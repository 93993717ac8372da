// Local (windowed) kernels: local_affinity, local_copy, local_attention, forward and
// backward (no include guard: see simd.h).
//
// Layouts (per batch, channel-first as the caller's tensors): q (D, H, W), k (T, D, H, W),
// v (T, C, H, W), attn (T*P, H, W), out (C, H, W), lse (H, W), idx (H, W, topk).
//
// Scheme: vectorise over x. A "strip" is L = W_vec consecutive query pixels of one row
// (8 floats / 4 doubles). For a fixed window cell (iy, ix) the strip's keys are, away from
// "clamp" edges, L consecutive pixels of key row start_y[y] + iy*dil, so one logit vector
// is sum_d q[d, y, x0:x0+L] * k[d, ky, x0+off : x0+off+L]: plain vector FMAs, no
// horizontal sums, no layout change of the inputs. Each key row is first copied into a
// zero-padded buffer (D, Wk) (r*dil zeros each side), so that out-of-image columns read
// zeros: "zero" needs nothing more, "mask" sets those logits to -inf. Strips whose
// "clamp"-shifted windows are not a plain offset of the strip (the image edges) gather
// their keys into a small tile first.
//
// Grid: forward and the dq pass: at::parallel_for over B x H query rows; the dk/dv pass:
// over B x T x H key rows, each task summing, in a fixed order, the contributions of the
// query rows whose windows reach its key row (so results are deterministic). The fused
// local_attention keeps per strip only the online-softmax state (max, sum, C accumulators),
// never the T*P x H x W volume; its backward recomputes the logits from the saved lse.
namespace densecorr_cpu {
namespace DC_ISA {

constexpr int kChunk = 12;  // window cells per micro-kernel call: 12 accumulators + 2 temporaries

// S[j] = sum_r a[r*lda] * kb[j*ixs + r*ldk], j < NC (vectors over the strip's lanes).
template <typename T, int NC>
inline void dots_nc(int64_t R, const T* a, int64_t lda, const T* kb, int64_t ixs, int64_t ldk, V<T>* S) {
  V<T> acc[NC];
  for (int j = 0; j < NC; ++j) acc[j] = V<T>{};
  for (int64_t r = 0; r < R; ++r) {
    const V<T> av = vload(a + r * lda);
    const T* kr = kb + r * ldk;
    for (int j = 0; j < NC; ++j) acc[j] += av * vload(kr + j * ixs);
  }
  for (int j = 0; j < NC; ++j) S[j] = acc[j];
}
// acc[r] += sum_j w[j] * kb[j*ixs + r*ldk], j < NC.
template <typename T, int NC>
inline void wsum_nc(int64_t R, const V<T>* w, const T* kb, int64_t ixs, int64_t ldk, V<T>* acc) {
  V<T> ww[NC];
  for (int j = 0; j < NC; ++j) ww[j] = w[j];
  for (int64_t r = 0; r < R; ++r) {
    V<T> a = acc[r];
    const T* kr = kb + r * ldk;
    for (int j = 0; j < NC; ++j) a += ww[j] * vload(kr + j * ixs);
    acc[r] = a;
  }
}
template <typename T, int NC = kChunk - 1>
inline void dots_tail(int64_t m, int64_t R, const T* a, int64_t lda, const T* kb, int64_t ixs, int64_t ldk, V<T>* S) {
  if constexpr (NC >= 1) {
    if (m == NC) dots_nc<T, NC>(R, a, lda, kb, ixs, ldk, S);
    else dots_tail<T, NC - 1>(m, R, a, lda, kb, ixs, ldk, S);
  }
}
template <typename T, int NC = kChunk - 1>
inline void wsum_tail(int64_t m, int64_t R, const V<T>* w, const T* kb, int64_t ixs, int64_t ldk, V<T>* acc) {
  if constexpr (NC >= 1) {
    if (m == NC) wsum_nc<T, NC>(R, w, kb, ixs, ldk, acc);
    else wsum_tail<T, NC - 1>(m, R, w, kb, ixs, ldk, acc);
  }
}
template <typename T>
inline void dots(int64_t n, int64_t R, const T* a, int64_t lda, const T* kb, int64_t ixs, int64_t ldk, V<T>* S) {
  int64_t j = 0;
  for (; j + kChunk <= n; j += kChunk) dots_nc<T, kChunk>(R, a, lda, kb + j * ixs, ixs, ldk, S + j);
  if (j < n) dots_tail<T>(n - j, R, a, lda, kb + j * ixs, ixs, ldk, S + j);
}
template <typename T>
inline void wsum(int64_t n, int64_t R, const V<T>* w, const T* kb, int64_t ixs, int64_t ldk, V<T>* acc) {
  int64_t j = 0;
  for (; j + kChunk <= n; j += kChunk) wsum_nc<T, kChunk>(R, w + j, kb + j * ixs, ixs, ldk, acc);
  if (j < n) wsum_tail<T>(n - j, R, w + j, kb + j * ixs, ixs, ldk, acc);
}
// Two query rows against the same key cells (k loaded once for both):
// S0[j] = sum_r a0[r*lda] * kb[j*ixs + r*ldk], S1[j] likewise with a1, j < NC.
template <typename T, int NC>
inline void dots2_nc(int64_t R, const T* a0, const T* a1, int64_t lda, const T* kb, int64_t ixs, int64_t ldk,
                     V<T>* S0, V<T>* S1) {
  V<T> c0[NC], c1[NC];
  for (int j = 0; j < NC; ++j) c0[j] = c1[j] = V<T>{};
  for (int64_t r = 0; r < R; ++r) {
    const V<T> x0 = vload(a0 + r * lda), x1 = vload(a1 + r * lda);
    const T* kr = kb + r * ldk;
    for (int j = 0; j < NC; ++j) {
      V<T> kv = vload(kr + j * ixs);
#if defined(__AVX512F__)
      asm("" : "+v"(kv));  // keep kv in a register: GCC would fold (and repeat) the load into both FMAs
#elif defined(__AVX__)
      asm("" : "+x"(kv));  // keep kv in a register: GCC would fold (and repeat) the load into both FMAs
#endif
      c0[j] += x0 * kv;
      c1[j] += x1 * kv;
    }
  }
  for (int j = 0; j < NC; ++j) {
    S0[j] = c0[j];
    S1[j] = c1[j];
  }
}
constexpr int kChunk2 = 6;  // 2 x 6 accumulators + 2 query vectors + 1 key vector
template <typename T, int NC = kChunk2 - 1>
inline void dots2_tail(int64_t m, int64_t R, const T* a0, const T* a1, int64_t lda, const T* kb, int64_t ixs,
                       int64_t ldk, V<T>* S0, V<T>* S1) {
  if constexpr (NC >= 1) {
    if (m == NC) dots2_nc<T, NC>(R, a0, a1, lda, kb, ixs, ldk, S0, S1);
    else dots2_tail<T, NC - 1>(m, R, a0, a1, lda, kb, ixs, ldk, S0, S1);
  }
}
template <typename T>
inline void dots2(int64_t n, int64_t R, const T* a0, const T* a1, int64_t lda, const T* kb, int64_t ixs, int64_t ldk,
                  V<T>* S0, V<T>* S1) {
  int64_t j = 0;
  for (; j + kChunk2 <= n; j += kChunk2)
    dots2_nc<T, kChunk2>(R, a0, a1, lda, kb + j * ixs, ixs, ldk, S0 + j, S1 + j);
  if (j < n) dots2_tail<T>(n - j, R, a0, a1, lda, kb + j * ixs, ixs, ldk, S0 + j, S1 + j);
}

// dst[j*ixs + r*ldd] += w[j] * src[r*lds] (vectors), j < n, r < R.
template <typename T>
inline void scatter(int64_t n, int64_t R, const V<T>* w, const T* src, int64_t lds, T* dst, int64_t ixs, int64_t ldd) {
  for (int64_t j = 0; j < n; ++j) {
    const V<T> wj = w[j];
    T* dj = dst + j * ixs;
    for (int64_t r = 0; r < R; ++r) vstore(dj + r * ldd, vload(dj + r * ldd) + wj * vload(src + r * lds));
  }
}

// An array of n vectors, aligned to the vector size (a std::vector of vector types is not
// reliably over-aligned in this build).
template <typename T>
struct VBuf {
  std::vector<T> mem;
  V<T>* p;
  explicit VBuf(int64_t n) : mem((n + 1) * Vec<T>::W) {  // one spare vector for the alignment
    const auto addr = reinterpret_cast<uintptr_t>(mem.data());
    p = reinterpret_cast<V<T>*>((addr + (sizeof(V<T>) - 1)) & ~uintptr_t(sizeof(V<T>) - 1));
  }
  V<T>* data() { return p; }
  V<T>& operator[](int64_t i) { return p[i]; }
  void fill(V<T> x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) p[i] = x;
  }
};

// dst[r*ld + off + x] = src[r*rstride + x], x < W, r < R (the rest of dst keeps its zeros).
template <typename T>
inline void pack_rows(T* dst, int64_t ld, int64_t off, const T* src, int64_t rstride, int64_t R, int64_t W) {
  for (int64_t r = 0; r < R; ++r) std::memcpy(dst + r * ld + off, src + r * rstride, W * sizeof(T));
}

// Per-call geometry in strips, plus the per-thread buffers.
template <typename T>
struct Strips {
  static constexpr int L = Vec<T>::W;
  const Window& g;
  int64_t H, W, HW, nstrip, Wq, pad, Wk;
  std::vector<char> lin, edge;  // per strip: keys are a plain offset (fast path); touches the image edge
  typename Vec<T>::itype lanepos;  // 0, 1, .., L-1

  explicit Strips(const Window& g_) : g(g_), H(g_.H), W(g_.W), HW(g_.H * g_.W) {
    nstrip = ceil_div(W, L);
    Wq = nstrip * L;
    pad = g.r * g.dil;
    Wk = Wq + 2 * pad;
    for (int i = 0; i < L; ++i) lanepos[i] = i;
    lin.assign(nstrip, 1);
    edge.assign(nstrip, 0);
    for (int64_t s = 0; s < nstrip; ++s) {
      const int64_t x0 = s * L, nl = lanes(s);
      edge[s] = x0 - pad < 0 || x0 + nl - 1 + pad >= W;
      if (g.boundary == Boundary::Clamp)
        for (int64_t l = 0; l < nl; ++l) lin[s] &= g.start_x[x0 + l] == x0 + l - pad;
    }
  }
  int64_t lanes(int64_t s) const { return std::min<int64_t>(L, W - s * L); }
  int64_t cells(int64_t iy) const { return g.hi[iy] - g.lo[iy] + 1; }
  int64_t key_row(int64_t y, int64_t iy) const { return g.start_y[y] + iy * g.dil; }
  // The window row iy through which query row qy sees key row ky, or -1.
  int64_t window_row(int64_t qy, int64_t ky) const {
    const int64_t off = ky - g.start_y[qy];
    if (off < 0 || off % g.dil != 0 || off / g.dil > 2 * g.r) return -1;
    return off / g.dil;
  }
  // Where strip s reads window row iy's cells from a padded row buffer `row` (R rows of Wk):
  // element (cell j, channel r, lane) at base[j*ixs + r*ld + lane].
  struct Access {
    const T* base;
    int64_t ixs, ld;
  };
  Access access(const T* row, int64_t R, int64_t s, int64_t iy, T* tile) const {
    const int64_t x0 = s * L, lo = g.lo[iy];
    if (lin[s]) return {row + pad + x0 + (lo - g.r) * g.dil, g.dil, Wk};
    const int64_t n = cells(iy), nl = lanes(s);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t col = l < nl ? pad + g.start_x[x0 + l] + (lo + j) * g.dil : -1;
        for (int64_t r = 0; r < R; ++r) tile[(j * R + r) * L + l] = col >= 0 ? row[r * Wk + col] : T(0);
      }
    return {tile, R * L, L};
  }
  // Adjoint of access for the dk/dv pass: DST (R rows of Wk) gets w[j] * src[r] at the
  // strip's cells of window row iy.
  void scatter_to(int64_t n, int64_t R, const V<T>* w, const T* src, int64_t lds, T* DST, int64_t s,
                  int64_t iy) const {
    const int64_t x0 = s * L, lo = g.lo[iy];
    if (lin[s]) return scatter(n, R, w, src, lds, DST + pad + x0 + (lo - g.r) * g.dil, g.dil, Wk);
    const int64_t nl = lanes(s);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t l = 0; l < nl; ++l) {
        const int64_t col = pad + g.start_x[x0 + l] + (lo + j) * g.dil;
        const T wl = w[j][l];
        for (int64_t r = 0; r < R; ++r) DST[r * Wk + col] += wl * src[r * lds + l];
      }
  }
  // boundary "mask": lanes of S[j] whose key column is outside the image get `fill`.
  // In integers: lane l's key column s*L + l + off lies outside [0, W) iff l < -(s*L + off)
  // or l >= W - (s*L + off); both bounds are clamped to [-1, L] first, so that the lane
  // comparison stays exact for any width (float columns are inexact beyond 2^24).
  void mask_cols(V<T>* S, int64_t n, int64_t s, int64_t iy, T fill) const {
    if (g.boundary != Boundary::Mask || !edge[s]) return;
    typedef typename Vec<T>::itype I;
    typedef std::remove_cvref_t<decltype(I{}[0])> IE;
    const V<T> f = vsplat(fill);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t col0 = s * L + (g.lo[iy] + j - g.r) * g.dil;  // column of lane 0
      const IE lo = IE(std::clamp<int64_t>(-col0, -1, L)), hi = IE(std::clamp<int64_t>(W - col0, -1, L));
      const I out = (lanepos < lo) | (lanepos >= hi);
      S[j] = (V<T>)(((I)S[j] & ~out) | ((I)f & out));
    }
  }
  V<T> load(const T* p, int64_t s) const {
    const int64_t nl = lanes(s);
    return nl == L ? vload(p) : vload_partial(p, nl);
  }
  void store(T* p, V<T> x, int64_t s) const {
    const int64_t nl = lanes(s);
    if (nl == L) vstore(p, x);
    else vstore_partial(p, x, nl);
  }
};

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// ---------------------------------------------------------------------------- local_attention

// local_attention forward without top-k. A task is a pair of query rows on the same dilation
// sub-grid (y, y + dil): their windows share most key rows, and for a shared row (same cells)
// one pass over the keys serves both (dots2: half the key loads). Per row and strip the
// online-softmax state (m, l, C accumulators) folds in one window row of cells at a time, in
// window order, exactly as a single row would.
template <typename T>
void local_attention_fwd_pairs(const Window& g, const T* q, const T* k, const T* v, T* out, T* lse, int64_t B,
                               int64_t D, int64_t C, T scale) {
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1;
  std::vector<int64_t> first, second;  // the task's rows (second = -1: a single row)
  for (int64_t res = 0; res < std::min(g.dil, H); ++res)
    for (int64_t y = res; y < H; y += 2 * g.dil) {
      first.push_back(y);
      second.push_back(y + g.dil < H ? y + g.dil : -1);
    }
  const int64_t npair = first.size();
  parallel_for(0, B * npair, grain_for(2 * W * Tn * P * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(2 * D * st.Wq, T(0)), krow(D * st.Wk, T(0)), vrow(C * st.Wk, T(0));
    std::vector<T> tile(nmax * std::max(D, C) * L);
    VBuf<T> S(2 * nmax), m(2 * ns), l(2 * ns), acc(2 * ns * C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / npair, pr = task % npair;
      const int64_t rows[2] = {first[pr], second[pr]}, nrow = rows[1] >= 0 ? 2 : 1;
      for (int64_t i = 0; i < nrow; ++i)
        pack_rows(qrow.data() + i * D * st.Wq, st.Wq, 0, q + b * D * HW + rows[i] * W, HW, D, W);
      m.fill(vsplat(neg_inf<T>()), 2 * ns);
      l.fill(V<T>{}, 2 * ns);
      acc.fill(V<T>{}, 2 * ns * C);
      int64_t nzero[2] = {0, 0};  // "zero": cells of out-of-image rows (logit 0, value 0)
      int64_t ky0 = g.start_y[rows[0]], ky1 = ky0 + 2 * g.r * g.dil;
      if (nrow == 2) {
        ky0 = std::min(ky0, g.start_y[rows[1]]);
        ky1 = std::max(ky1, g.start_y[rows[1]] + 2 * g.r * g.dil);
      }
      for (int64_t t = 0; t < Tn; ++t) {
        for (int64_t ky = ky0; ky <= ky1; ++ky) {
          int64_t iy[2] = {-1, -1};
          for (int64_t i = 0; i < nrow; ++i) {
            const int64_t off = ky - g.start_y[rows[i]];
            if (off >= 0 && off % g.dil == 0 && off / g.dil <= 2 * g.r) iy[i] = off / g.dil;
          }
          if (iy[0] < 0 && iy[1] < 0) continue;
          if (!g.row_inside(ky)) {
            if (g.boundary == Boundary::Zero)
              for (int64_t i = 0; i < nrow; ++i)
                if (iy[i] >= 0) nzero[i] += st.cells(iy[i]);
            continue;
          }
          pack_rows(krow.data(), st.Wk, st.pad, k + (b * Tn + t) * D * HW + ky * W, HW, D, W);
          pack_rows(vrow.data(), st.Wk, st.pad, v + (b * Tn + t) * C * HW + ky * W, HW, C, W);
          const bool joint = iy[0] >= 0 && iy[1] >= 0 && g.lo[iy[0]] == g.lo[iy[1]] && g.hi[iy[0]] == g.hi[iy[1]];
          for (int64_t s = 0; s < ns; ++s) {
            const int64_t x0 = s * L;
            if (joint) {
              const auto ka = st.access(krow.data(), D, s, iy[0], tile.data());
              dots2(st.cells(iy[0]), D, qrow.data() + x0, qrow.data() + D * st.Wq + x0, st.Wq, ka.base, ka.ixs, ka.ld,
                    S.data(), S.data() + nmax);
            }
            for (int64_t i = 0; i < nrow; ++i) {
              if (iy[i] < 0) continue;
              const int64_t n = st.cells(iy[i]);
              V<T>* Si = S.data() + i * nmax;
              if (!joint) {
                const auto ka = st.access(krow.data(), D, s, iy[i], tile.data());
                dots(n, D, qrow.data() + i * D * st.Wq + x0, st.Wq, ka.base, ka.ixs, ka.ld, Si);
              }
              for (int64_t j = 0; j < n; ++j) Si[j] *= scale;
              st.mask_cols(Si, n, s, iy[i], neg_inf<T>());
              // Online softmax: fold this window row into the strip's (m, l, acc).
              V<T>& mi = m[i * ns + s];
              V<T>& li = l[i * ns + s];
              V<T> mx = Si[0];
              for (int64_t j = 1; j < n; ++j) mx = vmax(mx, Si[j]);
              const V<T> m_new = vmax(mi, mx);
              const V<T> m_use = m_new == neg_inf<T>() ? V<T>{} : m_new;  // all -inf so far: avoid inf - inf
              const V<T> alpha = vexp(mi - m_use);
              V<T> sum{};
              for (int64_t j = 0; j < n; ++j) sum += (Si[j] = vexp(Si[j] - m_use));
              li = li * alpha + sum;
              mi = m_new;
              V<T>* a = acc.data() + (i * ns + s) * C;
              for (int64_t c = 0; c < C; ++c) a[c] *= alpha;
              const auto va = st.access(vrow.data(), C, s, iy[i], tile.data());
              wsum(n, C, Si, va.base, va.ixs, va.ld, a);
            }
          }
        }
      }
      for (int64_t i = 0; i < nrow; ++i) {
        const int64_t y = rows[i], row = (b * H + y) * W;
        for (int64_t s = 0; s < ns; ++s) {
          V<T>& mi = m[i * ns + s];
          V<T>& li = l[i * ns + s];
          V<T>* a = acc.data() + (i * ns + s) * C;
          if (nzero[i] > 0) {  // the "zero" cells outside the image, all at logit 0
            const V<T> m_new = vmax(mi, V<T>{});
            const V<T> alpha = vexp(mi - m_new);
            li = li * alpha + T(nzero[i]) * vexp(-m_new);
            for (int64_t c = 0; c < C; ++c) a[c] *= alpha;
            mi = m_new;
          }
          const V<T> inv = T(1) / li;
          for (int64_t c = 0; c < C; ++c) st.store(out + (b * C + c) * HW + y * W + s * L, a[c] * inv, s);
          V<T> ls;
          for (int z = 0; z < L; ++z) ls[z] = mi[z] + std::log(li[z]);
          st.store(lse + row + s * L, ls, s);
        }
      }
    }
  });
}

// local_attention forward; with top-k, a running top-k per pixel over its T*P window cells
// (vector pre-check against the per-lane thresholds), then the softmax over the kept cells and
// the weighted sum of their values, gathered.
template <typename T>
void local_attention_fwd_k(const Window& g, const T* q, const T* k, const T* v, T* out, T* lse, int64_t* idx,
                           int64_t B, int64_t D, int64_t C, T scale, int64_t topk) {
  if (topk == 0) return local_attention_fwd_pairs(g, q, k, v, out, lse, B, D, C, scale);
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1;
  parallel_for(0, B * H, grain_for(W * Tn * P * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(D * st.Wq, T(0)), krow(D * st.Wk, T(0)), tile(nmax * D * L), vals(C);
    VBuf<T> S(nmax), thr(ns);
    std::vector<Cand<T>> cands(W * 2 * topk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      pack_rows(qrow.data(), st.Wq, 0, q + b * D * HW + y * W, HW, D, W);
      thr.fill(vsplat(neg_inf<T>()), ns);
      std::vector<TopK<T>> tops;
      for (int64_t x = 0; x < W; ++x) tops.emplace_back(cands.data() + x * 2 * topk, topk);
      for (int64_t t = 0; t < Tn; ++t) {
        for (int64_t iy = 0; iy <= 2 * g.r; ++iy) {
          const int64_t ky = st.key_row(y, iy), n = st.cells(iy), pbase = t * P + g.row_base[iy];
          if (!g.row_inside(ky)) {  // logit 0 ("zero") or -inf ("mask") for the whole row
            const T val = g.boundary == Boundary::Zero ? T(0) : neg_inf<T>();
            for (int64_t x = 0; x < W; ++x)
              for (int64_t j = 0; j < n && tops[x].wants(val); ++j) tops[x].push(val, pbase + j);
            continue;
          }
          pack_rows(krow.data(), st.Wk, st.pad, k + (b * Tn + t) * D * HW + ky * W, HW, D, W);
          for (int64_t s = 0; s < ns; ++s) {
            const int64_t x0 = s * L;
            const auto ka = st.access(krow.data(), D, s, iy, tile.data());
            dots(n, D, qrow.data() + x0, st.Wq, ka.base, ka.ixs, ka.ld, S.data());
            for (int64_t j = 0; j < n; ++j) S[j] *= scale;
            st.mask_cols(S.data(), n, s, iy, neg_inf<T>());
            typename Vec<T>::itype any{};
            for (int64_t j = 0; j < n; ++j) any |= (S[j] > thr[s]) | (thr[s] == neg_inf<T>());
            bool hit = false;
            for (int i = 0; i < L; ++i) hit |= any[i] != 0;
            if (!hit) continue;
            const int64_t nl = st.lanes(s);
            for (int64_t li = 0; li < nl; ++li) {
              TopK<T>& tp = tops[x0 + li];
              for (int64_t j = 0; j < n; ++j)
                if (tp.wants(S[j][li])) tp.push(S[j][li], pbase + j);
              thr[s][li] = tp.cut ? tp.thresh : neg_inf<T>();
            }
          }
        }
      }
      const int64_t row = (b * H + y) * W;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t n = tops[x].finish();
        const Cand<T>* c = tops[x].buf;
        const T mx = c[0].v;
        T sum = 0;
        std::fill(vals.begin(), vals.end(), T(0));
        for (int64_t j = 0; j < n; ++j) {
          const T p = std::exp(c[j].v - mx);
          sum += p;
          const int64_t t = c[j].i / P, pp = c[j].i % P;
          const int64_t ky = g.start_y[y] + g.pos_iy[pp] * g.dil, kx = g.start_x[x] + g.pos_ix[pp] * g.dil;
          if (g.row_inside(ky) && g.col_inside(kx))  // else a "zero" cell (value 0) or excluded (p = 0)
            for (int64_t cc = 0; cc < C; ++cc) vals[cc] += p * v[((b * Tn + t) * C + cc) * HW + ky * W + kx];
          idx[(row + x) * topk + j] = c[j].i;
        }
        for (int64_t cc = 0; cc < C; ++cc) out[(b * C + cc) * HW + y * W + x] = vals[cc] / sum;
        lse[row + x] = mx + std::log(sum);
      }
    }
  });
}

// Backward with top-k (and the generic per-pair path): pairs (query pixel, kept cell).
// Pass 1 (query rows in parallel): P, dS of each pair and dq; pass 2 groups the pairs by key
// pixel (counting sort in query order) and sums them per key in parallel.
template <typename T>
void local_attention_bwd_topk(const Window& g, const T* q, const T* k, const T* v, const T* dout, const T* delta,
                              const T* lse, const int64_t* idx, T* dq, T* dk, T* dv, int64_t B, int64_t D, int64_t C,
                              T scale, int64_t topk) {
  const int64_t H = g.H, W = g.W, HW = H * W, Tn = g.T, P = g.P, NK = HW * topk, nkeys = Tn * HW;
  std::vector<T> Pv(NK), dS(NK);
  std::vector<int64_t> key(NK), start(nkeys + 1), order(NK);
  for (int64_t b = 0; b < B; ++b) {
    const T* qb = q + b * D * HW;
    const T* kb = k + b * Tn * D * HW;
    const T* vb = v + b * Tn * C * HW;
    const T* gb = dout + b * C * HW;
    parallel_for(0, H, grain_for(W * topk * (D + C)), [&](int64_t begin, int64_t end) {
      for (int64_t y = begin; y < end; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const int64_t px = y * W + x;
          for (int64_t d = 0; d < D; ++d) dq[(b * D + d) * HW + px] = 0;
          for (int64_t j = 0; j < topk; ++j) {
            const int64_t e = px * topk + j, pos = idx[(b * HW + px) * topk + j];
            const int64_t t = pos / P, pp = pos % P;
            const int64_t ky = g.start_y[y] + g.pos_iy[pp] * g.dil, kx = g.start_x[x] + g.pos_ix[pp] * g.dil;
            key[e] = -1;
            Pv[e] = dS[e] = 0;
            if (!g.row_inside(ky) || !g.col_inside(kx)) continue;  // "zero"/"mask" cells: constants
            const int64_t kp = t * HW + ky * W + kx;
            T s = 0, dp = 0;
            for (int64_t d = 0; d < D; ++d) s += qb[d * HW + px] * kb[(t * D + d) * HW + ky * W + kx];
            for (int64_t c = 0; c < C; ++c) dp += gb[c * HW + px] * vb[(t * C + c) * HW + ky * W + kx];
            const T p = std::exp(scale * s - lse[b * HW + px]);
            const T ds = p * (dp - delta[b * HW + px]);
            key[e] = kp;
            Pv[e] = p;
            dS[e] = ds;
            for (int64_t d = 0; d < D; ++d) dq[(b * D + d) * HW + px] += scale * ds * kb[(t * D + d) * HW + ky * W + kx];
          }
        }
    });
    std::fill(start.begin(), start.end(), 0);
    for (int64_t e = 0; e < NK; ++e)
      if (key[e] >= 0) ++start[key[e] + 1];
    for (int64_t i = 0; i < nkeys; ++i) start[i + 1] += start[i];
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t e = 0; e < NK; ++e)
        if (key[e] >= 0) order[fill[key[e]]++] = e;
    }
    parallel_for(0, nkeys, grain_for(topk * (D + C)), [&](int64_t begin, int64_t end) {
      for (int64_t kp = begin; kp < end; ++kp) {
        const int64_t t = kp / HW, pix = kp % HW;
        for (int64_t d = 0; d < D; ++d) {
          T a = 0;
          for (int64_t s = start[kp]; s < start[kp + 1]; ++s) a += dS[order[s]] * qb[d * HW + order[s] / topk];
          dk[((b * Tn + t) * D + d) * HW + pix] = scale * a;
        }
        for (int64_t c = 0; c < C; ++c) {
          T a = 0;
          for (int64_t s = start[kp]; s < start[kp + 1]; ++s) a += Pv[order[s]] * gb[c * HW + order[s] / topk];
          dv[((b * Tn + t) * C + c) * HW + pix] = a;
        }
      }
    });
  }
}

template <typename T>
void local_attention_bwd_k(const Window& g, const T* q, const T* k, const T* v, const T* dout, const T* delta,
                           const T* lse, T* dq, T* dk, T* dv, int64_t B, int64_t D, int64_t C, T scale) {
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1;
  // Pass 1: dq, query rows in parallel.
  parallel_for(0, B * H, grain_for(W * Tn * P * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(D * st.Wq, T(0)), grow(C * st.Wq, T(0)), lrow(st.Wq, INFINITY), drow(st.Wq, T(0));
    std::vector<T> krow(D * st.Wk, T(0)), vrow(C * st.Wk, T(0)), ktile(nmax * D * L), vtile(nmax * C * L);
    VBuf<T> S(nmax), dP(nmax), DQ(ns * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      pack_rows(qrow.data(), st.Wq, 0, q + b * D * HW + y * W, HW, D, W);
      pack_rows(grow.data(), st.Wq, 0, dout + b * C * HW + y * W, HW, C, W);
      pack_rows(lrow.data(), st.Wq, 0, lse + (b * H + y) * W, 0, 1, W);
      pack_rows(drow.data(), st.Wq, 0, delta + (b * H + y) * W, 0, 1, W);
      DQ.fill(V<T>{}, ns * D);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t iy = 0; iy <= 2 * g.r; ++iy) {
          const int64_t ky = st.key_row(y, iy), n = st.cells(iy);
          if (!g.row_inside(ky)) continue;  // constant keys: no dq
          pack_rows(krow.data(), st.Wk, st.pad, k + (b * Tn + t) * D * HW + ky * W, HW, D, W);
          pack_rows(vrow.data(), st.Wk, st.pad, v + (b * Tn + t) * C * HW + ky * W, HW, C, W);
          for (int64_t s = 0; s < ns; ++s) {
            const int64_t x0 = s * L;
            const auto ka = st.access(krow.data(), D, s, iy, ktile.data());
            const auto va = st.access(vrow.data(), C, s, iy, vtile.data());
            dots(n, D, qrow.data() + x0, st.Wq, ka.base, ka.ixs, ka.ld, S.data());
            dots(n, C, grow.data() + x0, st.Wq, va.base, va.ixs, va.ld, dP.data());
            const V<T> lv = vload(lrow.data() + x0), dv_ = vload(drow.data() + x0);
            // Out-of-image cells read zero keys and values: their dS multiplies a zero key.
            for (int64_t j = 0; j < n; ++j) S[j] = vexp(S[j] * scale - lv) * (dP[j] - dv_);
            wsum(n, D, S.data(), ka.base, ka.ixs, ka.ld, DQ.data() + s * D);
          }
        }
      for (int64_t s = 0; s < ns; ++s)
        for (int64_t d = 0; d < D; ++d) st.store(dq + (b * D + d) * HW + y * W + s * L, DQ[s * D + d] * scale, s);
    }
  });
  // Pass 2: dk, dv, key rows in parallel; each gathers the query rows that see it.
  parallel_for(0, B * Tn * H, grain_for(W * P * (D + C)), [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(D * st.Wq, T(0)), grow(C * st.Wq, T(0)), lrow(st.Wq, INFINITY), drow(st.Wq, T(0));
    std::vector<T> krow(D * st.Wk, T(0)), vrow(C * st.Wk, T(0)), ktile(nmax * D * L), vtile(nmax * C * L);
    std::vector<T> DK(D * st.Wk), DV(C * st.Wk);
    VBuf<T> S(nmax), dP(nmax);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (Tn * H), t = (task / H) % Tn, ky = task % H;
      pack_rows(krow.data(), st.Wk, st.pad, k + (b * Tn + t) * D * HW + ky * W, HW, D, W);
      pack_rows(vrow.data(), st.Wk, st.pad, v + (b * Tn + t) * C * HW + ky * W, HW, C, W);
      std::fill(DK.begin(), DK.end(), T(0));
      std::fill(DV.begin(), DV.end(), T(0));
      const int64_t reach = 2 * g.r * g.dil;
      for (int64_t qy = std::max<int64_t>(0, ky - reach); qy <= std::min(H - 1, ky + reach); ++qy) {
        const int64_t iy = st.window_row(qy, ky);
        if (iy < 0) continue;
        const int64_t n = st.cells(iy);
        pack_rows(qrow.data(), st.Wq, 0, q + b * D * HW + qy * W, HW, D, W);
        pack_rows(grow.data(), st.Wq, 0, dout + b * C * HW + qy * W, HW, C, W);
        pack_rows(lrow.data(), st.Wq, 0, lse + (b * H + qy) * W, 0, 1, W);
        pack_rows(drow.data(), st.Wq, 0, delta + (b * H + qy) * W, 0, 1, W);
        for (int64_t s = 0; s < ns; ++s) {
          const int64_t x0 = s * L;
          const auto ka = st.access(krow.data(), D, s, iy, ktile.data());
          const auto va = st.access(vrow.data(), C, s, iy, vtile.data());
          dots(n, D, qrow.data() + x0, st.Wq, ka.base, ka.ixs, ka.ld, S.data());
          dots(n, C, grow.data() + x0, st.Wq, va.base, va.ixs, va.ld, dP.data());
          const V<T> lv = vload(lrow.data() + x0), dv_ = vload(drow.data() + x0);
          for (int64_t j = 0; j < n; ++j) {
            S[j] = vexp(S[j] * scale - lv);  // P (0 on padded lanes: lse = +inf there)
            dP[j] = S[j] * (dP[j] - dv_);    // dS
          }
          // Out-of-image cells land in DK/DV's padding, dropped below.
          st.scatter_to(n, D, dP.data(), qrow.data() + x0, st.Wq, DK.data(), s, iy);
          st.scatter_to(n, C, S.data(), grow.data() + x0, st.Wq, DV.data(), s, iy);
        }
      }
      for (int64_t d = 0; d < D; ++d)
        for (int64_t x = 0; x < W; ++x) dk[((b * Tn + t) * D + d) * HW + ky * W + x] = scale * DK[d * st.Wk + st.pad + x];
      for (int64_t c = 0; c < C; ++c)
        for (int64_t x = 0; x < W; ++x) dv[((b * Tn + t) * C + c) * HW + ky * W + x] = DV[c * st.Wk + st.pad + x];
    }
  });
}

// ---------------------------------------------------------------------------- local_affinity

template <typename T>
void local_affinity_fwd_k(const Window& g, const T* q, const T* k, T* attn, int64_t B, int64_t D, T scale,
                          bool normalize) {
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1, TP = Tn * P;
  parallel_for(0, B * H, grain_for(W * Tn * P * D), [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(D * st.Wq, T(0)), krow(D * st.Wk, T(0)), tile(nmax * D * L);
    VBuf<T> S(nmax);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      T* ab = attn + b * TP * HW + y * W;
      pack_rows(qrow.data(), st.Wq, 0, q + b * D * HW + y * W, HW, D, W);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t iy = 0; iy <= 2 * g.r; ++iy) {
          const int64_t ky = st.key_row(y, iy), n = st.cells(iy), pbase = t * P + g.row_base[iy];
          if (!g.row_inside(ky)) {
            const T fill = g.boundary == Boundary::Zero ? T(0) : neg_inf<T>();
            for (int64_t j = 0; j < n; ++j) std::fill(ab + (pbase + j) * HW, ab + (pbase + j) * HW + W, fill);
            continue;
          }
          pack_rows(krow.data(), st.Wk, st.pad, k + (b * Tn + t) * D * HW + ky * W, HW, D, W);
          for (int64_t s = 0; s < ns; ++s) {
            const auto ka = st.access(krow.data(), D, s, iy, tile.data());
            dots(n, D, qrow.data() + s * L, st.Wq, ka.base, ka.ixs, ka.ld, S.data());
            for (int64_t j = 0; j < n; ++j) S[j] *= scale;
            st.mask_cols(S.data(), n, s, iy, neg_inf<T>());
            for (int64_t j = 0; j < n; ++j) st.store(ab + (pbase + j) * HW + s * L, S[j], s);
          }
        }
      if (!normalize) continue;
      for (int64_t s = 0; s < ns; ++s) {  // joint softmax over the T*P cells, per pixel
        T* as = ab + s * L;
        V<T> mx = vsplat(neg_inf<T>());
        for (int64_t p = 0; p < TP; ++p) mx = vmax(mx, st.load(as + p * HW, s));
        V<T> sum{};
        for (int64_t p = 0; p < TP; ++p) {
          const V<T> e = vexp(st.load(as + p * HW, s) - mx);
          sum += e;
          st.store(as + p * HW, e, s);
        }
        const V<T> inv = T(1) / sum;
        for (int64_t p = 0; p < TP; ++p) st.store(as + p * HW, st.load(as + p * HW, s) * inv, s);
      }
    }
  });
}

// dlogits of local_affinity at cells [pbase, pbase+n) of strip s of the row whose attn/grad
// rows start at ab/gb: normalize: A (G - sum_p G A); else G, 0 where the logit is -inf.
template <typename T>
inline void affinity_dlogits(const Strips<T>& st, const T* ab, const T* gb, V<T> rd, int64_t pbase, int64_t n,
                             int64_t s, bool normalize, V<T>* out) {
  const int64_t off = s * Strips<T>::L;
  for (int64_t j = 0; j < n; ++j) {
    const V<T> a = st.load(ab + (pbase + j) * st.HW + off, s), gr = st.load(gb + (pbase + j) * st.HW + off, s);
    out[j] = normalize ? a * (gr - rd) : (a == neg_inf<T>() ? V<T>{} : gr);
  }
}

template <typename T>
void local_affinity_bwd_k(const Window& g, const T* grad, const T* q, const T* k, const T* attn, T* dq, T* dk,
                          int64_t B, int64_t D, T scale, bool normalize) {
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1, TP = Tn * P;
  std::vector<T> rowdot(normalize ? B * H * st.Wq : 0);  // sum_p G A per pixel (softmax adjoint)
  parallel_for(0, B * H, grain_for(W * Tn * P * D), [&](int64_t begin, int64_t end) {
    std::vector<T> krow(D * st.Wk, T(0)), tile(nmax * D * L);
    VBuf<T> S(nmax), DQ(ns * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      const T* ab = attn + b * TP * HW + y * W;
      const T* gb = grad + b * TP * HW + y * W;
      T* rd = normalize ? rowdot.data() + (b * H + y) * st.Wq : nullptr;
      if (normalize)
        for (int64_t s = 0; s < ns; ++s) {
          V<T> acc{};
          for (int64_t p = 0; p < TP; ++p) acc += st.load(ab + p * HW + s * L, s) * st.load(gb + p * HW + s * L, s);
          vstore(rd + s * L, acc);
        }
      DQ.fill(V<T>{}, ns * D);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t iy = 0; iy <= 2 * g.r; ++iy) {
          const int64_t ky = st.key_row(y, iy), n = st.cells(iy), pbase = t * P + g.row_base[iy];
          if (!g.row_inside(ky)) continue;
          pack_rows(krow.data(), st.Wk, st.pad, k + (b * Tn + t) * D * HW + ky * W, HW, D, W);
          for (int64_t s = 0; s < ns; ++s) {
            const auto ka = st.access(krow.data(), D, s, iy, tile.data());
            affinity_dlogits(st, ab, gb, normalize ? vload(rd + s * L) : V<T>{}, pbase, n, s, normalize, S.data());
            wsum(n, D, S.data(), ka.base, ka.ixs, ka.ld, DQ.data() + s * D);
          }
        }
      for (int64_t s = 0; s < ns; ++s)
        for (int64_t d = 0; d < D; ++d) st.store(dq + (b * D + d) * HW + y * W + s * L, DQ[s * D + d] * scale, s);
    }
  });
  parallel_for(0, B * Tn * H, grain_for(W * P * D), [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(D * st.Wq, T(0)), DK(D * st.Wk);
    VBuf<T> S(nmax);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (Tn * H), t = (task / H) % Tn, ky = task % H;
      std::fill(DK.begin(), DK.end(), T(0));
      const int64_t reach = 2 * g.r * g.dil;
      for (int64_t qy = std::max<int64_t>(0, ky - reach); qy <= std::min(H - 1, ky + reach); ++qy) {
        const int64_t iy = st.window_row(qy, ky);
        if (iy < 0) continue;
        const int64_t n = st.cells(iy), pbase = t * P + g.row_base[iy];
        const T* ab = attn + b * TP * HW + qy * W;
        const T* gb = grad + b * TP * HW + qy * W;
        const T* rd = normalize ? rowdot.data() + (b * H + qy) * st.Wq : nullptr;
        pack_rows(qrow.data(), st.Wq, 0, q + b * D * HW + qy * W, HW, D, W);
        for (int64_t s = 0; s < ns; ++s) {
          affinity_dlogits(st, ab, gb, normalize ? vload(rd + s * L) : V<T>{}, pbase, n, s, normalize, S.data());
          st.scatter_to(n, D, S.data(), qrow.data() + s * L, st.Wq, DK.data(), s, iy);
        }
      }
      for (int64_t d = 0; d < D; ++d)
        for (int64_t x = 0; x < W; ++x) dk[((b * Tn + t) * D + d) * HW + ky * W + x] = scale * DK[d * st.Wk + st.pad + x];
    }
  });
}

// ---------------------------------------------------------------------------- local_copy

template <typename T>
void local_copy_fwd_k(const Window& g, const T* attn, const T* v, T* out, int64_t B, int64_t C) {
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1, TP = Tn * P;
  parallel_for(0, B * H, grain_for(W * Tn * P * C), [&](int64_t begin, int64_t end) {
    std::vector<T> vrow(C * st.Wk, T(0)), tile(nmax * C * L);
    VBuf<T> S(nmax), acc(ns * C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      const T* ab = attn + b * TP * HW + y * W;
      acc.fill(V<T>{}, ns * C);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t iy = 0; iy <= 2 * g.r; ++iy) {
          const int64_t ky = st.key_row(y, iy), n = st.cells(iy), pbase = t * P + g.row_base[iy];
          if (!g.row_inside(ky)) continue;  // zero values ("zero") or excluded ("mask")
          pack_rows(vrow.data(), st.Wk, st.pad, v + (b * Tn + t) * C * HW + ky * W, HW, C, W);
          for (int64_t s = 0; s < ns; ++s) {
            for (int64_t j = 0; j < n; ++j) S[j] = st.load(ab + (pbase + j) * HW + s * L, s);
            const auto va = st.access(vrow.data(), C, s, iy, tile.data());
            wsum(n, C, S.data(), va.base, va.ixs, va.ld, acc.data() + s * C);
          }
        }
      for (int64_t s = 0; s < ns; ++s)
        for (int64_t c = 0; c < C; ++c) st.store(out + (b * C + c) * HW + y * W + s * L, acc[s * C + c], s);
    }
  });
}

template <typename T>
void local_copy_bwd_k(const Window& g, const T* grad, const T* attn, const T* v, T* dattn, T* dv, int64_t B,
                      int64_t C) {
  const Strips<T> st(g);
  constexpr int L = Strips<T>::L;
  const int64_t H = g.H, W = g.W, HW = st.HW, Tn = g.T, P = g.P, ns = st.nstrip, nmax = 2 * g.r + 1, TP = Tn * P;
  parallel_for(0, B * H, grain_for(W * Tn * P * C), [&](int64_t begin, int64_t end) {
    std::vector<T> grow(C * st.Wq, T(0)), vrow(C * st.Wk, T(0)), tile(nmax * C * L);
    VBuf<T> S(nmax);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      T* db = dattn + b * TP * HW + y * W;
      pack_rows(grow.data(), st.Wq, 0, grad + b * C * HW + y * W, HW, C, W);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t iy = 0; iy <= 2 * g.r; ++iy) {
          const int64_t ky = st.key_row(y, iy), n = st.cells(iy), pbase = t * P + g.row_base[iy];
          if (!g.row_inside(ky)) {
            for (int64_t j = 0; j < n; ++j) std::fill(db + (pbase + j) * HW, db + (pbase + j) * HW + W, T(0));
            continue;
          }
          pack_rows(vrow.data(), st.Wk, st.pad, v + (b * Tn + t) * C * HW + ky * W, HW, C, W);
          for (int64_t s = 0; s < ns; ++s) {
            const auto va = st.access(vrow.data(), C, s, iy, tile.data());
            dots(n, C, grow.data() + s * L, st.Wq, va.base, va.ixs, va.ld, S.data());
            for (int64_t j = 0; j < n; ++j) st.store(db + (pbase + j) * HW + s * L, S[j], s);
          }
        }
    }
  });
  parallel_for(0, B * Tn * H, grain_for(W * P * C), [&](int64_t begin, int64_t end) {
    std::vector<T> grow(C * st.Wq, T(0)), DV(C * st.Wk);
    VBuf<T> S(nmax);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (Tn * H), t = (task / H) % Tn, ky = task % H;
      std::fill(DV.begin(), DV.end(), T(0));
      const int64_t reach = 2 * g.r * g.dil;
      for (int64_t qy = std::max<int64_t>(0, ky - reach); qy <= std::min(H - 1, ky + reach); ++qy) {
        const int64_t iy = st.window_row(qy, ky);
        if (iy < 0) continue;
        const int64_t n = st.cells(iy), pbase = t * P + g.row_base[iy];
        const T* ab = attn + b * TP * HW + qy * W;
        pack_rows(grow.data(), st.Wq, 0, grad + b * C * HW + qy * W, HW, C, W);
        for (int64_t s = 0; s < ns; ++s) {
          for (int64_t j = 0; j < n; ++j) S[j] = st.load(ab + (pbase + j) * HW + s * L, s);
          st.scatter_to(n, C, S.data(), grow.data() + s * L, st.Wq, DV.data(), s, iy);
        }
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t x = 0; x < W; ++x) dv[((b * Tn + t) * C + c) * HW + ky * W + x] = DV[c * st.Wk + st.pad + x];
    }
  });
}

}  // namespace DC_ISA
}  // namespace densecorr_cpu
