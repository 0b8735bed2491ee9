import csv
import math

import pytest
import torch

from cryoorient.orientations.align import (
    Alignment,
    align_orientations,
    aligned_errors,
    orientation_error,
    physical_error,
    plot_error_histogram,
    save_errors_csv,
)
from cryoorient.geometry import (
    matrix_to_quat,
    plane_rotations_to_matrix,
    quat_conjugate,
    quat_distance,
    quat_multiply,
    random_quaternions,
    symmetry_group,
)

CONJ = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)


def _random_o4(g, improper):
    Q, R = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    if (torch.linalg.det(Q) < 0) != improper:
        Q[:, 0] = -Q[:, 0]
    return Q


def _perturb(q, sigma, g):
    axis = torch.randn(q.shape[0], 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    half = sigma * torch.randn(q.shape[0], 1, generator=g, dtype=torch.float64) / 2
    return quat_multiply(q, torch.cat([torch.cos(half), torch.sin(half) * axis], -1))


def _planted(P, sigma, seed, improper=None, outliers=0.0):
    """q_true, q_est with T·q_est = q_true (+ noise, outliers, random signs and scales), and T."""
    g = torch.Generator().manual_seed(seed)
    qt = random_quaternions(P, g, dtype=torch.float64)
    improper = bool(torch.rand(1, generator=g) < 0.5) if improper is None else improper
    T = _random_o4(g, improper)
    qe = qt @ T
    if sigma:
        qe = _perturb(qe, sigma, g)
    n = int(outliers * P)
    qe[:n] = random_quaternions(n, g, dtype=torch.float64)
    qe = qe * torch.where(torch.rand(P, 1, generator=g) < 0.5, -1.0, 1.0).double() * (0.5 + torch.rand(P, 1, generator=g))
    return qt, qe, T


def test_exactness_random_trials():
    # 30 trials: the returned E_OR is never above the error under the planted T (+1e-4 rad)
    g = torch.Generator().manual_seed(123)
    for trial in range(30):
        P = int(10 ** (1 + math.log10(200) * torch.rand(1, generator=g).item()))
        if trial % 5 == 0:
            P = int(500 + 1500 * torch.rand(1, generator=g).item())
        sigma = (0.0, 0.01, 0.1, 0.3, 0.6)[trial % 5]
        outliers = (0.0, 0.0, 0.3)[trial % 3]
        qt, qe, T = _planted(P, sigma, seed=trial, outliers=outliers)
        planted = aligned_errors(qt, qe, T).mean().item()
        res = align_orientations(qt, qe, seed=trial)
        assert res.error <= planted + 1e-4, (trial, P, sigma, outliers, res.error, planted)


@pytest.mark.parametrize("improper", [False, True])
def test_recovers_planted_transform_and_handedness(improper):
    qt, qe, T = _planted(300, 0.0, seed=7, improper=improper)
    res = align_orientations(qt, qe)
    assert res.reflected == improper
    assert res.error < 1e-9 and res.errors.max() < 1e-7
    # T is unique up to its sign (q and -q are one rotation)
    assert min((res.transform - T).abs().max(), (res.transform + T).abs().max()) < 1e-9
    torch.testing.assert_close(res.transform @ res.transform.T, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(plane_rotations_to_matrix(res.angles, torch.tensor(res.reflected)), res.transform)


def test_global_rotation_and_mirror_of_rotations():
    # the ambiguities of a recovery from distances: R ↦ A·R·B (q ↦ a·q·b) and R ↦ Rᵀ (q ↦ q̄)
    g = torch.Generator().manual_seed(3)
    qt = random_quaternions(500, g, dtype=torch.float64)
    a, b = random_quaternions(2, g, dtype=torch.float64)
    for qe, mirrored in ((quat_multiply(a, quat_multiply(qt, b)), False), (quat_conjugate(qt), True)):
        res = align_orientations(qt, _perturb(qe, 0.05, g))
        assert res.reflected == mirrored
        assert abs(res.error - 0.05 * math.sqrt(2 / math.pi)) < 0.003  # mean angle of the noise


def test_error_is_symmetric_in_its_arguments():
    # d(q, T q̂) = d(Tᵀ q, q̂): swapping the sets must give the same optimum
    qt, qe, _ = _planted(400, 0.3, seed=11, outliers=0.2)
    assert abs(orientation_error(qt, qe) - orientation_error(qe, qt)) < 1e-4


def test_errors_are_exact_for_returned_transform():
    qt, qe, _ = _planted(250, 0.2, seed=5)
    res = align_orientations(qt, qe)
    torch.testing.assert_close(res.errors, aligned_errors(qt, qe, res.transform))
    assert res.error == pytest.approx(res.errors.mean().item())
    aligned = res.apply(qe / qe.norm(dim=-1, keepdim=True))
    d = 2 * torch.arccos((aligned * qt).sum(-1).abs().clamp(max=1))
    torch.testing.assert_close(d, res.errors, atol=1e-6, rtol=0)
    assert orientation_error(qt, qe) == pytest.approx(res.error, abs=1e-12)
    assert res.error_deg == pytest.approx(math.degrees(res.error))


@pytest.mark.parametrize("symmetry,P,sigma", [("C4", 300, 0.05), ("D2", 150, 0.1), ("O", 200, 0.0), ("I", 60, 0.1)])
def test_symmetry(symmetry, P, sigma):
    g = torch.Generator().manual_seed(len(symmetry) + P)
    group = symmetry_group(symmetry, dtype=torch.float64)
    qt = random_quaternions(P, g, dtype=torch.float64)
    mates = quat_multiply(qt, group[torch.randint(0, group.shape[0], (P,), generator=g)])
    a = random_quaternions(1, g, dtype=torch.float64)[0]
    # recovered = a global rotation of random symmetry mates, mirrored for the odd groups
    mirror = symmetry in ("D2", "I")
    qe = quat_multiply(a, quat_conjugate(mates) if mirror else mates)
    qe = _perturb(qe, sigma, g) if sigma else qe
    res = align_orientations(qt, qe, symmetry=symmetry)
    T = torch.stack([quat_multiply(a, e * CONJ if mirror else e) for e in torch.eye(4, dtype=torch.float64)], -1)
    planted = aligned_errors(qt, qe, T.T, symmetry).mean().item()
    assert res.error <= planted + 1e-4
    assert res.reflected == mirror
    assert res.symmetry == symmetry
    # without the group, the mates look like large errors
    assert orientation_error(qt, qe) > res.error + 0.1


def test_seed_is_deterministic():
    qt, qe, _ = _planted(120, 0.3, seed=9, outliers=0.3)
    r1, r2 = align_orientations(qt, qe, seed=4), align_orientations(qt, qe, seed=4)
    assert torch.equal(r1.transform, r2.transform) and r1.error == r2.error


def test_csv_and_histogram(tmp_path):
    qt, qe, _ = _planted(80, 0.1, seed=2)
    res = align_orientations(qt, qe)
    save_errors_csv(tmp_path / "errors.csv", res)
    with open(tmp_path / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(80))
    torch.testing.assert_close(torch.tensor([float(r["error_rad"]) for r in rows], dtype=torch.float64), res.errors)
    assert float(rows[3]["error_deg"]) == pytest.approx(math.degrees(float(rows[3]["error_rad"])))
    plot_error_histogram(tmp_path / "errors.png", res)
    assert (tmp_path / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs():
    qt, qe, _ = _planted(20, 0.0, seed=1)
    with pytest.raises(ValueError, match="same number"):
        align_orientations(qt, qe[:19])
    with pytest.raises(ValueError, match="empty"):
        align_orientations(qt[:0], qe[:0])
    with pytest.raises(ValueError, match="shape"):
        align_orientations(qt[:, :3], qe)
    bad = qe.clone()
    bad[5] = 0
    with pytest.raises(ValueError, match="q_est contains zero"):
        align_orientations(qt, bad)
    bad[5] = float("nan")
    with pytest.raises(ValueError, match="q_est contains NaN"):
        align_orientations(qt, bad)
    bad = qt.clone()
    bad[0, 1] = float("inf")
    with pytest.raises(ValueError, match="q_true contains NaN"):
        orientation_error(bad, qe)
    with pytest.raises(ValueError, match="unknown symmetry"):
        align_orientations(qt, qe, symmetry="X5")
    with pytest.raises(ValueError, match="restarts"):
        align_orientations(qt, qe, restarts=-1)


def test_result_type():
    qt, qe, _ = _planted(30, 0.0, seed=0)
    res = align_orientations(qt.numpy(), qe.float().numpy())
    assert isinstance(res, Alignment) and res.errors.shape == (30,) and res.errors.dtype == torch.float64


@pytest.mark.cuda
def test_cuda_matches_cpu():
    qt, qe, _ = _planted(20000, 0.1, seed=21, outliers=0.1)
    cpu = align_orientations(qt, qe)
    gpu = align_orientations(qt.cuda(), qe.cuda())
    assert abs(gpu.error - cpu.error) < 1e-4 and gpu.reflected == cpu.reflected


MIRROR = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)  # A ↦ J·A·J


def _turned(qt, g, mirrored):
    """Orientations of the true map turned by a random rotation c (q·c), in its mirror image if asked, and c."""
    c = random_quaternions(1, g, dtype=torch.float64)[0]
    qe = quat_multiply(qt, c)
    return (qe * MIRROR if mirrored else qe), c


@pytest.mark.parametrize("mirrored", [False, True])
def test_physical_error_forgives_a_turned_map_and_its_mirror(mirrored):
    g = torch.Generator().manual_seed(4 + mirrored)
    qt = random_quaternions(300, g, dtype=torch.float64)
    qe, c = _turned(qt, g, mirrored)
    res = physical_error(qt, qe)
    assert res.hand == ("mirror" if mirrored else "same")
    assert res.error < 1e-7 and res.error_other_hand > 0.5
    # q = h(q̂)·b with b = c⁻¹: the estimates describe the truth turned by B = matrix of c⁻¹
    assert float(quat_distance(matrix_to_quat(res.rotation), quat_conjugate(c))) < 1e-6
    torch.testing.assert_close(res.errors, aligned_errors(qt, qe, res.transform))
    # noise on top: the error is the noise's mean angle; E_OR can only be lower
    noisy = _perturb(qe, 0.05, g)
    res = physical_error(qt, noisy)
    assert res.hand == ("mirror" if mirrored else "same")
    assert abs(res.error - 0.05 * math.sqrt(2 / math.pi)) < 0.003
    assert orientation_error(qt, noisy) <= res.error + 1e-6


def test_physical_error_does_not_forgive_a_left_factor_or_the_transpose():
    # both are elements of O(4) (E_OR ≈ 0) that give other images, not a turned or mirrored map
    g = torch.Generator().manual_seed(8)
    qt = random_quaternions(300, g, dtype=torch.float64)
    a = torch.tensor([math.cos(0.6), math.sin(0.6), 0.0, 0.0], dtype=torch.float64)  # 69° about x
    left = quat_multiply(a, qt)
    transposed = quat_multiply(quat_conjugate(qt), random_quaternions(1, g, dtype=torch.float64)[0])
    for qe in (left, transposed, left * MIRROR, quat_conjugate(qt)):
        assert orientation_error(qt, qe) < 1e-6
        res = physical_error(qt, qe)
        assert res.error > 0.4 and res.error_other_hand > 0.4


@pytest.mark.parametrize("symmetry,mirrored", [("C4", True), ("D2", False), ("O", True)])
def test_physical_error_with_symmetry(symmetry, mirrored):
    g = torch.Generator().manual_seed(len(symmetry))
    group = symmetry_group(symmetry, dtype=torch.float64)
    qt = random_quaternions(200, g, dtype=torch.float64)
    mates = quat_multiply(qt, group[torch.randint(0, group.shape[0], (200,), generator=g)])
    qe, _ = _turned(mates, g, mirrored)
    qe = _perturb(qe, 0.02, g)
    res = physical_error(qt, qe, symmetry=symmetry)
    assert res.hand == ("mirror" if mirrored else "same") and res.symmetry == symmetry
    assert res.error < 0.02 and res.error_other_hand > res.error + 0.1
    torch.testing.assert_close(res.errors, aligned_errors(qt, qe, res.transform, symmetry))
    assert physical_error(qt, qe).error > res.error + 0.1  # the symmetry mates look like errors without the group


def test_physical_error_checks_its_input():
    qt, qe, _ = _planted(20, 0.0, seed=1)
    with pytest.raises(ValueError, match="same number"):
        physical_error(qt, qe[:19])
    with pytest.raises(ValueError, match="unknown symmetry"):
        physical_error(qt, qe, symmetry="X5")


def test_physical_error_names_the_map_the_estimates_describe():
    # images of the phantom at the true orientations, reconstructed at estimates of its mirror image
    # turned by c: that map is mirror(rotate_map(truth, B)) with B = physical_error's rotation
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector
    from cryoorient.maps.reconstruct import reconstruct
    from cryoorient.maps.transforms import mirror, rotate_map

    truth = torch.from_numpy(default_density(box_size=28, voxel_size=4.0, resolution=10.0))
    g = torch.Generator().manual_seed(6)
    qt = random_quaternions(600, g, dtype=torch.float64)
    qe, _ = _turned(qt, g, mirrored=True)
    res = physical_error(qt, qe)
    assert res.hand == "mirror" and res.error < 1e-7
    recon = reconstruct(FourierProjector(truth, interpolation="linear").images(qt.float()), qe.float(), progress=False)
    turned = rotate_map(truth, res.rotation.float())

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    assert corr(recon, mirror(turned)) > 0.95 > corr(recon, turned) + 0.1
