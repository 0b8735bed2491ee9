"""Dataset splits and pairs of projections for distance learning (paper §3.1, Table 1).

* :func:`split_indices`: disjoint train / validation / test index sets (default 50 / 17 / 33 %,
  as the paper's 5,000 -> 2,512 / 838 / 1,650). Pairs are only ever drawn inside one split, so
  the pair sets of different splits share no projection.
* :class:`PairSampler`: streams batches of pairs ``(i, j)``, ``i != j``, from one split without
  building the P² list. With ``uniform=True`` pairs are resampled so that their true distance
  ``d_q`` is uniform over [0, π] (binned rejection sampling): uniformly random orientations
  give ``d_q`` a density ``(1 − cos d) / π`` skewed towards large distances, which would bias
  the learned distance (paper Fig. 12b). The acceptance probability of a bin is
  ``min_count / count`` from a pilot histogram of random pairs, so non-uniform orientation sets
  (Euler-uniform, limited ranges, asymmetric units) are handled too; bins seen fewer than
  ``min_count`` times in the pilot are always accepted (and stay under-represented).
* :func:`sample_pairs`: a fixed set of distinct pairs drawn the same way (e.g. the paper's
  validation and test pairs).

Distances are ``geometry.quat_distance`` (radians), or ``symmetric_quat_distance`` when a
point group is given. Everything runs on the CPU from a seed (reproducible).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from ..geometry import quat_distance, symmetric_quat_distance

__all__ = ["split_indices", "PairSampler", "sample_pairs", "SPLITS"]

SPLITS = ("train", "val", "test")


def split_indices(n: int, fractions=(0.50, 0.17, 0.33), seed: int = 0) -> dict[str, Tensor]:
    """Random disjoint ``{"train", "val", "test"}`` index sets (sorted int64) of ``range(n)``.

    Sizes are ``round(n·fraction)``; when the fractions sum to 1 the test set takes the rest.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    f = [float(x) for x in fractions]
    if len(f) != 3 or any(not math.isfinite(x) or x < 0 for x in f) or sum(f) > 1 + 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to at most 1, got {fractions!r}")
    sizes = [int(round(n * x)) for x in f]
    if abs(sum(f) - 1) <= 1e-9:
        sizes[2] = n - sizes[0] - sizes[1]
    if sizes[2] < 0 or sum(sizes) > n:
        raise ValueError(f"fractions {fractions!r} do not fit {n} projections")
    perm = torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed)))
    out, start = {}, 0
    for name, size in zip(SPLITS, sizes):
        out[name] = perm[start : start + size].sort().values
        start += size
    return out


