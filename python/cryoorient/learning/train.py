"""Training of the Siamese distance estimator by L_DE (paper eq. 3).

``L_DE = mean over pairs of (d̂_p(p_i, p_j) − d_q(q_i, q_j))²`` (the paper's sum, divided by
the number of pairs), with pairs whose true distances are uniform on [0, π]
(paper §3.1): uniformly sampled orientations make large distances far more common,
which would bias d̂_p.

How a training step sees pairs
-------------------------------
A batch holds ``B`` images: ``B/2`` anchors and one partner per anchor drawn so that the
anchor–partner distance is uniform on [0, π] (on the fly: the partner is the anchor
turned by a uniform angle about a random axis; from a dataset: a random image in a
uniformly chosen distance bin of the anchor). The network runs once on the ``B`` images
and the loss uses *all* ``B(B−1)/2`` in-batch pairs (same map only), each weighted by
``1 / (#non-empty bins · #pairs in its bin)`` over ``bins`` equal bins of d_q: the
stratified estimate of L_DE under a uniform distance distribution. Validation uses a
fixed set of uniform-distance pairs and the plain mean, i.e. the paper's L_DE.

Symmetric maps: targets are ``min_g d_q(q_i, q_j·g)`` over the point group
(``geometry.symmetric_quat_distance``), so identical projections have target 0.

Data sources
------------
* :class:`DatasetSource` — images and orientations in memory (e.g. a STAR file + stacks
  through ``cryoorient.io``, see :meth:`DatasetSource.from_star`).
* :class:`OnTheFlySource` — fresh images every batch from ``render(q, generator)``
  callables (one per map), so the network never sees the same image twice.

The training images of step ``s`` on rank ``r`` are drawn with a generator seeded from
``(seed, s, r)`` (:func:`batch_generator`; fixed seeds give the validation set and pairs):
no stream state to save, so a resumed run continues bit for bit on the same device and
software, and resuming on another number of processes is well defined.

Several GPUs (``torchrun --nproc-per-node N -m cryoorient train ...``)
-----------------------------------------------------------------------
Data parallel with DistributedDataParallel, one process per GPU. The global batch stays
``batch_size`` images: each of the N ranks renders (or draws from a dataset) its
``batch_size/N`` share from its own stream ``(seed, step, rank)``, so the shares never
overlap. The features of all ranks are all-gathered with autograd and every rank computes
the loss over all ``B(B−1)/2`` pairs of the union batch, so an N-rank step is the
one-process step on the union batch (to float rounding). The learning-rate schedule is
unchanged. Every rank validates the whole (small) validation set, so the logged numbers
are the one-process ones; rank 0 alone writes logs, the model and the checkpoint (then all
ranks meet at a barrier), and a checkpoint resumes on any number of processes.
BatchNorm layers become SyncBatchNorm on CUDA (on the CPU they keep per-rank statistics).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..geometry import (
    quat_distance,
    quat_multiply,
    quat_normalize,
    random_quaternions,
    symmetric_quat_distance,
    symmetry_group,
)
from .model import EuclideanBaseline, SiameseNet, _autocast_dtype, atomic_save, check_images, pairwise_feature_distance

__all__ = [
    "Batch",
    "DatasetSource",
    "OnTheFlySource",
    "ProjectionRenderer",
    "TrainConfig",
    "structure_library",
    "particle_radius_of_gyration",
    "Trainer",
    "batch_generator",
    "target_distance",
    "pairwise_target_distance",
    "binned_de_loss",
    "evaluation_pairs",
    "plot_history",
    "plot_distance_density",
]

Renderer = Callable[[Tensor, torch.Generator], Tensor]
_CHECKPOINT_FORMAT = "cryoorient.train-checkpoint"


# --------------------------------------------------------------------------- #
# targets and loss
# --------------------------------------------------------------------------- #
def _group(symmetry: Optional[str], like: Tensor) -> Optional[Tensor]:
    if symmetry is None or symmetry.strip().upper() == "C1":
        return None
    return symmetry_group(symmetry, dtype=like.dtype, device=like.device)


def target_distance(qa: Tensor, qb: Tensor, symmetry: Optional[str] = None) -> Tensor:
    """d_q(qa, qb) (paper eq. 2), minimised over ``symmetry``'s point group (radians, broadcast)."""
    group = _group(symmetry, qa)
    return quat_distance(qa, qb) if group is None else symmetric_quat_distance(qa, qb, group)


def pairwise_target_distance(q: Tensor, symmetry: Optional[str] = None, chunk_elems: int = 1 << 22) -> Tensor:
    """All-pairs target matrix ``(N, N)`` of orientations ``q`` (N, 4) (q's dtype), in chunks of rows."""
    group = _group(symmetry, q)
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


