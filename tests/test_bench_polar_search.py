"""bench/polar_search.py: one pass of the global search's matching, timed as the search runs it and with the
NCC divided before the maximum (the baseline), on a few 5j0n images on the CPU."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports its siblings, as when run from the repository root
    try:
        spec = importlib.util.spec_from_file_location("bench_polar_search", BENCH / "polar_search.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_both_variants_time_a_pass(bench, shared_data, capsys):
    argv = ["--device", "cpu", "--map", str(shared_data / "maps" / "5j0n.mrc"), "--size", "48", "--band", "8",
            "--P", "12", "--reps", "1", "--budget", "18", "--no-compile"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "12 particles of 48², band 8 (working box 24), 9 shift offsets" in out
    rows, J, L = map(int, re.search(r"(\d+) particles per batch; J (\d+) directions, L (\d+) angles", out).groups())
    assert rows == 2**18 // (L * J * 9) and 1 <= rows < 12  # a few particles' 9 × J × L candidates: several batches
    for name in ("peaks", "divide first"):
        seconds = float(re.search(rf"{name}: ([0-9.]+) s per pass", out).group(1))
        assert seconds > 0


def test_the_default_budget_is_the_searchs(bench, shared_data, capsys):
    argv = ["--device", "cpu", "--map", str(shared_data / "maps" / "5j0n.mrc"), "--size", "48", "--band", "8",
            "--P", "4", "--reps", "1", "--no-compile"]
    assert bench.main(argv) == 0
    rows, J, L = map(int, re.search(r"budget 2\^23: (\d+) particles per batch; J (\d+) directions, L (\d+) angles",
                                    capsys.readouterr().out).groups())
    assert rows == 2**23 // (L * J * 9)


def test_a_band_beyond_the_box_is_refused(bench, shared_data):
    with pytest.raises(SystemExit, match="--band must be in"):
        bench.main(["--device", "cpu", "--map", str(shared_data / "maps" / "5j0n.mrc"), "--size", "48", "--band", "21"])


def test_a_missing_map_skips(bench, tmp_path, capsys):
    assert bench.main(["--device", "cpu", "--map", str(tmp_path / "none.mrc")]) == 0
    assert capsys.readouterr().out == f"polar_search: not found: {tmp_path / 'none.mrc'}; skipped\n"
