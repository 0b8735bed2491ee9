"""Alignment of recovered orientations to the truth, and the orientation recovery error E_OR.

Recovered orientations are defined up to an isometry of the quaternion sphere, so the paper
(eq. 5) scores them after the best global alignment T ∈ O(4):
``E_OR = min_T (1/P) Σ_i d_q(q_i, T·q̂_i)``. O(4) covers every ambiguity of the recovery: a
global rotation on either side (``q ↦ a·q·b``, proper) and the handedness flip (``q ↦ q̄``,
improper; the paper's reflection ``diag(-1, 1, 1, 1)`` maps q to -q̄, the same rotation).

T follows the paper's eq. 6, ``T = diag(m, 1, 1, 1) · G01(θ0)·G02(θ1)·G03(θ2)·G12(θ3)·G13(θ4)·G23(θ5)``
with ``m = -1`` for an improper T and ``G_ij`` the rotation of the (x_i, x_j) plane of the
scalar-first quaternion (w, x, y, z): ``G[i][i] = G[j][j] = cos θ``, ``G[j][i] = -G[i][j] = sin θ``.
Angles and errors are in radians.
"""

from __future__ import annotations

import torch
from torch import Tensor

PLANES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def plane_rotations_to_matrix(angles: Tensor, reflect: Tensor | bool) -> Tensor:
    """T (..., 4, 4) of eq. 6 from the angles (..., 6) and the reflection flags (...,) bool."""
    reflect = torch.as_tensor(reflect, device=angles.device)
    eye = torch.eye(4, dtype=angles.dtype, device=angles.device)
    m = torch.where(reflect, -1.0, 1.0).to(angles.dtype)
    T = eye.expand(*angles.shape[:-1], 4, 4).clone()
    T[..., 0, 0] = m
    for p, (i, j) in enumerate(PLANES):
        c, s = torch.cos(angles[..., p]), torch.sin(angles[..., p])
        G = eye.expand(*angles.shape[:-1], 4, 4).clone()
        G[..., i, i] = c
        G[..., j, j] = c
        G[..., j, i] = s
        G[..., i, j] = -s
        T = T @ G
    return T


def matrix_to_plane_rotations(T: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``plane_rotations_to_matrix`` for orthogonal T (..., 4, 4): (angles float64, reflect).

    The reflection is ``det T < 0``. Column ``c`` of the remaining rotation is ``e_c`` turned by
    its planes (c, j), j > c, which gives their angles by atan2; those rotations are then peeled off.
    """
    T = T.to(torch.float64)
    reflect = torch.linalg.det(T) < 0
    S = T.clone()
    S[..., 0, :] = torch.where(reflect[..., None], -T[..., 0, :], T[..., 0, :])
    angles = torch.zeros(*T.shape[:-2], 6, dtype=torch.float64, device=T.device)
    for c in range(3):
        x = S[..., :, c]
        for j in range(c + 1, 4):
            p = PLANES.index((c, j))
            base = x[..., c] if j == c + 1 else torch.linalg.vector_norm(x[..., c:j], dim=-1)
            angles[..., p] = torch.atan2(x[..., j], base)
        mask = torch.tensor([a == c for a, _ in PLANES], device=T.device)
        G = plane_rotations_to_matrix(torch.where(mask, angles, 0.0), torch.zeros_like(reflect))
        S = G.transpose(-1, -2) @ S
    return angles, reflect
