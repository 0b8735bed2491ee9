"""Where the training images come from: a dataset in memory or fresh on-the-fly projections.

* :class:`DatasetSource` — images and orientations in memory (e.g. a STAR file + stacks
  through ``cryoorient.io``, see :meth:`DatasetSource.from_star`).
* :class:`OnTheFlySource` — fresh images every batch from ``render(q, generator)``
  callables (one per map, e.g. ``imaging.render.ProjectionRenderer``), so the network never
  sees the same image twice.

Both give a :class:`Batch` of ``B`` images: ``B/2`` anchors and one partner per anchor drawn so
that the anchor–partner distance is uniform on [0, π] (on the fly: the partner is the anchor
turned by a uniform angle about a random axis; from a dataset: a random image in a uniformly
chosen distance bin of the anchor). Pairs never mix maps (``labels``).

The training images of step ``s`` on rank ``r`` are drawn with a generator seeded from
``(seed, s, r)`` (:func:`batch_generator`; fixed seeds give the validation set and pairs,
:func:`evaluation_pairs`): no stream state to save, so a resumed run continues bit for bit on the
same device and software, and resuming on another number of processes is well defined.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..geometry import euler_to_quat, quat_multiply, quat_normalize, random_quaternions
from .model import check_images
from .pairs import sample_pairs
from .targets import point_group, target_distance

__all__ = ["Batch", "DatasetSource", "OnTheFlySource", "Renderer", "evaluation_pairs", "batch_generator"]

#: ``render(q, generator) -> images``: orientations (B, 4) to images (B, H, W) on the generator's device.
Renderer = Callable[[Tensor, torch.Generator], Tensor]

#: Distance bins used to draw anchor–partner pairs from a dataset.
PARTNER_BINS = 32


class Batch(NamedTuple):
    """Images (B, H, W), orientations (B, 4) and map labels (B,) on the training device."""

    images: Tensor
    quats: Tensor
    labels: Tensor


class DatasetSource:
    """Projections with known orientations held in memory (on ``device``).

    ``images`` (N, H, W), ``quats`` (N, 4) (RELION ``A`` as quaternions), optional
    ``labels`` (N,) telling which map each image comes from (pairs never mix maps).
    ``symmetry``: point-group name for the targets (None/'C1': none).
    """

    def __init__(self, images, quats, labels=None, symmetry: Optional[str] = None, device=None):
        images = check_images(images)[:, 0]
        quats = torch.as_tensor(quats)
        if quats.ndim != 2 or quats.shape != (images.shape[0], 4) or not quats.is_floating_point():
            raise ValueError(f"quats must be floating (N, 4) with N = {images.shape[0]} images, got {tuple(quats.shape)}")
        if images.shape[0] < 2:
            raise ValueError("a dataset needs at least 2 images")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device=device, dtype=torch.float32)
        self.quats = quat_normalize(quats.to(device=device, dtype=torch.float32))
        if labels is None:
            self.labels = torch.zeros(images.shape[0], dtype=torch.long, device=device)
        else:
            self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
            if self.labels.shape != (images.shape[0],):
                raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(self.labels.shape)}")
        self.symmetry = symmetry
        point_group(symmetry, self.quats)  # validates the name

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_star(cls, path, indices=None, symmetry: Optional[str] = None, device=None,
                  pixel_size: Optional[float] = None) -> "DatasetSource":
        """Images and orientations (rlnAngleRot/Tilt/Psi) of a RELION STAR or cryoSPARC .cs particle file.

        ``indices`` selects particles (positions in the file). ``pixel_size`` (Å) supplies or
        replaces the file's; particles without one are refused. Shifts and CTF are left in the
        images: the network is trained to ignore them.
        """
        from ..io import read_particle_images, read_particles

        particles = read_particles(path, pixel_size, require_pixel_size=True)
        if indices is not None:
            particles = particles.subset(np.asarray(indices))
        angles = particles.angles
        if angles is None:
            raise ValueError(f"{path}: the particles have no rlnAngleRot/rlnAngleTilt/rlnAnglePsi columns")
        a = torch.as_tensor(angles, dtype=torch.float64)
        quats = euler_to_quat(a[:, 0], a[:, 1], a[:, 2])
        return cls(torch.from_numpy(read_particle_images(particles)), quats, symmetry=symmetry, device=device)

    def subset(self, indices) -> "DatasetSource":
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return DatasetSource(self.images[idx], self.quats[idx], self.labels[idx], self.symmetry)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` images: random anchors and, for each, a partner at a uniform distance."""
        gdev = generator.device
        anchors = torch.randint(len(self), (batch_size // 2,), generator=generator, device=gdev)
        partners = _pick_partners(anchors, self.quats.to(gdev), self.labels.to(gdev), PARTNER_BINS,
                                  self.symmetry, generator)
        idx = torch.cat((anchors, partners)).to(self.images.device)
        return Batch(self.images[idx], self.quats[idx], self.labels[idx])


def _pick_partners(
    anchors: Tensor, quats: Tensor, labels: Tensor, bins: int, symmetry: Optional[str], generator: torch.Generator
) -> Tensor:
    """For each anchor index, a partner index (same label, not itself) whose target distance
    falls in a uniformly drawn bin of [0, π]; the closest to that bin's centre if it is empty."""
    device = quats.device
    out = torch.empty_like(anchors)
    step = max(1, (1 << 22) // max(1, quats.shape[0]))
    for s in range(0, anchors.numel(), step):
        a = anchors[s:s + step]
        d = target_distance(quats[a, None, :], quats[None, :, :], symmetry).float()
        k = torch.randint(bins, (a.numel(), 1), generator=generator, device=device)
        allowed = (labels[a, None] == labels[None, :])
        allowed[torch.arange(a.numel(), device=device), a] = False
        in_bin = allowed & ((d * (bins / math.pi)).long().clamp(0, bins - 1) == k)
        score = torch.rand(d.shape, generator=generator, device=device).masked_fill_(~in_bin, -1.0)
        centre = (k.float() + 0.5) * (math.pi / bins)
        nearest = (d - centre).abs().masked_fill_(~allowed, math.inf).argmin(-1)
        best, pick = score.max(-1)
        out[s:s + step] = torch.where(best >= 0, pick, nearest)
    return out


class OnTheFlySource:
    """Fresh projections every batch from ``renderers``: callables ``render(q, generator) -> images``
    taking orientations ``q`` (B, 4) float32 on the generator's device and returning
    ``(B, H, W)`` images there (all renderers the same size), each drawing its own shifts,
    CTF and noise from ``generator``.

    Each batch uses ``maps_per_batch`` renderers drawn at random (default: all, up to 4),
    sharing the batch equally. Orientations: half uniform on SO(3), half partners turned
    by a uniform angle in [0, π] about a random axis, so anchor–partner distances are
    exactly uniform (before symmetry). ``device``: where the renderers work (used for
    :meth:`render_fixed`; during training the generator's device is used).
    """

    def __init__(self, renderers: Union[Renderer, Sequence[Renderer]], symmetry: Optional[str] = None,
                 maps_per_batch: Optional[int] = None, device="cpu"):
        self.renderers = [renderers] if callable(renderers) else list(renderers)
        if not self.renderers or not all(callable(r) for r in self.renderers):
            raise TypeError("renderers must be a callable or a non-empty sequence of callables render(q, generator)")
        n = len(self.renderers)
        self.maps_per_batch = min(n, 4) if maps_per_batch is None else int(maps_per_batch)
        if not 1 <= self.maps_per_batch <= n:
            raise ValueError(f"maps_per_batch must be in 1..{n}, got {maps_per_batch}")
        self.symmetry = symmetry
        self.device = torch.device(device)
        point_group(symmetry, torch.zeros(1, 4))  # validates the name

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` fresh images (anchor/partner halves per map) drawn with ``generator``."""
        dev = generator.device
        m = self.maps_per_batch
        if batch_size < 2 * m:
            raise ValueError(f"batch_size {batch_size} is too small for {m} maps per batch (>= 2 images each)")
        which = torch.randperm(len(self.renderers), generator=generator, device=dev)[:m].tolist()
        sizes = [(batch_size // m + (1 if k < batch_size % m else 0)) // 2 for k in range(m)]
        images, quats, labels = [], [], []
        for k, half in zip(which, sizes):
            q = _anchor_partner_quats(half, generator)
            img = self.renderers[k](q, generator)
            if not isinstance(img, Tensor) or img.shape[0] != q.shape[0] or img.ndim != 3:
                raise ValueError(f"renderer {k} must return (B, H, W) images for B = {q.shape[0]}, "
                                 f"got {getattr(img, 'shape', type(img).__name__)}")
            images.append(img.float())
            quats.append(q)
            labels.append(torch.full((q.shape[0],), k, dtype=torch.long, device=dev))
        return Batch(torch.cat(images), torch.cat(quats), torch.cat(labels))

    def render_fixed(self, n_images: int, seed: int, chunk: int = 512) -> DatasetSource:
        """A fixed image set (e.g. for validation) of ``n_images`` images, rendered with a generator
        seeded with ``seed`` on ``self.device`` (independent of the training stream)."""
        if n_images < 2 * self.maps_per_batch:
            raise ValueError(f"n_images must be >= {2 * self.maps_per_batch}, got {n_images}")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        parts = [self.sample(min(chunk, n_images - s), gen) for s in range(0, n_images, chunk)]
        return DatasetSource(torch.cat([p.images for p in parts]), torch.cat([p.quats for p in parts]),
                             torch.cat([p.labels for p in parts]), self.symmetry)


def _anchor_partner_quats(half: int, generator: torch.Generator) -> Tensor:
    """``2·half`` float32 quaternions: ``half`` uniform anchors then their partners at uniform angles."""
    dev = generator.device
    anchors = random_quaternions(half, generator=generator, dtype=torch.float32, device=dev)
    axis = torch.nn.functional.normalize(torch.randn(half, 3, generator=generator, device=dev), dim=-1)
    angle = math.pi * torch.rand(half, 1, generator=generator, device=dev)
    turn = torch.cat((torch.cos(angle / 2), torch.sin(angle / 2) * axis), dim=-1)
    return torch.cat((anchors, quat_normalize(quat_multiply(anchors, turn))))


def evaluation_pairs(data: DatasetSource, n_pairs: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed distinct pairs ``(i, j, d_q)`` of ``data`` with d_q uniform on [0, π] (the paper's
    validation/test pairs): ``pairs.sample_pairs`` within each map label, the pairs shared in
    proportion to the labels' image counts. Indices and distances on ``data``'s device."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    labels, quats = data.labels.cpu(), data.quats.cpu().double()
    groups = [torch.nonzero(labels == lab).flatten() for lab in labels.unique()]
    groups = [g for g in groups if g.numel() >= 2]
    if not groups:
        raise ValueError("no map label has 2 images to pair")
    total = sum(g.numel() for g in groups)
    out_i, out_j, out_d = [], [], []
    for k, g in enumerate(groups):
        m = min(max(1, round(n_pairs * g.numel() / total)), g.numel() * (g.numel() - 1) // 2)
        pilot = min(1 << 21, max(1 << 16, 4 * g.numel() ** 2))  # random pairs for the distance histogram
        pairs, d = sample_pairs(quats, g, m, symmetry=data.symmetry, seed=seed + k, pilot=pilot)
        out_i.append(pairs[:, 0])
        out_j.append(pairs[:, 1])
        out_d.append(d)
    dev = data.images.device
    return torch.cat(out_i).to(dev), torch.cat(out_j).to(dev), torch.cat(out_d).to(dev)


def batch_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """The generator of rank ``rank``'s share of the batch of step ``step`` (0-based) on ``device``:
    seeded from numpy's ``SeedSequence((seed, step, rank))``, so the streams never overlap."""
    state = np.random.SeedSequence((int(seed), int(step), int(rank))).generate_state(1, np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0]))
