"""Projector P_θ and shift S_t: orientation convention, closed forms, cross-checks."""

import math

import pytest
import torch

from cryoorient.geometry import euler_to_matrix, matrix_to_quat, quat_to_matrix, random_quaternions
from cryoorient.imaging.project import FourierProjector, project, project_real
from cryoorient.imaging.shift import random_shifts, shift_images

N = 64


def blob_map(blobs, n=N, dtype=torch.float64, device="cpu"):
    """Sum of isotropic Gaussians a·exp(-|r - μ|² / 2s²); r in voxels from the centre n // 2."""
    c = torch.arange(n, dtype=dtype, device=device) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return sum(a * torch.exp(-((x - m[0]) ** 2 + (y - m[1]) ** 2 + (z - m[2]) ** 2) / (2 * s * s)) for m, s, a in blobs)


def blob_images(blobs, A, n=N, shifts=None):
    """Closed-form projections: image(x, y) = Σ a √(2π) s exp(-|(x, y) - (A μ)_xy - t|² / 2s²)."""
    A = A.to(torch.float64).cpu()
    t = torch.zeros(A.shape[0], 2, dtype=torch.float64) if shifts is None else shifts.to(torch.float64)
    c = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    out = torch.zeros(A.shape[0], n, n, dtype=torch.float64)
    for m, s, a in blobs:
        p = A @ torch.tensor(m, dtype=torch.float64)
        p = p[:, :2] + t
        out += a * math.sqrt(2 * math.pi) * s * torch.exp(
            -((x - p[:, 0, None, None]) ** 2 + (y - p[:, 1, None, None]) ** 2) / (2 * s * s)
        )
    return out


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


# Asymmetric test object: blobs on +x, +y, +z of different sizes, plus one off-axis.
AXIS_BLOBS = {"x": ((10.0, 0.0, 0.0), 3.0, 1.0), "y": ((0.0, 14.0, 0.0), 3.5, 0.8), "z": ((0.0, 0.0, 8.0), 4.0, 0.6)}
BLOBS = list(AXIS_BLOBS.values()) + [((-5.0, -6.0, 4.0), 3.5, 0.9)]


def centroid(image):
    n = image.shape[-1]
    c = torch.arange(n, dtype=torch.float64) - n // 2
    w = image.double().cpu()
    return (float((w.sum(0) * c).sum() / w.sum()), float((w.sum(1) * c).sum() / w.sum()))


# Where each axis blob lands (image x, y) for RELION angles (rot, tilt, psi), worked out by
# hand from A = Rz(psi) Ry(tilt) Rz(rot) with RELION's matrices and image = ∫ V(Aᵀ(x, y, z)) dz.
EXPECTED = {
    (0, 0, 0): {"x": (10, 0), "y": (0, 14), "z": (0, 0)},
    (0, 90, 0): {"x": (0, 0), "y": (0, 14), "z": (-8, 0)},
    (90, 0, 0): {"x": (0, -10), "y": (14, 0), "z": (0, 0)},
    (0, 0, 90): {"x": (0, -10), "y": (14, 0), "z": (0, 0)},
    (90, 90, 0): {"x": (0, -10), "y": (0, 0), "z": (-8, 0)},
    (0, 180, 0): {"x": (-10, 0), "y": (0, 14), "z": (0, 0)},
}


@pytest.fixture(scope="module")
def axis_projectors():
    """One projector per axis blob and method, built once (A -> images)."""
    maps = {name: blob_map([blob]) for name, blob in AXIS_BLOBS.items()}
    return {
        "real": {name: (lambda A, V=V: project_real(V, A)) for name, V in maps.items()},
        "fourier": {name: FourierProjector(V) for name, V in maps.items()},
    }