# --------------------------------------------------------------------------- #
# pair sampling (fixed evaluation pairs come from cryoorient.pairs)
# --------------------------------------------------------------------------- #
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


def evaluation_pairs(data: "DatasetSource", n_pairs: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed distinct pairs ``(i, j, d_q)`` of ``data`` with d_q uniform on [0, π] (the paper's
    validation/test pairs): ``pairs.sample_pairs`` within each map label, the pairs shared in
    proportion to the labels' image counts. Indices and distances on ``data``'s device."""
    from .pairs import sample_pairs

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


# --------------------------------------------------------------------------- #
# data sources
# --------------------------------------------------------------------------- #
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
        _group(symmetry, self.quats)  # validates the name

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_star(cls, path, indices=None, symmetry: Optional[str] = None, device=None) -> "DatasetSource":
        """Images and orientations (rlnAngleRot/Tilt/Psi) of a RELION particle STAR file.

        ``indices`` selects particles (positions in the file). Shifts and CTF are left in the
        images: the network is trained to ignore them.
        """
        from ..geometry import euler_to_quat
        from ..io import read_particle_images, read_star

        particles = read_star(path)
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


#: Distance bins used to draw anchor–partner pairs from a dataset.
PARTNER_BINS = 32


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
        _group(symmetry, torch.zeros(1, 4))  # validates the name

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


class ProjectionRenderer:
    """``render(q, generator)`` for :class:`OnTheFlySource`: images ``C_φ S_t P_q x + n`` of one map.

    The imaging model, settings and normalisation of ``cryoorient.simulate``: ``settings`` is a
    ``simulate.SimulationSettings`` (``size``, shifts, CTF, noise, ``normalize``, ``interpolation``,
    ``pad``; its ``n``, ``orientations`` and ``chunk_size`` are not used). Clean images are
    standardised by the pixel mean and standard deviation of ``pilot`` clean images of uniform
    orientations (drawn from ``settings.seed``), then white noise of variance ``settings.sigma2``
    (or the one giving ``settings.snr_db`` on those images) is added, so σ² means the same as in
    a simulated dataset. Per batch, shifts and defocus are drawn on the CPU from a seed taken
    from ``generator``; the noise is drawn on ``generator``'s device (the map's ``device``).
    """

    def __init__(self, volume, pixel_size: float, settings, device="cpu", pilot: int = 512):
        from ..imaging.noise import sigma2_for_snr, signal_variance
        from ..imaging.project import FourierProjector

        settings.check()
        if pilot < 1:
            raise ValueError(f"pilot must be >= 1, got {pilot}")
        self.settings, self.pixel_size, self.device = settings, float(pixel_size), torch.device(device)
        vol = torch.as_tensor(np.asarray(volume, dtype=np.float32)).to(self.device)
        interpolation = settings.interpolation
        if interpolation == "auto":  # as simulate.ImageSimulator: cubic on CUDA, trilinear on the CPU
            interpolation = "cubic" if self.device.type == "cuda" else "linear"
        self.projector = FourierProjector(vol, settings.size, settings.pad, interpolation)
        self.size = self.projector.size
        self.mean, self.std, self.sigma2 = 0.0, 1.0, 0.0
        gen = torch.Generator(device=self.device).manual_seed(int(settings.seed))
        q = random_quaternions(pilot, generator=gen, dtype=torch.float32, device=self.device)
        clean = self.clean(q, gen).double()
        if settings.normalize:
            self.mean, self.std = float(clean.mean()), float(clean.std(unbiased=False))
            if not self.std > 0:
                raise ValueError("the clean images are constant: nothing of the map falls in the image box")
        signal = signal_variance(clean) / self.std ** 2
        if settings.snr_db is not None:
            self.sigma2 = sigma2_for_snr(signal, settings.snr_db)
        elif settings.sigma2 is not None:
            self.sigma2 = float(settings.sigma2)

    def clean(self, q: Tensor, generator: torch.Generator) -> Tensor:
        """Projection, shift and CTF (not normalised) of orientations ``q`` (B, 4), float32 (B, size, size)."""
        from ..imaging.ctf import ctf_2d, random_defocus
        from ..imaging.shift import random_shifts

        s, b = self.settings, q.shape[0]
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
        cpu = torch.Generator().manual_seed(seed)
        limit = s.shift_max if s.shift_unit == "px" else s.shift_max / self.pixel_size
        shifts = random_shifts(b, s.shift_distribution, limit, generator=cpu).float().to(self.device)
        ctf = None
        if s.ctf:
            u, v, angle = random_defocus(b, s.defocus_min, s.defocus_max, s.astigmatism, generator=cpu)
            ctf = ctf_2d(self.projector.box, self.pixel_size, u, v, angle, s.voltage, s.cs, s.amplitude_contrast,
                         s.b_factor, s.phase_shift, device=self.device)
        return self.projector.images(q.to(self.device, torch.float32), shifts, ctf)

    def __call__(self, q: Tensor, generator: torch.Generator) -> Tensor:
        from ..imaging.noise import add_white_noise

        img = self.clean(q, generator)
        if self.settings.normalize:
            img = (img - self.mean) / self.std
        return add_white_noise(img, self.sigma2, generator) if self.sigma2 > 0 else img

    @classmethod
    def from_sources(cls, sources: Sequence, settings, device="cpu", pixel_size: Optional[float] = None,
                     resolution: Optional[float] = None, pilot: int = 512,
                     particle_rg: Sequence[float] = ()) -> list["ProjectionRenderer"]:
        """One renderer per map or atomic model (paths as ``simulate.load_volume`` takes them;
        models need ``settings.size`` and ``pixel_size``).

        ``particle_rg``: radii of gyration in pixels (atomic models only): each model gets one
        renderer per value, at the pixel size that gives it that radius of gyration (and, unless
        ``resolution`` is given, a resolution of 2 pixels), so that proteins of any mass look as
        large as the particles the network will see (size augmentation with several values).
        """
        from ..io import model_atoms, radius_of_gyration
        from ..imaging.simulate import load_volume

        rgs = [float(r) for r in particle_rg]
        if any(not (math.isfinite(r) and r > 0) for r in rgs):
            raise ValueError(f"particle_rg must be positive radii in pixels, got {list(particle_rg)}")
        out = []
        for src in sources:
            if not rgs:
                volume, voxel = load_volume(src, settings.size, pixel_size, resolution)
                out.append(cls(volume, voxel, settings, device, pilot))
                continue
            rg_angstrom = radius_of_gyration(*model_atoms(src))
            for rg in rgs:
                volume, voxel = load_volume(src, settings.size, rg_angstrom / rg, resolution)
                out.append(cls(volume, voxel, settings, device, pilot))
        return out


def structure_library(folder, max_symmetry: float = 0.5) -> tuple[list[Path], list[Path]]:
    """The atomic models (``.cif``/``.mmcif``/``.pdb``) in ``folder``, sorted: ``(kept, symmetric)``.

    Models whose :func:`io.repeated_chain_symmetry` exceeds ``max_symmetry`` are set apart:
    symmetry-related views of them give identical projections, which the plain d_q target
    (one point group for the whole library) would ask the network to tell apart.
    """
    from ..io import repeated_chain_symmetry

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such directory: {folder}")
    models = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".cif", ".pdb", ".mmcif"))
    if not models:
        raise ValueError(f"no .cif/.pdb files in {folder}")
    symmetric = [p for p in models if repeated_chain_symmetry(p) > max_symmetry]
    kept = [p for p in models if p not in symmetric]
    if not kept:
        raise ValueError(f"every model in {folder} is symmetric (repeated_chain_symmetry > {max_symmetry})")
    return kept, symmetric


def particle_radius_of_gyration(images: Tensor) -> float:
    """Radius of gyration (pixels) of the particle in ``images`` (N, H, W) of uniformly distributed
    orientations: the mean image (background = median of the corners outside the inscribed disc,
    subtracted) has, within that disc, a second moment about its centroid of 2/3·Rg² for uniform
    orientations. Noise averages out over many images; shifts inflate the estimate by their spread."""
    images = check_images(images)[:, 0]
    m = images.double().mean(0)
    h, w = m.shape
    y, x = torch.meshgrid(torch.arange(h, dtype=m.dtype, device=m.device) - h // 2,
                          torch.arange(w, dtype=m.dtype, device=m.device) - w // 2, indexing="ij")
    disc = (y ** 2 + x ** 2) <= (min(h, w) // 2) ** 2
    m = (m - m[~disc].median()) * disc
    total = m.sum()
    if not total > 0:
        raise ValueError("the mean image has no positive particle density above its border")
    cy, cx = (m * y).sum() / total, (m * x).sum() / total
    return float(torch.sqrt(1.5 * (m * ((y - cy) ** 2 + (x - cx) ** 2)).sum() / total))


def _anchor_partner_quats(half: int, generator: torch.Generator) -> Tensor:
    """``2·half`` float32 quaternions: ``half`` uniform anchors then their partners at uniform angles."""
    dev = generator.device
    anchors = random_quaternions(half, generator=generator, dtype=torch.float32, device=dev)
    axis = torch.nn.functional.normalize(torch.randn(half, 3, generator=generator, device=dev), dim=-1)
    angle = math.pi * torch.rand(half, 1, generator=generator, device=dev)
    turn = torch.cat((torch.cos(angle / 2), torch.sin(angle / 2) * axis), dim=-1)
    return torch.cat((anchors, quat_normalize(quat_multiply(anchors, turn))))


def batch_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """The generator of rank ``rank``'s share of the batch of step ``step`` (0-based) on ``device``:
    seeded from numpy's ``SeedSequence((seed, step, rank))``, so the streams never overlap."""
    state = np.random.SeedSequence((int(seed), int(step), int(rank))).generate_state(1, np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0]))


