import math

import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref

STEP = math.pi / 255


def _problem(P, nf, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(P, 4, generator=g)
    f = torch.cat([3 * q, 0.3 * torch.randn(P, nf - 4, generator=g)], 1).to(dtype)
    return f, torch.randn(P, 4, generator=g)


@pytest.mark.parametrize("distance", ["snn", "signless"])
@pytest.mark.parametrize("rows", [None, (130, 290)])
def test_cache_matches_reference(device, distance, rows):
    f, _ = _problem(300, 24)
    cache = ops.allpairs_distance_cache(f.to(device), distance, rows)
    expected = ref.allpairs_distance_cache(f, distance, rows)
    assert cache.codes.dtype == torch.uint8 and cache.codes.device.type == device.type
    assert cache.codes.numel() == expected.codes.numel()
    diff = (cache.codes.cpu().int() - expected.codes.int()).abs()
    assert diff.max() <= 1  # acos rounding may move a code across a boundary
    assert (diff > 0).float().mean() < 1e-3


def test_tile_code_offsets_are_a_permutation():
    from cryoorient.ops.allpairs import _code_offset

    r, c = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    offsets = _code_offset(r.flatten(), c.flatten())
    assert torch.equal(offsets.sort().values, torch.arange(128 * 128))
    # lane 4·(r % 8) + (c / 2) % 4 of warp c / 16 reads its 16-row block m from bytes
    # w·2048 + (m / 2)·512 + lane·16 + (m % 2)·8 onwards
    assert _code_offset(torch.tensor(37), torch.tensor(53)).item() == 3 * 2048 + 1 * 512 + (4 * 5 + 2) * 16 + 0 * 8 + 0 * 4 + 0 * 2 + 1


def test_cache_layout_and_quantisation():
    f, _ = _problem(333, 16, seed=1)
    cache = ops.allpairs_distance_cache(f, "signless")
    assert cache.codes.numel() == (3 * 3 - 3) * 128 * 128  # 6 tiles of the upper triangle
    i, j = torch.triu_indices(333, 333, 1)
    fn = torch.nn.functional.normalize(f, dim=1)
    exact = 2 * torch.acos((fn[i] * fn[j]).sum(1).abs().clamp(max=1))
    decoded = cache.decode(i, j)
    assert (decoded - exact).abs().max() <= STEP / 2 + 1e-4
    torch.testing.assert_close(cache.decode(j, i), decoded)  # unordered pairs
    # every byte outside the triangle of pairs is 0
    mask = torch.zeros_like(cache.codes, dtype=torch.bool)
    mask[cache.byte_offsets(i, j)] = True
    assert (cache.codes[~mask] == 0).all()
    assert (cache.codes[mask] > 0).float().mean() > 0.99
    with pytest.raises(IndexError, match="i != j"):
        cache.decode(torch.tensor([3]), torch.tensor([3]))


@pytest.mark.parametrize("weight", [None, ("cutoff", 1.0)])
@pytest.mark.parametrize("rows", [None, (100, 300)])
def test_cached_loss_matches_reference(device, weight, rows):
    f, q = _problem(300, 24, seed=2)
    cache = ops.allpairs_distance_cache(f.to(device), "snn", rows)
    q = q.to(device)
    x = q.clone().requires_grad_(True)
    loss = ops.allpairs_loss_cached(cache, x, weight)
    (g,) = torch.autograd.grad(loss, x)
    y = q.clone().requires_grad_(True)
    loss_r = ref.allpairs_loss_cached(cache, y, weight)
    (g_r,) = torch.autograd.grad(loss_r, y)
    assert loss_r > 0
    torch.testing.assert_close(loss, loss_r, rtol=1e-4, atol=0)
    # The CUDA kernel rounds each pair's gradient weight to float16 (relative 2^-11) before the
    # tensor-core sums; the CPU kernel sums in float64.
    assert ((g - g_r).norm() / g_r.norm()).item() < (1e-3 if device.type == "cuda" else 1e-4)


def test_cached_loss_close_to_float_loss():
    """Quantising d_p to 1 byte barely changes the loss and its gradient."""
    f, q = _problem(400, 32, seed=3)
    cache = ops.allpairs_distance_cache(f, "signless")
    x = q.clone().requires_grad_(True)
    lc = ops.allpairs_loss_cached(cache, x)
    (gc,) = torch.autograd.grad(lc, x)
    y = q.clone().requires_grad_(True)
    lf = ops.allpairs_loss(f, y, "signless")
    (gf,) = torch.autograd.grad(lf, y)
    assert abs(lc.item() - lf.item()) / lf.item() < 1e-3
    assert torch.nn.functional.cosine_similarity(gc.flatten(), gf.flatten(), dim=0) > 0.999


def test_cached_loss_float64_gradcheck():
    f, q = _problem(40, 8, seed=4)
    cache = ops.allpairs_distance_cache(f)
    q = q.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.allpairs_loss_cached(cache, x), (q,))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_cache_matches_cpu(dtype, tensor_core_engine):
    f, q = _problem(1500, 70, seed=5, dtype=dtype)
    rows = (128, 1400)
    cpu = ops.allpairs_distance_cache(f, "snn", rows)
    gpu = ops.allpairs_distance_cache(f.cuda(), "snn", rows)
    diff = (gpu.codes.cpu().int() - cpu.codes.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    x = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ops.allpairs_loss_cached(cpu, x, ("cutoff", 2.0)), x)
    y = q.cuda().requires_grad_(True)
    (g_gpu,) = torch.autograd.grad(ops.allpairs_loss_cached(gpu, y, ("cutoff", 2.0)), y)
    assert ((g_gpu.cpu() - g).norm() / g.norm()).item() < 2e-3  # codes may differ by one step


