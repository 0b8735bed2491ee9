"""``cryoorient abinitio``: the whole chain from a STAR file with CTF and shifts to OUT_DIR (particles,
maps, FSC plot, report, checkpoints), --abinitio-only, --resume, --ignore-ctf and the refusals."""

import contextlib
import io
import shutil

import numpy as np
import pytest
import torch

from cryoorient.cli import main
from cryoorient.io import read_map, read_particle_images, read_particles, write_map, write_particles, write_stack
from cryoorient.orientations import chain

BOX, PIXEL, P = 32, 3.0, 250
MAPS = ("map.mrc", "half_map_1.mrc", "half_map_2.mrc")


def run(argv):
    """``main(argv)`` with its stdout and stderr: ``(status, out, err)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """250 simulated 32² particles of the phantom at 3 Å/pixel: CTF (defocus 0.8–2.5 µm), shifts up to
    1 px, SNR 20 dB."""
    from cryoorient.imaging.phantom import default_density

    root = tmp_path_factory.mktemp("abinitio_cli")
    write_map(root / "phantom.mrc", default_density(box_size=BOX, voxel_size=PIXEL, resolution=6.0), voxel_size=PIXEL)
    status, _, err = run(["simulate", str(root / "phantom.mrc"), "-o", str(root / "data"), "-n", str(P), "--size",
                          str(BOX), "--ctf", "--defocus-min", "0.8", "--shift-max", "1", "--snr", "20",
                          "--device", "cpu", "-q"])
    assert status == 0, err
    return root / "data" / "particles.star"


@pytest.fixture(scope="module")
def chained(data):
    """--abinitio-only into OUT_DIR, a snapshot of it, then --resume there (the global search from the ab initio
    start only, one refinement round, --cs too),
    with the ab initio stage made to fail if it ran again."""
    root = data.parent.parent
    out = root / "out"
    first = run(["abinitio", str(data), "-o", str(out), "--abinitio-only", "--device", "cpu", "-q"])
    shutil.copytree(out, root / "stopped")
    names = sorted(p.name for p in out.iterdir())

    def again(*args, **kwargs):
        raise AssertionError("the ab initio stage ran again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chain, "estimate_orientations", again)
        second = run(["abinitio", str(data), "-o", str(out), "--resume", "--restarts", "0", "--rounds", "1", "--cs",
                      "--device", "cpu", "-q"])
    return out, first, names, second


def test_abinitio_only_writes_angles_and_no_maps(data, chained):
    out, (status, stdout, err), names, _ = chained
    assert status == 0, err
    assert names == [".cryoorient", "abinitio.pt", "particles.star", "report.txt"]
    assert "CTF from the STAR file's columns" in stdout and "ab initio: 250 orientations" in stdout
    assert all(line.startswith("proceeding although") for line in err.splitlines())


def test_resume_writes_every_output(data, chained):
    out, _, _, (status, stdout, err) = chained
    assert status == 0, err
    for name in ("particles.star", "particles.cs", *MAPS, "fsc.png", "report.txt", "abinitio.pt", "global.pt",
                 "refine.pt"):
        assert (out / name).stat().st_size > 0, name
    for name in MAPS:
        volume, voxel = read_map(out / name)
        assert volume.shape == (BOX, BOX, BOX) and voxel == pytest.approx(PIXEL)
    assert "global search: start 'given" in stdout and "refine: 1 round, " in stdout and str(out) in stdout
    assert "global search iterations (band, half maps, changed, time, coarse to fine or full" in stdout
    report = (out / "report.txt").read_text()
    for text in ("ab initio: 250 orientations", "global search: start", "global search iterations", "restarts 0, iterations cap 10, rounds", "spectral gap", "resolution:", "timings:", "reused the checkpoints "
                 "of abinitio", "CTF from the STAR file's columns"):
        assert text in report, text
    truth = read_particles(data)
    images = read_particle_images(truth)
    for name in ("particles.star", "particles.cs"):
        est = read_particles(out / name)
        assert len(est) == P and np.isfinite(est.angles).all()
        assert np.isfinite(est.origin_x_angst).all() and np.isfinite(est.origin_y_angst).all()
        assert np.abs(est.origin_x_angst).max() > 0 and est.defocus_u is not None
        assert np.array_equal(read_particle_images(est), images)  # the image names still lead to the stack
    star = read_particles(out / "particles.star")
    assert set(np.unique(star.data["rlnRandomSubset"])) == {1, 2}
    assert len(star.data.columns) >= len(truth.data.columns)  # nothing of the input dropped
    # the origins written follow the planted ones (sub-pixel here: 0.85 correlation per axis), in RELION's sign
    for found, planted in ((star.origin_x_angst, truth.origin_x_angst), (star.origin_y_angst, truth.origin_y_angst)):
        assert np.corrcoef(found, planted)[0, 1] > 0.6


def test_interrupted_run_keeps_the_checkpoint(data, chained, capsys, monkeypatch):
    stopped = data.parent.parent / "stopped"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chain, "global_search", interrupted)
    assert main(["abinitio", str(data), "-o", str(stopped), "--resume", "--device", "cpu", "-q"]) == 130
    assert "keeps the checkpoints of abinitio (--resume" in capsys.readouterr().err
    assert (stopped / "abinitio.pt").exists() and not (stopped / "map.mrc").exists()


def test_existing_output_is_refused_without_force(data, chained, capsys):
    out = chained[0]
    before = (out / "particles.star").read_bytes()
    assert main(["abinitio", str(data), "-o", str(out), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "particles.star").read_bytes() == before


def test_refusals_write_nothing(data, chained, tmp_path, capsys):
    particles = read_particles(data)
    write_particles(tmp_path / "few.star", particles.subset(np.arange(100)))
    out = tmp_path / "out"
    assert main(["abinitio", str(tmp_path / "few.star"), "-o", str(out), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "need at least 107 images" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    # with --force the refusal comes before the directory it would replace is touched
    kept = chained[0].parent / "stopped"
    assert main(["abinitio", str(tmp_path / "few.star"), "-o", str(kept), "--force", "--device", "cpu", "-q"]) == 2
    assert "need at least" in capsys.readouterr().err and (kept / "abinitio.pt").exists()

    assert main(["abinitio", str(data), "-o", str(out), "--restarts", "-1", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--restarts must be at least 0" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["abinitio", str(data), "-o", str(out), "--coarse", "-1", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--coarse must be at least 0" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["abinitio", str(data), "-o", str(out), "--shift-grid", "-1", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--shift-grid must be at least 0" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["abinitio", str(data), "-o", str(out), "--minibatch", "0", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--minibatch must be at least 1" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["abinitio", str(data), "-o", str(out), "--iterations", "0", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--iterations must be at least 1" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["abinitio", str(data), "-o", str(out), "--margin", "-1", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--margin must be at least 0" in err and len(err.strip().splitlines()) == 1 and not out.exists()

    images = read_particle_images(particles).copy()
    images[7, 3, 4] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        write_stack(tmp_path / "nan.mrcs", images, PIXEL)
    assert main(["abinitio", str(tmp_path / "nan.mrcs"), "-o", str(out), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "images contain NaN or infinite values (the first: image 7)" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_particle_larger_than_the_box_is_refused(data, tmp_path, capsys):
    """The central 16² of the 32² images: density in the corners, refused naming the flag that proceeds."""
    write_stack(tmp_path / "cut.mrcs", read_particle_images(read_particles(data))[:, 8:24, 8:24], PIXEL)
    out = tmp_path / "out"
    assert main(["abinitio", str(tmp_path / "cut.mrcs"), "-o", str(out), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "reaches the image corners" in err and "--accept-corners" in err and not out.exists()
    assert len(err.strip().splitlines()) == 1


def test_ignore_ctf_says_so_and_drops_the_ctf(data, tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_chain(images, **kwargs):
        seen.update(kwargs)
        raise ValueError("stopped here")

    monkeypatch.setattr(chain, "run_chain", fake_chain)
    out = tmp_path / "out"
    assert main(["abinitio", str(data), "-o", str(out), "--ignore-ctf", "--accept-corners", "--rounds", "3",
                 "--restarts", "1", "--coarse", "16", "--shift-grid", "2", "--minibatch", "300", "--iterations", "20", "--margin", "10", "--seed", "4",
                 "--device", "cpu", "-q"]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["CTF columns present but ignored on request: the images are taken to be "
                                         "CTF-free"]
    assert "stopped here" in captured.err and not out.exists()  # a failed new run leaves nothing behind
    assert seen["ctf"] is None and seen["abinitio_options"]["accept"] == ("corners",)
    assert seen["refine_options"] == {"rounds": 3, "keep_best": True} and seen["global_options"] == {"restarts": 1, "coarse": 16, "shift_grid": 2, "minibatch": 300, "iterations": 20, "margin": 10} and seen["seed"] == 4 and seen["device"] == torch.device("cpu")
    assert seen["stop_after"] is None and seen["workdir"].resolve() == out.resolve()


def test_learned_comparison_is_passed_on_said_and_refused_when_it_is_not_one(data, tmp_path, capsys):
    from cryoorient.orientations import learned_comparison as lc

    torch.manual_seed(0)
    net = lc.ComparisonNet(crop=32, rings=15, angles=64, width=4, depth=2, features=2)
    lc.atomic_save({"config": net.config, "state": net.state_dict()}, tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    out = tmp_path / "out"
    base = ["abinitio", str(data), "-o", str(out), "--abinitio-only", "--device", "cpu", "-q"]
    assert main(base + ["--comparison", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err
    assert "not a learned comparison's weights file" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(base + ["--comparison", str(tmp_path / "weights.pt"), "--particle-diameter", "-5"]) == 2
    assert "--particle-diameter must be positive" in capsys.readouterr().err and not out.exists()

    status, printed, err = run(base + ["--comparison", str(tmp_path / "weights.pt")])
    assert status == 0, err
    assert "proceeding without --particle-diameter: the learned comparison sees the whole box" in printed
    report = (out / "report.txt").read_text()
    assert f"learned comparison {tmp_path / 'weights.pt'}" in report and "ab initio: 250 orientations" in report
    status, printed, err = run(["abinitio", str(data), "-o", str(tmp_path / "plain"), "--abinitio-only",
                                "--particle-diameter", "60", "--device", "cpu", "-q"])
    assert status == 0 and "--particle-diameter is unused" in printed


def test_particle_diameter_reaches_the_comparison_in_pixels(data, tmp_path, monkeypatch):
    from cryoorient.orientations import learned_comparison as lc

    net = lc.ComparisonNet(crop=16, rings=7, angles=16, width=2, depth=1, features=1)
    lc.atomic_save({"config": net.config, "state": net.state_dict()}, tmp_path / "weights.pt")
    seen = {}

    def fake_chain(images, **kwargs):
        seen.update(kwargs)
        raise ValueError("stopped here")

    monkeypatch.setattr(chain, "run_chain", fake_chain)
    assert main(["abinitio", str(data), "-o", str(tmp_path / "out"), "--comparison", str(tmp_path / "weights.pt"),
                 "--particle-diameter", "60", "--device", "cpu", "-q"]) == 2
    opts = seen["abinitio_options"]
    assert opts["comparison"] == str(tmp_path / "weights.pt") and opts["diameter"] == pytest.approx(60 / PIXEL)
