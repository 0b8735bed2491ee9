"""bench/paper: the paper-reproduction scripts on tiny CPU settings (a 16³ blob map, a tiny
network, one or two epochs) write their figures and their rows of the results table."""

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from cryoorient.io import read_star, write_map

from _blobs import blob_volume

PAPER_DIR = Path(__file__).resolve().parents[1] / "bench" / "paper"
TINY_SNN = ["--device", "cpu", "--n", "90", "--size", "16", "--batch-size", "8", "--val-pairs", "40",
            "--widths", "4", "8", "8", "--restarts", "1", "--recover-steps", "40", "--quiet"]


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_paper_{name}", PAPER_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results():
    return load("_results")


@pytest.fixture
def blob_map(tmp_path):
    path = tmp_path / "blobs.mrc"
    write_map(path, blob_volume(size=16, n_blobs=10, seed=3), voxel_size=5.0)
    return path


def rows_by_id(results, table):
    rows = results.read_table(table)
    assert len({r["experiment"] for r in rows}) == len(rows), "duplicate experiment ids"
    return {r["experiment"]: r for r in rows}


def test_fig5_rows_figure_and_rerun_replaces(tmp_path, results):
    fig5 = load("fig5")
    out = tmp_path / "out"
    base = ["--device", "cpu", "-P", "40", "--steps", "150", "--out", str(out)]
    assert fig5.main(base + ["--variances", "0", "0.8"]) == 0
    assert (out / "fig5.png").stat().st_size > 0
    rows = rows_by_id(results, out / "results.csv")
    assert set(rows) == {"fig5/sigma2=0/P=40", "fig5/sigma2=0.8/P=40"}
    exact, noisy = rows["fig5/sigma2=0/P=40"], rows["fig5/sigma2=0.8/P=40"]
    assert float(exact["E_OR_rad"]) < 0.05 < float(noisy["E_OR_rad"])  # exact distances: exact recovery
    assert float(exact["L_OR"]) < float(noisy["L_OR"])
    assert float(noisy["paper_E_OR_rad"]) == 0.2 and float(exact["paper_E_OR_rad"]) == 0.0
    assert noisy["device"] == "cpu" and noisy["command"].startswith("python bench/paper/fig5.py")
    # a re-run replaces its row in place and leaves the others alone
    assert fig5.main(base + ["--variances", "0.8", "--seed", "1"]) == 0
    again = rows_by_id(results, out / "results.csv")
    assert list(again) == list(rows)
    assert again["fig5/sigma2=0/P=40"] == exact
    assert again["fig5/sigma2=0.8/P=40"]["E_OR_rad"] != noisy["E_OR_rad"]
    assert "--seed 1" in again["fig5/sigma2=0.8/P=40"]["command"]
    assert not list(out.glob(".*tmp"))  # the atomic write leaves no temporary file


def test_fig7_both_panels(tmp_path, results, blob_map):
    fig7 = load("fig7")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--map", str(blob_map), "--shifts", "0", "2", "--sigma2", "0", "4", "--epochs", "2",
            "--steps-per-epoch", "2", "--out", str(out), "--workdir", str(work), *TINY_SNN]
    assert fig7.main(argv) == 0
    assert (out / "fig7a_shift.png").stat().st_size > 0 and (out / "fig7b_noise.png").stat().st_size > 0
    rows = rows_by_id(results, out / "results.csv")
    assert list(rows) == ["fig7a/shift=0", "fig7a/shift=2", "fig7b/sigma2=0", "fig7b/sigma2=4"]
    for r in rows.values():
        for key in ("E_OR_rad", "L_OR", "L_DE", "seconds"):
            assert math.isfinite(float(r[key])), (r["experiment"], key)
    # the unperturbed setting is trained once and reported in both panels
    assert rows["fig7a/shift=0"]["E_OR_rad"] == rows["fig7b/sigma2=0"]["E_OR_rad"]
    assert float(rows["fig7b/sigma2=0"]["paper_E_OR_rad"]) == 0.16 and not rows["fig7b/sigma2=4"]["paper_E_OR_rad"]
    # each setting simulated its own perturbation: shifts only in (a), noise only in (b)
    shifted = read_star(work / "fig7-shift2-sigma20" / "dataset" / "particles.star")
    assert np.abs(shifted.origin_x_angst).max() > 0
    unshifted = read_star(work / "fig7-shift0-sigma24" / "dataset" / "particles.star")
    assert "rlnOriginXAngst" not in unshifted.data or np.abs(unshifted.origin_x_angst).max() == 0
    assert (work / "fig7-shift0-sigma24" / "paper-fly" / "history.json").is_file()


