import json
import math

import pytest
import torch

from _blobs import BlobRenderer
from cryoorient.geometry import quat_distance, quat_multiply, random_quaternions, symmetry_group
from cryoorient.learning.model import EuclideanBaseline, SiameseNet
from cryoorient.learning.sources import DatasetSource, OnTheFlySource, evaluation_pairs
from cryoorient.learning.targets import binned_de_loss, pairwise_target_distance, target_distance
from cryoorient.learning.trainer import TrainConfig, Trainer

TINY = dict(arch="paper", widths=(16, 32, 32, 64, 64))
SMALL_RESNET = dict(arch="resnet", widths=(8, 16, 32, 64), depths=(1, 1, 1, 1))


def _uniformity(d, bins=8):
    """Max relative deviation of a histogram of d on [0, π] from flat."""
    h = torch.histc(d.float(), bins=bins, min=0, max=math.pi)
    return ((h - h.mean()).abs().max() / h.mean()).item()


def test_binned_loss_weights_bins_equally():
    d_q = torch.tensor([0.1, 2.0, 2.1, 2.2])
    d_p = torch.tensor([0.3, 2.0, 2.4, 2.2], requires_grad=True)
    loss = binned_de_loss(d_p, d_q, bins=4)
    expected = (0.2 ** 2 + (0.0 + 0.3 ** 2 + 0.0) / 3) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert d_p.grad[0].item() == pytest.approx(2 * 0.2 / 2, rel=1e-5)
    # equal counts per bin: the plain mean
    d_q = torch.tensor([0.1, 0.2, 3.0, 3.1])
    d_p = torch.tensor([0.0, 0.5, 2.0, 3.1])
    assert binned_de_loss(d_p, d_q, 2).item() == pytest.approx(((d_p - d_q) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError):
        binned_de_loss(torch.zeros(3), torch.zeros(2), 4)


def test_binned_loss_with_capped_target():
    d_q = torch.tensor([0.1, 2.0, 2.1, 3.0])
    d_p = torch.tensor([0.3, 1.0, 0.8, 1.0])
    target = d_q.clamp(max=1.0)
    # the bins (weights) still come from d_q: bin [0, π/4) holds 1 pair, [π/2, 3π/4) 2, [3π/4, π) 1
    expected = (0.2 ** 2 + (0.0 + 0.2 ** 2) / 2 + 0.0) / 3
    assert binned_de_loss(d_p, d_q, 4, target=target).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        binned_de_loss(d_p, d_q, 4, target=target[:3])


def test_targets_and_symmetry():
    q = random_quaternions(20, generator=0)
    full = pairwise_target_distance(q)
    assert torch.allclose(full, quat_distance(q[:, None], q[None]), atol=1e-6)
    assert torch.allclose(pairwise_target_distance(q, chunk_elems=7), full)
    g = symmetry_group("D2", dtype=q.dtype)
    mates = quat_multiply(q, g[2])
    assert target_distance(q, mates, "D2").abs().max() < 1e-3
    assert quat_distance(q, mates).min() > 0.1
    d_sym = pairwise_target_distance(q, "D2")
    assert (d_sym <= full + 1e-6).all() and d_sym.max() <= math.pi / 2 * 1.5
    assert torch.equal(pairwise_target_distance(q, "c1"), full)
    with pytest.raises(ValueError):
        target_distance(q, q, "X7")


def test_evaluation_pairs():
    q = random_quaternions(2000, generator=1, dtype=torch.float32)
    labels = torch.arange(2000) % 2
    data = DatasetSource(torch.zeros(2000, 8, 8), q, labels)
    i, j, d = evaluation_pairs(data, 2000, seed=3)
    assert i.numel() == 2000 and (i != j).all() and (labels[i] == labels[j]).all()
    assert torch.allclose(d.float(), quat_distance(q[i], q[j]), atol=1e-5)
    assert len(set(zip(i.tolist(), j.tolist()))) == 2000  # distinct pairs
    assert _uniformity(d) < 0.3  # whereas raw pairs of uniform orientations are far from flat:
    assert _uniformity(quat_distance(q[:1000], q[1000:])) > 0.9
    i2, j2, _ = evaluation_pairs(data, 2000, seed=3)
    assert torch.equal(i, i2) and torch.equal(j, j2)
    with pytest.raises(ValueError):
        evaluation_pairs(data, 0)


def test_on_the_fly_batches():
    src = OnTheFlySource([BlobRenderer(seed=0), BlobRenderer(seed=1)], maps_per_batch=2)
    gen = torch.Generator().manual_seed(0)
    b = src.sample(64, gen)
    assert b.images.shape == (64, 32, 32) and b.quats.shape == (64, 4)
    assert torch.equal(b.labels.bincount(), torch.tensor([32, 32]))
    d = torch.cat([quat_distance(b.quats[k * 32:k * 32 + 16], b.quats[k * 32 + 16:(k + 1) * 32]) for k in range(2)])
    assert d.max() <= math.pi
    many = torch.cat([quat_distance(*src.sample(512, gen).quats[:256].split(128)) for _ in range(1)])
    assert many.numel() == 128
    # anchor-partner distances of many batches are flat on [0, π]
    src1 = OnTheFlySource(BlobRenderer())
    ds = []
    for _ in range(10):
        q = src1.sample(800, gen).quats
        ds.append(quat_distance(q[:400], q[400:]))
    assert _uniformity(torch.cat(ds)) < 0.2
    fixed = src1.render_fixed(100, seed=5)
    assert torch.equal(fixed.images, src1.render_fixed(100, seed=5).images)
    with pytest.raises(TypeError):
        OnTheFlySource([1, 2])
    with pytest.raises(ValueError):
        OnTheFlySource(BlobRenderer(), maps_per_batch=2)
    bad = OnTheFlySource(lambda q, g: torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="renderer 0"):
        bad.sample(8, gen)


def test_dataset_source():
    q = random_quaternions(300, generator=2, dtype=torch.float32)
    imgs = BlobRenderer()(q, torch.Generator())
    src = DatasetSource(imgs, q)
    gen = torch.Generator().manual_seed(0)
    b = src.sample(400, gen)
    assert b.images.shape == (400, 32, 32)
    assert _uniformity(quat_distance(b.quats[:200], b.quats[200:]), bins=4) < 0.4
    sub = src.subset(torch.arange(10))
    assert len(sub) == 10 and torch.equal(sub.images, imgs[:10])
    with pytest.raises(ValueError):
        DatasetSource(imgs, q[:5])
    with pytest.raises(ValueError):
        DatasetSource(imgs, q, labels=torch.zeros(3))
    with pytest.raises(ValueError):
        DatasetSource(imgs, q, symmetry="Q9")


def test_train_config_validation():
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError):
        TrainConfig(lr=-1)
    for bad in (0.0, -1.0, 3.5):
        with pytest.raises(ValueError):
            TrainConfig(max_distance=bad)


