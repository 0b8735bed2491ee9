"""RELION particle STAR files (via ``starfile``).

Conventions
-----------
* :class:`Particles` is backed by one pandas DataFrame, one row per particle,
  columns named by RELION labels without the leading underscore
  (``rlnAngleRot`` ...).  Optics-group values are merged into every row, so
  all per-particle quantities can be read the same way whatever the version.
* Angles ``rlnAngleRot/Tilt/Psi`` are RELION Euler angles in **degrees**,
  kept exactly as in the file (no conversion happens in the io layer).
* Origins are in **Å** (``rlnOriginXAngst/YAngst``); pre-3.1 ``rlnOriginX/Y``
  (pixels) are converted to Å with the pixel size on reading.
* Pixel size ``rlnImagePixelSize`` is in Å; pre-3.1 files are converted from
  ``rlnPixelSize`` or ``rlnDetectorPixelSize`` [µm] * 1e4 / ``rlnMagnification``.
* Defocus U/V in Å, defocus angle and phase shift in degrees, voltage in kV,
  spherical aberration in mm, amplitude contrast as a fraction.
* Image names are ``NNNNNN@stack.mrcs`` with a **1-based** image number;
  :attr:`Particles.indices` are **0-based**.  Relative stack paths are
  resolved against the STAR file's directory (:attr:`Particles.root`).
* :func:`write_star` always writes RELION 3.1 format (``data_optics`` +
  ``data_particles``), atomically, never replacing a file unless asked.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import starfile

from ._atomic import FormatError, PathLike, _os_error, atomic_path, check_overwrite
from .mrc import read_stack

__all__ = ["Particles", "read_star", "write_star", "read_particle_images", "OPTICS_COLUMNS"]

#: RELION 3.1 labels that live in ``data_optics`` (one value per optics group).
OPTICS_COLUMNS: Tuple[str, ...] = (
    "rlnOpticsGroupName",
    "rlnOpticsGroup",
    "rlnMtfFileName",
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographBinning",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
)
_GROUP_LABELS = ("rlnOpticsGroupName", "rlnOpticsGroup")
_STRING_LABELS = ["rlnImageName", "rlnOpticsGroupName", "rlnMicrographName", "rlnMtfFileName",
                  "rlnOddZernike", "rlnEvenZernike"]
_IMAGE_NAME_RE = r"^\s*(\d+)@(.+?)\s*$"


# --------------------------------------------------------------------------- #
# Particles
# --------------------------------------------------------------------------- #
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
    """Particle metadata from a RELION STAR file.

    ``data`` holds one row per particle (RELION labels, optics values merged);
    ``root`` is the directory that relative image paths are resolved against;
    ``optics_columns`` lists the labels written to ``data_optics`` (labels in
    :data:`OPTICS_COLUMNS` present in ``data`` are always treated as optics).
    Columns not exposed as attributes are preserved on write.
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
        return _parse_image_names(self.data["rlnImageName"], where="Particles.data")

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


def _parse_image_names(names: pd.Series, where: str) -> Tuple[np.ndarray, List[str]]:
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


# --------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------- #
def _block_to_frame(block) -> Optional[pd.DataFrame]:
    if isinstance(block, pd.DataFrame):
        return block.copy()
    if isinstance(block, dict) and block:
        return pd.DataFrame([block])  # a one-row block written without loop_
    return None


def _pre31_pixel_size(df: pd.DataFrame, p: Path) -> Optional[pd.Series]:
    if "rlnImagePixelSize" in df:
        return df["rlnImagePixelSize"]
    if "rlnPixelSize" in df:
        return df["rlnPixelSize"].astype(float)
    if "rlnDetectorPixelSize" in df and "rlnMagnification" in df:
        mag = df["rlnMagnification"].astype(float)
        if (mag <= 0).any():
            raise FormatError(f"'{p}': rlnMagnification must be positive")
        return df["rlnDetectorPixelSize"].astype(float) * 1e4 / mag
    return None


