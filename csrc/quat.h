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

template <typename T>
CO_HD T co_sqrt(T x) { return sqrt(x); }
template <typename T>
CO_HD T co_atan2(T y, T x) { return atan2(y, x); }

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
    ina = T(1) / co_sqrt(na2);
    inb = T(1) / co_sqrt(nb2);
  }
  T a[4], b[4], dot = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    a[k] = qa[k] * ina;
    b[k] = qb[k] * inb;
    dot += a[k] * b[k];
  }
  const T s = dot < T(0) ? T(-1) : T(1);
  T v[4], nv2 = 0, nw2 = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    v[k] = a[k] - s * b[k];
    const T w = a[k] + s * b[k];
    nv2 += v[k] * v[k];
    nw2 += w * w;
  }
  const T nv = co_sqrt(nv2), nw = co_sqrt(nw2);
  r.d = T(4) * co_atan2(nv, nw);
  if (kGrad) {
    const T sinphi = nv * nw * T(0.5);
    const T scale = T(2) / (sinphi > T(1e-30) ? sinphi : T(1e-30));
    const T h = nv2 * T(0.5);
    // Unit-sphere gradients, then the normalisation's projection (I - x xᵀ)/|q|.
    T ga[4], gb[4], pa = 0, pb = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      ga[k] = scale * (v[k] - h * a[k]);
      gb[k] = scale * (-s * v[k] - h * b[k]);
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
