"""Plain-PyTorch reference implementations of every op in cryoorient.ops.

Tests compare the kernels to these, and benchmarks race against them (eager and
under torch.compile). They favour clarity over memory: no custom kernels.
"""

from __future__ import annotations

from torch import Tensor

from ..geometry import quat_distance


def qdist(q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Reference for ``cryoorient.ops.qdist``."""
    return quat_distance(q[i.long()], q[j.long()])


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