def test_sec35_reconstruction_rows(tmp_path, results, blob_map, monkeypatch):
    import cryoorient.orientations.frame
    import cryoorient.maps.transforms

    # Shorter searches of the image frame and of the map alignment (tested in test_frame.py and
    # test_maps.py): ~40 s -> ~5 s here; snn_paper looks both functions up when it reconstructs.
    monkeypatch.setattr(cryoorient.orientations.frame, "resolve_frame",
                        functools.partial(cryoorient.orientations.frame.resolve_frame, n_candidates=20, local=10))
    monkeypatch.setattr(cryoorient.maps.transforms, "align_map",
                        functools.partial(cryoorient.maps.transforms.align_map, n_search=200, refine_steps=10))
    sec35 = load("sec35")
    out = tmp_path / "out"
    argv = ["--map", str(blob_map), "--sigma2", "16", "--epochs", "1", "--steps-per-epoch", "2",
            "--out", str(out), "--workdir", str(tmp_path / "work"), *TINY_SNN]
    assert sec35.main(argv) == 0
    assert (out / "sec35_fsc.png").stat().st_size > 0
    row = rows_by_id(results, out / "results.csv")["sec3.5/sigma2=16"]
    res05, res0143, true05 = (float(row[k]) for k in ("fsc05_A", "fsc0143_A", "fsc05_true_A"))
    assert 2 * 5.0 - 1e-6 <= true05 <= res05  # true orientations: at least as sharp, never past Nyquist
    assert res0143 <= res05
    assert float(row["paper_fsc05_A"]) == 15.2 and float(row["paper_E_OR_rad"]) == 0.25
    assert math.isfinite(float(row["E_OR_rad"])) and math.isfinite(float(row["L_DE"]))


def test_scripts_refuse_bad_input(tmp_path, capsys, blob_map):
    fig7, sec35 = load("fig7"), load("sec35")
    missing = ["--map", str(tmp_path / "nope.mrc"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert fig7.main(missing) == 2 and "map not found" in capsys.readouterr().err
    assert sec35.main(missing) == 2 and "map not found" in capsys.readouterr().err
    small = ["--map", str(blob_map), "--out", str(tmp_path / "o"), "--device", "cpu", "--size", "12"]
    assert sec35.main(small) == 2 and "smaller than the map box" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fig7.main(["--map", str(blob_map), "--protocol", "noise"])
    assert "set by fig7.py" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_table_merges_orders_and_renders(tmp_path, results):
    table = load("table")
    run = tmp_path / "run.csv"
    results.upsert(run, [results.make_row("sec3.5/noiseless", "noiseless", paper="sec3.5/noiseless", device="cpu",
                                          command="python bench/paper/sec35.py", E_OR_rad=0.09, fsc05_A=8.25)])
    results.upsert(run, [results.make_row("fig5/sigma2=0.8/P=1650", "σ² = 0.8, P = 1,650", paper="fig5/sigma2=0.8",
                                          device="cpu", command="python bench/paper/fig5.py", E_OR_rad=0.07)])
    assert [r["experiment"] for r in results.read_table(run)] == ["fig5/sigma2=0.8/P=1650", "sec3.5/noiseless"]
    main_table, md = tmp_path / "results.csv", tmp_path / "RESULTS.md"
    assert table.main([str(run), "--table", str(main_table), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| sec3.5/noiseless | noiseless | 0.09 | 0.2 |" in text and "| 8.25 | 12.2 |" in text
    assert "python bench/paper/fig5.py" in text
    assert table.main([str(tmp_path / "absent.csv"), "--table", str(main_table), "--markdown", str(md)]) == 2
    with pytest.raises(ValueError, match="unknown column"):
        results.upsert(run, [{"experiment": "fig5/x", "E_OR": 1.0}])
    with pytest.raises(ValueError, match="unknown metric"):
        results.make_row("fig5/x", "x", paper=None, device="cpu", command="", EOR=1.0)
