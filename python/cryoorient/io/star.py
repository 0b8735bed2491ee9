"""RELION particle STAR files (via ``starfile``), read into and written from :class:`Particles`.

Conventions
-----------
* Units as in :mod:`cryoorient.io.particles`.
* Angles ``rlnAngleRot/Tilt/Psi`` are kept exactly as in the file.
* Origins are in **Å** (``rlnOriginXAngst/YAngst``); pre-3.1 ``rlnOriginX/Y``
  (pixels) are converted to Å with the pixel size on reading.
* Pixel size ``rlnImagePixelSize`` is in Å; pre-3.1 files are converted from
  ``rlnPixelSize`` or ``rlnDetectorPixelSize`` [µm] * 1e4 / ``rlnMagnification``.
  ``read_star(path, pixel_size=...)`` replaces the file's (or supplies a
  missing one); ``require_pixel_size=True`` refuses a file without one.
* Relative stack paths are resolved against the STAR file's directory
  (:attr:`Particles.root`).
* :func:`write_star` always writes RELION 3.1 format (``data_optics`` +
  ``data_particles``) with ``rlnImagePixelSize``, atomically, never replacing
  a file unless asked.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import starfile

from ._atomic import FormatError, PathLike, atomic_path, check_overwrite, require_file
from .particles import Particles, check_pixel_size, parse_image_names

__all__ = ["read_star", "write_star", "OPTICS_COLUMNS"]

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


def read_star(path: PathLike, pixel_size: Optional[float] = None, require_pixel_size: bool = False) -> Particles:
    """Read a RELION particle STAR file (3.1+ with optics groups, or pre-3.1).

    ``pixel_size`` (Å) replaces the file's pixel size or provides a missing one
    (needed e.g. to convert pre-3.1 pixel origins).  With ``require_pixel_size``
    a file that gives none is refused (FormatError naming ``--pixel-size``).
    See the module docstring for units.  Raises FileNotFoundError, or
    FormatError for unparsable files, no particles block, missing
    ``rlnImageName``, malformed image names, unknown optics groups or origins
    in pixels without a pixel size.
    """
    p = require_file(path, "STAR")
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
    parse_image_names(df["rlnImageName"], where=f"'{p}'")  # validate early
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
                    "pass --pixel-size"
                )
            df[ang] = df[pix].astype(float) * df["rlnImagePixelSize"].astype(float)
        df = df.drop(columns=[pix])

    particles = Particles(df, root=p.parent, optics_columns=optics_cols)
    if require_pixel_size:
        check_pixel_size(particles, f"'{p}'")
    return particles


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
    defaults to 2.  Particles without a pixel size are refused (FormatError):
    every STAR written carries ``rlnImagePixelSize``.  Atomic; FileExistsError
    if ``path`` exists and not ``overwrite``.
    """
    out = Path(os.fspath(path))
    check_overwrite(out, overwrite)
    check_pixel_size(particles, f"cannot write '{out}': the particles")
    df = particles.data.copy()

    # image names relative to the output directory
    df["rlnImageName"] = [f"{i + 1:06d}@{s}" for i, s in zip(particles.indices, particles.stack_names_for(out))]

    if "rlnImageSize" not in df:
        sizes = particles.stack_image_sizes()
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