def _sources(sigma2=0.0, max_shift=2.0):
    src = OnTheFlySource(BlobRenderer(sigma2=sigma2, max_shift=max_shift))
    return src, src.render_fixed(256, seed=99)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny network trained for a few seconds on on-the-fly blob projections (shifted)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    src, val = _sources()
    cfg = TrainConfig(epochs=4, steps_per_epoch=30, batch_size=64, val_pairs=1024, lr=2e-3, warmup_steps=10,
                      progress=False)
    trainer = Trainer(SiameseNet(**SMALL_RESNET), src, val, cfg, out_dir=out, device="cpu")
    summary = trainer.fit()
    return trainer, summary, out


def test_training_beats_untrained_and_euclidean(trained):
    trainer, summary, out = trained
    assert summary["best_val_loss"] < 0.2 * summary["untrained_val_loss"]
    assert summary["best_val_loss"] < 0.7 * summary["euclidean_isotonic_val_loss"]
    assert summary["best_val_loss"] < summary["euclidean_linear_val_loss"]
    assert trainer.validate() == pytest.approx(summary["best_val_loss"], rel=1e-5)  # best weights restored
    for name in ("checkpoint.pt", "model.pt", "history.csv", "history.json", "summary.json", "loss.png",
                 "distances.png"):
        assert (out / name).is_file(), name
    hist = json.loads((out / "history.json").read_text())["epochs"]
    assert len(hist) == 4 and hist[-1]["pairs_per_s"] > 0
    assert (out / "history.csv").read_text().count("\n") == 5
    model = SiameseNet.load(out / "model.pt")
    assert model.metadata["val_loss"] == pytest.approx(summary["best_val_loss"])


