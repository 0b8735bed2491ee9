"""Rotations as unit quaternions.

Conventions
-----------
* Quaternions are scalar-first, ``q = (w, x, y, z)``, stored in the last
  dimension of a tensor of shape ``(..., 4)``. ``q`` and ``-q`` are the same
  rotation.
* Angles are in radians unless a name says ``_deg``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def quat_distance(qa: Tensor, qb: Tensor) -> Tensor:
    """Geodesic distance d_q = 2·arccos|<a, b>| on SO(3) (paper eq. 2), radians in [0, π].

    Inputs need not be unit: both are normalised first. Computed as
    ``4·atan2(|a - s·b|, |a + s·b|)`` with ``s = sign<a, b>`` (``s = 1`` at 0), which
    keeps full precision near d = 0 where arccos does not. The gradient is finite
    everywhere: of magnitude 2 (per unit of angle) away from d = 0 and defined
    as 0 at d = 0 exactly.
    """
    a = qa / torch.linalg.vector_norm(qa, dim=-1, keepdim=True)
    b = qb / torch.linalg.vector_norm(qb, dim=-1, keepdim=True)
    dot = (a * b).sum(-1, keepdim=True)
    s = torch.where(dot < 0, -1.0, 1.0).to(a.dtype)
    v = torch.linalg.vector_norm(a - s * b, dim=-1)
    w = torch.linalg.vector_norm(a + s * b, dim=-1)
    return 4.0 * torch.atan2(v, w)
