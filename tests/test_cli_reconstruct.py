import numpy as np
import pytest
import torch

from cryoorient.cli import main
from cryoorient.maps.fsc import fsc
from cryoorient.maps.transforms import mirror
from cryoorient.io import read_map, write_map
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.simulate import SimulationSettings, simulate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("recon")
    write_map(d / "truth.mrc", default_density(box_size=32, voxel_size=3.5, resolution=9.0), 3.5)
    settings = SimulationSettings(n=1500, size=32, shift_max=3.0, shift_distribution="triangular", ctf=True,
                                  defocus_min=5000.0, defocus_max=15000.0, snr_db=None, seed=1)
    simulate(d / "truth.mrc", d / "data", settings, progress=False)
    return d


def test_reconstruct_with_shifts_and_ctf_recovers_the_map(dataset, capsys):
    out = dataset / "map.mrc"
    rc = main(["reconstruct", str(dataset / "data" / "particles.star"), "-o", str(out),
               "--reference", str(dataset / "truth.mrc"), "--no-align", "-q"])
    assert rc == 0
    vol, voxel = read_map(out)
    truth, _ = read_map(dataset / "truth.mrc")
    assert voxel == pytest.approx(3.5)
    assert fsc(vol, truth, voxel).resolution(0.5) < 2 * 3.5 * 1.25
    assert "FSC 0.143" in capsys.readouterr().out
    assert (dataset / "map_fsc.png").stat().st_size > 0
    # refuses to overwrite, and says how to
    assert main(["reconstruct", str(dataset / "data" / "particles.star"), "-o", str(out), "-q"]) == 2
    assert "--force" in capsys.readouterr().err


def test_reconstruct_bad_inputs(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "missing.star"), "-o", str(tmp_path / "m.mrc"), "-q"]) == 2
    (tmp_path / "bad.star").write_text("not a star file\n")
    assert main(["reconstruct", str(tmp_path / "bad.star"), "-o", str(tmp_path / "m.mrc"), "-q"]) == 2
    assert not (tmp_path / "m.mrc").exists()
    assert "error" in capsys.readouterr().err



def test_reconstruct_against_a_mirrored_reference_reports_the_mirror_hand(dataset, tmp_path, capsys):
    write_map(tmp_path / "mirrored.mrc", mirror(torch.from_numpy(read_map(dataset / "truth.mrc")[0])).numpy(), 3.5)
    rc = main(["reconstruct", str(dataset / "data" / "particles.star"), "-o", str(tmp_path / "m.mrc"),
               "--reference", str(tmp_path / "mirrored.mrc"), "--device", "cpu", "-q"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "map: mirror hand (the mirror image of the reference)" in out
    same = float(out.split(" in the same hand")[0].split()[-1])
    mirrored = float(out.split(" in the mirror hand")[0].split()[-1])
    assert mirrored > 0.9 and mirrored > same + 0.05 and "nearly tied" not in out
    aligned, reference = read_map(tmp_path / "m.mrc")[0], read_map(tmp_path / "mirrored.mrc")[0]
    assert fsc(aligned, reference, 3.5).resolution(0.5) < 2 * 3.5 * 1.25  # the map written is the aligned one


def test_reconstruct_with_astra_unavailable_is_one_clear_error(dataset, tmp_path, capsys):
    from cryoorient.imaging.astra import unavailable

    if unavailable() is None:
        pytest.skip("ASTRA runs here")
    rc = main(["reconstruct", str(dataset / "data" / "particles.star"), "-o", str(tmp_path / "m.mrc"),
               "--method", "astra-cgls", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--method astra-cgls" in err and "astra" in err
    assert not (tmp_path / "m.mrc").exists()


@pytest.mark.cuda
def test_reconstruct_with_astra_cgls(dataset, tmp_path):
    from cryoorient.imaging.astra import unavailable

    if unavailable() is not None:
        pytest.skip(unavailable())
    rc = main(["reconstruct", str(dataset / "data" / "particles.star"), "-o", str(tmp_path / "m.mrc"),
               "--method", "astra-cgls", "--iterations", "20", "--reference", str(dataset / "truth.mrc"),
               "--no-align", "-q"])
    assert rc == 0
    vol, voxel = read_map(tmp_path / "m.mrc")
    assert fsc(vol, read_map(dataset / "truth.mrc")[0], voxel).resolution(0.5) < 2 * 3.5 * 1.6
