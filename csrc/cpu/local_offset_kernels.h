// Local kernels with a per-query, per-reference window offset (local_offset_*; the contract
// is in densecorr/ops/local_ops.py), forward and backward. No include guard: see simd.h.
//
// What is computed: query pixel (y, x), reference t, window cell p = (py, px) reads k and v
// bilinearly at (y + oy + py*dil, x + ox + px*dil), (oy, ox) = offset[b, t, :, y, x].
// The offset is the same for every cell of the pixel's window, so all cells share one pair of
// fractions (fy, fx) and their 4 taps lie on one "tap grid" of G x G key pixels
// (G = 2*r*dil + 2) whose corner is (Y0, X0) = (y + floor(oy) - r*dil, x + floor(ox) - r*dil):
// cell (iy, ix) has the taps at grid (iy*dil + {0,1}, ix*dil + {0,1}). By linearity
//   logit(p) = scale * sum_taps w_tap * (q . k[tap])
// so a unit (pixel, reference) first computes the raw dots R = q . k over the grid (G^2 dots
// instead of 4 P; about the cost of the plain op, ~(2r+2)^2 / (2r+1)^2), then combines them;
// the adjoints work the same way backwards: the per-cell coefficients (softmax weights, dS)
// are spread onto the grid with the bilinear weights and the grid is applied to v / k (out,
// dq) or scattered to dk / dv once per grid pixel.
//
// Layout: the offsets differ from pixel to pixel, so the plain kernels' vectorisation over
// query pixels does not apply; these vectorise over the grid's columns instead. k and v are
// first copied, per (b, t), into "packed rows" XP (H, E, Wpad): key row ky holds its E
// channels, each a contiguous row of W values with Gv (grid width rounded up to the vector
// width) zeros on both sides, so that a grid row is E contiguous runs of Gv values at column
// pad + X0 (taps outside the image read those zeros; grids entirely left/right of the image
// are skipped).
//
// Parallelism: forward and the dq pass: tiles of query pixels (PixelTiles) in parallel. dk / dv pass: tasks are
// (b, t, block of kBlock key rows), each with its own block buffer; a task visits, in a fixed
// order (grid corner row, then pixel), the query pixels whose grid reaches its rows (bucketed
// by Y0) and recomputes only the window rows whose taps land in its block. Every key pixel's
// sum is taken in that fixed order, so results do not depend on the thread count.
namespace densecorr_cpu {
namespace DC_ISA {

// Per-call geometry of the tap grids.
template <typename T>
struct OffGrid {
  static constexpr int L = Vec<T>::W;
  const Window& g;
  int64_t H, W, HW, Tn, P, TP, r, dil, G, Gv, nvec, pad, Wpad;
  bool mask;
  T bound;  // offsets are clamped to +-bound: any point beyond lies wholly outside the image
  explicit OffGrid(const Window& g_)
      : g(g_), H(g_.H), W(g_.W), HW(g_.H * g_.W), Tn(g_.T), P(g_.P), TP(g_.T * g_.P), r(g_.r), dil(g_.dil) {
    G = 2 * r * dil + 2;
    Gv = offset_grid_width(r, dil, sizeof(T));  // as the packing (local_offset.cpp)
    nvec = Gv / L;
    pad = Gv;
    Wpad = W + 2 * Gv;
    mask = g.boundary == Boundary::Mask;
    bound = T(std::max(H, W) + r * dil + 2);
  }
  int64_t cells(int64_t iy) const { return g.hi[iy] - g.lo[iy] + 1; }
};

// One (query pixel, reference): the integer corner of its points and the bilinear weights.
template <typename T>
struct Unit {
  int64_t Yc, Xc;  // y + floor(oy), x + floor(ox): the window centre's tap (0, 0)
  int64_t Y0, X0;  // key pixel of grid cell (0, 0)
  T fy, fx, w00, w01, w10, w11;
  bool wy1, wx1;  // whether the second tap row / column has a nonzero weight
  bool cols_in;   // whether the grid's columns can reach the image (else every tap reads 0)
  int64_t vx0, vx1;  // window columns ix in [vx0, vx1] are valid (col_valid; all with "zero")
};

// Integer and fractional part of an offset, split exactly (as the reference): a NaN offset
// puts the point outside the image (clamped to -bound).
template <typename T>
inline int64_t split_offset(T o, T bound, T& frac) {
  if (!(o >= -bound)) o = -bound;
  if (o > bound) o = bound;
  const T f = std::floor(o);
  frac = o - f;
  return int64_t(f);
}

template <typename T>
inline Unit<T> make_unit(const OffGrid<T>& o, int64_t y, int64_t x, T oy, T ox) {
  Unit<T> u;
  u.Yc = y + split_offset(oy, o.bound, u.fy);
  u.Xc = x + split_offset(ox, o.bound, u.fx);
  u.Y0 = u.Yc - o.r * o.dil;
  u.X0 = u.Xc - o.r * o.dil;
  u.w00 = (1 - u.fy) * (1 - u.fx);
  u.w01 = (1 - u.fy) * u.fx;
  u.w10 = u.fy * (1 - u.fx);
  u.w11 = u.fy * u.fx;
  u.wy1 = u.fy != 0;
  u.wx1 = u.fx != 0;
  u.cols_in = u.X0 > -o.Gv && u.X0 < o.W;
  u.vx0 = 0;
  u.vx1 = 2 * o.r;
  if (o.mask) {  // pc = Xc + (ix - r)*dil must lie in [0, W-1-wx1]: an interval of ix
    while (u.vx0 <= u.vx1 && u.Xc + (u.vx0 - o.r) * o.dil < 0) ++u.vx0;
    while (u.vx1 >= u.vx0 && u.Xc + (u.vx1 - o.r) * o.dil + (u.wx1 ? 1 : 0) > o.W - 1) --u.vx1;
  }
  return u;
}

// Whether window row iy's (column ix's) points lie inside [0, H-1] ([0, W-1]); always with
// boundary "zero". Integer logic: Y > H-1 iff the tap row > H-1, or == H-1 with fy > 0.
template <typename T>
inline bool row_valid(const OffGrid<T>& o, const Unit<T>& u, int64_t iy) {
  if (!o.mask) return true;
  const int64_t pr = u.Yc + (iy - o.r) * o.dil;
  return pr >= 0 && pr + (u.wy1 ? 1 : 0) <= o.H - 1;
}
template <typename T>
inline bool col_valid(const OffGrid<T>&, const Unit<T>& u, int64_t ix) {
  return ix >= u.vx0 && ix <= u.vx1;
}
// Whether window row iy has a tap row with nonzero weight in key rows [k0, k1).
template <typename T>
inline bool row_reaches(const OffGrid<T>& o, const Unit<T>& u, int64_t iy, int64_t k0, int64_t k1) {
  const int64_t ky = u.Y0 + iy * o.dil;
  return (ky >= k0 && ky < k1) || (u.wy1 && ky + 1 >= k0 && ky + 1 < k1);
}
// Marks window row iy's tap rows in `need` (G flags).
template <typename T>
inline void need_row(const OffGrid<T>& o, const Unit<T>& u, int64_t iy, char* need) {
  need[iy * o.dil] = 1;
  if (u.wy1) need[iy * o.dil + 1] = 1;
}

// The channel rows of a grid row are Wpad apart, a stride the hardware prefetcher does not
// follow well across the 2 rows x E channels of gdots2: each call prefetches the run of NC
// vectors kPrefetch channels ahead (prefetches past the buffer do not fault).
constexpr int64_t kPrefetch = 6;
template <typename T, int NC>
inline void prefetch_run(const T* p) {
  constexpr int64_t bytes = NC * kVBytes;
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + b);
  __builtin_prefetch(reinterpret_cast<const char*>(p) + bytes - 1);  // the run is not line-aligned
}

// out0/out1[j] = sum_e a[e] * p0/p1[e*ld + j*L] (NC vectors each): two grid rows at once.
template <typename T, int NC>
inline void gdots2(int64_t E, const T* a, const T* p0, const T* p1, int64_t ld, T* out0, T* out1) {
  constexpr int L = Vec<T>::W;
  V<T> c0[NC], c1[NC];
  for (int j = 0; j < NC; ++j) c0[j] = c1[j] = V<T>{};
  for (int64_t e = 0; e < E; ++e) {
    const V<T> av = vsplat(a[e]);
    const T* r0 = p0 + e * ld;
    const T* r1 = p1 + e * ld;
    prefetch_run<T, NC>(r0 + kPrefetch * ld);
    prefetch_run<T, NC>(r1 + kPrefetch * ld);
    for (int j = 0; j < NC; ++j) {
      c0[j] += av * vload(r0 + j * L);
      c1[j] += av * vload(r1 + j * L);
    }
  }
  for (int j = 0; j < NC; ++j) {
    vstore(out0 + j * L, c0[j]);
    vstore(out1 + j * L, c1[j]);
  }
}
template <typename T, int NC>
inline void gdots1(int64_t E, const T* a, const T* p0, int64_t ld, T* out0) {
  constexpr int L = Vec<T>::W;
  V<T> c0[NC], c1[NC];  // two partial sums per column vector (even / odd e): twice the chains
  for (int j = 0; j < NC; ++j) c0[j] = c1[j] = V<T>{};
  int64_t e = 0;
  for (; e + 2 <= E; e += 2) {
    const V<T> a0 = vsplat(a[e]), a1 = vsplat(a[e + 1]);
    prefetch_run<T, NC>(p0 + (e + kPrefetch) * ld);
    prefetch_run<T, NC>(p0 + (e + 1 + kPrefetch) * ld);
    for (int j = 0; j < NC; ++j) {
      c0[j] += a0 * vload(p0 + e * ld + j * L);
      c1[j] += a1 * vload(p0 + (e + 1) * ld + j * L);
    }
  }
  if (e < E) {
    const V<T> a0 = vsplat(a[e]);
    for (int j = 0; j < NC; ++j) c0[j] += a0 * vload(p0 + e * ld + j * L);
  }
  for (int j = 0; j < NC; ++j) vstore(out0 + j * L, c0[j] + c1[j]);
}
constexpr int kGridChunk = 4;  // column vectors per micro-kernel call: 2 rows x 4 accumulators
template <typename T>
inline void gdots_rows(int64_t nvec, int64_t E, const T* a, const T* p0, const T* p1, int64_t ld, T* out0, T* out1) {
  constexpr int L = Vec<T>::W;
  for (int64_t c = 0; c < nvec; c += kGridChunk) {
    const int64_t n = std::min<int64_t>(kGridChunk, nvec - c), off = c * L;
    if (p1 != nullptr) {
      switch (n) {
        case 1: gdots2<T, 1>(E, a, p0 + off, p1 + off, ld, out0 + off, out1 + off); break;
        case 2: gdots2<T, 2>(E, a, p0 + off, p1 + off, ld, out0 + off, out1 + off); break;
        case 3: gdots2<T, 3>(E, a, p0 + off, p1 + off, ld, out0 + off, out1 + off); break;
        default: gdots2<T, 4>(E, a, p0 + off, p1 + off, ld, out0 + off, out1 + off); break;
      }
    } else {
      switch (n) {
        case 1: gdots1<T, 1>(E, a, p0 + off, ld, out0 + off); break;
        case 2: gdots1<T, 2>(E, a, p0 + off, ld, out0 + off); break;
        case 3: gdots1<T, 3>(E, a, p0 + off, ld, out0 + off); break;
        default: gdots1<T, 4>(E, a, p0 + off, ld, out0 + off); break;
      }
    }
  }
}

// R[gy*Gv + gx] = a . XP[Y0+gy][:, pad+X0+gx] for the grid rows flagged in `need` (0 for rows
// outside the image). XP: one (b, t)'s packed rows (H, E, Wpad).
template <typename T>
void grid_dots(const OffGrid<T>& o, const Unit<T>& u, const T* a, int64_t E, const T* XP, const char* need, T* R) {
  const int64_t ld = o.Wpad;
  int64_t pend = -1;  // a row waiting for a partner
  for (int64_t gy = 0; gy < o.G; ++gy) {
    if (!need[gy]) continue;
    const int64_t ky = u.Y0 + gy;
    if (!u.cols_in || ky < 0 || ky >= o.H) {
      std::fill(R + gy * o.Gv, R + (gy + 1) * o.Gv, T(0));
      continue;
    }
    if (pend < 0) {
      pend = gy;
      continue;
    }
    const T* p0 = XP + (u.Y0 + pend) * E * ld + o.pad + u.X0;
    const T* p1 = XP + ky * E * ld + o.pad + u.X0;
    gdots_rows(o.nvec, E, a, p0, p1, ld, R + pend * o.Gv, R + gy * o.Gv);
    pend = -1;
  }
  if (pend >= 0)
    gdots_rows<T>(o.nvec, E, a, XP + (u.Y0 + pend) * E * ld + o.pad + u.X0, nullptr, ld, R + pend * o.Gv, nullptr);
}

// out[j] = a*x[j] + b*x[j+1] (+ c*y[j] + d*y[j+1] with y), j < n: the bilinear combination
// along a grid row pair at unit spacing (dilation 1), vectorised.
template <typename T>
inline void combine_unit(int64_t n, const T* x, const T* y, T a, T b, T c, T d, T* out) {
  constexpr int L = Vec<T>::W;
  int64_t j = 0;
  const V<T> va = vsplat(a), vb = vsplat(b), vc = vsplat(c), vd = vsplat(d);
  if (y != nullptr) {
    for (; j + L <= n; j += L)
      vstore(out + j, (va * vload(x + j) + vb * vload(x + j + 1)) + (vc * vload(y + j) + vd * vload(y + j + 1)));
    for (; j < n; ++j) out[j] = (a * x[j] + b * x[j + 1]) + (c * y[j] + d * y[j + 1]);
  } else {
    for (; j + L <= n; j += L) vstore(out + j, va * vload(x + j) + vb * vload(x + j + 1));
    for (; j < n; ++j) out[j] = a * x[j] + b * x[j + 1];
  }
}
// x[j] += a * c[j]; then x[j+1] += b * c[j], j < n (adjoint of one row of combine_unit; two
// passes, so that no element waits on the store of its neighbour).
template <typename T>
inline void spread_unit(int64_t n, const T* c, T a, T b, T* x) {
  constexpr int L = Vec<T>::W;
  const V<T> va = vsplat(a), vb = vsplat(b);
  int64_t j = 0;
  for (; j + L <= n; j += L) vstore(x + j, vload(x + j) + va * vload(c + j));
  for (; j < n; ++j) x[j] += a * c[j];
  for (j = 0; j + L <= n; j += L) vstore(x + j + 1, vload(x + j + 1) + vb * vload(c + j));
  for (; j < n; ++j) x[j + 1] += b * c[j];
}

// The bilinear combination of grid values R at window row iy's cells: out[j], j < cells(iy).
template <typename T>
inline void grid_combine(const OffGrid<T>& o, const Unit<T>& u, const T* R, int64_t iy, T* out) {
  const int64_t n = o.cells(iy), lo = o.g.lo[iy], d = o.dil;
  const T* r0 = R + iy * d * o.Gv;
  const T* r1 = r0 + o.Gv;
  if (d == 1) return combine_unit(n, r0 + lo, u.wy1 ? r1 + lo : nullptr, u.w00, u.w01, u.w10, u.w11, out);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t gx = (lo + j) * d;
    T s = u.w00 * r0[gx] + u.w01 * r0[gx + 1];
    if (u.wy1) s += u.w10 * r1[gx] + u.w11 * r1[gx + 1];
    out[j] = s;
  }
}

