"""CuPy arrays in and out of every op (cryoorient.ops._cupy): the same values as the torch path,
CuPy arrays back on the same memory, CuPy's current stream, the same errors. Needs CuPy and a GPU."""

import sys

import pytest
import torch

from cryoorient import ops

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'cryoorient[cupy-cuda13]')")
pytestmark = pytest.mark.cuda


def _cp(t: torch.Tensor):
    """An independent CuPy copy of a CUDA tensor."""
    return cupy.asarray(t.cpu().numpy())


def _results(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _same_as_torch(fn, *tensors, **kwargs):
    """fn on CuPy copies of ``tensors`` returns CuPy arrays equal to fn on the tensors: bit for bit
    where the torch path is bitwise reproducible (no atomics), to float rounding otherwise."""
    expected, again = _results(fn(*tensors, **kwargs)), _results(fn(*tensors, **kwargs))
    got = _results(fn(*(_cp(t) if isinstance(t, torch.Tensor) else t for t in tensors), **kwargs))
    assert len(got) == len(expected)
    for g, e, a in zip(got, expected, again):
        assert isinstance(g, cupy.ndarray), type(g)
        g = torch.from_dlpack(g)
        assert g.dtype == e.dtype and g.shape == e.shape and g.is_cuda
        if torch.equal(e, a):
            assert torch.equal(g, e)
        else:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def _quats(P: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(P, 4, generator=torch.Generator().manual_seed(seed)).cuda()


def _pairs(P: int, M: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    i, j = torch.randint(0, P, (M,), generator=g).cuda(), torch.randint(0, P, (M,), generator=g).cuda()
    return i, j, (torch.rand(M, generator=g) * torch.pi).cuda(), torch.rand(M, generator=g).cuda()


def _features(P: int, nf: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(P, nf, generator=torch.Generator().manual_seed(2)).to("cuda", dtype)


def test_qdist():
    i, j, _, _ = _pairs(500, 4000)
    _same_as_torch(ops.qdist, _quats(500), i, j)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pair_loss(reduction):
    i, j, t, w = _pairs(500, 4000)
    _same_as_torch(ops.pair_loss, _quats(500), i, j, t, w, reduction)


def test_pair_loss_and_grad():
    i, j, t, w = _pairs(500, 4000)
    _same_as_torch(ops.pair_loss_and_grad, _quats(500), i, j, t, w, "sum")


def _alignment(K: int = 16, P: int = 3000):
    g = torch.Generator().manual_seed(3)
    angles = torch.randn(K, 6, generator=g).cuda()
    return angles, (torch.rand(K, generator=g) < 0.5).cuda(), _quats(P, 4), _quats(P, 5)


def test_align_loss():
    _same_as_torch(ops.align_loss, *_alignment())


def test_align_loss_and_grad():
    _same_as_torch(ops.align_loss_and_grad, *_alignment())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_allpairs_loss(dtype):
    _same_as_torch(ops.allpairs_loss, _features(600, 40, dtype), _quats(600), "snn", ("cutoff", 1.5))


def test_allpairs_distance_cache_and_cached_loss():
    f = _features(600, 40)
    cache = ops.allpairs_distance_cache(f, "signless")
    from_cupy = ops.allpairs_distance_cache(_cp(f), "signless")
    assert from_cupy.rows == cache.rows and from_cupy.distance == cache.distance
    assert torch.equal(from_cupy.codes, cache.codes)
    _same_as_torch(lambda q: ops.allpairs_loss_cached(cache, q), _quats(600))


def test_feature_knn():
    _same_as_torch(ops.feature_knn, _features(700, 24), 16, "signless", (100, 400))


def test_sampled_pairs():
    expected = ops.sampled_pairs(1000, 5000, 7, 2, device="cuda")
    got = ops.sampled_pairs(1000, 5000, 7, 2, device=cupy.cuda.Device(0))
    for g, e in zip(got, expected):
        assert isinstance(g, cupy.ndarray) and torch.equal(torch.from_dlpack(g), e)


def test_sampled_feature_pair_loss():
    _same_as_torch(ops.sampled_feature_pair_loss, _features(800, 32), _quats(800), 20_000, 3, 1, "snn")


def test_results_are_views_of_the_op_output():
    """pair_loss_and_grad returns two views of one buffer (gradient, then the loss): zero-copy out."""
    i, j, t, _ = _pairs(100, 1000)
    loss, grad = ops.pair_loss_and_grad(_cp(_quats(100)), _cp(i), _cp(j), _cp(t))
    assert grad.shape == (100, 4) and loss.shape == ()
    assert loss.data.ptr == grad.data.ptr + grad.nbytes


@pytest.mark.parametrize("stream", ["null", "non_blocking"])
def test_runs_on_cupys_current_stream(monkeypatch, stream):
    module = sys.modules["cryoorient.ops.qdist"]
    seen = []

    def spy(t):
        launch = real(t)
        seen.append(launch[1])
        return launch

    real = module.launch_args
    monkeypatch.setattr(module, "launch_args", spy)
    i, j, _, _ = _pairs(100, 1000)
    q, i, j = _cp(_quats(100)), _cp(i), _cp(j)
    s = cupy.cuda.Stream.null if stream == "null" else cupy.cuda.Stream(non_blocking=True)
    with s:
        d = ops.qdist(q, i, j)
        s.synchronize()
    assert seen == [s.ptr]
    torch.testing.assert_close(torch.from_dlpack(d), ops.qdist(*(torch.from_dlpack(x) for x in (q, i, j))))


def test_same_errors_as_torch():
    i, j, _, _ = _pairs(100, 10)
    q = _quats(100)
    with pytest.raises(TypeError, match="q must have dtype float32, float64; got int16"):
        ops.qdist(_cp(q).astype(cupy.int16), _cp(i), _cp(j))
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        ops.qdist(_cp(q), i.cpu(), j.cpu())
    with pytest.raises(ValueError, match=r"q must have shape N×4"):
        ops.pair_loss_and_grad(_cp(q[:, :3]), _cp(i), _cp(j), _cp(torch.ones(10, device="cuda")))
