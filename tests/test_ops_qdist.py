import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref


def _problem(P, M, dtype, device, seed=0, itype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(P, 4, generator=g, dtype=torch.float64).to(dtype)
    i = torch.randint(0, P, (M,), generator=g).to(itype)
    j = torch.randint(0, P, (M,), generator=g).to(itype)
    i[: M // 10] = j[: M // 10]  # some i == j pairs (d = 0)
    return q.to(device), i.to(device), j.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("itype", [torch.int32, torch.int64])
def test_matches_reference(device, dtype, itype):
    q, i, j = _problem(300, 5000, dtype, device, itype=itype)
    q.requires_grad_(True)
    w = torch.rand(i.shape[0], dtype=dtype, device=device)
    d = ops.qdist(q, i, j)
    d_ref = ref.qdist(q, i, j)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d, d_ref, **tol)
    (g,) = torch.autograd.grad((d * w).sum(), q)
    (g_ref,) = torch.autograd.grad((d_ref * w).sum(), q)
    torch.testing.assert_close(g, g_ref, **tol)


def test_gradcheck_float64_cpu():
    q, i, j = _problem(20, 80, torch.float64, "cpu")
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.qdist(x, i, j), (q,))


def test_values_are_geodesic_distances():
    # rotations about z by a and b: d_q = |a - b| (for |a - b| <= π)
    a = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    q = torch.stack([torch.cos(a / 2), 0 * a, 0 * a, torch.sin(a / 2)], -1)
    d = ops.qdist(q, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]))
    torch.testing.assert_close(d, torch.tensor([0.7, 2.2, 1.5], dtype=torch.float64))


def test_sign_flip_and_scale_invariance():
    q, i, j = _problem(50, 400, torch.float64, "cpu")
    scaled = q * torch.where(torch.rand(50, 1) < 0.5, -3.0, 0.5).double()
    torch.testing.assert_close(ops.qdist(q, i, j), ops.qdist(scaled, i, j))


def test_finite_gradient_at_zero_and_pi():
    q = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64, requires_grad=True)
    d = ops.qdist(q, torch.tensor([0, 0]), torch.tensor([1, 2]))
    torch.testing.assert_close(d, torch.tensor([0.0, torch.pi], dtype=torch.float64))
    (g,) = torch.autograd.grad(d.sum(), q)
    assert torch.isfinite(g).all()


def test_torch_compile():
    q, i, j = _problem(40, 300, torch.float32, "cpu")
    f = torch.compile(lambda x: ops.qdist(x, i, j).square().sum(), fullgraph=True)
    x = q.clone().requires_grad_(True)
    y = f(x)
    (g,) = torch.autograd.grad(y, x)
    x2 = q.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(ref.qdist(x2, i, j).square().sum(), x2)
    torch.testing.assert_close(y, ref.qdist(q, i, j).square().sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    q, i, j = _problem(1000, 100_000, torch.float32, "cpu", seed=3)
    d_cpu = ops.qdist(q, i, j)
    d_gpu = ops.qdist(q.cuda(), i.cuda(), j.cuda())
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    q, i, j = _problem(10, 20, torch.float32, "cpu")
    with pytest.raises(IndexError, match="out of range"):
        ops.qdist(q, i, torch.full_like(j, 10))
    with pytest.raises(IndexError, match="out of range"):
        ops.qdist(q, -torch.ones_like(i), j)
    with pytest.raises(ValueError, match="shape"):
        ops.qdist(q[:, :3], i, j)
    with pytest.raises(ValueError, match="same length"):
        ops.qdist(q, i, j[:5])
    with pytest.raises(TypeError, match="dtype"):
        ops.qdist(q.half(), i, j)
    with pytest.raises(TypeError, match="dtype"):
        ops.qdist(q, i.float(), j)
    with pytest.raises(TypeError, match="Tensor"):
        ops.qdist(q.numpy(), i, j)
    bad = q.clone()
    bad[3] = 0
    with pytest.raises(ValueError, match="zero quaternions"):
        ops.qdist(bad, i, j)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ops.qdist(bad, i, j)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            ops.qdist(q.cuda(), i, j)

