"""The direct eager path (kernels called through a classic autograd.Function) and the dispatched
custom ops (what torch.compile, FakeTensorMode and friends see) give the same values and gradients."""

import torch
from torch.overrides import TorchFunctionMode

from cryoorient import ops
from cryoorient.ops._direct import direct


class _Intercept(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _both_paths(fn, *inputs):
    results = []
    for mode in (None, _Intercept()):
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        if mode is None:
            assert direct(*xs)
            out = fn(*xs)
        else:
            with mode:
                assert not direct(*xs)
                out = fn(*xs)
        results.append((out.detach(), torch.autograd.grad(out.sum(), xs)))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_paths_agree():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(30, 4, generator=g, dtype=torch.float64)
    i, j = torch.randint(0, 30, (200,), generator=g), torch.randint(0, 30, (200,), generator=g)
    t, w = torch.rand(200, generator=g, dtype=torch.float64), torch.rand(200, generator=g, dtype=torch.float64)
    _both_paths(lambda q: ops.qdist(q, i, j), q)
    for reduction in ("mean", "sum", "none"):
        _both_paths(lambda q, t, w: ops.pair_loss(q, i, j, t, w, reduction), q, t, w)
    angles, reflect = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.rand(5, generator=g) < 0.5
    q2 = torch.randn(30, 4, generator=g, dtype=torch.float64)
    _both_paths(lambda a: ops.align_loss(a, reflect, q, q2), angles)
    f = torch.randn(30, 8, generator=g, dtype=torch.float64)
    _both_paths(lambda f, q: ops.allpairs_loss(f, q, "snn"), f, q)
    cache = ops.allpairs_distance_cache(f, "signless")
    _both_paths(lambda q: ops.allpairs_loss_cached(cache, q), q)
    _both_paths(lambda f, q: ops.sampled_feature_pair_loss(f, q, 500, seed=3), f, q)


def test_outputs_agree_without_gradients():
    f = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    calls = (
        lambda: ops.allpairs_distance_cache(f, "snn").codes,
        lambda: ops.feature_knn(f, 4),
        lambda: ops.sampled_pairs(40, 300, seed=5, epoch=2),
    )
    for call in calls:
        assert direct(f)
        a = call()
        with _Intercept():
            assert not direct(f)
            b = call()
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(x, y)


def test_no_grad_call_builds_no_graph():
    q = torch.randn(10, 4, requires_grad=True)
    i = torch.arange(10)
    with torch.no_grad():
        assert ops.qdist(q, i, i.flip(0)).grad_fn is None
    assert ops.qdist(q, i, i.flip(0)).grad_fn is not None
