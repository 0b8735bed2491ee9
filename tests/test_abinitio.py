"""cryoorient.orientations.abinitio: in-plane-invariant neighbours and orientations from the images alone."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _blobs import BlobRenderer
from cryoorient.imaging.ctf import apply_ctf, ctf_2d, phase_flip, random_defocus
from cryoorient.imaging.shift import shift_images
from cryoorient.orientations.abinitio import (estimate_orientations, frames_from_neighbors, minimum_images,
                                              null_edge, rotational_neighbors)
from cryoorient.orientations.preprocess import (CORNER_SHARE, CORNER_Z, _gaussian, centre_particles, corner_signal,
                                               prepare_images)
from cryoorient.orientations.align import align_orientations
from cryoorient.geometry import matrix_to_quat, quat_multiply, quat_to_matrix, random_quaternions

MIRROR = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # node P + i: diag(1, -1, -1)·A_i
HAND = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))  # M A M: the mirror-image map


def _rz(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)], dtype=torch.float64)


def _render(q, size=32, sigma2=0.0, seed=0):
    return BlobRenderer(size=size, seed=3, sigma2=sigma2)(q, torch.Generator().manual_seed(seed))


def test_in_plane_angle_and_mirror_convention():
    """A_j = Rz(β)·A_i is found as node i's best neighbour with angle −β; the image of
    diag(1, −1, −1)·A_i as the mirror node P + i with angle 0."""
    q = random_quaternions(24, generator=5, dtype=torch.float64)
    beta = 0.9
    q[1] = quat_multiply(_rz(beta), q[0])
    q[2] = matrix_to_quat(MIRROR @ quat_to_matrix(q[0]))
    index, angle, score = rotational_neighbors(_render(q), neighbors=3, candidates=8, hub_k=3)
    P = q.shape[0]
    assert int(index[1, 0]) == 0 and angle[1, 0].item() == pytest.approx(beta, abs=0.03)
    assert int(index[0, 0]) in (1, P + 2)  # image 2 is the mirror of image 0: node P + 2 = image 0
    k = index[0].tolist().index(1)
    assert angle[0, k].item() == pytest.approx(-beta, abs=0.03)
    assert int(index[2, 0]) == P + 0 and abs(angle[2, 0].item()) < 0.03
    # mirror nodes mirror the rows: node P + 1 finds node P + 0 with the opposite angle
    assert int(index[P + 1, 0]) == P + 0 and angle[P + 1, 0].item() == pytest.approx(-beta, abs=0.03)
    assert bool((score[:, :-1] >= score[:, 1:]).all())


def _true_graph(q, k):
    """The exact neighbour graph of the 2P nodes: nearest viewing directions, true in-plane angles."""
    A = quat_to_matrix(q)
    A2 = torch.cat([A, MIRROR @ A])
    v = A2[:, 2]
    cos = v @ v.T
    P = q.shape[0]
    cos.fill_diagonal_(-2)
    cos[torch.arange(P), torch.arange(P) + P] = -2
    cos[torch.arange(P) + P, torch.arange(P)] = -2
    index = cos.topk(k, dim=1).indices
    z = torch.complex(A2[:, 0], A2[:, 1])
    beta = torch.angle((z.conj()[:, None, :] * z[index]).sum(-1))  # z_j = e^{iβ} z_i
    return index, -beta


def _orientations(z):
    a1, a2 = z.real, z.imag
    return matrix_to_quat(torch.stack([a1, a2, torch.linalg.cross(a1, a2)], 1))


def test_frames_from_exact_graph():
    q = random_quaternions(600, generator=1, dtype=torch.float64)
    index, angle = _true_graph(q, 10)
    z, ev, resid = frames_from_neighbors(index, angle)
    assert torch.allclose((z.real ** 2).sum(1), torch.ones(600, dtype=torch.float64))
    assert torch.allclose((z.real * z.imag).sum(1), torch.zeros(600, dtype=torch.float64), atol=1e-12)
    assert align_orientations(q, _orientations(z)).error < 0.1
    assert ev[2] - ev[3] > 3 * (ev[0] - ev[2])  # three eigenvalues near the top, then a gap
    edge = null_edge(index)
    assert 0.3 < edge < ev[3]  # random in-plane angles on the same graph: far below
    # random angles on the same graph carry no orientation
    z, _, _ = frames_from_neighbors(index, torch.rand(index.shape, dtype=torch.float64) * 2 * math.pi)
    assert align_orientations(q, _orientations(z)).error > 0.8


def _relative_error(q_true, q_est, pairs=2000):
    """Mean angle between the true and estimated A_i·A_jᵀ of random pairs, for either hand:
    invariant to the global rotation of the map, not to a global in-plane rotation of the images."""
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(0, q_true.shape[0], (2, pairs), generator=g)
    At, Ae = quat_to_matrix(q_true), quat_to_matrix(q_est)
    rt = At[i] @ At[j].mT
    errs = []
    for hand in (torch.eye(3, dtype=torch.float64), HAND):
        re = hand @ Ae[i] @ Ae[j].mT @ hand
        c = ((rt * re).sum((-2, -1)) - 1) / 2
        errs.append(float(torch.arccos(c.clamp(-1, 1)).mean()))
    return min(errs)


def test_estimate_orientations_phantom(device):
    """Noiseless 32² projections of the built-in pseudo-molecule from 500 uniform orientations."""
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector

    vol = torch.from_numpy(default_density(box_size=32, voxel_size=3.0, resolution=6.0))
    q = random_quaternions(500, generator=2, dtype=torch.float64)
    images = FourierProjector(vol, pad=2.0).images(q.float())
    res = estimate_orientations(images, seed=0, device=device)
    assert res.quaternions.shape == (500, 4) and res.quaternions.dtype == torch.float64
    assert res.determined and res.summary().startswith("ab initio: 500 orientations determined"), res.summary()
    assert not res.phase_flipped and res.warnings == [] and res.shifts.abs().max() < 2
    assert align_orientations(q, res.quaternions).error < 0.2
    # consistent with the images, not only up to O(4): the relative rotations A_i·A_jᵀ are right
    # (either hand), and a global in-plane rotation of the image frames, invisible to E_OR, is seen
    rel = _relative_error(q, res.quaternions)
    assert rel < 0.3
    turned = quat_multiply(_rz(0.6).expand_as(res.quaternions), res.quaternions)
    assert align_orientations(q, turned).error == pytest.approx(align_orientations(q, res.quaternions).error, abs=1e-3)
    assert _relative_error(q, turned) > rel + 0.2


def test_landmarks_phantom():
    """500 images, the graph on 250 landmarks: the other 250 placed from their landmark neighbours."""
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector

    vol = torch.from_numpy(default_density(box_size=32, voxel_size=3.0, resolution=6.0))
    q = random_quaternions(500, generator=2, dtype=torch.float64)
    images = FourierProjector(vol, pad=2.0).images(q.float())
    res = estimate_orientations(images, landmarks=250, seed=0)
    assert res.neighbors.shape == (1000, 10) and int(res.neighbors.max()) < 500  # landmark nodes
    errors = align_orientations(q, res.quaternions).errors
    lm = torch.randperm(500, generator=torch.Generator().manual_seed(0))[:250]
    rest = torch.ones(500, dtype=torch.bool)
    rest[lm] = False
    assert float(errors.mean()) < 0.25 and float(errors[rest].mean()) < 0.3
    assert _relative_error(q, res.quaternions) < 0.35
    # at most `landmarks` images: the plain run
    full = estimate_orientations(images[:120], seed=0, landmarks=None)
    assert torch.equal(estimate_orientations(images[:120], seed=0, landmarks=120).quaternions, full.quaternions)


def test_bad_input():
    q = random_quaternions(30, generator=0, dtype=torch.float64)
    imgs = _render(q)
    with pytest.raises(ValueError, match="N, n, n"):
        rotational_neighbors(imgs[:, :, :-1])
    bad = imgs.clone()
    bad[3, 4, 5] = float("nan")
    bad[7, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="2 of 30 images contain NaN or infinite values .the first: image 3"):
        rotational_neighbors(bad)
    with pytest.raises(TypeError, match="floating"):
        rotational_neighbors(imgs.to(torch.int32))
    with pytest.raises(ValueError, match="neighbors"):
        rotational_neighbors(imgs, neighbors=0)
    with pytest.raises(ValueError, match="candidates"):
        rotational_neighbors(imgs, candidates=100)
    with pytest.raises(ValueError, match="n_rings"):
        rotational_neighbors(imgs, n_rings=40)
    assert minimum_images(10) == 107 and minimum_images(5) == 54
    with pytest.raises(ValueError, match="at least 107 images for 10 neighbours per image; got 30: .* 25°"):
        estimate_orientations(imgs)
    more = _render(random_quaternions(60, generator=1, dtype=torch.float64))
    with pytest.raises(ValueError, match="landmarks must be an integer >= 54"):
        estimate_orientations(more, neighbors=5, landmarks=20)
    with pytest.raises(ValueError, match="unknown checks"):
        estimate_orientations(more, neighbors=5, accept=("centred",))
    with pytest.raises(ValueError, match="distinct"):
        rotational_neighbors(imgs, neighbors=3, hub_k=3, candidates=8, reference=[0, 1, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="distinct"):
        rotational_neighbors(imgs, neighbors=3, hub_k=3, candidates=8, reference=[0, 1, 2, 3, 4, 30])
    with pytest.raises(ValueError, match="noise_samples"):
        rotational_neighbors(imgs, noise_samples=0)
    index = torch.zeros(60, 4, dtype=torch.long)
    index[0, 0] = 60
    with pytest.raises(ValueError, match="indices"):
        frames_from_neighbors(index, torch.zeros(60, 4))
    with pytest.raises(ValueError, match="both"):
        frames_from_neighbors(index, torch.zeros(60, 3))
    with pytest.raises(ValueError, match="restarts"):
        frames_from_neighbors(index, torch.zeros(60, 4), restarts=0)
    with pytest.raises(ValueError, match="polish"):
        frames_from_neighbors(index, torch.zeros(60, 4), polish=-1)


def test_phase_flip_is_the_image_filtered_by_the_ctf_magnitude():
    """Closed form: flipping CTF·F by sign(CTF) gives |CTF|·F, exactly in Fourier space (odd size: an
    even one has a Nyquist column on which an astigmatic CTF is not Hermitian, so irfft2 changes it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 47, 47, generator=g, dtype=torch.float64)
    du, dv, da = random_defocus(4, 8000, 25000, 1000, generator=1)
    c = ctf_2d(47, 1.5, du, dv, da, dtype=torch.float64)
    flipped = phase_flip(apply_ctf(x, c), c)
    torch.testing.assert_close(torch.fft.rfft2(flipped), torch.fft.rfft2(x) * c.abs(), atol=1e-10, rtol=0)
    torch.testing.assert_close(flipped, apply_ctf(x, c.abs()), atol=1e-12, rtol=0)
    assert (c < 0).any() and not torch.allclose(flipped, apply_ctf(x, c))  # the CTF does invert contrast here


