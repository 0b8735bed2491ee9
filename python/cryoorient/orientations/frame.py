"""The image frame of orientations recovered from distances.

Distances d_q are invariant to q ↦ a·q·b and to q ↦ a·q̄·b (the O(4) ambiguity of
eq. 5), so orientations recovered from distances alone come in an arbitrary member of
that family. Only the right factor b (a rotation of the map, RELION's A ↦ A·R_b) and
the mirror image are consistent with the images; the left factor a (A ↦ R_a·A, a
rotation of every particle's image frame) and the conjugation (A ↦ Aᵀ) are not, and a
map reconstructed with them is blurred. :func:`resolve_frame` finds them from the
images: for each candidate a (and conjugation), a low-resolution map is reconstructed
from half of a subset of images and scored by the normalised cross-correlation of its
projections with the other half (cross-validated, so a candidate cannot win by
reproducing its own images).

Two left factors are always equally good: a and z_π·a (z_π the half turn about the
viewing axis), because A ↦ R_z(π)·A gives the projections of the point-inverted, i.e.
mirror-image, map. Projections cannot tell a map from its mirror image; the result is
either hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..geometry import quat_conjugate, quat_multiply, quat_normalize, quat_to_matrix, random_quaternions
from ..imaging.project import FourierProjector
from ..maps.reconstruct import FourierInserter


LOCAL_RADII = (0.3, 0.15, 0.07)  # rad, step sizes of the local search


@dataclass
class FrameResult:
    quaternions: Tensor  # (N, 4) corrected orientations: a·q̂ or a·conj(q̂)
    left: Tensor  # (4,) the left factor a
    conjugated: bool  # whether q̂ was conjugated
    score: float  # cross-validated NCC of the best candidate
    score_uncorrected: float  # the same for the orientations as recovered


def _downsample(images: Tensor, size: int) -> Tensor:
    """Fourier-crop square images (B, n, n) to (B, size, size) (a low-pass), centre n//2 -> size//2."""
    n = images.shape[-1]
    if size >= n:
        return images
    f = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1))), dim=(-2, -1))
    c, h = n // 2, size // 2
    f = f[..., c - h : c - h + size, c - h : c - h + size]
    out = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1))), dim=(-2, -1)).real
    return out * (size / n) ** 2


def _ncc(a: Tensor, b: Tensor) -> Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def _score(q: Tensor, imgs: Tensor, half: Tensor) -> float:
    """Map from half 0, NCC of its projections with half 1's images, and vice versa."""
    A = quat_to_matrix(q)
    total = 0.0
    for h in (0, 1):
        fit, test = half == h, half != h
        ins = FourierInserter(imgs.shape[-1], pad=2, device=imgs.device)
        ins.insert(imgs[fit], A[fit])
        proj = FourierProjector(ins.volume(), pad=2.0, interpolation="linear")
        total += float(_ncc(proj.images(A[test]), imgs[test]).mean())
    return total / 2


def resolve_frame(images, q: Tensor, *, n_images: int = 300, size: int = 24, n_candidates: int = 300,
                  local: int = 180, seed: int = 0, device="cpu") -> FrameResult:
    """Choose the left factor and conjugation of distance-recovered orientations from the images.

    ``images`` (N, n, n) centred particle images (array, memmap or tensor); ``q`` (N, 4)
    recovered orientations (scalar-first, RELION A). A random subset of ``n_images`` images,
    Fourier-cropped to ``size``², scores ``n_candidates`` uniform left factors for q̂ and for
    conj(q̂), then ``local`` random steps (shrinking from 0.3 to 0.07 rad) around the three
    best. Returns the corrected
    orientations for all N images.
    """
    N = q.shape[0]
    if len(images) != N:
        raise ValueError(f"{len(images)} images but {N} orientations")
    if N < 20:
        raise ValueError(f"need at least 20 images to resolve the frame; got {N}")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(N, generator=gen)[: min(n_images, N)].sort().values
    if torch.is_tensor(images):
        imgs = images[pick.to(images.device)].to(device=device, dtype=torch.float32)
    else:
        imgs = torch.as_tensor(np.asarray(images[pick.numpy()], dtype=np.float32)).to(device)
    imgs = _downsample(imgs, size)
    half = (torch.arange(len(pick)) % 2).to(device)
    q0 = quat_normalize(q.detach().to(device=device, dtype=torch.float32))[pick.to(device)]
    bases = {False: q0, True: quat_conjugate(q0)}
    cands = random_quaternions(n_candidates, generator=seed + 1, device=device)
    cands[0] = torch.tensor([1.0, 0, 0, 0], device=device)
    uncorrected = _score(q0, imgs, half)
    scored = [(_score(quat_multiply(a.expand_as(base), base), imgs, half), conj, a)
              for conj, base in bases.items() for a in cands]
    scored.sort(key=lambda t: -t[0])
    best = scored[0]
    per_start = max(1, local // (3 * len(LOCAL_RADII)))
    for s0, conj, a0 in scored[:3]:  # local search around the three best starts, shrinking steps
        s_cur, a_cur = s0, a0
        for radius in LOCAL_RADII:
            for _ in range(per_start):
                v = torch.randn(3, generator=gen).to(device) * radius / np.sqrt(3)
                a = quat_multiply(quat_normalize(torch.cat([torch.ones(1, device=device), v / 2])), a_cur)
                sc = _score(quat_multiply(a.expand_as(q0), bases[conj]), imgs, half)
                if sc > s_cur:
                    s_cur, a_cur = sc, a
        if s_cur > best[0]:
            best = (s_cur, conj, a_cur)
    s_best, conj, a_best = best
    full = quat_normalize(q.detach().to(device=device, dtype=torch.float32))
    full = quat_conjugate(full) if conj else full
    return FrameResult(quat_multiply(a_best.expand_as(full), full), a_best, conj, s_best, uncorrected)
