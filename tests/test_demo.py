import json
import math

from cryoorient.cli import main


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    voxel = summary["settings"]["voxel_size"]
    assert summary["fsc05_true_orientations_A"] < 1.5 * 2 * voxel  # the map from true orientations is sharp
    assert math.isfinite(summary["E_OR_rad"])  # the quick run is too small to be accurate
    report = (out / "report.md").read_text()
    for png in ("training/distances.png", "training/loss.png", "recovery_loss.png", "errors.png", "fsc.png",
                "errors_refined.png",
                "slices.png"):
        assert png in report and (out / png).stat().st_size > 0
    assert math.isfinite(summary["abinitio_E_OR_rad"]) and summary["abinitio_report"][0].startswith("ab initio:")
    assert "## Without a map: the ab initio chain" in report and summary["abinitio_report"][1] in report
    for f in ("truth.mrc", "reconstruction.mrc", "recovered.star", "data/particles.star", "abinitio.mrc"):
        assert (out / f).exists()
    assert "Report:" in capsys.readouterr().out
    # never overwrite without being asked
    assert main(["demo", "--quick", "-o", str(out), "-q"]) == 2
    assert "--force" in capsys.readouterr().err
    # the same seed gives the same run (network initialisation included); bitwise on the CPU only,
    # as CUDA kernels (cuDNN's convolutions, atomics) are not deterministic
    runs = [] if summary["device"] == "cpu" else ["first"]
    for name in runs + ["again"]:
        assert main(["demo", "--quick", "-o", str(tmp_path / name), "-q", "--device", "cpu"]) == 0
    first = summary if not runs else json.loads((tmp_path / "first" / "summary.json").read_text())
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert first["device"] == again["device"] == "cpu"
    assert again["E_OR_rad"] == first["E_OR_rad"]
    assert again["validation_L_DE"] == first["validation_L_DE"]
    assert again["abinitio_E_OR_rad"] == first["abinitio_E_OR_rad"]