// Adjoint of grid_combine: Wg[grid taps of cell j of window row iy] += c[j] * w_tap; marks the
// rows in `touched`.
template <typename T>
inline void grid_spread(const OffGrid<T>& o, const Unit<T>& u, const T* c, int64_t iy, T* Wg, char* touched) {
  const int64_t n = o.cells(iy), lo = o.g.lo[iy], d = o.dil;
  T* r0 = Wg + iy * d * o.Gv;
  T* r1 = r0 + o.Gv;
  touched[iy * d] = 1;
  if (u.wy1) touched[iy * d + 1] = 1;
  if (d == 1) {
    spread_unit(n, c, u.w00, u.w01, r0 + lo);
    if (u.wy1) spread_unit(n, c, u.w10, u.w11, r1 + lo);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t gx = (lo + j) * d;
    r0[gx] += c[j] * u.w00;
    r0[gx + 1] += c[j] * u.w01;
  }
  if (!u.wy1) return;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t gx = (lo + j) * d;
    r1[gx] += c[j] * u.w10;
    r1[gx + 1] += c[j] * u.w11;
  }
}

// acc[e] += sum over the touched grid rows inside the image of Wg[gy][:] * XP[Y0+gy][e][pad+X0 :]
// (vectors; the caller sums their lanes).
template <typename T>
void grid_apply(const OffGrid<T>& o, const Unit<T>& u, const T* Wg, const char* touched, const T* XP, int64_t E,
                V<T>* acc) {
  constexpr int L = Vec<T>::W;
  if (!u.cols_in) return;
  const int64_t ld = o.Wpad, nv = o.nvec;
  for (int64_t gy = 0; gy < o.G; ++gy) {
    const int64_t ky = u.Y0 + gy;
    if (!touched[gy] || ky < 0 || ky >= o.H) continue;
    const T* w = Wg + gy * o.Gv;
    const T* row = XP + ky * E * ld + o.pad + u.X0;
    for (int64_t c = 0; c < nv; c += 2) {
      if (c + 1 < nv) {
        const V<T> w0 = vload(w + c * L), w1 = vload(w + (c + 1) * L);
        for (int64_t e = 0; e < E; ++e)
          acc[e] += w0 * vload(row + e * ld + c * L) + w1 * vload(row + e * ld + (c + 1) * L);
      } else {
        const V<T> w0 = vload(w + c * L);
        for (int64_t e = 0; e < E; ++e) acc[e] += w0 * vload(row + e * ld + c * L);
      }
    }
  }
}

