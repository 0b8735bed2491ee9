import math

import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref

DISTANCES = ["snn", "signless"]


def _features(P, nf, dtype=torch.float32, seed=0, device="cpu"):
    """Features whose first 4 columns follow random orientations (so d_p correlates with d_q), plus noise."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(P, 4, generator=g, dtype=torch.float64)
    f = torch.cat([3 * q, 0.3 * torch.randn(P, nf - 4, generator=g, dtype=torch.float64)], 1)
    return f.to(dtype).to(device), torch.randn(P, 4, generator=g, dtype=torch.float64)


def _loss_and_grads(fn, f, q, **kw):
    f = f.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    loss = fn(f, q, **kw)
    gf, gq = torch.autograd.grad(loss, (f, q))
    return loss.detach(), gq, gf


def _assert_rel(a, b, rtol):
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("weight", [None, ("cutoff", 1.3)])
@pytest.mark.parametrize("rows", [None, (70, 230)])
def test_loss_matches_reference(device, distance, weight, rows):
    f, q = _features(300, 40, device=device)
    q = q.float().to(device)
    kw = dict(distance=distance, weight=weight, rows=rows)
    loss, gq, gf = _loss_and_grads(ops.allpairs_loss, f, q, **kw)
    loss_r, gq_r, gf_r = _loss_and_grads(ref.allpairs_loss, f, q, **kw)
    assert loss_r > 0
    _assert_rel(loss, loss_r, 1e-4)
    _assert_rel(gq, gq_r, 1e-4)
    _assert_rel(gf, gf_r, 1e-4)


def test_loss_matches_reference_few_thousand(device):
    f, q = _features(3000, 64, seed=1, device=device)
    q = q.float().to(device)
    loss, gq, _ = _loss_and_grads(ops.allpairs_loss, f, q, distance="snn")
    loss_r, gq_r, _ = _loss_and_grads(ref.allpairs_loss, f, q, distance="snn")
    _assert_rel(loss, loss_r, 1e-4)
    _assert_rel(gq, gq_r, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features(device, dtype):
    f, q = _features(260, 48, dtype=dtype, seed=2, device=device)
    q = q.float().to(device)
    loss, gq, gf = _loss_and_grads(ops.allpairs_loss, f, q, distance="signless")
    loss_r, gq_r, gf_r = _loss_and_grads(ref.allpairs_loss, f, q, distance="signless")
    assert gf.dtype == dtype
    _assert_rel(loss, loss_r, 1e-4)
    _assert_rel(gq, gq_r, 1e-4)
    _assert_rel(gf, gf_r, 2e-2)  # the feature gradient is rounded to the 16-bit dtype


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradcheck_float64_cpu(distance):
    f, q = _features(20, 7, dtype=torch.float64, seed=3)
    f.requires_grad_(True)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, q: ops.allpairs_loss(f, q, distance), (f, q))
    assert torch.autograd.gradcheck(lambda f, q: ops.allpairs_loss(f, q, distance, rows=(5, 12)), (f, q))


def test_row_blocks_add_up(device):
    f, q = _features(400, 32, seed=4, device=device)
    q = q.float().to(device).requires_grad_(True)
    total = ops.allpairs_loss(f, q)
    (g_total,) = torch.autograd.grad(total, q)
    blocks = [ops.allpairs_loss(f, q, rows=r) for r in [(0, 129), (129, 250), (250, 400)]]
    (g_blocks,) = torch.autograd.grad(sum(blocks), q)
    torch.testing.assert_close(sum(blocks), total, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_blocks, g_total, rtol=1e-4, atol=1e-3)
    assert ops.allpairs_loss(f, q, rows=(200, 200)).item() == 0


def test_signless_quaternion_features_give_exact_targets(device):
    g = torch.Generator().manual_seed(5)
    q_true = torch.randn(200, 4, generator=g)
    f = torch.nn.functional.pad(q_true, (0, 12)).to(device)
    q_true = q_true.to(device)
    n_pairs = 200 * 199 / 2
    assert ops.allpairs_loss(f, q_true, "signless").item() / n_pairs < 1e-8
    assert ops.allpairs_loss(f, -2.5 * q_true, "signless").item() / n_pairs < 1e-8  # sign and scale free
    assert ops.allpairs_loss(f, torch.roll(q_true, 1, 0), "signless").item() / n_pairs > 0.1


def test_cutoff_keeps_only_short_distances():
    f, q = _features(150, 16, seed=6)
    q = q.float()
    assert ops.allpairs_loss(f, q, weight=("cutoff", 0.0)).item() == 0
    full = ops.allpairs_loss(f, q, "signless")
    assert ops.allpairs_loss(f, q, "signless", ("cutoff", math.pi)).item() == pytest.approx(full.item(), rel=1e-6)
    assert 0 < ops.allpairs_loss(f, q, "signless", ("cutoff", 1.0)).item() < full.item()


def test_torch_compile():
    f, q = _features(150, 16, seed=7)
    q = q.float()
    fn = torch.compile(lambda f, q: ops.allpairs_loss(f, q, "snn", validate=False), fullgraph=True)
    x = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(f, x), x)
    _, g_ref, _ = _loss_and_grads(ref.allpairs_loss, f, q)
    _assert_rel(g, g_ref, 1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("nf", [100, 150])
def test_cuda_matches_cpu(dtype, distance, nf, tensor_core_engine):
    # n_f not a multiple of 32: padded on CUDA, to 128 and to 160 (half of the tensor-core
    # kernel's last 64-wide k-slice is then past the row)
    f, q = _features(1000, nf, dtype=dtype, seed=8)
    q = q.float()
    kw = dict(distance=distance, weight=("cutoff", 2.0), rows=(130, 900))
    loss, gq, gf = _loss_and_grads(ops.allpairs_loss, f, q, **kw)
    loss_c, gq_c, gf_c = _loss_and_grads(ops.allpairs_loss, f.cuda(), q.cuda(), **kw)
    _assert_rel(loss_c.cpu(), loss, 1e-4)
    _assert_rel(gq_c.cpu(), gq, 1e-4)
    _assert_rel(gf_c.cpu(), gf, 1e-4 if dtype == torch.float32 else 2e-2)


@pytest.mark.cuda
def test_cuda_large_matches_reference():
    f, q = _features(5000, 256, seed=9, device="cuda")
    q = q.float().cuda()
    for dtype in (torch.float32, torch.bfloat16):
        loss, gq, _ = _loss_and_grads(ops.allpairs_loss, f.to(dtype), q)
        loss_r, gq_r, _ = _loss_and_grads(ref.allpairs_loss, f.to(dtype), q)
        _assert_rel(loss, loss_r, 1e-4)
        _assert_rel(gq, gq_r, 1e-4)


def test_bad_inputs():
    f, q = _features(30, 8)
    q = q.float()
    with pytest.raises(ValueError, match="same number of rows"):
        ops.allpairs_loss(f, q[:20])
    with pytest.raises(ValueError, match="n_f = 0"):
        ops.allpairs_loss(f[:, :0], q)
    bad = f.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ops.allpairs_loss(bad, q)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ops.allpairs_distance_cache(bad)
    bad = f.clone()
    bad[5] = 0
    with pytest.raises(ValueError, match="all-zero row"):
        ops.allpairs_loss(bad, q)
    with pytest.raises(ValueError, match="distance must be one of"):
        ops.allpairs_loss(f, q, distance="cosine")
    with pytest.raises(ValueError, match="weight must be None"):
        ops.allpairs_loss(f, q, weight=lambda d: d)
    with pytest.raises(ValueError, match="non-negative"):
        ops.allpairs_loss(f, q, weight=("cutoff", -1.0))
    with pytest.raises(IndexError, match="rows"):
        ops.allpairs_loss(f, q, rows=(10, 31))
    with pytest.raises(TypeError, match="rows must be"):
        ops.allpairs_loss(f, q, rows=5)
    with pytest.raises(TypeError, match="dtype"):
        ops.allpairs_loss(f.int(), q)
    with pytest.raises(ValueError, match="shape"):
        ops.allpairs_loss(f[0], q)
    with pytest.raises(ValueError, match="zero quaternions"):
        ops.allpairs_loss(f, torch.zeros_like(q))
    with pytest.raises(ValueError, match="at least 2"):
        ops.allpairs_loss(f[:1], q[:1])
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            ops.allpairs_loss(f.cuda(), q)
        with pytest.raises(TypeError, match="CPU only"):
            ops.allpairs_loss(f.double().cuda(), q.cuda())


@pytest.mark.cuda
def test_cuda_tf32_opt_in():
    f, q = _features(800, 64, seed=10, device="cuda")
    q = q.float().cuda()
    exact = ops.allpairs_loss(f, q)
    allow = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        fast = ops.allpairs_loss(f, q)
        knn = ops.feature_knn(f, 8)[1]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    assert fast.item() != exact.item()  # a different (TF32) product ran
    _assert_rel(fast, exact, 1e-2)
    assert (knn == ops.feature_knn(f, 8)[1]).float().mean() > 0.95


@pytest.mark.cuda
def test_tensor_core_engine_choice(monkeypatch):
    from cryoorient import _ext

    monkeypatch.delenv("CRYOORIENT_NO_WGMMA", raising=False)
    hopper = torch.cuda.get_device_capability(0) == (9, 0) and "90a" in _ext._C.cuda_architectures()
    assert _ext._C.allpairs_tensor_core_engine(0) == ("wgmma" if hopper else "mma.sync")
    monkeypatch.setenv("CRYOORIENT_NO_WGMMA", "1")
    assert _ext._C.allpairs_tensor_core_engine(0) == "mma.sync"
