"""Procedural protein-like atomic models and their densities: training data without limit.

:func:`random_protein` builds a model from its seed alone (numpy ``default_rng``: the same seed
and numpy give the same model). Lengths in Å, B-factors in Å², coordinates (x, y, z):

1. **Envelope.** ``shape`` sets an ellipsoid: globular (semi-axes 1 : 0.9–1 : 0.85–0.95),
   elongated (2.6–3.4 : 0.9–1 : 0.75–0.9) or flat (1 : 0.85–1 : 0.3–0.4). 1–4 domains (at least
   70 residues each) split it into k-means cells; each cell's inertia ellipsoid is a domain's.
2. **Domains** fill their ellipsoid with rods along its longest axis, in layers 10 Å apart
   stacked along its shortest: α-helices (3.6 residues per turn, 1.5 Å rise, radius 2.3 Å, so
   Cα–Cα 3.8 Å and Cα(i)–Cα(i+4) 6.2 Å; axes 10 Å apart) and β-strands (3.3–3.5 Å rise, pleated
   so that Cα–Cα is 3.8 Å; 4.8 Å apart in a sheet). Folds: all-α, all-β (sandwich, helices
   outside beyond two layers), α/β (sheets between helix layers). Each layer's rods cross the
   domain's axis at up to ±30° (layers pack at crossing angles); neighbouring rods run
   antiparallel; rods longer than 36 Å (helix) or 30 Å (strand) are split, and each rod end is
   trimmed by up to 4 Å (a rough surface). The ellipsoid, its
   rod axis shortened by 0.8 for the loops that gather at the rods' ends, is scaled until rods
   and shortest loops hold 70–85 % of the domain's residues.
3. **Packing.** Domains are pushed apart until no two Cα of different domains are nearer than
   6 Å, then pulled together as far as that allows.
4. **Loops** join the rods (serpentine order) and the domains: random walks of 3.8 Å steps that
   close exactly on the next rod, with virtual bond angles of 80–150° (Cα(i)–Cα(i+2) 4.9–7.35 Å)
   and no Cα nearer than 4 Å to any other; the residues left lengthen loops (≤ 12 extra each,
   20 between domains) and form tails at the termini.
5. **Atoms.** N, C, O per residue around the Cα trace and a side chain of an amino acid drawn
   with its natural frequency (0 heavy atoms for Gly to 10 for Trp, clustered along the
   outward bisector of the Cα trace): ≈ 52 electrons per residue, as crystal structures
   without hydrogens.
6. **B-factors**, 20–80 Å²: a base of 20–28 rising with exposure (fewer Cα within 10 Å), +8 on
   loops, +2 per side-chain atom outward.

On 80–1000 residues the globular models' radius of gyration is within ±25 % of the
2.2·N^0.38 Å of globular proteins (tests/test_generator.py). :func:`protein_density` renders a
model with :func:`cryoorient.io.density_from_atoms` (B-factors included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.spatial import cKDTree

from ..io import density_from_atoms

__all__ = ["SHAPES", "ProteinModel", "random_protein", "protein_density", "principal_radii", "shape_miss"]

SHAPES = ("globular", "elongated", "flat")
CA_CA, MIN_CA, DOMAIN_GAP = 3.8, 4.0, 6.0  # Å: bonded Cα; closest non-bonded Cα; closest Cα of two domains
I2 = (4.9, 7.35)  # Å: Cα(i)–Cα(i+2), virtual bond angles of 80–150°
HELIX_RISE, HELIX_RADIUS, HELIX_TURN = 1.5, 2.3, 2 * math.pi / 3.6
SPACING = {"H": 10.0, "E": 4.8}  # Å between neighbouring rod axes in a layer
MAX_ROD, MIN_ROD, TIER_GAP = {"H": 36.0, "E": 30.0}, {"H": 7.5, "E": 6.6}, 8.0  # Å along the rod axis
LAYER = 10.0  # Å between layers
ROD_AXIS = np.array([0.8, 1.0, 1.0])  # the domain ellipsoid's rod axis shortened by this
CROSSING, RAGGED = math.radians(30), 4.0  # largest crossing angle of a layer's rods; Å trimmed off rod ends
ELECTRONS = {"C": 6, "N": 7, "O": 8, "S": 16}
# Amino acids: natural frequency (%) and side-chain heavy atoms (CB outward).
AMINO_ACIDS = {"A": (8.25, "C"), "R": (5.53, "CCCNCNN"), "N": (4.06, "CCON"), "D": (5.45, "CCOO"),
               "C": (1.37, "CS"), "Q": (3.93, "CCCON"), "E": (6.75, "CCCOO"), "G": (7.07, ""),
               "H": (2.27, "CCNCCN"), "I": (5.96, "CCCC"), "L": (9.66, "CCCC"), "K": (5.84, "CCCCN"),
               "M": (2.42, "CCSC"), "F": (3.86, "CCCCCCC"), "P": (4.70, "CCC"), "S": (6.56, "CO"),
               "T": (5.34, "COC"), "W": (1.08, "CCCCNCCCCC"), "Y": (2.92, "CCCCCCCO"), "V": (6.87, "CCC")}
_ATTEMPTS = 20


class _Failed(Exception):
    """A build step failed (an empty cell, too few residues for the loops, a loop that would not close):
    the model is rebuilt from the next attempt's generator."""


