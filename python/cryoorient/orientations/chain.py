"""Ab initio reconstruction from particle images alone: orientations, shifts, half maps and a map.

The chain, for a particle stack and its CTF parameters (no map, no trained network):

1. ``abinitio`` — :func:`cryoorient.orientations.abinitio.estimate_orientations`: each image
   phase-flipped by its own CTF and centred, then orientations from the in-plane-invariant
   neighbour graph, with the data's own verdict on them (:meth:`AbInitioResult.summary`);
2. ``global`` — :func:`cryoorient.orientations.global_search.global_search`: global projection
   matching with shifts and the CTF, started from those orientations and shifts and from random
   ones (the start whose particles match best goes on), so that particles the ab initio stage
   got wrong are found again;
3. ``refine`` — :func:`cryoorient.maps.refine.refine` from those orientations, shifts and half sets, with
   the CTF: gold-standard half maps, their FSC, the map (a resolution no finer than the band up to which
   the half sets shared one map is warned about). The maps are then moved so that the
   map's centre of mass sits at the box centre (voxel n//2; as RELION centres an initial model),
   and every shift by the projection of that move, so that the shifts centre each particle.

Each finished stage is checkpointed into ``workdir`` (``abinitio.pt``, ``global.pt``, ``refine.pt``;
atomic writes) with a key of the images (shape and a sample of pixels), the CTF of that sample, the
options of the stage and those before it and the fields of the stages' results: a call with
``resume=True`` loads the stages whose key matches and runs the rest; ``stop_after`` ends the run after a stage (as an interruption would).

Conventions: images (P, n, n) [y, x], centre n//2; orientations are scalar-first quaternions of
RELION's A; shifts t (pixels, x, y) move the particle by +t in the image (:mod:`cryoorient.imaging.shift`),
so RELION's ``rlnOriginX/YAngst`` = −t · pixel size (:attr:`ChainResult.origins_angst`). The map's
global rotation and hand are those the ab initio stage chose (arbitrary).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..geometry import quat_to_matrix
from ..io._atomic import atomic_path
from ..maps.reconstruct import ParticleCTF
from ..maps.refine import RefineResult, refine
from ..maps.transforms import density_centre, shift_map
from .abinitio import AbInitioResult, estimate_orientations
from .global_result import GlobalResult
from .global_search import global_search

__all__ = ["STAGES", "ChainResult", "run_chain", "star_ctf"]

STAGES = ("abinitio", "global", "refine")


@dataclass
class ChainResult:
    """What :func:`run_chain` found: the ab initio stage, the global search and the refinement (None if
    stopped before them), the map-centring move (voxels x, y, z, removed from the maps) and one line
    per caveat."""

    abinitio: AbInitioResult
    searched: GlobalResult | None
    refined: RefineResult | None
    pixel_size: float
    map_shift: Tensor | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def quaternions(self) -> Tensor:
        """(P, 4) float64: the refined orientations, else those of the last stage run."""
        return (self.refined or self.searched or self.abinitio).quaternions

    @property
    def shifts(self) -> Tensor:
        """(P, 2) float64 pixels (x, y), the particle moved by +t in its image."""
        return (self.refined or self.searched or self.abinitio).shifts

    @property
    def origins_angst(self) -> Tensor:
        """RELION ``rlnOriginXAngst/YAngst`` (P, 2): −shifts · pixel size."""
        return -self.shifts * self.pixel_size

    def summary(self) -> list[str]:
        """Lines for a report: the ab initio verdict, the global search and its iterations, the refinement's
        resolution, the caveats."""
        lines = [self.abinitio.summary()]
        lines += [self.searched.summary(), self.searched.trajectory()] if self.searched is not None else []
        if self.refined is not None:
            r = self.refined
            lines.append(f"refine: {len(r.rounds)} round{'s' * (len(r.rounds) != 1)}, {r.kept} kept, "
                         f"FSC 0.143 resolution {r.resolution:.2f} Å "
                         f"(gold-standard half maps; the half sets shared one map up to {self.searched.shared_resolution:.2f} Å); "
                         f"mean shift {float(r.shifts.norm(dim=1).mean()):.2f} px")
            lines += [f"refine: {r.stopped}"] if r.stopped else []
        return lines + self.warnings


def star_ctf(particles, *, ignore_ctf: bool = False, device="cpu"):
    """The CTF of a RELION particle set for :func:`run_chain`: ``(ctf, phase_flipped, notes)``.

    ``ctf(indices, size)`` (:class:`cryoorient.maps.reconstruct.ParticleCTF`, computed on ``device``) from
    the STAR file's defocus and optics columns, or None where it has none; ``phase_flipped`` from
    ``rlnCtfDataArePhaseFlipped``; ``notes`` the lines to print about it. CTF columns are never
    dropped silently: ``ignore_ctf`` drops them with a note; CTF-premultiplied images are refused.
    """
    flag = lambda label: label in particles.data and bool(np.any(particles.data[label].to_numpy() == 1))  # noqa: E731
    if particles.defocus_u is None:
        return None, False, ["no CTF columns (rlnDefocusU): the images are taken to be CTF-free"]
    if ignore_ctf:
        return None, False, ["CTF columns present but ignored on request: the images are taken to be CTF-free"]
    if flag("rlnCtfDataAreCtfPremultiplied"):
        raise ValueError("rlnCtfDataAreCtfPremultiplied = 1: CTF-premultiplied images are not supported")
    if particles.pixel_size is None:
        raise ValueError("the particles have CTF columns but no pixel size (rlnImagePixelSize)")
    flipped = flag("rlnCtfDataArePhaseFlipped")
    note = f"CTF from the STAR file's columns{' (images already phase-flipped)' if flipped else ''}"
    return ParticleCTF(particles, device), flipped, [note]


def _centre_map(result: RefineResult) -> Tensor:
    """Move the maps of ``result`` so that its map's density centre
    (:func:`cryoorient.maps.transforms.density_centre`) is at the box centre, and its shifts with them
    (module docstring); returns the move removed (x, y, z, voxels)."""
    c = density_centre(result.map)
    result.map = shift_map(result.map, -c)
    result.half_maps = shift_map(result.half_maps, -c)
    A = quat_to_matrix(result.quaternions)
    result.shifts = result.shifts + (A[:, :2, :] @ c)  # image_i = S_{t + (A c)_xy} P_A (map moved by −c)
    return c


def _data_key(images, ctf, pixel_size: float) -> str:
    """A fingerprint of the images and their CTF: shape, pixel size, and 8 images from each end and the middle."""
    P = len(images)
    sample = sorted({*range(min(8, P)), *range(max(0, P // 2 - 4), min(P, P // 2 + 4)), *range(max(0, P - 8), P)})
    h = hashlib.sha256(json.dumps([list(images.shape), float(pixel_size)]).encode())
    x = images[sample] if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images[sample]))
    h.update(x.detach().cpu().float().contiguous().numpy().tobytes())
    if ctf is not None:  # a ParticleCTF's values from the CPU: a resume on another device finds the same key
        ctf = ctf.to("cpu") if isinstance(ctf, ParticleCTF) else ctf
        h.update(torch.as_tensor(ctf(torch.as_tensor(sample), images.shape[-1])).cpu().float().numpy().tobytes())
    return h.hexdigest()


class _Checkpoints:
    """Stage results in ``workdir`` (None: none kept), each stored with its key."""

    def __init__(self, workdir, resume: bool, force: bool):
        self.dir = None if workdir is None else Path(os.fspath(workdir))
        self.resume = resume
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        found = [s for s in STAGES if self.path(s).exists()]
        if found and not resume and not force:
            raise FileExistsError(f"'{self.dir}' holds checkpoints ({', '.join(found)}); pass resume=True (--resume) "
                                  f"to continue from them or force=True (--force) to start over")
        for stage in found if force and not resume else ():
            self.path(stage).unlink()  # starting over: no stale later stage survives

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.pt"

    def load(self, stage: str, key: str):
        if self.dir is None or not self.resume or not self.path(stage).exists():
            return None
        saved = torch.load(self.path(stage), map_location="cpu", weights_only=False)
        if saved.get("key") != key:
            raise ValueError(f"checkpoint '{self.path(stage)}' was made from other images, CTF or options, or by "
                             f"another version of cryoorient; "
                             f"remove it or pass force=True (--force) to start over")
        return saved["result"]

    def save(self, stage: str, key: str, result) -> None:
        if self.dir is not None:
            with atomic_path(self.path(stage), overwrite=True) as tmp:
                torch.save({"key": key, "result": result}, tmp)


def _defaults(stage) -> dict:
    """A stage's keyword defaults."""
    return {k: p.default for k, p in inspect.signature(stage).parameters.items() if p.default is not p.empty}