// Adjoint of grid_apply restricted to key rows [k0, k1): DX[(ky-k0)][e][pad+X0 :] += Wg[gy][:] * a[e]
// (DX: the block's packed rows). Grid columns past G carry weight 0.
template <typename T>
void grid_scatter(const OffGrid<T>& o, const Unit<T>& u, const T* Wg, const char* touched, const T* a, int64_t E,
                  T* DX, int64_t k0, int64_t k1) {
  constexpr int L = Vec<T>::W;
  if (!u.cols_in) return;
  const int64_t ld = o.Wpad, nv = o.nvec;
  for (int64_t gy = 0; gy < o.G; ++gy) {
    const int64_t ky = u.Y0 + gy;
    if (!touched[gy] || ky < k0 || ky >= k1) continue;
    const T* w = Wg + gy * o.Gv;
    T* row = DX + (ky - k0) * E * ld + o.pad + u.X0;
    for (int64_t e = 0; e < E; ++e) {
      const V<T> ae = vsplat(a[e]);
      T* re = row + e * ld;
      for (int64_t c = 0; c < nv; ++c) vstore(re + c * L, vload(re + c * L) + ae * vload(w + c * L));
    }
  }
}

// Per-thread scratch for one unit at a time (qv, gv: a pixel's q and dout vectors; cnt: kept
// counts of n cells; rowsel: the window rows a pass works on).
template <typename T>
struct UnitBufs {
  std::vector<T> R, R2, Wg, Wg2, cell, cell2, qv, gv;
  std::vector<char> need, touched, touched2, rowsel;
  std::vector<int32_t> cnt;
  UnitBufs(const OffGrid<T>& o, int64_t D, int64_t C, int64_t ncnt)
      : R(o.G * o.Gv), R2(o.G * o.Gv), Wg(o.G * o.Gv), Wg2(o.G * o.Gv), cell(2 * o.r + 1), cell2(2 * o.r + 1),
        qv(D), gv(C), need(o.G), touched(o.G), touched2(o.G), rowsel(2 * o.r + 1), cnt(ncnt) {}
  void clear_grids() {
    std::fill(Wg.begin(), Wg.end(), T(0));
    std::fill(Wg2.begin(), Wg2.end(), T(0));
    std::fill(touched.begin(), touched.end(), 0);
    std::fill(touched2.begin(), touched2.end(), 0);
  }
  void clear_need() {
    std::fill(need.begin(), need.end(), 0);
    std::fill(rowsel.begin(), rowsel.end(), 0);
  }
};

