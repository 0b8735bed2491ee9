"""The particle container shared by every metadata format, and the images it points to.

Conventions
-----------
* :class:`Particles` is backed by one pandas DataFrame, one row per particle,
  columns named by RELION labels without the leading underscore
  (``rlnAngleRot`` ...), whatever file the particles came from (RELION STAR,
  cryoSPARC ``.cs``).  Optics-group values are merged into every row, so all
  per-particle quantities are read the same way.
* Angles ``rlnAngleRot/Tilt/Psi`` are RELION Euler angles in **degrees**
  (matrix ``A`` of :func:`cryoorient.geometry.euler_to_matrix`).  Unknown
  orientations are *absent* columns (:attr:`Particles.angles` is None), never
  zeros.
* Origins ``rlnOriginXAngst/YAngst`` are in **Å** (RELION 3.1: the shift that
  brings the particle to the box centre).
* Pixel size ``rlnImagePixelSize`` is in Å; a particle without a positive pixel
  size is refused by :func:`check_pixel_size`, whose message names the
  command-line flag ``--pixel-size``.
* Defocus U/V in Å, defocus angle and phase shift in degrees, voltage in kV,
  spherical aberration in mm, amplitude contrast as a fraction.
* Image names are ``NNNNNN@stack.mrcs`` with a **1-based** image number;
  :attr:`Particles.indices` are **0-based**.  Relative stack paths are
  resolved against :attr:`Particles.root`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ._atomic import FormatError, PathLike, _os_error
from .mrc import read_stack_noting, warn_header_defects

__all__ = ["Particles", "read_particle_images", "check_pixel_size"]

_IMAGE_NAME_RE = r"^\s*(\d+)@(.+?)\s*$"


class _Column:
    """Descriptor exposing one numeric DataFrame column as a numpy array (or None)."""

    def __init__(self, label: str, dtype=np.float64, doc: str = "") -> None:
        self.label, self.dtype = label, dtype
        self.__doc__ = f"{doc} (column ``{label}``; None if absent). Assign an array or None."

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        if self.label not in obj.data:
            return None
        return obj.data[self.label].to_numpy(dtype=self.dtype, copy=True)

    def __set__(self, obj, value) -> None:
        if value is None:
            obj.data = obj.data.drop(columns=[self.label], errors="ignore")
            return
        arr = np.asarray(value, dtype=self.dtype)
        if arr.ndim == 0:
            arr = np.full(len(obj.data), arr, dtype=self.dtype)
        if arr.shape != (len(obj.data),):
            raise ValueError(f"{self.label}: expected {len(obj.data)} values, got shape {arr.shape}")
        obj.data[self.label] = arr


@dataclass
class Particles:
    """Particle metadata (one row per particle, RELION labels).

    ``data`` holds one row per particle (RELION labels, optics values merged);
    ``root`` is the directory that relative image paths are resolved against;
    ``optics_columns`` lists the labels a STAR writer puts in ``data_optics``
    (labels of :data:`cryoorient.io.OPTICS_COLUMNS` present in ``data`` are
    always treated as optics).  Columns not exposed as attributes are kept.
    """

    data: pd.DataFrame
    root: Path = field(default_factory=lambda: Path.cwd())
    optics_columns: Tuple[str, ...] = ()

    rot = _Column("rlnAngleRot", doc="First RELION Euler angle, degrees")
    tilt = _Column("rlnAngleTilt", doc="Second RELION Euler angle, degrees")
    psi = _Column("rlnAnglePsi", doc="Third RELION Euler angle, degrees")
    origin_x_angst = _Column("rlnOriginXAngst", doc="Origin shift x, Å")
    origin_y_angst = _Column("rlnOriginYAngst", doc="Origin shift y, Å")
    defocus_u = _Column("rlnDefocusU", doc="Defocus U, Å")
    defocus_v = _Column("rlnDefocusV", doc="Defocus V, Å")
    defocus_angle = _Column("rlnDefocusAngle", doc="Astigmatism angle, degrees")
    voltage = _Column("rlnVoltage", doc="Acceleration voltage, kV")
    spherical_aberration = _Column("rlnSphericalAberration", doc="Cs, mm")
    amplitude_contrast = _Column("rlnAmplitudeContrast", doc="Amplitude contrast fraction")
    phase_shift = _Column("rlnPhaseShift", doc="Phase shift, degrees")
    pixel_size = _Column("rlnImagePixelSize", doc="Image pixel size, Å")
    image_size = _Column("rlnImageSize", np.int64, doc="Image box size, pixels")

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(os.fspath(self.root)))
        self.optics_columns = tuple(self.optics_columns)
        if "rlnImageName" not in self.data:
            raise ValueError("Particles.data needs an rlnImageName column")

    # -- constructors ------------------------------------------------------- #
    @classmethod
    def create(
        cls,
        stack_paths: Union[PathLike, Sequence[PathLike]],
        indices: Sequence[int],
        pixel_size: float,
        image_size: Optional[int] = None,
        *,
        root: Optional[PathLike] = None,
        optics_group: Optional[Sequence[int]] = None,
        **columns,
    ) -> "Particles":
        """Build particles from stack path(s) and 0-based image indices.

        ``stack_paths`` is one path for all particles or one per particle
        (relative paths are taken relative to ``root``, default: cwd).
        Keyword ``columns`` are attribute names of this class (``rot``, ``tilt``,
        ``psi``, ``origin_x_angst``, ``defocus_u``, ``voltage`` ...) or raw
        RELION labels (``rlnCtfBfactor=...``); scalars are broadcast.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and idx.min() < 0:
            raise ValueError("indices must be 0-based non-negative integers")
        n = idx.size
        if isinstance(stack_paths, (str, os.PathLike)):
            stacks = [os.fspath(stack_paths)] * n
        else:
            stacks = [os.fspath(s) for s in stack_paths]
            if len(stacks) != n:
                raise ValueError(f"got {len(stacks)} stack paths for {n} indices")
        names = [f"{i + 1:06d}@{s}" for i, s in zip(idx, stacks)]
        obj = cls(pd.DataFrame({"rlnImageName": names}), root=root if root is not None else Path.cwd())
        obj.pixel_size = pixel_size
        if image_size is not None:
            obj.image_size = image_size
        obj.optics_group = 1 if optics_group is None else optics_group
        for key, value in columns.items():
            attr = getattr(cls, key, None)
            if isinstance(attr, _Column):
                setattr(obj, key, value)
            elif key.startswith("rln"):
                arr = np.asarray(value)
                obj.data[key] = np.broadcast_to(arr, (n,) + arr.shape[1:]) if arr.ndim <= 1 else arr
            else:
                raise TypeError(f"unknown particle column {key!r}")
        return obj

    # -- basic protocol ----------------------------------------------------- #
    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (f"Particles(n={len(self)}, root='{self.root}', "
                f"columns={list(self.data.columns)})")

    def copy(self) -> "Particles":
        return Particles(self.data.copy(), self.root, self.optics_columns)

    def subset(self, indices) -> "Particles":
        """Particles selected by integer positions or a boolean mask (new object)."""
        sel = np.asarray(indices)
        if sel.dtype == bool:
            sel = np.flatnonzero(sel)
        return Particles(self.data.iloc[sel].reset_index(drop=True), self.root, self.optics_columns)

    # -- image locations ---------------------------------------------------- #
    @property
    def image_names(self) -> List[str]:
        """The ``NNNNNN@path`` strings as stored (1-based image numbers)."""
        return self.data["rlnImageName"].astype(str).tolist()

    def _parse_names(self) -> Tuple[np.ndarray, List[str]]:
        return parse_image_names(self.data["rlnImageName"], where="Particles.data")

    @property
    def indices(self) -> np.ndarray:
        """0-based image index of each particle within its stack (int64)."""
        return self._parse_names()[0]

    @property
    def stack_paths(self) -> List[Path]:
        """Absolute path of each particle's stack (relative names resolved against ``root``)."""
        _, stacks = self._parse_names()
        cache = {}
        out = []
        for s in stacks:
            p = cache.get(s)
            if p is None:
                p = cache[s] = Path(os.path.abspath(os.path.join(self.root, s)))
            out.append(p)
        return out

    def stack_names_for(self, output: PathLike) -> List[str]:
        """Each particle's stack path as a file written at ``output`` names it: relative to
        ``output``'s directory when the stack lies under it, otherwise absolute (POSIX form)."""
        out_dir = os.path.abspath(os.path.dirname(os.fspath(output)) or ".")
        cache = {}
        names = []
        for sp in self.stack_paths:
            r = cache.get(sp)
            if r is None:
                s = os.path.abspath(sp)
                try:
                    under = os.path.commonpath([s, out_dir]) == out_dir
                except ValueError:  # different drives
                    under = False
                r = cache[sp] = Path(os.path.relpath(s, out_dir) if under else s).as_posix()
            names.append(r)
        return names

    def stack_image_sizes(self) -> Optional[np.ndarray]:
        """Each particle's image edge (pixels) from its stack's header, or None when any stack
        is absent, unreadable or not square (a header-only peek)."""
        import mrcfile

        sizes = {}
        try:
            paths = self.stack_paths
        except FormatError:
            return None
        out = np.empty(len(paths), dtype=np.int64)
        for i, sp in enumerate(paths):
            if sp not in sizes:
                try:
                    with mrcfile.open(sp, header_only=True, permissive=True) as m:
                        sizes[sp] = int(m.header.nx) if int(m.header.nx) == int(m.header.ny) else None
                except Exception:
                    sizes[sp] = None
            if sizes[sp] is None:
                return None
            out[i] = sizes[sp]
        return out

    @property
    def optics_group(self) -> np.ndarray:
        """1-based optics group of each particle (all 1 if the file has none)."""
        if "rlnOpticsGroup" not in self.data:
            return np.ones(len(self.data), dtype=np.int64)
        return self.data["rlnOpticsGroup"].to_numpy(dtype=np.int64, copy=True)

    @optics_group.setter
    def optics_group(self, value) -> None:
        _Column("rlnOpticsGroup", np.int64).__set__(self, value)

    @property
    def angles(self) -> Optional[np.ndarray]:
        """``[n, 3]`` array of (rot, tilt, psi) in degrees, or None if any is absent."""
        r, t, p = self.rot, self.tilt, self.psi
        if r is None or t is None or p is None:
            return None
        return np.stack([r, t, p], axis=1)


