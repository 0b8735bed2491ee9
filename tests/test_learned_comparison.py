"""The learned comparison (orientations.learned_comparison) and `cryoorient train_comparison`: equivariance, mirrors,
planted neighbours, bit-for-bit resume and the command's refusals."""

import math

import pytest
import torch

from _blobs import BlobRenderer
from cryoorient.cli import main as cli
from cryoorient.geometry import random_quaternions
from cryoorient.learning.neighbours import neighbour_precision
from cryoorient.commands.train_comparison import training_maps
from cryoorient.orientations import learned_comparison as lc
from cryoorient.orientations.preprocess import _parabolic_peak

TINY = dict(crop=16, rings=7, angles=16, width=4, depth=2, features=2)


def _net(seed=0):
    torch.manual_seed(seed)
    net = lc.ComparisonNet(**TINY)
    for m in net.modules():  # non-trivial batch-norm statistics, so that eval mode is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _blobs(n_images, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(n_images, size, size)
    for i in range(n_images):
        for _ in range(3):
            c = size / 2 + (torch.rand(2, generator=g) - 0.5) * size / 2
            w = 1.5 + 2 * float(torch.rand(1, generator=g))
            out[i] += float(torch.rand(1, generator=g) + 0.5) * torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * w * w))
    return out


def test_features_roll_with_the_polar_image_and_scores_ignore_the_roll():
    net = _net()
    p = torch.randn(3, 1, TINY["rings"], TINY["angles"])
    with torch.no_grad():
        f, f5 = net(p), net(torch.roll(p, 5, dims=-1))
        torch.testing.assert_close(f5, torch.roll(f, 5, dims=-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f.flatten(1).norm(dim=1), torch.ones(3))
        s = lc.rotation_max(f, f5)
        torch.testing.assert_close(s.diagonal(), torch.ones(3), atol=1e-5, rtol=0)
        assert float(s.max()) <= 1 + 1e-5
        torch.testing.assert_close(s, lc.rotation_max(f5, f).T, atol=1e-5, rtol=0)


def test_mirror_of_the_polar_image_is_the_polar_image_of_the_mirror_image():
    x = _blobs(2, 32)
    xm = torch.roll(x.flip(-2), 1, dims=-2)  # p(x, -y) about the centre pixel n/2
    args = (TINY["crop"], TINY["rings"], TINY["angles"])
    torch.testing.assert_close(lc.polar_images(xm, *args), lc.mirror(lc.polar_images(x, *args)), atol=2e-3, rtol=0)
    assert not torch.allclose(lc.polar_images(xm, *args), lc.polar_images(x, *args), atol=0.05)


def test_planted_copies_and_mirror_copies_are_the_two_best_partners():
    g = torch.Generator().manual_seed(1)
    base = _blobs(10, 32, seed=3)
    mirrored = torch.roll(base.flip(-2), 1, dims=-2)
    images = torch.cat([base, base, mirrored]) + 0.01 * torch.randn(30, 32, 32, generator=g)
    index = lc.learned_neighbours(images, _net(), neighbors=2)
    assert index.shape == (30, 2)
    P = 30
    for i in range(10):  # image i: its copy i + 10 (an image node) and the mirror node of its mirror copy i + 20
        assert set(index[i].tolist()) == {i + 10, P + i + 20}, (i, index[i])
    i = torch.arange(P)
    assert not (index == i[:, None]).any() and not (index == i[:, None] + P).any()


def test_rotational_neighbours_follow_the_hand_made_conventions():
    """As ``rotational_neighbors``: A_j = Rz(β)·A_i is found with angle β (rotating the node's image onto the
    row's), the image of diag(1, −1, −1)·A_i as mirror node P + i with angle 0, mirror rows find mirror nodes
    with the opposite angle; with landmarks, only landmark nodes, never the row's own image."""
    from test_abinitio import MIRROR, _render, _rz
    from cryoorient.geometry import matrix_to_quat, quat_multiply, quat_to_matrix

    torch.manual_seed(0)
    net = lc.ComparisonNet(crop=32, rings=15, angles=64, width=4, depth=2, features=2).eval()
    q = random_quaternions(24, generator=5, dtype=torch.float64)
    beta, P = 0.9, 24
    q[1] = quat_multiply(_rz(beta), q[0])
    q[2] = matrix_to_quat(MIRROR @ quat_to_matrix(q[0]))
    index, angle, score = lc.learned_rotational_neighbors(_render(q), net, neighbors=3, candidates=8, hub_k=3)
    assert index.shape == angle.shape == score.shape == (2 * P, 3)
    assert set(index[1, :2].tolist()) == {0, P + 2} and angle[1, :2].tolist() == pytest.approx([beta] * 2, abs=0.03)
    k = index[0].tolist().index(1)
    assert angle[0, k].item() == pytest.approx(-beta, abs=0.03)
    assert set(index[2, :1].tolist()) <= {P + 0, P + 1} and abs(angle[2, 0].item()) < 0.03
    assert set(index[P + 1, :2].tolist()) == {P + 0, 2}
    assert angle[P + 1, :2].tolist() == pytest.approx([-beta] * 2, abs=0.03)
    assert bool((score[:, :-1] >= score[:, 1:]).all())
    ref = torch.tensor([0, 3, 5, 7, 9, 11, 13, 15])
    index, _, _ = lc.learned_rotational_neighbors(_render(q), net, neighbors=3, reference=ref)
    assert int(index.max()) < 2 * len(ref)
    assert all(int(ref[index[r] % len(ref)].eq(r % P).sum()) == 0 for r in range(2 * P))


def test_hub_correction_ranks_by_twice_the_score_less_both_nodes_hub_scores():
    """Against a dense reference over the 2P images and mirror images: every node a candidate, r the mean of a
    row's 3 best raw scores, rows ranked by 2·s_uv − r_u − r_v; hub_k 0 ranks the raw scores."""
    g = torch.Generator().manual_seed(4)
    images = _blobs(24, 32, seed=7) + 0.3 * torch.randn(24, 32, 32, generator=g)
    net, P = _net(), 24
    with torch.no_grad():
        p = lc.polar_images(images, TINY["crop"], TINY["rings"], TINY["angles"])
        z = torch.cat([net(p), net(lc.mirror(p))])
        s = _parabolic_peak(lc._correlations(z, z).permute(2, 0, 1))[0]  # the best roll's value, parabola-refined
    i = torch.arange(2 * P)
    s[i, i % P] = s[i, i % P + P] = -math.inf
    r = s.topk(3, dim=1).values.mean(1)
    corrected = 2 * s - r[:, None] - r[None, :]
    hub = lc.learned_rotational_neighbors(images, net, neighbors=5, hub_k=3, candidates=2 * P - 2)[0]
    raw = lc.learned_rotational_neighbors(images, net, neighbors=5, hub_k=0)[0]
    assert torch.equal(hub, corrected.topk(5, dim=1).indices)
    assert torch.equal(raw, s.topk(5, dim=1).indices)
    assert torch.equal(lc.learned_neighbours(images, net, neighbors=5, hub_k=3, candidates=2 * P - 2), hub[:P])
    assert not torch.equal(hub, raw)


def test_neighbours_of_clean_projections_are_true_neighbours_with_the_metrics_mirror_convention():
    """Untrained (the network starts with the polar image itself beside its features), on clean
    projections of a blob volume: true neighbours within 20°; read with the mirror nodes swapped
    (node r <-> P + r), chance. So mirror nodes are the metric's (orientation diag(1, -1, -1)·A)."""
    P = 400
    q = random_quaternions(P, generator=1, dtype=torch.float64)
    images = BlobRenderer(size=32, seed=3)(q, torch.Generator().manual_seed(0))
    index = lc.learned_neighbours(images, _net())
    assert neighbour_precision(index, q, within_deg=20) > 0.8
    assert neighbour_precision((index + P) % (2 * P), q, within_deg=20) < 0.1


@pytest.mark.parametrize("near", [None, (15.0, 30.0)])
def test_training_resumes_bit_for_bit(tmp_path, monkeypatch, near):
    maps = training_maps(None, 2, 32)
    kw = dict(steps=4, size=32, proteins_per_step=2, pairs=4, checkpoint_every=2, net_options=TINY, near=near)
    saved = {}
    real_save = lc.atomic_save

    def keep(obj, path):
        real_save(obj, path)
        if isinstance(obj, dict) and obj.get("step") == 2:
            saved["half"] = path.read_bytes()

    monkeypatch.setattr(lc, "atomic_save", keep)
    full = lc.train_comparison(maps, tmp_path / "a", **kw)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes(saved["half"])
    resumed = lc.train_comparison(maps, tmp_path / "b", resume=True, **kw)
    a, b = torch.load(full)["state"], torch.load(resumed)["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = lc.ComparisonNet(**TINY).state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a if a[k].is_floating_point())  # it did train
    net = lc.load_comparison(full)
    assert net.config == {**TINY, "fill": lc.FILL} and not net.training
    with pytest.raises(ValueError, match="another network, number of steps or near misses"):
        lc.train_comparison(maps, tmp_path / "b", resume=True, **{**kw, "steps": 6})
    with pytest.raises(ValueError, match="another network, number of steps or near misses"):
        lc.train_comparison(maps, tmp_path / "b", resume=True, **{**kw, "near": None if near else (12.0, 20.0)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_resumes_on_the_gpu(tmp_path):
    """A checkpoint written on the GPU resumes there (the generator's state stays a CPU tensor)."""
    maps = training_maps(None, 2, 32)
    kw = dict(size=32, proteins_per_step=2, pairs=4, checkpoint_every=2, net_options=TINY, device="cuda")
    lc.train_comparison(maps, tmp_path, steps=4, **kw)
    (tmp_path / "weights.pt").unlink()
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    st["step"] = 2
    torch.save(st, tmp_path / "checkpoint.pt")
    lc.train_comparison(maps, tmp_path, steps=4, resume=True, **kw)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    assert (tmp_path / "weights.pt").exists()


def test_near_misses_turn_the_view_by_the_angles_asked_and_leave_the_pairs_as_they_were():
    g = torch.Generator().manual_seed(3)
    view = torch.nn.functional.normalize(torch.randn(500, 3, generator=g, dtype=torch.float64), dim=1)
    R = lc._small_rotations(500, 30.0, g, 15.0, view)
    turned = torch.rad2deg(torch.arccos((R @ view[:, :, None])[:, :, 0].mul(view).sum(1).clamp(-1, 1)))
    rotation = torch.rad2deg(torch.arccos(((R.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    torch.testing.assert_close(turned, rotation)  # the axis is perpendicular to the view: all of it turns the view
    assert turned.min() >= 15 and turned.max() <= 30 and turned.max() - turned.min() > 13
    free = lc._small_rotations(500, 30.0, g, 15.0)  # uniform axes: some turn the view by far less
    assert torch.rad2deg(torch.arccos((free @ view[:, :, None])[:, :, 0].mul(view).sum(1).clamp(-1, 1))).min() < 10
    vol, px, _ = training_maps(None, 1, 32)[0]
    proj = lc.FourierProjector(torch.as_tensor(vol), 32, 2.0, "linear")
    pairs = lc.render_pairs(proj, px, 6, torch.Generator().manual_seed(0))
    a, b, c = lc.render_pairs(proj, px, 6, torch.Generator().manual_seed(0), near=(15.0, 30.0))
    assert len(pairs) == 2 and torch.equal(pairs[0], a) and torch.equal(pairs[1], b) and c.shape == a.shape


def test_the_generated_maps_are_sized_to_the_box_and_rendered_alike_by_several_processes():
    (vol, px, diameter), second = training_maps(None, 2, 32)
    assert vol.shape == (32, 32, 32) and 1.5 <= px <= 2.0
    assert math.isfinite(float(vol.sum())) and float(vol.max()) > 0
    assert diameter == lc.particle_diameter(vol, px) and 10 * px < diameter < 40 * px
    assert not torch.equal(torch.from_numpy(vol), torch.from_numpy(second[0]))
    pooled = training_maps(None, 2, 32, workers=2)
    assert all((a[0] == b[0]).all() and a[1:] == b[1:] for a, b in zip([(vol, px, diameter), second], pooled))


def test_particle_diameter_of_a_ball_and_the_window_it_gives():
    z, y, x = torch.meshgrid(*[torch.arange(40.0)] * 3, indexing="ij")
    ball = (((z - 22) ** 2 + (y - 18) ** 2 + (x - 20) ** 2) <= 10.0 ** 2).float().numpy()
    assert lc.particle_diameter(ball, 1.5) == pytest.approx(2 * 10 * 0.99 ** (1 / 3) * 1.5, rel=0.03)
    assert lc.window_size(None, 64, 16) == 64
    assert lc.window_size(30.0, 64, 16) == 40 and lc.window_size(60.0, 64, 16) == 64
    assert lc.window_size(6.0, 64, 16) == 16
    images = torch.randn(3, 64, 64)
    args = (TINY["crop"], TINY["rings"], TINY["angles"])
    torch.testing.assert_close(lc.polar_images(images, *args, diameter=30.0),
                               lc.polar_images(images[:, 12:52, 12:52], *args))
    torch.testing.assert_close(lc.polar_images(images, *args, diameter=30.0, fill=None), lc.polar_images(images, *args))
    assert lc.window_size(30.0, 64, 16, fill=0.5) == 60 and lc.window_size(30.0, 64, 16, fill=None) == 64


def test_command_refusals(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    base = ["train_comparison", "--generated", "1", "--steps", "1", "--size", "32", "--crop", "16", "--rings", "7",
            "--angles", "16", "--width", "2", "--depth", "1", "--device", "cpu", "-q"]
    assert cli(base + ["-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert cli(base + ["-o", str(tmp_path / "new"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert cli(base[:2] + ["0"] + base[3:] + ["-o", str(tmp_path / "none")]) == 2
    assert "nothing to train on" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert cli(base + ["-o", str(tmp_path / "bad"), "--rings", "9"]) == 2
    assert "rings" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli(base + ["-o", str(tmp_path / "bad"), "--fill", "1.5"]) == 2
    assert "--fill must be in [0, 1]" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli(base + ["-o", str(tmp_path / "bad"), "--near-misses", "5", "20"]) == 2
    assert "--near-misses needs 10 < LO < HI" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli(base + ["-o", str(tmp_path / "bad"), "--workers", "0"]) == 2
    assert "--workers must be positive" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli(base + ["-o", str(tmp_path / "ok"), "--pairs", "3", "--proteins-per-step", "1"]) == 0
    assert lc.load_comparison(tmp_path / "ok" / "weights.pt").config["width"] == 2
    assert cli(base + ["-o", str(tmp_path / "whole"), "--pairs", "3", "--proteins-per-step", "1", "--fill", "0"]) == 0
    assert lc.load_comparison(tmp_path / "whole" / "weights.pt").config["fill"] is None
    with pytest.raises(ValueError, match="not a learned comparison"):
        lc.load_comparison(tmp_path / "ok" / "checkpoint.pt")


def test_ab_initio_builds_its_graph_from_a_learned_comparison(tmp_path):
    """estimate_orientations(comparison=weights) on noiseless projections of the phantom, with an untrained network
    (the polar image beside random features): orientations near the hand-made comparison's bound; a file
    that is not a network is refused before any work."""
    from cryoorient.imaging.phantom import default_density
    from cryoorient.imaging.project import FourierProjector
    from cryoorient.orientations.abinitio import estimate_orientations
    from cryoorient.orientations.align import align_orientations

    vol = torch.from_numpy(default_density(box_size=32, voxel_size=3.0, resolution=6.0))
    q = random_quaternions(500, generator=2, dtype=torch.float64)
    images = FourierProjector(vol, pad=2.0).images(q.float())
    torch.manual_seed(0)
    net = lc.ComparisonNet(crop=32, rings=15, angles=64, width=4, depth=2, features=2)
    lc.atomic_save({"config": net.config, "state": net.state_dict()}, tmp_path / "weights.pt")
    res = estimate_orientations(images, comparison=tmp_path / "weights.pt", landmarks=250, seed=0)
    assert res.determined, res.summary()
    assert res.neighbors.shape == (1000, 10) and int(res.neighbors.max()) < 500
    assert align_orientations(q, res.quaternions).error < 0.3  # the hand-made comparison: 0.25 (test_abinitio)
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    with pytest.raises(ValueError, match="not a learned comparison"):
        estimate_orientations(images, comparison=tmp_path / "junk.pt")


@pytest.mark.parametrize("name, recorded", [
    ("learned_comparison_h200_step900.pt", [0.375, 0.3111, 0.3537, 0.4119, 0.5363, 0.6256]),  # session 16
    ("learned_comparison_h100_step5000.pt", [0.4716, 0.3717, 0.4138, 0.4068, 0.5912, 0.6681]),  # session 39
])
def test_the_benchs_networks_load_and_score_as_recorded(name, recorded):
    """bench/weights/NAME (the networks of bench/README.md's figures): its configuration and its scores of four
    blob images on the CPU, as recorded when the file was added."""
    from pathlib import Path

    net = lc.load_comparison(Path(__file__).resolve().parents[1] / "bench" / "weights" / name)
    assert net.config == dict(crop=48, rings=23, angles=48, width=32, depth=6, features=8, fill=None)
    with torch.no_grad():
        z = net(net.polar(_blobs(4, 64, seed=11)))
        s = lc.rotation_max(z, z)
    got = [float(s[i, j]) for i, j in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))]
    assert got == pytest.approx(recorded, abs=2e-4)