// x[e] = src[e * stride] for e < n (one pixel's channel vector).
template <typename T>
inline void gather_channels(T* x, const T* src, int64_t n, int64_t stride) {
  for (int64_t e = 0; e < n; ++e) x[e] = src[e * stride];
}

// The logits of unit (pixel, t) for every cell, into lg[0:P]: scale * (q . k_sampled), -inf
// at cells excluded by "mask". Needs the query vector qv.
template <typename T>
void unit_logits(const OffGrid<T>& o, const Unit<T>& u, const T* qv, int64_t D, const T* KP, T scale,
                 UnitBufs<T>& ub, T* lg) {
  ub.clear_need();
  for (int64_t iy = 0; iy <= 2 * o.r; ++iy)
    if (row_valid(o, u, iy)) need_row(o, u, iy, ub.need.data());
  grid_dots(o, u, qv, D, KP, ub.need.data(), ub.R.data());
  for (int64_t iy = 0; iy <= 2 * o.r; ++iy) {
    const int64_t n = o.cells(iy), pb = o.g.row_base[iy];
    if (!row_valid(o, u, iy)) {
      std::fill(lg + pb, lg + pb + n, neg_inf<T>());
      continue;
    }
    grid_combine(o, u, ub.R.data(), iy, lg + pb);
    // valid cells j in [j0, j1): scaled; the others excluded
    const int64_t lo = o.g.lo[iy], j0 = std::clamp<int64_t>(u.vx0 - lo, 0, n), j1 = std::clamp<int64_t>(u.vx1 + 1 - lo, j0, n);
    std::fill(lg + pb, lg + pb + j0, neg_inf<T>());
    scale_row(lg + pb + j0, j1 - j0, scale);
    std::fill(lg + pb + j1, lg + pb + n, neg_inf<T>());
  }
}

// The query pixels in tiles of kTileY x kTileX, the unit of the pixel-parallel passes: a tile's
// grids cover ~(kTileY + 2r*dil) x (kTileX + 2r*dil) key pixels, which stay in L2 while the
// tile's pixels reuse them (a whole query row's grids (2r*dil + 2 full key rows per
// reference, ~3.7 MB at D=64, r=12, T=2) would not).
constexpr int64_t kTileY = 4, kTileX = 16;
struct PixelTiles {
  int64_t H, W, ny, nx, ntask, size = kTileY * kTileX;
  PixelTiles(int64_t B, int64_t H_, int64_t W_) : H(H_), W(W_), ny(ceil_div(H_, kTileY)), nx(ceil_div(W_, kTileX)) {
    ntask = B * ny * nx;
  }
  int64_t batch(int64_t task) const { return task / (ny * nx); }
  int64_t y0(int64_t task) const { return (task / nx) % ny * kTileY; }
  int64_t x0(int64_t task) const { return task % nx * kTileX; }
  int64_t width(int64_t task) const { return std::min(kTileX, W - x0(task)); }
  int64_t count(int64_t task) const { return std::min(kTileY, H - y0(task)) * width(task); }
  int64_t y(int64_t task, int64_t i) const { return y0(task) + i / width(task); }
  int64_t x(int64_t task, int64_t i) const { return x0(task) + i % width(task); }
};

// ---------------------------------------------------------------------------- attention forward

// out (B, C, H, W), lse (B, H, W), idx (B, H, W, topk). KP / VP: packed rows of k / v per (b, t).
template <typename T>
void offset_attention_fwd_k(const Window& g, const T* q, const T* KP, const T* VP, const T* v, const T* off, T* out,
                            T* lse, int64_t* idx, int64_t B, int64_t D, int64_t C, T scale, int64_t topk) {
  const OffGrid<T> o(g);
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, P = o.P, TP = o.TP;
  const int64_t kstride = H * D * o.Wpad, vstride = H * C * o.Wpad;
  const PixelTiles tiles(B, H, W);
  parallel_for(0, tiles.ntask, grain_for(tiles.size * TP * (D + C)), [&](int64_t begin, int64_t end) {
    UnitBufs<T> ub(o, D, C, 0);
    std::vector<T> lg(TP), vals(C);
    std::vector<T>& qv = ub.qv;
    std::vector<Unit<T>> units(Tn);
    std::vector<Cand<T>> cands(topk > 0 ? TP : 0);
    VBuf<T> acc(std::max<int64_t>(C, 1));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = tiles.batch(task);
      for (int64_t i = 0, n_ = tiles.count(task); i < n_; ++i) {
        const int64_t y = tiles.y(task, i), x = tiles.x(task, i);
        const int64_t pix = y * W + x;
        gather_channels(qv.data(), q + b * D * HW + pix, D, HW);
        for (int64_t t = 0; t < Tn; ++t) {
          const T* ob = off + (b * Tn + t) * 2 * HW + pix;
          units[t] = make_unit(o, y, x, ob[0], ob[HW]);
          unit_logits(o, units[t], qv.data(), D, KP + (b * Tn + t) * kstride, scale, ub, lg.data() + t * P);
        }
        T* ob = out + b * C * HW + pix;
        if (topk == 0) {
          const T m = max_row(lg.data(), TP);
          if (m == neg_inf<T>()) {  // "mask" with no point inside the image
            for (int64_t c = 0; c < C; ++c) ob[c * HW] = 0;
            lse[b * HW + pix] = m;
            continue;
          }
          const T sum = exp_row(lg.data(), TP, T(1), m);  // lg: unnormalised weights
          acc.fill(V<T>{}, C);
          for (int64_t t = 0; t < Tn; ++t) {
            const Unit<T>& u = units[t];
            ub.clear_grids();
            for (int64_t iy = 0; iy <= 2 * o.r; ++iy)
              if (row_valid(o, u, iy)) grid_spread(o, u, lg.data() + t * P + g.row_base[iy], iy, ub.Wg.data(), ub.touched.data());
            grid_apply(o, u, ub.Wg.data(), ub.touched.data(), VP + (b * Tn + t) * vstride, C, acc.data());
          }
          const T inv = T(1) / sum;
          for (int64_t c = 0; c < C; ++c) ob[c * HW] = hsum(acc[c]) * inv;
          lse[b * HW + pix] = m + std::log(sum);
          continue;
        }
        // top-k: the k largest logits, ties to the smaller position (cand_before, as the plain
        // kernel); NaN logits rank as -inf so that the ordering stays strict.
        for (int64_t p = 0; p < TP; ++p) cands[p] = {std::isnan(lg[p]) ? neg_inf<T>() : lg[p], p};
        std::nth_element(cands.begin(), cands.begin() + (topk - 1), cands.end(), cand_before<T>);
        std::sort(cands.begin(), cands.begin() + topk, cand_before<T>);
        int64_t* ib = idx + (b * HW + pix) * topk;
        for (int64_t j = 0; j < topk; ++j) ib[j] = cands[j].i;
        const T m = cands[0].v;
        if (m == neg_inf<T>()) {
          for (int64_t c = 0; c < C; ++c) ob[c * HW] = 0;
          lse[b * HW + pix] = m;
          continue;
        }
        std::fill(vals.begin(), vals.end(), T(0));
        T sum = 0;
        for (int64_t j = 0; j < topk; ++j) {
          const int64_t p = cands[j].i, t = p / P, pp = p % P;
          const T wgt = std::exp(lg[p] - m);
          sum += wgt;
          if (wgt == 0) continue;  // excluded cells (and underflow)
          const Unit<T>& u = units[t];
          const int64_t ky = u.Y0 + g.pos_iy[pp] * o.dil, kx = u.X0 + g.pos_ix[pp] * o.dil;
          const T* vb = v + (b * Tn + t) * C * HW;
          const T tw[4] = {u.w00, u.w01, u.w10, u.w11};
          for (int a = 0; a < 4; ++a) {
            const int64_t yy = ky + a / 2, xx = kx + a % 2;
            if (tw[a] == 0 || yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
            const T f = wgt * tw[a];
            for (int64_t c = 0; c < C; ++c) vals[c] += f * vb[c * HW + yy * W + xx];
          }
        }
        for (int64_t c = 0; c < C; ++c) ob[c * HW] = vals[c] / sum;
        lse[b * HW + pix] = m + std::log(sum);
      }
    }
  });
}

