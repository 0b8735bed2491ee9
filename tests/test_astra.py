"""ASTRA backend (cryoorient.imaging.astra): RELION's convention against the native projector,
and CGLS/SIRT reconstruction. Skipped with the reason when astra-toolbox or its GPU is missing."""

import pytest
import torch

from cryoorient.geometry import quat_to_matrix, random_quaternions
from cryoorient.imaging import astra
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.project import FourierProjector

REASON = astra.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def volume():
    """The asymmetric pseudo-molecule, 48³ voxels of 2.5 Å at 10 Å (inside the inscribed sphere)."""
    return torch.as_tensor(default_density(box_size=48, voxel_size=2.5, resolution=10.0))


@pytest.mark.parametrize("size", [48, 55, 40])
def test_projection_convention(volume, size):
    """ASTRA's projections equal the Fourier projector's (RELION's A) to a few per cent; the transposed
    matrix (ASPIRE's storage) and the transposed image (x and y swapped) are far off."""
    A = quat_to_matrix(random_quaternions(12, generator=3).double())
    native = FourierProjector(volume.double(), size).images(A).float()
    ours = astra.project_astra(volume, A, size)
    assert ours.shape == native.shape == (12, size, size)
    right = _relative(ours, native)
    print(f"size {size}: relative L2 difference ASTRA vs native {right:.4f}")
    assert right < 0.1
    assert _relative(astra.project_astra(volume, A.transpose(1, 2), size), native) > 0.4
    assert _relative(ours.transpose(1, 2), native) > 0.4


def test_projection_shifts_and_ctf_as_native(volume):
    from cryoorient.imaging.ctf import ctf_2d

    q = random_quaternions(6, generator=4)
    shifts = torch.tensor([[1.5, -2.0], [0.0, 3.0], [-4.0, 0.5], [2.0, 2.0], [0.0, 0.0], [-1.0, -1.0]])
    ctf = ctf_2d(48, 2.5, torch.full((6,), 1.5e4), torch.full((6,), 1.3e4), torch.full((6,), 30.0))
    native = FourierProjector(volume).images(q, shifts, ctf)
    assert _relative(astra.AstraProjector(volume).images(q, shifts, ctf), native) < 0.1


def test_projection_on_cuda_tensors(volume):
    q = random_quaternions(4, generator=5)
    images = astra.project_astra(volume.cuda(), q.cuda())
    assert images.is_cuda and images.dtype == torch.float32
    torch.testing.assert_close(images.cpu(), astra.project_astra(volume, q), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["cgls", "sirt"])
def test_reconstruction(volume, algorithm):
    """2,000 noiseless views reconstruct the map (correlation with the truth > 0.95 for CGLS, > 0.9 for
    SIRT, which converges more slowly); a wrong geometry would blur it far below."""
    q = random_quaternions(2000, generator=6).cuda()
    images = FourierProjector(volume.cuda()).images(q)
    result = astra.reconstruct_astra(images, q, algorithm=algorithm, iterations=30 if algorithm == "cgls" else 100)
    assert result.shape == volume.shape and result.is_cuda
    corr = float(torch.corrcoef(torch.stack([result.cpu().flatten(), volume.flatten()]))[0, 1])
    print(f"{algorithm}: correlation with the true map {corr:.4f}")
    assert corr > (0.95 if algorithm == "cgls" else 0.9)


def test_bad_input():
    with pytest.raises(ValueError, match="algorithm"):
        astra.reconstruct_astra(torch.zeros(2, 8, 8), random_quaternions(2, generator=0), algorithm="fbp")
    with pytest.raises(ValueError, match="2 images but 3 orientations"):
        astra.reconstruct_astra(torch.zeros(2, 8, 8), random_quaternions(3, generator=0))


def test_simulation_with_the_astra_projector(volume):
    """simulate(projector="astra") makes the native projector's clean images (shifts, CTF) to a few per cent."""
    from cryoorient.imaging.simulate import ImageSimulator, SimulationSettings, draw_parameters

    images = {}
    for projector in ("fourier", "astra"):
        s = SimulationSettings(n=16, size=48, ctf=True, shift_max=3.0, seed=7, projector=projector,
                               interpolation="cubic", normalize=False)
        sim = ImageSimulator(volume, 2.5, s, draw_parameters(s, 2.5), device="cuda")
        images[projector] = sim.clean(0, 16).cpu()
    assert _relative(images["astra"], images["fourier"]) < 0.1