class _Embed(torch.nn.Module):
    """``model.embed`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model: SiameseNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.embed(images)


# --------------------------------------------------------------------------- #
# training
# --------------------------------------------------------------------------- #
@dataclass
class TrainConfig:
    """Optimisation settings (Adam; linear warm-up then cosine decay to ``lr·min_lr_ratio``).

    batch_size: images per step (half anchors, half partners; the loss uses every
    in-batch pair), over all processes when data parallel. steps_per_epoch: None = one pass of the anchors over a dataset
    (``2·N/batch_size``), 100 for on-the-fly sources. Early stopping after ``patience``
    epochs without a validation improvement larger than ``min_delta``. amp: "auto"
    (bfloat16 on CUDA, float32 on CPU), "bf16", "fp16" (with gradient scaling) or "none".
    max_distance: radians; if set, the targets (training and validation) are
    ``min(d_q, max_distance)``: the network learns short distances and "far" for the rest,
    for a recovery that trusts only d̂ below a cut-off (``recover(..., cutoff=...)``).
    """

    epochs: int = 50
    steps_per_epoch: Optional[int] = None
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    bins: int = 32
    patience: int = 10
    min_delta: float = 1e-4
    val_pairs: int = 4096
    amp: str = "auto"
    compile: bool = False
    seed: int = 0
    progress: bool = True
    max_distance: Optional[float] = None

    def __post_init__(self) -> None:
        if self.max_distance is not None and not 0 < self.max_distance <= math.pi:
            raise ValueError(f"max_distance must be in (0, π] radians, got {self.max_distance}")
        for name in ("epochs", "batch_size", "bins", "patience", "val_pairs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 4:
            raise ValueError(f"batch_size must be >= 4, got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0, weight_decay >= 0")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'none', got {self.amp!r}")


_AMP = {"auto": True, "bf16": torch.bfloat16, "fp16": torch.float16, "none": False}


class Trainer:
    """Fits a :class:`SiameseNet` on a source; validates each epoch; keeps the best weights.

    Files in ``out_dir``: ``checkpoint.pt`` (last epoch, for exact resumption),
    ``history.csv`` / ``history.json`` (per epoch: losses, learning rate, throughput),
    ``summary.json``, ``loss.png`` and ``distances.png`` (d̂_p vs d_q density on the
    validation pairs, as the paper's Fig. 6b). The best network (lowest validation
    L_DE) goes to ``model_path`` (default ``out_dir/model.pt``) with its metadata.

    In an initialised torch.distributed process group (see the module docstring) each rank
    builds its Trainer with the same arguments on its own device; only rank 0 writes files.
    """

    def __init__(self, model: SiameseNet, train, val: DatasetSource, config: Optional[TrainConfig] = None,
                 out_dir=None, device=None, model_path=None, metadata: Optional[dict] = None):
        if not isinstance(val, DatasetSource):
            raise TypeError("val must be a DatasetSource (use OnTheFlySource.render_fixed for a fixed set)")
        config = config if config is not None else TrainConfig()
        self.config = config
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.world > 1 and config.batch_size % (2 * self.world):
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of 2 × {self.world} processes")
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
            if self.world > 1:
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if config.compile:
            self.model.compile()
        self._embed = self.model.embed
        if self.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self._embed = torch.nn.parallel.DistributedDataParallel(_Embed(self.model), device_ids=ids)
        self.train_source, self.val = train, val
        self.symmetry = val.symmetry
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_path = Path(model_path) if model_path is not None else (
            self.out_dir / "model.pt" if self.out_dir is not None else None)
        self.metadata = dict(metadata or {})
        if config.max_distance is not None:
            self.metadata["max_distance"] = config.max_distance
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = config.steps_per_epoch
        elif isinstance(train, DatasetSource):
            self.steps_per_epoch = max(1, math.ceil(2 * len(train) / config.batch_size))
        else:
            self.steps_per_epoch = 100
        self.total_steps = config.epochs * self.steps_per_epoch
        self.amp_dtype = _autocast_dtype(self.device, _AMP[config.amp])
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        vi, vj, vd = evaluation_pairs(val, config.val_pairs, seed=config.seed + 1)
        self.val_pairs = (vi, vj, self._target(vd))
        self.epoch = 0
        self.step = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.reference: dict = {}
        self._best_state: Optional[dict] = None

    # -- schedule ----------------------------------------------------------- #
    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        t = min(1.0, (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    # -- one step ----------------------------------------------------------- #
    def local_batch(self) -> Batch:
        """This rank's ``batch_size / world`` images of the current step (the whole batch in
        one process), drawn with ``batch_generator(seed, step, rank)``."""
        gen = batch_generator(self.config.seed, self.step, self.rank, self.device)
        return self.train_source.sample(self.config.batch_size // self.world, gen)

    def train_step(self, batch: Batch) -> tuple[Tensor, int]:
        """One optimiser step on ``batch`` (this rank's share: the loss runs over the union of
        the ranks' shares)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            f = self._embed(batch.images)
        if self.world > 1:
            f = distributed.all_gather_autograd(f)
            batch = Batch(batch.images, distributed.all_gather_rows(batch.quats),
                          distributed.all_gather_rows(batch.labels))
        d_p = pairwise_feature_distance(f.float())
        d_q = pairwise_target_distance(batch.quats, self.symmetry).to(d_p.dtype)
        n = batch.labels.shape[0]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=d_p.device), 1)
        mask &= batch.labels[:, None] == batch.labels[None, :]
        loss = binned_de_loss(d_p[mask], d_q[mask], self.config.bins, target=self._target(d_q[mask]))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss.detach(), mask.sum()

    def _target(self, d_q: Tensor) -> Tensor:
        """Training target for true distances d_q: d_q, or min(d_q, config.max_distance)."""
        cap = self.config.max_distance
        return d_q if cap is None else d_q.clamp(max=cap)

    # -- evaluation --------------------------------------------------------- #
    def predict_val(self) -> Tensor:
        """d̂_p of the fixed validation pairs with the current weights (radians)."""
        f = self.model.features(self.val.images, amp=self.amp_dtype or False)
        vi, vj, _ = self.val_pairs
        return self.model.distance(f[vi], f[vj])

    def validate(self) -> float:
        """Validation L_DE: mean squared error on the fixed uniform-distance pairs."""
        return float(((self.predict_val() - self.val_pairs[2].float()) ** 2).mean())

    def _reference_losses(self) -> dict:
        """Validation L_DE of the untrained network and of the Euclidean baseline (isotonic and
        linear calibration fitted on pairs from two training batches drawn with a side generator)."""
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        batches = [self.train_source.sample(self.config.batch_size, gen) for _ in range(2)]
        fit = DatasetSource(torch.cat([b.images for b in batches]), torch.cat([b.quats for b in batches]),
                            torch.cat([b.labels for b in batches]), self.symmetry)
        i, j, d = evaluation_pairs(fit, 4 * self.config.batch_size, seed=self.config.seed + 3)
        f = EuclideanBaseline.features(fit.images)
        vf = EuclideanBaseline.features(self.val.images)
        vi, vj, vd = self.val_pairs
        out = {"untrained_val_loss": self.validate()}
        for kind in ("isotonic", "linear"):
            base = EuclideanBaseline().fit(f[i], f[j], d, kind=kind)
            out[f"euclidean_{kind}_val_loss"] = float(((base.distance(vf[vi], vf[vj]) - vd.float()) ** 2).mean())
        return out

    # -- loop --------------------------------------------------------------- #
    def fit(self, stop_epoch: Optional[int] = None) -> dict:
        """Train until ``config.epochs``, early stopping, or ``stop_epoch`` (to split a run
        into sessions; the schedule still spans ``config.epochs``). Returns the summary."""
        from tqdm.auto import tqdm

        c = self.config
        last = c.epochs if stop_epoch is None else min(c.epochs, stop_epoch)
        if not self.reference:
            self.reference = self._reference_losses()
        stopped = self.bad_epochs >= c.patience
        while self.epoch < last and not stopped:
            self.model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=self.device)
            pairs = torch.zeros((), dtype=torch.long, device=self.device)
            bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{c.epochs}",
                       disable=not self._progress, leave=False, dynamic_ncols=True)
            for k in bar:
                loss, n_pairs = self.train_step(self.local_batch())
                loss_sum += loss
                pairs += n_pairs
                if k % 10 == 9 or k == self.steps_per_epoch - 1:
                    value = float(loss)
                    if not math.isfinite(value):
                        raise RuntimeError(f"training loss became {value} at step {self.step}; lower the learning rate")
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
            train_loss = float(loss_sum) / self.steps_per_epoch
            val_loss = self.validate()
            self.epoch += 1
            improved = val_loss < self.best_loss - c.min_delta
            if improved:
                self.best_loss, self.best_epoch, self.bad_epochs = val_loss, self.epoch, 0
                self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._save_model()
            else:
                self.bad_epochs += 1
            stopped = self.bad_epochs >= c.patience
            self.history.append({
                "epoch": self.epoch, "step": self.step, "train_loss": train_loss, "val_loss": val_loss,
                "lr": self.scheduler.get_last_lr()[0], "seconds": seconds,
                "images_per_s": self.steps_per_epoch * c.batch_size / seconds,
                "pairs_per_s": float(pairs) / seconds, "best": improved,
            })
            if self._progress:
                tqdm.write(f"epoch {self.epoch}: train L_DE {train_loss:.4f}  val L_DE {val_loss:.4f}"
                           f"{'  (best)' if improved else ''}  {self.history[-1]['pairs_per_s']:.0f} pairs/s")
            self._write_logs()
            if self.out_dir is not None:
                self.save_checkpoint(self.out_dir / "checkpoint.pt")
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        summary = self.summary(stopped_early=stopped and self.epoch < c.epochs)
        if self.out_dir is not None and self.rank == 0:
            _write_json(self.out_dir / "summary.json", summary)
            plot_history(self.history, self.reference, self.out_dir / "loss.png")
            vi, vj, vd = self.val_pairs
            n = min(1000, vd.numel())
            plot_distance_density(vd[:n], self.predict_val()[:n], self.out_dir / "distances.png",
                                  title=f"validation pairs, best epoch {self.best_epoch}")
        return summary

    @property
    def _progress(self) -> bool:
        return self.config.progress and self.rank == 0

    def summary(self, stopped_early: bool = False) -> dict:
        last = self.history[-1] if self.history else {}
        return {
            "epochs_run": self.epoch, "steps": self.step, "best_epoch": self.best_epoch,
            "best_val_loss": self.best_loss, "stopped_early": stopped_early,
            "images_per_s": last.get("images_per_s"), "pairs_per_s": last.get("pairs_per_s"),
            **self.reference, "device": str(self.device), "processes": self.world,
            "model": self.model.config.to_dict(),
            "train": asdict(self.config), "model_path": str(self.model_path) if self.model_path else None,
        }

    # -- persistence -------------------------------------------------------- #
    def _save_model(self) -> None:
        if self.model_path is not None and self.rank == 0:
            metadata = {**self.metadata, **self.reference, "epoch": self.epoch, "val_loss": self.best_loss,
                        "symmetry": self.symmetry, "train": asdict(self.config)}
            self.model.save(self.model_path, overwrite=True, **metadata)

    def _write_logs(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.out_dir / "history.json", {"reference": self.reference, "epochs": self.history})
        tmp = self.out_dir / ".history.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out_dir / "history.csv")

    def state_dict(self) -> dict:
        cuda_rng = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return {
            "format": _CHECKPOINT_FORMAT, "version": 2,
            "model_config": self.model.config.to_dict(), "config": asdict(self.config),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
            "epoch": self.epoch, "step": self.step, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "history": self.history, "reference": self.reference,
            "best_state": self._best_state,
        }

    def save_checkpoint(self, path) -> None:
        """Everything needed to continue exactly: weights, optimiser, schedule, RNG states, counters.
        Written by rank 0 only; every rank returns once the file is complete."""
        if self.rank == 0:
            atomic_save(self.state_dict(), path)
        distributed.barrier()

    def load_checkpoint(self, path) -> None:
        """Restore a :meth:`save_checkpoint` file written with the same model and config (by any
        number of processes)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a cryoorient training checkpoint")
        if state["model_config"] != self.model.config.to_dict():
            raise ValueError(f"{path} was written for another architecture: {state['model_config']}")
        if state["config"] != asdict(self.config):
            diff = {k: (v, asdict(self.config).get(k)) for k, v in state["config"].items()
                    if asdict(self.config).get(k) != v}
            raise ValueError(f"{path} was written with other training settings (checkpoint, now): {diff}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"][0], self.device)
        for key in ("epoch", "step", "best_epoch", "bad_epochs", "history", "reference"):
            setattr(self, key, state[key])
        self.best_loss = state["best_loss"]
        self._best_state = state["best_state"]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- #
# plots
# --------------------------------------------------------------------------- #
def plot_history(history: list[dict], reference: dict, path) -> None:
    """Training and validation L_DE per epoch (log scale), with the reference levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="training (binned)")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    for key, style in (("untrained_val_loss", ":"), ("euclidean_isotonic_val_loss", "--")):
        if key in reference:
            ax.axhline(reference[key], ls=style, c="gray", label=key.replace("_val_loss", "").replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("L_DE (rad²)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distance_density(d_q: Tensor, d_p: Tensor, path, title: str = "") -> None:
    """2D histogram of estimated d̂_p against true d_q (the paper's Fig. 6b), radians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.as_tensor(d_q).detach().float().cpu().numpy()
    y = torch.as_tensor(d_p).detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.hist2d(x, y, bins=50, range=[[0, math.pi], [0, math.pi]], cmap="viridis", cmin=1)
    ax.plot([0, math.pi], [0, math.pi], c="r", lw=0.8)
    ax.set_xlabel("d_q (rad)")
    ax.set_ylabel("estimated d_p (rad)")
    ax.set_title(title or f"{x.size} pairs")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- #
# command line (``cryoorient train``)
# --------------------------------------------------------------------------- #
def add_train_arguments(p) -> None:
    """Arguments of ``cryoorient train`` on an ``argparse`` parser."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--map", nargs="+", metavar="MAP", help="map(s) (.mrc) or atomic model(s) to project on the fly")
    src.add_argument("--structures", metavar="DIR", help="project every asymmetric .cif/.pdb in DIR on the fly "
                     "(needs --size and --pixel-size or --particle-rg)")
    src.add_argument("--dataset", metavar="STAR", help="RELION particle STAR file with images and true angles")
    p.add_argument("-o", "--output", required=True, help="trained network (.pt): the best epoch's weights")
    p.add_argument("--log-dir", help="checkpoint, logs and plots (default: OUTPUT without .pt + '_train')")
    p.add_argument("--arch", choices=("paper", "resnet"), default="paper", help="feature extractor (default: paper)")
    p.add_argument("--widths", type=int, nargs="+", help="channels per layer (paper) or stage (resnet)")
    p.add_argument("--depths", type=int, nargs="+", help="resnet: residual blocks per stage")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over a dataset, 100 on the fly")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default: 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=10, help="early stopping patience in epochs (default: 10)")
    p.add_argument("--max-distance", type=float, metavar="RAD",
                   help="train on min(d_q, RAD): short distances only, for a cut-off recovery (default: all)")
    p.add_argument("--val-pairs", type=int, default=4096, help="fixed validation pairs (default: 4096)")
    p.add_argument("--val-images", type=int, default=1024, help="on the fly: images in the fixed validation set")
    p.add_argument("--split", type=float, nargs=2, default=(0.5, 0.17), metavar=("TRAIN", "VAL"),
                   help="dataset: training and validation fractions; the rest is the test set (default: 0.5 0.17)")
    p.add_argument("--symmetry", default="C1", help="point group of the protein for the targets (default: C1)")
    img = p.add_argument_group("on-the-fly images (as cryoorient simulate)")
    img.add_argument("--size", type=int, help="image edge in pixels (default: the map's)")
    img.add_argument("--pixel-size", type=float, help="Å per pixel (required for atomic models)")
    img.add_argument("--resolution", type=float, help="Å, for maps made from atomic models (default: 2·pixel size)")
    img.add_argument("--particle-rg", type=float, nargs="+", metavar="PX",
                     help="--structures: render each model at the pixel size giving it this radius of gyration in "
                          "pixels (several values: one map per value); default: every model at --pixel-size")
    img.add_argument("--maps-per-batch", type=int, help="maps sharing each training batch (default: all, up to 4)")
    noise = img.add_mutually_exclusive_group()
    noise.add_argument("--sigma2", type=float, help="white-noise variance after standardisation (paper: 16)")
    noise.add_argument("--snr", type=float, help="signal-to-noise ratio in dB instead of --sigma2")
    img.add_argument("--ctf", action="store_true", help="apply a CTF")
    img.add_argument("--defocus", type=float, nargs=2, default=(10000.0, 25000.0), metavar=("MIN", "MAX"),
                     help="defocus range in Å (default: 10000 25000)")
    img.add_argument("--voltage", type=float, default=300.0, help="kV (default: 300)")
    img.add_argument("--shift-max", type=float, default=0.0, help="largest shift in pixels (default: 0)")
    img.add_argument("--shift-distribution", default="triangular", help="triangular, uniform or gaussian")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help=distributed.DEVICE_HELP)
    run.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto")
    run.add_argument("--compile", action="store_true", help="torch.compile the feature extractor")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue from LOG_DIR/checkpoint.pt")
    run.add_argument("--force", action="store_true", help="overwrite an existing OUTPUT and LOG_DIR")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def train_from_args(args) -> dict:
    """Run ``cryoorient train`` from parsed arguments; returns the summary. Under ``torchrun``
    every process runs this (data parallel, see the module docstring)."""
    return distributed.run(lambda device: _train(args, device), distributed.device_option(args.device))


