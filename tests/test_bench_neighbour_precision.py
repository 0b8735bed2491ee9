"""bench/neighbour_precision.py: ``--resolution`` renders the held-out models as EM maps of that resolution
(less power at high frequency than the default 2-px rendering, the same mass and pixel size), and a tiny
CPU run writes its table with that resolution in every row and the precisions within other angles."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
STRUCTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports abinitio_realistic beside it
    spec = importlib.util.spec_from_file_location("bench_neighbour_precision", BENCH / "neighbour_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _high_power(volume: np.ndarray) -> float:
    """Fraction of the map's Fourier power beyond a quarter of Nyquist."""
    f = np.abs(np.fft.fftn(volume)) ** 2
    k = np.sqrt(sum(g ** 2 for g in np.meshgrid(*[np.fft.fftfreq(s) for s in volume.shape], indexing="ij")))
    return float(f[k > 0.125].sum() / f.sum())


def test_resolution_renders_the_models_as_maps_of_that_resolution(bench):
    from cryoorient.imaging.simulate import load_volume

    base = ["--size", "32", "--proteins", "gen:0"] + (["1dix"] if (STRUCTURES / "1dix.cif").is_file() else [])
    for sharp, blurred in zip(bench.proteins(bench.parse_args(base + ["--structures", str(STRUCTURES)])),
                              bench.proteins(bench.parse_args(base + ["--structures", str(STRUCTURES),
                                                                      "--resolution", "12"]))):
        assert sharp[0] == blurred[0] and sharp[2] == blurred[2]  # the same protein at the same pixel size
        v1, v2 = (load_volume(s[1], 32, s[2])[0] for s in (sharp, blurred))
        assert v2.sum() == pytest.approx(v1.sum(), rel=0.02)
        assert _high_power(v2) < 0.5 * _high_power(v1)


def test_a_tiny_run_records_the_resolution(bench, tmp_path):
    args = ["--device", "cpu", "--P", "60", "--size", "32", "--snr", "-12", "--proteins", "gen:0",
            "--resolution", "10", "--within", "5", "180", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 1 and rows[0]["model_resolution_A"] == "10.0" and rows[0]["comparison"] == "handmade"
    assert 0 <= float(rows[0]["precision"]) <= 1
    at5, at180 = (float(x.split(":")[1]) for x in rows[0]["precision_within"].split())
    assert at5 <= float(rows[0]["precision"]) and at180 == 1.0  # every partner lies within 180°


@pytest.mark.parametrize("flags", [["--resolution", "0"], ["--resolution", "-4"], ["--within", "0"],
                                   ["--within", "5", "190"]])
def test_out_of_range_flags_are_refused(bench, flags, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(flags)
    assert e.value.code == 2 and flags[1] in capsys.readouterr().err
