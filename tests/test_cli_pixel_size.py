"""--pixel-size: a STAR file without a pixel size is usable by reconstruct, refine and recover with it,
and refused without it (one error line naming --pixel-size, exit 2, nothing written)."""

import numpy as np
import pytest

from cryoorient.cli import main
from cryoorient.io import read_map, read_star, write_map
from cryoorient.learning.model import SiameseNet
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.simulate import SimulationSettings, simulate

PIXEL = 5.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Simulated particles, and the same as a pre-3.1 STAR file of image names and angles only."""
    d = tmp_path_factory.mktemp("pixel")
    write_map(d / "truth.mrc", default_density(box_size=24, voxel_size=PIXEL, resolution=12.0), PIXEL)
    simulate(d / "truth.mrc", d / "sim", SimulationSettings(n=60, size=24, seed=2), progress=False)
    p = read_star(d / "sim" / "particles.star")
    rows = [f"{name} {r:.6f} {t:.6f} {s:.6f}" for name, (r, t, s) in zip(p.image_names, p.angles)]
    header = "data_particles\n\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n_rlnAngleTilt #3\n_rlnAnglePsi #4\n"
    (d / "sim" / "bare.star").write_text(header + "\n".join(rows) + "\n")
    SiameseNet("paper", widths=(4, 8, 8, 8, 8, 8, 8)).save(d / "model.pt")
    return d


def _commands(d, out):
    star = str(d / "sim" / "bare.star")
    return {
        "reconstruct": ["reconstruct", star, "-o", str(out / "map.mrc")],
        "refine": ["refine", star, "--map", str(d / "truth.mrc"), "-o", str(out / "refined.star"), "--rounds", "0",
                   "--same-frame"],
        "recover": ["recover", star, "--model", str(d / "model.pt"), "-o", str(out / "recovered.star"), "--steps", "5",
                    "--restarts", "1", "--no-resolve-frame"],
    }


@pytest.mark.parametrize("command", ["reconstruct", "refine", "recover"])
def test_a_star_without_pixel_size_needs_the_flag(data, tmp_path, capsys, command):
    argv = _commands(data, tmp_path)[command] + ["--device", "cpu", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pixel-size" in err and "bare.star" in err
    assert list(tmp_path.iterdir()) == []
    assert main(argv + ["--pixel-size", str(PIXEL)]) == 0, capsys.readouterr().err
    written = sorted(tmp_path.iterdir())[0]
    if written.suffix == ".mrc":
        assert read_map(written)[1] == pytest.approx(PIXEL)
    else:
        np.testing.assert_allclose(read_star(written, require_pixel_size=True).pixel_size, PIXEL)


@pytest.mark.parametrize("command", ["reconstruct", "refine"])
def test_reference_map_voxel_size_is_checked_against_the_particles(data, tmp_path, capsys, command):
    """A reference at another voxel size is refused (naming `cryoorient map`); a zero cell takes the particles'."""
    volume, _ = read_map(data / "truth.mrc")
    star = str(data / "sim" / "particles.star")
    for voxel, expected in ((PIXEL * 1.5, 2), (PIXEL, 0)):
        ref = tmp_path / f"ref_{voxel}.mrc"
        write_map(ref, volume, voxel)
        if expected == 0:  # a header with a zero cell
            import mrcfile

            with mrcfile.open(ref, mode="r+") as m:
                m.voxel_size = 0.0
        out = tmp_path / f"out_{voxel}"
        argv = {"reconstruct": ["reconstruct", star, "--reference", str(ref), "-o", str(out) + ".mrc"],
                "refine": ["refine", star, "--map", str(ref), "-o", str(out) + ".star", "--rounds", "0",
                           "--same-frame"]}[command]
        assert main(argv + ["--device", "cpu", "-q"]) == expected
        err = capsys.readouterr().err
        if expected == 2:
            assert "cryoorient map" in err and err.count("\n") == 1
            assert not list(tmp_path.glob("out_*"))
