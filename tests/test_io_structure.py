"""Tests for cryoorient.io.structure: densities of atomic models, centres, radii, chain symmetry."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import cryoorient.io as cio
from cryoorient.io import FormatError

STRUCTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "structures"


def _pdb_line(i, name, el, x, y, z):
    return (f"ATOM  {i:5d}  {name:<3s} GLY A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
            f"{1.0:6.2f}{0.0:6.2f}          {el:>2s}")


THREE_ATOMS = [("C", 1.0, 2.0, 3.0), ("N", 4.0, 0.0, -1.0), ("O", -2.0, 5.0, 2.0)]


def _write_pdb(path, atoms):
    path.write_text("\n".join(_pdb_line(i + 1, el, el, *xyz) for i, (el, *xyz) in enumerate(atoms))
                    + "\nEND\n")
    return path


def test_density_three_atoms_centred(tmp_path):
    pdb = _write_pdb(tmp_path / "three.pdb", THREE_ATOMS)
    vs = 0.8
    m = cio.density_from_model(pdb, box_size=32, voxel_size=vs, resolution=2.0)
    assert m.dtype == np.float32 and m.shape == (32, 32, 32)
    assert m.sum() == pytest.approx(6 + 7 + 8, rel=1e-4)  # electrons conserved
    com = cio.centre_of_mass(m, vs)
    assert np.all(np.abs(com) < 0.5 * vs)
    # each atom's electrons sit around its expected voxel, indexed [z, y, x]
    xyz = np.array([a[1:] for a in THREE_ATOMS])
    z = np.array([6, 7, 8.0])
    centre = (z[:, None] * xyz).sum(0) / z.sum()
    for (vx, vy, vz), charge in zip(np.round((xyz - centre) / vs + 16).astype(int), z):
        assert m[vz - 2:vz + 3, vy - 2:vy + 3, vx - 2:vx + 3].sum() == pytest.approx(charge, rel=0.01)


def test_density_voxel_size_and_width(tmp_path):
    pdb = _write_pdb(tmp_path / "one.pdb", [("C", 10.0, 12.0, 14.0)])
    res = 4.0
    sigma = res / (math.pi * math.sqrt(2))
    for vs in (0.5, 1.0):
        m = cio.density_from_model(pdb, 64, vs, res, center=False).astype(np.float64)
        peak = np.unravel_index(np.argmax(m), m.shape)
        assert peak == (round(14 / vs), round(12 / vs), round(10 / vs))
        prof = m.sum(axis=(0, 1))  # along x
        x = np.arange(64) * vs
        mean = (prof * x).sum() / prof.sum()
        var = (prof * (x - mean) ** 2).sum() / prof.sum()
        assert mean == pytest.approx(10.0, abs=1e-6)
        # voxel-integrated Gaussian: variance sigma^2 + vs^2 / 12 (Sheppard)
        assert var == pytest.approx(sigma ** 2 + vs ** 2 / 12, rel=1e-3)
    with pytest.warns(RuntimeWarning, match="beyond"):
        cio.density_from_model(pdb, 16, 1.0, res, center=False)


def test_density_methods_agree(tmp_path, monkeypatch):
    from cryoorient.io import structure

    pdb = _write_pdb(tmp_path / "three.pdb", THREE_ATOMS)
    maps = {}
    for method in ("stamp", "matmul"):
        monkeypatch.setattr(structure, "_choose_method", lambda a, k, n, m=method: m)
        maps[method] = cio.density_from_model(pdb, 24, 1.0, 3.0)
    np.testing.assert_allclose(maps["stamp"], maps["matmul"], atol=1e-6 * maps["stamp"].max())


def test_density_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.cif"):
        cio.density_from_model(tmp_path / "absent.cif", 16, 1.0, 3.0)
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\nthis is not mmcif\n")
    with pytest.raises(FormatError):
        cio.density_from_model(bad, 16, 1.0, 3.0)
    with pytest.raises(ValueError, match="resolution"):
        cio.density_from_model(_write_pdb(tmp_path / "a.pdb", THREE_ATOMS), 16, 1.0, 0.0)


def test_centre_of_mass_helper():
    m = np.zeros((8, 10, 12))
    m[4, 5, 6] = 1.0  # exactly the box centre
    np.testing.assert_allclose(cio.centre_of_mass(m, 2.0), [0, 0, 0])
    m[4, 5, 6], m[1, 7, 9] = 0.0, 3.0
    np.testing.assert_allclose(cio.centre_of_mass(m, 2.0), [6.0, 4.0, -6.0])  # (x, y, z) Å


def _structure(name):
    path = STRUCTURES / f"{name}.cif"
    if not path.is_file():
        pytest.skip(f"shared structure {path} not available")
    return path


def test_density_real_cif_centred():
    path = _structure("1aki")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the box must hold the whole model
        m = cio.density_from_model(path, box_size=64, voxel_size=1.2, resolution=4.0)
    assert m.shape == (64, 64, 64) and m.dtype == np.float32
    assert np.all(np.abs(cio.centre_of_mass(m, 1.2)) < 0.5 * 1.2)
    import gemmi

    st = gemmi.read_structure(str(path))  # a gemmi.Structure works too
    np.testing.assert_allclose(cio.density_from_model(st, 64, 1.2, 4.0), m)


def test_density_large_model_is_fast():
    path = _structure("3wip")  # ~17k atoms
    t0 = time.perf_counter()
    m = cio.density_from_model(path, box_size=128, voxel_size=1.4, resolution=4.0)
    elapsed = time.perf_counter() - t0
    xyz, w = cio.model_atoms(path)
    assert len(w) > 15000
    assert np.all(np.abs(cio.centre_of_mass(m, 1.4)) < 0.5 * 1.4)
    assert elapsed < 10.0


def test_radius_of_gyration():
    xyz = np.array([[-3.0, 0, 0], [3.0, 0, 0], [0, 5.0, 0]])
    assert cio.radius_of_gyration(xyz[:2], [2.0, 2.0]) == pytest.approx(3.0)
    # weighted: centre at y = 1 (weights 2, 2, 1); mean squared distance (2·(9+1) + 2·(9+1) + 16) / 5
    assert cio.radius_of_gyration(xyz, [2.0, 2.0, 1.0]) == pytest.approx(math.sqrt(56 / 5))
    with pytest.raises(ValueError, match="weight"):
        cio.radius_of_gyration(xyz, [1.0, 1.0])
    with pytest.raises(ValueError, match="weight"):
        cio.radius_of_gyration(xyz, [0.0, 0.0, 0.0])


def _chains_pdb(path, chains):
    """PDB of CA-only chains: ``chains`` maps a chain id to (residue name, (n, 3) Å coordinates)."""
    lines, k = [], 0
    for cid, (res, xyz) in chains.items():
        for i, (x, y, z) in enumerate(xyz):
            k += 1
            lines.append(f"ATOM  {k:5d}  CA  {res} {cid}{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C")
        lines.append("TER")
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def test_repeated_chain_symmetry(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 3)) * 4.0 + [10.0, 0, 0]
    c2 = a * [-1.0, -1.0, 1.0]  # A turned by 180° about z
    assert cio.repeated_chain_symmetry(_chains_pdb(tmp_path / "c2.pdb", {"A": ("ALA", a), "B": ("ALA", c2)})) > 0.99
    # the same two chains one beside the other (related by a translation) and a third, different chain:
    # moving the model by the A→B superposition only puts A onto B
    moved = _chains_pdb(tmp_path / "p1.pdb", {"A": ("ALA", a), "B": ("ALA", a + [40.0, 0, 0]),
                                               "C": ("GLY", rng.normal(size=(12, 3)) * 4.0 - [30.0, 0, 0])})
    assert 0.2 < cio.repeated_chain_symmetry(moved) < 0.5
    assert cio.repeated_chain_symmetry(_chains_pdb(tmp_path / "one.pdb", {"A": ("ALA", a)})) == 0.0


def test_repeated_chain_symmetry_shared_models():
    assert cio.repeated_chain_symmetry(_structure("5eil")) > 0.9  # designed homotrimer (C3)
    assert cio.repeated_chain_symmetry(_structure("1aki")) == 0.0  # lysozyme, one chain
