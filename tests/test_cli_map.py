"""``cryoorient map``: box, pixel size, low-pass and hand of a map, and maps from atomic models; and
the issue's round trip model -> map -> simulate -> reconstruct."""

import math

import numpy as np
import pytest
import torch

from cryoorient.cli import main
from cryoorient.io import read_map, write_map
from cryoorient.maps.fsc import fsc
from cryoorient.maps.transforms import lowpass, mirror, resample_map


def _blob(n, voxel, sigma, centre):
    """Gaussian of width ``sigma`` Å at ``centre`` (x, y, z) Å from voxel n//2, sampled on an n³ grid."""
    ax = (np.arange(n) - n // 2) * voxel
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


def _pdb(path, atoms):
    """A minimal PDB file of carbon atoms at ``atoms`` (x, y, z) Å."""
    lines = [f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C"
             for i, (x, y, z) in enumerate(atoms)]
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return path


def test_pad_and_crop_round_trip_about_the_centre(tmp_path):
    vol = np.random.default_rng(0).normal(size=(21, 21, 21)).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, 1.5)
    assert main(["map", str(tmp_path / "m.mrc"), "--box", "32", "-o", str(tmp_path / "big.mrc"), "-q"]) == 0
    big, voxel = read_map(tmp_path / "big.mrc")
    assert big.shape == (32, 32, 32) and voxel == pytest.approx(1.5)
    assert big[16, 16, 16] == vol[10, 10, 10] and big[5].sum() == 0  # centre n//2 -> box//2, zeros around
    assert main(["map", str(tmp_path / "big.mrc"), "--box", "21", "-o", str(tmp_path / "back.mrc"), "-q"]) == 0
    np.testing.assert_array_equal(read_map(tmp_path / "back.mrc")[0], vol)


@pytest.mark.parametrize("old, new, n", [(1.0, 1.5, 48), (2.0, 1.0, 32), (1.0, 1.3, 45)])
def test_resampling_keeps_a_blob_s_width_and_centre(tmp_path, old, new, n):
    sigma, centre = 4.0, (2.0, -3.0, 1.5)
    write_map(tmp_path / "blob.mrc", _blob(n, old, sigma, centre), old)
    assert main(["map", str(tmp_path / "blob.mrc"), "--pixel-size", str(new), "-o", str(tmp_path / "r.mrc"), "-q"]) == 0
    out, voxel = read_map(tmp_path / "r.mrc")
    m = round(n * old / new)
    assert out.shape == (m,) * 3 and voxel == pytest.approx(n * old / m, rel=1e-6)  # the same extent
    # the closed form on the new grid: same centre (Å from the box centre) and width
    np.testing.assert_allclose(out, _blob(m, voxel, sigma, centre), atol=1e-4)


def test_resample_reports_the_voxel_it_could_keep():
    out, voxel = resample_map(torch.ones(10, 10, 10), 1.0, 3.0)  # 10/3 voxels do not fit: 3 of 10/3 Å
    assert out.shape == (3, 3, 3) and voxel == pytest.approx(10 / 3)
    assert torch.allclose(out, torch.ones(3, 3, 3), atol=1e-6)
    with pytest.raises(ValueError, match="new_voxel_size"):
        resample_map(torch.ones(4, 4, 4), 1.0, 0.0)


def test_flip_hand_once_mirrors_and_twice_is_the_identity(tmp_path):
    vol = _blob(24, 2.0, 3.0, (5.0, -2.0, 7.0)) + _blob(24, 2.0, 2.0, (-4.0, 3.0, -6.0))
    write_map(tmp_path / "m.mrc", vol, 2.0)
    assert main(["map", str(tmp_path / "m.mrc"), "--flip-hand", "-o", str(tmp_path / "f.mrc"), "-q"]) == 0
    flipped = read_map(tmp_path / "f.mrc")[0]
    np.testing.assert_array_equal(flipped, mirror(torch.from_numpy(vol)).numpy())
    assert not np.allclose(flipped, vol)
    assert main(["map", str(tmp_path / "f.mrc"), "--flip-hand", "-o", str(tmp_path / "ff.mrc"), "-q"]) == 0
    np.testing.assert_array_equal(read_map(tmp_path / "ff.mrc")[0], vol)


def test_lowpass_matches_the_library_filter(tmp_path):
    vol = np.random.default_rng(1).normal(size=(20, 20, 20)).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, 1.2)
    assert main(["map", str(tmp_path / "m.mrc"), "--lowpass", "6", "-o", str(tmp_path / "l.mrc"), "-q"]) == 0
    np.testing.assert_allclose(read_map(tmp_path / "l.mrc")[0], lowpass(torch.from_numpy(vol), 1.2, 6.0).numpy(),
                               atol=1e-6)


