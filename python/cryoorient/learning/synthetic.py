"""Training proteins for a comparison that must work on proteins never seen (issue 20).

* :data:`HELD_OUT` — library models never used in training or model selection, the evaluation
  proteins of ``bench/neighbour_precision.py`` together with 5j0n (a map, not in the library) and
  generated proteins of seeds from :data:`EVALUATION_SEEDS` on; :func:`training_models` is the
  library without them.
* :func:`synthetic_renderers` — renderers (``imaging.render.ProjectionRenderer``, for
  ``sources.OnTheFlySource``) of generated proteins (:func:`.generator.random_protein`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..imaging.render import ProjectionRenderer
from ..io import radius_of_gyration
from .generator import protein_density, random_protein
from .library import structure_library

__all__ = ["HELD_OUT", "EVALUATION_SEEDS", "training_models", "synthetic_renderers"]

#: Library models (``../shared/data/structures`` stems) left out of all training: a globular
#: (5h73, inertia axis ratio 1.2), a typical (1dix, 1.8) and an elongated one (4p5j, 2.8).
HELD_OUT = ("1dix", "4p5j", "5h73")
#: Generated proteins of seeds >= this are evaluation proteins; training uses seeds below it.
EVALUATION_SEEDS = 10**9


def training_models(folder) -> list[Path]:
    """The asymmetric models of ``folder`` (:func:`.library.structure_library`) less :data:`HELD_OUT`."""
    kept, _ = structure_library(folder)
    out = [p for p in kept if p.stem.lower() not in HELD_OUT]
    if not out:
        raise ValueError(f"no training models in {folder} once the held-out {HELD_OUT} are left out")
    return out


def synthetic_renderers(seeds: Sequence[int], settings, device="cpu", particle_rg: Sequence[float] = (),
                        pixel_size: float | None = None, resolution: float | None = None,
                        pilot: int = 512) -> list[ProjectionRenderer]:
    """One renderer per generated protein ``random_protein(seed)`` and value of ``particle_rg``.

    ``settings``: a ``simulate.SimulationSettings`` (its ``size`` the image and map edge).
    ``particle_rg`` (pixels): each protein is rendered at the pixel size that gives it that radius
    of gyration (as ``ProjectionRenderer.from_sources`` does for atomic models); without it, at
    ``pixel_size`` Å. ``resolution`` Å (default 2 pixels); B-factors blur the atoms
    (:func:`.generator.protein_density`). Seeds must lie below :data:`EVALUATION_SEEDS`.
    """
    seeds = [int(s) for s in seeds]
    if any(not 0 <= s < EVALUATION_SEEDS for s in seeds):
        raise ValueError(f"training seeds must lie in [0, {EVALUATION_SEEDS}); got {seeds}")
    if settings.size is None:
        raise ValueError("settings.size (the image edge, pixels) is needed to render generated proteins")
    rgs = [float(r) for r in particle_rg]
    if not rgs and pixel_size is None:
        raise ValueError("give particle_rg (pixels) or pixel_size (Å)")
    sources = []
    for seed in seeds:
        model = random_protein(seed)
        pixels = [radius_of_gyration(model.coords, model.weights) / r for r in rgs] if rgs else [pixel_size]
        sources += [protein_density(model, settings.size, px, resolution) for px in pixels]
    return ProjectionRenderer.from_sources(sources, settings, device, pilot=pilot)