// ---------------------------------------------------------------------------- the dk / dv pass

// Query pixels of each (b, t) bucketed by their grid's corner row Y0 (pixels whose grid misses
// the image rows are left out), in pixel order within a bucket.
struct OffBuckets {
  int64_t nkey = 0;
  std::vector<int64_t> start, order;  // per (b, t): start (nkey + 1), order (HW)
};

template <typename T>
OffBuckets make_buckets(const OffGrid<T>& o, const T* off, int64_t B) {
  OffBuckets bk;
  const int64_t HW = o.HW, nk = o.H + o.G - 1, BT = B * o.Tn;
  bk.nkey = nk;
  bk.start.assign(BT * (nk + 1), 0);
  bk.order.assign(BT * HW, -1);
  parallel_for(0, BT, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> key(HW);
    for (int64_t bt = begin; bt < end; ++bt) {
      int64_t* st = bk.start.data() + bt * (nk + 1);
      const T* ob = off + bt * 2 * HW;
      for (int64_t pix = 0; pix < HW; ++pix) {
        T f;
        const int64_t y0 = pix / o.W + split_offset(ob[pix], o.bound, f) - o.r * o.dil;
        key[pix] = (y0 + o.G > 0 && y0 < o.H) ? y0 + o.G - 1 : -1;
        if (key[pix] >= 0) ++st[key[pix] + 1];
      }
      for (int64_t i = 0; i < nk; ++i) st[i + 1] += st[i];
      std::vector<int64_t> fill(st, st + nk);
      int64_t* ord = bk.order.data() + bt * HW;
      for (int64_t pix = 0; pix < HW; ++pix)
        if (key[pix] >= 0) ord[fill[key[pix]]++] = pix;
    }
  });
  return bk;
}

constexpr int64_t kBlock = 8;  // key rows per dk/dv task

// Runs visit(scratch, b, t, k0, k1, pix, unit, DK, DV) for every query pixel whose grid reaches
// key rows [k0, k1) of (b, t), for every block in parallel (scratch = make_scratch(), one per
// parallel chunk), then writes the block buffers DK (rows, E1, Wpad) and DV (rows, E2, Wpad)
// times s1 / s2 into d1 (B, T, E1, H, W) and d2 (B, T, E2, H, W) (either may be null).
template <typename T, class MakeScratch, class F>
void for_key_blocks(const OffGrid<T>& o, const OffBuckets& bk, int64_t B, const T* off, T* d1, int64_t E1, T s1,
                    T* d2, int64_t E2, T s2, int64_t work, const MakeScratch& make_scratch, const F& visit) {
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, nblk = ceil_div(H, kBlock), nk = bk.nkey;
  parallel_for(0, B * Tn * nblk, grain_for(work), [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    std::vector<T> DK(d1 ? kBlock * E1 * o.Wpad : 0), DV(d2 ? kBlock * E2 * o.Wpad : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bt = task / nblk, blk = task % nblk, b = bt / Tn, t = bt % Tn;
      const int64_t k0 = blk * kBlock, k1 = std::min(H, k0 + kBlock);
      std::fill(DK.begin(), DK.end(), T(0));
      std::fill(DV.begin(), DV.end(), T(0));
      const int64_t* st = bk.start.data() + bt * (nk + 1);
      const int64_t* ord = bk.order.data() + bt * HW;
      // grid corners Y0 in [k0 - G + 1, k1 - 1]: keys [k0, k1 + G - 2]
      const int64_t s_begin = st[k0], s_end = st[std::min(nk, k1 + o.G - 1)];
      const T* ob = off + bt * 2 * HW;
      for (int64_t s = s_begin; s < s_end; ++s) {
        const int64_t pix = ord[s], y = pix / W, x = pix % W;
        const Unit<T> u = make_unit(o, y, x, ob[pix], ob[HW + pix]);
        visit(scratch, b, t, k0, k1, pix, u, DK.data(), DV.data());
      }
      for (int64_t ky = k0; ky < k1; ++ky) {
        if (d1)
          for (int64_t e = 0; e < E1; ++e) {
            const T* src = DK.data() + ((ky - k0) * E1 + e) * o.Wpad + o.pad;
            T* dst = d1 + (bt * E1 + e) * HW + ky * W;
            for (int64_t xx = 0; xx < W; ++xx) dst[xx] = s1 * src[xx];
          }
        if (d2)
          for (int64_t e = 0; e < E2; ++e) {
            const T* src = DV.data() + ((ky - k0) * E2 + e) * o.Wpad + o.pad;
            T* dst = d2 + (bt * E2 + e) * HW + ky * W;
            for (int64_t xx = 0; xx < W; ++xx) dst[xx] = s2 * src[xx];
          }
      }
    }
  });
}

// ---------------------------------------------------------------------------- attention backward

