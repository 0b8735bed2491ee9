import pytest
import torch
from cryoorient.orientations.align import orientation_error as eor

from cryoorient import ops
from cryoorient.orientations.recover import (
    DistanceFunction,
    ExactDistances,
    PerturbedDistances,
    RecoveryResult,
    plot_loss_curve,
    recover_orientations,
)

FAST = dict(restarts=4, steps=600, pairs_per_step=4096, eval_pairs=8192, progress=False)


def _truth(P, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(P, 4, generator=g, dtype=torch.float64)
    return (q / q.norm(dim=1, keepdim=True)).float()


@pytest.fixture(scope="module")
def exact_run():
    q = _truth(200)
    return q, recover_orientations(ExactDistances(q), seed=0, **FAST)


def test_exact_distances_recover_orientations(exact_run):
    q, res = exact_run
    assert isinstance(res, RecoveryResult)
    assert eor(q, res.orientations) < 0.02
    assert res.loss < 1e-6
    assert res.orientations.shape == (200, 4)
    torch.testing.assert_close(res.orientations.norm(dim=1), torch.ones(200))
    assert (res.orientations[:, 0] >= 0).all()
    assert res.seconds > 0 and res.steps <= FAST["steps"]
    assert res.pairs_per_orientation == pytest.approx(2 * res.steps * FAST["pairs_per_step"] / 200)


def test_history_and_lowest_loss_restart_is_kept(exact_run):
    _, res = exact_run
    h = res.history
    assert h.eval_loss.shape == (h.steps.numel(), 4) == h.lr.shape
    assert h.train_loss.numel() == res.steps and int(h.steps[-1]) == res.steps
    assert res.restart == int(torch.argmin(res.restart_losses))
    assert torch.equal(res.orientations, res.restart_orientations[res.restart])
    assert res.loss == pytest.approx(float(res.restart_losses.min()))
    assert h.eval_loss[-1].min() < h.eval_loss[0].min() / 1e3


def test_restart_started_at_the_truth_is_kept():
    q = _truth(150, seed=1)
    init = torch.randn(3, 150, 4, generator=torch.Generator().manual_seed(5))
    init[1] = q
    res = recover_orientations(
        PerturbedDistances(q, 0.05, seed=1), init=init, seed=0, restarts=3, steps=20, pairs_per_step=2048,
        eval_every=10, progress=False,
    )
    assert res.restart == 1
    assert eor(q, res.orientations) < eor(q, res.restart_orientations[0])


def test_deterministic_from_seed():
    q = _truth(100, seed=2)
    kw = dict(restarts=2, steps=60, pairs_per_step=1024, eval_pairs=2048, progress=False)
    a = recover_orientations(ExactDistances(q), seed=7, **kw)
    b = recover_orientations(ExactDistances(q), seed=7, **kw)
    c = recover_orientations(ExactDistances(q), seed=8, **kw)
    assert torch.equal(a.orientations, b.orientations)
    assert torch.equal(a.history.eval_loss, b.history.eval_loss)
    assert not torch.equal(a.orientations, c.orientations)


def test_callable_source_matches_exact_source():
    q = _truth(100, seed=3)
    calls = []

    def snn(i, j):
        calls.append(i.shape[0])
        return ops.qdist(q, i, j)

    kw = dict(seed=4, restarts=2, steps=40, pairs_per_step=512, eval_pairs=1024, progress=False)
    a = recover_orientations(DistanceFunction(snn, 100), **kw)
    b = recover_orientations(ExactDistances(q), **kw)
    torch.testing.assert_close(a.orientations, b.orientations)
    assert calls == [1024] + [512] * 40  # once for the evaluation pairs, once per step (shared by restarts)


def test_perturbed_distances_are_fixed_per_pair_with_the_asked_variance():
    q = _truth(2000, seed=4)
    src = PerturbedDistances(q, variance=0.3, seed=9)
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(0, 2000, (200_000,), generator=g), torch.randint(0, 2000, (200_000,), generator=g)
    d = src.sample(i, j)
    assert torch.equal(d, src.sample(j, i)) and torch.equal(d, src.sample(i, j))
    err = (d - ops.qdist(q, i, j)).double()
    assert abs(err.mean().item()) < 0.01 and err.var().item() == pytest.approx(0.3, rel=0.02)
    assert not torch.equal(d, PerturbedDistances(q, variance=0.3, seed=10).sample(i, j))
    capped = PerturbedDistances(q, variance=0.0, plateau=2.0).sample(i, j)
    torch.testing.assert_close(capped, ops.qdist(q, i, j).clamp(max=2.0))


def test_cutoff_with_spreading_resists_plateaued_distances():
    # Distances saturating at 2 rad make plain least squares collapse the orientations.
    q = _truth(300, seed=5)
    src = PerturbedDistances(q, variance=0.0, plateau=2.0)
    kw = dict(seed=0, restarts=4, steps=400, pairs_per_step=8192, eval_pairs=8192, progress=False)
    plain = recover_orientations(src, **kw)
    robust = recover_orientations(src, cutoff=1.6, **kw)
    assert eor(q, plain.orientations) > 0.3
    assert eor(q, robust.orientations) < 0.05


def test_progress_bar_and_plot(tmp_path, capsys):
    q = _truth(50)
    res = recover_orientations(ExactDistances(q), steps=30, pairs_per_step=256, eval_every=10, restarts=2)
    assert "recovering orientations" in capsys.readouterr().err
    path = tmp_path / "loss.png"
    plot_loss_curve(res, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs():
    q = _truth(20)
    with pytest.raises(TypeError, match="DistanceSource"):
        recover_orientations(object())
    with pytest.raises(ValueError, match="at least 2"):
        recover_orientations(ExactDistances(q[:1]))
    with pytest.raises(ValueError, match="shape"):
        ExactDistances(q[:, :3])
    with pytest.raises(ValueError, match="variance"):
        PerturbedDistances(q, variance=-1.0)
    with pytest.raises(TypeError, match="callable"):
        DistanceFunction(3, 20)
    with pytest.raises(ValueError, match="steps"):
        recover_orientations(ExactDistances(q), steps=0)
    with pytest.raises(ValueError, match="lr"):
        recover_orientations(ExactDistances(q), lr=-1.0)
    with pytest.raises(ValueError, match="cutoff"):
        recover_orientations(ExactDistances(q), cutoff=0.0)
    with pytest.raises(ValueError, match="init"):
        recover_orientations(ExactDistances(q), init=torch.randn(19, 4), progress=False)
    with pytest.raises(ValueError, match="init"):
        recover_orientations(ExactDistances(q), init=torch.zeros(20, 4), progress=False)
    with pytest.raises(ValueError, match="shape"):
        recover_orientations(DistanceFunction(lambda i, j: torch.zeros(3), 20), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        recover_orientations(DistanceFunction(lambda i, j: torch.full(i.shape, float("nan")), 20), progress=False)
