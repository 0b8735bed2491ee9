import pytest
import torch

from cryoorient import ops
from cryoorient.orientations.recover import recover_orientations_allpairs


def _truth(P, seed=0):
    g = torch.Generator().manual_seed(100 + seed)  # not the recovery's own seed
    q = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=1)
    return q, torch.nn.functional.pad(q, (0, 12))  # features: quaternions, zero-padded


def _distance_errors(q_true, q_hat):
    """|d_q(q̂_i, q̂_j) - d_q(q_i, q_j)| over pairs: all 0 iff q̂ = q up to a global O(4) transform.

    Tests use the median and a tail fraction: a full-batch descent can leave a rare projection
    stuck in a local minimum of its own position, which spoils only the pairs it is in.
    """
    i, j = torch.triu_indices(len(q_true), len(q_true), 1)
    d = 2 * torch.acos((q_true[i] * q_true[j]).sum(1).abs().clamp(max=1))
    d_hat = 2 * torch.acos((q_hat[i] * q_hat[j]).sum(1).abs().clamp(max=1))
    return (d - d_hat).abs()


def test_recovers_exact_targets_from_features():
    q_true, f = _truth(300)
    r = recover_orientations_allpairs(f, distance="signless", lr=0.2, max_epochs=300)
    assert r.converged and r.losses[-1] < 1e-6 < r.losses[0]
    assert r.q.shape == (300, 4)
    torch.testing.assert_close(r.q.norm(dim=1), torch.ones(300))
    err = _distance_errors(q_true, r.q)
    assert err.median() < 1e-3 and (err > 0.05).float().mean() < 0.02


def test_recovers_from_the_distance_cache():
    q_true, f = _truth(300, seed=1)
    seen = []
    r = recover_orientations_allpairs(
        cache=ops.allpairs_distance_cache(f, "signless"), lr=0.2, max_epochs=300, callback=lambda e, q, l: seen.append(e)
    )
    assert seen == list(range(r.epochs))
    assert r.losses[-1] < 0.01 * r.losses[0]
    err = _distance_errors(q_true, r.q)
    assert err.median() < 5e-3 and (err > 0.05).float().mean() < 0.02  # codes are 6e-3 rad apart


def test_bad_arguments():
    q_true, f = _truth(20)
    with pytest.raises(ValueError, match="exactly one"):
        recover_orientations_allpairs()
    with pytest.raises(ValueError, match="cover every row"):
        recover_orientations_allpairs(cache=ops.allpairs_distance_cache(f, rows=(0, 10)))
    with pytest.raises(ValueError, match="q0 must have shape"):
        recover_orientations_allpairs(f, q0=q_true[:10])
    with pytest.raises(ValueError, match="lr > 0"):
        recover_orientations_allpairs(f, lr=0)
    with pytest.raises(ValueError, match="distance"):
        recover_orientations_allpairs(f, distance="l2")
