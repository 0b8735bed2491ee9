"""The renderer used for training: fresh projections ``C_φ S_t P_q x + n`` of one map per call.

:class:`ProjectionRenderer` is ``render(q, generator) -> images`` (orientations (B, 4), scalar-first
quaternions giving RELION's A; images (B, n, n) float32) with the imaging model, settings and
normalisation of :mod:`.simulate`, for ``learning.sources.OnTheFlySource``.
:func:`particle_radius_of_gyration` measures a particle's size (pixels) on images, the size at
which :meth:`ProjectionRenderer.from_sources` can render atomic models (``particle_rg``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..geometry import random_quaternions
from .ctf import ctf_2d, random_defocus
from .noise import add_white_noise, sigma2_for_snr, signal_variance
from .project import FourierProjector
from .shift import random_shifts
from .simulate import load_volume

__all__ = ["ProjectionRenderer", "particle_radius_of_gyration"]


class ProjectionRenderer:
    """``render(q, generator)``: images ``C_φ S_t P_q x + n`` of one map (for ``learning.sources.OnTheFlySource``).

    The imaging model, settings and normalisation of ``imaging.simulate``: ``settings`` is a
    ``simulate.SimulationSettings`` (``size``, shifts, CTF, noise, ``normalize``, ``interpolation``,
    ``pad``; its ``n``, ``orientations`` and ``chunk_size`` are not used). Clean images are
    standardised by the pixel mean and standard deviation of ``pilot`` clean images of uniform
    orientations (drawn from ``settings.seed``), then white noise of variance ``settings.sigma2``
    (or the one giving ``settings.snr_db`` on those images) is added, so σ² means the same as in
    a simulated dataset. Per batch, shifts and defocus are drawn on the CPU from a seed taken
    from ``generator``; the noise is drawn on ``generator``'s device (the map's ``device``).
    """

    def __init__(self, volume, pixel_size: float, settings, device="cpu", pilot: int = 512):
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


def particle_radius_of_gyration(images: Tensor) -> float:
    """Radius of gyration (pixels) of the particle in ``images`` (N, H, W) or (N, 1, H, W) of uniformly
    distributed orientations: the mean image (background = median of the corners outside the inscribed disc,
    subtracted) has, within that disc, a second moment about its centroid of 2/3·Rg² for uniform
    orientations. Noise averages out over many images; shifts inflate the estimate by their spread."""
    images = torch.as_tensor(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (N, H, W) stack, got {images.dtype} {tuple(images.shape)}")
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