def test_trained_features_shift_invariant(trained):
    """Trained with shifts of up to 2 px, d̂ barely moves under a 3-px shift, unlike the Euclidean distance."""
    trainer, _, _ = trained
    net = trainer.model
    val = trainer.val
    i, j, d = evaluation_pairs(val, 2000)
    ev = EuclideanBaseline.features(val.images)
    euclid = EuclideanBaseline().fit(ev[i], ev[j], d)
    imgs = BlobRenderer()(random_quaternions(64, generator=7, dtype=torch.float32), torch.Generator())
    moved = torch.roll(imgs, shifts=(3, -2), dims=(-2, -1))
    f, e = net.features(imgs), EuclideanBaseline.features(imgs)
    net_shift = net.distance(f, net.features(moved)).mean()
    euclid_shift = euclid.distance(e, EuclideanBaseline.features(moved)).mean()
    net_other = net.distance(f, f.roll(1, 0)).mean()
    assert net_shift < 0.7 * euclid_shift
    assert net_shift < 0.4 * net_other


def test_resume_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=2, steps_per_epoch=4, batch_size=32, val_pairs=128, warmup_steps=2, progress=False)
    small = dict(arch="resnet", widths=(8, 16), depths=(1, 1))  # BatchNorm: running stats must resume too

    def trainer(out):
        torch.manual_seed(0)
        src, val = _sources(sigma2=1e-4)
        return Trainer(SiameseNet(**small), src, val, cfg, out_dir=out, device="cpu")

    straight = trainer(tmp_path / "a")
    straight.fit()
    first = trainer(tmp_path / "b")
    first.fit(stop_epoch=1)
    assert first.epoch == 1
    resumed = trainer(tmp_path / "c")
    resumed.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    resumed.fit()
    assert resumed.epoch == straight.epoch == 2
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]

    other = Trainer(SiameseNet(**small), *_sources(), TrainConfig(epochs=3, progress=False), device="cpu")
    with pytest.raises(ValueError, match="training settings"):
        other.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    wrong_arch = Trainer(SiameseNet(**TINY), *_sources(), cfg, device="cpu")
    with pytest.raises(ValueError, match="architecture"):
        wrong_arch.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(FileNotFoundError):
        wrong_arch.load_checkpoint(tmp_path / "nope.pt")


def test_max_distance_caps_training_and_validation_targets(tmp_path):
    src, val = _sources()
    cap = 1.0
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=16, val_pairs=256, progress=False, max_distance=cap)
    trainer = Trainer(SiameseNet(**TINY), src, val, cfg, out_dir=tmp_path, device="cpu")
    uncapped = evaluation_pairs(val, 256, seed=cfg.seed + 1)[2]
    assert uncapped.max() > 2.0
    assert torch.equal(trainer.val_pairs[2], uncapped.clamp(max=cap))
    trainer.fit()
    assert SiameseNet.load(tmp_path / "model.pt").metadata["max_distance"] == cap


def test_early_stopping(tmp_path):
    src, val = _sources()
    cfg = TrainConfig(epochs=6, steps_per_epoch=2, batch_size=16, val_pairs=64, lr=1e-9, patience=1,
                      min_delta=1.0, progress=False)
    summary = Trainer(SiameseNet(**TINY), src, val, cfg, device="cpu").fit()
    assert summary["stopped_early"] and summary["epochs_run"] == 2


