"""bench/abinitio_realistic.py --ambiguity on the built-in phantom: how often the data themselves place a
particle at a wrong orientation, measured against the true map, must come out near none at high SNR and
near all at an SNR where the images are noise."""

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "abinitio_realistic.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_abinitio_realistic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ambiguity_is_none_at_high_snr_and_nearly_all_in_noise(bench, tmp_path):
    argv = ["--device", "cpu", "--proteins", "phantom", "--P", "200", "--size", "48", "--snr", "10", "-40",
            "--seeds", "1", "--count", "200", "--bands", "8", "14", "--ambiguity", "--quiet", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = {(float(r["snr_db"]), int(r["band"])): r for r in csv.DictReader(open(tmp_path / "ambiguity.csv"))}
    assert sorted(rows) == [(-40.0, 8), (-40.0, 14), (10.0, 8), (10.0, 14)]
    for (snr, band), r in rows.items():
        wrong, beaten, error = float(r["wrong"]), float(r["beaten"]), float(r["E_OR"])
        assert 0.0 <= beaten <= wrong <= 1.0
        if snr > 0:  # the true orientation matches best; the error is the grid's (spacing 1.5/band rad)
            assert wrong == 0.0 and error < 1.5 / band
        else:  # noise: the best grid orientation is anywhere, and it beats the truth
            assert wrong > 0.9 and beaten > 0.9 and error > 1.5
    assert float(rows[10.0, 14]["E_OR"]) < float(rows[10.0, 8]["E_OR"])


def test_global_options_are_parsed_and_refused(bench):
    args = bench.parse_args(["--global", "joint_grid=0", "max_band=32", "sampling=1.25"])
    assert args.global_options == {"joint_grid": 0, "max_band": 32, "sampling": 1.25}
    with pytest.raises(SystemExit):
        bench.parse_args(["--global", "joint_grid"])


def test_end_to_end_runs_the_command_on_the_written_stack(bench, tmp_path):
    """--end-to-end: the case written as STAR + stack, `cryoorient abinitio` timed on it, its orientations read
    back against the truth; at 0 dB on the phantom they must be close to it. ``--global coarse=N shift_grid=N minibatch=N``
    reach the command (its report says so); options the command does not have are refused; ``--first-seed`` runs
    the seeds from there."""
    argv = ["--device", "cpu", "--proteins", "phantom", "--P", "300", "--size", "48", "--snr", "0", "--seeds", "1",
            "--first-seed", "3",
            "--rounds", "1", "--end-to-end", "--quiet", "--out", str(tmp_path)]
    for bad in (["--global", "max_band=32"], ["--first-seed", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv + bad)
    assert bench.main(argv + ["--global", "coarse=8", "shift_grid=2", "minibatch=64"]) == 0
    (row,) = csv.DictReader(open(tmp_path / "end_to_end.csv"))
    assert row["protein"] == "phantom" and row["comparison"] == "hand-made" and int(row["P"]) == 300
    assert int(row["seed"]) == 3
    assert float(row["E_OR"]) < 0.15 and float(row["wrong"]) < 0.05 and float(row["seconds_end_to_end"]) > 0
    stages = [float(row[k]) for k in ("explore_seconds", "recentre_seconds", "iterate_seconds")]
    assert min(stages) > 0 and sum(stages) <= float(row["global_seconds"]) + 0.2  # each rounded to 0.1 s
    assert 0 < float(row["abinitio_seconds"]) + float(row["global_seconds"]) <= float(row["command_seconds"])
    assert float(row["command_seconds"]) < float(row["seconds_end_to_end"])  # the outside time adds Python's start
    case = tmp_path / "phantom_0dB_seed3"
    assert not (case / "particles.mrcs").exists() and (case / "particles.star").is_file()
    assert (case / "out" / "map.mrc").is_file() and float(row["resolution_A"]) > 0
    assert ", coarse to fine 8, exploration shift grid 2, exploration minibatch 64" in (case / "out" / "report.txt").read_text()


def test_ambiguity_runs_on_a_map_whose_box_is_not_the_images(bench, shared_data, tmp_path):
    """5j0n's map (75³ at its 3.667 Å) is put in the images' 64² box before the working box: at 10 dB against the
    true map every particle's best grid orientation is the true one."""
    argv = ["--device", "cpu", "--map", str(shared_data / "maps" / "5j0n.mrc"), "--proteins", "5j0n", "--P", "60",
            "--size", "64", "--snr", "10", "--seeds", "1", "--count", "60", "--bands", "10", "--ambiguity", "--quiet",
            "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    (row,) = csv.DictReader(open(tmp_path / "ambiguity.csv"))
    assert float(row["wrong"]) == 0.0 and float(row["E_OR"]) < 1.5 / 10