def read_star(path: PathLike, pixel_size: Optional[float] = None) -> Particles:
    """Read a RELION particle STAR file (3.1+ with optics groups, or pre-3.1).

    ``pixel_size`` (Å) overrides/provides the pixel size when the file has none
    (needed e.g. to convert pre-3.1 pixel origins).  See the module docstring
    for units.  Raises FileNotFoundError, or FormatError for unparsable files,
    no particles block, missing ``rlnImageName``, malformed image names,
    unknown optics groups or origins in pixels without a pixel size.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise _os_error(FileNotFoundError, f"STAR file not found: '{p}'", p)
    if p.is_dir():
        raise _os_error(IsADirectoryError, f"expected a STAR file but '{p}' is a directory", p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(p, always_dict=True, parse_as_string=list(_STRING_LABELS))
    except Exception as err:  # starfile/pandas raise a zoo of types on garbage
        raise FormatError(f"'{p}' could not be parsed as a STAR file: {type(err).__name__}: {err}") from err
    if not isinstance(blocks, dict):
        raise FormatError(f"'{p}' could not be parsed as a STAR file")
    names = [f"data_{k}" for k in blocks]

    optics = None
    optics_cols: Tuple[str, ...] = ()
    if "particles" in blocks:
        df = _block_to_frame(blocks["particles"])
        if df is None:
            raise FormatError(f"'{p}': data_particles block is empty or not a table")
        if "rlnImageName" not in df:
            raise FormatError(f"'{p}': data_particles has no rlnImageName column")
        if "optics" in blocks:
            optics = _block_to_frame(blocks["optics"])
            if optics is None:
                raise FormatError(f"'{p}': data_optics block is empty or not a table")
    else:
        if "optics" in blocks:
            raise FormatError(f"'{p}': has data_optics but no data_particles block (blocks: {names})")
        frames = {k: _block_to_frame(b) for k, b in blocks.items()}
        frames = {k: f for k, f in frames.items() if f is not None}
        with_names = [k for k, f in frames.items() if "rlnImageName" in f]
        if not frames:
            raise FormatError(f"'{p}': no particles block (no data block with a loop_ table found)")
        if not with_names:
            raise FormatError(
                f"'{p}': no particles block: no block has an rlnImageName column (blocks: {names})"
            )
        if len(with_names) > 1:
            raise FormatError(
                f"'{p}': several blocks have rlnImageName ({['data_' + k for k in with_names]}); "
                "cannot tell which holds the particles"
            )
        df = frames[with_names[0]]

    df = df.reset_index(drop=True)
    _parse_image_names(df["rlnImageName"], where=f"'{p}'")  # validate early
    df["rlnImageName"] = df["rlnImageName"].astype(str)

    if optics is not None:  # ---------------- RELION 3.1+ ---------------- #
        if "rlnOpticsGroup" not in optics:
            raise FormatError(f"'{p}': data_optics has no rlnOpticsGroup column")
        groups = pd.to_numeric(optics["rlnOpticsGroup"], errors="coerce")
        if groups.isna().any() or (groups != groups.round()).any():
            raise FormatError(f"'{p}': data_optics rlnOpticsGroup values must be integers")
        optics["rlnOpticsGroup"] = groups.astype(np.int64)
        if optics["rlnOpticsGroup"].duplicated().any():
            raise FormatError(f"'{p}': data_optics lists an optics group more than once")
        if "rlnOpticsGroup" not in df:
            if len(optics) == 1 or len(df) == 0:
                df["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0]) if len(optics) else 1
            else:
                raise FormatError(f"'{p}': data_particles has no rlnOpticsGroup column "
                                  f"but data_optics defines {len(optics)} groups")
        pg = pd.to_numeric(df["rlnOpticsGroup"], errors="coerce")
        known = set(optics["rlnOpticsGroup"].tolist())
        unknown = sorted(set(pg.dropna().astype(np.int64).tolist()) - known)
        if pg.isna().any() or unknown:
            raise FormatError(
                f"'{p}': particles refer to optics group(s) {unknown or 'non-integer'} "
                f"not defined in data_optics (defined: {sorted(known)})"
            )
        df["rlnOpticsGroup"] = pg.astype(np.int64)
        table = optics.set_index("rlnOpticsGroup")
        overridden = {c for c in table.columns if c in df}  # per-particle value wins
        for col in table.columns:
            if col not in overridden:
                df[col] = df["rlnOpticsGroup"].map(table[col]).to_numpy()
        optics_cols = tuple(c for c in optics.columns if c not in overridden)
        if pixel_size is not None:
            df["rlnImagePixelSize"] = float(pixel_size)
    else:  # ----------------------------------- pre-3.1 -------------------- #
        ps = pd.Series(float(pixel_size), index=df.index) if pixel_size is not None \
            else _pre31_pixel_size(df, p)
        if ps is not None:
            df["rlnImagePixelSize"] = ps.astype(float).to_numpy()
            if "rlnMicrographOriginalPixelSize" not in df:
                df["rlnMicrographOriginalPixelSize"] = df["rlnImagePixelSize"]
            df = df.drop(columns=[c for c in ("rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification")
                                  if c in df])

    # -------- origins: pixels -> Å ---------------------------------------- #
    for axis in ("X", "Y", "Z"):
        pix, ang = f"rlnOrigin{axis}", f"rlnOrigin{axis}Angst"
        if pix not in df:
            continue
        if ang not in df:
            if "rlnImagePixelSize" not in df or df["rlnImagePixelSize"].isna().any():
                raise FormatError(
                    f"'{p}': origins are given in pixels ({pix}) but the file has no pixel size "
                    "(rlnImagePixelSize, rlnPixelSize or rlnDetectorPixelSize+rlnMagnification); "
                    "pass read_star(..., pixel_size=...)"
                )
            df[ang] = df[pix].astype(float) * df["rlnImagePixelSize"].astype(float)
        df = df.drop(columns=[pix])

    return Particles(df, root=p.parent, optics_columns=optics_cols)


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #
def _format_column(values: pd.Series) -> np.ndarray:
    """Format one column as right-aligned strings (RELION-like)."""
    v = values
    if pd.api.types.is_bool_dtype(v):
        out = v.astype(np.int64).astype(str).to_numpy()
    elif pd.api.types.is_integer_dtype(v):
        out = v.astype(str).to_numpy()
    elif pd.api.types.is_float_dtype(v):
        a = v.to_numpy(dtype=np.float64)
        out = np.char.mod("%.6f", a).astype(object)  # object: no fixed width to truncate "%.6e"
        small = (np.abs(a) < 1e-3) & (a != 0) | (np.abs(a) >= 1e9)
        if small.any():
            out[small] = np.char.mod("%.6e", a[small])
        out[np.isnan(a)] = "nan"
    else:
        out = []
        for x in v.tolist():
            s = "" if x is None else str(x)
            if s == "" or any(ch.isspace() for ch in s) or s[0] in "_#'\"" or s.startswith(("data_", "loop_")):
                s = '"' + s.replace('"', "'") + '"'
            out.append(s)
        out = np.array(out, dtype=object)
    out = np.asarray(out, dtype=str)
    if out.size:
        width = max(int(np.char.str_len(out).max()), 1)
        out = np.char.rjust(out, width)
    return out


def _loop_text(name: str, df: pd.DataFrame) -> str:
    lines = [f"data_{name}", "", "loop_ "]
    lines += [f"_{c} #{i}" for i, c in enumerate(df.columns, 1)]
    if len(df):
        cols = [_format_column(df[c]) for c in df.columns]
        lines += [" ".join(row) for row in zip(*cols)]
    return "\n".join(lines) + "\n \n"


def _infer_image_size(particles: Particles) -> Optional[np.ndarray]:
    import mrcfile  # header-only peek; stacks may be absent, then give up quietly

    sizes = {}
    try:
        paths = particles.stack_paths
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


def _assign_optics_groups(df: pd.DataFrame, params: List[str]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Return (particle frame with rlnOpticsGroup set, optics table)."""
    keep_numbers = False
    if "rlnOpticsGroup" in df and len(df):
        check = params + (["rlnOpticsGroupName"] if "rlnOpticsGroupName" in df else [])
        keep_numbers = (not check) or bool(
            (df.groupby("rlnOpticsGroup")[check].nunique(dropna=False) <= 1).all().all()
        )
        if keep_numbers and "rlnOpticsGroupName" in df:
            names = df.groupby("rlnOpticsGroup")["rlnOpticsGroupName"].first()
            keep_numbers = not names.duplicated().any()
    if keep_numbers:
        group = df["rlnOpticsGroup"].astype(np.int64)
    elif params and len(df):
        group = df.groupby(params, dropna=False, sort=False).ngroup().astype(np.int64) + 1
    else:
        group = pd.Series(np.ones(len(df), dtype=np.int64), index=df.index)
    df = df.copy()
    df["rlnOpticsGroup"] = group.to_numpy()
    first = df.drop_duplicates("rlnOpticsGroup").sort_values("rlnOpticsGroup")
    table = pd.DataFrame(index=range(len(first)))
    names = None
    if "rlnOpticsGroupName" in df:
        per = df.groupby("rlnOpticsGroup")["rlnOpticsGroupName"]
        if (per.nunique(dropna=False) <= 1).all():
            cand = per.first().reindex(first["rlnOpticsGroup"]).astype(str)
            if not cand.duplicated().any():
                names = cand.tolist()
    if names is None:
        names = [f"opticsGroup{g}" for g in first["rlnOpticsGroup"]]
    table["rlnOpticsGroupName"] = names
    table["rlnOpticsGroup"] = first["rlnOpticsGroup"].to_numpy()
    for c in params:
        table[c] = first[c].to_numpy()
    return df, table


