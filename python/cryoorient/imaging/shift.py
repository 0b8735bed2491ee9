"""Shift operator S_t: sub-pixel translation of images by a Fourier phase ramp.

Conventions
-----------
* Shifts ``t = (tx, ty)`` are in pixels along the image axes x (columns) and y (rows)
  of ``[y, x]`` images; positive ``t`` moves the content towards larger indices:
  ``S_t p (s) = p(s - t)``. Integer shifts equal ``torch.roll`` by ``(ty, tx)``.
* The shift is periodic (content leaving one edge re-enters at the other), as any
  Fourier shift. For even image sizes the Nyquist row/column of a sub-pixel shift has
  no real-valued phase; ``irfft2`` keeps its real part (as RELION, cryoDRGN do).
* RELION's ``rlnOriginX/YAngst`` is the *negative* of ``t`` (in Å): RELION shifts an
  observed image by its origin to bring it onto the reference projection.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["shift_images", "phase_ramp", "random_shifts", "SHIFT_DISTRIBUTIONS"]

#: Names accepted by :func:`random_shifts`.
SHIFT_DISTRIBUTIONS = ("none", "triangular", "gaussian", "uniform")


def phase_ramp(shifts: Tensor, size: int) -> Tensor:
    """Phase factors (B, size, size // 2 + 1) on the ``rfft2`` grid that translate images of edge
    ``size`` by ``shifts`` (B, 2) pixels (x, y)."""
    if not isinstance(shifts, Tensor) or shifts.ndim != 2 or shifts.shape[1] != 2:
        shape = tuple(shifts.shape) if isinstance(shifts, Tensor) else type(shifts).__name__
        raise ValueError(f"shifts must be a tensor of shape (B, 2) (x, y pixels); got {shape}")
    if not shifts.is_floating_point():
        shifts = shifts.to(torch.get_default_dtype())
    ky = torch.fft.fftfreq(size, dtype=shifts.dtype, device=shifts.device)
    kx = torch.fft.rfftfreq(size, dtype=shifts.dtype, device=shifts.device)
    angle = -2 * math.pi * (shifts[:, 0, None, None] * kx[None, None, :] + shifts[:, 1, None, None] * ky[None, :, None])
    return torch.polar(torch.ones_like(angle), angle)


def shift_images(images: Tensor, shifts: Tensor) -> Tensor:
    """Translate square images (B, n, n) by ``shifts`` (B, 2) pixels (x, y); same dtype/device."""
    if not isinstance(images, Tensor) or images.ndim != 3 or images.shape[1] != images.shape[2]:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (B, n, n); got {shape}")
    if shifts.shape[0] != images.shape[0]:
        raise ValueError(f"got {shifts.shape[0]} shifts for {images.shape[0]} images")
    n = images.shape[-1]
    spec = torch.fft.rfft2(images) * phase_ramp(shifts.to(device=images.device, dtype=images.dtype), n)
    return torch.fft.irfft2(spec, s=(n, n))


def random_shifts(
    n: int,
    distribution: str = "triangular",
    limit: float = 0.0,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``n`` shifts (n, 2) in the unit of ``limit`` (pixels or Å), x and y independent.

    ``distribution``: ``"none"`` (zeros), ``"triangular"`` (the paper's: mode 0, support
    [-limit, limit]), ``"uniform"`` (on [-limit, limit]) or ``"gaussian"`` (standard deviation
    ``limit``, untruncated). ``generator``: a CPU ``torch.Generator`` or an int seed; draws are
    made on the CPU in float64 so they do not depend on the device used later.
    """
    if distribution not in SHIFT_DISTRIBUTIONS:
        raise ValueError(f"shift distribution must be one of {SHIFT_DISTRIBUTIONS}, got {distribution!r}")
    limit = float(limit)
    if not math.isfinite(limit) or limit < 0:
        raise ValueError(f"shift limit must be a finite number >= 0, got {limit!r}")
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if generator is None or isinstance(generator, int):
        generator = torch.Generator().manual_seed(0 if generator is None else int(generator))
    if distribution == "none" or limit == 0:
        return torch.zeros(int(n), 2, dtype=dtype)
    if distribution == "gaussian":
        t = torch.randn(int(n), 2, generator=generator, dtype=torch.float64) * limit
    else:
        u = torch.rand(int(n), 2, generator=generator, dtype=torch.float64)
        if distribution == "uniform":
            t = (2 * u - 1) * limit
        else:  # symmetric triangular on [-1, 1]: inverse CDF
            t = torch.where(u < 0.5, torch.sqrt(2 * u) - 1, 1 - torch.sqrt(2 * (1 - u))) * limit
    return t.to(dtype)