// Kept-cell multiplicities of one pixel from its top-k indices (all cells: every count 1),
// restricted to reference t (t < 0: all).
inline void kept_counts(const int64_t* ib, int64_t topk, int64_t P, int64_t t, int32_t* cnt, int64_t n) {
  if (topk == 0) {
    std::fill(cnt, cnt + n, 1);
    return;
  }
  std::fill(cnt, cnt + n, 0);
  for (int64_t j = 0; j < topk; ++j) {
    if (t < 0) ++cnt[ib[j]];
    else if (ib[j] / P == t) ++cnt[ib[j] % P];
  }
}

// For window row iy of unit u: P_j = cnt * exp(logit_j - lse) and dS_j = P_j * (dP_j - delta),
// from the grids R (q . k) and Rv (dout . v); excluded cells get 0.
template <typename T>
inline void unit_probs(const OffGrid<T>& o, const Unit<T>& u, int64_t iy, const T* R, const T* Rv, const int32_t* cnt,
                       T scale, T l, T delta, T* Pj, T* dSj) {
  const int64_t n = o.cells(iy), lo = o.g.lo[iy];
  grid_combine(o, u, R, iy, Pj);
  grid_combine(o, u, Rv, iy, dSj);
  exp_row(Pj, n, scale, l);
  for (int64_t j = 0; j < n; ++j) {
    const T p = cnt[j] > 0 && col_valid(o, u, lo + j) ? T(cnt[j]) * Pj[j] : T(0);  // (not 0 * exp: may be inf)
    Pj[j] = p;
    dSj[j] = p * (dSj[j] - delta);
  }
}

// Selects (rowsel) and flags the tap rows (need) of the window rows of unit u with a kept cell
// (cnt: the unit's P counts), valid, and with a nonzero-weight tap row in key rows [k0, k1).
// Returns whether any row is selected.
template <typename T>
inline bool select_rows(const OffGrid<T>& o, const Unit<T>& u, const int32_t* cnt, int64_t k0, int64_t k1,
                        UnitBufs<T>& ub) {
  ub.clear_need();
  bool any = false;
  for (int64_t iy = 0; iy <= 2 * o.r; ++iy) {
    if (!row_valid(o, u, iy) || !row_reaches(o, u, iy, k0, k1)) continue;
    const int32_t* c = cnt + o.g.row_base[iy];
    bool kept = false;
    for (int64_t j = 0, n = o.cells(iy); j < n && !kept; ++j) kept = c[j] > 0;
    if (!kept) continue;
    ub.rowsel[iy] = 1;
    need_row(o, u, iy, ub.need.data());
    any = true;
  }
  return any;
}

// idx: (B, H, W, topk) kept cells, or null with topk == 0 (every cell). delta (B, H, W) is
// written here (dout . out per pixel).
template <typename T>
void offset_attention_bwd_k(const Window& g, const T* q, const T* KP, const T* VP, const T* off, const T* dout,
                            const T* out, const T* lse, const int64_t* idx, int64_t topk, T* delta, T* dq, T* dk,
                            T* dv, int64_t B, int64_t D, int64_t C, T scale) {
  const OffGrid<T> o(g);
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, P = o.P, TP = o.TP, nrow = 2 * o.r + 1;
  const int64_t kstride = H * D * o.Wpad, vstride = H * C * o.Wpad;
  // Pass 1: delta and dq, query rows in parallel. Only window rows with a tap row inside the
  // image have gradients (elsewhere keys and values are 0).
  const PixelTiles tiles(B, H, W);
  parallel_for(0, tiles.ntask, grain_for(tiles.size * TP * (2 * D + C)), [&](int64_t begin, int64_t end) {
    UnitBufs<T> ub(o, D, C, TP);
    VBuf<T> acc(std::max<int64_t>(D, 1));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = tiles.batch(task);
      for (int64_t i = 0, n_ = tiles.count(task); i < n_; ++i) {
        const int64_t y = tiles.y(task, i), x = tiles.x(task, i);
        const int64_t pix = y * W + x;
        gather_channels(ub.gv.data(), dout + b * C * HW + pix, C, HW);
        T dl = 0;
        for (int64_t c = 0; c < C; ++c) dl += ub.gv[c] * out[(b * C + c) * HW + pix];
        delta[b * HW + pix] = dl;
        T* dqb = dq + b * D * HW + pix;
        const T l = lse[b * HW + pix];
        if (l == neg_inf<T>()) {  // no cell entered the softmax
          for (int64_t d = 0; d < D; ++d) dqb[d * HW] = 0;
          continue;
        }
        gather_channels(ub.qv.data(), q + b * D * HW + pix, D, HW);
        kept_counts(idx ? idx + (b * HW + pix) * topk : nullptr, topk, P, -1, ub.cnt.data(), TP);
        acc.fill(V<T>{}, D);
        for (int64_t t = 0; t < Tn; ++t) {
          const T* ob = off + (b * Tn + t) * 2 * HW + pix;
          const Unit<T> u = make_unit(o, y, x, ob[0], ob[HW]);
          const int32_t* cnt = ub.cnt.data() + t * P;
          if (!select_rows(o, u, cnt, 0, H, ub)) continue;
          grid_dots(o, u, ub.qv.data(), D, KP + (b * Tn + t) * kstride, ub.need.data(), ub.R.data());
          grid_dots(o, u, ub.gv.data(), C, VP + (b * Tn + t) * vstride, ub.need.data(), ub.R2.data());
          ub.clear_grids();
          for (int64_t iy = 0; iy < nrow; ++iy) {
            if (!ub.rowsel[iy]) continue;
            unit_probs(o, u, iy, ub.R.data(), ub.R2.data(), cnt + g.row_base[iy], scale, l, dl, ub.cell.data(),
                       ub.cell2.data());
            grid_spread(o, u, ub.cell2.data(), iy, ub.Wg.data(), ub.touched.data());
          }
          grid_apply(o, u, ub.Wg.data(), ub.touched.data(), KP + (b * Tn + t) * kstride, D, acc.data());
        }
        for (int64_t d = 0; d < D; ++d) dqb[d * HW] = scale * hsum(acc[d]);
      }
    }
  });
  // Pass 2: dk and dv, blocks of key rows in parallel.
  const OffBuckets bk = make_buckets(o, off, B);
  const int64_t work = W * (kBlock + 1) * (2 * o.r + 1) * (2 * D + C) * std::max<int64_t>(1, Tn);
  for_key_blocks(
      o, bk, B, off, dk, D, scale, dv, C, T(1), work, [&] { return UnitBufs<T>(o, D, C, P); },
      [&](UnitBufs<T>& ub, int64_t b, int64_t t, int64_t k0, int64_t k1, int64_t pix, const Unit<T>& u, T* DK,
          T* DV) {
        const T l = lse[b * HW + pix];
        if (l == neg_inf<T>()) return;
        kept_counts(idx ? idx + (b * HW + pix) * topk : nullptr, topk, P, t, ub.cnt.data(), P);
        if (!select_rows(o, u, ub.cnt.data(), k0, k1, ub)) return;
        gather_channels(ub.qv.data(), q + b * D * HW + pix, D, HW);
        gather_channels(ub.gv.data(), dout + b * C * HW + pix, C, HW);
        grid_dots(o, u, ub.qv.data(), D, KP + (b * Tn + t) * kstride, ub.need.data(), ub.R.data());
        grid_dots(o, u, ub.gv.data(), C, VP + (b * Tn + t) * vstride, ub.need.data(), ub.R2.data());
        ub.clear_grids();
        const T dl = delta[b * HW + pix];
        for (int64_t iy = 0; iy < nrow; ++iy) {
          if (!ub.rowsel[iy]) continue;
          unit_probs(o, u, iy, ub.R.data(), ub.R2.data(), ub.cnt.data() + g.row_base[iy], scale, l, dl,
                     ub.cell.data(), ub.cell2.data());
          grid_spread(o, u, ub.cell2.data(), iy, ub.Wg.data(), ub.touched.data());   // dS -> dk
          grid_spread(o, u, ub.cell.data(), iy, ub.Wg2.data(), ub.touched2.data());  // P  -> dv
        }
        grid_scatter(o, u, ub.Wg.data(), ub.touched.data(), ub.qv.data(), D, DK, k0, k1);
        grid_scatter(o, u, ub.Wg2.data(), ub.touched2.data(), ub.gv.data(), C, DV, k0, k1);
      });
}

