"""``cryoorient evaluate`` on planted cases: E_OR forgives every O(4) ambiguity, the physical error
only a global rotation of the map and its hand, and the hand reported is the map's."""

import numpy as np
import pytest
import torch

from cryoorient.cli import main
from cryoorient.geometry import quat_multiply, quat_to_euler, random_quaternions
from cryoorient.io import Particles, write_particles

N, PIXEL, BOX = 200, 2.0, 32
J = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)  # A ↦ J·A·J: the mirror image's orientations


@pytest.fixture(scope="module")
def truth():
    return random_quaternions(N, generator=11, dtype=torch.float64)


def _write(path, q):
    rot, tilt, psi = (a.numpy() for a in quat_to_euler(q))
    write_particles(path, Particles.create("s.mrcs", np.arange(N), PIXEL, BOX, root=path.parent, rot=rot, tilt=tilt,
                                           psi=psi))
    return str(path)


def _number(out: str, label: str) -> float:
    return float(out.split(label)[1].split()[0])


def _evaluate(tmp_path, truth, estimate, capsys, suffix=".star"):
    rc = main(["evaluate", _write(tmp_path / f"est{suffix}", estimate), "--truth",
               _write(tmp_path / f"truth{suffix}", truth), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    return _number(out, "E_OR "), _number(out, "physical error "), out


def test_a_global_rotation_of_the_map_is_no_error(tmp_path, truth, capsys):
    b = random_quaternions(1, generator=2, dtype=torch.float64)
    e_or, phys, out = _evaluate(tmp_path, truth, quat_multiply(truth, b.expand_as(truth)), capsys)
    assert e_or < 1e-3 and phys < 1e-3
    assert "map: same hand as the truth" in out


@pytest.mark.parametrize("suffix", [".star", ".cs"])
def test_the_mirror_image_is_the_mirror_hand(tmp_path, truth, capsys, suffix):
    b = random_quaternions(1, generator=3, dtype=torch.float64)
    estimate = quat_multiply(truth * J, b.expand_as(truth))
    e_or, phys, out = _evaluate(tmp_path, truth, estimate, capsys, suffix)
    assert e_or < 1e-3 and phys < 1e-3
    assert "map: mirror hand" in out
    assert _number(out, "in the same hand the physical error is ") > 0.5  # the other hand does not fit


@pytest.mark.parametrize("case", ["left factor", "transpose"])
def test_ambiguities_of_distances_only_are_physical_errors(tmp_path, truth, capsys, case):
    """A ↦ C·A (every particle frame turned alike) and A ↦ Aᵀ keep all pairwise distances, so E_OR
    forgives them; they are no rotation or mirror image of the map, so the physical error does not."""
    if case == "left factor":
        c = random_quaternions(1, generator=4, dtype=torch.float64)
        estimate = quat_multiply(c.expand_as(truth), truth)
    else:
        estimate = truth * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    e_or, phys, out = _evaluate(tmp_path, truth, estimate, capsys)
    assert e_or < 1e-3 and phys > 0.3
    assert "flipped" not in out and "handedness" not in out