def test_centring_follows_the_particle():
    """Copies of three images moved by known shifts: the centres found differ by exactly those shifts."""
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector

    vol = torch.from_numpy(default_density(box_size=32, voxel_size=3.0, resolution=6.0))
    base = FourierProjector(vol, pad=2.0).images(random_quaternions(3, generator=4).float())
    t = (torch.rand(60, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1) * 3
    found = centre_particles(shift_images(base.repeat(20, 1, 1), t.float()))
    offset = (found - t).view(20, 3, 2)  # per source image: one offset, whatever the shift
    assert float((offset - offset.mean(0)).abs().max()) < 0.2  # sub-pixel: parabolic peaks
    assert float(offset.mean(0).norm(dim=1).max()) < 3


def test_centring_prior_keeps_noise_dominated_shifts_near_zero():
    """Planted shifts N(0, 1.5 px) under noise of 10× the signal's std: the correlation peak alone
    scatters the shifts beyond the zero guess; the posterior with the estimated Gaussian prior does
    better than zero; without noise the prior changes nothing."""
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector

    vol = torch.from_numpy(default_density(box_size=32, voxel_size=3.0, resolution=6.0))
    clean = FourierProjector(vol, pad=2.0).images(random_quaternions(400, generator=7).float())
    t = torch.randn(400, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 1.5
    x = shift_images(clean, t.float())
    zero = float(t.norm(dim=1).mean())  # 1.86 px
    error = lambda found: float((found - t).norm(dim=1).mean())  # noqa: E731
    assert torch.allclose(centre_particles(x, prior=True), centre_particles(x, prior=False), atol=1e-3)
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * float(clean.std()) * 10
    assert error(centre_particles(noisy, prior=False)) > 1.5 * zero  # measured 3.82 px
    assert error(centre_particles(noisy, prior=True)) < 0.95 * zero  # measured 1.64 px


def test_corner_signal_and_refusal():
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector

    q = random_quaternions(150, generator=6)
    vol = torch.from_numpy(default_density(box_size=32, voxel_size=3.0, resolution=6.0))
    inside = FourierProjector(vol, pad=2.0).images(q.float())
    assert abs(corner_signal(torch.randn(150, 32, 32, generator=torch.Generator().manual_seed(1)))[1]) < 4
    share, z = corner_signal(inside + torch.randn(inside.shape, generator=torch.Generator().manual_seed(1)))
    assert abs(share) < 0.01
    cut = FourierProjector(vol, size=16, pad=2.0).images(q.float())  # a 16² window onto the particle
    share, z = corner_signal(cut)
    assert share > 0.2 and z > 10
    with pytest.raises(ValueError, match="reaches the image corners .* accept 'corners'"):
        estimate_orientations(cut, neighbors=5, candidates=16, hub_k=5)
    res = estimate_orientations(cut, neighbors=5, candidates=16, hub_k=5, accept=("corners",))
    assert len(res.warnings) == 1 and res.warnings[0].startswith("proceeding although particle density reaches")


def _elongated_images(size, pixel=4.0, count=1000, snr_db=-6.0, seed=0):
    """Projections (count, size, size) at ``pixel`` Å of the phantom stretched 2.5× along x (156 Å long): CTF
    (0.8–2.5 µm), shifts N(0, 1.5 px), white noise at ``snr_db``; and their CTF source."""
    from cryoorient.imaging.phantom import pseudo_molecule
    from cryoorient.imaging.project import FourierProjector
    from cryoorient.io import density_from_atoms

    xyz, w = pseudo_molecule()
    box = round(192 / pixel)  # 192 Å: the whole particle
    vol = torch.from_numpy(density_from_atoms(xyz * np.array([2.5, 1.0, 1.0]), w, box, pixel, 2 * pixel))
    du, dv, da = random_defocus(count, 8000, 25000, 1000, generator=seed)
    ctf = lambda indices, n: ctf_2d(n, pixel, du[indices], dv[indices], da[indices])  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    clean = FourierProjector(vol, size, 2.0, "linear").images(random_quaternions(count, generator=seed).float())
    x = apply_ctf(shift_images(clean, torch.randn(count, 2, generator=g) * 1.5), ctf(torch.arange(count), size))
    return x + torch.randn(x.shape, generator=g) * float(x.std()) * 10 ** (-snr_db / 20), ctf


def test_corner_check_refuses_a_particle_larger_than_the_box():
    """156 Å long, in a 128 Å box: refused (the unfiltered check of the variance averaged over the images
    gave share 0.14, z 4 and let it through); in a 96 Å box, refused by the images before centring
    (centred, the particle's edges wrap round the box and the corners look flat: z about 0); in a
    192 Å box, or pure noise with the same CTFs: accepted."""
    for pixel, centred in ((4.0, True), (3.0, False)):
        cut, ctf = _elongated_images(32, pixel)
        with pytest.raises(ValueError, match="reaches the image corners .* accept 'corners'"):
            prepare_images(cut, ctf)
        share, z = corner_signal(prepare_images(cut, ctf, centre=centred, accept=("corners",))[0])
        assert share > CORNER_SHARE and z > CORNER_Z
    whole, ctf = _elongated_images(48)
    assert prepare_images(whole, ctf)[2] == []
    assert prepare_images(torch.randn(1000, 32, 32, generator=torch.Generator().manual_seed(4)), ctf)[2] == []


def test_corner_signal_z_is_a_t_statistic_for_coloured_noise():
    """Stationary noise blurred by 2 px (correlated pixels): z spreads as N(0, 1) (the standard error for
    independent pixels gave a spread of 2.4 and |z| up to 5.2 over these stacks)."""
    blur, z = _gaussian(32, 2.0, "cpu"), []
    for seed in range(20):
        noise = torch.randn(300, 32, 32, generator=torch.Generator().manual_seed(seed))
        z.append(corner_signal(torch.fft.irfft2(torch.fft.rfft2(noise) * blur, s=(32, 32)))[1])
    z = torch.tensor(z)
    assert float(z.abs().max()) < 3.5 and float(z.std()) < 1.4


def test_noise_is_not_determined_and_ctf_is_applied():
    """Pure-noise images: the verdict comes out the other way. A CTF source must fit the images."""
    noise = torch.randn(300, 32, 32, generator=torch.Generator().manual_seed(2))
    du, dv, da = random_defocus(300, 8000, 25000, 1000, generator=1)

    def ctf(indices, size):
        return ctf_2d(size, 3.0, du[indices], dv[indices], da[indices])

    stack = noise.numpy().copy()  # float32: torch shares its memory
    res = estimate_orientations(stack, ctf=ctf)
    assert np.array_equal(stack, noise.numpy())  # flipped and centred on a copy
    assert res.phase_flipped and not res.determined
    assert res.summary().startswith("ab initio: 300 orientations NOT determined") and "phase-flipped" in res.summary()
    with pytest.raises(ValueError, match="must return shape"):
        estimate_orientations(noise, ctf=lambda indices, size: ctf(indices, size + 2))


@pytest.fixture
def phantom_map(tmp_path):
    from cryoorient.io import write_map
    from cryoorient.imaging.phantom import default_density

    path = tmp_path / "phantom.mrc"
    write_map(path, default_density(box_size=32, voxel_size=3.0, resolution=6.0), voxel_size=3.0)
    return path


def _snn_paper():
    path = Path(__file__).resolve().parents[1] / "bench" / "snn_paper.py"
    spec = importlib.util.spec_from_file_location("bench_snn_paper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snn_paper_abinitio_row(tmp_path, phantom_map, capsys):
    snn_paper = _snn_paper()
    argv = ["--protocol", "noise", "--estimator", "abinitio", "--map", str(phantom_map), "--n", "600", "--size", "32",
            "--snr", "10", "--device", "cpu", "--quiet", "--workdir", str(tmp_path / "work")]
    assert snn_paper.main(argv) == 0
    row, = json.loads((tmp_path / "work" / "results.json").read_text())
    assert row["arch"] == "abinitio" and row["protocol"] == "noise" and row["target"] == 0.15
    assert 0 <= row["E_OR"] < 0.35 and row["abinitio_seconds"] > 0 and len(row["eigenvalues"]) == 6
    assert "abinitio" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        snn_paper.parse_args(["--protocol", "ctf", "--estimator", "abinitio"])
