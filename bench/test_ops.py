"""Benchmarks of every op in ``cryoorient.ops`` against its plain-PyTorch reference.

One group per op and device. "cryoorient" calls the op through its Python wrapper with
``validate=False`` (no device synchronisation of its own); "fused" is the op's value-and-gradient
entry point, "autograd" the op followed by ``torch.autograd.grad``; "eager" and "compile" run
the reference of ``cryoorient.ops._torch_impl`` the same way (the loss ops: value and ∂L/∂q).
Work per call, for the rates in ``extra_info``: pairs (index pairs, pair × candidate
evaluations, all pairs i < j), bytes the op must move at least ("hbm") and tensor-core or FP32
FLOP of the products ("bf16", "fp32"), the same for every implementation of a group.
"""

from __future__ import annotations

import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref

SIZES = {
    "cpu": dict(P=1000, M=20_000, K=16, P_all=512, nf=32, P_cache=256, nf_cache=32, k=8, n_sampled=20_000,
                nf_sampled=32, features=torch.float32, angle_sums=(81, 1100, 88)),
    "cuda": dict(P=100_000, M=10_000_000, K=128, P_all=16_384, nf=512, P_cache=8192, nf_cache=32, k=32,
                 n_sampled=4_000_000, nf_sampled=128, features=torch.bfloat16, angle_sums=(1000, 2700, 152)),
}
ALIGN_FLOP = 130  # per (pair, candidate) in the align_loss kernel's inner loop (FMA = 2)
SEED = 1


def _problem(device: torch.device, P: int, M: int = 0):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(P, 4, generator=g).to(device)
    i, j = (torch.randint(0, P, (M,), generator=g).to(device) for _ in range(2))
    return q, i, j, (torch.rand(M, generator=g) * torch.pi).to(device)