@pytest.mark.parametrize("method", ["real", "fourier"])
@pytest.mark.parametrize("angles", list(EXPECTED))
def test_orientation_convention(axis_projectors, method, angles):
    A = euler_to_matrix(*(torch.tensor([float(a)], dtype=torch.float64) for a in angles))
    for name, projector in axis_projectors[method].items():
        assert centroid(projector(A)[0]) == pytest.approx(EXPECTED[angles][name], abs=0.02), (angles, name)
    # quaternion input means A = quat_to_matrix(q)
    q = matrix_to_quat(A)
    for name, projector in axis_projectors[method].items():
        assert centroid(projector(q)[0]) == pytest.approx(EXPECTED[angles][name], abs=0.02), (angles, name)


def test_identity_is_sum_over_z():
    V = blob_map(BLOBS)
    A = torch.eye(3, dtype=torch.float64)[None]
    torch.testing.assert_close(project_real(V, A)[0], V.sum(0), rtol=0, atol=1e-10)
    assert rel_err(project(V, A)[0][None], V.sum(0)[None]) < 1e-3
    # image[y, x]: the +x blob is right of the centre on row N//2, the +y blob below it on column N//2
    img = project_real(V, A)[0]
    assert img[N // 2, N // 2 + 10] > img[N // 2, N // 2 - 10] + 1
    assert img[N // 2 + 14, N // 2] > img[N // 2 - 14, N // 2] + 1


@pytest.mark.parametrize("method", ["real", "fourier"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaussian_blobs_match_closed_form(method, dtype):
    q = random_quaternions(6, generator=11, dtype=torch.float64)
    V = blob_map(BLOBS).to(dtype)
    images = project(V, q, method=method)
    assert images.dtype == dtype and images.shape == (6, N, N)
    assert rel_err(images, blob_images(BLOBS, quat_to_matrix(q))) <= 0.01


def test_quaternions_and_matrices_agree():
    q = random_quaternions(4, generator=3, dtype=torch.float64)
    V = blob_map(BLOBS, n=32)
    P = FourierProjector(V)
    torch.testing.assert_close(P(q), P(quat_to_matrix(q)))
    torch.testing.assert_close(P(q), P(-q))  # q and -q are the same rotation


def test_fourier_and_real_projectors_agree():
    q = random_quaternions(5, generator=5, dtype=torch.float64)
    V = blob_map(BLOBS)
    assert rel_err(project(V, q, method="fourier"), project(V, q, method="real")) <= 0.01


@pytest.mark.parametrize("size", [80, 48, 47])
@pytest.mark.parametrize("method", ["real", "fourier"])
def test_image_size_pads_or_crops(size, method):
    q = random_quaternions(3, generator=7, dtype=torch.float64)
    images = project(blob_map(BLOBS), q, size=size, method=method)
    assert images.shape == (3, size, size)
    assert rel_err(images, blob_images(BLOBS, quat_to_matrix(q), n=size)) <= 0.01


def test_projection_preserves_mass():
    V = blob_map(BLOBS, n=40)
    q = random_quaternions(3, generator=2, dtype=torch.float64)
    sums = FourierProjector(V, size=64)(q).sum((1, 2))
    torch.testing.assert_close(sums, V.sum().expand(3), rtol=1e-3, atol=0)


def test_linear_interpolation_option_is_worse_but_close():
    q = random_quaternions(3, generator=9, dtype=torch.float64)
    V = blob_map(BLOBS)
    ref = blob_images(BLOBS, quat_to_matrix(q))
    cubic = rel_err(FourierProjector(V)(q), ref)
    linear = rel_err(FourierProjector(V, interpolation="linear")(q), ref)
    assert cubic < linear < 0.05


def test_real_projector_chunking_is_exact():
    q = random_quaternions(3, generator=4, dtype=torch.float64)
    V = blob_map(BLOBS, n=24)
    torch.testing.assert_close(project_real(V, q, max_points=500), project_real(V, q))


def test_cuda_matches_cpu(device):
    q = random_quaternions(4, generator=8, dtype=torch.float32)
    V = blob_map(BLOBS, n=32, dtype=torch.float32)
    for method in ("real", "fourier"):
        out = project(V.to(device), q.to(device), method=method)
        assert out.device.type == device.type
        torch.testing.assert_close(out.cpu(), project(V, q, method=method), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ shifts ---
@pytest.mark.parametrize("n", [32, 33])
def test_integer_fourier_shift_is_roll(n):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(5, n, n, generator=g, dtype=torch.float64)
    shifts = torch.tensor([[1, 0], [0, 2], [-3, 5], [7, -1], [0, 0]], dtype=torch.float64)
    out = shift_images(images, shifts)
    for img, o, (tx, ty) in zip(images, out, shifts.long().tolist()):
        torch.testing.assert_close(o, torch.roll(img, (ty, tx), dims=(0, 1)), rtol=0, atol=1e-12)


def test_subpixel_shift_moves_gaussian():
    n = 48
    c = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(c, c, indexing="ij")

    def gauss(tx, ty):
        return torch.exp(-((x - tx) ** 2 + (y - ty) ** 2) / (2 * 3.0**2))

    shifts = torch.tensor([[0.3, -1.7], [2.5, 0.25]], dtype=torch.float64)
    out = shift_images(torch.stack([gauss(0, 0)] * 2), shifts)
    assert rel_err(out, torch.stack([gauss(*t) for t in shifts.tolist()])) < 1e-6


def test_projector_shift_matches_closed_form():
    q = random_quaternions(3, generator=12, dtype=torch.float64)
    t = torch.tensor([[1.5, -2.25], [0.0, 3.0], [-4.4, 0.6]], dtype=torch.float64)
    V = blob_map(BLOBS)
    shifted = FourierProjector(V)(q, shifts=t)
    assert rel_err(shifted, blob_images(BLOBS, quat_to_matrix(q), shifts=t)) <= 0.01
    torch.testing.assert_close(shifted, shift_images(FourierProjector(V)(q), t), rtol=0, atol=1e-9)


def test_random_shift_distributions():
    t = random_shifts(200_000, "triangular", 4.0, generator=1)
    assert t.shape == (200_000, 2) and t.abs().max() <= 4.0
    # triangular on [-a, a]: mean 0, variance a²/6
    assert abs(float(t.mean())) < 0.02 and float(t.var()) == pytest.approx(16 / 6, rel=0.02)
    g = random_shifts(200_000, "gaussian", 2.0, generator=1)
    assert float(g.std()) == pytest.approx(2.0, rel=0.01)
    u = random_shifts(200_000, "uniform", 3.0, generator=1)
    assert float(u.var()) == pytest.approx(9 / 3, rel=0.02)
    assert torch.equal(random_shifts(10, "none", 5.0), torch.zeros(10, 2, dtype=torch.float64))
    torch.testing.assert_close(random_shifts(10, "triangular", 1.0, 5), random_shifts(10, "triangular", 1.0, 5))


# --------------------------------------------------------------- bad input ---
def test_bad_inputs():
    V = blob_map(BLOBS, n=16)
    q = random_quaternions(2, generator=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="cubic"):
        project(V[:, :, :15], q)
    with pytest.raises(TypeError, match="float32 or float64"):
        project(V.long(), q)
    with pytest.raises(ValueError, match=r"\(B, 3, 3\) or quaternions \(B, 4\)"):
        project(V, q[:, :3])
    with pytest.raises(ValueError, match="non-zero"):
        project(V, torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="image size"):
        project(V, q, size=0)
    with pytest.raises(ValueError, match="pad"):
        FourierProjector(V, pad=0)
    with pytest.raises(ValueError, match="interpolation"):
        FourierProjector(V, interpolation="cubic-spline")
    with pytest.raises(ValueError, match="method"):
        project(V, q, method="astra")
    with pytest.raises(ValueError, match=r"shifts must be a tensor of shape \(2, 2\)"):
        FourierProjector(V)(q, shifts=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shift distribution"):
        random_shifts(3, "normal", 1.0)
    with pytest.raises(ValueError, match="shift limit"):
        random_shifts(3, "gaussian", -1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        project(V.numpy(), q)
