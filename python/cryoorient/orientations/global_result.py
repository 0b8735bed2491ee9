"""What :func:`cryoorient.orientations.global_search.global_search` found, and its report.

:class:`GlobalResult`: the orientations, shifts, half sets and last map, every start's score, each iteration's
record (:class:`GlobalIteration`) and the lines a report prints of them.

Verdict (computed from the data): the orientations the winner reached are compared with those of the
best start of another origin (the given ones or another random set), E_OR between the two
(:func:`cryoorient.orientations.align.align_orientations`); they are *reproducible* when the two
agree to less than :data:`AGREEMENT` rad. Independent starts that reach different orientations
with about the same score mean that the data do not determine them (*ambiguous*); where the particles
match the winner's orientations better — the paired z of their NCC, mean over standard error of the
particles' differences, at least :data:`SEPARATED` — the runner-up stopped in a worse optimum (at
−20 dB a random start's exploration often does): the winner matches better, which does not make it right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from .polar_matching import COARSE_AGREEMENT

__all__ = ["AGREEMENT", "SEPARATED", "GlobalIteration", "GlobalResult"]

#: E_OR (rad) between two independent starts below which their orientations count as reproducible.
AGREEMENT = 0.3
#: Paired z of the particles' NCC (winner's minus runner-up's) above which the runner-up matches worse.
SEPARATED = 5.0


@dataclass
class GlobalIteration:
    """One iteration: the band it compared in, the map it compared against, what changed."""

    band: int  # Fourier radius of the comparison, pixels of the n-box
    box: int  # working box m (the particles Fourier-cropped to it)
    resolution: float  # FSC-0.143 resolution of the half maps searched against, Å
    directions: int  # J
    angles: int  # L in-plane angles
    mean_score: float  # mean best NCC
    changed: float  # fraction of particles moved by more than one grid step
    mean_rotation: float  # mean rotation applied, rad
    mean_shift: float  # mean change of the shifts, pixels
    shift_sd: float = math.inf  # standard deviation per axis of the Gaussian shift prior after it, pixels (inf: none)
    coarse: float | None = None  # the probe's agreement of coarse to fine with the full search (None: full, unprobed)
    seconds: float = math.nan  # wall time of the iteration, s


@dataclass
class GlobalResult:
    """Orientations and shifts found by :func:`~cryoorient.orientations.global_search.global_search`, its last map, and the history."""

    quaternions: Tensor  # (P, 4) float64, RELION A, w >= 0
    shifts: Tensor  # (P, 2) float64, pixels (x, y), particle moved by +t
    scores: Tensor  # (P,) best NCC in the last iteration
    map: Tensor  # (m, m, m) float32: the mean of the half sets' references of the last iteration (sqrt(FSC)-weighted,
    # centred; with ``support``: negative density zeroed and cut to the particle's support), box m
    map_pixel_size: float  # Å per voxel of ``map`` (pixel size · n / m)
    resolution: float  # Å, FSC 0.143 of the last half maps (their half sets apart beyond ``shared_resolution``)
    start: str  # the start that won: "given as is", "given" (explored) or "random k"
    start_scores: dict[str, float]  # mean NCC of every start after its exploration, by name, in order
    unexplored: list[str] = field(default_factory=list)  # starts left out: the winner and runner-up already agreed
    runner_up: str | None = None  # the best start of another origin than the winner's (None: no other origin)
    agreement: float | None = None  # E_OR (rad) between the winner's and the runner-up's orientations
    separation: float | None = None  # paired z of the particles' NCC, the winner's over the runner-up's
    recentred: float | None = None  # fraction of particles that took their candidate about the blob shift (None: off)
    explored: int | None = None  # particles the starts were explored on, if a ``subset`` (None: all)
    iterations: list[GlobalIteration] = field(default_factory=list)
    converged: bool = True  # the kept iterations stopped by their rule, not at the cap of ``iterations``
    beyond: list[GlobalIteration] = field(default_factory=list)  # the iterations with the ``margin`` (kept or not)
    beyond_kept: bool | None = None  # whether their half maps were finer and they were kept (None: none ran)
    half: Tensor | None = None  # (P,) int64: each particle's half set (0 or 1), kept apart from the iterations on
    shared_resolution: float = math.inf  # Å: up to which both half sets met one map (global_search.SHARED_SHELLS)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # "explore" (all starts), "recentre", "iterate"

    @property
    def reproducible(self) -> bool | None:
        """Whether two independent starts reached the same orientations (agreement < AGREEMENT); None if
        there was one origin only."""
        return None if self.agreement is None else self.agreement < AGREEMENT

    @property
    def ambiguous(self) -> bool | None:
        """Whether two independent starts reached different orientations that the particles match about
        equally well (separation below SEPARATED); None if there was one origin only."""
        if self.agreement is None:
            return None
        return not self.reproducible and (self.separation is None or self.separation < SEPARATED)

    def verdict(self) -> str:
        """The reproducibility of the orientations, from the two best independent starts, and, where they
        differ, whether the runner-up's orientations match worse."""
        if self.agreement is None:
            return "reproducibility not checked (one origin of starts; use random restarts)"
        apart = (f"starts '{self.start}' and '{self.runner_up}' reach orientations {self.agreement:.3f} rad apart "
                 f"(E_OR between them; reproducible below {AGREEMENT} rad)")
        if self.reproducible:
            return f"reproducible: {apart}"
        z = "" if self.separation is None else f"paired z {self.separation:.1f} of the particles' NCC, "
        if self.ambiguous:
            return f"NOT reproducible: {apart}, matched about as well ({z}separated above {SEPARATED})"
        return (f"not reproduced, the runner-up a worse optimum: {apart}, and '{self.start}' matched better "
                f"({z}separated above {SEPARATED})")

    def margin_verdict(self) -> str:
        """Whether the iterations beyond the resolution were kept, from their half maps' resolution ("": none)."""
        if self.beyond_kept is None:
            return ""
        before = self.iterations[-len(self.beyond) - 1] if self.beyond_kept else self.iterations[-1]
        bands = f"{self.beyond[0].band} → {self.beyond[-1].band} px"
        how = "kept: half maps {:.2f} Å, finer" if self.beyond_kept else "dropped: half maps {:.2f} Å, not finer"
        return (f"{len(self.beyond)} iterations beyond the resolution (bands {bands}) "
                f"{how.format(self.beyond[-1].resolution)} than {before.resolution:.2f} Å without; ")

    def summary(self) -> str:
        """One line: the start chosen and on what, the verdict, the last band, score and resolution."""
        last = self.iterations[-1]
        starts = ", ".join(f"{k} {s:.4f}" for k, s in self.start_scores.items())
        if self.unexplored:
            starts += f"; {', '.join(self.unexplored)} not explored: two starts of different origins had agreed"
        moved = "" if self.recentred is None else f"{self.recentred:.1%} recentred; "
        if self.explored is not None:
            moved = f"starts explored on {self.explored:,} of {len(self.quaternions):,} particles; {moved}"
        prior = "" if math.isinf(last.shift_sd) else f"shift prior σ {last.shift_sd:.2f} px; "
        cap = "" if self.converged else " (the cap: not converged)"
        return (f"global search: start '{self.start}' (mean NCC of the starts: {starts}); {self.verdict()}; {moved}"
                f"{prior}{self.margin_verdict()}{len(self.iterations)} iterations{cap} to band {last.band} px, "
                f"mean NCC {last.mean_score:.4f}, "
                f"{last.changed:.1%} changed in the last; half maps {self.resolution:.2f} Å (the half sets shared one map "
                f"up to {self.shared_resolution:.2f} Å); {self.seconds:.1f} s"
                + "".join(f", {k} {v:.1f} s" for k, v in self.stage_seconds.items()))

    def trajectory(self) -> str:
        """One line: each iteration's band, the resolution of the half maps it searched against, the
        fraction of particles that moved by more than a grid step, its seconds and, where probed, whether it went
        coarse to fine ("coarse") or not ("full") and how many of the probe agreed; those beyond the resolution
        that were dropped after them."""
        how = lambda c: "" if c is None else f" {'coarse' if c >= COARSE_AGREEMENT else 'full'} {c:.0%}"  # noqa: E731
        line = lambda its: "; ".join(  # noqa: E731
            f"{it.band} px {it.resolution:.2f} Å {it.changed:.1%} {it.seconds:.1f} s{how(it.coarse)}" for it in its)
        dropped = f" (dropped: {line(self.beyond)})" if self.beyond_kept is False else ""
        return (f"global search iterations (band, half maps, changed, time, coarse to fine or full and the probe's "
                f"agreement): {line(self.iterations)}{dropped}")