def parse_image_names(names: pd.Series, where: str) -> Tuple[np.ndarray, List[str]]:
    """Split ``NNNNNN@path[:mrcs]`` into (0-based indices, stack path strings)."""
    s = names.astype(str)
    parts = s.str.extract(_IMAGE_NAME_RE)
    bad = parts[0].isna().to_numpy().copy()
    num = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=np.float64)
    bad |= ~(num >= 1)
    if bad.any():
        rows = np.flatnonzero(bad)
        examples = ", ".join(f"row {r + 1}: {s.iloc[r]!r}" for r in rows[:3])
        raise FormatError(
            f"{where}: {rows.size} malformed rlnImageName value(s), expected 'NNNNNN@stack.mrcs' "
            f"with a 1-based image number ({examples})"
        )
    stacks = parts[1].str.replace(r":mrcs$", "", regex=True).tolist()
    return num.astype(np.int64) - 1, stacks


def check_pixel_size(particles: Particles, source: str) -> None:
    """Raise FormatError unless every particle has a positive, finite pixel size (Å).

    ``source`` opens the message (e.g. ``"'particles.star'"``); the message names
    the command-line flag ``--pixel-size`` that supplies a missing value.
    """
    px = particles.pixel_size
    if len(particles) == 0:
        return
    missing = len(particles) if px is None else int(np.count_nonzero(~(np.isfinite(px) & (px > 0))))
    if missing:
        raise FormatError(
            f"{source} gives no pixel size (rlnImagePixelSize) for {missing} of {len(particles)} "
            "particles; pass --pixel-size"
        )


