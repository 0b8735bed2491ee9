import numpy as np
import pandas as pd
import pytest
import torch

from cryoorient.imaging.ctf import ctf_2d
from cryoorient.maps.fsc import fsc
from cryoorient.geometry import quat_to_matrix, random_quaternions
from cryoorient.io.star import Particles
from cryoorient.maps.reconstruct import ParticleCTF, reconstruct

N_BOX = 32


def _blobs():
    g = torch.Generator().manual_seed(1)
    centres = (torch.rand(6, 3, generator=g, dtype=torch.float64) - 0.5) * 14  # voxels, (x, y, z)
    sigmas = 0.9 + torch.rand(6, generator=g, dtype=torch.float64) * 0.6
    weights = 0.5 + torch.rand(6, generator=g, dtype=torch.float64)
    return centres, sigmas, weights


def _volume(centres, sigmas, weights, n=N_BOX):
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    v = torch.zeros(n, n, n, dtype=torch.float64)
    for c, s, w in zip(centres, sigmas, weights):
        v += w * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return v


def _projections(centres, sigmas, weights, A, n=N_BOX):
    """Closed form: a 3D Gaussian at c projects to a 2D Gaussian at (A c)_xy, amplitude w·√(2π)·σ."""
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    pos = torch.einsum("nij,bj->nbi", A.double(), centres)  # (N, blobs, 3)
    img = torch.zeros(A.shape[0], n, n, dtype=torch.float64)
    for b in range(centres.shape[0]):
        s, w = sigmas[b], weights[b]
        dx = x[None] - pos[:, b, 0, None, None]
        dy = y[None] - pos[:, b, 1, None, None]
        img += w * np.sqrt(2 * np.pi) * s * torch.exp(-(dx**2 + dy**2) / (2 * s * s))
    return img


@pytest.mark.parametrize("n", [32, 31])
def test_reconstruction_from_exact_projections_matches_the_map(n):
    c, s, w = _blobs()
    q = random_quaternions(3000, generator=0, dtype=torch.float64)
    images = _projections(c, s, w, quat_to_matrix(q), n=n).float()
    vol = reconstruct(images, q, progress=False)
    truth = _volume(c, s, w, n=n)
    rel = torch.linalg.norm(vol.double() - truth) / torch.linalg.norm(truth)
    assert rel < 0.1, rel
    res = fsc(vol, truth, voxel_size=2.0)
    assert res.resolution(0.5) < 2.0 * 2.0 * 1.1  # within 10% of Nyquist (2 voxels)


def test_wrong_orientations_give_a_worse_map():
    c, s, w = _blobs()
    q = random_quaternions(500, generator=0, dtype=torch.float64)
    images = _projections(c, s, w, quat_to_matrix(q)).float()
    # transposed matrices (the ASPIRE direction) are the wrong convention here
    good = reconstruct(images, quat_to_matrix(q), progress=False)
    bad = reconstruct(images, quat_to_matrix(q).transpose(1, 2), progress=False)
    truth = _volume(c, s, w)
    err = lambda v: float(torch.linalg.norm(v.double() - truth) / torch.linalg.norm(truth))  # noqa: E731
    assert err(good) < 0.1 < err(bad)