@pytest.mark.cuda
@pytest.mark.parametrize("rows", [None, (100, 700)])
@pytest.mark.parametrize("weight", [None, ("cutoff", 1.5)])
def test_cuda_cached_loss_matches_cpu_kernel(rows, weight):
    """The same codes on both devices: interior tiles, diagonal tiles, a partial last column tile
    and (rows = (100, 700)) a partial last row tile."""
    from cryoorient.ops.allpairs import DistanceCache

    f, q = _problem(1000, 8, seed=6)
    cache = ops.allpairs_distance_cache(f, "signless", rows)
    gpu = DistanceCache(cache.codes.cuda(), cache.num_projections, cache.rows, cache.distance)
    x = q.clone().double().requires_grad_(True)
    loss = ops.allpairs_loss_cached(cache, x, weight)
    (g,) = torch.autograd.grad(loss, x)
    y = q.cuda().requires_grad_(True)
    loss_gpu = ops.allpairs_loss_cached(gpu, y, weight)
    (g_gpu,) = torch.autograd.grad(loss_gpu, y)
    assert loss.item() > 0
    assert abs(loss_gpu.item() / loss.item() - 1) < 1e-5
    assert ((g_gpu.cpu().double() - g).norm() / g.norm()).item() < 1e-3  # float16 pair weights


def test_cache_bad_inputs():
    f, q = _problem(50, 8)
    cache = ops.allpairs_distance_cache(f)
    with pytest.raises(ValueError, match="cache is for P = 50"):
        ops.allpairs_loss_cached(cache, q[:40])
    with pytest.raises(TypeError, match="DistanceCache"):
        ops.allpairs_loss_cached(cache.codes, q)
    with pytest.raises(ValueError, match="zero quaternions"):
        ops.allpairs_loss_cached(cache, torch.zeros_like(q))
    with pytest.raises(IndexError, match="rows"):
        ops.allpairs_distance_cache(f, rows=(-1, 10))
    with pytest.raises(ValueError, match="uint8 tensor of"):
        ops.DistanceCache(cache.codes[:-1], 50, (0, 50), "snn")
    with pytest.raises(ValueError, match="distance"):
        ops.DistanceCache(cache.codes, 50, (0, 50), "cos")
