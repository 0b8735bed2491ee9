"""Benchmarks of the pipeline steps: projection, reconstruction, ab-initio orientations, refinement.

Data: the built-in pseudo-molecule (``cryoorient.imaging.phantom``) projected along uniformly
random orientations, noiseless, made once per device. Rates in ``extra_info``: images per
second. The projector group also times ASTRA's GPU projector (``cryoorient.imaging.astra``)
when astra-toolbox is installed, and the reconstruction group ASTRA's CGLS.
"""

from __future__ import annotations

import functools

import pytest
import torch

from cryoorient.geometry import quat_distance, random_quaternions
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.project import FourierProjector

SIZES = {
    "cpu": dict(box=24, voxel=5.0, project=16, reconstruct=128, abinitio=120, refine=40),
    "cuda": dict(box=128, voxel=1.0, project=2048, reconstruct=2000, abinitio=2000, refine=2000),
}
ASTRA_ITERATIONS = 20


@functools.lru_cache(maxsize=None)
def _data(device_type: str, box: int, voxel: float, n: int):
    """(map, quaternions (n, 4), images (n, box, box)) on the device."""
    device = torch.device(device_type)
    volume = torch.as_tensor(default_density(box_size=box, voxel_size=voxel, resolution=2 * voxel)).to(device)
    q = random_quaternions(n, generator=0).to(device)
    projector = FourierProjector(volume, interpolation="linear" if device_type == "cpu" else "cubic")
    images = torch.cat([projector.images(part) for part in q.split(1024)])
    return volume, q, images


def _dataset(device: torch.device, step: str):
    s = SIZES[device.type]
    return s[step], _data(device.type, s["box"], s["voxel"], s[step])


def _astra_or_skip(device: torch.device):
    if device.type != "cuda":
        pytest.skip("ASTRA's 3D projectors run on CUDA only")
    from cryoorient.imaging import astra

    if (reason := astra.unavailable()) is not None:
        pytest.skip(reason)
    return astra


@pytest.mark.parametrize("impl", ["fourier-cubic", "fourier-linear", "astra"])
def test_project(bench, device, impl):
    n, (volume, q, _) = _dataset(device, "project")
    if impl == "astra":
        projector = _astra_or_skip(device).AstraProjector(volume)
    else:
        projector = FourierProjector(volume, interpolation=impl.split("-")[1])
    images = bench("project", lambda: projector.images(q), sizes=dict(box=volume.shape[0], images=n),
                   rate=("images", n))
    assert images.shape == (n, volume.shape[0], volume.shape[0])


@pytest.mark.parametrize("impl", ["fourier", "astra-cgls"])
def test_reconstruct(bench, device, impl):
    from cryoorient.maps.reconstruct import reconstruct

    n, (volume, q, images) = _dataset(device, "reconstruct")
    if impl == "fourier":
        fn = lambda: reconstruct(images, q, device=device, progress=False)  # noqa: E731
    else:
        astra = _astra_or_skip(device)
        fn = lambda: astra.reconstruct_astra(images, q, iterations=ASTRA_ITERATIONS)  # noqa: E731
    result = bench("reconstruct", fn, sizes=dict(box=volume.shape[0], images=n), rate=("images", n))
    assert result.shape == volume.shape


def test_abinitio(bench, device):
    from cryoorient.orientations.abinitio import estimate_orientations

    n, (volume, _, images) = _dataset(device, "abinitio")
    result = bench("abinitio", lambda: estimate_orientations(images, device=device), sizes=dict(box=volume.shape[0],
                   images=n), rate=("images", n))
    assert result.quaternions.shape == (n, 4)


def test_refine(bench, device):
    """One round of projection matching (no soft final assignment), from orientations 0.1 rad off."""
    from cryoorient.maps.refine import refine

    n, (volume, q, images) = _dataset(device, "refine")
    g = torch.Generator().manual_seed(1)
    q_init = (q.cpu().double() + 0.05 * torch.randn(n, 4, generator=g, dtype=torch.float64)).to(device)
    result = bench("refine", lambda: refine(images, q_init, rounds=1, soft=False, device=device, progress=False),
                   sizes=dict(box=volume.shape[0], images=n, rounds=1), rate=("images", n))
    assert float(quat_distance(result.quaternions, q.cpu().double()).mean()) < float(
        quat_distance(q_init.cpu(), q.cpu().double()).mean())