def _selection(indices, n_all: int) -> np.ndarray:
    """Positions ``[m]`` from an int array, a boolean mask or None (all)."""
    if indices is None:
        return np.arange(n_all)
    sel = np.asarray(indices)
    if sel.dtype == bool:
        if sel.shape != (n_all,):
            raise ValueError(f"boolean mask must have length {n_all}")
        return np.flatnonzero(sel)
    sel = sel.astype(np.int64).reshape(-1)
    if sel.size and (sel.max() >= n_all or sel.min() < -n_all):
        raise IndexError(f"particle index out of range for {n_all} particles")
    return np.where(sel < 0, sel + n_all, sel)


def read_particle_images(particles: Particles, indices=None) -> np.ndarray:
    """Load particle images as float32 ``[n, y, x]``.

    ``indices`` selects particles (positions in ``particles``; int array,
    boolean mask or None for all) and sets the output order.  Each stack is
    memory-mapped once and only the needed images are read (in file order).
    Stacks that need mrcfile's permissive mode give one warning for all.
    Raises FileNotFoundError (one error naming the first of the missing
    stacks) or FormatError for bad stacks, image numbers beyond a stack's
    length, or stacks of differing image size.
    """
    sel = _selection(indices, len(particles))
    img_idx_all, stacks_all = parse_image_names(particles.data["rlnImageName"], where="particles")
    img_idx = img_idx_all[sel]
    codes, uniques = pd.factorize(pd.Series([stacks_all[i] for i in sel], dtype=object))
    paths = [Path(os.path.abspath(os.path.join(particles.root, rel))) for rel in uniques]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise _os_error(
            FileNotFoundError,
            f"particle stack not found: '{absent[0]}'"
            + (f" (and {len(absent) - 1} more of the {len(paths)} stacks)" if len(absent) > 1 else "")
            + f"; image names are resolved against '{particles.root}'",
            absent[0],
        )

    result = None
    shape_from = None
    noted = {}
    for code, (rel, stack_path) in enumerate(zip(uniques, paths)):
        images, _, notes = read_stack_noting(stack_path, mmap=True)
        if notes:
            noted[stack_path] = notes
        pos = np.flatnonzero(codes == code)
        want = img_idx[pos]
        if want.max() >= images.shape[0]:
            raise FormatError(
                f"particle image {int(want.max()) + 1:06d}@{rel} does not exist: '{stack_path}' "
                f"holds only {images.shape[0]} images"
            )
        if result is None:
            result = np.empty((sel.size,) + tuple(images.shape[1:]), dtype=np.float32)
            shape_from = stack_path
        elif tuple(images.shape[1:]) != result.shape[1:]:
            raise FormatError(
                f"image size differs between stacks: '{shape_from}' has {result.shape[1:]}, "
                f"'{stack_path}' has {tuple(images.shape[1:])}"
            )
        order = np.argsort(want, kind="stable")
        uniq, inverse = np.unique(want[order], return_inverse=True)
        block = np.asarray(images[uniq], dtype=np.float32)  # sorted unique reads only
        result[pos[order]] = block[inverse]
        del images
    if noted:
        first = next(iter(noted))
        where = f"'{first}'" + (f" and {len(noted) - 1} more stacks" if len(noted) > 1 else "")
        warn_header_defects(where, noted[first])
    if result is None:
        size = particles.image_size
        s = int(size[0]) if size is not None and len(size) else 0
        result = np.empty((0, s, s), dtype=np.float32)
    return result