def _train(args, device: torch.device) -> dict:
    import shutil

    output = Path(args.output)
    log_dir = Path(args.log_dir) if args.log_dir else output.with_name(output.stem + "_train")
    if args.resume and args.force:
        raise ValueError("--resume and --force exclude each other")
    if not args.resume and (output.exists() or log_dir.exists()):
        if not args.force:
            raise FileExistsError(f"{output if output.exists() else log_dir} exists; pass --force to start over "
                                  "or --resume to continue")
        distributed.barrier()  # every rank has looked before rank 0 removes
        if distributed.rank() == 0:
            shutil.rmtree(log_dir, ignore_errors=True)
            output.unlink(missing_ok=True)
        distributed.barrier()
    if args.resume and not (log_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"nothing to resume: {log_dir / 'checkpoint.pt'} does not exist")
    symmetry = None if args.symmetry.strip().upper() == "C1" else args.symmetry
    metadata = {}
    if args.dataset:
        data = DatasetSource.from_star(args.dataset, symmetry=symmetry, device=device)
        from .pairs import split_indices

        train_frac, val_frac = args.split
        split = split_indices(len(data), (train_frac, val_frac, max(0.0, 1.0 - train_frac - val_frac)), seed=args.seed)
        train, val = data.subset(split["train"]), data.subset(split["val"])
        metadata.update(dataset=str(Path(args.dataset).absolute()), split=list(args.split))
        if distributed.rank() == 0:
            log_dir.mkdir(parents=True, exist_ok=True)
            _write_json(log_dir / "split.json", {k: v.tolist() for k, v in split.items()})
    else:
        from ..imaging.simulate import SimulationSettings

        if args.structures:
            sources, symmetric = structure_library(args.structures)
            if symmetric:
                print(f"leaving out symmetric models: {', '.join(p.name for p in symmetric)}")
        else:
            sources = [Path(m) for m in args.map]
            if args.particle_rg:
                raise ValueError("--particle-rg applies to --structures (atomic models) only")
        settings = SimulationSettings(
            n=1, size=args.size, shift_max=args.shift_max, shift_distribution=args.shift_distribution, ctf=args.ctf,
            defocus_min=args.defocus[0], defocus_max=args.defocus[1], voltage=args.voltage, snr_db=args.snr,
            sigma2=args.sigma2, seed=args.seed,
        )
        renderers = ProjectionRenderer.from_sources(sources, settings, device, args.pixel_size, args.resolution,
                                                    particle_rg=args.particle_rg or ())
        train = OnTheFlySource(renderers, symmetry=symmetry, maps_per_batch=args.maps_per_batch, device=device)
        val = train.render_fixed(args.val_images, seed=args.seed + 1_000_003)
        metadata.update(sources=[str(s) for s in sources], simulation=asdict(settings),
                        particle_rg=list(args.particle_rg or ()))
    config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, patience=args.patience, val_pairs=args.val_pairs, amp=args.amp,
        compile=args.compile, seed=args.seed, progress=not args.quiet, max_distance=args.max_distance,
    )
    torch.manual_seed(args.seed)
    net = SiameseNet(args.arch, widths=tuple(args.widths or ()), depths=tuple(args.depths or ()))
    trainer = Trainer(net, train, val, config, out_dir=log_dir, device=device,
                      model_path=output, metadata=metadata)
    if args.resume:
        trainer.load_checkpoint(log_dir / "checkpoint.pt")
    summary = trainer.fit()
    if distributed.rank() == 0:
        print(f"best validation L_DE {summary['best_val_loss']:.4f} rad² at epoch {summary['best_epoch']} "
              f"(untrained {summary['untrained_val_loss']:.4f}, Euclidean baseline "
              f"{summary['euclidean_isotonic_val_loss']:.4f}); network: {output}; logs: {log_dir}")
    return summary
