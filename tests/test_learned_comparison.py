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


def test_training_resumes_bit_for_bit(tmp_path, monkeypatch):
    maps = training_maps(None, 2, 32)
    kw = dict(steps=4, size=32, proteins_per_step=2, pairs=4, checkpoint_every=2, net_options=TINY)
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
    assert net.config == {**TINY} and not net.training
    with pytest.raises(ValueError, match="another network or number of steps"):
        lc.train_comparison(maps, tmp_path / "b", resume=True, **{**kw, "steps": 6})


def test_the_generated_maps_are_sized_to_the_box():
    (vol, px), = training_maps(None, 1, 32)
    assert vol.shape == (32, 32, 32) and 1.5 <= px <= 2.0
    assert math.isfinite(float(vol.sum())) and float(vol.max()) > 0


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
    assert cli(base + ["-o", str(tmp_path / "ok"), "--pairs", "3", "--proteins-per-step", "1"]) == 0
    assert lc.load_comparison(tmp_path / "ok" / "weights.pt").config["width"] == 2
    with pytest.raises(ValueError, match="not a learned comparison"):
        lc.load_comparison(tmp_path / "ok" / "checkpoint.pt")
