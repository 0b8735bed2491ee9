import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref


def _features(P, nf, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(P, nf, generator=g) + 0.5).to(dtype)


def _assert_matches_topk(f, d, idx, k, distance="snn", rows=None, atol=1e-5, min_agree=0.999):
    """idx agrees with torch.topk on the full matrix, up to swaps of near-ties (within atol in d_p)."""
    d_r, idx_r = ref.feature_knn(f, k, distance, rows)
    idx, d = idx.cpu(), d.cpu().double()
    assert d.shape == idx.shape == idx_r.shape and idx.dtype == torch.int64
    assert (idx == idx_r).float().mean() >= min_agree
    start = 0 if rows is None else rows[0]
    fn = ref.unit_features(f).double()
    c = (fn[start : start + idx.shape[0], None, :] * fn[idx]).sum(-1)
    true = 2 * torch.acos((c if distance == "snn" else c.abs()).clamp(0, 1))
    torch.testing.assert_close(true, d_r.double(), rtol=0, atol=atol)  # each rank holds a correct distance
    torch.testing.assert_close(d, d_r.double(), rtol=0, atol=atol)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()  # no repeats


@pytest.mark.parametrize("distance", ["snn", "signless"])
@pytest.mark.parametrize("rows", [None, (100, 391)])
def test_knn_matches_topk(device, distance, rows):
    f = _features(400, 24)
    d, idx = ops.feature_knn(f.to(device), 7, distance, rows)
    n = 400 if rows is None else rows[1] - rows[0]
    assert d.shape == (n, 7)
    _assert_matches_topk(f, d, idx, 7, distance, rows)
    assert (d[:, 1:] >= d[:, :-1]).all()  # sorted nearest first
    start = 0 if rows is None else rows[0]
    assert not (idx.cpu() == torch.arange(start, start + n)[:, None]).any()  # never itself


def test_knn_few_thousand():
    f = _features(2500, 32, seed=1)
    d, idx = ops.feature_knn(f, 32)
    _assert_matches_topk(f, d, idx, 32)


def test_knn_recovers_neighbours_of_quaternion_features():
    """With F = quaternions and the signless distance, neighbours under d_p are neighbours under d_q."""
    g = torch.Generator().manual_seed(2)
    q = torch.nn.functional.normalize(torch.randn(300, 4, generator=g, dtype=torch.float64), dim=1)
    d, idx = ops.feature_knn(torch.nn.functional.pad(q, (0, 4)), 5, "signless")
    dq = 2 * torch.acos((q @ q.T).abs().clamp(max=1))
    dq.fill_diagonal_(float("inf"))
    torch.testing.assert_close(d, dq.topk(5, largest=False).values)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_knn_large(dtype, tensor_core_engine):
    f = _features(5000, 96, seed=3, dtype=dtype)
    d, idx = ops.feature_knn(f.cuda(), 32, "signless")
    # Half-precision products are exact, but their float32 sums over n_f = 96 terms round
    # at ~1e-6 relative, which 2·arccos turns into ~1e-5 rad: near-ties may swap at that scale.
    atol = 1e-5 if dtype == torch.float32 else 3e-4
    _assert_matches_topk(f, d, idx, 32, "signless", atol=atol, min_agree=0.99)


def test_knn_bad_inputs():
    f = _features(20, 4)
    for k in (0, 20, 33, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            ops.feature_knn(f, k)
    with pytest.raises(ValueError, match="n_f = 0"):
        ops.feature_knn(f[:, :0], 3)
    with pytest.raises(IndexError, match="rows"):
        ops.feature_knn(f, 3, rows=(5, 25))