def test_bad_inputs():
    with pytest.raises(ValueError, match="no images"):
        reconstruct(torch.zeros(0, 8, 8), torch.zeros(0, 4), progress=False)
    with pytest.raises(ValueError, match="orientations"):
        reconstruct(torch.zeros(3, 8, 8), torch.ones(2, 4), progress=False)
    with pytest.raises(ValueError, match="square"):
        reconstruct(torch.zeros(3, 8, 6), torch.ones(3, 4), progress=False)
    bad = torch.zeros(3, 8, 8)
    bad[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reconstruct(bad, torch.ones(3, 4), progress=False)


def test_fsc_of_identical_maps_is_one_and_of_noise_is_low():
    truth = _volume(*_blobs())
    res = fsc(truth, truth, voxel_size=3.0)
    assert np.allclose(res.fsc, 1.0)
    assert res.resolution(0.143) == pytest.approx(6.0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 32, 32, generator=g), torch.randn(32, 32, 32, generator=g)
    assert np.abs(fsc(a, b, 1.0).fsc[3:]).max() < 0.2
    with pytest.raises(ValueError, match="cubic"):
        fsc(truth, truth[:-1], 1.0)


@pytest.mark.parametrize("n", [16, 15])
def test_axis_aligned_views_stay_inside_the_grid(n):
    # identity and quarter-turn views put samples exactly on the last Fourier plane
    q = torch.tensor([[1.0, 0, 0, 0], [0.5**0.5, 0.5**0.5, 0, 0], [0.5**0.5, 0, 0.5**0.5, 0]]).repeat(4, 1)
    images = torch.randn(q.shape[0], n, n)
    vol = reconstruct(images, q, progress=False)
    assert vol.shape == (n, n, n) and torch.isfinite(vol).all()


def test_weighted_insertion_counts_an_image_as_often_as_its_weight():
    from cryoorient.maps.reconstruct import FourierInserter

    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 16, 16, generator=g)
    A = quat_to_matrix(random_quaternions(3, generator=4))
    weighted = FourierInserter(16, weight_floor=1e-6)
    weighted.insert(images, A, weights=torch.tensor([2.0, 0.5, 0.0]))
    repeated = FourierInserter(16, weight_floor=1e-6)
    repeated.insert(images[[0, 0]], A[[0, 0]])
    half = FourierInserter(16, weight_floor=1e-6)
    half.insert(images[1:2], A[1:2])
    assert torch.allclose(weighted.data, repeated.data + 0.5 * half.data, atol=1e-4)
    assert torch.allclose(weighted.weight, repeated.weight + 0.5 * half.weight, atol=1e-5)
    with pytest.raises(ValueError, match="weights must be 3 finite non-negative"):
        weighted.insert(images, A, weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must be 3"):
        weighted.insert(images, A, weights=torch.ones(2))


def test_particle_ctf_uses_each_particles_defocus_optics_and_phase_shift():
    data = pd.DataFrame({
        "rlnImageName": [f"{k + 1}@stack.mrcs" for k in range(3)],
        "rlnDefocusU": [10000.0, 15000.0, 20000.0], "rlnDefocusV": [9000.0, 15000.0, 19000.0],
        "rlnDefocusAngle": [10.0, 0.0, 80.0], "rlnPhaseShift": [0.0, 90.0, 45.0],
        "rlnImagePixelSize": [2.0] * 3, "rlnVoltage": [300.0] * 3,
    })
    ctf = ParticleCTF(Particles(data))(np.arange(3), 32)
    for k in range(3):
        expected = ctf_2d(32, 2.0, data.rlnDefocusU[k], data.rlnDefocusV[k], data.rlnDefocusAngle[k],
                          phase_shift=data.rlnPhaseShift[k])
        torch.testing.assert_close(ctf[k], expected[0])
    plain = ParticleCTF(Particles(data.drop(columns="rlnPhaseShift")))(torch.arange(3), 32)
    torch.testing.assert_close(plain[1], ctf_2d(32, 2.0, 15000.0)[0])
    assert not torch.allclose(plain[1], ctf[1])


def test_particle_ctf_of_a_real_file_with_six_optics_groups(shared_data, device):
    """RELION 3.1 file with pixel sizes 1.24/1.25 Å and Cs 2.6/2.7 mm: each particle's CTF, on the device,
    is ctf_2d with that particle's own defocus and optics, in the order asked for."""
    from cryoorient.io import read_particles

    path = shared_data / "formats" / "relion31.6opticsgroups.star"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    p = read_particles(path)
    assert len(np.unique(np.stack([p.pixel_size, p.spherical_aberration], 1), axis=0)) > 1
    idx = torch.randperm(len(p), generator=torch.Generator().manual_seed(0))[:40]
    ctf = ParticleCTF(p, device)(idx, 24)
    assert ctf.device.type == device.type and ctf.shape == (40, 24, 13)
    # the phase reaches ~100 rad at Nyquist, where float32 sin/cos of the GPU and the CPU differ by ~1e-5;
    # a wrong defocus or optics group changes values by ~0.1-1
    atol = 1e-5 if device.type == "cpu" else 1e-4
    for row, k in enumerate(idx.tolist()):
        expected = ctf_2d(24, float(p.pixel_size[k]), float(p.defocus_u[k]), float(p.defocus_v[k]),
                          float(p.defocus_angle[k]), voltage=float(p.voltage[k]), cs=float(p.spherical_aberration[k]),
                          amplitude_contrast=float(p.amplitude_contrast[k]))
        torch.testing.assert_close(ctf[row].cpu(), expected[0], atol=atol, rtol=0)


def test_translate_moves_the_accumulated_map_like_moved_images():
    from cryoorient.maps.reconstruct import FourierInserter

    c, s, w = _blobs()
    t = torch.tensor([1.5, -2.0, 0.75], dtype=torch.float64)  # voxels (x, y, z)
    A = quat_to_matrix(random_quaternions(800, generator=5, dtype=torch.float64))
    moved, direct = FourierInserter(N_BOX, weight_floor=1e-3), FourierInserter(N_BOX, weight_floor=1e-3)
    moved.insert(_projections(c, s, w, A).float(), A.float())
    moved.translate(t)
    direct.insert(_projections(c + t, s, w, A).float(), A.float())  # the blobs themselves at c + t
    assert torch.allclose(moved.weight, direct.weight)
    err = torch.linalg.norm(moved.volume() - direct.volume()) / torch.linalg.norm(direct.volume())
    assert err < 0.02, err
    truth = _volume(c + t, s, w)
    assert torch.linalg.norm(moved.volume().double() - truth) / torch.linalg.norm(truth) < 0.1