def _write_dataset(folder, n=120):
    io = pytest.importorskip("cryoorient.io")
    from cryoorient.geometry import quat_to_euler

    q = random_quaternions(n, generator=11, dtype=torch.float64)
    images = BlobRenderer(max_shift=1.0)(q.float(), torch.Generator().manual_seed(0))
    rot, tilt, psi = quat_to_euler(q)
    io.write_stack(folder / "p.mrcs", images.numpy(), 2.0)
    particles = io.Particles.create("p.mrcs", range(n), 2.0, 32, root=folder, rot=rot.numpy(), tilt=tilt.numpy(),
                                    psi=psi.numpy())
    io.write_star(folder / "p.star", particles)
    return q, images


def test_dataset_from_star(tmp_path):
    q, images = _write_dataset(tmp_path)
    data = DatasetSource.from_star(tmp_path / "p.star")
    assert torch.allclose(data.images, images)
    assert quat_distance(data.quats.double(), q).max() < 1e-4
    sub = DatasetSource.from_star(tmp_path / "p.star", indices=[3, 5])
    assert torch.allclose(sub.images, images[[3, 5]])


def test_cli_train_dataset(tmp_path, capsys):
    from cryoorient.cli import main

    _write_dataset(tmp_path)
    out = tmp_path / "snn.pt"
    argv = ["train", "--dataset", str(tmp_path / "p.star"), "-o", str(out), "--epochs", "2", "--batch-size", "16",
            "--steps-per-epoch", "3", "--val-pairs", "64", "--device", "cpu", "--quiet", "--arch", "resnet", "--widths", "8", "16",
            "--depths", "1", "1"]
    assert main(argv) == 0
    assert "best validation L_DE" in capsys.readouterr().out
    net = SiameseNet.load(out)
    assert net.config.arch == "resnet" and net.metadata["dataset"].endswith("p.star")
    split = json.loads((tmp_path / "snn_train" / "split.json").read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(120))
    assert main(argv) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main(argv + ["--resume", "--epochs", "3"]) == 2  # other settings than the checkpoint
    assert "training settings" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # already finished: nothing more to do
    assert main(argv + ["--force"]) == 0


