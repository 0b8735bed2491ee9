"""MRC / MRCS reading and writing (via ``mrcfile``).

Conventions
-----------
* Arrays are indexed ``[z, y, x]`` (mrcfile's order): a volume is
  ``[nz, ny, nx]``, an image stack is ``[n, ny, nx]`` (image index first).
* Voxel and pixel sizes are in Å; only isotropic sampling is used (the x size
  from the header is returned; a warning is issued if x, y, z differ).
  A zero cell means the header carries no size: :func:`read_map` then needs
  ``voxel_size`` (the ``--pixel-size`` flag), :func:`read_stack` returns 0.0.
* Maps and stacks are written as float32 (MRC mode 2).
* Every write is atomic (temp file in the same directory, then rename) and
  refuses to replace an existing file unless ``overwrite=True``.
* Old-style and foreign headers are read as mrcfile's permissive mode allows
  when the only defects are a missing ``MAP `` identifier or an unrecognised
  machine stamp (one RuntimeWarning naming the file and the defect); anything
  else mrcfile complains about (bad mode, truncated or oversized data block,
  text) raises :class:`~cryoorient.io.FormatError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple

import mrcfile
import numpy as np
from mrcfile import utils as _mrcutils

from ._atomic import FormatError, PathLike, atomic_path, check_overwrite, require_file

__all__ = [
    "read_map",
    "write_map",
    "read_stack",
    "write_stack",
    "StackWriter",
    "pad_to_cube",
]


# --------------------------------------------------------------------------- #
# opening / validation
# --------------------------------------------------------------------------- #
# mrcfile complaints that its permissive mode reads past (old-style or foreign headers), with what
# they mean; any other complaint refuses the file.
_TOLERATED = {
    "Map ID string not found": "no 'MAP ' identifier (header bytes 208-211), read as mrcfile's permissive mode allows",
    "Unrecognised machine stamp": "unrecognised machine stamp, read as little-endian (mrcfile's permissive mode)",
}


def _open_checked(p: Path, mmap: bool):
    """Open ``p`` read-only with mrcfile; return ``(mrc, notes)``.

    ``notes`` lists the header defects read past as mrcfile's permissive mode
    allows (see ``_TOLERATED``); every other complaint raises FormatError.
    """
    # Header first: gives a clear message for truncated data blocks in both modes.
    size = p.stat().st_size
    opener = mrcfile.mmap if mmap else mrcfile.open
    mrc = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(p, mode="r", permissive=True, header_only=True) as hdr_file:
                header = hdr_file.header
                dtype = _mrcutils.data_dtype_from_header(header)
                shape = _mrcutils.data_shape_from_header(header)
                start = header.nbytes + int(header.nsymbt)
            expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size < expected:
                raise FormatError(
                    f"'{p}' is truncated: header declares {'x'.join(map(str, shape[::-1]))} "
                    f"(x*y*z) values of {dtype.name} = {expected - start} data bytes, "
                    f"but only {max(size - start, 0)} bytes follow the {start}-byte header"
                )
            mrc = opener(p, mode="r", permissive=True)
        notes, problems = [], []
        for w in caught:
            if not issubclass(w.category, RuntimeWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            text = str(w.message)
            meaning = next((m for key, m in _TOLERATED.items() if text.startswith(key)), None)
            target, item = (notes, meaning) if meaning else (problems, text)
            if item not in target:
                target.append(item)
        if problems:
            raise FormatError(f"'{p}' is not a valid MRC file: " + "; ".join(problems))
        if mrc.data is None:
            raise FormatError(f"'{p}' is not a valid MRC file: data block could not be read")
        return mrc, notes
    except FormatError:
        if mrc is not None:
            mrc.close()
        raise
    except (ValueError, OSError, EOFError, OverflowError, MemoryError) as err:
        if mrc is not None:
            mrc.close()
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise FormatError(f"'{p}' is not a valid MRC file: {err}") from err


def warn_header_defects(where: str, notes) -> None:
    """One RuntimeWarning line: ``where`` (the file) was read past ``notes`` (its header defects)."""
    warnings.warn(f"{where}: {'; '.join(notes)}", RuntimeWarning, stacklevel=3)


def _pixel_size(mrc, p: Path) -> float:
    vs = mrc.voxel_size
    x, y = float(vs.x), float(vs.y)
    z = float(vs.z)
    sizes = [x, y] if mrc.is_image_stack() or mrc.data.ndim == 2 else [x, y, z]
    if not np.allclose(sizes, x, rtol=1e-4, atol=1e-6):
        warnings.warn(
            f"'{p}' has anisotropic voxel size (x, y, z) = ({x}, {y}, {z}) Å; using x = {x} Å",
            RuntimeWarning,
            stacklevel=3,
        )
    return x


# --------------------------------------------------------------------------- #
# maps
# --------------------------------------------------------------------------- #
def _pad_to_cube(volume: np.ndarray) -> np.ndarray:
    """Zero-pad a 3D ``[z, y, x]`` array to a cube of edge ``max(shape)``.

    Centring keeps the box-centre convention used throughout cryoorient: the
    voxel at index ``n // 2`` of an axis of length ``n`` ends up at index
    ``N // 2`` of the cube (``before = N//2 - n//2`` zeros are prepended).
    Cubic input is returned unchanged (same object).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"pad_to_cube expects a 3D array, got shape {volume.shape}")
    n = max(volume.shape)
    if all(s == n for s in volume.shape):
        return volume
    pads = [(n // 2 - s // 2, n - s - (n // 2 - s // 2)) for s in volume.shape]
    return np.pad(volume, pads, mode="constant", constant_values=0)


pad_to_cube = _pad_to_cube  # public name (read_map's keyword argument shadows it there)


def read_map(
    path: PathLike, pad_to_cube: bool = False, voxel_size: Optional[float] = None,
    fallback_voxel_size: Optional[float] = None,
) -> Tuple[np.ndarray, float]:
    """Read a 3D MRC map.

    Returns ``(volume, voxel_size_A)`` with ``volume`` a float32 ``[z, y, x]``
    array held in memory.  With ``pad_to_cube=True`` a non-cubic map is
    zero-padded (centred, see :func:`pad_to_cube`) to a cube.  ``voxel_size``
    (Å) replaces the header's; ``fallback_voxel_size`` (Å) is used only where the
    header's cell is zero; without either, such a header is refused with a
    FormatError naming ``--pixel-size``.  Header defects that mrcfile's
    permissive mode reads past give one RuntimeWarning.

    Raises FileNotFoundError (missing file) or FormatError (not a valid MRC
    file, not 3D, or no voxel size).
    """
    p = require_file(path, "MRC")
    override = None if voxel_size is None else _check_size(voxel_size, "voxel_size")
    mrc, notes = _open_checked(p, mmap=False)
    try:
        if mrc.data.ndim != 3:
            raise FormatError(f"'{p}' is not a 3D map: data has shape {mrc.data.shape}")
        voxel = _pixel_size(mrc, p) if override is None else override
        if not voxel > 0 and fallback_voxel_size is not None:
            voxel = _check_size(fallback_voxel_size, "fallback_voxel_size")
        if not voxel > 0:
            raise FormatError(f"'{p}' gives no voxel size (the header's cell is zero); pass --pixel-size")
        volume = np.array(mrc.data, dtype=np.float32, order="C")
    finally:
        mrc.close()
    if notes:
        warn_header_defects(f"'{p}'", notes)
    if pad_to_cube:
        volume = _pad_to_cube(volume)
    return volume, voxel


def _as_float32(data, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(data)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}D, got shape {arr.shape}")
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{what} must be real-valued, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_size(value, what: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a positive number of Å, got {value!r}")
    return v


def write_map(path: PathLike, data: np.ndarray, voxel_size: float, overwrite: bool = False) -> None:
    """Write a 3D ``[z, y, x]`` array as a float32 MRC volume with ``voxel_size`` Å.

    Atomic; raises FileExistsError if ``path`` exists and ``overwrite`` is False.
    """
    _write_mrc(path, _as_float32(data, 3, "map data"), _check_size(voxel_size, "voxel_size"), overwrite, stack=False)


def _write_mrc(path: PathLike, arr: np.ndarray, size: float, overwrite: bool, stack: bool) -> None:
    """Atomically write a float32 3D array as an MRC volume or image stack with voxel/pixel ``size`` Å."""
    with atomic_path(path, overwrite) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if stack:
                mrc.set_image_stack()
            else:
                mrc.set_volume()
            mrc.voxel_size = size


# --------------------------------------------------------------------------- #
# stacks
# --------------------------------------------------------------------------- #
def read_stack(path: PathLike, mmap: bool = True) -> Tuple[np.ndarray, float]:
    """Read an image stack (.mrcs, or any MRC file) as ``[n, y, x]``.

    Returns ``(images, pixel_size_A)``.  With ``mmap=True`` (default)
    ``images`` is a read-only ``numpy.memmap`` in the file's stored dtype, so
    stacks larger than RAM can be indexed cheaply (only the touched images are
    read).  With ``mmap=False`` a float32 in-memory copy is returned.
    A single 2D image is returned as a stack of one.  Header defects that
    mrcfile's permissive mode reads past, and a zero cell (pixel size 0.0
    returned), give one RuntimeWarning naming the file.
    """
    images, pixel, notes = read_stack_noting(path, mmap)
    if not pixel > 0:
        notes = notes + ["zero cell dimensions, so no pixel size (0.0 returned)"]
    if notes:
        warn_header_defects(f"'{Path(os.fspath(path))}'", notes)
    return images, pixel


def read_stack_noting(path: PathLike, mmap: bool = True) -> Tuple[np.ndarray, float, list]:
    """:func:`read_stack` without warnings: ``(images, pixel_size_A, notes)``, ``notes`` the header
    defects read past (for callers that report many files at once)."""
    p = require_file(path, "MRC")
    mrc, notes = _open_checked(p, mmap=mmap)
    try:
        data = mrc.data
        if data.ndim == 2:
            data = data[np.newaxis]
        elif data.ndim != 3:
            raise FormatError(f"'{p}' is not an image stack: data has shape {data.shape}")
        pixel = _pixel_size(mrc, p)
        if not mmap:
            data = np.array(data, dtype=np.float32, order="C")
    finally:
        # The memmap keeps its own mapping; closing the file does not invalidate it.
        mrc.close()
    return data, pixel, notes


def write_stack(path: PathLike, images: np.ndarray, pixel_size: float, overwrite: bool = False) -> None:
    """Write ``images`` ``[n, y, x]`` (or one ``[y, x]`` image) as a float32 MRC stack.

    The header marks the file as an image stack (ispg 0) with ``pixel_size`` Å.
    Atomic; raises FileExistsError if ``path`` exists and ``overwrite`` is False.
    For stacks that do not fit in memory use :class:`StackWriter`.
    """
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    _write_mrc(path, _as_float32(arr, 3, "images"), _check_size(pixel_size, "pixel_size"), overwrite, stack=True)


class StackWriter:
    """Chunked, atomic writer for large float32 image stacks.

    >>> with StackWriter("particles.mrcs", shape=(n, ny, nx), pixel_size=1.2) as w:
    ...     for start in range(0, n, 1000):
    ...         w.write(start, images_block)      # [m, ny, nx] (or [ny, nx])

    The stack is preallocated with ``mrcfile.new_mmap`` in a temporary file in
    the destination directory.  On a clean exit from the ``with`` block, images
    never written are set to zero, header statistics are updated, and the file
    is renamed into place atomically.  If the block raises, the temporary file
    is deleted and nothing is left at ``path``.  FileExistsError is raised on
    construction if ``path`` exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        path: PathLike,
        shape: Tuple[int, int, int],
        pixel_size: float,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(os.fspath(path))
        if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"shape must be (n, ny, nx) positive integers, got {shape!r}")
        self.shape = tuple(int(s) for s in shape)
        self.pixel_size = _check_size(pixel_size, "pixel_size")
        self.overwrite = bool(overwrite)
        check_overwrite(self.path, self.overwrite)
        self._ctx = None
        self._mrc = None
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._rewritten = False
        self._stats = [np.inf, -np.inf, 0.0, 0.0]  # min, max, sum, sum of squares

    # -- context management ------------------------------------------------- #
    def __enter__(self) -> "StackWriter":
        if self._ctx is not None:
            raise RuntimeError("StackWriter is already open")
        self._ctx = atomic_path(self.path, self.overwrite)
        tmp = self._ctx.__enter__()
        try:
            self._mrc = mrcfile.new_mmap(tmp, shape=self.shape, mrc_mode=2, overwrite=True)
            self._mrc.set_image_stack()
            self._mrc.voxel_size = self.pixel_size
        except BaseException as err:
            self._abort(err)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abort(exc)
            return False
        try:
            self._finalise()
            self._mrc.close()
            self._mrc = None
        except BaseException as err:
            self._abort(err)
            raise
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)  # fsync + atomic rename
        return False

    def _abort(self, exc: BaseException) -> None:
        if self._mrc is not None:
            try:
                self._mrc.close()
            except Exception:
                pass
            self._mrc = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            try:
                ctx.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temp file
            except BaseException as e:
                if e is not exc:
                    raise

    # -- writing ------------------------------------------------------------ #
    def write(self, start: int, block: np.ndarray) -> None:
        """Store ``block`` (``[m, ny, nx]`` or one ``[ny, nx]`` image) at images ``start:start+m``."""
        if self._mrc is None:
            raise RuntimeError("StackWriter.write called outside its 'with' block")
        arr = np.asarray(block)
        if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"block must be real-valued, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        n, ny, nx = self.shape
        if arr.ndim != 3 or arr.shape[1:] != (ny, nx):
            raise ValueError(f"block must have shape (m, {ny}, {nx}), got {np.shape(block)}")
        start = int(start)
        stop = start + arr.shape[0]
        if start < 0 or stop > n:
            raise IndexError(f"images {start}:{stop} out of range for a stack of {n}")
        if arr.shape[0] == 0:
            return
        arr = arr.astype(np.float32, copy=False)
        self._mrc.data[start:stop] = arr
        if self._written[start:stop].any():
            self._rewritten = True
        else:
            a64 = arr.astype(np.float64)
            s = self._stats
            s[0] = min(s[0], float(a64.min()))
            s[1] = max(s[1], float(a64.max()))
            s[2] += float(a64.sum())
            s[3] += float(np.square(a64).sum())
        self._written[start:stop] = True

    def _finalise(self) -> None:
        data = self._mrc.data
        n = self.shape[0]
        missing = np.flatnonzero(~self._written)
        for i in missing:  # do not rely on the filesystem zero-filling
            data[i] = 0.0
        count = data.size
        if self._rewritten:
            lo, hi, tot, sq = np.inf, -np.inf, 0.0, 0.0
            step = max(1, (1 << 24) // max(1, data[0].size))
            for i in range(0, n, step):
                c = np.asarray(data[i:i + step], dtype=np.float64)
                lo, hi = min(lo, c.min()), max(hi, c.max())
                tot += c.sum()
                sq += np.square(c).sum()
        else:
            lo, hi, tot, sq = self._stats
            if missing.size:
                lo, hi = min(lo, 0.0), max(hi, 0.0)
        mean = tot / count
        var = max(sq / count - mean * mean, 0.0)
        hdr = self._mrc.header
        hdr.dmin, hdr.dmax, hdr.dmean, hdr.rms = lo, hi, mean, np.sqrt(var)
        data.flush()
