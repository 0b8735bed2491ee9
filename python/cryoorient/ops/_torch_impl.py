"""Plain-PyTorch reference implementations of every op in cryoorient.ops.

Tests compare the kernels to these, and benchmarks race against them (eager and
under torch.compile). They favour clarity over memory: no custom kernels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..geometry import quat_distance, symmetric_quat_distance


def qdist(q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Reference for ``cryoorient.ops.qdist``."""
    return quat_distance(q[i.long()], q[j.long()])


def align_loss(
    angles: Tensor, reflect: Tensor, q_true: Tensor, q_est: Tensor, group: Optional[Tensor] = None
) -> Tensor:
    """Reference for ``cryoorient.ops.align_loss``: builds the (K, P, 4) aligned set."""
    from ..align import plane_rotations_to_matrix

    b = torch.einsum("kij,pj->kpi", plane_rotations_to_matrix(angles, reflect), q_est)
    if group is None:
        return quat_distance(q_true, b).mean(-1)
    return symmetric_quat_distance(b, q_true, group).mean(-1)
def pair_loss(
    q: Tensor, i: Tensor, j: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Reference for ``cryoorient.ops.pair_loss``."""
    loss = (quat_distance(q[i.long()], q[j.long()]) - target).square()
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
