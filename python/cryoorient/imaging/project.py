"""Projector P_θ: the x-ray transform of a 3D map along an orientation (parallel beam).

Conventions
-----------
* Maps are cubic ``[z, y, x]`` tensors (x fastest) of edge ``N``; images are ``[y, x]``.
  The centre of a map is voxel ``N // 2`` on every axis and the centre of an image of
  edge ``n`` is pixel ``(n // 2, n // 2)`` (RELION). Coordinates ``(x, y, z)`` are in
  voxels relative to the centre. Non-cubic maps are padded to a cube by
  ``cryoorient.io.read_map(..., pad_to_cube=True)``.
* An orientation is RELION's matrix ``A`` (``geometry.euler_to_matrix(rot, tilt, psi)``),
  which rotates the map frame into the particle (image) frame. The projection is

      image(x, y) = ∫ V(Aᵀ (x, y, z)) dz,

  so a feature at map position ``r`` appears at image position ``((A r)_x, (A r)_y)``.
  At ``rot = tilt = psi = 0`` the image is the sum of the map over z.
* ``rotations`` arguments are either matrices ``A`` of shape (B, 3, 3) or scalar-first
  quaternions (B, 4), read as ``A = geometry.quat_to_matrix(q)``.
* The unit of length along the ray is one voxel: an image sums to the sum of the map
  when no density falls outside the image.
* Output images have edge ``size`` (default ``N``). A larger ``size`` pads the map with
  zeros first; a smaller one crops the centre of the full projection (the particle box
  is a window onto the projection).

Two projectors, same convention, cross-checked in the tests:

* :func:`project_real` — reference: ray integration in real space, trilinear
  interpolation (``grid_sample``) at unit steps along each ray, chunked in memory.
  Trilinear interpolation slightly blurs the map: ≈ 1 % L2 error for Gaussian features
  of σ = 3 voxels, more for sharper ones.
* :class:`FourierProjector` — fast: central-slice theorem. The map is zero-padded
  ``pad``-fold and Fourier transformed once; each projection is an interpolated central
  slice followed by an inverse 2D FFT. Shifts and a CTF can be applied to the slice
  before the inverse FFT (:meth:`FourierProjector.images`). Interpolation is a cubic
  B-spline (default; evaluated as 8 trilinear look-ups) or trilinear; the map is
  pre-divided by the kernel's Fourier transform, sinc⁴ or sinc² per axis (gridding
  correction). Against closed-form projections of Gaussian blobs (64³, pad 2): cubic
  ≈ 0.04 %, trilinear ≈ 2.5 % L2 error (aliasing of the sinc² kernel); trilinear is
  ≈ 5–8× faster on the CPU. As in RELION, projected density that falls outside a box of
  ``max(N, size)`` wraps around; maps whose density lies inside the inscribed sphere
  never wrap.

Optional ASTRA backend: not provided (the Fourier projector is the fast path on both CPU
and CUDA, with no extra dependency).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..geometry import quat_to_matrix
from .shift import phase_ramp

__all__ = ["as_rotation_matrices", "project_real", "project", "FourierProjector"]

_FLOATS = (torch.float32, torch.float64)


def as_rotation_matrices(rotations: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """RELION matrices ``A`` (B, 3, 3) from matrices (B, 3, 3) or quaternions (B, 4)."""
    if not isinstance(rotations, Tensor):
        raise TypeError(f"rotations must be a torch.Tensor, got {type(rotations).__name__}")
    if not rotations.is_floating_point():
        raise TypeError(f"rotations must have a floating dtype, got {rotations.dtype}")
    if rotations.ndim == 2 and rotations.shape[1] == 4:
        if not bool(torch.isfinite(rotations).all()) or bool((rotations.norm(dim=1) == 0).any()):
            raise ValueError("quaternions must be finite and non-zero")
        rotations = quat_to_matrix(rotations)
    elif not (rotations.ndim == 3 and rotations.shape[1:] == (3, 3)):
        raise ValueError(
            f"rotations must be matrices (B, 3, 3) or quaternions (B, 4); got shape {tuple(rotations.shape)}"
        )
    elif not bool(torch.isfinite(rotations).all()):
        raise ValueError("rotation matrices must be finite")
    return rotations.to(dtype=dtype, device=device)


def _check_volume(volume: Tensor) -> Tensor:
    if not isinstance(volume, Tensor):
        raise TypeError(f"volume must be a torch.Tensor, got {type(volume).__name__}")
    if volume.dtype not in _FLOATS:
        raise TypeError(f"volume must be float32 or float64, got {volume.dtype}")
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(
            f"volume must be a cubic [z, y, x] map; got shape {tuple(volume.shape)} "
            "(pad non-cubic maps with cryoorient.io.pad_to_cube)"
        )
    if volume.shape[0] < 2:
        raise ValueError(f"volume edge must be at least 2 voxels, got {volume.shape[0]}")
    return volume


def _check_size(size, default: int) -> int:
    if size is None:
        return default
    if isinstance(size, bool) or int(size) != size or size < 2:
        raise ValueError(f"image size must be an integer >= 2, got {size!r}")
    return int(size)


def _centred(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Pixel coordinates ``0..n-1`` relative to the centre ``n // 2``."""
    return torch.arange(n, dtype=dtype, device=device) - (n // 2)


def project_real(
    volume: Tensor, rotations: Tensor, size: int | None = None, max_points: int = 1 << 23
) -> Tensor:
    """Reference projector: line integrals through ``volume`` by real-space ray marching.

    Samples every ray at unit steps covering the whole cube, interpolating trilinearly
    (zero outside the map), and sums. Returns (B, size, size) images in ``volume``'s
    dtype and device. ``max_points`` bounds the samples held at once (memory ~ 16 bytes
    each). See the module docstring for the convention.
    """
    volume = _check_volume(volume)
    n_map = volume.shape[0]
    n = _check_size(size, n_map)
    A = as_rotation_matrices(rotations, volume.dtype, volume.device)
    half = math.ceil(math.sqrt(3.0) * n_map / 2) + 1
    z = torch.arange(-half, half + 1, dtype=volume.dtype, device=volume.device)
    s = _centred(n, volume.dtype, volume.device)
    # grid_sample(align_corners=True) maps index i to -1 + 2 i / (N - 1).
    scale = 2.0 / (n_map - 1)
    offset = (n_map // 2) * scale - 1.0
    vol = volume[None, None]
    out = volume.new_zeros((A.shape[0], n, n))
    zc = max(1, min(z.numel(), max_points // (n * n)))
    bc = max(1, max_points // (n * n * zc))
    for b0 in range(0, A.shape[0], bc):
        rows = A[b0 : b0 + bc] * scale  # map coords r = x A[0] + y A[1] + z A[2]
        plane = s[None, None, :, None] * rows[:, None, None, 0] + s[None, :, None, None] * rows[:, None, None, 1]
        for z0 in range(0, z.numel(), zc):
            zs = z[z0 : z0 + zc]
            grid = plane[:, None] + zs[None, :, None, None, None] * rows[:, None, None, None, 2] + offset
            samples = torch.nn.functional.grid_sample(
                vol, grid.reshape(1, -1, n, n, 3), mode="bilinear", padding_mode="zeros", align_corners=True
            )
            out[b0 : b0 + bc] += samples.reshape(rows.shape[0], zs.numel(), n, n).sum(1)
    return out


class FourierProjector:
    """Central-slice projector of one map; build once, project many orientations.

    ``FourierProjector(volume, size=None, pad=2, interpolation="cubic")``: ``volume`` a cubic
    ``[z, y, x]`` tensor (float32 or float64, CPU or CUDA; the projector lives on its device),
    ``size`` the image edge (default ``N``), ``pad`` the oversampling of the 3D Fourier grid
    (a number in [1, 8]; 2 as in RELION), ``interpolation`` ``"cubic"`` or ``"linear"``.
    Memory: ``(pad·max(N, size))³`` complex values.
    """

    def __init__(
        self, volume: Tensor, size: int | None = None, pad: float = 2.0, interpolation: str = "cubic"
    ) -> None:
        volume = _check_volume(volume)
        if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not 1 <= pad <= 8:
            raise ValueError(f"pad must be a number in [1, 8], got {pad!r}")
        if interpolation not in _KERNEL_POWER:
            raise ValueError(f"interpolation must be 'linear' or 'cubic', got {interpolation!r}")
        self.interpolation = interpolation
        self.map_size = volume.shape[0]
        self.size = _check_size(size, self.map_size)
        self.box = max(self.map_size, self.size)
        self.grid = int(round(pad * self.box))  # edge M of the oversampled 3D Fourier grid
        self.dtype, self.device = volume.dtype, volume.device
        B, M = self.box, self.grid
        # Gridding correction: interpolating with a B-spline kernel of degree d on a grid of
        # spacing 1/M multiplies the map by sinc^(d+1)(r / M) per axis; divide it out beforehand.
        w = torch.sinc(_centred(B, self.dtype, self.device) / M) ** _KERNEL_POWER[interpolation]
        start = B // 2 - self.map_size // 2
        box = volume.new_zeros((B, B, B))
        box[start : start + self.map_size, start : start + self.map_size, start : start + self.map_size] = volume
        box = box / (w[:, None, None] * w[None, :, None] * w[None, None, :])
        padded = volume.new_zeros((M, M, M))
        s = M // 2 - B // 2
        padded[s : s + B, s : s + B, s : s + B] = box
        del box
        spectrum = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)))
        del padded
        # (1, 2, M, M, M) real/imag channels for grid_sample
        self._spectrum = torch.view_as_real(spectrum).permute(3, 0, 1, 2).unsqueeze(0).contiguous()
        del spectrum
        ky = torch.fft.fftfreq(B, d=1.0 / B, dtype=self.dtype, device=self.device)
        kx = torch.fft.rfftfreq(B, d=1.0 / B, dtype=self.dtype, device=self.device)
        self._kx = kx[None, :].expand(B, -1)
        self._ky = ky[:, None].expand(-1, kx.numel())

    def slices(self, rotations: Tensor) -> Tensor:
        """Spectra (B, box, box // 2 + 1) complex, ``rfft2`` layout with the image origin at
        pixel 0: the 2D Fourier transforms of the projections, ``F3(Aᵀ (kx, ky, 0))``."""
        A = as_rotation_matrices(rotations, self.dtype, self.device)
        M = self.grid
        # Index (x, y, z) into the centred 3D spectrum of frequency k (1/box cycles per voxel).
        rows = A * (M / self.box)
        idx = self._kx[None, :, :, None] * rows[:, None, None, 0] + self._ky[None, :, :, None] * rows[:, None, None, 1]
        idx = idx + M // 2
        if self.interpolation == "linear":
            points, weights = idx[None], None
        else:
            points, weights = _cubic_taps(idx)
        grid = points * (2.0 / (M - 1)) - 1.0  # grid_sample(align_corners=True) coordinates
        taps, b, h, w, _ = grid.shape
        sampled = torch.nn.functional.grid_sample(
            self._spectrum, grid.reshape(1, taps * b, h, w, 3), mode="bilinear", padding_mode="zeros",
            align_corners=True,
        )[0].reshape(2, taps, b, h, w)
        sampled = sampled[:, 0] if weights is None else (sampled * weights).sum(1)
        return torch.complex(sampled[0], sampled[1])

    def images(self, rotations: Tensor, shifts: Tensor | None = None, ctf: Tensor | None = None) -> Tensor:
        """Projections (B, size, size), optionally translated and CTF-modulated in Fourier space.

        ``shifts`` (B, 2): sub-pixel translations (x, y) in pixels, the image content moves by
        +t (``image(s) = projection(s - t)``). ``ctf`` (B or 1, box, box // 2 + 1): real CTF
        on this projector's ``rfft2`` grid of edge ``box`` (see ``cryoorient.ctf.ctf_2d``).
        Both act on the full ``box`` before the central ``size`` window is cut out.
        """
        spec = self.slices(rotations)
        # Move the origin from pixel 0 to the centre box // 2, then by the shifts.
        t = torch.full((spec.shape[0], 2), float(self.box // 2), dtype=self.dtype, device=self.device)
        if shifts is not None:
            t = t + _check_shifts(shifts, spec.shape[0]).to(dtype=self.dtype, device=self.device)
        spec = spec * phase_ramp(t, self.box)
        if ctf is not None:
            if ctf.shape[-2:] != spec.shape[-2:]:
                raise ValueError(f"ctf must have shape (B, {spec.shape[-2]}, {spec.shape[-1]}); got {tuple(ctf.shape)}")
            spec = spec * ctf.to(device=self.device)
        img = torch.fft.irfft2(spec, s=(self.box, self.box))
        return _crop(img, self.size)

    __call__ = images


# Power of sinc in the Fourier transform of each interpolation kernel (B-spline of degree 1 or 3).
_KERNEL_POWER = {"linear": 2, "cubic": 4}


def _cubic_taps(idx: Tensor) -> tuple[Tensor, Tensor]:
    """Cubic B-spline interpolation as 8 trilinear look-ups (Sigg & Hadwiger, GPU Gems 2, ch. 20).

    ``idx`` (..., 3) grid positions (index units). Returns look-up points (8, ..., 3) and their
    weights (8, ...): ``Σ weight · trilinear(point)`` is the cubic B-spline interpolant.
    """
    i = torch.floor(idx)
    t = idx - i
    t2, t3 = t * t, t * t * t
    w0 = (1 - t) ** 3 / 6
    w1 = (3 * t3 - 6 * t2 + 4) / 6
    w2 = (-3 * t3 + 3 * t2 + 3 * t + 1) / 6
    w3 = t3 / 6
    g0, g1 = w0 + w1, w2 + w3
    h0, h1 = i - 1 + w1 / g0, i + 1 + w3 / g1
    points, weights = [], []
    for cz in (0, 1):
        for cy in (0, 1):
            for cx in (0, 1):
                pick = [(h0, g0), (h1, g1)]
                (hx, gx), (hy, gy), (hz, gz) = pick[cx], pick[cy], pick[cz]
                points.append(torch.stack((hx[..., 0], hy[..., 1], hz[..., 2]), -1))
                weights.append(gx[..., 0] * gy[..., 1] * gz[..., 2])
    return torch.stack(points), torch.stack(weights)


def _check_shifts(shifts: Tensor, batch: int) -> Tensor:
    if not isinstance(shifts, Tensor) or shifts.shape != (batch, 2):
        shape = tuple(shifts.shape) if isinstance(shifts, Tensor) else type(shifts).__name__
        raise ValueError(f"shifts must be a tensor of shape ({batch}, 2) (x, y pixels); got {shape}")
    return shifts


def _crop(images: Tensor, size: int) -> Tensor:
    """Central ``size`` window of (B, n, n) images (centre pixel n // 2 -> size // 2)."""
    n = images.shape[-1]
    if n == size:
        return images
    start = n // 2 - size // 2
    return images[..., start : start + size, start : start + size]


def project(
    volume: Tensor, rotations: Tensor, size: int | None = None, method: str = "fourier", pad: float = 2.0
) -> Tensor:
    """Projections (B, size, size) of ``volume`` along ``rotations``.

    ``method``: ``"fourier"`` (central slice, :class:`FourierProjector`; for many
    projections build the projector once instead) or ``"real"`` (:func:`project_real`).
    """
    if method == "fourier":
        return FourierProjector(volume, size, pad).images(rotations)
    if method == "real":
        return project_real(volume, rotations, size)
    raise ValueError(f"method must be 'fourier' or 'real', got {method!r}")