def test_cli_train_bad_input(tmp_path, capsys):
    from cryoorient.cli import main

    assert main(["train", "--dataset", str(tmp_path / "none.star"), "-o", str(tmp_path / "m.pt"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "-o", "m.pt"])  # no data source


def test_projection_renderer_on_the_fly(tmp_path):
    simulate = pytest.importorskip("cryoorient.imaging.simulate")
    from _blobs import blob_volume
    from cryoorient.imaging.render import ProjectionRenderer

    vol = blob_volume(24)
    clean = ProjectionRenderer(vol, 4.0, simulate.SimulationSettings(n=1, size=24, interpolation="linear"), pilot=64)
    gen = torch.Generator().manual_seed(0)
    q = random_quaternions(64, generator=3, dtype=torch.float32)
    img = clean(q, gen)
    assert img.shape == (64, 24, 24)
    assert abs(img.mean()) < 0.2 and 0.7 < img.var() < 1.3  # standardised like a simulated dataset
    noisy = ProjectionRenderer(vol, 4.0, simulate.SimulationSettings(n=1, size=24, sigma2=4.0, interpolation="linear"),
                               pilot=64)
    assert ((noisy(q, gen) - img).var() - 4.0).abs() < 0.3
    moved = ProjectionRenderer(vol, 4.0, simulate.SimulationSettings(n=1, size=24, shift_max=4.0, ctf=True,
                                                                      interpolation="linear"), pilot=64)
    a = moved(q, torch.Generator().manual_seed(5))
    assert torch.equal(a, moved(q, torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, moved(q, torch.Generator().manual_seed(6)))
    src = OnTheFlySource([clean, moved], maps_per_batch=2)
    b = src.sample(32, gen)
    assert b.images.shape == (32, 24, 24) and set(b.labels.tolist()) == {0, 1}


def _model_pdb(path, xyz, chain_ids="A"):
    """PDB of CA atoms (ALA), the rows of ``xyz`` shared in order between ``chain_ids``."""
    per = len(xyz) // len(chain_ids)
    lines = [f"ATOM  {k + 1:5d}  CA  ALA {chain_ids[k // per]}{k % per + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00"
             f"           C" for k, (x, y, z) in enumerate(xyz)]
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def test_particle_size_from_models_and_images(tmp_path):
    """Models rendered at a requested radius of gyration in pixels look that large in the images,
    and particle_radius_of_gyration measures it back from the mean image."""
    import numpy as np

    simulate = pytest.importorskip("cryoorient.imaging.simulate")
    from cryoorient.imaging.render import ProjectionRenderer, particle_radius_of_gyration

    rng = np.random.default_rng(0)
    pdb = _model_pdb(tmp_path / "blob.pdb", rng.normal(size=(300, 3)).clip(-2.5, 2.5) * [9.0, 6.0, 4.0])
    settings = simulate.SimulationSettings(n=1, size=40, interpolation="linear")
    small, large = ProjectionRenderer.from_sources([pdb], settings, particle_rg=(4.0, 7.0), pilot=32)
    assert small.pixel_size == pytest.approx(7.0 / 4.0 * large.pixel_size)
    q = random_quaternions(400, generator=1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    assert particle_radius_of_gyration(small(q, gen)) == pytest.approx(4.0, rel=0.1)
    assert particle_radius_of_gyration(large(q, gen)) == pytest.approx(7.0, rel=0.1)
    with pytest.raises(ValueError, match="particle_rg"):
        ProjectionRenderer.from_sources([pdb], settings, particle_rg=(0.0,))
    with pytest.raises(ValueError, match="no positive particle"):
        particle_radius_of_gyration(torch.zeros(4, 16, 16))


def test_structure_library_leaves_out_symmetric_models(tmp_path):
    import numpy as np

    from cryoorient.learning.library import structure_library

    rng = np.random.default_rng(1)
    chain = rng.normal(size=(12, 3)) * 4.0 + [8.0, 0, 0]
    _model_pdb(tmp_path / "dimer.pdb", np.concatenate((chain, chain * [-1, -1, 1])), "AB")  # C2
    _model_pdb(tmp_path / "mono.pdb", chain)
    (tmp_path / "notes.txt").write_text("not a model")
    kept, symmetric = structure_library(tmp_path)
    assert [p.name for p in kept] == ["mono.pdb"] and [p.name for p in symmetric] == ["dimer.pdb"]
    with pytest.raises(FileNotFoundError):
        structure_library(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .cif/.pdb"):
        structure_library(tmp_path / "empty")


def test_cli_train_structures(tmp_path, capsys):
    import numpy as np

    from cryoorient.cli import main

    rng = np.random.default_rng(2)
    chain = rng.normal(size=(40, 3)).clip(-2.5, 2.5) * [6.0, 4.0, 3.0]
    for k in range(2):
        _model_pdb(tmp_path / f"m{k}.pdb", chain * (1 + 0.3 * k))
    _model_pdb(tmp_path / "dimer.pdb", np.concatenate((chain + [9.0, 0, 0], chain * [-1, -1, 1] - [9.0, 0, 0])), "AB")
    main(["train", "--structures", str(tmp_path), "--size", "32", "--particle-rg", "5", "-o", str(tmp_path / "m.pt"),
          "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--val-images", "32", "--val-pairs", "64",
          "--widths", "8", "16", "16", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert "leaving out symmetric models: dimer.pdb" in out
    summary = json.loads((tmp_path / "m_train" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and (tmp_path / "m.pt").is_file()