def _features(device: torch.device, P: int, nf: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    return torch.randn(P, nf, generator=g).to(device=device, dtype=dtype), torch.randn(P, 4, generator=g).to(device)


def _grad_q(loss_fn, q: torch.Tensor):
    """A step: ∂loss_fn(q)/∂q by autograd."""
    x = q.detach().requires_grad_(True)
    return lambda: torch.autograd.grad(loss_fn(x), x)[0]


def _flop_kind(dtype: torch.dtype) -> str:
    return "bf16" if dtype in (torch.bfloat16, torch.float16) else "fp32"


def _pick(bench, impl: str, op, reference):
    """The implementation ``impl`` of a group: the op ("cryoorient" or "autograd"), the reference
    eager, or the reference under torch.compile."""
    if impl == "eager":
        return reference
    return bench.compile(reference) if impl == "compile" else op


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_qdist(bench, device, impl):
    s = SIZES[device.type]
    P, M = s["P"], s["M"]
    q, i, j, _ = _problem(device, P, M)
    qdist = _pick(bench, impl, lambda *a: ops.qdist(*a, validate=False), ref.qdist)
    bench("qdist", lambda: qdist(q, i, j), sizes=dict(P=P, M=M), rate=("pairs", M),
          work={"hbm": M * (2 * 8 + 4) + 16 * P})


@pytest.mark.parametrize("impl", ["fused", "autograd", "eager", "compile"])
def test_pair_loss(bench, device, impl):
    s = SIZES[device.type]
    P, M = s["P"], s["M"]
    q, i, j, t = _problem(device, P, M)
    if impl == "fused":
        fn = lambda: ops.pair_loss_and_grad(q, i, j, t, validate=False)[1]  # noqa: E731
    else:
        loss = _pick(bench, impl, lambda *a: ops.pair_loss(*a, validate=False), ref.pair_loss)
        fn = _grad_q(lambda x: loss(x, i, j, t), q)
    bench("pair_loss", fn, sizes=dict(P=P, M=M), rate=("pairs", M), work={"hbm": M * (2 * 8 + 4) + 2 * 16 * P})


@pytest.mark.parametrize("impl", ["fused", "autograd", "eager", "compile"])
def test_align_loss(bench, device, impl):
    s = SIZES[device.type]
    P, K = s["P"], s["K"]
    g = torch.Generator().manual_seed(0)
    q_true, q_est = (torch.randn(P, 4, generator=g).to(device) for _ in range(2))
    angles = torch.randn(K, 6, generator=g).to(device)
    reflect = (torch.rand(K, generator=g) < 0.5).to(device)
    if impl == "fused":
        fn = lambda: ops.align_loss_and_grad(angles, reflect, q_true, q_est, validate=False)[1]  # noqa: E731
    else:
        loss = _pick(bench, impl, lambda *a: ops.align_loss(*a, validate=False), ref.align_loss)
        fn = _grad_q(lambda a: loss(a, reflect, q_true, q_est).sum(), angles)
    bench("align_loss", fn, sizes=dict(P=P, K=K), rate=("pairs", P * K),
          work={"hbm": 2 * 16 * P, "fp32": ALIGN_FLOP * P * K})


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_allpairs_loss(bench, device, impl):
    s = SIZES[device.type]
    P, nf, dtype = s["P_all"], s["nf"], s["features"]
    f, q = _features(device, P, nf, dtype)
    if impl == "cryoorient":
        fn = _grad_q(lambda x: ops.allpairs_loss(f, x, "snn", validate=False), q)
    else:  # the reference's row chunks, each compiled (shapes vary: dynamic)
        chunk = bench.compile(ref.allpairs_chunk_loss, dynamic=True) if impl == "compile" else ref.allpairs_chunk_loss
        fn = _grad_q(lambda x: ref.allpairs_loss(f, x, "snn", chunk_loss=chunk), q)
    pairs = P * (P - 1) // 2
    bench("allpairs_loss", fn, sizes=dict(P=P, nf=nf, features=str(dtype)), rate=("pairs", pairs),
          work={_flop_kind(dtype): 2 * nf * pairs})


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_allpairs_distance_cache(bench, device, impl):
    s = SIZES[device.type]
    P, nf, dtype = s["P_cache"], s["nf_cache"], s["features"]
    f, _ = _features(device, P, nf, dtype)
    build = _pick(bench, impl, lambda *a: ops.allpairs_distance_cache(*a, validate=False), ref.allpairs_distance_cache)
    pairs = P * (P - 1) // 2
    codes = bench("allpairs_distance_cache", lambda: build(f, "snn").codes, sizes=dict(P=P, nf=nf, features=str(dtype)),
                  rate=("pairs", pairs), work={_flop_kind(dtype): 2 * nf * pairs})
    assert codes.dtype == torch.uint8 and int(codes.count_nonzero()) > pairs // 2


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_allpairs_loss_cached(bench, device, impl):
    s = SIZES[device.type]
    P, nf, dtype = s["P_cache"], s["nf_cache"], s["features"]
    f, q = _features(device, P, nf, dtype)
    cache = ops.allpairs_distance_cache(f, "snn")
    loss = _pick(bench, impl, lambda *a: ops.allpairs_loss_cached(*a, validate=False), ref.allpairs_loss_cached)
    pairs = P * (P - 1) // 2
    bench("allpairs_loss_cached", _grad_q(lambda x: loss(cache, x), q), sizes=dict(P=P, nf=nf),
          rate=("pairs", pairs), work={"hbm": cache.codes.numel()})


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_feature_knn(bench, device, impl):
    s = SIZES[device.type]
    P, nf, k, dtype = s["P_all"], s["nf"], s["k"], s["features"]
    f, _ = _features(device, P, nf, dtype)
    knn = _pick(bench, impl, lambda *a: ops.feature_knn(*a, validate=False), ref.feature_knn)
    _, index = bench("feature_knn", lambda: knn(f, k), sizes=dict(P=P, nf=nf, k=k, features=str(dtype)),
                     rate=("pairs", P * (P - 1)), work={_flop_kind(dtype): 2 * nf * P * P})
    assert index.shape == (P, k)


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_angle_sums(bench, device, impl):
    """The exploration's draws at their band (R = particles × 25 shift offsets, J directions, L angles)."""
    R, J, L = SIZES[device.type]["angle_sums"]
    g = torch.Generator().manual_seed(0)
    den = torch.rand(R, J, generator=g).add_(0.5).to(device)
    num = (torch.rand(R, J, L, generator=g) * 1.6 - 0.6).to(device) * den[..., None]
    scale = (torch.rand(R, generator=g) * 400 + 10).to(device)
    bias = -scale - 1
    sums = _pick(bench, impl, ops.angle_sums, ref.angle_sums)
    out = bench("angle_sums", lambda: sums(num, den, scale, bias, 60.0), sizes=dict(R=R, J=J, L=L),
                rate=("candidates", L * R * J), work={"hbm": 4 * (L * R * J + 2 * R * J + 2 * R)})
    assert out.shape == (R, J)


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_sampled_pairs(bench, device, impl):
    s = SIZES[device.type]
    P, n = s["P"], s["n_sampled"]
    pairs = _pick(bench, impl, ops.sampled_pairs, ref.sampled_pairs)
    i, j = bench("sampled_pairs", lambda: pairs(P, n, SEED, device=device), sizes=dict(P=P, n_pairs=n),
                 rate=("pairs", n), work={"hbm": 16 * n})
    assert i.shape == (n,) and bool((i != j).all())


@pytest.mark.parametrize("impl", ["cryoorient", "eager", "compile"])
def test_sampled_feature_pair_loss(bench, device, impl):
    s = SIZES[device.type]
    P, nf, n, dtype = s["P"], s["nf_sampled"], s["n_sampled"], s["features"]
    f, q = _features(device, P, nf, dtype)
    loss = _pick(bench, impl, lambda *a: ops.sampled_feature_pair_loss(*a, validate=False),
                 ref.sampled_feature_pair_loss)
    bench("sampled_feature_pair_loss", _grad_q(lambda x: loss(f, x, n, SEED), q),
          sizes=dict(P=P, nf=nf, n_pairs=n, features=str(dtype)), rate=("pairs", n))
