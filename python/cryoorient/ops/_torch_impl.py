"""Plain-PyTorch reference implementations of every op in cryoorient.ops.

Tests compare the kernels to these, and benchmarks race against them (eager and
under torch.compile). They favour clarity over memory: no custom kernels.
"""

from __future__ import annotations

from typing import Optional
import math

import torch
from torch import Tensor

from ..geometry import quat_distance, symmetric_quat_distance


def qdist(q: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Reference for ``cryoorient.ops.qdist``."""
    return quat_distance(q[i.long()], q[j.long()])


def angle_sums(num: Tensor, den: Tensor, scale: Tensor, bias: Tensor, floor: float) -> Tensor:
    """Reference for ``cryoorient.ops.angle_sums``: every weight stored, then summed over the angles."""
    c = (num / den[..., None]).clamp_min(0)
    return (c * c * scale[:, None, None] + bias[:, None, None]).clamp_min(-floor).exp().sum(-1)


def align_loss(
    angles: Tensor, reflect: Tensor, q_true: Tensor, q_est: Tensor, group: Optional[Tensor] = None
) -> Tensor:
    """Reference for ``cryoorient.ops.align_loss``: builds the (K, P, 4) aligned set."""
    from ..geometry import plane_rotations_to_matrix

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
def unit_features(features: Tensor) -> Tensor:
    """Unit rows, rounded to the features' dtype like the op's, then computed in float32/float64."""
    work = features.double() if features.dtype == torch.float64 else features.float()
    return (work / torch.linalg.vector_norm(work, dim=1, keepdim=True)).to(features.dtype).to(work.dtype)


def _feature_distance(c: Tensor, distance: str) -> Tensor:
    x = c.clamp(0, 1) if distance == "snn" else c.abs().clamp(max=1)
    return 2 * torch.acos(x)


def _cutoff(weight) -> float:
    return math.inf if weight is None else float(weight[1])


def pair_chunks(P: int, start: int, stop: int, chunk_elements: int = 2**24, device=None):
    """Row chunks [a, b) of the row block, each with the mask of pairs j > i among rows × columns [a + 1, P)."""
    step = max(1, chunk_elements // max(P, 1))
    for a in range(start, stop, step):
        b = min(stop, a + step)
        yield a, b, torch.ones(b - a, P - a - 1, dtype=torch.bool, device=device).triu()


def allpairs_chunk_loss(
    f_rows: Tensor, f_cols: Tensor, q_rows: Tensor, q_cols: Tensor, mask: Tensor, distance: str, cutoff: float
) -> Tensor:
    """Σ over the masked entries of a rows × columns block of pairs (unit f and q) of w·(d_p - d_q)²."""
    dp = _feature_distance((f_rows @ f_cols.T)[mask], distance).to(q_rows.dtype)
    dq = 2 * torch.acos((q_rows @ q_cols.T)[mask].abs().clamp(max=1))
    return ((dp - dq).square() * (dp <= cutoff)).sum()


def allpairs_loss(
    features: Tensor,
    q: Tensor,
    distance: str = "snn",
    weight=None,
    rows=None,
    *,
    chunk_elements: int = 2**24,
    chunk_loss=allpairs_chunk_loss,
) -> Tensor:
    """Reference for ``cryoorient.ops.allpairs_loss``: row chunks of the pair matrix, autograd through acos.

    ``chunk_loss`` computes one chunk (benchmarks pass a torch.compile'd ``allpairs_chunk_loss``).
    """
    P = q.shape[0]
    start, stop = rows if rows is not None else (0, P)
    f = unit_features(features)
    qn = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    cutoff = _cutoff(weight)
    total = q.new_zeros(())
    for a, b, mask in pair_chunks(P, start, stop, chunk_elements, q.device):
        total = total + chunk_loss(f[a:b], f[a + 1 :], qn[a:b], qn[a + 1 :], mask, distance, cutoff)
    return total


def allpairs_distance_cache(features: Tensor, distance: str = "snn", rows=None):
    """Reference for ``cryoorient.ops.allpairs_distance_cache``: every pair's code, placed by byte offset."""
    from .allpairs import DistanceCache, cache_bytes

    P = features.shape[0]
    start, stop = rows if rows is not None else (0, P)
    f = unit_features(features)
    i, j = torch.triu_indices(P, P, 1, device=features.device)
    keep = (i >= start) & (i < stop)
    i, j = i[keep], j[keep]
    dp = _feature_distance((f[i] * f[j]).sum(1), distance)
    codes = torch.zeros(cache_bytes(P, start, stop), dtype=torch.uint8, device=features.device)
    cache = DistanceCache(codes, P, (start, stop), distance)
    codes[cache.byte_offsets(i, j)] = torch.floor(dp * (255 / math.pi) + 0.5).clamp(0, 255).to(torch.uint8)
    return cache


def allpairs_loss_cached(cache, q: Tensor, weight=None) -> Tensor:
    """Reference for ``cryoorient.ops.allpairs_loss_cached``."""
    P = q.shape[0]
    start, stop = cache.rows
    i, j = torch.triu_indices(P, P, 1, device=q.device)
    keep = (i >= start) & (i < stop)
    i, j = i[keep], j[keep]
    dp = cache.decode(i, j).to(q.dtype)
    qn = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    dq = 2 * torch.acos((qn[i] * qn[j]).sum(1).abs().clamp(max=1))
    return ((dp - dq).square() * (dp <= _cutoff(weight))).sum()


def feature_knn(features: Tensor, k: int, distance: str = "snn", rows=None) -> tuple[Tensor, Tensor]:
    """Reference for ``cryoorient.ops.feature_knn``: top-k of the full cosine matrix."""
    P = features.shape[0]
    start, stop = rows if rows is not None else (0, P)
    f = unit_features(features)
    c = f[start:stop] @ f.T
    key = c if distance == "snn" else c.abs()
    key[torch.arange(stop - start), torch.arange(start, stop)] = -math.inf
    top, index = torch.topk(key, k, dim=1)
    return 2 * torch.acos(top.clamp(0, 1)), index


_MASK64 = (1 << 64) - 1


def _splitmix64_int(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _signed64(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def _srl(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def sampled_pairs(num_projections: int, n_pairs: int, seed: int, epoch: int = 0, *, device="cpu"):
    """Reference for ``cryoorient.ops.sampled_pairs``: splitmix64 on int64 tensors (wrapping arithmetic)."""
    key = _splitmix64_int(_splitmix64_int(seed) ^ epoch)
    x = torch.arange(n_pairs, dtype=torch.int64, device=device) + _signed64((key + 0x9E3779B97F4A7C15) & _MASK64)
    x = (x ^ _srl(x, 30)) * _signed64(0xBF58476D1CE4E5B9)
    x = (x ^ _srl(x, 27)) * _signed64(0x94D049BB133111EB)
    h = x ^ _srl(x, 31)
    i = (_srl(h, 32) * num_projections) >> 32
    j = (i + 1 + (((h & 0xFFFFFFFF) * (num_projections - 1)) >> 32)) % num_projections
    return i, j


def sampled_feature_pair_loss(
    features: Tensor, q: Tensor, n_pairs: int, seed: int, epoch: int = 0, distance: str = "snn", weight=None
) -> Tensor:
    """Reference for ``cryoorient.ops.sampled_feature_pair_loss``."""
    i, j = sampled_pairs(q.shape[0], n_pairs, seed, epoch, device=q.device)
    f = unit_features(features)
    qn = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    dp = _feature_distance((f[i] * f[j]).sum(1), distance).to(q.dtype)
    dq = 2 * torch.acos((qn[i] * qn[j]).sum(1).abs().clamp(max=1))
    return ((dp - dq).square() * (dp <= _cutoff(weight))).sum()