# the defaults each stage runs with, in the checkpoints' keys: a checkpoint written under other defaults
# (another version of the package) is not taken
STAGE_DEFAULTS = {stage.__name__: _defaults(stage) for stage in (estimate_orientations, global_search, refine)}
# the fields each stage's result holds, in the keys too: a checkpoint of a result with other fields (written by
# another version of the package, whose version string may be the same) is not taken
RESULT_FIELDS = {cls.__name__: [f.name for f in dataclasses.fields(cls)]
                 for cls in (AbInitioResult, GlobalResult, RefineResult)}


def _digest(*parts) -> str:
    """SHA-256 of ``parts`` as JSON (a checkpoint's key)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def run_chain(images, *, pixel_size: float, ctf=None, phase_flipped: bool = False, workdir=None,
              resume: bool = False, force: bool = False, stop_after: str | None = None,
              abinitio_options: dict | None = None, global_options: dict | None = None,
              refine_options: dict | None = None, seed: int = 0,
              device="cpu", progress: bool = False) -> ChainResult:
    """Orientations, shifts, half maps and map of ``images`` (P, n, n) from the images alone (module docstring).

    ``pixel_size`` in Å. ``ctf``: None for CTF-free images, else ``ctf(indices, size)`` -> real
    CTFs (B, size, size // 2 + 1) on the ``rfft2`` grid (:func:`star_ctf` makes it from a STAR
    file); ``phase_flipped``: the images are already phase-flipped (no second flip; refinement
    uses |CTF|). ``workdir``: where checkpoints go (None: none); an existing checkpoint is used
    with ``resume``, replaced with ``force``, else refused. ``stop_after``: a stage of
    :data:`STAGES` to end after. ``abinitio_options`` / ``global_options`` / ``refine_options``:
    further keyword arguments of :func:`estimate_orientations` / :func:`global_search` /
    :func:`cryoorient.maps.refine.refine`.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES} or None; got {stop_after!r}")
    ab_opts, glob_opts, ref_opts = (dict(o or {}) for o in (abinitio_options, global_options, refine_options))
    common = ("ctf", "seed", "device", "progress")
    for name, opts, own in (("abinitio_options", ab_opts, common),
                            ("global_options", glob_opts, common + ("shifts", "pixel_size")),
                            ("refine_options", ref_opts, common + ("shifts", "pixel_size", "half"))):
        clash = set(opts) & set(own)
        if clash:
            raise ValueError(f"{name} must not set {sorted(clash)}: run_chain sets them")
    from tqdm.auto import tqdm

    checkpoints = _Checkpoints(workdir, resume, force)
    key = _data_key(images, ctf, pixel_size)
    key_ab = _digest(__version__, RESULT_FIELDS, key, phase_flipped, seed,
                     {**STAGE_DEFAULTS["estimate_orientations"], **ab_opts})
    key_glob = _digest(key_ab, {**STAGE_DEFAULTS["global_search"], **glob_opts})
    key_ref = _digest(key_glob, {**STAGE_DEFAULTS["refine"], **ref_opts})
    bar = tqdm(total=len(STAGES), desc="ab initio chain", unit="stage", disable=not progress)
    ab = checkpoints.load("abinitio", key_ab)
    if ab is None:
        ab = estimate_orientations(images, ctf=None if phase_flipped else ctf, seed=seed, device=device,
                                   progress=progress, **ab_opts)
        checkpoints.save("abinitio", key_ab, ab)
    bar.update(1)
    result = ChainResult(ab, None, None, float(pixel_size), warnings=list(ab.warnings))
    if not ab.determined:
        result.warnings.append("the ab initio orientations are NOT determined (see above): the global search "
                               "chooses between them and random starts by how well the particles match")
    if stop_after == "abinitio":
        bar.close()
        return result
    ctf_now = ctf
    if ctf is not None and phase_flipped:
        def ctf_now(indices, size):  # the images carry |CTF| now
            return torch.as_tensor(ctf(indices, size)).abs()
    searched = checkpoints.load("global", key_glob)
    if searched is None:
        searched = global_search(images, ab.quaternions, shifts=ab.shifts, ctf=ctf_now, pixel_size=pixel_size,
                                 seed=seed, device=device, progress=progress, **glob_opts)
        checkpoints.save("global", key_glob, searched)
    bar.update(1)
    result.searched = searched
    if searched.ambiguous:
        result.warnings.append(f"proceeding although the global search's orientations are NOT reproducible "
                               f"({searched.agreement:.3f} rad between two independent starts that the particles "
                               f"match about as well): the map and orientations may be wrong")
    elif searched.reproducible is False:
        result.warnings.append(f"proceeding although the global search's orientations were not reproduced "
                               f"({searched.agreement:.3f} rad from another start, which the particles matched worse, "
                               f"paired z {searched.separation:.1f}): that start stopped in a worse optimum; whether "
                               f"this one is the best is not known")
    if not searched.converged:
        last, rule = searched.iterations[-1], {**STAGE_DEFAULTS["global_search"], **glob_opts}
        result.warnings.append(f"proceeding although the global search stopped at its cap of "
                               f"{rule['iterations']} iterations, not converged: {last.changed:.1%} of the "
                               f"particles changed orientation by more than a grid step in the last (it stops below "
                               f"{rule['tolerance']:.1%} once the band stays; band {last.band} px; a higher cap: global option "
                               f"'iterations', cryoorient abinitio --iterations)")
    if stop_after == "global":
        bar.close()
        return result
    saved = checkpoints.load("refine", key_ref)
    if saved is None:
        refined = refine(images, searched.quaternions, shifts=searched.shifts.clone(), ctf=ctf_now,
                         pixel_size=pixel_size, half=searched.half, seed=seed, device=device, progress=progress, **ref_opts)
        saved = {"refined": refined, "map_shift": _centre_map(refined)}
        checkpoints.save("refine", key_ref, saved)
    bar.update(1)
    bar.close()
    result.refined, result.map_shift = saved["refined"], saved["map_shift"]
    if result.refined.resolution >= searched.shared_resolution:
        result.warnings.append(f"the half maps' FSC 0.143 resolution, {result.refined.resolution:.2f} Å, is not beyond "
                               f"the {searched.shared_resolution:.2f} Å up to which both half sets were compared with "
                               f"one map (the global search's exploration): nothing in the map is confirmed by "
                               f"independent halves, and the map and orientations may be wrong")
    return result
