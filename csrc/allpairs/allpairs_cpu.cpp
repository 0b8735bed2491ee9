// CPU all-pairs kernels: kTile × kTile blocks of feature cosines, each thread over
// a contiguous range of tiles with its own gradient buffer; buffers and partial
// losses are summed in thread order, so results are reproducible for a thread count.
#include <limits>
#include <vector>

#include "allpairs/allpairs.h"
#include "allpairs/allpairs_math.h"
#include "common.h"

namespace cryoorient {
using namespace allpairs;

namespace {

constexpr int B = kTile;
constexpr int KC = 32;  // k-chunk of the block products (keeps a B×KC slice in L1)

// C[r][c] = <f[row0 + r], f[col0 + c]> for r < nr, c < nc (C: B × B row-major;
// columns ≥ nc are 0). bt: scratch of KC × B.
template <typename T>
void tile_dot(const T* f, int64_t ld, int64_t nf, int64_t row0, int nr, int64_t col0, int nc, T* C, T* bt) {
  for (int r = 0; r < nr; ++r)
    for (int c = 0; c < B; ++c) C[r * B + c] = T(0);
  for (int64_t k0 = 0; k0 < nf; k0 += KC) {
    const int kn = static_cast<int>(std::min<int64_t>(KC, nf - k0));
    for (int c = 0; c < B; ++c)
      for (int k = 0; k < kn; ++k) bt[k * B + c] = c < nc ? f[(col0 + c) * ld + k0 + k] : T(0);
    for (int r = 0; r < nr; ++r) {
      T* cr = C + r * B;
      const T* fr = f + (row0 + r) * ld + k0;
      for (int k = 0; k < kn; ++k) {
        const T x = fr[k];
        const T* b = bt + k * B;
        for (int c = 0; c < B; ++c) cr[c] += x * b[c];
      }
    }
  }
}

// Threads used by for_tile_ranges, and the split itself: fn(thread, tile_begin,
// tile_end) over n_tiles tiles of equal work (counted in pairs for parallel_for).
inline int tile_threads(int64_t n_tiles, int nthreads) { return effective_threads(n_tiles * kTileBytes, nthreads); }
template <typename Fn>
void for_tile_ranges(int64_t n_tiles, int nthreads, Fn&& fn) {
  parallel_for(n_tiles * kTileBytes, tile_threads(n_tiles, nthreads),
               [&](int64_t b, int64_t e, int t) { fn(t, b / kTileBytes, e / kTileBytes); });
}

// (t, u) of triangle tile L (row-major over u ≥ t).
inline void tri_tile_of(int64_t L, int64_t Tc, int64_t* t, int64_t* u) {
  int64_t r = 0;
  while (tri_tile_index(r + 1, r + 1, Tc) <= L) ++r;
  *t = r;
  *u = r + (L - tri_tile_index(r, r, Tc));
}

struct TriGeometry {
  int64_t s, e, P, Tr, Tc, n_tiles;
  explicit TriGeometry(const AllPairsArgs& a)
      : s(a.row_start), e(a.row_stop), P(a.P), Tr(ceil_div(a.row_stop - a.row_start, B)),
        Tc(ceil_div(a.P - a.row_start, B)), n_tiles(tri_tile_count(Tr, Tc)) {}
};

// Visits the triangle tiles [tb, te) in order: fn(t, u, row0, nr, col0, nc).
template <typename Fn>
void visit_tri_tiles(const TriGeometry& g, int64_t tb, int64_t te, Fn&& fn) {
  if (tb >= te) return;
  int64_t t, u;
  tri_tile_of(tb, g.Tc, &t, &u);
  for (int64_t L = tb; L < te; ++L) {
    const int64_t row0 = g.s + t * B, col0 = g.s + u * B;
    fn(t, u, row0, static_cast<int>(std::min<int64_t>(B, g.e - row0)), col0,
       static_cast<int>(std::min<int64_t>(B, g.P - col0)));
    if (++u == g.Tc) {
      ++t;
      u = t;
    }
  }
}

// Per-thread loss and P×4 gradient accumulators, reduced in thread order.
struct Accumulators {
  std::vector<double> loss;
  std::vector<std::vector<double>> grad;
  Accumulators(int nt, int64_t P, bool with_grad)
      : loss(nt, 0.0), grad(with_grad ? nt : 0, std::vector<double>(with_grad ? 4 * P : 0, 0.0)) {}
  template <typename T>
  void reduce(double* loss_out, T* grad_out) const {
    double l = 0;
    for (double v : loss) l += v;
    *loss_out += l;
    if (grad.empty()) return;
    const size_t n = grad[0].size();
    for (size_t k = 0; k < n; ++k) {
      double v = 0;
      for (const auto& g : grad) v += g[k];
      grad_out[k] += static_cast<T>(v);
    }
  }
};

// Adds one pair's loss term and gradient (w.r.t. the unit quaternions) to the accumulators.
template <typename T>
inline double add_pair(T dp, const T* qa, const T* qb, double* g, int64_t i, int64_t j) {
  const T dot = qa[0] * qb[0] + qa[1] * qb[1] + qa[2] * qb[2] + qa[3] * qb[3];
  T k;
  const T l = pair_loss(dp, dot, &k);
  if (g) {
    const double k4 = 4.0 * static_cast<double>(k);
    for (int m = 0; m < 4; ++m) {
      g[4 * i + m] += k4 * qb[m];
      g[4 * j + m] += k4 * qa[m];
    }
  }
  return static_cast<double>(l);
}

template <typename T, int K>
void loss_impl(const AllPairsArgs& a, const uint8_t* codes, double* loss, T* grad_q, int nthreads) {
  const TriGeometry geo(a);
  const T* f = static_cast<const T*>(a.f);
  const T* q = static_cast<const T*>(a.q);
  const T cutoff = static_cast<T>(a.cutoff);
  Accumulators acc(tile_threads(geo.n_tiles, nthreads), a.P, grad_q != nullptr);
  for_tile_ranges(geo.n_tiles, nthreads, [&](int th, int64_t tb, int64_t te) {
    std::vector<T> C(codes ? 0 : B * B), bt(codes ? 0 : KC * B);
    double* g = grad_q ? acc.grad[th].data() : nullptr;
    double l = 0;
    visit_tri_tiles(geo, tb, te, [&](int64_t t, int64_t u, int64_t row0, int nr, int64_t col0, int nc) {
      if (!codes) tile_dot(f, a.ld, a.nf, row0, nr, col0, nc, C.data(), bt.data());
      const uint8_t* tile = codes ? codes + tri_tile_index(t, u, geo.Tc) * kTileBytes : nullptr;
      for (int r = 0; r < nr; ++r) {
        const int64_t i = row0 + r;
        const T* qa = q + 4 * i;
        double racc[4] = {0, 0, 0, 0};
        for (int c = (t == u ? r + 1 : 0); c < nc; ++c) {
          const int64_t j = col0 + c;
          const T dp = codes ? static_cast<T>(decode_distance(tile[code_offset(r, c)]))
                             : feature_distance<K>(C[r * B + c]);
          if (!(dp <= cutoff)) continue;
          const T* qb = q + 4 * j;
          T k;
          l += pair_loss(dp, qa[0] * qb[0] + qa[1] * qb[1] + qa[2] * qb[2] + qa[3] * qb[3], &k);
          if (g) {
            const double k4 = 4.0 * static_cast<double>(k);
            for (int m = 0; m < 4; ++m) {
              racc[m] += k4 * qb[m];
              g[4 * j + m] += k4 * qa[m];
            }
          }
        }
        if (g)
          for (int m = 0; m < 4; ++m) g[4 * i + m] += racc[m];
      }
    });
    acc.loss[th] = l;
  });
  acc.reduce(loss, grad_q);
}

template <typename T, int K>
void cache_build_impl(const AllPairsArgs& a, uint8_t* codes, int nthreads) {
  const TriGeometry geo(a);
  const T* f = static_cast<const T*>(a.f);
  for_tile_ranges(geo.n_tiles, nthreads, [&](int, int64_t tb, int64_t te) {
    std::vector<T> C(B * B), bt(KC * B);
    visit_tri_tiles(geo, tb, te, [&](int64_t t, int64_t u, int64_t row0, int nr, int64_t col0, int nc) {
      tile_dot(f, a.ld, a.nf, row0, nr, col0, nc, C.data(), bt.data());
      uint8_t* tile = codes + tri_tile_index(t, u, geo.Tc) * kTileBytes;
      for (int r = 0; r < nr; ++r)
        for (int c = (t == u ? r + 1 : 0); c < nc; ++c)
          tile[code_offset(r, c)] = encode_distance(feature_distance<K>(C[r * B + c]));
    });
  });
}

template <typename T, int K>
void grad_strip_impl(const AllPairsArgs& a, int64_t k0, int64_t k1, T* G, int64_t ldg, int nthreads) {
  const T* f = static_cast<const T*>(a.f);
  const T* q = static_cast<const T*>(a.q);
  const int64_t s = a.row_start, Tk = ceil_div(k1 - k0, B), Tc = ceil_div(a.P - s, B);
  const T cutoff = static_cast<T>(a.cutoff);
  for_tile_ranges(Tk * Tc, nthreads, [&](int, int64_t tb, int64_t te) {
    std::vector<T> C(B * B), bt(KC * B);
    for (int64_t L = tb; L < te; ++L) {
      const int64_t row0 = k0 + (L / Tc) * B, col0 = s + (L % Tc) * B;
      const int nr = static_cast<int>(std::min<int64_t>(B, k1 - row0));
      const int nc = static_cast<int>(std::min<int64_t>(B, a.P - col0));
      tile_dot(f, a.ld, a.nf, row0, nr, col0, nc, C.data(), bt.data());
      for (int r = 0; r < nr; ++r) {
        const int64_t k = row0 + r;
        T* Gr = G + (k - k0) * ldg + (col0 - s);
        for (int c = 0; c < nc; ++c) {
          const int64_t j = col0 + c;
          T g = T(0);
          if (j != k && std::min(j, k) < a.row_stop) {
            T dd;
            const T dp = feature_distance<K>(C[r * B + c], &dd);
            if (dp <= cutoff) {
              const T* qa = q + 4 * k;
              const T* qb = q + 4 * j;
              g = T(2) * (dp - orientation_distance(qa[0] * qb[0] + qa[1] * qb[1] + qa[2] * qb[2] + qa[3] * qb[3])) * dd;
            }
          }
          Gr[c] = g;
        }
      }
    }
  });
}

template <typename T>
void knn_impl(const AllPairsArgs& a, int kk, T* dist, int64_t* index, int nthreads) {
  const T* f = static_cast<const T*>(a.f);
  const int64_t r0 = a.row_start, Tr = ceil_div(a.row_stop - r0, B), Tc = ceil_div(a.P, B);
  // A row of tiles t goes to the thread whose tile range holds its first tile t·Tc.
  for_tile_ranges(Tr * Tc, nthreads, [&](int, int64_t tb, int64_t te) {
    std::vector<T> C(B * B), bt(KC * B), keys(B * kk);
    std::vector<int64_t> idx(B * kk);
    for (int64_t t = ceil_div(tb, Tc); t < ceil_div(te, Tc); ++t) {
      const int64_t row0 = r0 + t * B;
      const int nr = static_cast<int>(std::min<int64_t>(B, a.row_stop - row0));
      std::fill(keys.begin(), keys.end(), -std::numeric_limits<T>::infinity());
      std::fill(idx.begin(), idx.end(), std::numeric_limits<int64_t>::max());
      for (int64_t col0 = 0; col0 < a.P; col0 += B) {
        const int nc = static_cast<int>(std::min<int64_t>(B, a.P - col0));
        tile_dot(f, a.ld, a.nf, row0, nr, col0, nc, C.data(), bt.data());
        for (int r = 0; r < nr; ++r) {
          const int64_t i = row0 + r;
          T* kr = keys.data() + r * kk;
          int64_t* ir = idx.data() + r * kk;
          for (int c = 0; c < nc; ++c) {
            const int64_t j = col0 + c;
            const T cv = C[r * B + c];
            const T key = a.distance == kSNN ? cv : (cv < 0 ? -cv : cv);
            if (j == i || !knn_before(key, j, kr[kk - 1], ir[kk - 1])) continue;
            int p = kk - 1;
            for (; p > 0 && knn_before(key, j, kr[p - 1], ir[p - 1]); --p) {
              kr[p] = kr[p - 1];
              ir[p] = ir[p - 1];
            }
            kr[p] = key;
            ir[p] = j;
          }
        }
      }
      // d_p of a key: snn keys are c, signless keys |c|; 2·arccos(clamp(key, 0, 1)) for both.
      for (int r = 0; r < nr; ++r)
        for (int m = 0; m < kk; ++m) {
          const int64_t o = (row0 - r0 + r) * kk + m;
          dist[o] = feature_distance<kSNN>(keys[r * kk + m]);
          index[o] = idx[r * kk + m];
        }
    }
  });
}

template <typename T>
T feature_dot(const T* a, const T* b, int64_t n) {
  T s[8] = {};  // independent partial sums (vectorisable)
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int m = 0; m < 8; ++m) s[m] += a[k + m] * b[k + m];
  for (; k < n; ++k) s[0] += a[k] * b[k];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

template <typename T, int K>
void sampled_loss_impl(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double* loss, T* grad_q, int nthreads) {
  const T* f = static_cast<const T*>(a.f);
  const T* q = static_cast<const T*>(a.q);
  const int nt = effective_threads(n_pairs, nthreads);
  const T cutoff = static_cast<T>(a.cutoff);
  Accumulators acc(nt, a.P, grad_q != nullptr);
  parallel_for(n_pairs, nt, [&](int64_t b, int64_t e, int th) {
    double* g = grad_q ? acc.grad[th].data() : nullptr;
    double l = 0;
    for (int64_t n = b; n < e; ++n) {
      int64_t i, j;
      sampled_pair(key, n, a.P, &i, &j);
      const T dp = feature_distance<K>(feature_dot(f + i * a.ld, f + j * a.ld, a.nf));
      if (dp <= cutoff) l += add_pair(dp, q + 4 * i, q + 4 * j, g, i, j);
    }
    acc.loss[th] = l;
  });
  acc.reduce(loss, grad_q);
}

template <typename T, int K>
void sampled_grad_features_impl(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double scale, T* gf) {
  const T* f = static_cast<const T*>(a.f);
  const T* q = static_cast<const T*>(a.q);
  for (int64_t n = 0; n < n_pairs; ++n) {
    int64_t i, j;
    sampled_pair(key, n, a.P, &i, &j);
    const T* fi = f + i * a.ld;
    const T* fj = f + j * a.ld;
    T dd;
    const T dp = feature_distance<K>(feature_dot(fi, fj, a.nf), &dd);
    if (!(dp <= static_cast<T>(a.cutoff))) continue;
    const T* qa = q + 4 * i;
    const T* qb = q + 4 * j;
    const T dq = orientation_distance(qa[0] * qb[0] + qa[1] * qb[1] + qa[2] * qb[2] + qa[3] * qb[3]);
    const T g = static_cast<T>(scale) * T(2) * (dp - dq) * dd;
    for (int64_t k = 0; k < a.nf; ++k) {
      gf[i * a.ld + k] += g * fj[k];
      gf[j * a.ld + k] += g * fi[k];
    }
  }
}

#define AP_DISPATCH_CPU(code, T, ...)                                            \
  [&] {                                                                          \
    switch (code) {                                                              \
      case kF32: { using T = float; return __VA_ARGS__(); }                      \
      case kF64: { using T = double; return __VA_ARGS__(); }                     \
      default: fail("CPU all-pairs kernels take float32 or float64 features");   \
    }                                                                            \
  }()

}  // namespace

void allpairs_loss_cpu(const AllPairsArgs& a, double* loss, void* grad_q, int nthreads) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] {
    dispatch_distance(a.distance, [&](auto kind) {
      loss_impl<T, decltype(kind)::value>(a, nullptr, loss, static_cast<T*>(grad_q), nthreads);
    });
  });
}

