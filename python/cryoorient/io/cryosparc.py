"""cryoSPARC particle files (``.cs``: a NumPy structured array, ``np.load``), read into and
written from :class:`~cryoorient.io.Particles` (units as in :mod:`cryoorient.io.particles`).

Pose convention
---------------
* ``alignments3D/pose`` is a rotation vector ``r`` (radians): ``R = expm([r]×)``, the
  rotation by ``|r|`` about ``r / |r|``.  ``R`` is the *transpose* of RELION's matrix
  ``A = geometry.euler_to_matrix(rot, tilt, psi)``: ``R = Aᵀ`` takes particle-frame
  coordinates to the map frame.
* ``alignments3D/shift`` ``s`` (pixels) is RELION's origin in pixels (the shift that
  brings the particle to the box centre): ``rlnOriginXAngst = s_x · pixel size``.
* Together: the particle image is ``image(x, y) = ∫ V(R (x + s_x, y + s_y, z)) dz`` — the
  model under which cryoDRGN (``parse_pose_csparc``) and pyem (``csparc2star``) read
  cryoSPARC's files; ``tests/test_io_cryosparc.py`` checks by reprojection of an
  asymmetric map that this module's conversion and cryoorient's projector agree with it
  (and that the transposed rotation or the opposite shift would not).

Other fields
------------
* ``blob/path`` is relative to the cryoSPARC project directory (a leading ``>``, cryoSPARC's
  mark of imported files, is dropped); ``blob/idx`` is 0-based.  Without ``project_dir``
  the reader takes the nearest directory, from the ``.cs`` file's own upwards, under
  which the first stack exists (else the ``.cs`` file's directory).
* ``blob/psize_A`` → ``rlnImagePixelSize``; ``blob/shape`` ``[ny, nx]`` → ``rlnImageSize``.
  Shifts are in pixels of ``alignments3D/psize_A`` when given (rescaled to image pixels).
* ``ctf/df1_A``, ``ctf/df2_A`` → ``rlnDefocusU/V`` (Å); ``ctf/df_angle_rad``,
  ``ctf/phase_shift_rad`` → degrees; ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``
  → voltage, Cs, amplitude contrast; ``ctf/exp_group_id`` (0-based) → ``rlnOpticsGroup``;
  ``alignments3D/split`` (0/1) → ``rlnRandomSubset`` (1/2).
* A 2D-classification export (``alignments2D/*``) has no 3D pose: it is read with angles
  and origins absent.
* ``blob/sign`` is not applied (images are read as stored) and not written.  Written
  ``uid`` values are the first 8 bytes of the BLAKE2b hash of each image name, so the
  same image always gets the same uid.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ._atomic import FormatError, PathLike, atomic_path, check_overwrite, require_file
from .particles import Particles, check_pixel_size

__all__ = ["read_cs", "write_cs"]

# (.cs field, RELION label, factor from the .cs unit to RELION's)
_CTF = (
    ("ctf/df1_A", "rlnDefocusU", 1.0),
    ("ctf/df2_A", "rlnDefocusV", 1.0),
    ("ctf/df_angle_rad", "rlnDefocusAngle", 180.0 / np.pi),
    ("ctf/accel_kv", "rlnVoltage", 1.0),
    ("ctf/cs_mm", "rlnSphericalAberration", 1.0),
    ("ctf/amp_contrast", "rlnAmplitudeContrast", 1.0),
    ("ctf/phase_shift_rad", "rlnPhaseShift", 180.0 / np.pi),
)


# --------------------------------------------------------------------------- #
# pose conversion
# --------------------------------------------------------------------------- #
def pose_to_euler(pose: np.ndarray):
    """RELION ``(rot, tilt, psi)`` in degrees, float64 arrays, of cryoSPARC rotation vectors ``(n, 3)``."""
    import torch

    from ..geometry import quat_conjugate, quat_to_euler

    r = torch.from_numpy(np.asarray(pose, dtype=np.float64).reshape(-1, 3))
    theta = r.norm(dim=1, keepdim=True)
    # quaternion of R = expm([r]x): (cos θ/2, sin(θ/2) r/θ); sin(θ/2)/θ = sinc(θ/2π)/2
    q_r = torch.cat([torch.cos(theta / 2), 0.5 * torch.sinc(theta / (2 * np.pi)) * r], dim=1)
    rot, tilt, psi = quat_to_euler(quat_conjugate(q_r))  # A = Rᵀ
    return rot.numpy(), tilt.numpy(), psi.numpy()


def euler_to_pose(rot, tilt, psi) -> np.ndarray:
    """cryoSPARC rotation vectors ``(n, 3)`` (radians, |r| ≤ π) of RELION angles in degrees."""
    import torch

    from ..geometry import euler_to_quat

    q_a = euler_to_quat(*(torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (rot, tilt, psi)))
    w, v = q_a[:, :1], -q_a[:, 1:]  # R = Aᵀ: conjugate quaternion, w >= 0
    theta = 2 * torch.atan2(v.norm(dim=1, keepdim=True), w)
    return (2.0 / torch.sinc(theta / (2 * np.pi)) * v).numpy()  # θ / sin(θ/2) · v


# --------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------- #
def _load(path: PathLike) -> np.ndarray:
    p = require_file(path, "cryoSPARC .cs")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError, EOFError ... on garbage
        raise FormatError(f"'{p}' could not be read as a cryoSPARC .cs file (a NumPy array): {err}") from err
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None or arr.ndim != 1:
        raise FormatError(f"'{p}' is not a cryoSPARC particle file: expected a 1D NumPy structured array")
    missing = [f for f in ("blob/path", "blob/idx") if f not in arr.dtype.names]
    if missing:
        raise FormatError(f"'{p}' is not a cryoSPARC particle file: no field(s) {', '.join(missing)}")
    return arr


def _project_root(directory: Path, first_stack: Optional[str]) -> Path:
    """The nearest of ``directory`` and its parents under which ``first_stack`` exists."""
    if first_stack is not None and not os.path.isabs(first_stack):
        for d in (directory, *directory.parents):
            if (d / first_stack).is_file():
                return d
    return directory


def read_cs(
    path: PathLike,
    pixel_size: Optional[float] = None,
    require_pixel_size: bool = False,
    project_dir: Optional[PathLike] = None,
) -> Particles:
    """Read a cryoSPARC particle ``.cs`` file (see the module docstring for the conventions).

    ``pixel_size`` (Å) replaces ``blob/psize_A`` or provides a missing one; with
    ``require_pixel_size`` a file that gives none is refused (FormatError naming
    ``--pixel-size``).  ``project_dir`` is the directory ``blob/path`` is relative to.
    Image files are not opened.  Raises FileNotFoundError or FormatError.
    """
    p = Path(os.fspath(path))
    arr = _load(path)
    fields = arr.dtype.names
    stacks = [s.lstrip(">") for s in np.char.decode(arr["blob/path"].astype(bytes), "utf-8").tolist()]
    idx = arr["blob/idx"].astype(np.int64)
    df = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{s}" for i, s in zip(idx, stacks)]})
    if project_dir is not None:
        root = Path(os.path.abspath(os.fspath(project_dir)))
    else:
        root = _project_root(Path(os.path.abspath(p.parent)), stacks[0] if stacks else None)

    if pixel_size is not None:
        df["rlnImagePixelSize"] = float(pixel_size)
    elif "blob/psize_A" in fields:
        df["rlnImagePixelSize"] = arr["blob/psize_A"].astype(np.float64)
    if "blob/shape" in fields and np.array_equal(arr["blob/shape"][:, 0], arr["blob/shape"][:, 1]):
        df["rlnImageSize"] = arr["blob/shape"][:, 0].astype(np.int64)
    for name, label, factor in _CTF:
        if name in fields:
            df[label] = arr[name].astype(np.float64) * factor
    df["rlnOpticsGroup"] = arr["ctf/exp_group_id"].astype(np.int64) + 1 if "ctf/exp_group_id" in fields else 1

    if "alignments3D/pose" in fields:
        df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"] = pose_to_euler(arr["alignments3D/pose"])
    if "alignments3D/shift" in fields:
        if "rlnImagePixelSize" not in df:
            raise FormatError(f"'{p}': shifts are given in pixels but the file has no pixel size "
                              "(blob/psize_A); pass --pixel-size")
        scale = df["rlnImagePixelSize"].to_numpy()
        if "alignments3D/psize_A" in fields and "blob/psize_A" in fields:
            scale = scale * arr["alignments3D/psize_A"].astype(np.float64) / arr["blob/psize_A"].astype(np.float64)
        shift = arr["alignments3D/shift"].astype(np.float64)
        df["rlnOriginXAngst"], df["rlnOriginYAngst"] = shift[:, 0] * scale, shift[:, 1] * scale
    if "alignments3D/split" in fields:
        df["rlnRandomSubset"] = arr["alignments3D/split"].astype(np.int64) + 1

    particles = Particles(df, root=root)
    if require_pixel_size:
        check_pixel_size(particles, f"'{p}'")
    return particles


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #
def _uids(names) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little")
                     for n in names], dtype=np.uint64)


def write_cs(path: PathLike, particles: Particles, overwrite: bool = False) -> None:
    """Write ``particles`` as a cryoSPARC ``.cs`` file (float32 fields, as cryoSPARC writes them).

    ``blob/path`` is relative to the output's directory when the stack lies under
    it, otherwise absolute.  CTF fields are written for the columns present;
    ``alignments3D/pose``, ``shift`` and ``psize_A`` when the particles have angles
    (a missing origin is written as shift 0).  Particles without a pixel size are
    refused (FormatError).  Atomic; FileExistsError if ``path`` exists and not
    ``overwrite``.
    """
    out = Path(os.fspath(path))
    check_overwrite(out, overwrite)
    check_pixel_size(particles, f"cannot write '{out}': the particles")
    n = len(particles)
    stacks = np.array([s.encode() for s in particles.stack_names_for(out)] or [b""])
    sizes = particles.image_size if particles.image_size is not None else particles.stack_image_sizes()
    pixel = particles.pixel_size
    ctf = [(name, label, factor) for name, label, factor in _CTF if label in particles.data]
    angles = particles.angles

    dtype = [("uid", "<u8"), ("blob/path", stacks.dtype.str), ("blob/idx", "<u4")]
    dtype += [("blob/shape", "<u4", (2,))] if sizes is not None else []
    dtype += [("blob/psize_A", "<f4"), ("ctf/exp_group_id", "<u4")] + [(name, "<f4") for name, _, _ in ctf]
    if angles is not None:
        dtype += [("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
                  ("alignments3D/psize_A", "<f4")]
    if "rlnRandomSubset" in particles.data:
        dtype += [("alignments3D/split", "<u4")]
    arr = np.zeros(n, dtype=dtype)

    arr["uid"] = _uids(particles.image_names)
    arr["blob/path"] = stacks[:n]
    arr["blob/idx"] = particles.indices
    if sizes is not None:
        arr["blob/shape"] = np.stack([sizes, sizes], axis=1)
    arr["blob/psize_A"] = pixel
    arr["ctf/exp_group_id"] = particles.optics_group - 1
    for name, label, factor in ctf:
        arr[name] = particles.data[label].to_numpy(dtype=np.float64) / factor
    if angles is not None:
        origin = [getattr(particles, a) for a in ("origin_x_angst", "origin_y_angst")]
        arr["alignments3D/shift"] = np.stack([np.zeros(n) if o is None else o / pixel for o in origin], axis=1)
        arr["alignments3D/pose"] = euler_to_pose(angles[:, 0], angles[:, 1], angles[:, 2])
        arr["alignments3D/psize_A"] = pixel
    if "rlnRandomSubset" in particles.data:
        arr["alignments3D/split"] = particles.data["rlnRandomSubset"].to_numpy(dtype=np.int64) - 1

    with atomic_path(out, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