def write_star(path: PathLike, particles: Particles, overwrite: bool = False) -> None:
    """Write ``particles`` as a RELION 3.1 STAR file (``data_optics`` + ``data_particles``).

    Particles with identical optics parameters share an optics group (existing
    group numbers and names are kept when they are consistent).  Image names
    are rewritten relative to the STAR file's directory when the stack lies
    under it, otherwise as absolute paths.  ``rlnImageSize`` is filled from the
    stack headers when missing and the stacks exist; ``rlnImageDimensionality``
    defaults to 2.  Atomic; FileExistsError if ``path`` exists and not ``overwrite``.
    """
    out = Path(os.fspath(path))
    check_overwrite(out, overwrite)
    df = particles.data.copy()

    # image names relative to the output directory
    out_dir = os.path.abspath(out.parent if str(out.parent) else ".")
    idx = particles.indices
    rel_cache = {}
    names = []
    for i, sp in zip(idx, particles.stack_paths):
        r = rel_cache.get(sp)
        if r is None:
            s = os.path.abspath(sp)
            try:
                under = os.path.commonpath([s, out_dir]) == out_dir
            except ValueError:  # different drives
                under = False
            r = rel_cache[sp] = Path(os.path.relpath(s, out_dir) if under else s).as_posix()
        names.append(f"{i + 1:06d}@{r}")
    df["rlnImageName"] = names

    if "rlnImageSize" not in df:
        sizes = _infer_image_size(particles)
        if sizes is not None:
            df["rlnImageSize"] = sizes
    if "rlnImageDimensionality" not in df:
        df["rlnImageDimensionality"] = np.int64(2)

    optics_cols = [c for c in particles.optics_columns if c in df]
    optics_cols += [c for c in OPTICS_COLUMNS if c in df and c not in optics_cols]
    params = [c for c in optics_cols if c not in _GROUP_LABELS]
    df, table = _assign_optics_groups(df, params)
    # column order of the optics table: as read, group name/number first
    order = ["rlnOpticsGroupName", "rlnOpticsGroup"] + params
    table = table[order]
    part_cols = [c for c in df.columns if c not in params and c != "rlnOpticsGroupName"]
    df = df[part_cols]

    version = "\n# version 30001\n\n"
    # (starfile cannot parse an empty loop followed by a comment: skip it then)
    text = version + _loop_text("optics", table) + (version if len(table) else "\n") \
        + _loop_text("particles", df)
    with atomic_path(out, overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #
def read_particle_images(particles: Particles, indices=None) -> np.ndarray:
    """Load particle images as float32 ``[n, y, x]``.

    ``indices`` selects particles (positions in ``particles``; int array,
    boolean mask or None for all) and sets the output order.  Each stack is
    memory-mapped once and only the needed images are read (in file order).
    Raises FileNotFoundError / FormatError for missing or bad stacks, image
    numbers beyond a stack's length, or stacks of differing image size.
    """
    n_all = len(particles)
    if indices is None:
        sel = np.arange(n_all)
    else:
        sel = np.asarray(indices)
        if sel.dtype == bool:
            if sel.shape != (n_all,):
                raise ValueError(f"boolean mask must have length {n_all}")
            sel = np.flatnonzero(sel)
        sel = sel.astype(np.int64).reshape(-1)
        if sel.size and (sel.max() >= n_all or sel.min() < -n_all):
            raise IndexError(f"particle index out of range for {n_all} particles")
        sel = np.where(sel < 0, sel + n_all, sel)
    img_idx_all, stacks_all = _parse_image_names(particles.data["rlnImageName"], where="particles")
    img_idx = img_idx_all[sel]
    stacks = [stacks_all[i] for i in sel]
    codes, uniques = pd.factorize(pd.Series(stacks, dtype=object))

    result = None
    shape_from = None
    for code, rel in enumerate(uniques):
        stack_path = Path(os.path.abspath(os.path.join(particles.root, rel)))
        images, _ = read_stack(stack_path, mmap=True)
        pos = np.flatnonzero(codes == code)
        want = img_idx[pos]
        if want.max() >= images.shape[0]:
            bad = int(want.max())
            raise FormatError(
                f"particle image {bad + 1:06d}@{rel} does not exist: '{stack_path}' "
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
    if result is None:
        size = particles.image_size
        s = int(size[0]) if size is not None and len(size) else 0
        result = np.empty((0, s, s), dtype=np.float32)
    return result


def write_recovered_star(particles, q, path, overwrite: bool = False) -> Path:
    """Write ``particles`` with rlnAngleRot/Tilt/Psi from quaternions ``q`` (RELION A convention).

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
    write_star(path, out, overwrite=overwrite)
    return Path(path)