class PairSampler:
    """Infinite stream of ``(pairs, distances)`` batches from one split.

    ``quaternions`` (P, 4) ground-truth orientations of all projections; ``indices`` the split
    (default: all). Each batch is ``pairs`` (batch_size, 2) int64 indices into ``quaternions``
    and their ``distances`` (batch_size,) float64 radians. ``bins`` histogram bins on [0, π];
    ``pilot`` random pairs estimate the histogram; ``symmetry`` a point-group name or None.
    """

    def __init__(
        self,
        quaternions: Tensor,
        indices: Tensor | None = None,
        batch_size: int = 1024,
        uniform: bool = True,
        bins: int = 16,
        symmetry: str | None = None,
        seed: int = 0,
        pilot: int = 1 << 21,
        min_count: int = 64,
    ) -> None:
        if not isinstance(quaternions, Tensor) or quaternions.ndim != 2 or quaternions.shape[1] != 4:
            raise ValueError("quaternions must be a tensor of shape (P, 4)")
        self.q = quaternions.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(self.q).all()) or bool((self.q.norm(dim=1) == 0).any()):
            raise ValueError("quaternions must be finite and non-zero")
        unit = self.q / self.q.norm(dim=1, keepdim=True)
        idx = torch.arange(self.q.shape[0]) if indices is None else torch.as_tensor(indices, dtype=torch.int64).cpu()
        if idx.ndim != 1 or idx.numel() < 2:
            raise ValueError("a split needs at least 2 projections to form pairs")
        if int(idx.min()) < 0 or int(idx.max()) >= self.q.shape[0]:
            raise IndexError(f"split indices out of range for {self.q.shape[0]} projections")
        for name, value in (("batch_size", batch_size), ("bins", bins), ("pilot", pilot), ("min_count", min_count)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.indices, self.batch_size, self.uniform, self.bins = idx, int(batch_size), bool(uniform), int(bins)
        self._unit = unit.index_select(0, idx)  # the split's unit quaternions; pairs are drawn as positions in it
        self.symmetry = symmetry
        if symmetry is not None:
            from ..geometry import symmetry_group

            self._group = symmetry_group(symmetry, dtype=torch.float64)
        # d < k π / bins  <=>  max |<a, b·g>| > cos(k π / (2 bins)): bin from dot products, no arccos
        self._edges = -torch.cos(torch.arange(1, self.bins, dtype=torch.float64) * (math.pi / (2 * self.bins)))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.accept = torch.ones(self.bins, dtype=torch.float64)
        if self.uniform:
            counts = torch.bincount(self._bins_of(self._candidates(int(pilot))), minlength=self.bins)
            counts = counts.to(torch.float64)
            common = counts >= min_count
            if not bool(common.any()):
                raise ValueError(f"pilot of {pilot} pairs too small: no bin has {min_count} pairs")
            floor = counts[common].min()
            self.accept = torch.where(common, floor / counts.clamp(min=1), torch.ones_like(counts))
        # expected fraction of candidates kept (pilot estimate, then running)
        self.acceptance_rate = float((counts * self.accept).sum() / counts.sum()) if self.uniform else 1.0
        self._tried = self._kept = 0

    def _candidates(self, m: int) -> Tensor:
        """``m`` uniformly random ordered pairs of distinct positions in the split (m, 2)."""
        k = self.indices.numel()
        a = torch.randint(k, (m,), generator=self.generator)
        b = torch.randint(k - 1, (m,), generator=self.generator)
        return torch.stack((a, b + (b >= a)), 1)

    def _distances(self, pairs: Tensor) -> Tensor:
        qa, qb = self.q[pairs[:, 0]], self.q[pairs[:, 1]]
        if self.symmetry is None:
            return quat_distance(qa, qb)
        return symmetric_quat_distance(qa, qb, self.symmetry)

    def _bins_of(self, pairs: Tensor, chunk: int = 1 << 20) -> Tensor:
        out = []
        for a in range(0, pairs.shape[0], chunk):
            qa = self._unit.index_select(0, pairs[a : a + chunk, 0])
            qb = self._unit.index_select(0, pairs[a : a + chunk, 1])
            if self.symmetry is None:
                dot = (qa * qb).sum(1).abs()
            else:
                from ..geometry import quat_multiply

                dot = (qa[:, None] * quat_multiply(qb[:, None], self._group)).sum(-1).abs().amax(1)
            out.append(torch.bucketize(-dot, self._edges))
        return torch.cat(out)

    def draw(self, m: int) -> tuple[Tensor, Tensor]:
        """``m`` pairs and their distances (one batch of any size)."""
        pairs, dists, have = [], [], 0
        while have < m:
            need = m - have
            n_cand = min(1 << 22, max(1024, int(need / self.acceptance_rate * 1.2))) if self.uniform else need
            cand = self._candidates(n_cand)
            if self.uniform:
                u = torch.rand(n_cand, generator=self.generator, dtype=torch.float64)
                cand = cand[u < self.accept[self._bins_of(cand)]]
                self._tried += n_cand
                self._kept += cand.shape[0]
                self.acceptance_rate = max(self._kept / self._tried, 1e-6)
            pairs.append(cand[:need])
            have += pairs[-1].shape[0]
        pairs = self.indices[torch.cat(pairs)]
        return pairs, self._distances(pairs)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.draw(self.batch_size)


def sample_pairs(
    quaternions: Tensor,
    indices: Tensor | None,
    n_pairs: int,
    uniform: bool = True,
    symmetry: str | None = None,
    seed: int = 0,
    bins: int = 16,
    pilot: int = 1 << 21,
) -> tuple[Tensor, Tensor]:
    """``n_pairs`` distinct unordered pairs (i < j) of one split and their distances (see
    :class:`PairSampler`). Raises ValueError if the split has fewer distinct pairs."""
    sampler = PairSampler(quaternions, indices, uniform=uniform, bins=bins, symmetry=symmetry, seed=seed, pilot=pilot)
    k = sampler.indices.numel()
    if isinstance(n_pairs, bool) or int(n_pairs) != n_pairs or n_pairs < 1 or n_pairs > k * (k - 1) // 2:
        raise ValueError(f"n_pairs must be in [1, {k * (k - 1) // 2}] for a split of {k}, got {n_pairs!r}")
    pairs = torch.empty(0, 2, dtype=torch.int64)
    dists = torch.empty(0, dtype=torch.float64)
    for _ in range(1000):
        p, d = sampler.draw(max(1024, 2 * (n_pairs - pairs.shape[0])))
        p = torch.sort(p, dim=1).values
        pairs, dists = torch.cat((pairs, p)), torch.cat((dists, d))
        key = pairs[:, 0] * quaternions.shape[0] + pairs[:, 1]
        _, first = _first_occurrence(key)
        pairs, dists = pairs[first], dists[first]
        if pairs.shape[0] >= n_pairs:
            return pairs[:n_pairs], dists[:n_pairs]
    raise ValueError(f"could not find {n_pairs} distinct pairs; the split has too few at some distances")


def _first_occurrence(key: Tensor) -> tuple[Tensor, Tensor]:
    """Unique keys and the position of each one's first occurrence, in order of first occurrence."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    pos = torch.full((uniq.numel(),), key.numel(), dtype=torch.int64)
    pos.scatter_reduce_(0, inverse, torch.arange(key.numel()), reduce="amin")
    return uniq, pos.sort().values
