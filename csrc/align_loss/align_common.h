// Shared by the align_loss CPU and CUDA kernels (host + device): the paper's parameterisation of
// T ∈ O(4) (eq. 6), one pair's term of the loss, and the chain rule to the angles.
//
//   T = diag(m, 1, 1, 1) · G01(θ0) · G02(θ1) · G03(θ2) · G12(θ3) · G13(θ4) · G23(θ5),
//
// m = -1 if reflected else +1; G_ij(θ) rotates the (x_i, x_j) plane (0-based, scalar-first
// quaternion axes w, x, y, z): G[i][i] = G[j][j] = cos θ, G[j][i] = sin θ, G[i][j] = -sin θ.
// Matrices are row-major 4×4 and act on column vectors q (T·q).
//
// Gradient: with b = T·q̂ and g_b = ∂d/∂b, dL/dT = Σ g_b q̂ᵀ, and only its part along the tangent
// space of O(4) at T matters: with Pre_p = diag(m,1,1,1)·G_0···G_p, ∂T/∂θ_p = Pre_p·J_ij·Pre_pᵀ·T
// (J_ij = ∂G_ij/∂θ at 0), so dL/dθ_p = u_jᵀ W u_i with W = Σ (g_b bᵀ − b g_bᵀ) and u the columns
// i, j of Pre_p. The kernels accumulate the 6 entries of the skew matrix W above its diagonal.
#pragma once
#include <cmath>

#include "common.h"
#include "quat.h"

namespace cryoorient {

constexpr int kAlignPlanes = 6;
constexpr int kAlignAcc = 1 + kAlignPlanes;  // loss + W (6) per candidate

CO_HD int align_plane_i(int p) { return p < 3 ? 0 : (p < 5 ? 1 : 2); }
CO_HD int align_plane_j(int p) { return p < 3 ? p + 1 : (p < 5 ? p - 1 : 3); }

// M <- M · G_ij(θ) given c = cos θ, s = sin θ.
template <typename T>
CO_HD void right_plane_rotation(T* M, int i, int j, T c, T s) {
  for (int r = 0; r < 4; ++r) {
    const T mi = M[4 * r + i], mj = M[4 * r + j];
    M[4 * r + i] = mi * c + mj * s;
    M[4 * r + j] = mj * c - mi * s;
  }
}

CO_HD void reflection(bool reflect, double* M) {
  for (int k = 0; k < 16; ++k) M[k] = (k % 5 == 0) ? 1.0 : 0.0;
  if (reflect) M[0] = -1.0;
}

// T (16, row-major) from the 6 angles (radians) and the reflection flag, in double.
CO_HD void align_transform(const double* angles, bool reflect, double* M) {
  reflection(reflect, M);
  for (int p = 0; p < kAlignPlanes; ++p)
    right_plane_rotation(M, align_plane_i(p), align_plane_j(p), cos(angles[p]), sin(angles[p]));
}

// dL/dθ (6) from the upper triangle w (6, plane order) of the skew matrix W (see above).
CO_HD void align_angle_grad(const double* angles, bool reflect, const double* w, double* grad) {
  double W[16] = {};
  for (int p = 0; p < kAlignPlanes; ++p) {
    const int i = align_plane_i(p), j = align_plane_j(p);
    W[4 * i + j] = w[p];
    W[4 * j + i] = -w[p];
  }
  double M[16];
  reflection(reflect, M);
  for (int p = 0; p < kAlignPlanes; ++p) {
    const int i = align_plane_i(p), j = align_plane_j(p);
    right_plane_rotation(M, i, j, cos(angles[p]), sin(angles[p]));
    double g = 0;
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 4; ++c) g += M[4 * r + j] * W[4 * r + c] * M[4 * c + i];
    grad[p] = g;
  }
}

// Hamilton product a·b of scalar-first quaternions.
template <typename T>
CO_HD void quat_mul(const T* a, const T* b, T* out) {
  out[0] = a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3];
  out[1] = a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2];
  out[2] = a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1];
  out[3] = a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0];
}

// One pair's term for unit qt, qe (and group): acc[0] += min_g d_q(qt·g, M·qe) and, with kGrad,
// acc[1 + p] += W_ij for plane p. The group element is the g maximising |<qt·g, M·qe>| =
// |<g, conj(qt)·M·qe>| (the nearest symmetry mate); G = 0 means no group. A: accumulator type.
template <typename T, typename A, bool kGrad>
CO_HD void align_pair(const T* M, const T* qt, const T* qe, const T* group, int64_t G, A* acc) {
  T b[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) b[r] = M[4 * r] * qe[0] + M[4 * r + 1] * qe[1] + M[4 * r + 2] * qe[2] + M[4 * r + 3] * qe[3];
  T mate[4];
  const T* a = qt;
  if (G > 0) {
    const T conj[4] = {qt[0], -qt[1], -qt[2], -qt[3]};
    T rel[4];
    quat_mul(conj, b, rel);
    T best = T(-1);
    int64_t gi = 0;
    for (int64_t g = 0; g < G; ++g) {
      const T* e = group + 4 * g;
      T v = e[0] * rel[0] + e[1] * rel[1] + e[2] * rel[2] + e[3] * rel[3];
      v = v < T(0) ? -v : v;
      if (v > best) {
        best = v;
        gi = g;
      }
    }
    quat_mul(qt, group + 4 * gi, mate);
    a = mate;
  }
  const UnitDist<T> u = unit_dist(a, b);
  acc[0] += A(u.d);
  if (kGrad) {
    // W += g bᵀ − b gᵀ with g = ∂d/∂b = −s·scale·v up to a multiple of b, which cancels;
    // v_i b_j − v_j b_i = a_i b_j − a_j b_i, but stays exact (0) where v = 0.
    const T c = -u.s * u.scale;
#pragma unroll
    for (int p = 0; p < kAlignPlanes; ++p) {
      const int i = align_plane_i(p), j = align_plane_j(p);
      acc[1 + p] += A(c * (u.v[i] * b[j] - u.v[j] * b[i]));
    }
  }
}

}  // namespace cryoorient
