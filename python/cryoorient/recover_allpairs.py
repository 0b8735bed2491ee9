"""Full-batch orientation recovery: Adam over the quaternions on the all-pairs loss L_OR.

Every epoch uses every pair i < j (paper eq. 4 without sampling), either with d_p computed from
the projection features by the fused kernel (``cryoorient.ops.allpairs_loss``) or read from a
1-byte ``DistanceCache`` (``cryoorient.ops.allpairs_loss_cached``, ~4× less work per epoch).
The objective is the mean over pairs, L_OR / n_pairs (radians²). The learning rate follows a
cosine decay from ``lr`` to ``lr·final_lr_ratio`` over ``max_epochs``; quaternions are
renormalised after each step. Recovery stops early once the loss has dropped by less than a
fraction ``tol`` over the last ``patience`` epochs, or reaches ``target_loss`` (default 1e-8 rad²:
an RMS distance residual of 1e-4 rad).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import ops
from .ops import DistanceCache
from .ops.allpairs import check_inputs, distance_code, weight_cutoff


@dataclass
class AllPairsRecovery:
    """Result of ``recover_orientations_allpairs``."""

    q: Tensor  # (P, 4) recovered unit quaternions (scalar-first), up to a global O(4) transform
    losses: list[float] = field(default_factory=list)  # mean loss per pair (radians²), per epoch
    converged: bool = False  # stopped by tol / target_loss rather than max_epochs
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.losses)


def recover_orientations_allpairs(
    features: Tensor | None = None,
    *,
    cache: DistanceCache | None = None,
    distance: str = "snn",
    weight=None,
    q0: Tensor | None = None,
    lr: float = 0.1,
    final_lr_ratio: float = 0.01,
    max_epochs: int = 300,
    tol: float = 1e-3,
    patience: int = 25,
    target_loss: float = 1e-8,
    seed: int = 0,
    callback=None,
) -> AllPairsRecovery:
    """Recover P orientations from all pairwise feature distances.

    Give either ``features`` (P, n_f) with ``distance`` ("snn" or "signless"), or a ``cache``
    from ``cryoorient.ops.allpairs_distance_cache`` covering all rows. ``weight`` as in
    ``allpairs_loss``. ``q0``: (P, 4) initial quaternions (default: uniform random, from
    ``seed``). ``callback(epoch, q, loss)``, if given, runs after every epoch.
    """
    if (features is None) == (cache is None):
        raise ValueError("give exactly one of features or cache")
    if cache is not None:
        if not isinstance(cache, DistanceCache):
            raise TypeError(f"cache must be a DistanceCache; got {type(cache).__name__}")
        if cache.rows != (0, cache.num_projections):
            raise ValueError(f"cache must cover every row (0, {cache.num_projections}); got rows {cache.rows}")
        P, device = cache.num_projections, cache.codes.device
    else:
        features, _ = check_inputs(features, None, validate=True)
        distance_code(distance)
        P, device = features.shape[0], features.device
    weight_cutoff(weight)
    if not (lr > 0 and 0 < final_lr_ratio <= 1 and max_epochs >= 1 and patience >= 1 and tol >= 0):
        raise ValueError("need lr > 0, 0 < final_lr_ratio <= 1, max_epochs >= 1, patience >= 1 and tol >= 0")
    if q0 is None:
        g = torch.Generator().manual_seed(seed)
        q0 = torch.randn(P, 4, generator=g)
    if q0.shape != (P, 4):
        raise ValueError(f"q0 must have shape ({P}, 4); got {tuple(q0.shape)}")
    q = torch.nn.functional.normalize(q0.to(device=device, dtype=torch.float32), dim=1).requires_grad_(True)
    n_pairs = P * (P - 1) // 2
    opt = torch.optim.Adam([q], lr=lr)
    result = AllPairsRecovery(q=q.detach())
    t0 = time.perf_counter()
    for epoch in range(max_epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs)))
        if cache is not None:
            loss = ops.allpairs_loss_cached(cache, q, weight, validate=False)
        else:
            loss = ops.allpairs_loss(features, q, distance, weight, validate=False)
        loss = loss / n_pairs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            q /= torch.linalg.vector_norm(q, dim=1, keepdim=True)
        value = loss.item()
        result.losses.append(value)
        if callback is not None:
            callback(epoch, q.detach(), value)
        window = result.losses[-patience - 1 :]
        if value <= target_loss or (len(window) > patience and window[0] - value < tol * window[0]):
            result.converged = True
            break
    result.q = q.detach()
    result.seconds = time.perf_counter() - t0
    return result
