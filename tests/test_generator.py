"""cryoorient.learning.generator and .synthetic: procedural proteins, deterministic per seed, with
protein-like numbers, and the training proteins (held-out ones left out, generated ones rendered)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from cryoorient.geometry import random_quaternions
from cryoorient.imaging.simulate import SimulationSettings
from cryoorient.io import centre_of_mass, density_from_atoms, radius_of_gyration
from cryoorient.learning.generator import (SHAPES, principal_radii, protein_density, random_protein,
                                           shape_miss)
from cryoorient.learning.synthetic import EVALUATION_SEEDS, HELD_OUT, synthetic_renderers, training_models


@pytest.fixture(scope="module")
def models():
    """Two seeds × three shapes × two sizes."""
    return [random_protein(seed, n, shape) for seed in (1, 2) for shape in SHAPES for n in (120, 320)]


def test_same_seed_same_model_other_seed_other_model():
    a, b, c = random_protein(7), random_protein(7), random_protein(8)
    for field in ("coords", "elements", "b_factors", "residue", "ca", "domain"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert a.secondary == b.secondary and a.shape == b.shape
    assert a.n_residues != c.n_residues or not np.array_equal(a.coords, c.coords)
    d = random_protein(7, n_residues=150, shape="flat")
    assert d.n_residues == 150 and d.shape == "flat" and not np.array_equal(d.coords[:10], a.coords[:10])


def test_chain_geometry(models):
    """Cα–Cα 3.8 Å along the chain, no other Cα pair nearer than 4 Å; helix i→i+4 6.2 Å; strand
    Cα(i)–Cα(i+2) twice a 3.3–3.5 Å rise."""
    for m in models:
        ca = m.coords[m.ca]
        assert len(m.secondary) == m.n_residues == len(m.domain)
        bond = np.linalg.norm(np.diff(ca, axis=0), axis=1)
        assert bond.min() > 3.78 and bond.max() < 3.84
        d = squareform(pdist(ca))
        assert d[np.triu_indices(len(ca), 2)].min() >= 3.99
        ss = np.array(list(m.secondary))
        helix5 = [i for i in range(len(ss) - 4) if (ss[i : i + 5] == "H").all()]
        strand3 = [i for i in range(len(ss) - 2) if (ss[i : i + 3] == "E").all()]
        if helix5:
            assert np.allclose(d[helix5, np.array(helix5) + 4], 6.2, atol=0.05)
        if strand3:
            assert np.all((d[strand3, np.array(strand3) + 2] >= 6.6) & (d[strand3, np.array(strand3) + 2] <= 7.0))
    kinds = "".join(m.secondary for m in models)
    assert min(kinds.count(k) / len(kinds) for k in "HEL") > 0.1  # helices, strands and loops all occur


def test_globular_radius_of_gyration():
    """Rg within ±25 % of 2.2·N^0.38 Å (globular proteins) over 80–700 residues."""
    for seed, n in ((3, 80), (4, 200), (5, 450), (6, 700)):
        m = random_protein(seed, n, "globular")
        rg = radius_of_gyration(m.coords, m.weights)
        assert rg == pytest.approx(2.2 * n ** 0.38, rel=0.25)


def test_shapes_give_their_axis_ratios(models):
    """Inertia ellipsoid: elongated r1/r3 ≥ 2 (and r1/r2 ≥ 1.5), flat r2/r3 ≥ 1.6 with r1/r2 ≤ 1.5,
    globular r1/r3 ≤ 1.5."""
    for m in models:
        r1, r2, r3 = principal_radii(m.coords, m.weights)
        assert shape_miss(m.shape, np.array([r1, r2, r3])) == 0
        if m.shape == "elongated":
            assert r1 / r3 >= 2 and r1 / r2 >= 1.5
        elif m.shape == "flat":
            assert r2 / r3 >= 1.6 and r1 / r2 <= 1.5
        else:
            assert r1 / r3 <= 1.5
    assert shape_miss("globular", np.array([2.0, 1.0, 1.0])) == pytest.approx(0.5)


def test_atoms_and_b_factors(models):
    """≈ 52 electrons per residue (crystal structures without hydrogens: 51–53); B in 20–80 Å²,
    higher on loops and at the surface than in the core."""
    for m in models:
        per_residue = m.weights.sum() / m.n_residues
        assert 45 < per_residue < 60
        assert set(m.elements) <= {"C", "N", "O", "S"}
        assert m.b_factors.min() >= 20 and m.b_factors.max() <= 80
        b = m.b_factors[m.ca]
        loop = np.array([s == "L" for s in m.secondary])
        assert b[loop].mean() > b[~loop].mean() + 5
        ca = m.coords[m.ca]
        neighbours = (squareform(pdist(ca)) < 10).sum(1)
        assert np.corrcoef(neighbours, b)[0, 1] < -0.5
        assert np.allclose((m.weights[:, None] * m.coords).sum(0) / m.weights.sum(), 0, atol=1e-9)


def test_density_integrates_to_the_electrons_and_is_centred():
    m = random_protein(11, 200, "globular")
    vol, px = protein_density(m, 64, 2.0)
    assert vol.shape == (64, 64, 64) and vol.dtype == np.float32 and px == 2.0
    assert vol.sum() == pytest.approx(m.weights.sum(), rel=0.01)
    assert np.abs(centre_of_mass(vol, px)).max() < 0.1 * px
    sharp, _ = protein_density(m, 64, 2.0, b_factors=False)
    assert sharp.sum() == pytest.approx(vol.sum(), rel=1e-4) and sharp.max() > 1.1 * vol.max()


def test_b_factor_widens_an_atom_by_b_over_8_pi_squared():
    """One atom: per-axis variance σ² + B/(8π²) Å², σ = resolution/(π√2), plus the voxel's 1/12."""
    vs, res, b = 0.5, 2.0, 60.0
    vol = density_from_atoms(np.zeros((1, 3)), np.ones(1), 48, vs, res, b_factors=np.array([b]))
    x = (np.arange(48) - 24) * vs
    var = (vol.sum(axis=(0, 1)) * x ** 2).sum() / vol.sum()
    expected = (res / (math.pi * math.sqrt(2))) ** 2 + b / (8 * math.pi ** 2) + vs ** 2 / 12
    assert var == pytest.approx(expected, rel=0.01)
    with pytest.raises(ValueError, match="b_factors"):
        density_from_atoms(np.zeros((1, 3)), np.ones(1), 8, vs, res, b_factors=np.array([-1.0]))


