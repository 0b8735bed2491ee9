// Per-pair math shared by the all-pairs CPU and CUDA kernels.
//
// Feature distance from the cosine c of two unit feature vectors:
//   snn:      d_p = 2·arccos(clamp(c, 0, 1))
//   signless: d_p = 2·arccos(min(|c|, 1))   (= d_q when the features are quaternions)
// Orientation distance from the dot product of two unit quaternions a, b:
//   d_q = 2·arccos(min(|<a, b>|, 1)), ∂d_q/∂<a, b> = -2·sign<a, b> / sin(d_q / 2).
// The kernels take unit rows; the callers normalise (and autograd differentiates
// through that normalisation), so a gradient w.r.t. a is (∂L/∂<a, b>)·b.
// 1 / sin(d/2) is capped at kMaxInvSin: gradients of pairs closer than ~2e-3 rad
// (float32; 2e-8 rad in float64) are scaled down instead of blowing up.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"
#include "quat.h"

namespace cryoorient {
namespace allpairs {

// Must match cryoorient/ops/allpairs.py (DISTANCES, FEATURE_CODES, CACHE_TILE).
enum Distance : int { kSNN = 0, kSignless = 1 };
// kTF32: float32 features multiplied with TF32 tensor-core operands (CUDA only).
enum FType : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3, kTF32 = 4 };

// Distance cache layout: the upper triangle of pairs (i < j) with i in the row block
// [s, e) and j in [s, P) is cut into kTile × kTile tiles (t, u), u ≥ t, of rows
// s + kTile·t + r and columns s + kTile·u + c; tile (t, u) starts at byte
// kTileBytes·tri_tile_index(t, u, Tc), pair (r, c) at code_offset(r, c) within it. Entries
// outside the triangle are 0.
constexpr int kTile = 128;
constexpr int64_t kTileBytes = int64_t(kTile) * kTile;

CO_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
CO_HD int64_t tri_tile_index(int64_t t, int64_t u, int64_t Tc) { return t * Tc - t * (t - 1) / 2 + (u - t); }
CO_HD int64_t tri_tile_count(int64_t Tr, int64_t Tc) { return Tr * Tc - Tr * (Tr - 1) / 2; }

// Byte of pair (r, c) within a tile, in the order the CUDA loss kernel's threads hold their
// mma.sync accumulators: warp w = c/16 takes columns 16w..16w+15; in the 16-row block
// m = r/16, lane 4·(r%8) + (c/2)%4 holds rows r%8 and r%8 + 8 (h) of columns c%2 and
// c%2 + 8 (n). Each lane's 64 bytes of a tile are four 16-byte pieces 512 bytes apart:
// w·2048 + (m/2)·512 + lane·16 + (m%2)·8 + n·4 + h·2 + c%2 (cryoorient/ops/allpairs.py
// mirrors this).
CO_HD int code_offset(int r, int c) {
  const int w = c >> 4, n = (c >> 3) & 1, t = (c >> 1) & 3, m = r >> 4, h = (r >> 3) & 1, g = r & 7;
  return w * 2048 + (m >> 1) * 512 + (4 * g + t) * 16 + (m & 1) * 8 + n * 4 + h * 2 + (c & 1);
}

template <typename T>
struct Limits;
template <>
struct Limits<float> {
  static constexpr float kMaxInvSin = 1e3f;
};
template <>
struct Limits<double> {
  static constexpr double kMaxInvSin = 1e8;
};

// min, max, |x| and copysign for float and double, on host and device.
CO_HD float co_min(float a, float b) { return fminf(a, b); }
CO_HD double co_min(double a, double b) { return fmin(a, b); }
CO_HD float co_max(float a, float b) { return fmaxf(a, b); }
CO_HD double co_max(double a, double b) { return fmax(a, b); }
CO_HD float co_abs(float a) { return fabsf(a); }
CO_HD double co_abs(double a) { return fabs(a); }
CO_HD float co_copysign(float a, float b) { return copysignf(a, b); }
CO_HD double co_copysign(double a, double b) { return copysign(a, b); }

// 2·arccos(x) for x in [0, 1]; with inv_sin, also min(1/sqrt(1 - x²), kMaxInvSin).
// float: 2·arccos x = sqrt(1 - x)·p(x) with p (half_angle_poly) a degree-5 near-minimax
// polynomial; |error| ≤ 1.7e-6 rad evaluated in float32.
CO_HD float half_angle_poly(float x) {
  float p = -0.0098223414f;
  p = fmaf(p, x, 0.0412401072f);
  p = fmaf(p, x, -0.0918544457f);
  p = fmaf(p, x, 0.1763421038f);
  p = fmaf(p, x, -0.4290856333f);
  return fmaf(p, x, 3.1415913790f);
}
CO_HD float half_angle(float x, float* inv_sin = nullptr) {
  const float u = 1.0f - x;
  if (inv_sin) *inv_sin = fminf(approx_rsqrt(fmaf(u, x, u)), Limits<float>::kMaxInvSin);  // (1-x)(1+x)
  return approx_sqrt(u) * half_angle_poly(x);
}

CO_HD double half_angle(double x, double* inv_sin = nullptr) {
  if (inv_sin) {
    const double s2 = (1.0 - x) * (1.0 + x);
    *inv_sin = s2 > 0 ? fmin(1.0 / sqrt(s2), Limits<double>::kMaxInvSin) : Limits<double>::kMaxInvSin;
  }
  return 2.0 * acos(x);
}

// d_p from the cosine c (kKind: Distance); with dd_dc, also ∂d_p/∂c (0 where the clamp
// saturates).
template <int kKind, typename T>
CO_HD T feature_distance(T c, T* dd_dc = nullptr) {
  T x, dx;
  if (kKind == kSNN) {
    x = co_min(co_max(c, T(0)), T(1));
    dx = (c > T(0) && c < T(1)) ? T(1) : T(0);
  } else {
    x = co_min(co_abs(c), T(1));
    dx = co_abs(c) < T(1) ? co_copysign(T(1), c) : T(0);
  }
  if (!dd_dc) return half_angle(x);
  T inv;
  const T d = half_angle(x, &inv);
  *dd_dc = T(-2) * inv * dx;
  return d;
}

// Runs fn(std::integral_constant<int, kind>) for a runtime Distance code (host side).
template <typename Fn>
void dispatch_distance(int kind, Fn&& fn) {
  if (kind == kSNN)
    fn(std::integral_constant<int, kSNN>{});
  else
    fn(std::integral_constant<int, kSignless>{});
}

// d_q from the dot product of two unit quaternions (inv_sin as in half_angle).
template <typename T>
CO_HD T orientation_distance(T dot, T* inv_sin = nullptr) {
  return half_angle(co_min(co_abs(dot), T(1)), inv_sin);
}

// Loss term (d_p - d_q)² of one pair and, in *dl_ddot4, (∂/∂<a, b>)/4 of it.
template <typename T>
CO_HD T pair_loss(T dp, T dot, T* dl_ddot4) {
  T inv;
  const T r = dp - orientation_distance(dot, &inv);
  *dl_ddot4 = r * co_copysign(inv, dot);
  return r * r;
}

// Device scratch of the CUDA cache loss: mma operand fragments of the quaternions, one
// kQuatFragBlockBytes block per 16 indices of [s, P).
constexpr int64_t kQuatFragBlockBytes = 1536;
CO_HD int64_t cache_scratch_bytes(int64_t P, int64_t s) { return ceil_div(P - s, 16) * kQuatFragBlockBytes; }

// 1-byte distance codes: d = code·π/255.
constexpr float kCodeStep = 3.14159265358979323846f / 255.0f;
template <typename T>
CO_HD uint8_t encode_distance(T d) {
  const T v = d * T(255.0 / 3.14159265358979323846) + T(0.5);
  return static_cast<uint8_t>(v >= T(255) ? 255 : (v <= T(0) ? 0 : static_cast<int>(v)));
}
CO_HD float decode_distance(uint32_t code) { return static_cast<float>(code) * kCodeStep; }

// Counter-based pair sampler (splitmix64). Pair n of the stream (seed, epoch) is
// i = ⌊hi32(h)·P / 2³²⌋, j = (i + 1 + ⌊lo32(h)·(P - 1) / 2³²⌋) mod P, h = mix(key + n),
// so i ≠ j, i is uniform and j is uniform over the other P - 1 projections.
CO_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
CO_HD uint64_t sampler_key(uint64_t seed, uint64_t epoch) { return splitmix64(splitmix64(seed) ^ epoch); }
CO_HD void sampled_pair(uint64_t key, int64_t n, int64_t P, int64_t* i, int64_t* j) {
  const uint64_t h = splitmix64(key + static_cast<uint64_t>(n));
  const uint64_t ii = ((h >> 32) * static_cast<uint64_t>(P)) >> 32;
  const uint64_t off = ((h & 0xFFFFFFFFull) * static_cast<uint64_t>(P - 1)) >> 32;
  *i = static_cast<int64_t>(ii);
  *j = static_cast<int64_t>((ii + 1 + off) % static_cast<uint64_t>(P));
}

// k-NN order: larger key (c for snn, |c| for signless) first, then smaller index.
template <typename T>
CO_HD bool knn_before(T ka, int64_t ia, T kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

}  // namespace allpairs
}  // namespace cryoorient
