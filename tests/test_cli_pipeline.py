import numpy as np
import pytest
import torch

from cryoorient.cli import main
from cryoorient.geometry import euler_to_quat, quat_multiply, quat_to_euler, random_quaternions
from cryoorient.io import read_star, write_map, write_star
from cryoorient.learning.model import SiameseNet
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.simulate import SimulationSettings, simulate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    write_map(d / "truth.mrc", default_density(box_size=24, voxel_size=5.0, resolution=12.0), 5.0)
    simulate(d / "truth.mrc", d / "data", SimulationSettings(n=120, size=24, seed=3), progress=False)
    SiameseNet("paper", widths=(4, 8, 8, 8, 8, 8, 8)).save(d / "model.pt")
    return d


def test_recover_writes_a_star_with_angles_for_every_particle(dataset, capsys):
    out = dataset / "recovered.star"
    rc = main(["recover", str(dataset / "data" / "particles.star"), "--model", str(dataset / "model.pt"),
               "-o", str(out), "--steps", "50", "--restarts", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    rec, truth = read_star(out), read_star(dataset / "data" / "particles.star")
    assert rec.stack_paths == truth.stack_paths and list(rec.indices) == list(truth.indices)
    assert np.isfinite(rec.angles).all() and not np.allclose(rec.angles, truth.angles)
    assert np.all(rec.origin_x_angst == 0)
    assert (dataset / "recovered_loss.png").stat().st_size > 0
    assert "L_OR" in capsys.readouterr().out
    assert main(["recover", str(dataset / "data" / "particles.star"), "--model", str(dataset / "model.pt"),
                 "-o", str(out), "-q"]) == 2  # exists, no --force


def test_recover_accepts_a_bare_stack(dataset, tmp_path):
    out = tmp_path / "r.star"
    rc = main(["recover", str(dataset / "data" / "particles.mrcs"), "--model", str(dataset / "model.pt"),
               "-o", str(out), "--steps", "20", "--restarts", "1", "-q"])
    assert rc == 0 and len(read_star(out)) == 120


def test_recover_all_pairs(dataset, tmp_path, capsys):
    out = tmp_path / "a.star"
    rc = main(["recover", str(dataset / "data" / "particles.star"), "--model", str(dataset / "model.pt"),
               "-o", str(out), "--all-pairs", "--steps", "30", "--cutoff", "2.5", "-q"])
    assert rc == 0, capsys.readouterr().err
    rec = read_star(out)
    assert len(rec) == 120 and np.isfinite(rec.angles).all()
    assert "all-pairs L_OR" in capsys.readouterr().out


def _write_rotated(src, dst, transform):
    p = read_star(src)
    q = euler_to_quat(*torch.as_tensor(np.asarray(p.angles, dtype=np.float64)).unbind(1))
    rot, tilt, psi = quat_to_euler(transform(q))
    p.rot, p.tilt, p.psi = rot.numpy(), tilt.numpy(), psi.numpy()
    write_star(dst, p)


@pytest.mark.parametrize("mirrored", [False, True])
def test_evaluate_is_blind_to_a_global_rotation_and_reports_the_hand(dataset, tmp_path, capsys, mirrored):
    g = random_quaternions(1, generator=7, dtype=torch.float64)

    def transform(q):
        q = quat_multiply(g.expand_as(q), q)
        return q * torch.tensor([1.0, -1, -1, -1], dtype=q.dtype) if mirrored else q

    _write_rotated(dataset / "data" / "particles.star", tmp_path / "rot.star", transform)
    rc = main(["evaluate", str(tmp_path / "rot.star"), "--truth", str(dataset / "data" / "particles.star"),
               "--histogram", str(tmp_path / "h.png"), "--errors-csv", str(tmp_path / "e.csv")])
    out = capsys.readouterr().out
    assert rc == 0
    assert float(out.split("E_OR ")[1].split()[0]) < 1e-3
    assert "physical error" in out and "map: " in out  # the hand and physical error: tests/test_cli_evaluate.py
    assert (tmp_path / "h.png").exists() and len((tmp_path / "e.csv").read_text().splitlines()) == 121


def test_pipeline_bad_inputs(dataset, tmp_path, capsys):
    assert main(["recover", str(tmp_path / "none.star"), "--model", str(dataset / "model.pt"), "-o",
                 str(tmp_path / "o.star"), "-q"]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert main(["recover", str(dataset / "data" / "particles.star"), "--model", str(tmp_path / "junk.pt"), "-o",
                 str(tmp_path / "o.star"), "-q"]) == 2
    assert not (tmp_path / "o.star").exists()
    p = read_star(dataset / "data" / "particles.star")
    write_star(tmp_path / "few.star", p.subset(np.arange(10)))
    assert main(["evaluate", str(tmp_path / "few.star"), "--truth", str(dataset / "data" / "particles.star")]) == 2
    assert "different particles" in capsys.readouterr().err


def test_info_reports_the_build(capsys):
    from cryoorient import _ext

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"cuda_kernels_compiled  {_ext.cuda_compiled()}" in out
    assert ("sm_90" in out) == _ext.cuda_compiled()
    assert "gpu_usable" in out
    engine = next(line.split()[1] for line in out.splitlines() if line.startswith("allpairs_tensor_cores"))
    assert engine in (("wgmma", "mma.sync") if _ext.cuda_compiled() and torch.cuda.is_available() else ("None",))


def test_unknown_command_and_missing_arguments_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["recover"])
    assert e.value.code != 0
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code != 0


@pytest.mark.parametrize("name", ["gpu", "cuda"])
def test_bad_device_is_refused_before_any_work(tmp_path, capsys, name):
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    write_map(tmp_path / "map.mrc", default_density(box_size=16, voxel_size=5.0, resolution=12.0), 5.0)
    rc = main(["simulate", str(tmp_path / "map.mrc"), "-n", "4", "--size", "16", "-o", str(tmp_path / "out"),
               "--device", name])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--device" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