def test_refusals():
    with pytest.raises(ValueError, match="seed"):
        random_protein(-1)
    with pytest.raises(ValueError, match="shape"):
        random_protein(0, shape="round")
    with pytest.raises(ValueError, match="n_residues"):
        random_protein(0, n_residues=10)


STRUCTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "structures"


@pytest.mark.skipif(not (STRUCTURES / "5h73.cif").is_file(), reason="no structure library")
def test_training_models_leave_the_held_out_out(tmp_path):
    for stem in ("1aki", "5h73"):
        (tmp_path / f"{stem}.cif").symlink_to(STRUCTURES / f"{stem}.cif")
    assert "5h73" in HELD_OUT and [p.stem for p in training_models(tmp_path)] == ["1aki"]
    (tmp_path / "1aki.cif").unlink()
    with pytest.raises(ValueError, match="held-out"):
        training_models(tmp_path)


def test_synthetic_renderers():
    settings = SimulationSettings(n=1, size=32, ctf=True, snr_db=-12.0, seed=0)
    renderers = synthetic_renderers([3, 11], settings, particle_rg=(5.0,), pilot=16)  # 99 and 111 residues
    assert len(renderers) == 2
    img = renderers[0](random_quaternions(3, generator=0), torch.Generator().manual_seed(0))
    assert img.shape == (3, 32, 32) and bool(torch.isfinite(img).all())
    m = random_protein(3)
    assert renderers[0].pixel_size == pytest.approx(radius_of_gyration(m.coords, m.weights) / 5.0)
    with pytest.raises(ValueError, match="training seeds"):
        synthetic_renderers([EVALUATION_SEEDS], settings, pixel_size=2.0)