// ---------------------------------------------------------------------------- affinity

// attn (B, T*P, H, W): the logits, or their joint softmax (normalize; a pixel with no cell
// inside the image under "mask" gets all 0).
template <typename T>
void offset_affinity_fwd_k(const Window& g, const T* q, const T* KP, const T* off, T* attn, int64_t B, int64_t D,
                           T scale, bool normalize) {
  const OffGrid<T> o(g);
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, P = o.P, TP = o.TP, kstride = H * D * o.Wpad;
  const PixelTiles tiles(B, H, W);
  parallel_for(0, tiles.ntask, grain_for(tiles.size * TP * D), [&](int64_t begin, int64_t end) {
    UnitBufs<T> ub(o, D, 0, 0);
    std::vector<T> lg(TP);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = tiles.batch(task);
      for (int64_t i = 0, n_ = tiles.count(task); i < n_; ++i) {
        const int64_t y = tiles.y(task, i), x = tiles.x(task, i);
        const int64_t pix = y * W + x;
        gather_channels(ub.qv.data(), q + b * D * HW + pix, D, HW);
        for (int64_t t = 0; t < Tn; ++t) {
          const T* ob = off + (b * Tn + t) * 2 * HW + pix;
          unit_logits(o, make_unit(o, y, x, ob[0], ob[HW]), ub.qv.data(), D, KP + (b * Tn + t) * kstride, scale, ub,
                      lg.data() + t * P);
        }
        if (normalize) {
          const T m = max_row(lg.data(), TP);
          if (m == neg_inf<T>()) {
            std::fill(lg.begin(), lg.end(), T(0));
          } else {
            const T sum = exp_row(lg.data(), TP, T(1), m);
            scale_row(lg.data(), TP, T(1) / sum);
          }
        }
        T* ab = attn + b * TP * HW + pix;
        for (int64_t p = 0; p < TP; ++p) ab[p * HW] = lg[p];
      }
    }
  });
}

// dlogits of the cells of one pixel (n cells from position p0, strided by HW in attn / grad):
// normalize: A (G - rd); else G.
template <typename T>
inline void affinity_dl(const T* ab, const T* gb, int64_t HW, int64_t n, bool normalize, T rd, T* dl) {
  for (int64_t p = 0; p < n; ++p) dl[p] = normalize ? ab[p * HW] * (gb[p * HW] - rd) : gb[p * HW];
}

// Spreads per-cell coefficients c (the unit's P cells, cell order) of the selected window rows
// onto ub.Wg (excluded columns get 0).
template <typename T>
inline void spread_selected(const OffGrid<T>& o, const Unit<T>& u, const T* c, UnitBufs<T>& ub, T* Wg,
                            char* touched) {
  for (int64_t iy = 0; iy <= 2 * o.r; ++iy) {
    if (!ub.rowsel[iy]) continue;
    const int64_t n = o.cells(iy), lo = o.g.lo[iy];
    const T* ci = c + o.g.row_base[iy];
    for (int64_t j = 0; j < n; ++j) ub.cell[j] = col_valid(o, u, lo + j) ? ci[j] : T(0);
    grid_spread(o, u, ub.cell.data(), iy, Wg, touched);
  }
}

template <typename T>
void offset_affinity_bwd_k(const Window& g, const T* grad, const T* q, const T* KP, const T* off, const T* attn,
                           T* dq, T* dk, int64_t B, int64_t D, T scale, bool normalize) {
  const OffGrid<T> o(g);
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, P = o.P, TP = o.TP, kstride = H * D * o.Wpad;
  std::vector<T> rowdot(normalize ? B * HW : 0);  // sum_p G A per pixel (softmax adjoint)
  const std::vector<int32_t> ones(P, 1);
  const PixelTiles tiles(B, H, W);
  parallel_for(0, tiles.ntask, grain_for(tiles.size * TP * D), [&](int64_t begin, int64_t end) {
    UnitBufs<T> ub(o, D, 0, 0);
    std::vector<T> dl(TP);
    VBuf<T> acc(std::max<int64_t>(D, 1));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = tiles.batch(task);
      for (int64_t i = 0, n_ = tiles.count(task); i < n_; ++i) {
        const int64_t y = tiles.y(task, i), x = tiles.x(task, i);
        const int64_t pix = y * W + x;
        const T* ab = attn + b * TP * HW + pix;
        const T* gb = grad + b * TP * HW + pix;
        T rd = 0;
        if (normalize) {
          for (int64_t p = 0; p < TP; ++p) rd += ab[p * HW] * gb[p * HW];
          rowdot[b * HW + pix] = rd;
        }
        affinity_dl(ab, gb, HW, TP, normalize, rd, dl.data());
        acc.fill(V<T>{}, D);
        for (int64_t t = 0; t < Tn; ++t) {
          const T* ob = off + (b * Tn + t) * 2 * HW + pix;
          const Unit<T> u = make_unit(o, y, x, ob[0], ob[HW]);
          if (!select_rows(o, u, ones.data(), 0, H, ub)) continue;
          ub.clear_grids();
          spread_selected(o, u, dl.data() + t * P, ub, ub.Wg.data(), ub.touched.data());
          grid_apply(o, u, ub.Wg.data(), ub.touched.data(), KP + (b * Tn + t) * kstride, D, acc.data());
        }
        T* dqb = dq + b * D * HW + pix;
        for (int64_t d = 0; d < D; ++d) dqb[d * HW] = scale * hsum(acc[d]);
      }
    }
  });
  const OffBuckets bk = make_buckets(o, off, B);
  const int64_t work = W * (kBlock + 1) * (2 * o.r + 1) * D * std::max<int64_t>(1, Tn);
  for_key_blocks(
      o, bk, B, off, dk, D, scale, static_cast<T*>(nullptr), 0, T(1), work,
      [&] { return std::make_pair(UnitBufs<T>(o, D, 0, 0), std::vector<T>(P)); },
      [&](auto& sc, int64_t b, int64_t t, int64_t k0, int64_t k1, int64_t pix, const Unit<T>& u, T* DK, T*) {
        UnitBufs<T>& ub = sc.first;
        if (!select_rows(o, u, ones.data(), k0, k1, ub)) return;
        const int64_t off_p = (b * TP + t * P) * HW + pix;
        affinity_dl(attn + off_p, grad + off_p, HW, P, normalize, normalize ? rowdot[b * HW + pix] : T(0),
                    sc.second.data());
        gather_channels(ub.qv.data(), q + b * D * HW + pix, D, HW);
        ub.clear_grids();
        spread_selected(o, u, sc.second.data(), ub, ub.Wg.data(), ub.touched.data());
        grid_scatter(o, u, ub.Wg.data(), ub.touched.data(), ub.qv.data(), D, DK, k0, k1);
      });
}

