"""ASTRA Toolbox backend (optional): GPU parallel-beam projection and CGLS/SIRT reconstruction.

The reference paper projected and reconstructed with the ASTRA Toolbox. This module runs ASTRA's
3D parallel-beam GPU algorithms (``FP3D_CUDA``; ``CGLS3D_CUDA``, ``SIRT3D_CUDA``) in cryoorient's
conventions, those of :mod:`cryoorient.imaging.project`:

* maps are cubic ``[z, y, x]`` arrays centred on voxel ``N // 2``; images ``[y, x]`` centred on
  pixel ``n // 2``; one voxel is the unit of length (a projection sums the map along the ray);
* an orientation is RELION's ``A = Rz(psi)·Ry(tilt)·Rz(rot)`` (matrices (B, 3, 3) or scalar-first
  quaternions (B, 4)): ``image(x, y) = ∫ V(Aᵀ (x, y, z)) dz``.

ASTRA's ``parallel3d_vec`` geometry gives, per projection, the ray direction and the detector's
centre and pixel axes u (next column) and v (next row) in volume coordinates (x along columns,
y along rows, z along slices of the ``[z, y, x]`` array). Image pixel (row r, column c) lies at
``(c − n//2)·A₀ + (r − n//2)·A₁`` (A_k: row k of A), so u = A₀, v = A₁, the ray runs along A₂,
and on an even edge the detector centre sits half a pixel off the image centre; the volume
window is shifted so that voxel ``N // 2`` is the origin.

ASTRA integrates the trilinear interpolant of the map at unit steps along the ray's main axis,
which blurs sharp maps slightly (as :func:`~cryoorient.imaging.project.project_real` does): it
agrees with the Fourier projector to a few per cent on maps whose finest detail spans 2 voxels
or more. Reconstruction is iterative least squares (CGLS, or SIRT) on centred, CTF-free
images; stopping after ``iterations`` steps is the regularisation.

Install with ``pip install 'cryoorient[astra]'``: astra-toolbox is built for CUDA 12 and pulls
the ``nvidia-cuda-runtime-cu12`` and ``nvidia-cufft-cu12`` wheels, which a CUDA 13 driver runs
(bench/README.md, "ASTRA", for machines without them). ASTRA's 3D algorithms need a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ctf import apply_ctf
from .project import _check_shifts, _check_size, _check_volume, _crop, as_rotation_matrices
from .shift import shift_images

__all__ = ["unavailable", "AstraProjector", "project_astra", "reconstruct_astra", "ALGORITHMS"]

#: Reconstruction algorithms of :func:`reconstruct_astra` and ASTRA's names for them.
ALGORITHMS = {"cgls": "CGLS3D_CUDA", "sirt": "SIRT3D_CUDA"}


def unavailable() -> str | None:
    """Why ASTRA cannot run here (not installed, its libraries do not load, no GPU), or None."""
    try:
        import astra
    except (ImportError, OSError) as err:
        return f"astra-toolbox is not installed or does not load ({err}); pip install 'cryoorient[astra]'"
    if not astra.use_cuda():
        return "ASTRA finds no usable CUDA GPU (its 3D projectors run on CUDA only)"
    return None


def _astra():
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    import astra

    return astra


def _volume_geometry(astra, N: int) -> dict:
    """N³ voxels of edge 1, voxel N // 2 centred on the origin."""
    lo = -(N // 2) - 0.5
    return astra.create_vol_geom(N, N, N, lo, lo + N, lo, lo + N, lo, lo + N)


def _projection_geometry(astra, A: np.ndarray, n: int) -> dict:
    """``parallel3d_vec`` geometry of n × n images along RELION matrices A (B, 3, 3)."""
    u, v, ray = A[:, 0], A[:, 1], A[:, 2]
    centre = (n / 2 - n // 2 - 0.5) * (u + v)  # ASTRA's detector centre, from pixel n // 2 at the origin
    return astra.create_proj_geom("parallel3d_vec", n, n, np.concatenate([ray, centre, u, v], 1))


def _main_axis_order(A: np.ndarray) -> np.ndarray:
    """Projections sorted by the main axis of their ray: ASTRA launches one kernel per run of
    projections with the same main axis."""
    return np.argsort(np.abs(A[:, 2]).argmax(1), kind="stable")


def _gpu_index(gpu: int | None, like) -> int:
    if gpu is not None:
        return int(gpu)
    if isinstance(like, Tensor) and like.is_cuda:
        return like.get_device()
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def _run(astra, algorithm: str, gpu: int, iterations: int = 1, **data_ids) -> None:
    cfg = astra.astra_dict(algorithm)
    cfg.update(data_ids)
    cfg["option"] = {"GPUindex": gpu}
    alg = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(alg, iterations)
    finally:
        astra.algorithm.delete(alg)


class AstraProjector:
    """ASTRA's GPU projector of one map, with the interface of
    :class:`~cryoorient.imaging.project.FourierProjector` (``size``, ``box``, :meth:`images`).

    ``AstraProjector(volume, size=None, gpu=None)``: ``volume`` a cubic ``[z, y, x]`` tensor
    (float32 or float64; images come back in its dtype and on its device), ``size`` the image
    edge (default ``N``; larger pads, smaller crops the centre), ``gpu`` the CUDA device ASTRA
    uses (default: the volume's, else the current one).
    """

    def __init__(self, volume: Tensor, size: int | None = None, gpu: int | None = None) -> None:
        self._astra = _astra()
        volume = _check_volume(volume)
        self.map_size = volume.shape[0]
        self.size = _check_size(size, self.map_size)
        self.box = max(self.map_size, self.size)
        self.dtype, self.device = volume.dtype, volume.device
        self.gpu = _gpu_index(gpu, volume)
        self._volume = np.ascontiguousarray(volume.detach().cpu().numpy(), dtype=np.float32)

    def images(self, rotations: Tensor, shifts: Tensor | None = None, ctf: Tensor | None = None) -> Tensor:
        """Projections (B, size, size), optionally shifted and CTF-modulated as
        :meth:`FourierProjector.images <cryoorient.imaging.project.FourierProjector.images>` does
        (``shift_images`` and ``apply_ctf`` on the full ``box``, then the central ``size`` window)."""
        astra = self._astra
        A = as_rotation_matrices(rotations, torch.float64, torch.device("cpu")).numpy()
        order = _main_axis_order(A)
        vol_id = astra.data3d.create("-vol", _volume_geometry(astra, self.map_size), self._volume)
        sino_id = astra.data3d.create("-sino", _projection_geometry(astra, A[order], self.box), 0)
        try:
            _run(astra, "FP3D_CUDA", self.gpu, VolumeDataId=vol_id, ProjectionDataId=sino_id)
            sino = astra.data3d.get(sino_id)  # (rows, B, columns)
        finally:
            astra.data3d.delete([vol_id, sino_id])
        img = torch.empty(sino.shape[1], self.box, self.box, dtype=self.dtype)
        img[torch.from_numpy(order)] = torch.from_numpy(sino.transpose(1, 0, 2)).to(self.dtype)
        img = img.to(self.device)
        if shifts is not None:
            img = shift_images(img, _check_shifts(shifts, img.shape[0]))
        if ctf is not None:
            img = apply_ctf(img, ctf)
        return _crop(img, self.size)

    __call__ = images


def project_astra(volume: Tensor, rotations: Tensor, size: int | None = None, gpu: int | None = None) -> Tensor:
    """Projections (B, size, size) of ``volume`` along ``rotations`` with ASTRA (:class:`AstraProjector`)."""
    return AstraProjector(volume, size, gpu).images(rotations)


def reconstruct_astra(images, orientations, *, algorithm: str = "cgls", iterations: int = 30,
                      gpu: int | None = None) -> Tensor:
    """The map (n, n, n) ``[z, y, x]`` whose ASTRA projections fit ``images`` in least squares.

    ``images``: (N, n, n) centred, CTF-free (or phase-flipped) particle images (tensor or array);
    ``orientations``: (N, 4) quaternions or (N, 3, 3) RELION matrices A. ``algorithm``: ``"cgls"``
    (as the reference paper) or ``"sirt"``, run for ``iterations`` steps from a zero map. Returns
    float32, in the units of the images per voxel of path (a projection of the result sums it
    along the ray), on the images' device (the CPU for arrays).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}; got {algorithm!r}")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be a positive integer; got {iterations!r}")
    x = images if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[0] == 0:
        raise ValueError(f"images must be a non-empty stack of square images (N, n, n); got {tuple(x.shape)}")
    if not (x.is_floating_point() and bool(torch.isfinite(x).all())):
        raise ValueError("images must be finite floating-point values")
    rot = orientations if isinstance(orientations, Tensor) else torch.as_tensor(np.asarray(orientations))
    A = as_rotation_matrices(rot, torch.float64, torch.device("cpu")).numpy()
    if A.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {A.shape[0]} orientations")
    astra = _astra()
    n = x.shape[-1]
    order = _main_axis_order(A)
    sino = np.ascontiguousarray(x.detach().cpu().numpy()[order].transpose(1, 0, 2), dtype=np.float32)
    vol_id = astra.data3d.create("-vol", _volume_geometry(astra, n), 0)
    sino_id = astra.data3d.create("-sino", _projection_geometry(astra, A[order], n), sino)
    try:
        _run(astra, ALGORITHMS[algorithm], _gpu_index(gpu, x), int(iterations), ReconstructionDataId=vol_id,
             ProjectionDataId=sino_id)
        volume = astra.data3d.get(vol_id)
    finally:
        astra.data3d.delete([vol_id, sino_id])
    return torch.from_numpy(volume).to(x.device)
