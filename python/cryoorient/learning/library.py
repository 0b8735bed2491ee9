"""The structure library: asymmetric atomic models to train on, for proteins the network never saw.

Takes a folder of ``.cif``/``.mmcif``/``.pdb`` files (e.g. ``../shared/data/structures``); gives the
model paths to render on the fly (``imaging.render.ProjectionRenderer.from_sources``, one point
group, C1, for the whole library) and the symmetric ones it leaves out.
"""

from __future__ import annotations

from pathlib import Path

from ..io.structure import is_model_path, repeated_chain_symmetry

__all__ = ["structure_library"]


def structure_library(folder, max_symmetry: float = 0.5) -> tuple[list[Path], list[Path]]:
    """The atomic models (``.cif``/``.mmcif``/``.pdb``) in ``folder``, sorted: ``(kept, symmetric)``.

    Models whose :func:`io.repeated_chain_symmetry` exceeds ``max_symmetry`` are set apart:
    symmetry-related views of them give identical projections, which the plain d_q target
    (one point group for the whole library) would ask the network to tell apart.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such directory: {folder}")
    models = sorted(p for p in folder.iterdir() if is_model_path(p))
    if not models:
        raise ValueError(f"no .cif/.pdb files in {folder}")
    symmetric = [p for p in models if repeated_chain_symmetry(p) > max_symmetry]
    kept = [p for p in models if p not in symmetric]
    if not kept:
        raise ValueError(f"every model in {folder} is symmetric (repeated_chain_symmetry > {max_symmetry})")
    return kept, symmetric