@dataclass(frozen=True)
class ProteinModel:
    """A generated model. ``coords`` (n_atoms, 3) float64 Å (x, y, z), mass-weighted centre at 0;
    ``elements`` (n_atoms,) 'C' 'N' 'O' 'S'; ``b_factors`` (n_atoms,) Å²; ``residue`` (n_atoms,) each
    atom's residue; ``ca`` (n_residues,) each residue's Cα atom; ``secondary`` one letter per residue
    (H helix, E strand, L loop); ``domain`` (n_residues,); ``shape`` one of :data:`SHAPES`; ``seed``
    the seed it was built from."""

    coords: np.ndarray
    elements: np.ndarray
    b_factors: np.ndarray
    residue: np.ndarray
    ca: np.ndarray
    secondary: str
    domain: np.ndarray
    shape: str
    seed: int

    @property
    def weights(self) -> np.ndarray:
        """Electrons (atomic numbers) per atom, the weights of :func:`cryoorient.io.density_from_atoms`."""
        return np.array([ELECTRONS[e] for e in self.elements], dtype=np.float64)

    @property
    def n_residues(self) -> int:
        return int(self.ca.size)


def principal_radii(coords: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Square roots (Å) of the eigenvalues of the weighted covariance of ``coords`` (n, 3), largest
    first: the inertia ellipsoid's semi-axes over √5 (their ratios are its axis ratios)."""
    x = np.asarray(coords, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    c = x - (w[:, None] * x).sum(0) / w.sum()
    cov = (w[:, None, None] * c[:, :, None] * c[:, None, :]).sum(0) / w.sum()
    return np.sqrt(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]


def random_protein(seed: int, n_residues: int | None = None, shape: str | None = None) -> ProteinModel:
    """A protein-like model (module docstring) of ``n_residues`` (default: log-uniform in 80–1000)
    and ``shape`` (default: one of :data:`SHAPES` at random), all drawn from ``seed``: the first of
    up to 20 builds whose inertia ellipsoid fits the shape (:func:`shape_miss`), else the closest."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES} or None, got {shape!r}")
    rng = np.random.default_rng([int(seed), 0])
    n = int(round(math.exp(rng.uniform(math.log(80), math.log(1000))))) if n_residues is None else n_residues
    if isinstance(n, bool) or int(n) != n or not 40 <= n <= 5000:
        raise ValueError(f"n_residues must be an integer in [40, 5000], got {n_residues!r}")
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    best = None
    for attempt in range(_ATTEMPTS):
        try:
            model = _build(np.random.default_rng([int(seed), 1, attempt]), int(n), shape, int(seed))
        except _Failed:
            continue
        miss = shape_miss(shape, principal_radii(model.coords, model.weights))
        if miss == 0:
            return model
        if best is None or miss < best[0]:
            best = (miss, model)
    if best is None:
        raise RuntimeError(f"random_protein({seed}, {n}, {shape!r}): no model in {_ATTEMPTS} attempts")
    return best[1]


def shape_miss(shape: str, radii: np.ndarray) -> float:
    """How far principal radii r1 ≥ r2 ≥ r3 (:func:`principal_radii`) are from ``shape``: 0 when
    globular r1/r3 ≤ 1.5; elongated r1/r3 ≥ 2 and r1/r2 ≥ 1.5; flat r2/r3 ≥ 1.6 and r1/r2 ≤ 1.5;
    else the sum of the ratios' shortfalls."""
    r1, r2, r3 = radii
    need = {"globular": [(1.5, r1 / r3)], "elongated": [(r1 / r3, 2.0), (r1 / r2, 1.5)],
            "flat": [(r2 / r3, 1.6), (1.5, r1 / r2)]}[shape]  # (value, bound): value ≥ bound wanted
    return float(sum(max(0.0, bound - value) for value, bound in need))


def protein_density(model: ProteinModel, size: int, pixel_size: float, resolution: float | None = None,
                    b_factors: bool = True) -> tuple[np.ndarray, float]:
    """The model's density on a ``size``³ grid of ``pixel_size`` Å voxels: (float32 ``[z, y, x]``, pixel size).

    :func:`cryoorient.io.density_from_atoms`: each atom a Gaussian of its electrons at
    ``resolution`` Å (default 2 voxels), widened by its B-factor (unless ``b_factors=False``);
    the sum is the model's electrons (up to atoms leaving the box), the centre of mass at voxel
    ``size // 2``.
    """
    res = 2.0 * pixel_size if resolution is None else resolution
    vol = density_from_atoms(model.coords, model.weights, size, pixel_size, res, center=True,
                             b_factors=model.b_factors if b_factors else None)
    return vol, float(pixel_size)


def _build(rng, n: int, shape: str, seed: int) -> ProteinModel:
    """One attempt: envelope, domains, packing, loops, atoms (module docstring, steps 1–6)."""
    axes = _envelope(rng, shape)
    k = int(rng.integers(1, min(4, max(1, n // 70)) + 1))
    cells = _cells(rng, axes, k)
    extra = rng.uniform(0.15, 0.3)
    domains = []  # (rods [(kind, Cα (m, 3))] in chain order, centre, scale)
    for centre, frame, semi, frac in cells:
        fold = str(rng.choice(["alpha", "beta", "alpha_beta"], p=[0.35, 0.2, 0.45]))
        kinds = _layer_kinds(fold, rng)
        target = (1 - extra) * frac * n
        semi = semi * ROD_AXIS  # the loops at the rods' ends lengthen that axis
        scale = _fit_scale(semi, kinds, target)
        rods = [(kind, ca @ frame.T) for kind, ca in _rod_atoms(rng, _layout(scale * semi, kinds))]
        domains.append((rods, centre, scale))
    scale = float(np.median([d[2] for d in domains]))
    rods = _pack([[(kd, ca + scale * c) for kd, ca in r] for r, c, _ in domains])
    chain = _order(rods)
    seq_ca, ss, dom = _join(rng, chain, n)
    return _atoms(rng, seq_ca, ss, dom, shape, seed)


def _envelope(rng, shape: str) -> np.ndarray:
    lo_hi = {"globular": ((1, 1), (0.9, 1.0), (0.85, 0.95)), "elongated": ((2.6, 3.4), (0.9, 1.0), (0.75, 0.9)),
             "flat": ((1, 1), (0.85, 1.0), (0.3, 0.4))}[shape]
    return np.array([rng.uniform(a, b) for a, b in lo_hi])


def _cells(rng, axes: np.ndarray, k: int, points: int = 4000):
    """k-means cells of uniform points in the ellipsoid ``axes``: (centre, frame (columns: axes longest
    first, a proper rotation), semi-axes of the inertia ellipsoid, share of the volume) each."""
    x = rng.normal(size=(points, 3))
    x *= (rng.uniform(size=(points, 1)) ** (1 / 3)) / np.linalg.norm(x, axis=1, keepdims=True)
    x *= axes
    centres = x[rng.choice(points, k, replace=False)]
    for _ in range(30):
        label = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.array([x[label == j].mean(0) if (label == j).any() else centres[j] for j in range(k)])
    out = []
    for j in range(k):
        p = x[label == j]
        if len(p) < 10:
            raise _Failed
        ev, vec = np.linalg.eigh(np.cov(p.T, bias=True))
        vec = vec[:, ::-1]
        vec[:, 2] *= np.sign(np.linalg.det(vec))
        out.append((p.mean(0), vec, np.sqrt(5 * ev[::-1]), len(p) / points))
    return out


def _layer_kinds(fold: str, rng) -> Callable[[int], list[tuple[str, float]]]:
    """Layers as a function of their number: (kind 'H'/'E', crossing angle in radians) each, the
    angle turning the layer's rods about the layer normal (uniform in ±30°, drawn once per domain)."""
    flip = bool(rng.integers(2))
    angles = rng.uniform(-CROSSING, CROSSING, 64)

    def kinds(layers: int) -> list[tuple[str, float]]:
        if fold == "alpha":
            out = "H" * layers
        elif fold == "beta":
            out = "E" * layers if layers <= 2 else "H" + "E" * (layers - 2) + "H"
        else:
            out = {1: "E", 2: "EH"}.get(layers, "H" + "E" * (layers - 2) + "H")
        return list(zip(out[::-1] if flip else out, angles[:layers]))

    return kinds


def _layout(semi: np.ndarray, kinds) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Rods (kind, start, end) (Å, domain frame: x the rod axis, z across layers) filling the ellipsoid
    of semi-axes ``semi``, in chain order: serpentine over the layers, each layer's rods turned by its
    crossing angle about z, each column of rods in turn up or down."""
    av, au, aw = semi
    layers = max(1, int(round(2 * aw / LAYER)))
    rods, up = [], True
    for k, (kind, angle) in enumerate(kinds(layers)):
        w = (k - (layers - 1) / 2) * LAYER
        shrink = math.sqrt(max(0.0, 1 - (w / aw) ** 2))
        a2, b2 = (av * shrink) ** 2 + 1e-9, (au * shrink) ** 2 + 1e-9  # the layer's ellipse x²/a2 + y²/b2 ≤ 1
        d = np.array([math.cos(angle), math.sin(angle)])
        nrm = np.array([-d[1], d[0]])
        half = math.sqrt(a2 * nrm[0] ** 2 + b2 * nrm[1] ** 2)  # the ellipse's half-width across the rods
        m = max(1, int(round(2 * half / SPACING[kind])))
        offsets = (np.arange(m) - (m - 1) / 2) * SPACING[kind]
        for o in (offsets if k % 2 == 0 else offsets[::-1]):
            qa = d[0] ** 2 / a2 + d[1] ** 2 / b2  # |o·nrm + t·d| on the ellipse: qa t² + qb t + qc = 0
            qb = 2 * o * (nrm[0] * d[0] / a2 + nrm[1] * d[1] / b2)
            qc = o**2 * (nrm[0] ** 2 / a2 + nrm[1] ** 2 / b2) - 1
            disc = qb**2 - 4 * qa * qc
            if disc <= 0:
                continue
            t0, t1 = (-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)
            tiers = max(1, math.ceil((t1 - t0 + TIER_GAP) / (MAX_ROD[kind] + TIER_GAP)))
            seg = (t1 - t0 - (tiers - 1) * TIER_GAP) / tiers
            if seg < MIN_ROD[kind]:
                continue
            at = lambda t: np.array([*(o * nrm + t * d), w])  # noqa: E731
            col = [(kind, at(t0 + i * (seg + TIER_GAP)), at(t0 + i * (seg + TIER_GAP) + seg)) for i in range(tiers)]
            rods += col if up else [(kd, b, a) for kd, a, b in col[::-1]]
            up = not up
    return rods


def _rod_residues(kind: str, length: float) -> int:
    return 1 + int(round(length / (HELIX_RISE if kind == "H" else 3.4)))


def _min_loop(distance: float) -> int:
    """Fewest loop residues that join two Cα ``distance`` Å apart comfortably (≥ 2)."""
    return max(2, math.ceil(distance / (0.6 * CA_CA)) - 1)


def _fit_scale(semi: np.ndarray, kinds, target: float) -> float:
    """The largest scale (Å per envelope unit, bisection) at which the rods of :func:`_layout` and the
    shortest loops between them hold at most ``target`` residues."""

    def count(f: float) -> int:
        rods = _layout(f * semi, kinds)
        total = sum(_rod_residues(k, float(np.linalg.norm(b - a))) for k, a, b in rods)
        return total + sum(_min_loop(float(np.linalg.norm(rods[i][2] - rods[i + 1][1]))) for i in range(len(rods) - 1))

    lo, hi = 1.0, 200.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    return lo


def _rod_atoms(rng, rods) -> list[tuple[str, np.ndarray]]:
    """Cα (m, 3) of each rod in the domain frame, its ends trimmed by up to RAGGED Å each (a rough
    surface): right-handed helices of random phase, strands of random rise (3.3–3.5 Å) pleated along z."""
    out = []
    z = np.array([0, 0, 1.0])
    for kind, a, b in rods:
        length = float(np.linalg.norm(b - a))
        d = (b - a) / length
        trim = rng.uniform(0, RAGGED, 2) * min(1.0, max(0.0, length - MIN_ROD[kind]) / (2 * RAGGED))
        a, length = a + trim[0] * d, length - trim.sum()
        if kind == "H":
            m = _rod_residues(kind, length)
            t = rng.uniform(0, 2 * math.pi) + HELIX_TURN * np.arange(m)
            e1 = np.cross(z, d)
            e2 = np.cross(d, e1)  # (e1, e2, d) right-handed
            ca = (a + np.outer(HELIX_RISE * np.arange(m), d)
                  + HELIX_RADIUS * (np.outer(np.cos(t), e1) + np.outer(np.sin(t), e2)))
        else:
            rise = rng.uniform(3.3, 3.5)
            m = 1 + int(round(length / rise))
            pleat = math.sqrt(CA_CA**2 - rise**2) / 2 * (-1.0) ** (np.arange(m) + rng.integers(2))
            ca = a + np.outer(rise * np.arange(m), d) + np.outer(pleat, z)
        out.append((kind, ca))
    return out


def _pack(domains: list[list[tuple[str, np.ndarray]]]) -> list[list[tuple[str, np.ndarray]]]:
    """Domains moved apart until their Cα are ≥ DOMAIN_GAP Å apart, then each pulled towards the
    others while that holds."""
    if len(domains) == 1:
        return domains
    pos = [np.concatenate([ca for _, ca in d]) for d in domains]
    shift = [np.zeros(3) for _ in domains]

    def gap(i: int, j: int) -> float:
        return float(cKDTree(pos[j] + shift[j]).query(pos[i] + shift[i])[0].min())

    k = len(domains)
    for _ in range(200):
        moved = False
        for i in range(k):
            for j in range(i + 1, k):
                g = gap(i, j)
                if g < DOMAIN_GAP:
                    d = (pos[i].mean(0) + shift[i]) - (pos[j].mean(0) + shift[j])
                    d = d / max(np.linalg.norm(d), 1e-9) * (DOMAIN_GAP - g + 0.5) / 2
                    shift[i], shift[j], moved = shift[i] + d, shift[j] - d, True
        if not moved:
            break
    for _ in range(3):
        for i in range(k):
            others = np.concatenate([pos[j] + shift[j] for j in range(k) if j != i]).mean(0)
            d = others - (pos[i].mean(0) + shift[i])
            if np.linalg.norm(d) < 1e-6:
                continue
            d /= np.linalg.norm(d)
            for step in (4.0, 2.0, 1.0, 0.5):
                for _ in range(100):  # the domain meets another long before
                    shift[i] = shift[i] + step * d
                    if min(gap(i, j) for j in range(k) if j != i) < DOMAIN_GAP:
                        shift[i] = shift[i] - step * d
                        break
    return [[(kd, ca + shift[i]) for kd, ca in d] for i, d in enumerate(domains)]


def _order(domains) -> list[tuple[int, str, np.ndarray]]:
    """Rods in chain order as (domain, kind, Cα): domains along the envelope's long axis, each one's
    serpentine run forwards or backwards, whichever starts nearer the previous domain's end."""
    order = sorted(range(len(domains)), key=lambda i: np.concatenate([c for _, c in domains[i]])[:, 0].mean())
    chain: list[tuple[int, str, np.ndarray]] = []
    for i in order:
        rods = domains[i]
        if chain:
            end = chain[-1][2][-1]
            if np.linalg.norm(rods[-1][1][-1] - end) < np.linalg.norm(rods[0][1][0] - end):
                rods = [(kd, ca[::-1]) for kd, ca in rods[::-1]]
        chain += [(i, kd, ca) for kd, ca in rods]
    return chain


def _join(rng, chain, n: int) -> tuple[np.ndarray, str, np.ndarray]:
    """The Cα trace (n, 3), secondary structure and domain per residue: the rods of ``chain`` joined
    by loops holding exactly the residues the rods leave of ``n`` (at least :func:`_min_loop` each)."""
    gaps = [_min_loop(float(np.linalg.norm(chain[j][2][-1] - chain[j + 1][2][0]))) for j in range(len(chain) - 1)]
    spare = n - sum(len(c[2]) for c in chain) - sum(gaps)
    if spare < 0:
        raise _Failed
    tails = [int(rng.integers(0, min(6, spare // 2) + 1)) for _ in range(2)]
    spare -= sum(tails)
    if gaps:
        extra = rng.multinomial(spare, np.full(len(gaps), 1 / len(gaps)))
        cap = np.array([12 if chain[j][0] == chain[j + 1][0] else 20 for j in range(len(gaps))])
        gaps = [g + int(e) for g, e in zip(gaps, np.minimum(extra, cap))]
        spare = int(np.maximum(extra - cap, 0).sum())
    tails[int(rng.integers(2))] += spare
    rods = [c[2] for c in chain]
    placed = []  # loops built so far
    trace, ss, dom = [], [], []
    for j, (d, kind, ca) in enumerate(chain):
        trace.append(ca)
        ss.append(kind * len(ca))
        dom.append(np.full(len(ca), d))
        if j + 1 == len(chain):
            break
        nxt = rods[j + 1]
        others = [r[:-1] if i == j else r[1:] if i == j + 1 else r for i, r in enumerate(rods)]
        tree = cKDTree(np.concatenate(others + placed))
        loop = None
        for _ in range(3):
            loop = _walk(rng, ca[-2], ca[-1], gaps[j], tree, nxt[1], nxt[0])
            if loop is not None:
                break
        if loop is None:
            raise _Failed
        placed.append(loop)
        trace.append(loop)
        ss.append("L" * len(loop))
        dom.append(np.full(len(loop), d if chain[j + 1][0] == d else -1))
    ca = np.concatenate(trace)
    centre = ca.mean(0)
    head = _walk(rng, ca[1], ca[0], tails[0], cKDTree(ca[1:]), centre=centre)
    if head is None:
        raise _Failed
    tail = _walk(rng, ca[-2], ca[-1], tails[1], cKDTree(np.concatenate([ca[:-1], head])), centre=centre)
    if tail is None:
        raise _Failed
    dom = np.concatenate([np.full(len(head), chain[0][0]), *dom, np.full(len(tail), chain[-1][0])])
    ca = np.concatenate([head[::-1], ca, tail])
    ss = "L" * len(head) + "".join(ss) + "L" * len(tail)
    assert len(ca) == n
    return ca, ss, _linker_domains(dom)


def _linker_domains(dom: np.ndarray) -> np.ndarray:
    """Linker residues (−1) take the domain of the residue before them."""
    out = dom.copy()
    for i in range(1, len(out)):
        if out[i] < 0:
            out[i] = out[i - 1]
    return out


def _walk(rng, a2: np.ndarray, a1: np.ndarray, n: int, tree: cKDTree, b2: np.ndarray | None = None,
          b1: np.ndarray | None = None, centre: np.ndarray | None = None, tries: int = 48):
    """``n`` Cα (n, 3) continuing ``a2``, ``a1``: 3.8 Å steps, Cα(i)–Cα(i+2) within I2, ≥ MIN_CA Å from
    ``tree``'s points and each other, preferring uncrowded places (few ``tree`` points within 7 Å).
    With ``b1`` (and ``b2`` before it) the walk grows from whichever end has more room, keeping
    the tips about 0.55 × the contour left between them apart, and its last residue closes the gap
    (3.8 Å from both tips); without, it drifts away from ``centre``. None if it gets stuck
    (backtracking 1–3 residues a bounded number of times)."""
    closing = b1 is not None
    if n == 0:
        return np.zeros((0, 3))
    if closing and n == 1 and not I2[0] <= np.linalg.norm(a1 - b1) <= 7.3:
        return None
    sides = [[a2, a1], [b2, b1]] if closing else [[a2, a1]]
    grown, fails = [], 0  # the side each placed residue went to, for backtracking
    while len(grown) < n:
        left = n - len(grown)  # residues still to place, this one included
        options = [_candidates(rng, sides, side, left, tree, centre, tries) for side in range(len(sides))]
        if closing and left == 1:
            options = [_closure(rng, sides, tree, tries)]
        side = max(range(len(options)), key=lambda i: (len(options[i][0]), -len(sides[i])))
        c, score = options[side]
        if len(c):
            w = np.exp(score - score.max())
            sides[side if len(options) > 1 else 0].append(c[rng.choice(len(c), p=w / w.sum())])
            grown.append(side if len(options) > 1 else 0)
            continue
        fails += 1
        if not grown or fails > 30 + 10 * n:
            return None
        for _ in range(min(len(grown), int(rng.integers(1, 4)))):
            sides[grown.pop()].pop()
    return np.array(sides[0][2:] + (sides[1][2:][::-1] if closing else []))


def _room(c: np.ndarray, tree: cKDTree, near: list) -> np.ndarray:
    """Candidates ``c`` at least MIN_CA Å from ``tree``'s points and from ``near``."""
    ok = tree.query(c)[0] >= MIN_CA
    if near:
        ok &= (np.linalg.norm(c[:, None] - np.array(near)[None], axis=-1) >= MIN_CA).all(1)
    return ok


def _candidates(rng, sides, side: int, left: int, tree: cKDTree, centre, tries: int):
    """Valid next Cα after ``sides[side]``'s tip and their scores (see :func:`_walk`)."""
    p2, p = sides[side][-2], sides[side][-1]
    u = rng.normal(size=(tries, 3))
    c = p + CA_CA * u / np.linalg.norm(u, axis=1, keepdims=True)
    d2 = np.linalg.norm(c - p2, axis=1)
    closing = len(sides) == 2
    ok = (d2 >= I2[0]) & (d2 <= I2[1]) & _room(c, tree, sides[side][:-2] + (sides[1 - side] if closing else []))
    if closing:
        dd = np.linalg.norm(c - sides[1 - side][-1], axis=1)  # `left` bonds to the other tip remain
        ok &= (dd >= MIN_CA) & (dd <= 0.97 * CA_CA * left) & ((left > 2) | ((dd >= I2[0]) & (dd <= 7.3)))
        score = -np.abs(dd - 0.55 * CA_CA * left) / 3
    else:
        score = (np.linalg.norm(c - centre, axis=1) - np.linalg.norm(p - centre)) / 3
    c, score = c[ok], score[ok]
    return c, score - tree.query_ball_point(c, 7.0, return_length=True) / 4


def _closure(rng, sides, tree: cKDTree, tries: int):
    """Valid Cα 3.8 Å from both tips (within I2 of the residues before them), equal scores."""
    c = _circle(rng, sides[0][-1], sides[1][-1], tries)
    ok = _room(c, tree, [x for sd in sides for x in sd[:-2]])
    for sd in sides:
        d2 = np.linalg.norm(c - sd[-2], axis=1)
        ok &= (d2 >= I2[0]) & (d2 <= I2[1])
    return c[ok], np.zeros(int(ok.sum()))


def _circle(rng, a: np.ndarray, b: np.ndarray, tries: int) -> np.ndarray:
    """``tries`` random points 3.8 Å from both ``a`` and ``b`` (|a − b| < 7.6 Å)."""
    d = b - a
    dist = float(np.linalg.norm(d))
    axis = d / dist
    e1 = np.cross(axis, [1.0, 0, 0] if abs(axis[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    rho = math.sqrt(max(CA_CA**2 - (dist / 2) ** 2, 0.0))
    t = rng.uniform(0, 2 * math.pi, tries)[:, None]
    return (a + b) / 2 + rho * (np.cos(t) * e1 + np.sin(t) * e2)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(min=1e-12)


def _atoms(rng, ca: np.ndarray, ss: str, dom: np.ndarray, shape: str, seed: int) -> ProteinModel:
    """Backbone N, C, O and side chains around the Cα trace ``ca`` (n, 3), B-factors (step 5–6)."""
    n = len(ca)
    t = ca[1:] - ca[:-1]  # virtual bonds (n − 1, 3)
    bis = np.empty_like(ca)
    nrm = np.empty_like(ca)
    bis[1:-1] = _unit(2 * ca[1:-1] - ca[:-2] - ca[2:])
    nrm[1:-1] = _unit(np.cross(t[:-1], t[1:]))
    bis[0], bis[-1], nrm[0], nrm[-1] = bis[1], bis[-2], nrm[1], nrm[-2]
    q = _unit(np.cross(t, nrm[:-1]))  # peptide-plane offsets, perpendicular to each bond
    side_dir = _unit(0.82 * bis + 0.57 * nrm)
    names = list(AMINO_ACIDS)
    freq = np.array([AMINO_ACIDS[a][0] for a in names])
    residue_type = rng.choice(len(names), size=n, p=freq / freq.sum())
    counts = cKDTree(ca).query_ball_point(ca, 10.0, return_length=True)
    exposure = 1 - np.argsort(np.argsort(counts, kind="stable"), kind="stable") / max(n - 1, 1)
    base, span = rng.uniform(20, 28), rng.uniform(25, 40)
    b_res = base + span * exposure**1.5 + 8 * (np.frombuffer(ss.encode(), np.uint8) == ord("L")) + rng.normal(0, 3, n)
    xyz, el, bf, res, ca_index = [], [], [], [], np.empty(n, dtype=np.int64)
    for i in range(n):
        nitrogen = ca[i - 1] + 0.63 * t[i - 1] - 0.45 * q[i - 1] if i else ca[0] - 1.46 * _unit(t[0])
        if i + 1 < n:
            carbon, oxygen = ca[i] + 0.37 * t[i] + 0.55 * q[i], ca[i] + 0.40 * t[i] + 1.75 * q[i]
        else:
            carbon = ca[i] + 1.52 * _unit(t[-1])
            oxygen = carbon + 1.23 * q[-1]
        side = AMINO_ACIDS[names[residue_type[i]]][1]
        j = np.arange(len(side))
        chain_xyz = (ca[i] + np.outer(1.53 * (1 + 0.9 * np.sqrt(j)), side_dir[i])
                     + (j > 0)[:, None] * rng.normal(0, 0.6, (len(side), 3)))
        ca_index[i] = len(el) + 1
        xyz += [nitrogen, ca[i], carbon, oxygen, *chain_xyz]
        el += ["N", "C", "C", "O", *side]
        bf += [b_res[i]] * 4 + list(b_res[i] + 2 * (j + 1))
        res += [i] * (4 + len(side))
    coords = np.array(xyz)
    elements = np.array(el)
    w = np.array([ELECTRONS[e] for e in el], dtype=np.float64)
    coords -= (w[:, None] * coords).sum(0) / w.sum()
    return ProteinModel(coords, elements, np.clip(np.array(bf), 20.0, 80.0), np.array(res), ca_index, ss, dom,
                        shape, seed)