void allpairs_cache_build_cpu(const AllPairsArgs& a, uint8_t* codes, int nthreads) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] {
    dispatch_distance(a.distance, [&](auto kind) { cache_build_impl<T, decltype(kind)::value>(a, codes, nthreads); });
  });
}

void allpairs_cache_loss_cpu(const AllPairsArgs& a, const uint8_t* codes, double* loss, void* grad_q, int nthreads) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] { loss_impl<T, kSNN>(a, codes, loss, static_cast<T*>(grad_q), nthreads); });
}

void allpairs_grad_strip_cpu(const AllPairsArgs& a, int64_t k0, int64_t k1, void* G, int64_t ldg, int nthreads) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] {
    dispatch_distance(a.distance, [&](auto kind) {
      grad_strip_impl<T, decltype(kind)::value>(a, k0, k1, static_cast<T*>(G), ldg, nthreads);
    });
  });
}

void allpairs_knn_cpu(const AllPairsArgs& a, int k, void* dist, int64_t* index, int nthreads) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] { knn_impl<T>(a, k, static_cast<T*>(dist), index, nthreads); });
}

void sampled_pairs_cpu(uint64_t key, int64_t P, int64_t n_pairs, int64_t* i, int64_t* j, int nthreads) {
  parallel_for(n_pairs, nthreads, [&](int64_t b, int64_t e, int) {
    for (int64_t n = b; n < e; ++n) sampled_pair(key, n, P, i + n, j + n);
  });
}

void sampled_loss_cpu(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double* loss, void* grad_q,
                      int nthreads) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] {
    dispatch_distance(a.distance, [&](auto kind) {
      sampled_loss_impl<T, decltype(kind)::value>(a, key, n_pairs, loss, static_cast<T*>(grad_q), nthreads);
    });
  });
}

void sampled_grad_features_cpu(const AllPairsArgs& a, uint64_t key, int64_t n_pairs, double scale, void* grad_f,
                               int) {
  AP_DISPATCH_CPU(a.fdtype, T, [&] {
    dispatch_distance(a.distance, [&](auto kind) {
      sampled_grad_features_impl<T, decltype(kind)::value>(a, key, n_pairs, scale, static_cast<T*>(grad_f));
    });
  });
}

}  // namespace cryoorient
