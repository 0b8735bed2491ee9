"""Training targets and the loss L_DE (paper eqs. 2–3).

``L_DE = mean over pairs of (d̂_p(p_i, p_j) − d_q(q_i, q_j))²`` (the paper's sum, divided by
the number of pairs), with pairs whose true distances are uniform on [0, π] (paper §3.1):
uniformly sampled orientations make large distances far more common, which would bias d̂_p.
:func:`binned_de_loss` re-weights the pairs of a batch to that uniform distribution.

Symmetric maps: targets are ``min_g d_q(q_i, q_j·g)`` over the point group
(``geometry.symmetric_quat_distance``), so identical projections have target 0.
Distances in radians; quaternions scalar-first (RELION's ``A``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..geometry import quat_distance, symmetric_quat_distance, symmetry_group

__all__ = ["point_group", "target_distance", "pairwise_target_distance", "binned_de_loss"]


def point_group(symmetry: Optional[str], like: Tensor) -> Optional[Tensor]:
    """The quaternions (G, 4) of ``symmetry``'s point group on ``like``'s dtype and device, or
    None for no symmetry (None or 'C1'). Raises for an unknown name."""
    if symmetry is None or symmetry.strip().upper() == "C1":
        return None
    return symmetry_group(symmetry, dtype=like.dtype, device=like.device)


def target_distance(qa: Tensor, qb: Tensor, symmetry: Optional[str] = None) -> Tensor:
    """d_q(qa, qb) (paper eq. 2), minimised over ``symmetry``'s point group (radians, broadcast)."""
    group = point_group(symmetry, qa)
    return quat_distance(qa, qb) if group is None else symmetric_quat_distance(qa, qb, group)


def pairwise_target_distance(q: Tensor, symmetry: Optional[str] = None, chunk_elems: int = 1 << 22) -> Tensor:
    """All-pairs target matrix ``(N, N)`` of orientations ``q`` (N, 4) (q's dtype), in chunks of rows."""
    group = point_group(symmetry, q)
    order = 1 if group is None else group.shape[0]
    rows = max(1, chunk_elems // max(1, q.shape[0] * order))
    return torch.cat([
        target_distance(q[s:s + rows, None, :], q[None, :, :], symmetry) for s in range(0, q.shape[0], rows)
    ])


def binned_de_loss(d_p: Tensor, d_q: Tensor, bins: int, target: Optional[Tensor] = None) -> Tensor:
    """L_DE with pairs re-weighted to a uniform distribution of d_q over ``bins`` bins of [0, π].

    ``d_p``, ``d_q``: 1-D, one entry per pair. Each non-empty bin weighs the same; within
    a bin the pairs weigh the same. Deterministic (integer counts, one weighted sum).
    ``target``: what d_p is compared with (default d_q; the bins always come from d_q).
    """
    if d_p.shape != d_q.shape or d_p.ndim != 1 or d_p.numel() == 0:
        raise ValueError(f"d_p and d_q must be equal non-empty 1-D tensors, got {tuple(d_p.shape)}, {tuple(d_q.shape)}")
    with torch.no_grad():
        b = (d_q * (bins / math.pi)).long().clamp_(0, bins - 1)
        counts = torch.bincount(b, minlength=bins)
        weights = 1.0 / (counts[b] * (counts > 0).sum()).to(d_p.dtype)
    target = d_q if target is None else target
    if target.shape != d_q.shape:
        raise ValueError(f"target must match d_q, got {tuple(target.shape)} vs {tuple(d_q.shape)}")
    return (weights * (d_p - target.to(d_p.dtype)) ** 2).sum()
