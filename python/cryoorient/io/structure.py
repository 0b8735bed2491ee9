"""Simulated density maps from atomic models (mmCIF/PDB via ``gemmi``).

Conventions
-----------
* Output maps are float32 ``[z, y, x]`` with cubic voxels of ``voxel_size`` Å.
* Voxel ``i`` on an axis is the cube ``[(i - 0.5), (i + 0.5)] * voxel_size``
  around ``i * voxel_size`` Å; the box centre is voxel ``box_size // 2``.
* Each atom is a 3D Gaussian carrying its atomic number times its occupancy
  (≈ its electron count); every voxel holds the Gaussian's exact integral over
  the voxel, so ``map.sum()`` equals the total weight (up to 4.5 σ truncation
  and atoms leaving the box).  The width follows ChimeraX ``molmap``:

      sigma = resolution / (π · √2)     [Å]

  i.e. the Gaussian's Fourier transform falls to 1/e at spatial frequency
  1 / resolution. :func:`density_from_atoms` can also blur each atom by its B-factor
  (Å²): its variance grows by B / (8π²) Å² per axis (the Debye–Waller factor exp(−B s²/4)).
"""

from __future__ import annotations

import math
import warnings
from typing import Tuple, Union

import numpy as np

from ._atomic import FormatError, PathLike, require_file

__all__ = [
    "MODEL_SUFFIXES",
    "is_model_path",
    "density_from_model",
    "density_from_atoms",
    "centre_of_mass",
    "model_atoms",
    "radius_of_gyration",
    "repeated_chain_symmetry",
]

try:  # scipy is a dependency of cryoorient; fall back to math.erf otherwise
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.vectorize(math.erf, otypes=[np.float64])

_TRUNCATE = 4.5  # Gaussian truncated at this many sigma

#: File name endings of the atomic models :func:`model_atoms` reads (gemmi; gzip allowed).
MODEL_SUFFIXES = (".cif", ".mmcif", ".pdb", ".ent", ".cif.gz", ".mmcif.gz", ".pdb.gz", ".ent.gz")


def is_model_path(path: PathLike) -> bool:
    """Whether ``path`` names an atomic model (PDB/mmCIF) by its suffix, case-insensitively."""
    return str(path).lower().endswith(MODEL_SUFFIXES)


def _load_structure(path_or_structure):
    import gemmi

    if isinstance(path_or_structure, gemmi.Structure):
        return path_or_structure
    p = require_file(path_or_structure, "structure")
    try:
        st = gemmi.read_structure(str(p))
    except Exception as err:  # gemmi raises RuntimeError/ValueError on bad input
        raise FormatError(f"'{p}' could not be read as a PDB/mmCIF structure: {err}") from err
    if len(st) == 0:
        raise FormatError(f"'{p}' contains no models")
    return st


