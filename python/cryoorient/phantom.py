"""cryoorient's built-in density: a deterministic, asymmetric pseudo-molecule.

The main job (``cryoorient demo``) needs a map without any download. This one is a
compact chain of pseudo-atoms (3.8 Å steps, like Cα atoms) wandering inside an
ellipsoid of semi-axes 26 × 19 × 14 Å, plus three dense "cofactor" clusters placed
off-centre, so that no rotation or reflection maps it onto itself. It is rendered
with :func:`cryoorient.io.density_from_atoms` (Gaussian atoms, σ = resolution/(π√2)).
"""

from __future__ import annotations

import numpy as np

from .io import density_from_atoms

SEMI_AXES = np.array([26.0, 19.0, 14.0])  # Å
CLUSTERS = np.array([[14.0, 6.0, -4.0], [-10.0, -9.0, 6.0], [2.0, 12.0, 8.0]])  # Å


def pseudo_molecule(n_residues: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atom positions (n, 3) as (x, y, z) in Å and weights (electron counts)."""
    if n_residues < 10:
        raise ValueError(f"n_residues must be at least 10; got {n_residues}")
    rng = np.random.default_rng(seed)
    xyz = np.zeros((n_residues, 3))
    for k in range(1, n_residues):
        for _ in range(100):  # rejection: stay inside the ellipsoid, avoid the last atoms
            step = rng.normal(size=3)
            cand = xyz[k - 1] + 3.8 * step / np.linalg.norm(step)
            inside = np.sum((cand / SEMI_AXES) ** 2) <= 1.0
            clash = k > 2 and np.min(np.linalg.norm(xyz[max(0, k - 12) : k - 1] - cand, axis=1)) < 3.8
            if inside and not clash:
                break
        xyz[k] = cand
    weights = np.full(n_residues, 6.0 * 7.0)  # ~ one residue's electrons on its Cα
    extra = [c + rng.normal(scale=1.5, size=(12, 3)) for c in CLUSTERS]
    xyz = np.concatenate([xyz, *extra])
    weights = np.concatenate([weights, np.full(12 * len(CLUSTERS), 30.0)])
    return xyz, weights


def default_density(box_size: int = 64, voxel_size: float = 2.0, resolution: float = 6.0, seed: int = 0) -> np.ndarray:
    """The built-in map, float32 [z, y, x], centred at voxel box_size//2 (sizes in Å)."""
    xyz, w = pseudo_molecule(seed=seed)
    return density_from_atoms(xyz, w, box_size=box_size, voxel_size=voxel_size, resolution=resolution)