// ---------------------------------------------------------------------------- copy

template <typename T>
void offset_copy_fwd_k(const Window& g, const T* attn, const T* VP, const T* off, T* out, int64_t B, int64_t C) {
  const OffGrid<T> o(g);
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, P = o.P, TP = o.TP, vstride = H * C * o.Wpad;
  const std::vector<int32_t> ones(P, 1);
  const PixelTiles tiles(B, H, W);
  parallel_for(0, tiles.ntask, grain_for(tiles.size * TP * C), [&](int64_t begin, int64_t end) {
    UnitBufs<T> ub(o, 0, C, 0);
    std::vector<T> a(P);
    VBuf<T> acc(std::max<int64_t>(C, 1));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = tiles.batch(task);
      for (int64_t i = 0, n_ = tiles.count(task); i < n_; ++i) {
        const int64_t y = tiles.y(task, i), x = tiles.x(task, i);
        const int64_t pix = y * W + x;
        acc.fill(V<T>{}, C);
        for (int64_t t = 0; t < Tn; ++t) {
          const T* ob = off + (b * Tn + t) * 2 * HW + pix;
          const Unit<T> u = make_unit(o, y, x, ob[0], ob[HW]);
          if (!select_rows(o, u, ones.data(), 0, H, ub)) continue;
          gather_channels(a.data(), attn + (b * TP + t * P) * HW + pix, P, HW);
          ub.clear_grids();
          spread_selected(o, u, a.data(), ub, ub.Wg.data(), ub.touched.data());
          grid_apply(o, u, ub.Wg.data(), ub.touched.data(), VP + (b * Tn + t) * vstride, C, acc.data());
        }
        T* obuf = out + b * C * HW + pix;
        for (int64_t c = 0; c < C; ++c) obuf[c * HW] = hsum(acc[c]);
      }
    }
  });
}

template <typename T>
void offset_copy_bwd_k(const Window& g, const T* grad, const T* attn, const T* VP, const T* off, T* dattn, T* dv,
                       int64_t B, int64_t C) {
  const OffGrid<T> o(g);
  const int64_t H = o.H, W = o.W, HW = o.HW, Tn = o.Tn, P = o.P, TP = o.TP, vstride = H * C * o.Wpad;
  const std::vector<int32_t> ones(P, 1);
  const PixelTiles tiles(B, H, W);
  parallel_for(0, tiles.ntask, grain_for(tiles.size * TP * C), [&](int64_t begin, int64_t end) {
    UnitBufs<T> ub(o, 0, C, 0);
    std::vector<T> da(P);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = tiles.batch(task);
      for (int64_t i = 0, n_ = tiles.count(task); i < n_; ++i) {
        const int64_t y = tiles.y(task, i), x = tiles.x(task, i);
        const int64_t pix = y * W + x;
        gather_channels(ub.gv.data(), grad + b * C * HW + pix, C, HW);
        for (int64_t t = 0; t < Tn; ++t) {
          const T* ob = off + (b * Tn + t) * 2 * HW + pix;
          const Unit<T> u = make_unit(o, y, x, ob[0], ob[HW]);
          std::fill(da.begin(), da.end(), T(0));
          if (select_rows(o, u, ones.data(), 0, H, ub)) {
            grid_dots(o, u, ub.gv.data(), C, VP + (b * Tn + t) * vstride, ub.need.data(), ub.R.data());
            for (int64_t iy = 0; iy <= 2 * o.r; ++iy) {
              if (!ub.rowsel[iy]) continue;
              const int64_t n = o.cells(iy), lo = g.lo[iy], pb = g.row_base[iy];
              grid_combine(o, u, ub.R.data(), iy, da.data() + pb);
              for (int64_t j = 0; j < n; ++j)
                if (!col_valid(o, u, lo + j)) da[pb + j] = 0;
            }
          }
          T* db = dattn + (b * TP + t * P) * HW + pix;
          for (int64_t p = 0; p < P; ++p) db[p * HW] = da[p];
        }
      }
    }
  });
  const OffBuckets bk = make_buckets(o, off, B);
  const int64_t work = W * (kBlock + 1) * (2 * o.r + 1) * C * std::max<int64_t>(1, Tn);
  for_key_blocks(
      o, bk, B, off, static_cast<T*>(nullptr), 0, T(1), dv, C, T(1), work,
      [&] { return std::make_pair(UnitBufs<T>(o, 0, C, 0), std::vector<T>(P)); },
      [&](auto& sc, int64_t b, int64_t t, int64_t k0, int64_t k1, int64_t pix, const Unit<T>& u, T*, T* DV) {
        UnitBufs<T>& ub = sc.first;
        if (!select_rows(o, u, ones.data(), k0, k1, ub)) return;
        gather_channels(sc.second.data(), attn + (b * TP + t * P) * HW + pix, P, HW);
        gather_channels(ub.gv.data(), grad + b * C * HW + pix, C, HW);
        ub.clear_grids();
        spread_selected(o, u, sc.second.data(), ub, ub.Wg.data(), ub.touched.data());
        grid_scatter(o, u, ub.Wg.data(), ub.touched.data(), ub.gv.data(), C, DV, k0, k1);
      });
}

}  // namespace DC_ISA
}  // namespace densecorr_cpu