def model_atoms(path_or_structure, model_index: int = 0, remove_waters: bool = True
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Atom positions ``[n, 3]`` (x, y, z in Å) and weights (atomic number × occupancy).

    Uses one model (``model_index``, default the first, e.g. of an NMR
    ensemble); waters are skipped unless ``remove_waters=False``.
    """
    st = _load_structure(path_or_structure)
    if len(st) == 0:
        raise FormatError("structure contains no models")
    model = st[model_index]
    xyz, w = [], []
    for chain in model:
        for res in chain:
            if remove_waters and res.is_water():
                continue
            for atom in res:
                p = atom.pos
                xyz.append((p.x, p.y, p.z))
                w.append(atom.element.atomic_number * atom.occ)
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(w, dtype=np.float64)


def _profiles(c: np.ndarray, s: np.ndarray, k: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-atom 1D voxel-integrated Gaussian windows of widths ``s`` [A] (voxels): (start index [A], profile [A, k])."""
    start = np.floor(c - (k - 1) / 2.0).astype(np.int64)  # window centred on the atom
    edges = start[:, None] + np.arange(k + 1)[None, :] - 0.5 - c[:, None]
    cdf = _erf(edges / (s[:, None] * math.sqrt(2.0)))
    prof = 0.5 * (cdf[:, 1:] - cdf[:, :-1])
    idx = start[:, None] + np.arange(k)[None, :]
    prof[(idx < 0) | (idx >= n)] = 0.0
    return start, prof


def _choose_method(atoms: int, k: int, n: int) -> str:
    """Cheaper of local k^3 stamping (bincount) and per-z-slice matmuls (rough cost model)."""
    cost_stamp = atoms * k ** 3 * 12.0
    cost_matmul = atoms * k * n * n * 0.2 + n ** 3 * 2.0
    return "stamp" if cost_stamp <= cost_matmul else "matmul"


def density_from_model(
    path_or_structure: Union[PathLike, "gemmi.Structure"],  # noqa: F821
    box_size: int,
    voxel_size: float,
    resolution: float,
    center: bool = True,
    *,
    model_index: int = 0,
    remove_waters: bool = True,
) -> np.ndarray:
    """Gaussian density of an atomic model on a cubic ``box_size``³ grid, float32 ``[z, y, x]``.

    Reads the atoms with :func:`model_atoms` (a PDB/mmCIF path or a
    ``gemmi.Structure``; atoms weighted by atomic number × occupancy) and renders
    them with :func:`density_from_atoms`.
    """
    xyz, w = model_atoms(path_or_structure, model_index=model_index, remove_waters=remove_waters)
    return density_from_atoms(xyz, w, box_size, voxel_size, resolution, center)


def density_from_atoms(
    xyz: np.ndarray, weights: np.ndarray, box_size: int, voxel_size: float, resolution: float, center: bool = True,
    *, b_factors: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian density of atoms at ``xyz`` (n, 3) = (x, y, z) Å with ``weights`` (n,), float32 ``[z, y, x]``.

    ``voxel_size`` and ``resolution`` are in Å; sigma = resolution / (π √2)
    (see module docstring), widened per atom by ``b_factors`` (n,) Å² if given
    (variance + B / (8π²)). With ``center=True`` the weighted centre of mass sits
    at voxel ``box_size // 2`` on every axis; otherwise coordinate 0 Å is voxel 0.
    Warns if the density does not fit in the box.
    """
    n = int(box_size)
    if n < 1 or n != box_size:
        raise ValueError(f"box_size must be a positive integer, got {box_size!r}")
    vs, res = float(voxel_size), float(resolution)
    if not (vs > 0 and math.isfinite(vs)):
        raise ValueError(f"voxel_size must be a positive number of Å, got {voxel_size!r}")
    if not (res > 0 and math.isfinite(res)):
        raise ValueError(f"resolution must be a positive number of Å, got {resolution!r}")
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != xyz.shape[0]:
        raise ValueError(f"{xyz.shape[0]} atoms but {w.shape[0]} weights")
    b = np.zeros_like(w) if b_factors is None else np.asarray(b_factors, dtype=np.float64).reshape(-1)
    if b.shape != w.shape or not np.all(np.isfinite(b) & (b >= 0)):
        raise ValueError(f"b_factors must be {w.shape[0]} finite values >= 0 (Å²)")
    keep = w > 0
    xyz, w, b = xyz[keep], w[keep], b[keep]
    if w.size == 0:
        raise FormatError("structure has no atoms with a known element and non-zero occupancy")

    if center:
        com = (w[:, None] * xyz).sum(0) / w.sum()
        c = (xyz - com) / vs + n // 2
    else:
        c = xyz / vs
    s = np.sqrt((res / (math.pi * math.sqrt(2.0))) ** 2 + b / (8 * math.pi**2)) / vs  # sigma per atom, voxels
    k = 2 * int(math.ceil(_TRUNCATE * s.max() + 0.5)) + 1
    reach = (k - 1) / 2.0 + 0.5
    if (c.min() - reach < -0.5) or (c.max() + reach > n - 0.5):
        warnings.warn(
            f"model density extends beyond the {n}^3 box of {vs} Å voxels "
            f"(extent {np.ptp(xyz, axis=0).max():.1f} Å); the map is truncated",
            RuntimeWarning,
            stacklevel=2,
        )

    a = w.size
    sx, px = _profiles(c[:, 0], s, k, n)
    sy, py = _profiles(c[:, 1], s, k, n)
    sz, pz = _profiles(c[:, 2], s, k, n)

    if _choose_method(a, k, n) == "stamp":
        out = np.zeros(n ** 3, dtype=np.float64)
        ar = np.arange(k)
        chunk = max(1, (1 << 22) // (k ** 3))
        for lo in range(0, a, chunk):
            hi = min(a, lo + chunk)
            iz = np.clip(sz[lo:hi, None] + ar, 0, n - 1)
            iy = np.clip(sy[lo:hi, None] + ar, 0, n - 1)
            ix = np.clip(sx[lo:hi, None] + ar, 0, n - 1)
            flat = (iz[:, :, None, None] * n + iy[:, None, :, None]) * n + ix[:, None, None, :]
            val = (w[lo:hi, None, None, None] * pz[lo:hi, :, None, None]
                   * py[lo:hi, None, :, None] * px[lo:hi, None, None, :])
            out += np.bincount(flat.ravel(), weights=val.ravel(), minlength=n ** 3)
        return out.reshape(n, n, n).astype(np.float32)

    # Separable: slice z = sum_a w_a pz_a(z) * outer(py_a, px_a) = Py^T diag(.) Px
    def dense(start, prof):
        m = np.zeros((a, n), dtype=np.float64)
        cols = np.clip(start[:, None] + np.arange(k), 0, n - 1)
        np.add.at(m, (np.repeat(np.arange(a), k), cols.ravel()), prof.ravel())
        return m

    dy, dx = dense(sy, py), dense(sx, px)
    order = np.argsort(sz, kind="stable")
    sz_sorted = sz[order]
    out = np.zeros((n, n, n), dtype=np.float64)
    for z in range(n):
        lo = np.searchsorted(sz_sorted, z - k + 1, side="left")
        hi = np.searchsorted(sz_sorted, z, side="right")
        if hi <= lo:
            continue
        sel = order[lo:hi]
        coef = w[sel] * pz[sel, z - sz[sel]]
        out[z] = (dy[sel] * coef[:, None]).T @ dx[sel]
    return out.astype(np.float32)


def centre_of_mass(volume: np.ndarray, voxel_size: float) -> np.ndarray:
    """Density-weighted centre of mass of a ``[z, y, x]`` map as (x, y, z) in Å,
    relative to the box centre (voxel ``shape // 2`` on each axis)."""
    m = np.asarray(volume, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"expected a 3D [z, y, x] map, got shape {m.shape}")
    total = m.sum()
    if total == 0 or not np.isfinite(total):
        raise ValueError("centre of mass undefined: map sums to zero or is not finite")
    nz, ny, nx = m.shape
    cz = m.sum(axis=(1, 2)) @ np.arange(nz) / total - nz // 2
    cy = m.sum(axis=(0, 2)) @ np.arange(ny) / total - ny // 2
    cx = m.sum(axis=(0, 1)) @ np.arange(nx) / total - nx // 2
    return np.array([cx, cy, cz]) * float(voxel_size)


def radius_of_gyration(xyz: np.ndarray, weights: np.ndarray) -> float:
    """Weighted radius of gyration (Å) of atoms at ``xyz`` (n, 3) Å with ``weights`` (n,) (e.g. from
    :func:`model_atoms`): the root-mean-square distance from the weighted centre of mass."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != xyz.shape[0] or not np.all(w >= 0) or not w.sum() > 0:
        raise ValueError(f"need one non-negative weight per atom with a positive sum ({xyz.shape[0]} atoms, "
                         f"{w.shape[0]} weights)")
    com = (w[:, None] * xyz).sum(0) / w.sum()
    return float(math.sqrt((w * ((xyz - com) ** 2).sum(1)).sum() / w.sum()))


def _kabsch(p: np.ndarray, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation ``R`` and translation ``t`` minimising Σ |R p + t − q|² (proper rotation)."""
    pc, qc = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, qc - r @ pc


def repeated_chain_symmetry(path_or_structure, model_index: int = 0, tolerance: float = 2.0) -> float:
    """How symmetric an atomic model is: the largest fraction (by weight) of its atoms that land
    within ``tolerance`` Å of an atom when the whole model is moved by the superposition of one
    copy of a polymer chain onto another (first atom of each residue, matched by residue number).

    Copies: polymer chains of one entity (mmCIF) or, without a sequence record, with the same
    residue names. ≈ 1 for a symmetric assembly (the superposition is a symmetry operation:
    projections related by it are identical, so plain orientation distances are wrong targets),
    0 for a model without repeated chains. Atoms as :func:`model_atoms` (waters skipped).
    """
    import gemmi
    from scipy.spatial import cKDTree

    st = _load_structure(path_or_structure)
    st.setup_entities()
    model = st[model_index]
    copies: dict = {}
    for span in model.subchains():
        entity = st.get_entity_of(span)
        if entity is None or entity.entity_type != gemmi.EntityType.Polymer:
            continue
        key = tuple(entity.full_sequence) or tuple(r.name for r in span)
        copies.setdefault(key, []).append({r.seqid.num: (r[0].pos.x, r[0].pos.y, r[0].pos.z) for r in span if len(r)})
    xyz, w = model_atoms(st, model_index=model_index)
    keep = w > 0
    xyz, w = xyz[keep], w[keep]
    tree = cKDTree(xyz)
    best = 0.0
    for chains in copies.values():
        for a in range(len(chains)):
            for b in range(a + 1, len(chains)):
                common = sorted(set(chains[a]) & set(chains[b]))
                if len(common) < 3:
                    continue
                r, t = _kabsch(np.array([chains[a][k] for k in common]), np.array([chains[b][k] for k in common]))
                near = tree.query(xyz @ r.T + t, distance_upper_bound=tolerance)[0] <= tolerance
                best = max(best, float(w[near].sum() / w.sum()))
    return best
