import math

import pytest
import torch

from cryoorient import ops
from cryoorient.geometry import matrix_to_plane_rotations, plane_rotations_to_matrix
from cryoorient.geometry import quat_distance, quat_multiply, symmetry_group
from cryoorient.ops import _torch_impl as ref


def _problem(P, K, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    qt = torch.randn(P, 4, generator=g, dtype=torch.float64) * (0.5 + torch.rand(P, 1, generator=g))
    qe = torch.randn(P, 4, generator=g, dtype=torch.float64) * (0.5 + torch.rand(P, 1, generator=g))
    angles = (torch.rand(K, 6, generator=g, dtype=torch.float64) - 0.5) * 4 * math.pi
    reflect = torch.rand(K, generator=g) < 0.5
    return tuple(t.to(dtype).to(device) for t in (angles, qt, qe)) + (reflect.to(device),)


def test_transform_is_eq6():
    # T = diag(m,1,1,1)·G01·G02·G03·G12·G13·G23, each G_ij a rotation of the (x_i, x_j) plane
    angles = torch.tensor([[0.3, -1.1, 2.0, 0.7, -0.4, 1.9]], dtype=torch.float64)
    for reflect in (False, True):
        T = torch.diag(torch.tensor([-1.0 if reflect else 1.0, 1, 1, 1], dtype=torch.float64))
        for t, (i, j) in zip(angles[0], [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]):
            G = torch.eye(4, dtype=torch.float64)
            G[i, i] = G[j, j] = torch.cos(t)
            G[j, i], G[i, j] = torch.sin(t), -torch.sin(t)
            T = T @ G
        torch.testing.assert_close(plane_rotations_to_matrix(angles, torch.tensor([reflect]))[0], T)


def test_matrix_to_plane_rotations_roundtrip():
    angles, _, _, reflect = _problem(1, 200, torch.float64, "cpu", seed=4)
    T = plane_rotations_to_matrix(angles, reflect)
    a2, r2 = matrix_to_plane_rotations(T)
    assert torch.equal(r2, reflect)
    torch.testing.assert_close(plane_rotations_to_matrix(a2, r2), T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetry", [None, "D3", "O"])
def test_matches_reference(device, dtype, symmetry):
    angles, qt, qe, reflect = _problem(700, 37, dtype, device)
    group = None if symmetry is None else symmetry_group(symmetry, dtype=dtype, device=device)
    angles.requires_grad_(True)
    w = torch.rand(angles.shape[0], dtype=dtype, device=device)
    loss = ops.align_loss(angles, reflect, qt, qe, group)
    loss_ref = ref.align_loss(angles, reflect, qt, qe, group)
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, loss_ref, **tol)
    (g,) = torch.autograd.grad((loss * w).sum(), angles)
    (g_ref,) = torch.autograd.grad((loss_ref * w).sum(), angles)
    torch.testing.assert_close(g, g_ref, **tol)


@pytest.mark.parametrize("K", [1, 5, 32, 33])
def test_candidate_counts(device, K):
    # K below, at and above one warp of candidates (the CUDA kernel's lane layout)
    angles, qt, qe, reflect = _problem(300, K, torch.float64, device, seed=K)
    angles.requires_grad_(True)
    loss = ops.align_loss(angles, reflect, qt, qe)
    torch.testing.assert_close(loss, ref.align_loss(angles, reflect, qt, qe), rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(loss.sum(), angles)
    (g_ref,) = torch.autograd.grad(ref.align_loss(angles, reflect, qt, qe).sum(), angles)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_gradcheck_float64_cpu():
    angles, qt, qe, reflect = _problem(40, 4, torch.float64, "cpu")
    angles.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: ops.align_loss(a, reflect, qt, qe), (angles,))
    group = symmetry_group("C4", dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ops.align_loss(a, reflect, qt, qe, group), (angles,))


def test_zero_at_planted_transform_any_signs():
    angles, qt, _, reflect = _problem(500, 6, torch.float64, "cpu", seed=2)
    T = plane_rotations_to_matrix(angles, reflect)
    for k in range(6):
        # q_est = T_k⁻¹ q_true with random signs and scales: candidate k aligns it exactly
        qe = (qt @ T[k]) * torch.where(torch.rand(500, 1) < 0.5, -2.0, 0.7).double()
        loss = ops.align_loss(angles, reflect, qt, qe)
        assert loss[k] < 1e-7
        assert (loss[torch.arange(6) != k] > 0.1).all()


def test_symmetry_takes_nearest_mate():
    angles, qt, qe, reflect = _problem(400, 3, torch.float64, "cpu", seed=5)
    group = symmetry_group("I", dtype=torch.float64)
    mates = quat_multiply(qt, group[torch.randint(0, 60, (400,))])
    torch.testing.assert_close(ops.align_loss(angles, reflect, mates, qe, group), ops.align_loss(angles, reflect, qt, qe, group))
    assert (ops.align_loss(angles, reflect, qt, qe, group) <= ops.align_loss(angles, reflect, qt, qe) + 1e-12).all()


def test_float32_precision_near_zero():
    # d_q ~ 1e-5 rad per pair is resolved in float32
    _, qt, _, _ = _problem(2000, 1, torch.float64, "cpu", seed=6)
    qt = qt / qt.norm(dim=-1, keepdim=True)
    tilt = torch.tensor([math.cos(0.5e-5), math.sin(0.5e-5), 0, 0], dtype=torch.float64)
    qe = quat_multiply(qt, tilt)  # d_q(qt, qe) = 1e-5 exactly
    zero = torch.zeros(1, 6)
    loss = ops.align_loss(zero, torch.tensor([False]), qt.float(), qe.float())
    assert abs(loss.item() - 1e-5) < 2e-6
    torch.testing.assert_close(quat_distance(qt, qe).mean(), torch.tensor(1e-5, dtype=torch.float64))


def test_deterministic():
    angles, qt, qe, reflect = _problem(20000, 16, torch.float32, "cpu", seed=7)
    angles.requires_grad_(True)
    runs = []
    for _ in range(2):
        loss = ops.align_loss(angles, reflect, qt, qe)
        runs.append((loss, torch.autograd.grad(loss.sum(), angles)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_torch_compile():
    angles, qt, qe, reflect = _problem(200, 8, torch.float32, "cpu")
    f = torch.compile(lambda a: ops.align_loss(a, reflect, qt, qe, validate=False).sum(), fullgraph=True)
    x = angles.clone().requires_grad_(True)
    y = f(x)
    (g,) = torch.autograd.grad(y, x)
    x2 = angles.clone().requires_grad_(True)
    y2 = ref.align_loss(x2, reflect, qt, qe).sum()
    (g2,) = torch.autograd.grad(y2, x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-4)


def test_no_double_backward():
    angles, qt, qe, reflect = _problem(50, 2, torch.float64, "cpu")
    angles.requires_grad_(True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(ops.align_loss(angles, reflect, qt, qe).sum(), angles, create_graph=True)


@pytest.mark.cuda
@pytest.mark.parametrize("symmetry", [None, "T"])
def test_cuda_matches_cpu(symmetry):
    angles, qt, qe, reflect = _problem(100_000, 70, torch.float32, "cpu", seed=3)
    group = None if symmetry is None else symmetry_group(symmetry, dtype=torch.float32)
    a_cpu = angles.clone().requires_grad_(True)
    l_cpu = ops.align_loss(a_cpu, reflect, qt, qe, group)
    (g_cpu,) = torch.autograd.grad(l_cpu.sum(), a_cpu)
    a_gpu = angles.cuda().requires_grad_(True)
    l_gpu = ops.align_loss(a_gpu, reflect.cuda(), qt.cuda(), qe.cuda(), None if group is None else group.cuda())
    (g_gpu,) = torch.autograd.grad(l_gpu.sum(), a_gpu)
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetry", [None, "D3"])
def test_loss_and_grad_matches_autograd(device, dtype, symmetry):
    angles, qt, qe, reflect = _problem(2000, 40, dtype, device, seed=5)
    group = None if symmetry is None else symmetry_group(symmetry, dtype=dtype).to(device)
    loss, grad = ops.align_loss_and_grad(angles, reflect, qt, qe, group)
    x = angles.clone().requires_grad_(True)
    loss_ref = ref.align_loss(x, reflect, qt, qe, group)
    (grad_ref,) = torch.autograd.grad(loss_ref.sum(), x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss, loss_ref.detach(), **tol)
    torch.testing.assert_close(grad, grad_ref, **tol)
    with pytest.raises(ValueError, match="same number"):
        ops.align_loss_and_grad(angles, reflect, qt, qe[:-1])


@pytest.mark.cuda
def test_cuda_unaligned_rows():
    # rows that start 4 bytes past a 16-byte boundary take the scalar loads
    angles, qt, qe, reflect = _problem(1000, 33, torch.float32, "cuda", seed=6)
    shifted = [torch.empty(4 * 1000 + 1, device="cuda")[1:].view(1000, 4).copy_(x) for x in (qt, qe)]
    assert shifted[0].data_ptr() % 16 != 0
    torch.testing.assert_close(
        ops.align_loss_and_grad(angles, reflect, *shifted), ops.align_loss_and_grad(angles, reflect, qt, qe)
    )


def test_bad_inputs():
    angles, qt, qe, reflect = _problem(10, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="same number"):
        ops.align_loss(angles, reflect, qt, qe[:9])
    with pytest.raises(ValueError, match="empty"):
        ops.align_loss(angles, reflect, qt[:0], qe[:0])
    with pytest.raises(ValueError, match="shape"):
        ops.align_loss(angles[:, :5], reflect, qt, qe)
    with pytest.raises(ValueError, match="shape"):
        ops.align_loss(angles, reflect[:2], qt, qe)
    with pytest.raises(TypeError, match="dtype"):
        ops.align_loss(angles, reflect.float(), qt, qe)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.align_loss(angles, reflect, qt.double(), qe)
    for name, arg in (("q_true", 2), ("q_est", 3)):
        for value, msg in ((0.0, "zero quaternions"), (float("nan"), "NaN")):
            args = [angles, reflect, qt.clone(), qe.clone()]
            args[arg][4] = value
            with pytest.raises(ValueError, match=f"{name} contains {msg}"):
                ops.align_loss(*args)
    bad = angles.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="angles contains NaN"):
        ops.align_loss(bad, reflect, qt, qe)
    with pytest.raises(ValueError, match="at least one rotation"):
        ops.align_loss(angles, reflect, qt, qe, qt[:0])
    with pytest.raises(ValueError, match="w.r.t. angles only"):
        ops.align_loss(angles, reflect, qt, qe.clone().requires_grad_(True))