def test_model_to_map_has_the_requested_box_and_pixel(tmp_path):
    model = _pdb(tmp_path / "m.pdb", [(0.0, 0.0, 0.0), (6.0, 0.0, 0.0), (0.0, 9.0, 0.0), (0.0, 0.0, -12.0)])
    assert main(["map", str(model), "--box", "30", "--pixel-size", "1.5", "-o", str(tmp_path / "a.mrc"), "-q"]) == 0
    vol, voxel = read_map(tmp_path / "a.mrc")
    assert vol.shape == (30, 30, 30) and voxel == pytest.approx(1.5)
    assert vol.sum() == pytest.approx(4 * 6.0, rel=1e-3)  # every voxel holds its integral: 4 carbons, 6 e⁻ each
    # default box: the model's extent about its centre of mass and 2 × resolution (3 Å) on each side, even
    assert main(["map", str(model), "--pixel-size", "1.5", "-o", str(tmp_path / "b.mrc"), "-q"]) == 0
    vol, _ = read_map(tmp_path / "b.mrc")
    reach = max(np.linalg.norm(np.array(a) - np.array([1.5, 2.25, -3.0])) for a in
                [(0, 0, 0), (6, 0, 0), (0, 9, 0), (0, 0, -12)])
    assert vol.shape[0] == 2 * math.ceil((reach + 6.0) / 1.5)
    assert vol.sum() == pytest.approx(24.0, rel=1e-3)


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    write_map(tmp_path / "m.mrc", np.ones((8, 8, 8), np.float32), 1.0)
    model = _pdb(tmp_path / "m.pdb", [(0.0, 0.0, 0.0)])
    out = tmp_path / "o.mrc"
    for argv in ([str(tmp_path / "missing.mrc")], [str(tmp_path / "m.mrc"), "--box", "0"],
                 [str(tmp_path / "m.mrc"), "--box", "-4"], [str(tmp_path / "m.mrc"), "--pixel-size", "0"],
                 [str(tmp_path / "m.mrc"), "--resolution", "4"], [str(model)], [str(model), "--pixel-size", "-1"]):
        assert main(["map", *argv, "-o", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("cryoorient map: error:") and err.count("\n") == 1
        assert not out.exists()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    write_map(tmp_path / "m.mrc", np.ones((8, 8, 8), np.float32), 1.0)
    write_map(tmp_path / "o.mrc", np.zeros((4, 4, 4), np.float32), 1.0)
    assert main(["map", str(tmp_path / "m.mrc"), "--box", "6", "-o", str(tmp_path / "o.mrc")]) == 2
    assert "--force" in capsys.readouterr().err
    assert read_map(tmp_path / "o.mrc")[0].shape == (4, 4, 4)
    assert main(["map", str(tmp_path / "m.mrc"), "--box", "6", "-o", str(tmp_path / "o.mrc"), "--force", "-q"]) == 0
    assert read_map(tmp_path / "o.mrc")[0].shape == (6, 6, 6)
    assert main(["map", str(tmp_path / "m.mrc"), "--box", "6", "-o", str(tmp_path / "m.mrc"), "--force"]) == 2
    assert "input" in capsys.readouterr().err and read_map(tmp_path / "m.mrc")[0].shape == (8, 8, 8)


def test_model_to_map_to_particles_to_map_round_trip(shared_data, tmp_path, capsys):
    """Lysozyme (1AKI) -> a 48³ map at 2 Å -> 300 noiseless projections -> reconstruction with the true
    orientations. The map is band-limited near Nyquist (density at 2 × pixel: Gaussian atoms whose
    spectrum falls to 1/e at 4 Å) and 300 views cover every shell up to Nyquist (a shell of radius
    k pixels needs about π·k = 75 views at k = 24), so only the interpolation of projection and
    insertion (linear on the CPU, a few per cent) stands between the FSC and 1: FSC 0.5 must reach
    2.5 pixels (0.8 of Nyquist; it reaches Nyquist here)."""
    pixel, d = 2.0, tmp_path
    assert main(["map", str(shared_data / "structures" / "1aki.cif"), "--pixel-size", str(pixel), "--box", "48",
                 "-o", str(d / "model.mrc"), "-q"]) == 0
    assert main(["simulate", str(d / "model.mrc"), "-n", "300", "-o", str(d / "sim"), "--device", "cpu", "-q"]) == 0
    assert main(["reconstruct", str(d / "sim" / "particles.star"), "-o", str(d / "rec.mrc"), "--reference",
                 str(d / "model.mrc"), "--device", "cpu", "-q"]) == 0
    assert "same hand as the reference" in capsys.readouterr().out
    rec, voxel = read_map(d / "rec.mrc")
    truth, _ = read_map(d / "model.mrc")
    assert voxel == pytest.approx(pixel) and rec.shape == truth.shape == (48, 48, 48)
    assert fsc(rec, truth, voxel).resolution(0.5) <= 2.5 * pixel
