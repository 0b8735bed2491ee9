import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref


def test_pairs_match_reference_stream(device):
    i, j = ops.sampled_pairs(997, 50_000, seed=12345, epoch=7, device=device)
    i_r, j_r = ref.sampled_pairs(997, 50_000, seed=12345, epoch=7)
    assert i.device.type == device.type and i.dtype == torch.int64
    assert torch.equal(i.cpu(), i_r) and torch.equal(j.cpu(), j_r)


def test_pairs_are_uniform_and_distinct():
    P, n = 50, 200_000
    i, j = ops.sampled_pairs(P, n, seed=1)
    assert (i != j).all() and i.min() >= 0 and j.max() < P
    counts = torch.bincount(i * P + j, minlength=P * P).view(P, P).double()
    expected = n / (P * (P - 1))
    off = counts[~torch.eye(P, dtype=torch.bool)]
    chi2 = ((off - expected) ** 2 / expected).sum().item()
    dof = P * (P - 1) - 1
    assert abs(chi2 - dof) < 5 * (2 * dof) ** 0.5
    assert (counts.diagonal() == 0).all()


def test_streams_depend_on_seed_and_epoch():
    a = ops.sampled_pairs(1000, 100, seed=3, epoch=0)[0]
    assert torch.equal(a, ops.sampled_pairs(1000, 100, seed=3, epoch=0)[0])
    assert not torch.equal(a, ops.sampled_pairs(1000, 100, seed=3, epoch=1)[0])
    assert not torch.equal(a, ops.sampled_pairs(1000, 100, seed=4, epoch=0)[0])
    # a longer stream extends a shorter one
    assert torch.equal(a, ops.sampled_pairs(1000, 300, seed=3)[0][:100])


@pytest.mark.parametrize("distance", ["snn", "signless"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampled_loss_matches_reference(device, distance, dtype):
    g = torch.Generator().manual_seed(4)
    q_true = torch.randn(500, 4, generator=g)
    f = torch.cat([3 * q_true, 0.3 * torch.randn(500, 60, generator=g)], 1).to(dtype).to(device)
    q = torch.randn(500, 4, generator=g).to(device)
    out = []
    for fn in (ops.sampled_feature_pair_loss, ref.sampled_feature_pair_loss):
        x, y = f.clone().requires_grad_(True), q.clone().requires_grad_(True)
        loss = fn(x, y, 20_000, 11, 2, distance, ("cutoff", 2.5))
        out.append((loss, *torch.autograd.grad(loss, (x, y))))
    (loss, gf, gq), (loss_r, gf_r, gq_r) = out
    torch.testing.assert_close(loss, loss_r, rtol=1e-4, atol=0)
    assert ((gq - gq_r).norm() / gq_r.norm()).item() < 1e-4
    assert ((gf.double() - gf_r.double()).norm() / gf_r.double().norm()).item() < (1e-4 if dtype == torch.float32 else 2e-2)


def test_sampled_loss_gradcheck_float64_cpu():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(30, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    q = torch.randn(30, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, q: ops.sampled_feature_pair_loss(f, q, 200, seed=9), (f, q))


def test_all_pairs_is_the_expectation_of_sampled_pairs():
    g = torch.Generator().manual_seed(6)
    f, q = torch.randn(60, 8, generator=g), torch.randn(60, 4, generator=g)
    n = 400_000
    sampled = ops.sampled_feature_pair_loss(f, q, n, seed=2, distance="signless") / n
    full = ops.allpairs_loss(f, q, "signless") / (60 * 59 / 2)
    assert abs(sampled.item() / full.item() - 1) < 0.01


def test_sampled_bad_inputs():
    f, q = torch.randn(10, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match="n_pairs"):
        ops.sampled_feature_pair_loss(f, q, -1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ops.sampled_feature_pair_loss(f, q, 10, seed=2**63)
    with pytest.raises(ValueError, match="epoch"):
        ops.sampled_pairs(10, 5, seed=0, epoch=-1)
    with pytest.raises(ValueError, match="at least 2"):
        ops.sampled_pairs(1, 5, seed=0)
    with pytest.raises(ValueError, match="same number of rows"):
        ops.sampled_feature_pair_loss(f, q[:5], 10, seed=0)
