"""Particle files by suffix: RELION ``.star``, cryoSPARC ``.cs``, or a bare ``.mrcs`` stack.

:func:`read_particles` is what a command calls wherever it accepts particles;
:func:`write_particles` and :func:`write_recovered_star` write ``.star`` or ``.cs``
by the output's suffix.  A pixel size given here (the ``--pixel-size`` flag)
replaces the file's or supplies a missing one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ._atomic import FormatError, PathLike
from .cryosparc import read_cs, write_cs
from .mrc import read_stack_noting, warn_header_defects
from .particles import Particles, check_pixel_size
from .star import read_star, write_star

__all__ = ["read_particles", "write_particles", "write_recovered_star", "PARTICLE_SUFFIXES"]

#: Suffixes :func:`read_particles` accepts (lower case).
PARTICLE_SUFFIXES = (".star", ".cs", ".mrcs", ".mrc")


def _suffix(path: Path, allowed) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise FormatError(f"'{path}': unknown particle file type '{path.suffix}'; expected {', '.join(allowed)}")
    return suffix


def _read_bare_stack(p: Path, pixel_size: Optional[float], require_pixel_size: bool) -> Particles:
    """One particle per image of an MRC stack, pixel size from the header unless given; no angles."""
    images, header_pixel, notes = read_stack_noting(p, mmap=True)
    if notes:
        warn_header_defects(f"'{p}'", notes)
    pixel = float(pixel_size) if pixel_size is not None else header_pixel
    stack = Path(os.path.abspath(p))
    particles = Particles.create(stack, np.arange(len(images)), pixel_size=pixel if pixel > 0 else np.nan,
                                 image_size=images.shape[-1] if images.shape[-1] == images.shape[-2] else None,
                                 root=stack.parent)
    if require_pixel_size:
        check_pixel_size(particles, f"'{p}' (its header's cell is zero)")
    return particles


def read_particles(path: PathLike, pixel_size: Optional[float] = None, require_pixel_size: bool = False) -> Particles:
    """Particles from a RELION STAR file, a cryoSPARC ``.cs`` file or a bare ``.mrcs``/``.mrc`` stack.

    ``pixel_size`` (Å) replaces the file's pixel size or supplies a missing one;
    with ``require_pixel_size`` particles without one are refused (FormatError
    naming ``--pixel-size``).  Raises FileNotFoundError, FormatError (also
    for an unknown suffix) or ValueError (a pixel size that is not positive).
    """
    p = Path(os.fspath(path))
    suffix = _suffix(p, PARTICLE_SUFFIXES)
    if pixel_size is not None and not float(pixel_size) > 0:
        raise ValueError(f"the pixel size (--pixel-size) must be a positive number of Å, got {pixel_size!r}")
    if suffix == ".star":
        return read_star(p, pixel_size, require_pixel_size)
    if suffix == ".cs":
        return read_cs(p, pixel_size, require_pixel_size)
    return _read_bare_stack(p, pixel_size, require_pixel_size)


def write_particles(path: PathLike, particles: Particles, overwrite: bool = False) -> None:
    """Write ``particles`` as RELION 3.1 STAR (``.star``) or cryoSPARC (``.cs``) by the suffix of ``path``."""
    p = Path(os.fspath(path))
    (write_cs if _suffix(p, (".star", ".cs")) == ".cs" else write_star)(p, particles, overwrite=overwrite)


def write_recovered_star(particles, q, path, overwrite: bool = False) -> Path:
    """Write ``particles`` with rlnAngleRot/Tilt/Psi from quaternions ``q`` (RELION A convention),
    as STAR, or as cryoSPARC ``.cs`` when ``path`` ends in ``.cs``.

    Origins are set to 0: the method recovers orientations, not shifts (the SNN features
    are shift-invariant). CTF and optics are kept.
    """
    from ..geometry import quat_to_euler

    if q.shape[0] != len(particles):
        raise ValueError(f"{q.shape[0]} orientations for {len(particles)} particles")
    out = particles.copy()
    rot, tilt, psi = quat_to_euler(q.detach().double().cpu())
    out.rot, out.tilt, out.psi = rot.numpy(), tilt.numpy(), psi.numpy()
    out.origin_x_angst = np.zeros(len(out))
    out.origin_y_angst = np.zeros(len(out))
    write_particles(path, out, overwrite=overwrite)
    return Path(path)
