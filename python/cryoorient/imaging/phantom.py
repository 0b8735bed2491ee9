"""cryoorient's built-in density: a deterministic, asymmetric pseudo-molecule.

The main job (``cryoorient demo``) needs a map without any download. This one is a
chain of pseudo-atoms (3.8 Å steps, like Cα atoms) folded into three domains of
different sizes (spheres of radius 17, 13 and 10 Å arranged in an L), plus three dense
"cofactor" clusters, so that no rotation or reflection maps it onto itself and its
projections differ clearly between views. It is rendered
with :func:`cryoorient.io.density_from_atoms` (Gaussian atoms, σ = resolution/(π√2)).
"""

from __future__ import annotations

import numpy as np

from ..io import density_from_atoms

DOMAINS = np.array([[0.0, 0.0, 0.0], [26.0, 4.0, 0.0], [-4.0, 22.0, 8.0]])  # domain centres, Å
RADII = np.array([17.0, 13.0, 10.0])  # Å
CLUSTERS = np.array([[10.0, -8.0, 10.0], [30.0, 10.0, -6.0], [-8.0, 26.0, 14.0]])  # Å


def pseudo_molecule(n_residues: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atom positions (n, 3) as (x, y, z) in Å and weights (electron counts).

    The chain is split over the domains in proportion to their volumes; each segment
    starts at its domain's centre and walks (3.8 Å steps, no step back onto the last
    atoms) without leaving its sphere.
    """
    if n_residues < 10:
        raise ValueError(f"n_residues must be at least 10; got {n_residues}")
    rng = np.random.default_rng(seed)
    share = RADII**3 / np.sum(RADII**3)
    bounds = np.concatenate([[0], np.cumsum(np.round(share * n_residues)).astype(int)])
    bounds[-1] = n_residues
    xyz = np.zeros((n_residues, 3))
    for d, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        xyz[lo] = DOMAINS[d]
        for k in range(lo + 1, hi):
            for _ in range(100):  # rejection: stay inside the domain, avoid the last atoms
                step = rng.normal(size=3)
                cand = xyz[k - 1] + 3.8 * step / np.linalg.norm(step)
                inside = np.linalg.norm(cand - DOMAINS[d]) <= RADII[d]
                clash = k > lo + 2 and np.min(np.linalg.norm(xyz[max(lo, k - 12) : k - 1] - cand, axis=1)) < 3.8
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
