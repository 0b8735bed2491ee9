import math

import numpy as np
import pytest
import torch

from cryoorient.learning.model import (
    EuclideanBaseline,
    SiameseConfig,
    SiameseNet,
    feature_distance,
    pairwise_feature_distance,
)


def _conv_params(widths, kernels):
    c_in, n = 1, 0
    for c, k in zip(widths, kernels):
        n += c_in * c * k * k + c
        c_in = c
    return n


def test_paper_architecture_size():
    # Appendix G: 7 conv layers 32, 64, 128, 256, 256, 512, 512 with kernels 7, 5, 3, ...; no FC layer.
    widths = (32, 64, 128, 256, 256, 512, 512)
    net = SiameseNet("paper")
    assert net.num_features == 512
    assert sum(p.numel() for p in net.parameters()) == _conv_params(widths, (7, 5, 3, 3, 3, 3, 3))
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())


@pytest.mark.parametrize("arch", ["paper", "resnet"])
@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 24, 40), (2, 1, 116, 116)])
def test_features_any_size(arch, shape):
    torch.manual_seed(0)
    net = SiameseNet(arch)
    f = net.features(torch.randn(shape))
    assert f.shape == (shape[0], 512) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all()


def test_features_batching_and_numpy_input():
    torch.manual_seed(0)
    net = SiameseNet("resnet", widths=(8, 16), depths=(1, 1))
    x = torch.randn(7, 20, 20)
    whole = net.features(x, batch_size=100)
    assert torch.allclose(net.features(x.numpy(), batch_size=3), whole, atol=1e-5)
    assert net.features(x[:0]).shape == (0, 16)
    assert net.training  # features() restores the mode


