"""Neighbour precision: how many of the partners a comparison ranks best are true neighbours.

The metric of a comparison of projections (issue 20): for each image, the fraction of its ``k``
best-scored partners whose true viewing directions lie within ``within_deg`` of its own; the
mean over images. It lives in ``learning`` so that training can select models by it;
``orientations`` uses it as well.

Conventions (those of :func:`cryoorient.orientations.abinitio.rotational_neighbors`)
-----------------------------------------------------------------------------------
* Orientations are scalar-first quaternions of RELION's A (map -> image frame); the viewing
  direction of an image is the third row of A, the map-frame direction projected along.
* Partners are nodes of ``2L`` candidates: node r < L is image ``reference[r]`` (default
  ``reference`` = all images, L = P), node L + r its mirror image p(x, −y), whose orientation is
  diag(1, −1, −1)·A: viewing direction −v. A partner matched as a mirror image counts as a true
  neighbour when −v of its image lies within ``within_deg`` of the row's v. Rows P + i of a
  (2P, K) neighbour table are the mirror images; only the P image rows are scored (the mirror
  rows hold the same matches, mirrored).
* Chance level: for views uniform on the sphere each partner's direction (±v) is uniform, so a
  random list scores the cap fraction (1 − cos θ)/2 (0.0076 for θ = 10°). A comparison blind to
  mirrors (matching the axis ±v) would score 1 − cos θ at random.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..geometry import quat_to_matrix

__all__ = ["viewing_directions", "node_directions", "true_neighbours", "neighbour_precision"]


def viewing_directions(quaternions: Tensor) -> Tensor:
    """Unit viewing directions (P, 3) float64: the third rows of the matrices A of ``quaternions`` (P, 4)."""
    q = torch.as_tensor(quaternions, dtype=torch.float64)
    return quat_to_matrix(q / q.norm(dim=-1, keepdim=True))[..., 2, :]


def _reference(reference, P: int) -> Tensor:
    ref = torch.arange(P) if reference is None else torch.as_tensor(reference).long().flatten().cpu()
    if ref.numel() < 1 or int(ref.min()) < 0 or int(ref.max()) >= P or ref.unique().numel() != ref.numel():
        raise ValueError(f"reference must hold distinct image indices in [0, {P})")
    return ref


def node_directions(quaternions: Tensor, reference=None) -> Tensor:
    """Viewing directions (2L, 3) of the candidate nodes: the L ``reference`` images (default all),
    then their mirror images (−v)."""
    v = viewing_directions(quaternions)
    ref = _reference(reference, v.shape[0])
    return torch.cat([v[ref], -v[ref]])


def true_neighbours(quaternions: Tensor, k: int = 10, reference=None) -> Tensor:
    """The ``k`` nodes (P, k) nearest each image's viewing direction, nearest first, leaving out the
    image's own node and its mirror: the perfect neighbour list of the metric."""
    v = viewing_directions(quaternions)
    P = v.shape[0]
    ref = _reference(reference, P)
    L = ref.numel()
    if not 1 <= k <= 2 * L - 2:
        raise ValueError(f"k must be in [1, {2 * L - 2}] for {L} reference images; got {k}")
    cos = v @ node_directions(quaternions, ref).T  # (P, 2L)
    own = torch.full((P,), -1, dtype=torch.long)
    own[ref] = torch.arange(L)
    mine = (own >= 0).nonzero().flatten()
    cos[mine, own[mine]] = -math.inf
    cos[mine, own[mine] + L] = -math.inf
    return cos.topk(k, dim=1).indices


def neighbour_precision(index: Tensor, quaternions: Tensor, *, reference=None, within_deg: float = 10.0,
                        k: int = 10, per_image: bool = False):
    """Mean over images of the fraction of their ``k`` best partners within ``within_deg`` degrees.

    ``index`` (P, K) or (2P, K), K ≥ k, best first: node indices as
    :func:`cryoorient.orientations.abinitio.rotational_neighbors` returns them (module docstring);
    ``quaternions`` (P, 4) the true orientations; ``reference`` the images of nodes 0..L−1
    (default all P). Returns a float, or with ``per_image`` the (P,) float64 fractions.
    """
    v = viewing_directions(quaternions)
    P = v.shape[0]
    idx = torch.as_tensor(index).long().cpu()
    if idx.ndim != 2 or idx.shape[0] not in (P, 2 * P):
        raise ValueError(f"index must be (P, K) or (2P, K) for P = {P} images; got {tuple(idx.shape)}")
    if not 1 <= k <= idx.shape[1]:
        raise ValueError(f"k must be in [1, {idx.shape[1]}] (the columns of index); got {k}")
    if not 0 < within_deg <= 180:
        raise ValueError(f"within_deg must be in (0, 180]; got {within_deg}")
    nodes = node_directions(quaternions, reference)
    idx = idx[:P, :k]
    if int(idx.min()) < 0 or int(idx.max()) >= nodes.shape[0]:
        raise ValueError(f"index must hold node indices in [0, {nodes.shape[0]})")
    cos = (nodes[idx] * v[:, None, :]).sum(-1)
    hit = (cos >= math.cos(math.radians(within_deg))).double().mean(1)
    return hit if per_image else float(hit.mean())
