// Quaternion distance d_q(a, b) = 2·arccos|<a, b>| (radians, [0, π]) and its
// gradient, shared by the CPU and CUDA kernels.
//
// Inputs need not be unit; they are normalised and the gradient includes the
// normalisation. Value: 4·atan2(|â - s b̂|, |â + s b̂|), s = sign<â, b̂> (s = 1 at 0),
// accurate near d = 0. Gradient w.r.t. the unit vector â is 2·(v - |v|²/2·â)/sin φ
// with v = â - s b̂ and sin φ = |v|·|â + s b̂|/2; its norm is 2 except at d = 0
// exactly, where it is defined as 0 (the sin φ in the denominator is clamped).
// This matches autograd through cryoorient.geometry.quat_distance.
//
// Float on the device uses approx_rsqrt and four_atan (below; ≈ 1e-6 relative); elsewhere the
// math is correctly rounded.
//
// kUnit: the caller guarantees unit inputs (to rounding). The normalisation is skipped and the
// gradients are the unit-sphere ones, already tangent (orthogonal to their input) for unit inputs.
#pragma once
#include <cmath>

#include "common.h"

namespace cryoorient {

template <typename T>
struct QuatDist {
  T d;
  T ga[4];  // ∂d/∂qa (unnormalised input)
  T gb[4];  // ∂d/∂qb
};

// Square root and reciprocal square root: the MUFU approximations (a few ulp) for float on
// the device, one instruction each (.ftz: denormal inputs count as 0, so callers keep their
// arguments ≥ FLT_MIN or accept sqrt = 0 / rsqrt = inf there), correctly rounded elsewhere.
CO_HD float approx_sqrt(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::sqrt(x);
#endif
}
CO_HD double approx_sqrt(double x) { return sqrt(x); }
CO_HD float approx_rsqrt(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / std::sqrt(x);
#endif
}
CO_HD double approx_rsqrt(double x) { return 1.0 / sqrt(x); }

// 4·atan(r) for r in [0, 1] (the angle d_q = 4·atan(|v| / |w|) below). Float on the device: an
// odd near-minimax polynomial of degree 17, |error| ≤ 5e-7 rad evaluated in float32.
CO_HD float four_atan(float r) {
#if defined(__CUDA_ARCH__)
  const float r2 = r * r;
  float p = 0.0024567142f;
  p = fmaf(p, r2, -0.0144013185f);
  p = fmaf(p, r2, 0.0397811607f);
  p = fmaf(p, r2, -0.0723485202f);
  p = fmaf(p, r2, 0.1049894392f);
  p = fmaf(p, r2, -0.1416122913f);
  p = fmaf(p, r2, 0.1998590678f);
  p = fmaf(p, r2, -0.3333259821f);
  p = fmaf(p, r2, 0.9999998808f);
  return 4.0f * r * p;
#else
  return 4.0f * std::atan(r);
#endif
}
CO_HD double four_atan(double r) { return 4.0 * atan(r); }

// The core of d_q for unit a, b: s = sign<a, b>, v = a − s·b, |v|², d = 4·atan(|v| / |w|) and
// scale = 2 / sin φ = 4 / (|v|·|w|) (|v|² + |w|² = 4 for unit a, b). 1/|v| is capped at 1e15:
// |v| = 0 gives v = 0 and hence zero gradients.
template <typename T>
struct UnitDist {
  T d, s, nv2, scale;
  T v[4];
};

template <typename T>
CO_HD UnitDist<T> unit_dist(const T* a, const T* b) {
  UnitDist<T> u;
  T dot = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) dot += a[k] * b[k];
  u.s = dot < T(0) ? T(-1) : T(1);
  u.nv2 = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    u.v[k] = a[k] - u.s * b[k];
    u.nv2 += u.v[k] * u.v[k];
  }
  const T inv_nv = approx_rsqrt(u.nv2 > T(1e-30) ? u.nv2 : T(1e-30));
  const T inv_nw = approx_rsqrt(T(4) - u.nv2);
  u.d = four_atan(u.nv2 * inv_nv * inv_nw);
  u.scale = T(4) * inv_nv * inv_nw;
  return u;
}

template <typename T, bool kGrad, bool kUnit = false>
CO_HD QuatDist<T> quat_dist(const T* qa, const T* qb) {
  QuatDist<T> r;
  T ina = 1, inb = 1;
  if (!kUnit) {
    T na2 = 0, nb2 = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      na2 += qa[k] * qa[k];
      nb2 += qb[k] * qb[k];
    }
    ina = approx_rsqrt(na2);
    inb = approx_rsqrt(nb2);
  }
  T a[4], b[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    a[k] = qa[k] * ina;
    b[k] = qb[k] * inb;
  }
  const UnitDist<T> u = unit_dist(a, b);
  r.d = u.d;
  if (kGrad) {
    const T h = u.nv2 * T(0.5);
    // Unit-sphere gradients, then the normalisation's projection (I - x xᵀ)/|q|.
    T ga[4], gb[4], pa = 0, pb = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      ga[k] = u.scale * (u.v[k] - h * a[k]);
      gb[k] = u.scale * (-u.s * u.v[k] - h * b[k]);
      pa += ga[k] * a[k];
      pb += gb[k] * b[k];
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      r.ga[k] = kUnit ? ga[k] : (ga[k] - pa * a[k]) * ina;
      r.gb[k] = kUnit ? gb[k] : (gb[k] - pb * b[k]) * inb;
    }
  }
  return r;
}

}  // namespace cryoorient