def test_forward_is_distance_of_features():
    torch.manual_seed(0)
    net = SiameseNet("paper", widths=(8, 8, 16)).eval()
    a, b = torch.randn(4, 16, 16), torch.randn(4, 16, 16)
    d = net(a, b)
    assert torch.allclose(d, net.distance(net.features(a), net.features(b)), atol=1e-5)
    d.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_feature_distance_formula():
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.rand(100, 16, generator=g, dtype=torch.float64), torch.randn(100, 16, generator=g, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(fa, fb, dim=-1)
    expected = 2 * torch.arccos(cos.clamp(0, 1))
    assert torch.allclose(feature_distance(fa, fb), expected, atol=1e-7)
    d = feature_distance(fa, fb)
    assert (d >= 0).all() and (d <= math.pi).all()
    pw = pairwise_feature_distance(fa, fb)
    assert pw.shape == (100, 100)
    assert torch.allclose(pw.diagonal(), expected, atol=2e-3)
    # scale invariance
    assert torch.allclose(feature_distance(3 * fa, fb), d, atol=1e-7)


def test_feature_distance_safe_at_zero():
    f = torch.rand(5, 8, dtype=torch.float64, requires_grad=True)
    d = feature_distance(f, f.detach().clone())
    assert torch.all(d == 0)
    d.sum().backward()
    assert torch.isfinite(f.grad).all()
    g = torch.rand(5, 8, requires_grad=True)
    pairwise_feature_distance(g).sum().backward()
    assert torch.isfinite(g.grad).all()
    assert pairwise_feature_distance(g.detach()).diagonal().max() < 2e-3


def test_gradient_near_zero_distance_is_finite():
    f = torch.rand(4, 8, dtype=torch.float64)
    fb = (f + 1e-9 * torch.randn_like(f)).requires_grad_(True)
    feature_distance(f, fb).sum().backward()
    assert torch.isfinite(fb.grad).all()


@pytest.mark.parametrize(
    "images, err",
    [
        (torch.zeros(2, 16, 16, dtype=torch.int32), TypeError),
        ([[0.0]], TypeError),
        (torch.zeros(2, 2, 16, 16), ValueError),
        (torch.zeros(16, 16), ValueError),
        (torch.zeros(2, 4, 4), ValueError),
    ],
)
def test_bad_images(images, err):
    with pytest.raises(err):
        SiameseNet("paper").features(images)


def test_bad_values_and_arguments():
    net = SiameseNet("paper", widths=(4, 4))
    x = torch.zeros(3, 16, 16)
    x[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net.features(x)
    with pytest.raises(ValueError, match="batch_size"):
        net.features(torch.zeros(2, 16, 16), batch_size=0)
    with pytest.raises(ValueError, match="same shape"):
        net(torch.zeros(2, 16, 16), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="architecture"):
        SiameseNet("vgg")
    with pytest.raises(ValueError, match="depth"):
        SiameseNet("resnet", widths=(8, 16), depths=(1,))
    with pytest.raises(ValueError, match="norm"):
        SiameseNet("resnet", norm="layer")
    with pytest.raises(ValueError):
        pairwise_feature_distance(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(TypeError):
        feature_distance(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4))


@pytest.mark.parametrize("arch, kw", [("paper", {}), ("resnet", {"norm": "group"}), ("resnet", {"norm": "batch"})])
def test_save_load_roundtrip(tmp_path, arch, kw):
    torch.manual_seed(1)
    net = SiameseNet(arch, widths=(8, 16, 16), depths=(1, 1, 1) if arch == "resnet" else (), **kw)
    if arch == "resnet":
        net.train()
        net.embed(torch.randn(6, 16, 16))  # moves BatchNorm running statistics
    x = torch.randn(5, 24, 24)
    path = tmp_path / "m.pt"
    net.save(path, epoch=3, note="hello")
    back = SiameseNet.load(path)
    assert back.config == net.config
    assert back.metadata == {"epoch": 3, "note": "hello"}
    assert torch.equal(back.features(x), net.features(x))
    with pytest.raises(FileExistsError):
        net.save(path)
    net.save(path, overwrite=True)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        SiameseNet.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError):
        SiameseNet.load(bad)
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a cryoorient"):
        SiameseNet.load(tmp_path / "other.pt")


def test_config_defaults():
    assert SiameseConfig("paper").normalize_input is False
    assert SiameseConfig("resnet").normalize_input is True
    assert SiameseNet("resnet", widths=(8, 16), depths=(1, 1)).num_features == 16


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet_exactly_invariant_to_circular_shifts_by_its_stride(norm):
    torch.manual_seed(0)
    net = SiameseNet("resnet", widths=(8, 16, 16), depths=(1, 1, 1), norm=norm)  # 3 stages: stride 8
    x = torch.zeros(3, 40, 40)
    x[:, 12:26, 10:30] = torch.rand(3, 14, 20)
    f = net.features(x)
    assert torch.allclose(net.features(torch.roll(x, (8, -16), (-2, -1))), f, atol=1e-5)
    assert not torch.allclose(net.features(x.flip(-1)), f, atol=1e-3)


def test_input_normalisation_makes_features_scale_invariant():
    torch.manual_seed(0)
    net = SiameseNet("resnet", widths=(8, 16), depths=(1, 1), norm="group")
    x = torch.randn(4, 20, 20)
    assert torch.allclose(net.features(x), net.features(5 * x + 2), atol=1e-4)


def test_euclidean_baseline_linear_and_isotonic():
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(400, 10, generator=g)
    fb = torch.randn(400, 10, generator=g)
    raw = torch.linalg.vector_norm(fa - fb, dim=-1)
    target = 0.25 * raw + 0.1
    assert target.max() < math.pi
    lin = EuclideanBaseline().fit(fa, fb, target, kind="linear")
    assert torch.allclose(lin.distance(fa, fb), target, atol=1e-5)
    # A monotone non-linear relation: isotonic beats linear and stays non-decreasing.
    target = math.pi * torch.sigmoid(3 * (raw - raw.median()))
    iso = EuclideanBaseline().fit(fa, fb, target, kind="isotonic")
    lin = EuclideanBaseline().fit(fa, fb, target, kind="linear")
    err_iso = ((iso.distance(fa, fb) - target) ** 2).mean()
    err_lin = ((lin.distance(fa, fb) - target) ** 2).mean()
    assert err_iso < 0.1 * err_lin
    order = raw.argsort()
    assert (iso.distance(fa, fb)[order].diff() >= -1e-6).all()
    pw = iso.pairwise_distance(fa[:7], fb[:5])
    assert pw.shape == (7, 5) and (pw >= 0).all() and (pw <= math.pi).all()
    assert torch.allclose(pw[torch.arange(5), torch.arange(5)], iso.distance(fa[:5], fb[:5]), atol=1e-5)


def test_isotonic_matches_brute_force_on_small_case():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 0.0, 3.0, 2.0])
    base = EuclideanBaseline().fit(torch.tensor(x)[:, None], torch.zeros(4, 1), torch.tensor(y), kind="isotonic")
    # PAVA pools (1, 0) -> 0.5 at x = 0.5 and (3, 2) -> 2.5 at x = 2.5; linear in between, flat outside.
    assert np.allclose(base.knots_x, [0.5, 2.5]) and np.allclose(base.knots_y, [0.5, 2.5])
    out = base.distance(torch.tensor([0.0, 0.5, 1.0, 2.5, 3.0])[:, None], torch.zeros(5, 1))
    assert torch.allclose(out, torch.tensor([0.5, 0.5, 1.0, 2.5, 2.5]))


def test_euclidean_baseline_errors():
    with pytest.raises(RuntimeError):
        EuclideanBaseline().distance(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        EuclideanBaseline().fit(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), kind="spline")
    with pytest.raises(ValueError):
        EuclideanBaseline().fit(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def test_features_cuda_autocast(device):
    torch.manual_seed(0)
    net = SiameseNet("paper").to(device)
    x = torch.randn(6, 64, 64)
    f32 = net.features(x, amp=False)
    famp = net.features(x)
    assert famp.dtype == torch.float32 and famp.device.type == device.type
    assert torch.allclose(net.distance(f32, f32.roll(1, 0)), net.distance(famp, famp.roll(1, 0)), atol=5e-2)
